"""ASGI HTTP conformance on bunws with raw ASGI apps and raw sockets: the scope,
chunked request bodies, pipelining in order, 100-continue, limits, streamed answers
to a slow reader, http.disconnect, app failures, lifespan."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from asgi_support import asgi_server, raw_exchange
from conftest import eventually

import bunws
from bunws.asgi import ASGIFetch, LifespanFailed, serve_asgi
from bunws.body_stream import STREAM_LIMIT
from bunws.protocol import PARSE_SLICE


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers the scope (without headers' values) and the body it received in parts."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["started"] = True
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    parts = []
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        parts.append(len(message["body"]))
        body = message["body"]
        if not message["more_body"]:
            break
    info = {k: scope[k] for k in ("http_version", "method", "scheme", "path", "root_path", "client", "server")}
    info.update(
        raw_path=scope["raw_path"].decode(), query=scope["query_string"].decode(),
        header_names=[n.decode() for n, _ in scope["headers"]], state=scope["state"],
        parts=len(parts), size=sum(parts), last=body[-10:].decode("latin-1"), asgi=scope["asgi"],
    )
    payload = json.dumps(info).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


def split_responses(data: bytes) -> list[tuple[bytes, bytes]]:
    """Content-Length framed answers -> [(head, body)]."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        out.append((head, rest[:length]))
        data = rest[length:]
    return out


async def test_scope_pipelining_in_order_and_chunked_request_body() -> None:
    async with asgi_server(echo_app, root_path="/api") as server:
        body = b"x" * 200_000
        chunked = b"".join(b"%x\r\n%b\r\n" % (len(body[i:i + 70000]), body[i:i + 70000]) for i in range(0, len(body), 70000))
        requests = (
            b"GET /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nX-Custom: v\r\n\r\n"
            b"POST /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n"
            b"GET /third HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        got = split_responses(await raw_exchange(server.port, requests))
        assert len(got) == 3
        first, second, third = (json.loads(b) for _, b in got)
        assert first["path"] == "/api/a b" and first["raw_path"] == "/api/a%20b" and first["query"] == "x=1"
        assert first["root_path"] == "/api" and first["http_version"] == "1.1" and first["scheme"] == "http"
        assert first["header_names"] == ["host", "x-custom"] and first["state"] == {"started": True}
        assert first["client"][0] == "127.0.0.1" and first["server"] == ["127.0.0.1", server.port]
        assert first["asgi"]["version"] == "3.0" and first["parts"] == 1 and first["size"] == 0
        assert second["path"] == "/api/chunked" and second["size"] == 200_000 and second["parts"] > 1
        assert third["path"] == "/api/third"
        assert b"Connection: close" in got[2][0] and b"Connection: close" not in got[0][0]


async def test_expect_100_continue_and_the_native_limits() -> None:
    async with asgi_server(echo_app, max_body_size=1000, max_head_size=2048) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()
        got = await raw_exchange(server.port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 413")
        got = await raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 3000 + b"\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 431")


async def test_streamed_answer_waits_for_a_slow_reader_and_arrives_whole() -> None:
    produced = [0]
    chunk = b"z" * 65536
    total_chunks = 400  # 26 MB: far more than the socket buffers hold

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(total_chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            produced[0] += 1
        await send({"type": "http.response.body", "body": b""})

    async with asgi_server(app, lifespan="off") as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        await eventually(lambda: produced[0] > 2)
        stalled = -1
        while stalled != produced[0]:  # until the app stops producing: send() is waiting
            stalled = produced[0]
            await asyncio.sleep(0.2)
        assert produced[0] < total_chunks // 4
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head
        received = 0
        async with asyncio.timeout(30):
            while True:
                size = int((await reader.readline()).strip(), 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                assert data[:-2] == chunk
                received += size
        assert received == total_chunks * len(chunk)
        writer.close()


async def test_disconnect_reaches_an_app_waiting_in_receive() -> None:
    seen: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        seen.set_result(await receive())  # the stream waits for the client to leave

    async with asgi_server(app, lifespan="off") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        await reader.readuntil(b"first")
        writer.close()
        assert (await asyncio.wait_for(seen, 5)) == {"type": "http.disconnect"}


async def test_app_exception_before_the_answer_is_500_after_it_closes() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/late":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom")

    async with asgi_server(app, lifespan="off") as server:
        got = await raw_exchange(server.port, b"GET /early HTTP/1.1\r\nHost: h\r\n\r\nGET /never HTTP/1.1\r\nHost: h\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 500") and got.count(b"HTTP/1.1") == 1
        got = await raw_exchange(server.port, b"GET /late HTTP/1.1\r\nHost: h\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"7\r\npartial\r\n")  # no last chunk


async def test_lifespan_failure_auto_and_shutdown() -> None:
    events = []

    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(LifespanFailed, match="no database"):
        await serve_asgi(failing, port=0)

    async def no_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise ValueError("lifespan is not for me")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body"})

    with pytest.raises(LifespanFailed):
        await serve_asgi(no_lifespan, port=0, lifespan="on")
    async with asgi_server(no_lifespan) as server:  # auto: goes on without
        got = await raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 204") and b"Content-Length" not in got

    async def tracked(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            events.append(message["type"])
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    server = await serve_asgi(tracked, port=0)
    assert events == ["lifespan.startup"]
    await server.stop()
    assert events == ["lifespan.startup", "lifespan.shutdown"]


async def test_an_answered_non_websocket_upgrade_request_ends_the_connection() -> None:
    async with asgi_server(echo_app, lifespan="off") as server:
        got = await raw_exchange(
            server.port,
            b"GET /h2 HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n",
        )
        assert got.startswith(b"HTTP/1.1 200") and b"Connection: close" in got and got.count(b"HTTP/1.1 ") == 1


async def test_absolute_form_target_gives_the_path() -> None:
    async with asgi_server(echo_app, lifespan="off") as server:
        got = split_responses(await raw_exchange(
            server.port, b"GET http://h/x/y?q=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"))
        info = json.loads(got[0][1])
        assert info["path"] == "/x/y" and info["query"] == "q=1" and info["raw_path"] == "/x/y"


# ---------------------------------------------------------------- streamed request bodies
class RecordingFetch(ASGIFetch):
    """The ASGI fetch, keeping each request whose body it asked to stream."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.requests: list[Any] = []

    def streams_body(self, req: Any) -> bool:
        """As ASGIFetch decides, recording the request."""
        wanted = super().streams_body(req)
        if wanted:
            self.requests.append(req)
        return wanted


def patterned(size: int) -> bytes:
    return bytes(range(251)) * (size // 251) + bytes(range(size % 251))


async def test_a_large_body_streams_in_order_through_a_bounded_buffer() -> None:
    body = patterned(2_000_000)  # 27 times the buffer's bound
    parts: list[bytes] = []
    fetch: RecordingFetch

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        stream = fetch.requests[-1].body_stream
        await eventually(lambda: stream.full)  # the app is slow: the buffer fills, reading pauses
        while True:
            message = await receive()
            parts.append(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % sum(map(len, parts))})

    fetch = RecordingFetch(app)
    server = await bunws.serve(fetch, hostname="127.0.0.1", port=0, max_body_size=4_000_000)
    try:
        got = await raw_exchange(server.port, b"POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                                 b"Content-Length: %d\r\n\r\n%b" % (len(body), body), timeout=20)
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"\r\n\r\n2000000")
        assert b"".join(parts) == body and len(parts) > 10
        bound = STREAM_LIMIT + PARSE_SLICE
        assert fetch.requests[-1].body_stream.high_water <= bound
        assert max(map(len, parts)) <= bound
    finally:
        await asyncio.wait_for(server.stop(close_active=True), 15)


async def test_a_client_leaving_mid_body_reaches_receive_as_disconnect() -> None:
    seen: list[list[tuple[str, int]]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        messages: list[tuple[str, int]] = []
        seen.append(messages)
        while True:
            message = await receive()
            messages.append((message["type"], len(message.get("body", b""))))
            if message["type"] == "http.disconnect" or not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    async with asgi_server(app, lifespan="off") as server:
        for half_close in (True, False):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
            await eventually(lambda: len(seen) == (1 if half_close else 2) and seen[-1] != [])
            if half_close:
                writer.write_eof()
            else:
                writer.close()
            await eventually(lambda: seen[-1][-1][0] == "http.disconnect")
            assert seen[-1] == [("http.request", 1000), ("http.disconnect", 0)]
            if half_close:
                # The half-closed client still reads the answer, then the close (the body was cut).
                assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
                writer.close()


async def test_a_streamed_body_past_the_limit_gets_413() -> None:
    async with asgi_server(echo_app, max_body_size=100_000) as server:
        chunk = b"b" * 60_000
        framed = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        got = await raw_exchange(server.port, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 + framed * 2 + b"0\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 413") and b"Connection: close" in got
        assert got.count(b"HTTP/1.1") == 1  # the app's own answer never follows


async def test_pipelined_requests_after_a_streamed_body_are_answered_in_order() -> None:
    async with asgi_server(echo_app) as server:
        body = patterned(300_000)
        requests = (
            b"POST /first HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
            + b"POST /second HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
            + b"GET /third HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        got = [json.loads(b) for _, b in split_responses(await raw_exchange(server.port, requests))]
        assert [(g["path"], g["size"]) for g in got] == [("/first", 300_000), ("/second", 3), ("/third", 0)]
        assert got[0]["parts"] > 1 and got[0]["last"] == body[-10:].decode("latin-1")


async def test_an_app_that_ignores_the_body_keeps_the_connection_right() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    async with asgi_server(app, lifespan="off") as server:
        body = b"c" * 500_000  # the rest is read and dropped: the next request is still found
        requests = (
            b"POST /ignored HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
            + b"GET /next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        got = split_responses(await raw_exchange(server.port, requests))
        assert [b for _, b in got] == [b"/ignored", b"/next"]
        assert b"Connection: close" not in got[0][0]


async def test_a_body_past_the_limit_after_the_answer_started_closes_the_connection() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"early", "more_body": True})
        while (await receive())["type"] == "http.request":
            pass
        await send({"type": "http.response.body", "body": b"never"})

    async with asgi_server(app, lifespan="off", max_body_size=100_000) as server:
        chunk = b"d" * 60_000
        framed = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        got = await raw_exchange(server.port, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 + framed * 2 + b"0\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"5\r\nearly\r\n")  # cut: no last chunk


class StreamingFetch:
    """A native fetch that asks for its body streamed and reads it with ``req.body()``."""

    def streams_body(self, req: Any) -> bool:
        """Every request's body is streamed."""
        return True

    async def __call__(self, req: Any, server: Any) -> Any:
        try:
            body = await req.body()
        except bunws.WebSocketError as exc:
            self.error = exc
            return bunws.Response("gone", status=400)
        return bunws.Response(b"%d %d" % (len(body), sum(body) % 251))


async def test_request_body_reads_a_streamed_body_whole_or_raises() -> None:
    fetch = StreamingFetch()
    server = await bunws.serve(fetch, hostname="127.0.0.1", port=0)
    try:
        body = patterned(300_000)
        got = await raw_exchange(server.port, b"POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                                 b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
        assert got.endswith(b"\r\n\r\n300000 %d" % (sum(body) % 251))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9000\r\n\r\nabc")
        await writer.drain()
        writer.write_eof()
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 400")
        assert isinstance(fetch.error, bunws.ClosedError)
        writer.close()
    finally:
        await asyncio.wait_for(server.stop(close_active=True), 15)


async def test_a_client_that_stops_sending_its_body_is_timed_out() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (message := await receive())["type"] == "http.request":
            seen.append(message["type"])
        seen.append(message["type"])

    async with asgi_server(app, lifespan="off", handshake_timeout=0.5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\nabc")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # aborted: no answer can follow
        await eventually(lambda: seen[-1:] == ["http.disconnect"])
        assert seen == ["http.request", "http.disconnect"]
        writer.close()


async def test_response_heads_are_checked_every_time_and_cached_ones_stay_exact() -> None:
    """Heads are cached by status and header pairs: a bad header is refused on every
    request, a float status never matches the cached 200, unhashable pairs still work."""
    answers: dict[str, tuple[Any, Any]] = {
        "/same": (200, [(b"x-same", b"1"), (b"date", b"Mon, 01 Jan 2024 00:00:00 GMT"), (b"connection", b"keep-alive")]),
        "/bad-value": (200, [(b"x-a", b"1\r\nInjected: yes")]),
        "/bad-name": (200, [(b"bad name", b"1")]),
        "/float": (200.0, [(b"x-same", b"1")]),
        "/lists": (201, [[b"x-list", bytearray(b"v")], [memoryview(b"x-view"), b"w"]]),
    }

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        status, headers = answers[scope["path"]]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async with asgi_server(app, lifespan="off") as server:
        same = b"GET /same HTTP/1.1\r\nHost: h\r\n\r\n"
        got = await raw_exchange(server.port, same * 3 + b"GET /float HTTP/1.1\r\nHost: h\r\n\r\n")
        answers_got = got.split(b"HTTP/1.1 ")[1:]
        assert len(answers_got) == 4 and answers_got[0] == answers_got[1] == answers_got[2]
        first = answers_got[0]
        assert first.startswith(b"200 OK\r\n") and first.count(b"Date:") + first.count(b"date:") == 1
        assert b"date: Mon, 01 Jan 2024" in first and b"connection" not in first.lower()
        assert first.endswith(b"Content-Length: 2\r\n\r\nok")
        assert answers_got[3].startswith(b"500 ")  # 200.0 is not an int status
        for path in ("/bad-value", "/bad-name", "/bad-value"):
            got = await raw_exchange(server.port, f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            assert got.startswith(b"HTTP/1.1 500 ") and b"Injected" not in got
        for _ in range(2):
            got = await raw_exchange(server.port, b"GET /lists HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            assert got.startswith(b"HTTP/1.1 201 Created\r\n") and b"x-list: v\r\n" in got and b"x-view: w\r\n" in got
