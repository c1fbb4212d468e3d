"""The ``python -m bunws`` demo: chat rooms, notices, member counter, echo, HTTP publish.

Most tests run :class:`bunws.demo.ChatDemo` in-process (on asyncio and uvloop) and
talk to it with the ``websockets`` client; the last ones start ``python -m bunws``
as a program, the way the README tells a new user to.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest
import websockets
from conftest import running

from bunws import __main__ as cli
from bunws.demo import MAX_NAME, ChatDemo, binary_frame, parse_binary_frame

TIMEOUT = 10.0


async def http(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request over a fresh connection: (status, headers, body)."""
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        if body or method == "POST":
            head += f"Content-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        raw = await reader.read()
        writer.close()
    head_raw, _, payload = raw.partition(b"\r\n\r\n")
    lines = head_raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, fields, payload


async def recv_json(ws: Any) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(msg, str), msg
    return json.loads(msg)


def demo_server(**options: Any) -> Any:
    app = ChatDemo()
    return running(app.websocket, app.fetch, **{**app.serve_options, **options})


def url(server: Any, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


# ---------------------------------------------------------------- HTTP side
async def test_serves_the_chat_page() -> None:
    async with demo_server() as server:
        status, headers, body = await http(server.port, "GET", "/")
        assert status == 200
        assert headers["content-type"] == "text/html;charset=utf-8"
        assert b"<title>bunws chat</title>" in body and b"new WebSocket(" in body
        status, headers, body = await http(server.port, "HEAD", "/")
        assert (status, body) == (200, b"") and int(headers["content-length"]) > 1000
        assert (await http(server.port, "GET", "/nope"))[0] == 404
        assert (await http(server.port, "POST", "/"))[0] == 405
        # The socket endpoints want an upgrade.
        status, _, body = await http(server.port, "GET", "/chat?name=x")
        assert (status, body) == (400, b"expected a WebSocket upgrade")
        assert (await http(server.port, "GET", "/echo"))[0] == 400


# ---------------------------------------------------------------- chat
async def test_two_users_chat_with_notices_and_live_counter() -> None:
    async with demo_server() as server:
        async with websockets.connect(url(server, "/chat?name=alice&room=r1")) as alice:
            welcome = await recv_json(alice)
            assert welcome["type"] == "welcome"
            assert (welcome["name"], welcome["room"], welcome["members"]) == ("alice", "r1", 1)
            assert "permessage-deflate" in welcome["extensions"]
            async with websockets.connect(url(server, "/chat?name=bob&room=r1")) as bob:
                assert (await recv_json(bob))["members"] == 2
                assert await recv_json(alice) == {"type": "join", "name": "bob", "room": "r1", "members": 2}
                assert server.subscriber_count("room:r1") == 2
                status, _, body = await http(server.port, "GET", "/rooms")
                assert (status, json.loads(body)) == (200, {"r1": 2})

                await alice.send("hi bob ✓")
                line = {"type": "message", "name": "alice", "text": "hi bob ✓"}
                assert await recv_json(bob) == line
                assert await recv_json(alice) == line  # the sender sees its own line

                await bob.send(b"\x00\x01\xfe\xff")
                for ws in (alice, bob):
                    frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
                    assert parse_binary_frame(frame) == ("bob", b"\x00\x01\xfe\xff")
            assert await recv_json(alice) == {"type": "leave", "name": "bob", "room": "r1", "members": 1}
            assert server.subscriber_count("room:r1") == 1
        # The last one out removes the room.
        async with asyncio.timeout(TIMEOUT):
            while (await http(server.port, "GET", "/rooms"))[2] != b"{}":
                await asyncio.sleep(0.01)


async def test_rooms_are_separate() -> None:
    async with demo_server() as server:
        async with websockets.connect(url(server, "/chat?name=a&room=red")) as a, websockets.connect(
            url(server, "/chat?name=b&room=blue")
        ) as b:
            assert (await recv_json(a))["members"] == 1
            assert (await recv_json(b))["members"] == 1
            await a.send("red only")
            assert (await recv_json(a))["text"] == "red only"
            await b.send("blue only")
            assert (await recv_json(b))["text"] == "blue only"
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(a.recv(), 0.2)


async def test_names_and_rooms_default_and_are_cleaned() -> None:
    async with demo_server() as server:
        async with websockets.connect(url(server, "/chat")) as ws:
            welcome = await recv_json(ws)
            assert re.fullmatch(r"guest-\d+", welcome["name"]) and welcome["room"] == "lobby"
        async with websockets.connect(url(server, "/chat?name=zo%C3%AB&room=caf%C3%A9")) as ws:
            welcome = await recv_json(ws)
            assert (welcome["name"], welcome["room"]) == ("zoë", "café")
            status, _, body = await http(server.port, "POST", "/rooms/caf%C3%A9/messages", b"ok")
            assert json.loads(body)["members"] == 1
            assert await recv_json(ws) == {"type": "message", "name": "http", "text": "ok"}
        long_name = "n" * 100
        async with websockets.connect(url(server, f"/chat?name=%20{long_name}%0A&room=%09r%09")) as ws:
            welcome = await recv_json(ws)
            assert welcome["name"] == "n" * MAX_NAME and welcome["room"] == "r"


def test_binary_frame_round_trip() -> None:
    assert binary_frame("zoë", b"\x00data") == b"\x04zo\xc3\xab\x00data"
    assert parse_binary_frame(binary_frame("zoë", b"\x00data")) == ("zoë", b"\x00data")


# ---------------------------------------------------------------- echo
async def test_echo_text_binary_and_compression() -> None:
    async with demo_server() as server:
        async with websockets.connect(url(server, "/echo")) as ws:
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            for msg in ("hello", b"\x00\xff", "x" * 60_000):
                await ws.send(msg)
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == msg
        async with websockets.connect(url(server, "/echo"), compression=None) as ws:
            await ws.send("plain")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "plain"


async def test_oversized_message_is_refused_with_1009() -> None:
    async with demo_server() as server:
        async with websockets.connect(url(server, "/echo"), compression=None) as ws:
            await ws.send(b"x" * (64 * 1024 + 1))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert ws.close_code == 1009


# ---------------------------------------------------------------- publish from HTTP
async def test_http_post_publishes_to_the_room() -> None:
    async with demo_server() as server:
        status, _, body = await http(server.port, "POST", "/rooms/empty/messages", b"anyone?")
        assert (status, json.loads(body)) == (200, {"room": "empty", "members": 0, "status": 0})
        async with websockets.connect(url(server, "/chat?name=a&room=ops")) as a, websockets.connect(
            url(server, "/chat?name=b&room=ops")
        ) as b:
            await recv_json(a)
            await recv_json(b)
            await recv_json(a)  # b joined
            status, _, body = await http(
                server.port, "POST", "/rooms/ops/messages?name=deploy-bot", "v2 is live ✓".encode()
            )
            reply = json.loads(body)
            assert status == 200 and reply["members"] == 2 and reply["status"] > 0
            line = {"type": "message", "name": "deploy-bot", "text": "v2 is live ✓"}
            assert await recv_json(a) == line
            assert await recv_json(b) == line
        status, headers, _ = await http(server.port, "GET", "/rooms/ops/messages")
        assert status == 405 and headers["allow"] == "POST"


# ---------------------------------------------------------------- origin guard
async def test_cross_site_browser_sockets_are_refused() -> None:
    async with demo_server() as server:
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(url(server, "/chat"), origin="http://evil.example")  # type: ignore[arg-type]
        assert info.value.response.status_code == 403
        same = f"http://127.0.0.1:{server.port}"
        async with websockets.connect(url(server, "/chat"), origin=same) as ws:  # type: ignore[arg-type]
            assert (await recv_json(ws))["type"] == "welcome"


# ---------------------------------------------------------------- python -m bunws
def _start_cli(*args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Start ``python -m bunws ARGS`` and read its banner (up to the Ctrl-C line)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bunws", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    lines = read_lines(proc, lambda lines: any("Ctrl-C" in line for line in lines))
    return proc, lines


def read_lines(proc: subprocess.Popen[str], done: Any) -> list[str]:
    """Lines of ``proc``'s stdout until ``done(lines)``, within TIMEOUT.

    A thread reads (select() would miss lines already in the text buffer); the rest
    of stdout stays readable with ``communicate``.
    """
    assert proc.stdout is not None
    lines: list[str] = []
    found = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        while not found.is_set():
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if done(lines):
                found.set()
        found.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    if not found.wait(TIMEOUT) or not done(lines):
        proc.kill()
        raise AssertionError(f"python -m bunws printed no banner within {TIMEOUT}s: {lines!r}")
    thread.join(TIMEOUT)
    return lines


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_python_m_bunws_serves_and_stops_with_1001() -> None:
    proc, banner = _start_cli("--port", "0")
    try:
        match = re.search(r"demo chat on http://127\.0\.0\.1:(\d+)/", banner[0])
        assert match, banner
        port = int(match.group(1))
        status, _, body = await http(port, "GET", "/")
        assert status == 200 and b"bunws chat" in body
        async with websockets.connect(f"ws://127.0.0.1:{port}/chat?name=cli") as ws:
            assert (await recv_json(ws))["type"] == "welcome"
            proc.send_signal(signal.SIGINT)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert ws.close_code == 1001
        out, _ = await asyncio.to_thread(proc.communicate, timeout=TIMEOUT)
        assert proc.returncode == 0
        assert "bunws demo stopped" in out and "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_cli_rejects_bad_options() -> None:
    for args, needle in ((["--port", "70000"], "--port must be in 0..65535"), (["--workers", "0"], "--workers must be 1")):
        result = subprocess.run(
            [sys.executable, "-m", "bunws", *args], capture_output=True, text=True, timeout=TIMEOUT
        )
        assert result.returncode == 2 and needle in result.stderr, result.stderr


def test_cli_workers() -> None:
    if not cli._run_accepts("workers"):
        result = subprocess.run(
            [sys.executable, "-m", "bunws", "--port", "0", "--workers", "2"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 2
        assert "--workers 2 needs multi-process workers" in result.stderr
        return
    proc, banner = _start_cli("--port", "0", "--workers", "2")
    try:
        assert "topics are per process" in banner[0]  # the warning without --redis
        assert sum("demo chat on" in line for line in banner) == 1  # worker 0's banner only
        port = int(re.search(r"demo chat on http://127\.0\.0\.1:(\d+)/", "\n".join(banner)).group(1))  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.recv(12) == b"HTTP/1.1 200"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0
        assert out.count("bunws demo stopped") == 1 and "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_cli_reports_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["--port", str(port)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
