"""HTTP/1.1 front and the WebSocket opening handshake (RFC 6455 §4, docs/bun-behaviour.md §11)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging

import pytest
import websockets
from conftest import running, ws_url
from rawclient import RawClient

import bunws
from bunws.http import Headers, accept_key, check_upgrade_request


async def http_exchange(port: int, raw: bytes, *, read_until_eof: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    try:
        async with asyncio.timeout(5):
            if read_until_eof:
                return await reader.read()
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


def parse_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split()[1]), headers, rest[:length]))
        data = rest[length:]
    return out


# ---------------------------------------------------------------- pure helpers
def test_accept_key_matches_rfc6455_example() -> None:
    # RFC 6455 §1.3
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_headers_are_case_insensitive_and_join_repeats() -> None:
    h = Headers([("X-A", "1"), ("x-a", "2"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2")])
    assert h["x-A"] == "1, 2"
    assert "X-A" in h and "x-b" not in h
    assert h.get_all("set-cookie") == ["a=1", "b=2"]


def make_request(**headers: str) -> bunws.Request:
    base = {
        "Host": "x",
        "Upgrade": "websocket",
        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
        "Sec-WebSocket-Version": "13",
    }
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return bunws.Request("GET", "/", Headers([(k, v) for k, v in base.items() if v is not None]))


@pytest.mark.parametrize(
    "change, status",
    [
        ({"Upgrade": "WebSocket"}, None),
        ({"Upgrade": "h2c"}, 400),
        ({"Upgrade": None}, 400),
        ({"Sec-WebSocket-Key": None}, 400),
        ({"Sec-WebSocket-Key": "MDEyMzQ1Njc4OWFiY2RlZg"}, 400),  # 22 chars, unpadded
        ({"Sec-WebSocket-Key": base64.b64encode(b"short").decode()}, 400),
        ({"Sec-WebSocket-Key": "!" * 24}, 400),
        ({"Sec-WebSocket-Version": "8"}, 426),
        ({"Sec-WebSocket-Version": None}, 426),
    ],
)
def test_check_upgrade_request(change: dict, status: int | None) -> None:
    req = make_request(**change)
    if status is None:
        assert check_upgrade_request(req)
    else:
        with pytest.raises(bunws.HandshakeError) as info:
            check_upgrade_request(req)
        assert info.value.status == status


def test_response_rejects_bad_arguments() -> None:
    with pytest.raises(bunws.InvalidType):
        bunws.Response(123)  # type: ignore[arg-type]
    with pytest.raises(bunws.InvalidArgument):
        bunws.Response("x", status=42)
    with pytest.raises(bunws.InvalidArgument):
        bunws.Response("x", headers={"X-Evil": "a\r\nInjected: 1"})


# ---------------------------------------------------------------- HTTP over loopback
async def test_plain_request_gets_fetch_response() -> None:
    def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        return bunws.Response(
            f"{req.method} {req.path} {req.query.get('a')} {req.headers['x-thing']} {req.remote_address}",
            headers={"X-Reply": "yes"},
        )

    async with running(fetch=fetch) as server:
        data = await http_exchange(
            server.port,
            b"GET /p?a=1&a=2 HTTP/1.1\r\nHost: h\r\nX-Thing: T\r\nConnection: close\r\n\r\n",
        )
    [(status, headers, body)] = parse_responses(data)
    assert status == 200
    assert headers["x-reply"] == "yes"
    assert headers["content-type"] == "text/plain;charset=utf-8"
    assert body == b"GET /p 1 T 127.0.0.1"


async def test_keep_alive_and_pipelining_answer_in_order() -> None:
    async def slow_first(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        if req.path == "/1":
            await asyncio.sleep(0.05)  # the later requests must still wait their turn
        return bunws.Response(req.path)

    async with running(fetch=slow_first) as server:
        raw = b"".join(
            f"GET /{i} HTTP/1.1\r\nHost: h\r\n{'Connection: close' if i == 3 else 'X: y'}\r\n\r\n".encode()
            for i in (1, 2, 3)
        )
        data = await http_exchange(server.port, raw)
    assert [body for _, _, body in parse_responses(data)] == [b"/1", b"/2", b"/3"]


async def test_request_bodies_content_length_and_chunked() -> None:
    async def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        if req.path == "/json":
            return bunws.Response.json({"got": await req.json()})
        return bunws.Response((await req.text()).upper())

    async with running(fetch=fetch) as server:
        data = await http_exchange(
            server.port,
            b"POST /t HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
            b"POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            b'POST /json HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\nConnection: close\r\n\r\n{"a":1}',
        )
    responses = parse_responses(data)
    assert [body for _, _, body in responses] == [b"HELLO", b"ABCDE", b'{"got":{"a":1}}']
    assert responses[2][1]["content-type"].startswith("application/json")


async def test_head_request_has_no_body() -> None:
    async with running(fetch=lambda req, server: bunws.Response("12345")) as server:
        data = await http_exchange(server.port, b"HEAD / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"Content-Length: 5\r\n\r\n")


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431),
        (b"GET /" + b"u" * 17000 + b" HTTP/1.1\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n", 413),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
    ],
)
async def test_limits_answer_with_precise_status(raw: bytes, status: int) -> None:
    async with running(fetch=lambda req, server: bunws.Response("ok"), max_body_size=1000) as server:
        data = await http_exchange(server.port, raw)
    assert parse_responses(data)[0][0] == status


async def test_chunked_body_over_limit_gets_413() -> None:
    async with running(fetch=lambda req, server: bunws.Response("ok"), max_body_size=10) as server:
        data = await http_exchange(
            server.port,
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n",
        )
    assert parse_responses(data)[0][0] == 413


async def test_fetch_exception_gives_500_and_server_lives(caplog: pytest.LogCaptureFixture) -> None:
    def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        if req.path == "/boom":
            raise RuntimeError("kaboom")
        return bunws.Response("fine")

    with caplog.at_level(logging.ERROR, logger="bunws"):
        async with running(fetch=fetch) as server:
            first = await http_exchange(server.port, b"GET /boom HTTP/1.1\r\nHost: h\r\n\r\n")
            second = await http_exchange(server.port, b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert parse_responses(first)[0][0] == 500
    assert parse_responses(second)[0][2] == b"fine"
    assert any("kaboom" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


async def test_fetch_returning_none_without_upgrade_is_500(caplog: pytest.LogCaptureFixture) -> None:
    async with running(fetch=lambda req, server: None) as server:
        data = await http_exchange(server.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert parse_responses(data)[0][0] == 500


# ---------------------------------------------------------------- upgrade
async def test_101_layout_matches_bun() -> None:
    def fetch(req: bunws.Request, server: bunws.Server) -> None:
        server.upgrade(
            req,
            headers=[
                ("X-First", "1"),
                ("Set-Cookie", "a=1"),
                ("Upgrade", "evil"),
                ("Connection", "evil"),
                ("Sec-WebSocket-Accept", "evil"),
                ("Sec-WebSocket-Extensions", "evil"),
                ("X-Last", "2"),
            ],
        )

    async with running(fetch=fetch) as server:
        client = await RawClient.connect(server.port, key="dGhlIHNhbXBsZSBub25jZQ==")
        lines = client.head.decode().split("\r\n")
        client.close()
    assert lines[0] == "HTTP/1.1 101 Switching Protocols"
    assert lines[1:7] == [
        "X-First: 1",
        "set-cookie: a=1",
        "X-Last: 2",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
    ]
    assert lines[7].startswith("Date: ")
    assert not any(line.lower().startswith("content-length") for line in lines)


@pytest.mark.parametrize(
    "offered, chosen, expected",
    [
        ("  chat  , superchat", None, "chat"),
        ("chat, superchat", "superchat", "superchat"),
        ("chat", "", None),
        (None, None, None),
    ],
)
async def test_subprotocol_rules(offered: str | None, chosen: str | None, expected: str | None) -> None:
    seen = []

    def fetch(req: bunws.Request, server: bunws.Server) -> None:
        headers = None if chosen is None else {"Sec-WebSocket-Protocol": chosen}
        server.upgrade(req, headers=headers)

    handler = bunws.WebSocketHandler(open=lambda ws: seen.append(ws.subprotocol))
    async with running(handler, fetch=fetch) as server:
        extra = [("Sec-WebSocket-Protocol", offered)] if offered is not None else None
        client = await RawClient.connect(server.port, extra=extra)
        client.close()
    assert client.headers.get("sec-websocket-protocol") == expected
    assert seen == [expected]


async def test_wrong_version_is_answered_426_by_the_server() -> None:
    results = []

    def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        results.append(server.upgrade(req))
        return bunws.Response("ignored", status=200)

    async with running(fetch=fetch) as server:
        client = await RawClient.connect(server.port, version="8")
        body = await client.read_body()
        await client.expect_eof()
    assert results == [False]
    assert client.status == 426
    assert client.headers["sec-websocket-version"] == "13"
    assert client.headers["connection"] == "close"
    assert body == b""


async def test_invalid_handshake_gets_fetch_response_400() -> None:
    async with running() as server:
        client = await RawClient.connect(server.port, key="MDEyMzQ1Njc4OWFiY2RlZg")
        body = await client.read_body()
    assert client.status == 400
    assert body == b"WebSocket upgrade expected"


@pytest.mark.parametrize(
    "request_line, connection",
    [("GET / HTTP/1.0", "Upgrade"), ("GET / HTTP/1.1", "keep-alive, Upgrade")],
)
async def test_upgrade_accepts_http10_and_connection_lists(request_line: str, connection: str) -> None:
    async with running(bunws.WebSocketHandler(message=lambda ws, m: ws.send(m))) as server:
        key = base64.b64encode(b"k" * 16).decode()
        raw = (
            f"{request_line}\r\nHost: h\r\nUpgrade: websocket\r\nConnection: {connection}\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        client = await RawClient.connect(server.port, handshake=False)
        client.send_raw(raw)
        assert await client.read_head() == 101
        client.send_text("hello")
        assert await client.recv_data() == (1, b"hello")
        client.close()


async def test_open_runs_inside_upgrade_and_second_upgrade_fails() -> None:
    events: list[str] = []

    def fetch(req: bunws.Request, server: bunws.Server) -> None:
        events.append(f"upgrade={server.upgrade(req, data=7)}")
        events.append(f"again={server.upgrade(req)}")

    handler = bunws.WebSocketHandler(open=lambda ws: events.append(f"open data={ws.data}"))
    async with running(handler, fetch=fetch) as server:
        client = await RawClient.connect(server.port)
        client.close()
    assert events == ["open data=7", "upgrade=True", "again=False"]


async def test_frames_sent_with_the_handshake_are_dispatched_after_fetch() -> None:
    order: list[str] = []

    def fetch(req: bunws.Request, server: bunws.Server) -> None:
        server.upgrade(req)
        order.append("fetch returned")

    def message(ws: bunws.ServerWebSocket, msg: str) -> None:
        order.append(f"message {msg}")
        ws.send(msg)

    async with running(bunws.WebSocketHandler(message=message), fetch=fetch) as server:
        from wire import TEXT, client as frame

        client = await RawClient.connect(server.port, trailing=frame(TEXT, "early") + frame(TEXT, "bird"))
        assert await client.recv_data() == (1, b"early")
        assert await client.recv_data() == (1, b"bird")
        client.close()
    assert order == ["fetch returned", "message early", "message bird"]


async def test_upgrade_after_await_in_async_fetch() -> None:
    async def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response | None:
        await asyncio.sleep(0.01)
        if server.upgrade(req, data="late"):
            return None
        return bunws.Response("no", status=400)

    handler = bunws.WebSocketHandler(message=lambda ws, m: ws.send(f"{ws.data}:{m}"))
    async with running(handler, fetch=fetch) as server:
        async with websockets.connect(ws_url(server)) as ws:
            await ws.send("x")
            assert await asyncio.wait_for(ws.recv(), 5) == "late:x"


async def test_upgrade_without_websocket_handler_raises() -> None:
    errors = []

    def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        try:
            server.upgrade(req)
        except bunws.WebSocketError as exc:
            errors.append(exc)
        return bunws.Response("no websocket here")

    server = await bunws.serve(fetch, port=0)
    try:
        await http_exchange(server.port, RawClient.handshake_request())
    finally:
        await server.stop(True)
    assert len(errors) == 1


async def test_allowed_origins_rejects_cross_site_with_403() -> None:
    async with running(allowed_origins="same-origin") as server:
        same = await RawClient.connect(server.port, extra=[("Origin", "http://127.0.0.1")])
        cross = await RawClient.connect(server.port, extra=[("Origin", "http://evil-127.0.0.1")])
        none = await RawClient.connect(server.port)
        for c in (same, cross, none):
            c.close()
    assert (same.status, cross.status, none.status) == (101, 403, 101)


async def test_allowed_origins_list() -> None:
    async with running(allowed_origins=["https://app.example"]) as server:
        ok = await RawClient.connect(server.port, extra=[("Origin", "https://APP.example")])
        bad = await RawClient.connect(server.port, extra=[("Origin", "https://app.example.evil")])
        for c in (ok, bad):
            c.close()
    assert (ok.status, bad.status) == (101, 403)


async def test_sha1_accept_for_random_keys() -> None:
    async with running() as server:
        key = base64.b64encode(b"\x00" * 16).decode()
        client = await RawClient.connect(server.port, key=key)
        client.close()
    expected = base64.b64encode(
        hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    ).decode()
    assert client.headers["sec-websocket-accept"] == expected
