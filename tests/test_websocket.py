"""ServerWebSocket over real loopback sockets: send statuses, cork, close paths, errors.

Reference: docs/bun-behaviour.md §2 (statuses), §4 (cork), §6 (closing), §7 (protocol
errors), §13 (handler errors).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

import pytest
import websockets
import wire
from conftest import count_writes, eventually, running, ws_url
from rawclient import RawClient

import bunws
from bunws.websocket import cut_reason


class Recorder:
    """Handlers that record what happened, plus a hook for the test's own logic."""

    def __init__(self, **options: Any) -> None:
        self.events: list[tuple] = []
        self.closes: list[tuple[int, str]] = []
        self.sockets: list[bunws.ServerWebSocket] = []
        self.on_message = None
        self.on_open = None
        self.handler = bunws.WebSocketHandler(
            open=self._open, message=self._message, close=self._close, **options
        )

    def _open(self, ws: bunws.ServerWebSocket) -> None:
        self.sockets.append(ws)
        if self.on_open:
            self.on_open(ws)

    def _message(self, ws: bunws.ServerWebSocket, msg: Any) -> None:
        self.events.append(("message", msg))
        if self.on_message:
            self.on_message(ws, msg)

    def _close(self, ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
        self.closes.append((code, reason))
        assert ws.ready_state == 3
        assert ws.subscriptions == []


# ---------------------------------------------------------------- statuses
async def test_send_returns_payload_byte_counts() -> None:
    rec = Recorder()
    results: list[Any] = []

    def on_message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        results.extend(
            [
                ws.send("héllo"),  # 6 UTF-8 bytes
                ws.send(b"\x00\x01\x02"),
                ws.send(bytearray(b"ab")),
                ws.send(memoryview(b"abcd")[1:3]),
                ws.send_text("xyz"),
                ws.send_binary(b"q"),
                ws.send(""),  # empty: returns 0 but the frame is sent
                ws.ping(),
                ws.pong(b"p"),
            ]
        )

    rec.on_message = on_message
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        client.send_text("go")
        frames = [await client.recv_frame() for _ in range(9)]
        client.close()
    assert results == [6, 3, 2, 2, 3, 1, 0, 0, 1]
    assert [(op, p) for op, p, _, _ in frames] == [
        (1, "héllo".encode()),
        (2, b"\x00\x01\x02"),
        (2, b"ab"),
        (2, b"bc"),
        (1, b"xyz"),
        (2, b"q"),
        (1, b""),
        (9, b""),
        (10, b"p"),
    ]


async def test_send_argument_errors_are_precise() -> None:
    rec = Recorder()
    errors: list[type] = []

    def on_message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        for call in (
            lambda: ws.send(None),
            lambda: ws.send(123),
            lambda: ws.send("x", compress="yes"),
            lambda: ws.send_text(b"bytes"),
            lambda: ws.send_binary("str"),
            lambda: ws.ping(b"x" * 126),
            lambda: ws.pong("é" * 63),
            lambda: ws.close("1000"),
            lambda: ws.cork(42),
        ):
            try:
                call()
            except bunws.WebSocketError as exc:
                errors.append(type(exc))
        ws.send("done")

    rec.on_message = on_message
    async with running(rec.handler) as server:
        async with websockets.connect(ws_url(server)) as client:
            await client.send("go")
            assert await asyncio.wait_for(client.recv(), 5) == "done"
    I, A = bunws.InvalidType, bunws.InvalidArgument
    assert errors == [I, I, I, I, I, A, A, I, I]
    assert issubclass(I, TypeError) and issubclass(A, ValueError)


async def test_ping_payload_limit_message_names_the_size() -> None:
    rec = Recorder()
    messages = []

    def on_open(ws: bunws.ServerWebSocket) -> None:
        with pytest.raises(bunws.InvalidArgument) as info:
            ws.ping(b"x" * 126)
        messages.append(str(info.value))

    rec.on_open = on_open
    async with running(rec.handler) as server:
        (await RawClient.connect(server.port)).close()
    assert messages == ["The data size must not be greater than 125 bytes. Received 126 bytes."]


async def test_lone_surrogates_raise_invalid_argument_and_send_nothing() -> None:
    """A str that is not valid Unicode cannot become a UTF-8 text frame: every text
    path says so with InvalidArgument (a ValueError) and sends nothing; a close
    reason never fails (U+FFFD, as Bun's JavaScript string would give)."""
    rec = Recorder()
    raised: list[str] = []
    servers: list[bunws.Server] = []

    def on_message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        ws.subscribe("t")
        for call in (
            lambda: ws.send("a\ud800"),
            lambda: ws.send_text("\udfff"),
            lambda: ws.ping("\ud83d"),
            lambda: ws.publish("t", "x\udc00"),
            lambda: ws.publish_text("t", "x\udc00"),
            lambda: servers[0].publish("t", "x\udc00"),
        ):
            with pytest.raises(bunws.InvalidArgument) as info:
                call()
            raised.append(str(info.value).split(" expects")[0])
        ws.send("ok")
        ws.close(1000, "bye \ud800")

    rec.on_message = on_message
    async with running(rec.handler) as server:
        servers.append(server)
        client = await RawClient.connect(server.port)
        client.send_text("go")
        assert await client.recv_data() == (wire.TEXT, b"ok")  # nothing sent before it
        assert await client.recv_close() == (1000, "bye \ufffd")
    assert raised == ["send", "send_text", "ping", "publish", "publish", "publish"]


async def test_interleaved_partial_reads_of_many_connections_stay_apart() -> None:
    """Every connection reads into the server's one receive buffer: pieces of heads,
    frame headers and payloads from different sockets, arriving in turn, must each
    be kept by their own connection before the next read overwrites the buffer."""
    rec = Recorder()
    rec.on_message = lambda ws, msg: ws.send(msg)
    async with running(rec.handler) as server:
        clients = [await RawClient.connect(server.port, handshake=False) for _ in range(4)]
        heads = [RawClient.handshake_request(f"/c{i}") for i in range(4)]
        for cut in (5, 40, None):  # the handshakes, in three interleaved pieces
            for i, client in enumerate(clients):
                client.send_raw(heads[i][:cut])
                heads[i] = heads[i][len(heads[i][:cut]) :]
                await asyncio.sleep(0.01)
        for client in clients:
            assert await client.read_head() == 101
        payloads = [bytes([65 + i]) * (3000 + 97 * i) for i in range(4)]
        frames = [wire.client(wire.BINARY, p) + wire.client(wire.TEXT, f"t{i}") for i, p in enumerate(payloads)]
        pos = [0] * 4
        for step in (1, 2, 7, 100, 1000, 5000):  # header bytes one at a time, then more
            for i, client in enumerate(clients):
                client.send_raw(frames[i][pos[i] : pos[i] + step])
                pos[i] += step
                await asyncio.sleep(0.005)
        for i, client in enumerate(clients):
            assert await client.recv_data() == (wire.BINARY, payloads[i])
            assert await client.recv_data() == (wire.TEXT, f"t{i}".encode())
            client.close()


async def test_send_after_close_returns_zero() -> None:
    rec = Recorder()
    after: list[int] = []

    def on_message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        ws.close()
        after.append(ws.send("late"))
        after.append(ws.ready_state)

    rec.on_message = on_message
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        client.send_text("x")
        assert await client.recv_close() == (1000, "")
    assert after == [0, 3]


# ---------------------------------------------------------------- cork
async def test_handler_sends_leave_in_one_write() -> None:
    rec = Recorder()
    rec.on_open = lambda ws: setattr(rec, "writes", count_writes(ws))

    def on_message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        for i in range(5):
            ws.send(f"m{i}")

    rec.on_message = on_message
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        client.send_text("go")
        got = [await client.recv_data() for _ in range(5)]
        client.close()
    assert [p for _, p in got] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert rec.writes[0] == b"".join(wire.server(wire.TEXT, f"m{i}") for i in range(5))  # type: ignore[attr-defined]


async def test_cork_outside_handler_is_one_write_and_returns_value() -> None:
    rec = Recorder()
    results: dict[str, Any] = {}

    async def later(ws: bunws.ServerWebSocket) -> None:
        writes = count_writes(ws)

        def body(w: bunws.ServerWebSocket) -> str:
            w.send("a")
            w.send(b"x" * 20_000)  # over the 16 KiB cork buffer: flushed early
            inner = w.cork(lambda w2: w2.send("nested"))
            results["inner"] = inner
            w.send("b")
            return "value"

        results["value"] = ws.cork(body)
        results["writes"] = len(writes)
        with pytest.raises(ZeroDivisionError):
            ws.cork(lambda w: 1 / 0)
        ws.send("after")
        results["writes_after"] = len(writes)

    rec.on_open = lambda ws: asyncio.get_running_loop().call_later(0.01, asyncio.ensure_future, later(ws))
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        got = [await client.recv_data() for _ in range(5)]
        client.close()
    assert [len(p) for _, p in got] == [1, 20_000, 6, 1, 5]
    assert results["value"] == "value" and results["inner"] == 6
    assert results["writes"] <= 2  # the 16 KiB threshold may split it once
    assert results["writes_after"] == results["writes"] + 1  # uncorked send: own write


# ---------------------------------------------------------------- properties
async def test_properties_and_binary_type() -> None:
    rec = Recorder()
    seen: list[Any] = []

    def on_open(ws: bunws.ServerWebSocket) -> None:
        seen.append((ws.ready_state, ws.remote_address, ws.binary_type, ws.data))
        ws.data = {"changed": True}
        ws.binary_type = "arraybuffer"  # Bun spelling
        seen.append(ws.binary_type)
        with pytest.raises(bunws.InvalidArgument):
            ws.binary_type = "blob?"

    def on_message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        seen.append((type(msg).__name__, bytes(msg), ws.data))
        ws.binary_type = "memoryview"

    rec.on_open, rec.on_message = on_open, on_message
    async with running(rec.handler) as server:
        async with websockets.connect(ws_url(server, "/path")) as client:
            await client.send(b"\x01")
            await eventually(lambda: len(seen) == 3)
            await client.send(b"\x02")
            await eventually(lambda: len(rec.events) == 2)
    assert seen[0] == (1, "127.0.0.1", "bytes", "/path")
    assert seen[1] == "bytearray"
    assert seen[2] == ("bytearray", b"\x01", {"changed": True})
    assert isinstance(rec.events[1][1], memoryview)


# ---------------------------------------------------------------- closing (§6)
@pytest.mark.parametrize(
    "code, reason, wire_code, wire_reason",
    [
        (1000, "bye", 1000, "bye"),
        (4001, "custom", 4001, "custom"),
        (65537, "wrapped", 1, "wrapped"),  # low 16 bits go on the wire
        (1005, "dropped", None, ""),  # 1005/1006/0: empty Close payload
        (0, "dropped", None, ""),
        (1000, "b" * 130, 1000, "b" * 123),
        (1000, "é" * 62, 1000, "é" * 61),  # cut on a character boundary
    ],
)
async def test_server_close_code_and_reason_rules(
    code: int, reason: str, wire_code: int | None, wire_reason: str
) -> None:
    rec = Recorder()
    rec.on_message = lambda ws, msg: ws.close(code, reason)
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        client.send_text("close please")
        assert await client.recv_close() == (wire_code, wire_reason)
        await client.expect_eof()  # FIN follows the Close frame at once
        client.close()
    # The handler gets the code as passed and the cut reason, as in Bun.
    assert rec.closes == [(code, cut_reason(reason).decode())]


async def test_close_flushes_queued_data_first() -> None:
    rec = Recorder()

    def on_message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        for i in range(3):
            ws.send(f"d{i}")
        ws.close(1000, "done")

    rec.on_message = on_message
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        client.send_text("go")
        frames = [await client.recv_frame() for _ in range(4)]
        await client.expect_eof()
    assert [f[0] for f in frames] == [1, 1, 1, 8]


async def test_terminate_closes_tcp_without_close_frame() -> None:
    rec = Recorder()
    rec.on_message = lambda ws, msg: ws.terminate()
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        client.send_text("x")
        rest = await client.expect_eof()
    assert rest == b""
    assert rec.closes == [(1006, "")]


@pytest.mark.parametrize(
    "payload, echoed, handler_args",
    [
        (wire.close_payload(1000, "bye"), (1000, "bye"), (1000, "bye")),
        (wire.close_payload(4999, ""), (4999, ""), (4999, "")),
        (b"", (None, ""), (1005, "")),
        (b"\x03", (1002, "Received invalid close payload"), (1002, "Received invalid close payload")),
        (wire.close_payload(1005), (1002, "Received invalid close code"), (1002, "Received invalid close code")),
        (wire.close_payload(999), (1002, "Received invalid close code"), (1002, "Received invalid close code")),
        (wire.close_payload(5000), (1002, "Received invalid close code"), (1002, "Received invalid close code")),
        (struct.pack("!H", 1000) + b"\xff", (1007, "Received invalid UTF-8"), (1007, "Received invalid UTF-8")),
    ],
)
async def test_peer_close_is_answered(payload: bytes, echoed: tuple, handler_args: tuple) -> None:
    rec = Recorder()
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        client.send(wire.CLOSE, payload)
        client.send_text("ignored after close")
        assert await client.recv_close() == echoed
        await client.expect_eof()
    assert rec.closes == [handler_args]
    assert rec.events == []


@pytest.mark.parametrize(
    "raw, code, reason",
    [
        (wire.frame(wire.TEXT, b"x", mask=None), 1002, "Received an incorrectly masked frame"),
        (wire.client(wire.TEXT, b"x", rsv1=True), 1002, "Received unexpected RSV1 bit"),
        (wire.client(wire.TEXT, b"x", rsv2=True), 1002, "Received unexpected RSV2 or RSV3 bit"),
        (wire.client(3, b"x"), 1002, "Received invalid opcode"),
        (wire.client(wire.PING, b"x" * 126), 1002, "Received too big control frame"),
        (wire.client(wire.PING, b"x", fin=False), 1002, "Received fragmented control frame"),
        (wire.client(wire.CONT, b"x"), 1002, "Received continuation frame outside a fragmented message"),
        (
            wire.client(wire.TEXT, b"a", fin=False) + wire.client(wire.TEXT, b"b"),
            1002,
            "Received new message inside a fragmented message",
        ),
        (wire.client(wire.TEXT, b"\xc0\xaf"), 1007, "Received invalid UTF-8"),
        (wire.header(wire.BINARY, 2**20, mask=wire.DEFAULT_MASK), 1009, "Received too big message"),
        (wire.header(wire.BINARY, 2**63, mask=wire.DEFAULT_MASK, length_size=8), 1002, None),
    ],
)
async def test_protocol_errors_get_precise_close_codes(raw: bytes, code: int, reason: str | None) -> None:
    rec = Recorder(max_payload_length=1000)
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        client.send_raw(raw)
        got_code, got_reason = await client.recv_close()
        await client.expect_eof()
    assert got_code == code
    if reason is not None:
        assert got_reason == reason
    assert rec.closes == [(code, got_reason)]  # our handler sees the code sent on the wire


async def test_messages_before_a_protocol_error_are_delivered() -> None:
    rec = Recorder()
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        client.send_raw(wire.client(wire.TEXT, "ok") + wire.client(3, b""))
        assert (await client.recv_close())[0] == 1002
    assert rec.events == [("message", "ok")]


async def test_peer_vanishing_gives_1006() -> None:
    rec = Recorder()
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        client.send_raw(wire.client(wire.TEXT, "abc")[:4])  # mid-frame
        await eventually(lambda: len(rec.sockets) == 1)
        client.abort()
        await eventually(lambda: rec.closes == [(1006, "")])


async def test_ping_is_answered_before_the_ping_handler() -> None:
    order: list[str] = []
    handler = bunws.WebSocketHandler(
        ping=lambda ws, data: order.append(f"ping {data!r}"),
        pong=lambda ws, data: order.append(f"pong {data!r}"),
    )
    async with running(handler) as server:
        client = await RawClient.connect(server.port)
        client.send(wire.PING, b"abc")
        client.send(wire.PONG, b"unsolicited")
        assert await client.recv_frame() == (wire.PONG, b"abc", True, False)
        await eventually(lambda: len(order) == 2)
        client.close()
    assert order == ["ping b'abc'", "pong b'unsolicited'"]


async def test_fragmented_message_with_interleaved_ping() -> None:
    rec = Recorder()
    rec.on_message = lambda ws, msg: ws.send(msg)
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        client.send_raw(
            wire.client(wire.TEXT, "hel", fin=False)
            + wire.client(wire.PING, b"p")
            + wire.client(wire.CONT, "lo", fin=False)
            + wire.client(wire.CONT, " wörld")
        )
        assert await client.recv_frame() == (wire.PONG, b"p", True, False)
        assert await client.recv_data() == (1, "hello wörld".encode())
        client.close()


# ---------------------------------------------------------------- handler errors (§13)
async def test_handler_exception_without_error_handler_logs_and_closes_1011(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()

    def on_message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        raise RuntimeError("handler bug")

    rec.on_message = on_message
    with caplog.at_level(logging.ERROR, logger="bunws"):
        async with running(rec.handler) as server:
            client = await RawClient.connect(server.port)
            client.send_text("x")
            assert await client.recv_close() == (1011, "Internal error")
    assert rec.closes == [(1011, "Internal error")]
    assert any(r.exc_info and "handler bug" in str(r.exc_info[1]) for r in caplog.records)


async def test_handler_exception_goes_to_error_handler_and_socket_stays_open() -> None:
    errors: list[tuple[str, Any]] = []

    def message(ws: bunws.ServerWebSocket, msg: str) -> None:
        if msg == "boom":
            raise ValueError("sync failure")
        ws.send(f"echo {msg}")

    async def amessage(ws: bunws.ServerWebSocket, msg: str) -> None:
        if msg == "async":
            await asyncio.sleep(0)
            raise KeyError("async failure")
        message(ws, msg)

    handler = bunws.WebSocketHandler(
        message=amessage,
        error=lambda exc, ws: errors.append((type(exc).__name__, ws.ready_state)),
    )
    async with running(handler) as server:
        async with websockets.connect(ws_url(server)) as client:
            await client.send("boom")
            await client.send("async")
            await client.send("still here")
            assert await asyncio.wait_for(client.recv(), 5) == "echo still here"
            await eventually(lambda: len(errors) == 2)
    assert sorted(errors) == [("KeyError", 1), ("ValueError", 1)]


async def test_open_exception_closes_with_1011_and_reports() -> None:
    errors: list[str] = []
    closes: list[tuple[int, str]] = []

    def open_(ws: bunws.ServerWebSocket) -> None:
        raise RuntimeError("open failed")

    handler = bunws.WebSocketHandler(
        open=open_,
        close=lambda ws, c, r: closes.append((c, r)),
        error=lambda exc, ws: errors.append(str(exc)) or ws.close(1011, "Internal error"),
    )
    async with running(handler) as server:
        client = await RawClient.connect(server.port)
        assert await client.recv_close() == (1011, "Internal error")
    assert errors == ["open failed"]
    assert closes == [(1011, "Internal error")]


async def test_close_inside_open_still_upgrades() -> None:
    results: list[bool] = []

    def fetch(req: bunws.Request, server: bunws.Server) -> None:
        results.append(server.upgrade(req))

    handler = bunws.WebSocketHandler(open=lambda ws: ws.close(4000, "not today"))
    async with running(handler, fetch=fetch) as server:
        client = await RawClient.connect(server.port)
        assert client.status == 101
        assert await client.recv_close() == (4000, "not today")
    assert results == [True]


# ---------------------------------------------------------------- pause / resume
async def test_pause_holds_messages_until_resume() -> None:
    rec = Recorder()

    def on_message(ws: bunws.ServerWebSocket, msg: str) -> None:
        if msg == "pause":
            ws.pause()
            assert ws.is_paused
            assert ws.send("paused") == 6  # sends still work
            asyncio.get_running_loop().call_later(0.2, ws.resume)
        else:
            ws.send(f"got {msg}")

    rec.on_message = on_message
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        client.send_text("pause")
        client.send_text("one")
        client.send_text("two")
        assert await client.recv_data() == (1, b"paused")
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await client.recv_data() == (1, b"got one")
        assert loop.time() - start > 0.1
        assert await client.recv_data() == (1, b"got two")
        client.close()
