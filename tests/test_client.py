"""The client (``bunws.connect``) against the bunws server and the ``websockets``
server over loopback: the API, messages both ways with and without compression,
closing, pings, flow control, limits, bad arguments."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets
from client_peers import answer, raw_server, read_request
from conftest import running

import bunws
from bunws import connect
from bunws._client import ClientCore
from bunws._frame import FrameParser, Opcode

pytestmark = pytest.mark.timeout(60)

FAST = {"ping_interval": None, "close_timeout": 2, "open_timeout": 5, "proxy": None}


def echo_handler(**options: Any) -> bunws.WebSocketHandler:
    return bunws.WebSocketHandler(
        message=lambda ws, msg: ws.send(msg if isinstance(msg, str) else bytes(msg), True),
        **options,
    )


def url(server: bunws.Server, path: str = "/") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_echo_bunws_server(compression: str | None) -> None:
    async with running(echo_handler(per_message_deflate=True)) as server:
        async with connect(url(server), compression=compression, **FAST) as ws:
            assert ws.state == "OPEN"
            if compression:
                assert ws.extensions and ws.extensions[0].startswith("permessage-deflate")
            else:
                assert ws.extensions == []
            for message in ["hello", "é" * 1000, b"\x00\xff" * 40000, b"", ""]:
                await ws.send(message)
                got = await ws.recv()
                assert got == message and type(got) is type(message)
            await ws.send(["frag", "mented"])
            assert await ws.recv() == "fragmented"
            await ws.send([b"a", bytearray(b"b"), memoryview(b"c")])
            assert await ws.recv() == b"abc"

            async def pieces():
                for piece in ("as", "ync"):
                    yield piece

            await ws.send(pieces())
            assert await ws.recv() == "async"
            assert ws.remote_address[:2] == ("127.0.0.1", server.port)
            assert ws.request_headers["Sec-WebSocket-Version"] == "13"
            assert "sec-websocket-accept" in ws.response_headers
        assert (ws.close_code, ws.close_reason, ws.state) == (1000, "", "CLOSED")


async def test_many_in_flight_keep_order() -> None:
    async with running(echo_handler()) as server:
        ws = await connect(url(server), **FAST)
        for i in range(500):
            await ws.send(str(i))
        assert [await ws.recv() for _ in range(500)] == [str(i) for i in range(500)]
        await ws.close()


async def test_websockets_server_both_ways() -> None:
    async def handler(conn: Any) -> None:
        async for message in conn:
            await conn.send(message)
        # unreachable for a client close: the loop ends on it

    async with websockets.serve(handler, "127.0.0.1", 0, subprotocols=["chat", "v2"]) as srv:
        port = srv.sockets[0].getsockname()[1]
        for compression in ("deflate", None):
            async with connect(f"ws://127.0.0.1:{port}/x?y=1", subprotocols=["v2"],
                               compression=compression, **FAST) as ws:
                assert ws.subprotocol == "v2"
                assert bool(ws.extensions) == bool(compression)
                for message in ["text " * 300, b"\x01" * 70000]:
                    await ws.send(message)
                    assert await ws.recv() == message
                rtt = await (await ws.ping(b"abc"))
                assert rtt >= 0 and ws.latency == rtt


async def test_server_close_ends_iteration_or_raises() -> None:
    def message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        ws.close(1000 if msg == "ok" else 4001, "bye")

    async with running(bunws.WebSocketHandler(message=message)) as server:
        async with connect(url(server), **FAST) as ws:
            await ws.send("ok")
            assert [m async for m in ws] == []
            assert (ws.close_code, ws.close_reason) == (1000, "bye")
            with pytest.raises(bunws.ConnectionClosedOK):
                await ws.send("late")
        ws = await connect(url(server), **FAST)
        await ws.send("error")
        with pytest.raises(bunws.ConnectionClosedError) as info:
            async for _ in ws:
                pass
        assert (info.value.code, info.value.reason) == (4001, "bye")
        assert isinstance(info.value, bunws.ClosedError)
        with pytest.raises(bunws.ConnectionClosedError):
            await ws.recv()


async def test_messages_queued_before_close_are_delivered() -> None:
    def open_(ws: bunws.ServerWebSocket) -> None:
        for i in range(5):
            ws.send(str(i))
        ws.close(1001, "going")

    async with running(bunws.WebSocketHandler(open=open_)) as server:
        ws = await connect(url(server), **FAST)
        assert [m async for m in ws] == ["0", "1", "2", "3", "4"]
        assert ws.close_code == 1001


async def test_close_with_code_and_concurrent_recv() -> None:
    closes: list[tuple[int, str]] = []
    handler = bunws.WebSocketHandler(close=lambda ws, code, reason: closes.append((code, reason)))
    async with running(handler) as server:
        ws = await connect(url(server), **FAST)
        first = asyncio.ensure_future(ws.recv())
        await asyncio.sleep(0)
        with pytest.raises(bunws.ConcurrencyError):
            await ws.recv()
        await ws.close(4000, "done")
        with pytest.raises(bunws.ConnectionClosedError):  # 4000 is not a normal close
            await first
        await ws.close()  # idempotent
        for _ in range(100):
            if closes:
                break
            await asyncio.sleep(0.01)
        assert closes == [(4000, "done")]


async def test_max_size_closes_1009() -> None:
    async with running(echo_handler()) as server:
        ws = await connect(url(server), max_size=1000, **FAST)
        await ws.send(b"x" * 1000)
        assert len(await ws.recv()) == 1000
        await ws.send(b"x" * 1001)
        with pytest.raises(bunws.ConnectionClosedError) as info:
            await ws.recv()
        # the parser stops at the error: the server's answering Close is not read
        assert info.value.sent_code == 1009 and info.value.code == 1006


async def test_receive_queue_pauses_reading() -> None:
    sent: list[int] = []

    def open_(ws: bunws.ServerWebSocket) -> None:
        for _ in range(400):
            sent.append(ws.send(b"y" * 16384))

    async with running(bunws.WebSocketHandler(open=open_)) as server:
        ws = await connect(url(server), max_queue=4, **FAST)
        await asyncio.sleep(0.2)
        # the client holds at most max_queue messages plus one read's worth
        assert -1 in sent, "the server never saw backpressure: reading did not pause"
        for _ in range(400):
            assert len(await ws.recv()) == 16384
        await ws.close()


async def test_send_blocks_while_the_peer_does_not_read() -> None:
    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(await read_request(reader)))
        writer.transport.pause_reading()
        await asyncio.sleep(3600)

    async with raw_server(never_read) as port:
        ws = await connect(f"ws://127.0.0.1:{port}/", write_limit=1 << 16,
                           **{**FAST, "close_timeout": 0.3})
        sends = 0

        async def flood() -> None:
            nonlocal sends
            while True:
                await ws.send(b"q" * 65536)
                sends += 1

        task = asyncio.ensure_future(flood())
        await asyncio.sleep(0.3)
        stuck_at = sends
        await asyncio.sleep(0.2)
        assert sends == stuck_at < 1000, "send never waited"
        assert ws.buffered_amount > 1 << 16
        task.cancel()
        # the server never answers the Close: close() gives up after close_timeout
        await asyncio.wait_for(ws.close(), 5)
        assert ws.close_code == 1006


async def test_ping_pong_and_keepalive() -> None:
    pongs: list[bytes] = []
    pings: list[bytes] = []
    handler = bunws.WebSocketHandler(pong=lambda ws, data: pongs.append(bytes(data)),
                                     ping=lambda ws, data: pings.append(bytes(data)))
    async with running(handler) as server:
        ws = await connect(url(server), ping_interval=0.05, ping_timeout=1, close_timeout=2,
                           proxy=None)
        waiter = await ws.ping("hi")
        assert await waiter >= 0
        await ws.pong(b"unsolicited")
        for _ in range(100):
            if len(pings) >= 3:
                break
            await asyncio.sleep(0.01)
        # "hi", then keepalive pings of 4 random bytes
        assert pings[0] == b"hi" and len(pings) >= 3 and all(len(p) == 4 for p in pings[1:])
        assert pongs == [b"unsolicited"]
        with pytest.raises(bunws.InvalidArgument):
            await ws.ping(b"x" * 126)
        await ws.close()


async def test_keepalive_timeout_closes_1011() -> None:
    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(await read_request(reader)))
        await asyncio.sleep(3600)  # pings stay unanswered, the Close too

    async with raw_server(deaf) as port:
        ws = await connect(f"ws://127.0.0.1:{port}/", ping_interval=0.05, ping_timeout=0.1,
                           close_timeout=0.2, proxy=None)
        await asyncio.wait_for(ws.wait_closed(), 5)
        with pytest.raises(bunws.ConnectionClosedError) as info:
            await ws.recv()
        assert info.value.sent_code == 1011 and info.value.code == 1006


async def test_handshake_refused_carries_status_and_body() -> None:
    def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        return bunws.Response("go away", status=403, headers={"X-Why": "test"})

    async with running(fetch=fetch) as server:
        with pytest.raises(bunws.InvalidStatus) as info:
            await connect(url(server), **FAST)
        assert info.value.status == 403 and info.value.body == b"go away"
        assert info.value.headers["x-why"] == "test"
        assert isinstance(info.value, bunws.HandshakeError)


async def test_reconnect_loop_retries_503_then_connects() -> None:
    attempts = 0

    def fetch(req: bunws.Request, server: bunws.Server) -> Any:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            return bunws.Response("busy", status=503)
        server.upgrade(req)
        return None

    class quick_connect(connect):
        BACKOFF_INITIAL_DELAY = 0.01
        BACKOFF_MIN_DELAY = 0.01
        BACKOFF_MAX_DELAY = 0.05

    async with running(echo_handler(), fetch=fetch) as server:
        async for ws in quick_connect(url(server), **FAST):
            await ws.send("after retries")
            assert await ws.recv() == "after retries"
            break
        # breaking out leaves closing to the generator's finaliser: close now
        await ws.close()
    assert attempts == 3
    assert ws.state == "CLOSED"

    def refuse(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        return bunws.Response("no", status=404)

    async with running(fetch=refuse) as server:
        with pytest.raises(bunws.InvalidStatus):
            async for ws in quick_connect(url(server), **FAST):
                pass
        seen: list[Exception] = []

        def retry_twice(exc: Exception) -> Exception | None:
            seen.append(exc)
            return None if len(seen) < 3 else RuntimeError("gave up")

        with pytest.raises(RuntimeError, match="gave up"):
            async for ws in quick_connect(url(server), process_exception=retry_twice, **FAST):
                pass
        assert len(seen) == 3


async def test_open_timeout_and_refused_port() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(3600)

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    with pytest.raises(bunws.OpenTimeout):
        await connect(f"ws://127.0.0.1:{port}/", open_timeout=0.1, proxy=None)
    srv.close()
    with pytest.raises(OSError):
        await connect(f"ws://127.0.0.1:{port}/", **FAST)


@pytest.mark.parametrize(
    ("uri", "kwargs", "error"),
    [
        ("http://example.com/", {}, bunws.InvalidURI),
        ("ws://", {}, bunws.InvalidURI),
        ("ws://host:99999/", {}, bunws.InvalidURI),
        ("ws://[::g]/", {}, bunws.InvalidURI),
        ("ws://u:p@host/", {}, bunws.InvalidURI),
        (42, {}, bunws.InvalidURI),
        ("ws://h/", {"compression": "zstd"}, bunws.InvalidArgument),
        ("ws://h/", {"max_size": -1}, bunws.InvalidArgument),
        ("ws://h/", {"max_queue": "16"}, bunws.InvalidType),
        ("ws://h/", {"open_timeout": -1}, bunws.InvalidArgument),
        ("ws://h/", {"ping_interval": float("nan")}, bunws.InvalidArgument),
        ("ws://h/", {"subprotocols": "chat"}, bunws.InvalidType),
        ("ws://h/", {"additional_headers": {"X": 1}}, bunws.InvalidType),
        ("ws://h/", {"proxy": 3}, bunws.InvalidType),
        ("ws://h/", {"process_exception": 3}, bunws.InvalidType),
    ],
)
def test_bad_arguments(uri: Any, kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        connect(uri, **kwargs)


async def test_bad_send_and_close_arguments() -> None:
    async with running(echo_handler()) as server:
        async with connect(url(server), **FAST) as ws:
            with pytest.raises(bunws.InvalidType):
                await ws.send(42)  # type: ignore[arg-type]
            with pytest.raises(bunws.InvalidType):
                await ws.send({"a": 1})  # type: ignore[arg-type]
            with pytest.raises(bunws.InvalidArgument):
                await ws.send("\ud800")
            with pytest.raises(bunws.InvalidArgument):
                await ws.close(1005)
            with pytest.raises(bunws.InvalidType):
                await ws.close("1000")  # type: ignore[arg-type]
            await ws.send("still open")
            assert await ws.recv() == "still open"
            # caught before any fragment left: the connection stays usable
            with pytest.raises(bunws.InvalidType):
                await ws.send(["a", b"b"])
            await ws.send("open")
            assert await ws.recv() == "open"
            # a fragment of the wrong type mid-message ends the connection (1011)
            with pytest.raises(bunws.InvalidType):
                await ws.send(["a", "b", b"c"])
            with pytest.raises(bunws.ConnectionClosed):
                await ws.send("x")


async def test_additional_headers_origin_user_agent() -> None:
    seen: dict[str, Any] = {}

    def fetch(req: bunws.Request, server: bunws.Server) -> Any:
        seen.update({k: req.headers.get(k) for k in ("x-token", "origin", "user-agent", "host")})
        server.upgrade(req)
        return None

    async with running(fetch=fetch) as server:
        async with connect(url(server), additional_headers={"X-Token": "t"},
                           origin="http://o.example", user_agent_header="probe/1", **FAST):
            pass
    assert seen == {"x-token": "t", "origin": "http://o.example", "user-agent": "probe/1",
                    "host": f"127.0.0.1:{server.port}"}


def test_core_masks_each_frame_with_a_fresh_key() -> None:
    class Transport:
        def __init__(self) -> None:
            self.data = bytearray()

        def set_write_buffer_limits(self, high: int, low: int) -> None:
            pass

        def write(self, data: bytes) -> None:
            self.data += data

        def get_write_buffer_size(self) -> int:
            return 0

    class Session:
        def connection_made(self, transport: Any) -> None:
            pass

    loop = asyncio.new_event_loop()
    try:
        core = ClientCore(Session(), loop, 1 << 15, 16)
        transport = Transport()
        core.connection_made(transport)
        core.start(FrameParser(server=False), None, b"")
        payload = bytes(range(256)) * 100
        for _ in range(2000):  # more than one batch of keys
            core.send_frame(Opcode.BINARY, payload, True)
            core.flush()
        events = FrameParser(server=True, max_payload_length=1 << 20).feed(bytes(transport.data))
        assert len(events) == 2000 and all(e == (Opcode.BINARY, payload) for e in events)
        keys = set()
        data = bytes(transport.data)
        pos = 0
        while pos < len(data):
            assert data[pos + 1] & 0x80  # masked
            keys.add(data[pos + 4 : pos + 8])
            pos += 8 + len(payload)
        assert len(keys) > 1990  # 32-bit random keys: a few collisions at most
    finally:
        loop.close()
