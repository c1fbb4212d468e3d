"""``bunws.uvicorn:WebSocketProtocol`` inside a real uvicorn server, and uvicorn's own
WebSocket test module run against it.

The uvicorn suite (its sdist's ``tests/protocols/test_websocket.py`` with the bunws
class added to its ``ws_protocol_cls`` fixture; about 30 s) downloads the sdist of the
installed uvicorn with pip at test time and skips, saying why, only when it cannot be
had. Every case must pass but the few where bunws chooses otherwise on purpose
(``KNOWN_DIFFERENCES``; docs/asgi.md, "uvicorn", says why for each).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest

uvicorn = pytest.importorskip("uvicorn")

import wire  # noqa: E402
from installs import one_at_a_time  # noqa: E402
from redis_server import free_port  # noqa: E402
import websockets.exceptions  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ASYNCIO_ONLY = pytest.mark.asyncio(loop_factories=["asyncio"])


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket"
    await receive()
    await send({"type": "websocket.accept", "subprotocol": scope["subprotocols"][0] if scope["subprotocols"] else None})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")})


async def started_uvicorn(app: Any, **options: Any) -> tuple[uvicorn.Server, asyncio.Future[Any], int]:
    """A uvicorn server on a free port with the bunws WebSocket protocol, started."""
    port = free_port()
    options = {"lifespan": "off", "log_level": "critical", **options}
    server = uvicorn.Server(uvicorn.Config(app, port=port, ws="bunws.uvicorn:WebSocketProtocol", **options))
    task = asyncio.ensure_future(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.02)
    return server, task, port


@ASYNCIO_ONLY
async def test_uvicorn_serves_websockets_through_bunws() -> None:
    server, task, port = await started_uvicorn(echo_app)
    try:
        async with connect(f"ws://127.0.0.1:{port}/", subprotocols=["x"]) as ws:
            assert ws.subprotocol == "x"
            await ws.send("over uvicorn")
            assert await ws.recv() == "over uvicorn"
            await ws.send(b"\x00" * 100_000)
            assert await ws.recv() == b"\x00" * 100_000
            protocol = next(iter(server.server_state.connections))
            assert type(protocol).__module__ == "bunws.uvicorn"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


# The cases of uvicorn 0.54.0's module where bunws differs (each fails under both
# HTTP fronts, httptools and h11).
KNOWN_DIFFERENCES = {
    # The test asserts the class is one of uvicorn's own two.
    "test_server_keepalive_ping_pong": "isinstance against uvicorn's classes",
    "test_server_keepalive_disabled": "isinstance against uvicorn's classes",
}
SUITE_SECONDS = 300  # the run takes about 30 s alone; two busy workers may triple it


def uvicorn_sdist(cache: Path) -> Path:
    """The sdist of the installed uvicorn version, unpacked under ``cache``, with
    the bunws class in its ``ws_protocol_cls`` fixture."""
    version = uvicorn.__version__
    tree = cache / f"uvicorn-{version}"
    with one_at_a_time():  # another worker or run may be unpacking the same cache
        if not tree.exists():
            cache.mkdir(parents=True, exist_ok=True)
            r = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                 f"uvicorn=={version}", "-d", str(cache)], capture_output=True, text=True, timeout=300)
            archive = cache / f"uvicorn-{version}.tar.gz"
            if r.returncode != 0 or not archive.exists():
                pytest.skip(f"cannot download the uvicorn {version} sdist: {r.stderr.strip()[-300:]}")
            # Unpacked aside, then renamed: a run killed halfway leaves no partial tree.
            partial = Path(tempfile.mkdtemp(dir=cache))
            with tarfile.open(archive) as tar:
                tar.extractall(partial, filter="data")
            (partial / tree.name).rename(tree)
            shutil.rmtree(partial)
        conftest = tree / "tests" / "conftest.py"
        text = conftest.read_text()
        if "bunws.uvicorn" not in text:
            anchor = '"uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol", id="websockets-sansio"\n        ),\n'
            if anchor not in text:
                pytest.skip("uvicorn's ws_protocol_cls fixture has changed shape")
            conftest.write_text(text.replace(anchor, anchor + '        pytest.param("bunws.uvicorn:WebSocketProtocol", id="bunws"),\n'))
    return tree


@pytest.mark.timeout(SUITE_SECONDS + 60)
def test_uvicorn_websocket_suite() -> None:
    for module in ("httpx2", "pytest_mock", "anyio", "httptools", "h11", "wsproto"):
        pytest.importorskip(module)
    tree = uvicorn_sdist(Path(tempfile.gettempdir()) / "bunws-uvicorn-sdist")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/protocols/test_websocket.py", "-q", "-rfE", "-p", "no:cacheprovider",
         "-o", "addopts=", "-o", "asyncio_default_fixture_loop_scope=function",
         "-W", "ignore::pytest.PytestDeprecationWarning", "-k", "bunws", "--timeout", "10"],
        cwd=tree, capture_output=True, text=True, timeout=SUITE_SECONDS,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])),
    )
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-500:]
    print(summary)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|error|errors)", summary)}
    failed = re.findall(r"^(?:FAILED|ERROR) \S+::(\w+)\[bunws-([^\]]+)\]", r.stdout, re.MULTILINE)
    unexpected = sorted(f"{name}[{front}]" for name, front in failed if name not in KNOWN_DIFFERENCES)
    assert not unexpected, f"{summary}\n" + "\n".join(unexpected) + "\n" + r.stdout[-3000:]
    assert counts.get("passed", 0) >= 100, summary
    assert counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0) == len(failed), summary


@ASYNCIO_ONLY
async def test_uvicorn_keepalive_needs_the_pong_of_its_own_ping_then_closes_1011_and_ends_at_once() -> None:
    server, task, port = await started_uvicorn(echo_app, ws_ping_interval=0.1, ws_ping_timeout=0.3)
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(UPGRADE)
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            first = await reader.readexactly(6)
            assert first[:2] == b"\x89\x04"  # a Ping with 4 random bytes
            writer.write(wire.client(0xA, first[2:]))  # its Pong: the next Ping comes, not a Close
            second = await reader.readexactly(6)
            assert second[:2] == b"\x89\x04" and second[2:] != first[2:]
            writer.write(wire.client(0xA, b"nope"))  # not its Pong
            head = await reader.readexactly(2)
            assert head[0] == 0x88
            payload = await reader.readexactly(head[1])
            assert payload == (1011).to_bytes(2, "big") + b"keepalive ping timeout"
            # A peer that answers no Ping is not waited for: the FIN follows the Close.
            assert await reader.read() == b""
            writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


UPGRADE = (b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


@ASYNCIO_ONLY
async def test_connection_lost_before_the_app_decides_reaches_the_app_as_disconnect_1006() -> None:
    connected, told = asyncio.Event(), asyncio.get_running_loop().create_future()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        connected.set()
        told.set_result(await receive())

    server, task, port = await started_uvicorn(app)
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(UPGRADE)
            await connected.wait()
            # A reset, not a FIN: a half-closed client may still be owed its answer.
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            assert await told == {"type": "websocket.disconnect", "code": 1006}
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@ASYNCIO_ONLY
async def test_a_started_denial_is_answered_when_the_app_then_fails_and_a_missing_key_is_named() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 404, "headers": [(b"x-why", b"gone")]})
        raise RuntimeError("the app fails after starting its denial")

    server, task, port = await started_uvicorn(app)
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(UPGRADE)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 404") and b"x-why: gone" in head
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(UPGRADE.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""))
            answer = await reader.read(1000)
            assert answer.startswith(b"HTTP/1.1 400") and answer.endswith(b"Missing Sec-WebSocket-Key header")
            writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@ASYNCIO_ONLY
@pytest.mark.parametrize("date_header", [True, False])
async def test_uvicorns_date_header_option_decides_the_101s_date(date_header: bool) -> None:
    server, task, port = await started_uvicorn(echo_app, date_header=date_header)
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(UPGRADE)
            head = await reader.readuntil(b"\r\n\r\n")
            writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
    assert head.startswith(b"HTTP/1.1 101")
    dates = [line for line in head.split(b"\r\n") if line.lower().startswith(b"date:")]
    assert len(dates) == (1 if date_header else 0)


@ASYNCIO_ONLY
@pytest.mark.parametrize("ending", ["returns", "raises"])
async def test_an_app_that_ends_without_closing_drops_tcp_after_its_last_message_as_uvicorn_does(ending: str) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "last words"})
        if ending == "raises":
            raise RuntimeError("the app failed")

    server, task, port = await started_uvicorn(app)
    try:
        async with asyncio.timeout(10):
            async with connect(f"ws://127.0.0.1:{port}/") as ws:
                assert await ws.recv() == "last words"  # written before the drop
                with pytest.raises(websockets.exceptions.ConnectionClosedError):
                    await ws.recv()
            assert ws.close_code == 1006 and ws.protocol.close_rcvd is None  # no Close frame came
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
