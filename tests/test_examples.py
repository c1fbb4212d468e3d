"""Every file in examples/ runs as a program and does what its docstring says.

Each example is started as ``python examples/NAME.py --port 0`` (the OS picks a
free port), its printed URL is read, a real client (``websockets``' sync client,
urllib for HTTP) talks to it, and Ctrl-C (SIGINT) must stop it cleanly with 1001
to the clients still connected.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 10.0


class Example:
    """A running example process and the port it printed."""

    def __init__(self, proc: subprocess.Popen[str], port: int, banner: list[str]) -> None:
        self.proc = proc
        self.port = port
        self.banner = banner
        self.output = ""  # the rest of stdout, filled in after the stop

    def ws(self, path: str = "/", **kwargs: object) -> ClientConnection:
        return connect(f"ws://127.0.0.1:{self.port}{path}", open_timeout=TIMEOUT, **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.read()


def _read_banner(proc: subprocess.Popen[str], count: int) -> list[str]:
    """The first ``count`` lines of stdout, within TIMEOUT.

    A thread reads (select() would miss lines already in the text buffer); the rest
    of stdout stays readable with ``communicate``.
    """
    assert proc.stdout is not None
    lines: list[str] = []
    found = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        while len(lines) < count:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        found.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    if not found.wait(TIMEOUT) or len(lines) < count:
        proc.kill()
        raise AssertionError(f"no URL printed within {TIMEOUT}s; got {lines!r}")
    thread.join(TIMEOUT)
    return lines


@contextlib.contextmanager
def example(name: str, banner_lines: int = 1) -> Iterator[Example]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        banner = _read_banner(proc, banner_lines)
        match = re.search(r"://127\.0\.0\.1:(\d+)/", banner[0])
        assert match, f"{name} printed no URL: {banner!r}"
        ex = Example(proc, int(match.group(1)), banner)
        yield ex
        proc.send_signal(signal.SIGINT)
        ex.output, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"{name} exited {proc.returncode} on SIGINT:\n{ex.output}"
        assert "Traceback" not in ex.output, ex.output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def recv_all(ws: ClientConnection, n: int) -> list[str | bytes]:
    return [ws.recv(timeout=TIMEOUT) for _ in range(n)]


def test_every_example_has_a_test() -> None:
    tested = {
        "echo.py",
        "contextual_data.py",
        "headers.py",
        "pubsub_chat.py",
        "http_publish.py",
        "backpressure.py",
        "cork.py",
        "compression.py",
    }
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_echo() -> None:
    with example("echo.py") as ex, ex.ws() as ws:
        ws.send("hello ✓")
        assert ws.recv(timeout=TIMEOUT) == "hello ✓"
        ws.send(b"\x00\xffbinary")
        assert ws.recv(timeout=TIMEOUT) == b"\x00\xffbinary"
        big = "x" * 200_000
        ws.send(big)
        assert ws.recv(timeout=TIMEOUT) == big


def test_echo_stops_with_1001_on_ctrl_c() -> None:
    with example("echo.py") as ex, ex.ws() as ws:
        ws.send("ping")
        assert ws.recv(timeout=TIMEOUT) == "ping"
        ex.proc.send_signal(signal.SIGINT)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT)
        assert ws.close_code == 1001
        assert ws.close_reason == "Server shutting down"
        ex.proc.wait(TIMEOUT)


def test_contextual_data_from_query_and_cookie() -> None:
    with example("contextual_data.py") as ex:
        with ex.ws("/?user=ada") as ws:
            assert ws.recv(timeout=TIMEOUT) == "hello ada"
            ws.send("one")
            ws.send("two")
            assert recv_all(ws, 2) == ["ada #1: one", "ada #2: two"]
        with ex.ws("/", additional_headers={"Cookie": "user=grace"}) as ws:
            assert ws.recv(timeout=TIMEOUT) == "hello grace"
        with ex.ws("/") as ws:
            assert ws.recv(timeout=TIMEOUT) == "hello anonymous"
    assert re.search(r"ada left after [\d.]+s and 2 messages", ex.output), ex.output


def test_headers_and_cookies_on_the_101() -> None:
    with example("headers.py") as ex:
        with ex.ws() as ws:
            headers = ws.response.headers
            cookies = headers.get_all("Set-Cookie")
            assert len(cookies) == 2
            session = re.fullmatch(r"session=([0-9a-f]{16}); Path=/; HttpOnly; SameSite=Strict", cookies[0])
            assert session, cookies
            assert cookies[1] == "theme=dark; Path=/"
            assert headers["X-Powered-By"] == "bunws"
            assert ws.recv(timeout=TIMEOUT) == f"your session is {session.group(1)}"
        # A returning client keeps its session.
        with ex.ws("/", additional_headers={"Cookie": "session=abc123"}) as ws:
            assert ws.response.headers.get_all("Set-Cookie")[0].startswith("session=abc123;")
            assert ws.recv(timeout=TIMEOUT) == "your session is abc123"


def test_pubsub_chat() -> None:
    with example("pubsub_chat.py") as ex, ex.ws("/chat?username=alice") as alice:
        assert alice.recv(timeout=TIMEOUT) == "alice has entered the chat"
        with ex.ws("/chat?username=bob") as bob:
            assert bob.recv(timeout=TIMEOUT) == "bob has entered the chat"
            assert alice.recv(timeout=TIMEOUT) == "bob has entered the chat"
            alice.send("hi bob")
            assert bob.recv(timeout=TIMEOUT) == "alice: hi bob"
            assert alice.recv(timeout=TIMEOUT) == "alice: hi bob"
        assert alice.recv(timeout=TIMEOUT) == "bob has left the chat"


def test_publish_from_http_handler() -> None:
    with example("http_publish.py", banner_lines=2) as ex:
        assert ex.banner[1].endswith(f"http://127.0.0.1:{ex.port}/news")
        status, body = ex.post("/news", b"nobody listens")
        assert (status, json.loads(body)) == (200, {"delivered_to": 0})
        with ex.ws("/subscribe") as one, ex.ws("/subscribe") as two:
            status, body = ex.post("/news", "breaking ✓".encode())
            assert json.loads(body) == {"delivered_to": 2}
            assert one.recv(timeout=TIMEOUT) == "breaking ✓"
            assert two.recv(timeout=TIMEOUT) == "breaking ✓"


def test_backpressure_waits_for_drain_and_loses_nothing() -> None:
    total = 16 * 1024 * 1024
    with example("backpressure.py") as ex:
        # A small receive queue makes the client stop reading, so the server sees -1.
        with ex.ws(max_size=None, max_queue=2) as ws:
            ws.send(f"stream {total}")
            time.sleep(0.3)
            seq = received = 0
            while True:
                msg = ws.recv(timeout=TIMEOUT)
                if isinstance(msg, str):
                    break
                assert int.from_bytes(msg[:8], "big") == seq
                seq += 1
                received += len(msg)
            word, chunks, drains = msg.split()
            assert word == "done"
            assert int(chunks) == seq == total // (64 * 1024)
            assert received == total
            assert int(drains) >= 1, "the client was slow, so the server must have waited for drain"


def test_cork_batches_an_async_reply() -> None:
    with example("cork.py") as ex, ex.ws() as ws:
        ws.send("row")
        assert recv_all(ws, 5) == ["begin", "row-0", "row-1", "row-2", "end"]


def test_compression_negotiated_and_optional() -> None:
    text = "compressible " * 5000
    with example("compression.py") as ex:
        with ex.ws() as ws:  # websockets offers permessage-deflate by default
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            assert ws.recv(timeout=TIMEOUT).startswith("extensions: permessage-deflate")
            ws.send(text)
            assert ws.recv(timeout=TIMEOUT) == text
            ws.send("tiny")
            assert ws.recv(timeout=TIMEOUT) == "tiny"
        with ex.ws(compression=None) as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            assert ws.recv(timeout=TIMEOUT) == "extensions: none"
            ws.send(text)
            assert ws.recv(timeout=TIMEOUT) == text
