"""``python -m bunws --workers 2 --redis URL``: the demo chat across two worker processes.

A private ``redis-server`` (tests/redis_server.py) carries the room messages between
the workers. Clients join ``/chat?name=...&room=lobby`` until both workers hold some
of them: each worker subscribes to the room's Redis channel when its first local
socket joins, so ``PUBSUB NUMSUB bunws-demo:room:lobby == 2`` shows that both
workers have members. Then every client sends one line and every client must
receive every line (the sender's own included: the demo uses ``server.publish``),
which only works across workers thanks to Redis. SIGINT: every client gets 1001 and
the supervisor exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest
import websockets

from redis_server import running_redis

TIMEOUT = 15.0
CHANNEL = "bunws-demo:room:lobby"  # the demo's channel_prefix + topic "room:lobby"
MIN_CLIENTS = 20
MAX_CLIENTS = 60


@pytest.fixture(scope="module")
def redis_server() -> Any:
    yield from running_redis()


def _start(redis_url: str) -> tuple[subprocess.Popen[str], int, list[str], threading.Thread]:
    """Start the demo with 2 workers; return (process, port, output lines, their reader)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bunws", "--workers", "2", "--redis", redis_url, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    lines: list[str] = []
    found = threading.Event()

    def reader() -> None:  # keeps draining stdout so the workers never block on it
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "Ctrl-C" in line:
                found.set()
        found.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    if not found.wait(TIMEOUT):
        proc.kill()
        raise AssertionError(f"no banner within {TIMEOUT}s: {lines!r}")
    match = re.search(r"demo chat on http://127\.0\.0\.1:(\d+)/", "\n".join(lines))
    if match is None:
        proc.kill()
        raise AssertionError(f"no URL in the banner: {lines!r}")
    return proc, int(match.group(1)), lines, thread


async def _join(port: int, name: str) -> tuple[Any, dict[str, Any]]:
    ws = await asyncio.wait_for(
        websockets.connect(f"ws://127.0.0.1:{port}/chat?name={name}&room=lobby"), TIMEOUT
    )
    welcome = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert welcome["type"] == "welcome" and welcome["name"] == name, welcome
    return ws, welcome


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_two_workers_relay_through_redis_and_stop_with_1001(redis_server: Any) -> None:
    proc, port, lines, thread = _start(redis_server.url)
    clients: list[Any] = []
    try:
        # Join in batches until both workers have members (and at least MIN_CLIENTS).
        welcomes = []
        async with asyncio.timeout(TIMEOUT * 2):
            while len(clients) < MIN_CLIENTS or redis_server.numsub(CHANNEL) < 2:
                assert len(clients) < MAX_CLIENTS, (
                    f"{len(clients)} clients and the room is on {redis_server.numsub(CHANNEL)} worker(s)")
                batch = await asyncio.gather(*(
                    _join(port, f"c{len(clients) + i}") for i in range(5)))
                clients += [ws for ws, _ in batch]
                welcomes += [w for _, w in batch]
                await asyncio.sleep(0.05)  # let the workers' SUBSCRIBE reach Redis
        assert redis_server.numsub(CHANNEL) == 2
        print(f"{len(clients)} clients; welcome member counts {[w['members'] for w in welcomes]}")
        # Member counts are per worker: with the clients spread, no worker counts them all.
        assert max(w["members"] for w in welcomes) < len(clients)

        names = [f"c{i}" for i in range(len(clients))]

        async def collect(ws: Any) -> set[tuple[str, str]]:
            want = {(name, f"hello from {name}") for name in names}
            got: set[tuple[str, str]] = set()
            async with asyncio.timeout(TIMEOUT):
                while not want <= got:
                    event = json.loads(await ws.recv())
                    if event["type"] == "message":
                        got.add((event["name"], event["text"]))
            return got

        readers = [asyncio.create_task(collect(ws)) for ws in clients]
        for name, ws in zip(names, clients):
            await ws.send(f"hello from {name}")
        results = await asyncio.gather(*readers)
        for name, got in zip(names, results):
            assert {(n, f"hello from {n}") for n in names} <= got, name

        # SIGINT: the supervisor stops both workers; every client gets 1001.
        proc.send_signal(signal.SIGINT)

        async def closed_with(ws: Any) -> int | None:
            async with asyncio.timeout(TIMEOUT):
                try:
                    while True:
                        await ws.recv()
                except websockets.ConnectionClosed:
                    pass
            return ws.close_code

        codes = await asyncio.gather(*(closed_with(ws) for ws in clients))
        assert set(codes) == {1001}, codes
        await asyncio.to_thread(proc.wait, TIMEOUT)
        assert proc.returncode == 0, lines
        await asyncio.to_thread(thread.join, TIMEOUT)
        out = "\n".join(lines)
        assert "Traceback" not in out and out.count("bunws demo stopped") == 1, out
    finally:
        for ws in clients:
            await ws.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
