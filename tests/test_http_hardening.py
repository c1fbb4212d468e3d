"""Hostile HTTP input and the edges around the front, over real loopback sockets.

Each test is the regression test of one finding of the hostile-input audit: answers
leave in request order, what a client makes the server keep is bounded, timeouts
abort, and a bad header is an error, never a dropped connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from typing import Any

import pytest
import trustme
import websockets
import wire
from conftest import count_writes, eventually, running, ws_url
from rawclient import RawClient
from test_http import parse_responses

import bunws
from bunws.protocol import HOLD_LIMIT, HTTP_WRITE_LIMIT, MAX_QUEUED_REQUESTS

ASYNCIO_ONLY = pytest.mark.asyncio(loop_factories=["asyncio"])


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 5) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.read()


def connections_of(server: bunws.Server) -> list[Any]:
    return list(server._connections)


# ================================================================ 1. header values and names
@pytest.mark.parametrize("name, value", [("X-Name", "caf\u00e9 \u2603"), ("X-Ctl", "a\x00b"), (" X-Fold", "v"), ("X:Y", "v"), ("", "v")])
def test_response_rejects_headers_http_cannot_carry(name: str, value: str) -> None:
    with pytest.raises(bunws.InvalidArgument):
        bunws.Response("x", headers={name: value})


def test_latin1_header_values_are_kept_and_blanks_trimmed() -> None:
    response = bunws.Response("x", headers=[("X-Latin", "  caf\u00e9\t")])
    assert ("X-Latin", "caf\u00e9") in response.headers


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_unicode_header_value_from_fetch_gives_500_and_a_log_line(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    def build() -> bunws.Response:
        response = bunws.Response("ok")
        response.headers.append(("X-Snow", "\u2603"))  # changed after the constructor checked
        return response

    async def afetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        await asyncio.sleep(0)
        return build()

    fetch = afetch if mode == "async" else (lambda req, server: build())
    with caplog.at_level(logging.ERROR, logger="bunws"):
        async with running(fetch=fetch) as server:
            reader, writer = await open_raw(server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            data = await read_to_eof(reader)
            writer.close()
    [(status, headers, _)] = parse_responses(data)
    assert status == 500 and headers["connection"] == "close"
    assert "cannot send the Response" in caplog.text


async def test_upgrade_headers_must_be_tokens_and_latin1() -> None:
    seen: list[str] = []

    def fetch(req: bunws.Request, server: bunws.Server) -> Any:
        try:
            server.upgrade(req, headers={" X-Folded": "v"})
        except bunws.InvalidArgument as exc:
            seen.append(type(exc).__name__)
        try:
            server.upgrade(req, headers={"X-Snow": "\u2603"})
        except bunws.InvalidArgument as exc:
            seen.append(type(exc).__name__)
        if server.upgrade(req, headers={"X-Ok": "fine"}):
            return None
        return bunws.Response("no", status=400)

    async with running(fetch=fetch) as server:
        client = await RawClient.connect(server.port)
        head = client.head
        client.close()
    assert seen == ["InvalidArgument", "InvalidArgument"]
    assert b"\r\n X-Folded" not in head and b"X-Ok: fine\r\n" in head


# ================================================================ 2. Host
@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: good.example, evil.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x/y\r\n\r\n",
    ],
    ids=["missing", "twice", "list", "space", "slash"],
)
async def test_http11_request_needs_exactly_one_valid_host(head: bytes) -> None:
    calls: list[str] = []

    def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        calls.append(req.url)
        return bunws.Response("served")

    async with running(fetch=fetch) as server:
        reader, writer = await open_raw(server.port)
        writer.write(head)
        data = await read_to_eof(reader)
        writer.close()
    [(status, _, _)] = parse_responses(data)
    assert status == 400 and calls == []


@pytest.mark.parametrize(
    "head, url",
    [
        (b"GET /a HTTP/1.0\r\n\r\n", "http://localhost/a"),
        (b"GET /a HTTP/1.1\r\nHost: [::1]:3000\r\n\r\n", "http://[::1]:3000/a"),
        (b"GET /a HTTP/1.1\r\nHost: example.com:80\r\n\r\n", "http://example.com:80/a"),
    ],
)
async def test_valid_hosts_are_served(head: bytes, url: str) -> None:
    async with running(fetch=lambda req, server: bunws.Response(req.url)) as server:
        reader, writer = await open_raw(server.port)
        writer.write(head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        data = await read_to_eof(reader)
        writer.close()
    [(status, _, body)] = parse_responses(data)
    assert (status, body.decode()) == (200, url)


# ================================================================ 3. head size across reads
@pytest.mark.parametrize("tail", ["body", "pipelined"])
async def test_head_split_over_two_reads_is_not_a_false_431(tail: str) -> None:
    async with running(fetch=lambda req, server: bunws.Response(f"{req.path}:{len(req._body)}"), max_head_size=1024) as server:
        reader, writer = await open_raw(server.port)
        filler = "X-Fill: " + "f" * 600 + "\r\n"
        first = f"POST /1 HTTP/1.1\r\nHost: h\r\n{filler}".encode()
        if tail == "body":
            rest = b"Content-Length: 4000\r\nConnection: close\r\n\r\n" + b"b" * 4000
        else:
            rest = b"Content-Length: 0\r\n\r\n" + b"".join(
                f"GET /{i} HTTP/1.1\r\nHost: h\r\n{filler}\r\n".encode() for i in range(2, 6)
            ) + b"GET /6 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        writer.write(first)
        await writer.drain()
        await asyncio.sleep(0.05)  # the head arrives in two reads
        writer.write(rest)
        data = await read_to_eof(reader)
        writer.close()
    answers = parse_responses(data)
    assert {status for status, _, _ in answers} == {200}
    if tail == "body":
        assert [body for _, _, body in answers] == [b"/1:4000"]
    else:
        assert len(answers) == 6


async def test_a_header_that_never_ends_is_still_bounded() -> None:
    async with running(fetch=lambda req, server: bunws.Response("x"), max_head_size=4096) as server:
        reader, writer = await open_raw(server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: ")
        for _ in range(6):  # one read each, none of them completes the header
            writer.write(b"a" * 1024)
            await writer.drain()
            await asyncio.sleep(0.02)
        data = await read_to_eof(reader)
        writer.close()
    assert data.startswith(b"HTTP/1.1 431 ")


# ================================================================ 4. write backpressure in the HTTP phase
@ASYNCIO_ONLY
async def test_pipelined_requests_from_a_non_reader_are_bounded_and_time_out() -> None:
    body = "r" * 30_000
    # max_head_size is generous so that only the write side can bound this client
    async with running(fetch=lambda req, server: bunws.Response(body), handshake_timeout=1, max_head_size=1 << 20) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
        # 14 kB of requests for 15 MB of answers; the kernel buffers take the requests
        await asyncio.wait_for(loop.sock_sendall(sock, request * 500), 5)
        await asyncio.sleep(0.5)
        [conn] = connections_of(server)
        buffered = conn.transport.get_write_buffer_size()
        assert buffered <= HTTP_WRITE_LIMIT + 2 * len(body) + 512, buffered
        # handshake_timeout=1 and the client reads nothing: aborted, not left open
        await eventually(lambda: not server._connections, timeout=4)
        sock.close()


# ================================================================ 5. request queue behind an async fetch
@ASYNCIO_ONLY
async def test_pipelined_requests_behind_a_busy_fetch_are_bounded() -> None:
    release = asyncio.Event()

    async def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        if req.path == "/slow":
            await release.wait()
        return bunws.Response(req.path)

    async with running(fetch=fetch) as server:
        reader, writer = await open_raw(server.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        request = b"GET /n HTTP/1.1\r\nHost: h\r\n\r\n"
        writer.write(request * 12_000)  # 330 kB of requests: more than one read
        await asyncio.sleep(0.5)
        [conn] = connections_of(server)
        queued = len(conn._queue)
        waiting = len(conn._unparsed or b"")
        assert queued <= MAX_QUEUED_REQUESTS + 8 * 1024 // len(request) + 1, queued
        assert waiting <= 2 * 256 * 1024 + 8 * 1024, waiting
        release.set()
        writer.write(b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        data = await read_to_eof(reader, timeout=30)
        writer.close()
    bodies = [body for _, _, body in parse_responses(data)]
    assert bodies[0] == b"/slow" and bodies[-1] == b"/last"
    assert bodies[1:-1] == [b"/n"] * 12_000  # nothing lost, nothing reordered


# ================================================================ 6. bytes held after an Upgrade head
@ASYNCIO_ONLY
async def test_bytes_after_an_upgrade_head_are_bounded_while_fetch_decides() -> None:
    release = asyncio.Event()
    got: list[int] = []

    async def fetch(req: bunws.Request, server: bunws.Server) -> Any:
        await release.wait()
        return None if server.upgrade(req) else bunws.Response("no", status=400)

    handler = bunws.WebSocketHandler(message=lambda ws, m: got.append(len(m)), max_payload_length=1 << 20)
    async with running(handler, fetch=fetch) as server:
        reader, writer = await open_raw(server.port)
        writer.write(RawClient.handshake_request("/"))
        frame = wire.client(wire.BINARY, b"z" * 60_000)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2):
                for _ in range(400):  # 24 MB if nothing stopped it
                    writer.write(frame)
                    await writer.drain()
        [conn] = connections_of(server)
        held = len(conn._early_bytes)
        assert held <= HOLD_LIMIT + 256 * 1024, held
        release.set()
        await eventually(lambda: len(got) > 10, timeout=10)
        writer.transport.abort()
    assert set(got) == {60_000}


# ================================================================ 7. answers in request order
@pytest.mark.parametrize(
    "second, status",
    [
        (b"BROKEN\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"x" * 5000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999\r\n\r\n", 413),
    ],
    ids=["400", "431", "413"],
)
async def test_refusal_of_a_later_request_waits_for_the_slow_answer_before_it(second: bytes, status: int) -> None:
    async def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        await asyncio.sleep(0.2)
        return bunws.Response("slow one")

    async with running(fetch=fetch, max_head_size=4096, max_body_size=1 << 20) as server:
        reader, writer = await open_raw(server.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n" + second)
        data = await read_to_eof(reader)
        writer.close()
    answers = parse_responses(data)
    assert [s for s, _, _ in answers] == [200, status]
    assert answers[0][2] == b"slow one"


async def test_100_continue_waits_for_the_answer_before_it() -> None:
    async def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        if req.path == "/slow":
            await asyncio.sleep(0.2)
        return bunws.Response(f"{req.path}:{len(req._body)}")

    async with running(fetch=fetch) as server:
        reader, writer = await open_raw(server.port)
        writer.write(
            b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
        )
        async with asyncio.timeout(5):
            first = await reader.readuntil(b"slow:0")
            interim = await reader.readuntil(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200 ")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"abc")
        async with asyncio.timeout(5):
            rest = await reader.readuntil(b"/up:3")
        writer.close()
    assert b"200 OK" in rest


# ================================================================ 8. half-close
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_half_closed_client_still_gets_its_answers(mode: str) -> None:
    async def afetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        await asyncio.sleep(0.05)
        return bunws.Response(req.path)

    fetch = afetch if mode == "async" else (lambda req, server: bunws.Response(req.path))
    async with running(fetch=fetch) as server:
        reader, writer = await open_raw(server.port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
        writer.write_eof()
        data = await read_to_eof(reader)
        writer.close()
    assert [body for _, _, body in parse_responses(data)] == [b"/a", b"/b"]


# ================================================================ 9. error(exc, ws) for async handlers
async def test_error_handler_gets_the_socket_for_async_message_and_close() -> None:
    seen: list[tuple[str, bool]] = []

    async def message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        raise RuntimeError("in message")

    async def close(ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("in close")

    def error(exc: Exception, ws: Any) -> None:
        seen.append((str(exc), isinstance(ws, bunws.ServerWebSocket)))

    handler = bunws.WebSocketHandler(message=message, close=close, error=error)
    async with running(handler) as server:
        async with websockets.connect(ws_url(server)) as client:
            await client.send("x")
            await eventually(lambda: len(seen) >= 1)
        await eventually(lambda: len(seen) >= 2)
    assert ("in message", True) in seen and ("in close", True) in seen


# ================================================================ 10. peer close on an older connection
@ASYNCIO_ONLY
async def test_peer_close_after_handshake_timeout_keeps_close_timeout() -> None:
    payload = b"q" * 65536
    total = 8 * 1024 * 1024

    def open_(ws: bunws.ServerWebSocket) -> None:
        pass

    closes: list[int] = []
    handler = bunws.WebSocketHandler(
        open=open_, close=lambda ws, code, reason: closes.append(code), backpressure_limit=0
    )
    async with running(handler, handshake_timeout=1, close_timeout=20) as server:
        from test_backpressure import Peer

        peer = await Peer.connect(server.port)
        await eventually(lambda: server.pending_websockets == 1)
        await asyncio.sleep(1.6)  # older than handshake_timeout
        ws = next(iter(server._connections)).session.ws
        for _ in range(total // len(payload)):
            ws.send(payload)
        await peer.sendall(wire.client(wire.CLOSE, wire.close_payload(1000)))
        await asyncio.sleep(1.5)  # a few ticks pass while the peer reads nothing
        received = 0
        frames = []
        async with asyncio.timeout(20):
            while not peer.eof:
                await peer.recv_some(5)
                frames += peer.frames()
        received = sum(len(p) for op, p in frames if op == wire.BINARY)
        peer.close()
    assert received == total
    assert frames[-1] == (wire.CLOSE, struct.pack("!H", 1000))
    assert closes == [1000]


# ================================================================ 11. frames that came with the handshake
async def test_frames_with_the_handshake_go_before_later_frames_when_fetch_awaits() -> None:
    got: list[str] = []
    later_sent = asyncio.Event()

    async def fetch(req: bunws.Request, server: bunws.Server) -> None:
        server.upgrade(req)
        await later_sent.wait()  # fetch goes on awaiting after upgrade()
        await asyncio.sleep(0.05)

    handler = bunws.WebSocketHandler(message=lambda ws, m: got.append(m))
    async with running(handler, fetch=fetch) as server:
        client = await RawClient.connect(server.port, trailing=wire.client(wire.TEXT, "first"))
        await asyncio.sleep(0.05)
        client.send_text("second")
        later_sent.set()
        await eventually(lambda: len(got) == 2)
        client.close()
    assert got == ["first", "second"]


# ================================================================ 12. TLS handshakes count as pending
@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def test_silent_tls_sockets_are_capped_by_max_pending_handshakes(tls: Any) -> None:
    server_ctx, client_ctx = tls
    handler = bunws.WebSocketHandler(message=lambda ws, m: ws.send(m))
    async with running(handler, ssl=server_ctx, max_pending_handshakes=10) as server:
        silent = []
        for _ in range(60):
            sock = socket.create_connection(("127.0.0.1", server.port))
            silent.append(sock)
        await eventually(lambda: len(server._connections) <= 10 and server.pending_requests <= 10)
        await asyncio.sleep(0.2)
        assert server.pending_requests <= 10
        refused = 0
        for sock in silent:
            sock.setblocking(False)
            try:
                if sock.recv(1) == b"":
                    refused += 1
            except BlockingIOError:
                pass
            except OSError:
                refused += 1
        assert refused >= 50
        for sock in silent:
            sock.close()
        await eventually(lambda: server.pending_requests == 0)
        async with websockets.connect(f"wss://127.0.0.1:{server.port}/", ssl=client_ctx) as client:
            await client.send("tls still works")
            assert await client.recv() == "tls still works"


# ================================================================ 15. the timer tick survives
@ASYNCIO_ONLY  # waits for an idle timeout (8 s): once is enough
async def test_timer_tick_survives_a_failing_backplane_unsubscribe(caplog: pytest.LogCaptureFixture) -> None:
    class BadBackplane:
        async def start(self, server: bunws.Server) -> None:
            pass

        def subscribe(self, topic: str) -> None:
            pass

        def unsubscribe(self, topic: str) -> None:
            raise RuntimeError("backplane down")

        def publish(self, *args: Any) -> None:
            pass

        async def close(self) -> None:
            pass

    closes: list[int] = []
    handler = bunws.WebSocketHandler(
        open=lambda ws: ws.subscribe("t"), close=lambda ws, code, reason: closes.append(code), idle_timeout=8
    )
    with caplog.at_level(logging.ERROR, logger="bunws"):
        async with running(handler, handshake_timeout=0.5, backplane=BadBackplane()) as server:
            from test_backpressure import Peer

            idle = await Peer.connect(server.port)  # never sends: reaped at idle_timeout
            await eventually(lambda: server.pending_websockets == 1)
            await eventually(lambda: closes == [1006], timeout=12)
            # the tick still runs: a silent HTTP connection hits its handshake timeout
            reader, writer = await open_raw(server.port)
            data = await read_to_eof(reader, timeout=3)
            writer.close()
            idle.close()
    assert data == b""
    assert "backplane unsubscribe('t') failed" in caplog.text


async def test_timer_tick_logs_and_goes_on_when_one_check_raises(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def check_timers(self, now: float) -> None:
            raise RuntimeError("broken timer")

    with caplog.at_level(logging.ERROR, logger="bunws"):
        async with running(fetch=lambda req, server: bunws.Response("x"), handshake_timeout=0.5) as server:
            broken = Broken()
            assert server.admit(broken)  # type: ignore[arg-type]
            try:
                reader, writer = await open_raw(server.port)
                data = await read_to_eof(reader, timeout=3)  # closed by its handshake timeout
                writer.close()
            finally:
                server.release(broken, in_http=True)  # type: ignore[arg-type]
    assert data == b""
    assert "broken timer" in caplog.text


# ================================================================ fuzz_http_pipeline's findings
async def test_request_before_an_upgrade_in_the_same_read_keeps_the_connection() -> None:
    """A: the answer to a GET pipelined before an Upgrade is not 'Connection: close'."""
    got: list[str] = []
    handler = bunws.WebSocketHandler(message=lambda ws, m: got.append(m))

    def fetch(req: bunws.Request, server: bunws.Server) -> Any:
        if req.path == "/ws":
            return None if server.upgrade(req) else bunws.Response("no", status=400)
        return bunws.Response("PLAINBODY")

    async with running(handler, fetch=fetch) as server:
        reader, writer = await open_raw(server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" + RawClient.handshake_request("/ws")
                     + wire.client(wire.TEXT, "after"))
        async with asyncio.timeout(5):
            first = await reader.readuntil(b"PLAINBODY")
            second = await reader.readuntil(b"\r\n\r\n")
        assert b"connection: close" not in first.lower()
        assert second.startswith(b"HTTP/1.1 101 ")
        await eventually(lambda: got == ["after"])
        writer.close()


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"HEAD /raise HTTP/1.1\r\nHost: h\r\n\r\n", 500),
        (b"HEAD / HTTP/1.1\r\nHost: h\r\nX: " + b"x" * 5000 + b"\r\n\r\n", 431),
        (b"HEAD / HTTP/1.1\r\n\r\n", 400),
    ],
    ids=["500", "431", "400"],
)
async def test_the_servers_own_answers_to_head_have_no_body(raw: bytes, status: int) -> None:
    """B: RFC 9110 §9.3.2, also for the answers the server makes itself."""
    def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        if req.path == "/raise":
            raise RuntimeError("boom")
        return bunws.Response("x")

    async with running(fetch=fetch, max_head_size=4096) as server:
        reader, writer = await open_raw(server.port)
        writer.write(raw)
        data = await read_to_eof(reader)
        writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    assert rest == b""


@ASYNCIO_ONLY
async def test_a_101_written_over_unread_answers_still_reads_the_websocket() -> None:
    """D: the 101 pushing the transport over its high-water mark must not leave the
    WebSocket unable to read once the client catches up."""
    got: list[str] = []
    handler = bunws.WebSocketHandler(message=lambda ws, m: got.append(m))
    big = "p" * 60_000

    def fetch(req: bunws.Request, server: bunws.Server) -> Any:
        if req.path == "/ws":
            return None if server.upgrade(req) else bunws.Response("no", status=400)
        return bunws.Response(big)

    async with running(handler, fetch=fetch) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" + RawClient.handshake_request("/ws"))
        await asyncio.sleep(0.3)  # the answer and the 101 wait in the server's buffer
        data = b""
        async with asyncio.timeout(10):
            while b"101 Switching" not in data or not data.endswith(b"\r\n\r\n"):
                data += await loop.sock_recv(sock, 65536)
        await loop.sock_sendall(sock, wire.client(wire.TEXT, "hello"))
        await eventually(lambda: got == ["hello"], timeout=5)
        sock.close()


# ================================================================ review findings
async def test_a_chunked_trailer_that_never_ends_is_bounded() -> None:
    async with running(fetch=lambda req, server: bunws.Response("x"), max_head_size=4096) as server:
        reader, writer = await open_raw(server.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: ")
        await writer.drain()
        await asyncio.sleep(0.05)
        for _ in range(5):  # each read goes into one unfinished trailer line
            writer.write(b"a" * 1024)
            await writer.drain()
            await asyncio.sleep(0.02)
        data = await read_to_eof(reader)
        writer.close()
    assert data.startswith(b"HTTP/1.1 431 ")


async def test_tls_sends_report_real_statuses_and_drain_only_after_backpressure(tls: Any) -> None:
    server_ctx, client_ctx = tls
    statuses: list[int] = []
    drains: list[int] = []

    def message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        statuses.append(ws.send(msg))

    handler = bunws.WebSocketHandler(
        open=lambda ws: statuses.append(ws.send("hi")), message=message,
        drain=lambda ws: drains.append(1),
    )
    async with running(handler, ssl=server_ctx) as server:
        async with websockets.connect(f"wss://127.0.0.1:{server.port}/", ssl=client_ctx) as client:
            assert await client.recv() == "hi"
            for i in range(20):
                await client.send(f"m{i}")
                assert await client.recv() == f"m{i}"
    assert statuses == [2] + [len(f"m{i}") for i in range(20)]
    assert drains == []


@ASYNCIO_ONLY
async def test_a_slow_but_steady_reader_gets_the_whole_answer() -> None:
    body = b"s" * (3 * 1024 * 1024)

    def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        # a small kernel buffer: the answer waits in the transport, not in the kernel
        sock = req.connection.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        return bunws.Response(body)

    async with running(fetch=fetch, handshake_timeout=1) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        got = bytearray()
        async with asyncio.timeout(20):
            while True:  # about 1.5 MiB/s: the answer takes longer than the timeout
                chunk = await loop.sock_recv(sock, 16384)
                if not chunk:
                    break
                got += chunk
                await asyncio.sleep(0.01)
        sock.close()
    assert got.endswith(body)


async def test_a_closed_socket_is_freed_by_reference_counting() -> None:
    import gc
    import weakref

    refs: list[Any] = []
    kept: list[bunws.ServerWebSocket] = []

    def open_(ws: bunws.ServerWebSocket) -> None:
        kept.append(ws)  # the application keeps the socket after it closed
        refs.append(weakref.ref(ws))

    async with running(bunws.WebSocketHandler(open=open_)) as server:
        gc.disable()
        try:
            async with websockets.connect(ws_url(server)) as client:
                await eventually(lambda: bool(kept))
                conn = next(iter(server._connections))
                session_ref = weakref.ref(conn.session)
                del conn
                await client.close()
            await eventually(lambda: server.pending_websockets == 0 and not server._connections)
            await asyncio.sleep(0.05)
            assert session_ref() is None, "the session outlived its connection"
            kept.clear()
            assert refs[0]() is None, "the closed socket was kept alive by a cycle"
        finally:
            gc.enable()


async def test_publishing_to_itself_inside_a_handler_is_written_past_16_kib() -> None:
    writes_during: list[int] = []

    def open_(ws: bunws.ServerWebSocket) -> None:
        ws.subscribe("self")

    def message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        writes = count_writes(ws)
        for _ in range(64):  # 64 KiB to itself, in one handler
            ws.publish("self", b"q" * 1024)
        writes_during.append(len(writes))

    handler = bunws.WebSocketHandler(open=open_, message=message, publish_to_self=True)
    async with running(handler) as server:
        async with websockets.connect(ws_url(server)) as client:
            await client.send("go")
            for _ in range(64):
                assert await asyncio.wait_for(client.recv(), 5) == b"q" * 1024
    assert writes_during and writes_during[0] >= 3  # flushed every 16 KiB, not held


async def test_a_failing_backplane_publish_still_delivers_locally(caplog: pytest.LogCaptureFixture) -> None:
    class Failing:
        async def start(self, server: bunws.Server) -> None:
            pass

        def subscribe(self, topic: str) -> None:
            pass

        def unsubscribe(self, topic: str) -> None:
            pass

        def publish(self, *args: Any) -> None:
            raise RuntimeError("redis down")

        async def close(self) -> None:
            pass

    handler = bunws.WebSocketHandler(open=lambda ws: ws.subscribe("t"))
    with caplog.at_level(logging.ERROR, logger="bunws"):
        async with running(handler, backplane=Failing()) as server:
            async with websockets.connect(ws_url(server)) as client:
                await eventually(lambda: server.subscriber_count("t") == 1)
                assert server.publish("t", "local") == 5
                assert await asyncio.wait_for(client.recv(), 5) == "local"
    assert "backplane publish('t') failed" in caplog.text


async def test_no_upgrade_once_llhttp_parsed_past_the_request() -> None:
    results: list[bool] = []

    def fetch(req: bunws.Request, server: bunws.Server) -> Any:
        if req.path == "/ws":
            results.append(server.upgrade(req))
            return None if results[-1] else bunws.Response("not upgraded", status=400)
        return bunws.Response("second")

    async with running(fetch=fetch) as server:
        reader, writer = await open_raw(server.port)
        # no "Connection: upgrade": llhttp does not pause, so the next request is parsed
        head = RawClient.handshake_request("/ws").replace(b"Connection: Upgrade\r\n", b"")
        writer.write(head + b"GET /next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        data = await read_to_eof(reader)
        writer.close()
    assert results == [False]
    assert data.startswith(b"HTTP/1.1 400 ")
