"""``bunws.session.WebSocketSession`` on a stub transport: the close handshake (both
directions, protocol errors, abort), the WebSocket timers driven through
``check_timers(now)``, pause/resume, handler errors and ``drain``.

Sessions are made the real way (a ``Connection`` upgraded by ``fetch``); the stub
transport and its asyncio rules are test_protocol's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from typing import Any

import pytest
import wire
from rawclient import RawClient
from test_protocol import (  # noqa: F401  (no_transport_misuse: the autouse check)
    KEY,
    StubTransport,
    connect,
    feed,
    make_server,
    no_transport_misuse,
    raw_frames,
    responses,
    spin,
)

import bunws
from bunws.protocol import Connection
from bunws.session import SessionState

TIMEOUT_REASON = "WebSocket timed out from inactivity"


class App:
    """Handlers that record; ``message`` acts on a few commands."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.errors: list[tuple[Exception, Any]] = []
        self.drains: list[int] = []

    def open(self, ws: bunws.ServerWebSocket) -> None:
        self.events.append("open")

    def message(self, ws: bunws.ServerWebSocket, msg: Any) -> None:
        self.events.append(msg)
        if msg == "pause":
            ws.pause()
        elif msg == "raise":
            raise ValueError("handler bug")
        elif isinstance(msg, str) and msg.startswith("echo"):
            ws.send(msg)

    def close(self, ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
        self.events.append(("close", code, reason))

    def drain(self, ws: bunws.ServerWebSocket) -> None:
        self.drains.append(ws.buffered_amount)
        ws.send("drained")

    def error(self, exc: Exception, ws: bunws.ServerWebSocket) -> None:
        self.errors.append((exc, ws))

    def handler(self, *, error: bool = True, **options: Any) -> bunws.WebSocketHandler:
        return bunws.WebSocketHandler(
            open=self.open, message=self.message, close=self.close, drain=self.drain,
            error=self.error if error else None, **options,
        )

    def closes(self) -> list[Any]:
        return [e for e in self.events if isinstance(e, tuple) and e[0] == "close"]


def upgrade(req: bunws.Request, server: bunws.Server) -> Any:
    if server.upgrade(req):
        return None
    return bunws.Response("no", status=400)


def open_ws(handler: bunws.WebSocketHandler, server_options: dict | None = None,
            **transport_options: Any) -> tuple[bunws.Server, Any, StubTransport, bunws.ServerWebSocket]:
    server = make_server(upgrade, handler, **(server_options or {}))
    conn, t = connect(server, **transport_options)
    feed(conn, RawClient.handshake_request("/", key=KEY))
    got, rest = responses(t.sent)
    assert [s for s, _, _ in got] == [101]
    t.sent = bytearray(rest)  # from here on: frames only
    return server, conn, t, conn.session.ws


def frames(t: StubTransport) -> list[tuple[int, bytes]]:
    return raw_frames(bytes(t.sent))


def close_frame(code: int, reason: str = "") -> tuple[int, bytes]:
    return (wire.CLOSE, struct.pack("!H", code) + reason.encode())


# ------------------------------------------------------------------------ peer Close
@pytest.mark.parametrize(
    ("payload", "echo", "seen"),
    [
        (wire.close_payload(1000, "bye"), struct.pack("!H", 1000) + b"bye", (1000, "bye")),
        (wire.close_payload(4001, "é"), struct.pack("!H", 4001) + "é".encode(), (4001, "é")),
        (b"", b"", (1005, "")),  # no status: echoed as an empty Close
    ],
    ids=["1000", "4001-utf8", "empty"],
)
async def test_peer_close_is_echoed_then_tcp_ends(payload: bytes, echo: bytes, seen: tuple) -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler())
    feed(conn, wire.client(wire.TEXT, "echo 1") + wire.client(wire.CLOSE, payload) + wire.client(wire.TEXT, "after"))
    assert frames(t) == [(wire.TEXT, b"echo 1"), (wire.CLOSE, echo)]
    assert app.events == ["open", "echo 1", ("close", *seen)]
    assert conn.session.state is SessionState.CLOSING
    assert t.closing and not t.aborted
    assert ws.ready_state == 3 and ws.send("late") == 0
    session = conn.session
    await spin()
    assert t.lost and session.state is SessionState.CLOSED
    assert app.closes() == [("close", *seen)]  # connection_lost adds no second call
    assert server.pending_websockets == 0


# ------------------------------------------------------------------------ protocol errors
@pytest.mark.parametrize(
    ("bad", "code", "options"),
    [
        (wire.frame(wire.TEXT, "x", mask=None), 1002, {}),
        (wire.client(3, b""), 1002, {}),
        (wire.client(wire.TEXT, b"x", rsv2=True), 1002, {}),
        (wire.client(wire.CLOSE, wire.close_payload(999)), 1002, {}),
        (wire.client(wire.TEXT, b"\xff"), 1007, {}),
        (wire.client(wire.BINARY, b"x" * 21), 1009, {"max_payload_length": 20}),
        (wire.fragments(wire.BINARY, [b"a", b"b", b"c"]), 1008, {"max_fragments": 2}),
    ],
    ids=["unmasked", "opcode-3", "rsv2", "close-code-999", "bad-utf8", "too-big", "too-many-fragments"],
)
@pytest.mark.parametrize("can_eof", [True, False])
async def test_protocol_error_sends_the_precise_close_code_then_half_closes(
    bad: bytes, code: int, options: dict, can_eof: bool
) -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler(**options), can_eof=can_eof)
    feed(conn, wire.client(wire.TEXT, "echo before") + bad + wire.client(wire.TEXT, "echo after"))
    got = frames(t)
    assert got[0] == (wire.TEXT, b"echo before")  # what came first is still handled
    assert len(got) == 2 and got[1][0] == wire.CLOSE
    wire_code, wire_reason = struct.unpack("!H", got[1][1][:2])[0], got[1][1][2:].decode()
    assert wire_code == code and wire_reason
    assert app.events == ["open", "echo before", ("close", code, wire_reason)]
    assert conn.session.state is SessionState.CLOSING
    if can_eof:
        # FIN, not close(): unread input would make the kernel reset, losing our Close
        assert t.eof and not t.closing
    else:
        assert t.closing
    if can_eof:
        feed(conn, wire.client(wire.TEXT, "echo ignored") + wire.client(wire.CLOSE, b""))
        assert len(frames(t)) == 2  # what the peer still sends is discarded
        assert app.events[-1] == ("close", code, wire_reason)
        assert not conn.eof_received()  # the peer's FIN: the transport closes itself
    await spin()


# ------------------------------------------------------------------------ close()
async def test_close_queues_close_after_data_and_runs_the_handler_once() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler(), {"close_timeout": 3.0})
    ws.send("queued first")
    ws.close(4000, "bye")
    assert frames(t) == [(wire.TEXT, b"queued first"), close_frame(4000, "bye")]
    assert conn.session.state is SessionState.CLOSING
    assert t.eof and not t.closing  # half-closed: wait for the peer's Close
    assert app.closes() == [("close", 4000, "bye")]
    assert ws.ready_state == 3
    ws.close(1000, "again")
    assert ws.send("x") == 0
    assert app.closes() == [("close", 4000, "bye")]
    feed(conn, wire.client(wire.TEXT, "ignored"))
    assert app.events[-1] == ("close", 4000, "bye")
    feed(conn, wire.client(wire.CLOSE, wire.close_payload(4000)))
    assert t.closing  # the peer answered: TCP ends
    await spin()
    assert t.lost and conn.phase == 3
    assert app.closes() == [("close", 4000, "bye")]
    assert server.pending_websockets == 0


async def test_close_waits_behind_bytes_the_client_has_not_read() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler())
    t.client_reads = False
    assert ws.send(b"x" * 1000) == -1
    ws.close(1000, "")
    assert frames(t) == []
    t.drain()
    assert frames(t) == [(wire.BINARY, b"x" * 1000), close_frame(1000)]


async def test_close_without_write_eof_closes_the_transport() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler(), can_eof=False)
    ws.close()
    assert frames(t) == [close_frame(1000)]
    assert t.closing and not t.eof


async def test_close_handler_cannot_send_and_close_from_it_is_ignored() -> None:
    statuses: list[int] = []

    def close(ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
        statuses.append(ws.send("from close"))
        ws.close(4999, "nested")

    server, conn, t, ws = open_ws(bunws.WebSocketHandler(close=close))
    ws.close(4000, "x")
    assert statuses == [0]
    assert frames(t) == [close_frame(4000, "x")]


# ------------------------------------------------------------------------ abort
async def test_terminate_aborts_without_a_close_frame() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler())
    ws.terminate()
    assert t.aborted and frames(t) == []
    assert app.closes() == [("close", 1006, "")]
    ws.terminate()
    await spin()
    assert app.closes() == [("close", 1006, "")]
    assert server.pending_websockets == 0


# ------------------------------------------------------------------------ timers
async def test_idle_socket_gets_one_ping_then_is_reaped() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler(idle_timeout=8))  # ping 4 s before the end
    session = conn.session
    before = server.clock()
    feed(conn, wire.client(wire.TEXT, "hi"))
    after = server.clock()
    session.check_timers(before + 3.9)
    assert frames(t) == []
    session.check_timers(after + 4.5)
    assert frames(t) == [(wire.PING, b"")]
    session.check_timers(after + 5.5)
    assert frames(t) == [(wire.PING, b"")]  # one ping per silence
    session.check_timers(before + 7.9)
    assert not t.closing
    session.check_timers(after + 8.0)
    assert t.aborted and frames(t) == [(wire.PING, b"")]
    assert app.closes() == [("close", 1006, TIMEOUT_REASON)]


async def test_inbound_traffic_restarts_the_idle_clock_and_rearms_the_ping() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler(idle_timeout=8))
    session = conn.session
    t0 = server.clock()
    session.check_timers(t0 + 4.5)
    assert frames(t) == [(wire.PING, b"")]
    await asyncio.sleep(0.02)
    feed(conn, wire.client(wire.PONG, b""))
    t1 = server.clock()
    session.check_timers(t0 + 8.0)  # would have been the end without the pong
    assert not t.closing
    session.check_timers(t1 + 4.5)
    assert frames(t) == [(wire.PING, b""), (wire.PING, b"")]
    session.check_timers(t1 + 8.0)
    assert t.aborted


async def test_send_pings_false_still_times_out_and_zero_never_does() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler(idle_timeout=8, send_pings=False))
    now = server.clock()
    conn.session.check_timers(now + 5)
    assert frames(t) == []
    conn.session.check_timers(now + 8)
    assert t.aborted
    app2 = App()
    server2, conn2, t2, ws2 = open_ws(app2.handler(idle_timeout=0))
    conn2.session.check_timers(server2.clock() + 10_000)
    assert frames(t2) == [] and not t2.closing


async def test_the_idle_deadline_holds_when_the_clock_has_not_moved() -> None:
    # A millisecond clock (uvloop) often reads the same instant again, and
    # (t + 8) - t rounds below 8 for such a t: the deadline must still hold.
    t_same = next(x / 1000 for x in range(1_000_000, 1_100_000) if (x / 1000 + 8) - x / 1000 < 8)
    app = App()
    server, conn, t, ws = open_ws(app.handler(idle_timeout=8, send_pings=False))
    conn.session.last_inbound = t_same
    conn.session.check_timers(t_same + 8)
    assert t.aborted


async def test_a_paused_socket_is_not_reaped() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler(idle_timeout=8))
    ws.pause()
    conn.session.check_timers(server.clock() + 100)
    assert not t.closing and frames(t) == []
    ws.resume()  # resuming restarts the idle clock
    now = server.clock()
    conn.session.check_timers(now + 7)
    assert not t.closing
    conn.session.check_timers(now + 8)
    assert t.aborted


@pytest.mark.parametrize("how", ["close", "protocol error"])
async def test_close_timeout_aborts_a_peer_that_never_answers(how: str) -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler(idle_timeout=0), {"close_timeout": 2.0})
    session = conn.session
    before = server.clock()
    if how == "close":
        ws.close(1000, "bye")
    else:
        feed(conn, wire.client(wire.TEXT, b"\xff"))
    after = server.clock()
    assert session.state is SessionState.CLOSING
    session.check_timers(before + 1.9)
    assert not t.aborted
    session.check_timers(after + 2.0)
    assert t.aborted
    await spin()
    assert len(app.closes()) == 1 and session.state is SessionState.CLOSED


# ------------------------------------------------------------------------ pause / resume
async def test_pause_holds_events_and_resume_redelivers_them_in_order() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler())
    feed(conn, b"".join(wire.client(wire.TEXT, m) for m in ("a", "pause", "b", "echo c")))
    assert app.events == ["open", "a", "pause"]
    assert ws.is_paused and not t.reading
    feed(conn, wire.client(wire.TEXT, "d") + wire.client(wire.PING, b"p"))  # a read already under way
    assert app.events == ["open", "a", "pause"]
    assert frames(t) == []  # even the ping waits
    ws.resume()
    assert app.events == ["open", "a", "pause"]  # not inside the caller's stack
    assert t.reading
    await spin()
    assert app.events == ["open", "a", "pause", "b", "echo c", "d"]
    assert frames(t) == [(wire.TEXT, b"echo c"), (wire.PONG, b"p")]
    assert not ws.is_paused


async def test_pausing_again_while_the_backlog_is_replayed_keeps_the_order() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler())
    feed(conn, b"".join(wire.client(wire.TEXT, m) for m in ("pause", "x", "pause", "y", "z")))
    assert app.events == ["open", "pause"]
    ws.resume()
    await spin()
    assert app.events == ["open", "pause", "x", "pause"]
    feed(conn, wire.client(wire.TEXT, "w"))
    ws.resume()
    await spin()
    assert app.events == ["open", "pause", "x", "pause", "y", "z", "w"]


async def test_resume_then_pause_before_the_replay_keeps_the_order() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler())
    feed(conn, b"".join(wire.client(wire.TEXT, m) for m in ("pause", "1", "2")))
    ws.resume()
    ws.pause()  # before the replay ran
    feed(conn, wire.client(wire.TEXT, "3"))
    await spin()
    assert app.events == ["open", "pause"]
    ws.resume()
    await spin()
    assert app.events == ["open", "pause", "1", "2", "3"]


async def test_a_read_right_after_resume_comes_after_the_held_events() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler())
    feed(conn, b"".join(wire.client(wire.TEXT, m) for m in ("1", "pause", "2", "3")))
    ws.resume()
    feed(conn, wire.client(wire.TEXT, "4"))  # uvloop: read in the same loop iteration
    await spin()
    assert app.events == ["open", "1", "pause", "2", "3", "4"]


@pytest.mark.parametrize("then_resume", [False, True])
async def test_closing_a_paused_socket_reads_the_peers_answer(then_resume: bool) -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler())
    ws.pause()
    assert not t.reading
    ws.close(1000, "bye")
    if then_resume:
        ws.resume()
    assert t.reading, "the peer's Close can only arrive if the socket is read"


async def test_resume_after_close_delivers_nothing() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler())
    feed(conn, wire.client(wire.TEXT, "pause") + wire.client(wire.TEXT, "held"))
    ws.close(1000, "")
    ws.resume()
    await spin()
    assert app.events == ["open", "pause", ("close", 1000, "")]


async def test_pause_in_open_holds_the_frames_that_came_with_the_handshake() -> None:
    got: list[Any] = []
    server = make_server(
        upgrade, bunws.WebSocketHandler(open=lambda ws: ws.pause(), message=lambda ws, m: got.append(m))
    )
    conn, t = connect(server)
    feed(conn, RawClient.handshake_request("/", key=KEY) + wire.client(wire.TEXT, "early"))
    await spin()
    assert got == [] and not t.reading
    conn.session.ws.resume()
    await spin()
    assert got == ["early"] and t.reading


# ------------------------------------------------------------------------ handler errors
async def test_sync_handler_exception_goes_to_error_with_the_socket() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler())
    feed(conn, wire.client(wire.TEXT, "raise") + wire.client(wire.TEXT, "echo next"))
    [(exc, sock)] = app.errors
    assert isinstance(exc, ValueError) and sock is ws
    assert frames(t) == [(wire.TEXT, b"echo next")]  # the socket stays open
    assert ws.ready_state == 1


async def test_async_handler_exception_goes_to_error_too() -> None:
    errors: list[Any] = []

    async def message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        await asyncio.sleep(0)
        raise KeyError(msg)

    async def error(exc: Exception, ws: bunws.ServerWebSocket) -> None:
        await asyncio.sleep(0)
        errors.append((exc, ws))

    server, conn, t, ws = open_ws(bunws.WebSocketHandler(message=message, error=error))
    feed(conn, wire.client(wire.TEXT, "m"))
    assert errors == []
    await spin(10)
    [(exc, sock)] = errors
    assert isinstance(exc, KeyError) and sock is ws
    assert ws.ready_state == 1


async def test_open_handler_exception_goes_to_error() -> None:
    errors: list[Any] = []

    def open_(ws: bunws.ServerWebSocket) -> None:
        raise RuntimeError("open bug")

    server, conn, t, ws = open_ws(bunws.WebSocketHandler(open=open_, error=lambda e, w: errors.append(e)))
    assert [type(e) for e in errors] == [RuntimeError]


async def test_unhandled_exception_is_logged_and_closes_1011(caplog: pytest.LogCaptureFixture) -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler(error=False))
    with caplog.at_level(logging.ERROR, logger="bunws"):
        feed(conn, wire.client(wire.TEXT, "raise") + wire.client(wire.TEXT, "echo never"))
    assert any("unhandled exception in a websocket handler" in r.getMessage() for r in caplog.records)
    assert frames(t) == [close_frame(1011, "Internal error")]
    assert app.closes() == [("close", 1011, "Internal error")]


async def test_an_error_handler_that_raises_is_logged_and_closes_1011(caplog: pytest.LogCaptureFixture) -> None:
    def error(exc: Exception, ws: bunws.ServerWebSocket) -> None:
        raise RuntimeError("error handler bug")

    def message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        raise ValueError("first")

    server, conn, t, ws = open_ws(bunws.WebSocketHandler(message=message, error=error))
    with caplog.at_level(logging.ERROR, logger="bunws"):
        feed(conn, wire.client(wire.TEXT, "x"))
    assert any("error handler raised" in r.getMessage() for r in caplog.records)
    assert frames(t) == [close_frame(1011, "Internal error")]


async def test_unhandled_async_exception_closes_1011(caplog: pytest.LogCaptureFixture) -> None:
    async def message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        raise ValueError("async bug")

    server, conn, t, ws = open_ws(bunws.WebSocketHandler(message=message))
    with caplog.at_level(logging.ERROR, logger="bunws"):
        feed(conn, wire.client(wire.TEXT, "x"))
        await spin()
    assert frames(t) == [close_frame(1011, "Internal error")]


async def test_close_on_backpressure_limit_aborts_soon_without_a_close_frame() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler(backpressure_limit=10, close_on_backpressure_limit=True))
    t.client_reads = False
    assert ws.send(b"x" * 20) == -1
    assert ws.send(b"y") == 0  # over the limit
    assert app.closes() == [] and not t.aborted  # after the current handler returns
    await spin()
    assert t.aborted
    assert app.closes() == [("close", 1006, "")]
    assert raw_frames(responses(t.written)[1]) == [(wire.BINARY, b"x" * 20)]  # no Close frame
    assert server.pending_websockets == 0


# ------------------------------------------------------------------------ drain
async def test_drain_runs_once_the_transport_empties_after_the_kept_back_pong() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler())
    t.client_reads = False
    statuses = [ws.send(b"a" * 100), ws.send(b"b")]
    assert statuses == [-1, -1]  # high-water mark 0: any unsent byte is backpressure
    feed(conn, wire.client(wire.PING, b"1") + wire.client(wire.PING, b"2"))
    assert app.drains == []
    t.client_reads = True
    t.drain()
    assert app.drains == [0]
    assert frames(t) == [(wire.BINARY, b"a" * 100), (wire.BINARY, b"b"), (wire.PONG, b"2"), (wire.TEXT, b"drained")]
    assert ws.send("x") == 1


async def test_drain_comes_from_the_timer_when_the_transport_never_resumes() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler(), tells_pause=False)
    t.client_reads = False
    assert ws.send(b"a") == -1  # asked, not told
    t.client_reads = True
    t.drain()
    assert app.drains == []
    conn.session.check_timers(server.clock())
    assert app.drains == [0]
    assert frames(t) == [(wire.BINARY, b"a"), (wire.TEXT, b"drained")]


async def test_upgrade_behind_unread_bytes_starts_write_paused() -> None:
    # A 101 the client has not read yet: the socket opens under backpressure.
    statuses: list[int] = []
    app = App()
    handler = bunws.WebSocketHandler(open=lambda ws: statuses.append(ws.send("hi")), drain=app.drain)
    server = make_server(upgrade, handler)
    conn, t = connect(server, client_reads=False)
    feed(conn, RawClient.handshake_request("/", key=KEY))
    assert statuses == [-1]
    t.client_reads = True
    t.drain()
    assert app.drains == [0]
    assert raw_frames(responses(t.sent)[1]) == [(wire.TEXT, b"hi"), (wire.TEXT, b"drained")]


async def test_no_drain_after_close() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler())
    t.client_reads = False
    ws.send(b"x")
    ws.close()
    t.client_reads = True
    t.drain()
    assert app.drains == []


async def test_open_runs_corked() -> None:
    def open_(ws: bunws.ServerWebSocket) -> None:
        for i in range(3):
            ws.send(str(i))

    server = make_server(upgrade, bunws.WebSocketHandler(open=open_))
    conn = Connection(server)
    t = StubTransport(conn)
    writes: list[bytes] = []
    original = t.write
    t.write = lambda data: (writes.append(bytes(data)), original(data))  # type: ignore[method-assign]
    conn.connection_made(t)
    feed(conn, RawClient.handshake_request("/", key=KEY))
    assert writes[0].startswith(b"HTTP/1.1 101")
    assert raw_frames(writes[1]) == [(wire.TEXT, b"0"), (wire.TEXT, b"1"), (wire.TEXT, b"2")]
    assert len(writes) == 2


async def test_hang_up_writes_what_is_queued_then_closes_tcp_without_a_close_frame() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler())
    ws.send_text("queued")
    conn.session.hang_up()
    assert frames(t) == [(wire.TEXT, b"queued")]
    assert t.closing and not t.aborted
    assert ws.ready_state == 3 and app.closes() == [("close", 1006, "")]
    conn.session.hang_up()  # once only
    assert app.closes() == [("close", 1006, "")]


async def test_the_server_clock_is_the_loops_and_skips_the_stock_wrapper() -> None:
    loop = asyncio.get_running_loop()
    server, conn, t, ws = open_ws(App().handler())
    if getattr(loop.time, "__func__", None) is asyncio.BaseEventLoop.time:
        assert server.clock is time.monotonic  # what BaseEventLoop.time returns, minus a frame
    else:
        assert server.clock == loop.time  # uvloop's own
    assert abs(server.clock() - loop.time()) < 0.5
    assert abs(conn.session.now() - loop.time()) < 0.5  # the compiled session reads the same clock


# ------------------------------------------------------------------------ the timer wheel
async def test_the_session_files_itself_under_its_next_deadline() -> None:
    """What the tick is told: the ping deadline, the idle one once the ping is out,
    nothing while paused, the close deadline once closing."""
    app = App()
    server, conn, t, ws = open_ws(app.handler(idle_timeout=8), {"close_timeout": 2.0})
    session = conn.session
    tick = server.timers.tick
    last = session.last_inbound
    ping_at = last + (8 - server.ping_margin)
    assert conn.check_timers(last) == ping_at
    assert conn.check_timers(ping_at) == last + 8  # the ping went out
    ws.pause()
    assert conn.check_timers(last + 100) is None  # a paused socket is not reaped
    ws.resume()  # re-filed: the idle clock restarts
    resumed = session.last_inbound
    assert server.timers.due_at(conn) == math.ceil((resumed + 8) / tick) * tick  # the ping is out
    before = server.clock()
    ws.close(1000, "bye")  # a deadline earlier than the filed one: re-filed
    due = server.timers.due_at(conn)
    assert due is not None and before + 2.0 <= due <= server.clock() + 2.0 + tick
    assert conn.check_timers(before) == session.deadline


async def test_a_stalled_writer_is_polled_every_tick_until_it_drains() -> None:
    app = App()
    server, conn, t, ws = open_ws(app.handler(idle_timeout=0))
    assert conn.check_timers(server.clock()) is None  # no idle timeout: nothing to look at
    t.client_reads = False
    assert ws.send(b"x" * 1000) == -1  # the transport told us: filed for the next tick
    assert server.timers.due_at(conn) is not None
    now = server.clock()
    assert conn.check_timers(now) == now
    t.client_reads = True
    t.drain()
    assert conn.check_timers(server.clock()) is None
