"""``bunws.run(..., workers=N)``: connections spread over forked workers, a crashed
worker is restarted, SIGTERM stops every worker gracefully (1001) and the
supervisor exits 0. The workers share topics through a RedisBackplane. The
supervisor waits only for its own workers: the application's other children keep
their exit statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from redis_server import free_port, running_redis
from supervised import http_get, wait_until_serving
from test_backplane import NODE, recv

from websockets.asyncio.client import ClientConnection, connect

ASYNCIO_ONLY = pytest.mark.asyncio(loop_factories=["asyncio"])


@pytest.fixture(scope="module")
def redis() -> Any:
    yield from running_redis()


@contextlib.asynccontextmanager
async def supervisor(redis: Any, **env: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        NODE,
        env=dict(os.environ, REDIS_URL=redis.url, PREFIX=f"w{port}:", WORKERS="2", PORT=str(port), **env),
    )
    try:
        await wait_until_serving(proc, port, "/pid")
        yield proc, port
    finally:
        if proc.returncode is None:
            proc.kill()  # workers follow through PR_SET_PDEATHSIG
            await proc.wait()


async def ws_client(port: int, *topics: str) -> tuple[ClientConnection, int]:
    ws = await asyncio.wait_for(connect(f"ws://127.0.0.1:{port}/ws?sub={','.join(topics)}"), 5)
    hello = await recv(ws)
    return ws, int(hello.split()[1])


async def clients_on_two_workers(port: int, *topics: str, tries: int = 60) -> dict[int, ClientConnection]:
    """Connect until two workers hold a client each; returns pid -> client."""
    by_pid: dict[int, ClientConnection] = {}
    for _ in range(tries):
        ws, pid = await ws_client(port, *topics)
        if pid in by_pid:
            await ws.close()
        else:
            by_pid[pid] = ws
        if len(by_pid) == 2:
            return by_pid
    raise AssertionError(f"{tries} connections all landed on {list(by_pid)}")


async def stop_and_expect_1001(proc: asyncio.subprocess.Process, clients: list[ClientConnection]) -> None:
    proc.send_signal(signal.SIGTERM)
    for ws in clients:
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == 1001
    assert await asyncio.wait_for(proc.wait(), 15) == 0


@ASYNCIO_ONLY
async def test_reuseport_workers_spread_restart_and_stop_gracefully(redis: Any) -> None:
    async with supervisor(redis) as (proc, port):
        async with asyncio.timeout(10):  # the second worker may still be starting
            while len({int(await http_get(port, "/pid")) for _ in range(20)}) < 2:
                await asyncio.sleep(0.05)
        pids = {int(await http_get(port, "/pid")) for _ in range(50)}
        assert len(pids) == 2, pids  # SO_REUSEPORT hashes each new connection
        assert proc.pid not in pids

        # Topics cross workers through Redis.
        by_pid = await clients_on_two_workers(port, "t")
        (p1, c1), (p2, c2) = by_pid.items()
        async with asyncio.timeout(5):  # both workers' SUBSCRIBE reached Redis
            while redis.numsub(f"w{port}:t") != 2:
                await asyncio.sleep(0.01)
        await c1.send("P t from-worker")
        assert await recv(c2) == "from-worker"

        # A worker killed outright is replaced.
        os.kill(p1, signal.SIGKILL)
        await asyncio.wait_for(c1.wait_closed(), 5)
        async with asyncio.timeout(10):
            while True:
                now = {int(await http_get(port, "/pid")) for _ in range(20)}
                if len(now) == 2 and p1 not in now:
                    break
                await asyncio.sleep(0.1)
        assert proc.returncode is None

        # SIGTERM: every client of every worker gets 1001, the supervisor exits 0.
        fresh = await clients_on_two_workers(port, "t")
        await c2.close()
        await stop_and_expect_1001(proc, list(fresh.values()))


@ASYNCIO_ONLY
async def test_inherited_socket_workers_serve_and_stop_gracefully(redis: Any) -> None:
    async with supervisor(redis, SOCKET_SHARING="inherit") as (proc, port):
        clients = []
        pids = set()
        for _ in range(10):
            ws, pid = await ws_client(port)
            clients.append(ws)
            pids.add(pid)
        assert proc.pid not in pids
        await stop_and_expect_1001(proc, clients)


# Starts an unrelated child that exits with status 3, then runs two workers; after
# SIGTERM stops them it prints the status that Popen saw.
APP_WITH_OWN_CHILD = """
import os, subprocess, sys
import bunws

child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
print(child.pid, flush=True)

def fetch(req, server):
    return bunws.Response(str(os.getpid()))

bunws.run(fetch, hostname="127.0.0.1", port=int(os.environ["PORT"]), workers=2, close_timeout=1)
print("returncode", child.wait(), flush=True)
"""


def has_exited(pid: int) -> bool:
    """True once ``pid`` has exited: a zombie waiting for its parent, or reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
@ASYNCIO_ONLY
async def test_supervisor_leaves_the_exit_status_of_other_children_to_the_application(tmp_path: Any) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP_WITH_OWN_CHILD)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(app), env=dict(os.environ, PORT=str(port)), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        child = int(await asyncio.wait_for(proc.stdout.readline(), 15))
        async with asyncio.timeout(15):
            while True:  # the workers serve, and the child exited while they run
                try:
                    if (await http_get(port, "/")).isdigit() and has_exited(child):
                        break
                except OSError:
                    pass
                assert proc.returncode is None, "supervisor exited"
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out = await asyncio.wait_for(proc.stdout.read(), 15)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert out.decode().split() == ["returncode", "3"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
