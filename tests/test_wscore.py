"""``bunws._wscore`` on its own: ``WebSocketCore`` attached to a stub transport whose
write buffer the test sets, ``dispatch`` with a recording session, ``fan_out`` and
``flush_queued`` over several cores.

The send statuses are Bun's (docs/bun-behaviour.md §2, §3): the payload size, -1 when
queued behind bytes waiting in the transport, 0 when dropped or empty.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from bunws import InvalidArgument, InvalidType
from bunws._wscore import WebSocketCore, as_bytes, dispatch, encode_text, fan_out, flush_queued

TEXT, BINARY, CLOSE, PING, PONG, PROTOCOL_ERROR = 1, 2, 8, 9, 10, -1


# ---------------------------------------------------------------------------- helpers
class Transport:
    """Records every write()/writelines() call; ``backlog`` is what it reports as
    unsent (set by the test, or grown by each write when ``keeps``)."""

    def __init__(self, keeps: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.backlog = 0
        self.keeps = keeps
        self.limits: list[tuple[Any, Any]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))
        if self.keeps:
            self.backlog += len(data)

    def writelines(self, chunks: list[Any]) -> None:
        self.calls.append(("writelines", list(chunks)))
        if self.keeps:
            self.backlog += sum(len(c) for c in chunks)

    def get_write_buffer_size(self) -> int:
        return self.backlog

    def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None:
        self.limits.append((high, low))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # plain TCP: no ssl_object

    def is_closing(self) -> bool:
        return self.closing

    @property
    def writes(self) -> int:
        return len(self.calls)

    def wire(self) -> bytes:
        out = bytearray()
        for kind, data in self.calls:
            out += b"".join(data) if kind == "writelines" else data
        return bytes(out)

    def frames(self) -> list[tuple[int, bytes]]:
        return [(op, payload) for op, _, payload in decode(self.wire())]


class FakeLoop:
    """``call_soon`` recorded, run by the test: "soon" is observable."""

    def __init__(self) -> None:
        self.soon: list[Any] = []

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.soon.append((fn, args))

    def run(self) -> None:
        soon, self.soon = self.soon, []
        for fn, args in soon:
            fn(*args)


def decode(data: bytes) -> list[tuple[int, bool, bytes]]:
    """Server frames as (opcode, rsv1, payload); fails on a partial frame."""
    out, pos = [], 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80, "server frames are never masked"
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            (n,), pos = struct.unpack_from("!H", data, pos), pos + 2
        elif n == 127:
            (n,), pos = struct.unpack_from("!Q", data, pos), pos + 8
        assert pos + n <= len(data), "partial frame"
        out.append((b0 & 0x0F, bool(b0 & 0x40), data[pos : pos + n]))
        pos += n
    return out


def core(
    transport: Transport | None = None,
    *,
    limit: int = 0,
    close_on_limit: bool = False,
    loop: Any = None,
    on_over_limit: Any = None,
    deflater: Any = None,
    shared_deflate: bool = False,
) -> WebSocketCore:
    ws = WebSocketCore()
    ws.attach(
        transport if transport is not None else Transport(), loop or FakeLoop(), limit,
        close_on_limit, on_over_limit or (lambda ws: None), deflater, shared_deflate,
    )
    return ws


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


# ---------------------------------------------------------------------------- statuses
@pytest.mark.parametrize(
    ("method", "data", "status", "opcode", "payload"),
    [
        ("send", "héllo", 6, TEXT, "héllo".encode()),
        ("send", b"abc", 3, BINARY, b"abc"),
        ("send", bytearray(b"abcd"), 4, BINARY, b"abcd"),
        ("send", memoryview(b"ab"), 2, BINARY, b"ab"),
        ("send", "", 0, TEXT, b""),  # empty: status 0, the frame still goes out
        ("send", b"", 0, BINARY, b""),
        ("send_text", "x", 1, TEXT, b"x"),
        ("send_binary", bytearray(b"xy"), 2, BINARY, b"xy"),
        ("ping", "hi", 2, PING, b"hi"),
        ("ping", b"", 0, PING, b""),
        ("pong", memoryview(b"abc"), 3, PONG, b"abc"),
    ],
)
def test_open_socket_returns_payload_size_and_writes_the_frame(
    method: str, data: Any, status: int, opcode: int, payload: bytes
) -> None:
    t = Transport()
    ws = core(t)
    assert getattr(ws, method)(data) == status
    assert t.writes == 1
    assert t.frames() == [(opcode, payload)]


@pytest.mark.parametrize("method", ["send", "send_text", "send_binary", "ping", "pong"])
def test_closed_socket_drops_every_send_with_status_0(method: str) -> None:
    t = Transport()
    ws = core(t)
    assert ws.mark_closed() is True
    data = "x" if method in ("send", "send_text", "ping") else b"x"
    assert getattr(ws, method)(data) == 0
    assert t.writes == 0
    assert ws.ready_state == 3


def test_bytes_waiting_in_the_transport_make_sends_return_minus_1_but_still_write() -> None:
    t = Transport()
    ws = core(t)
    t.backlog = 10
    ws.transport_paused()  # what pause_writing reports
    assert ws.write_paused
    assert ws.send("abc") == -1
    assert ws.ping(b"p") == -1
    assert t.frames() == [(TEXT, b"abc"), (PING, b"p")]
    t.backlog = 0
    assert ws.transport_resumed() is True
    assert ws.send("abc") == 3


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda ws: ws.send(42), InvalidType, "send expects str or bytes-like data, got int"),
        (lambda ws: ws.send("x", compress=1), InvalidType, "send expects compress to be a bool"),
        (lambda ws: ws.send_text(b"x"), InvalidType, "send_text expects a str, got bytes"),
        (lambda ws: ws.send_binary("x"), InvalidType, "send_binary expects bytes-like data, got str"),
        (lambda ws: ws.send("\ud800"), InvalidArgument, "send expects text that is valid Unicode"),
        (
            lambda ws: ws.ping(b"x" * 126),
            InvalidArgument,
            "The data size must not be greater than 125 bytes. Received 126 bytes.",
        ),
        (lambda ws: ws.pong("é" * 63), InvalidArgument, "Received 126 bytes."),
        (lambda ws: ws.cork(42), InvalidType, "cork expects a callable"),
    ],
)
def test_bad_arguments_raise_and_write_nothing(call: Any, error: type, message: str) -> None:
    t = Transport()
    ws = core(t)
    with pytest.raises(error) as info:
        call(ws)
    assert message in str(info.value)
    assert t.writes == 0


def test_a_125_byte_control_payload_is_allowed() -> None:
    t = Transport()
    ws = core(t)
    assert ws.ping(b"x" * 125) == 125
    assert t.frames() == [(PING, b"x" * 125)]


# ---------------------------------------------------------------------------- limit
def test_limit_is_strictly_greater_and_checked_before_writing() -> None:
    t = Transport()
    ws = core(t, limit=100)
    ws.transport_paused()
    t.backlog = 100  # at the limit: still accepted (queued behind the buffer)
    assert ws.send(b"a" * 500) == -1  # this send may take the buffer past the limit
    t.backlog = 101  # over it: dropped before anything is written
    assert ws.send(b"b") == 0
    assert ws.ping() == 0  # control frames count too
    assert t.frames() == [(BINARY, b"a" * 500)]


def test_transport_bytes_count_only_while_write_paused() -> None:
    # The fill state comes from pause_writing / check_fill, not a buffer-size call per send.
    t = Transport()
    ws = core(t, limit=100)
    t.backlog = 1000
    assert not ws.write_paused
    assert ws.send(b"x") == -1  # written, and check_fill now sees the waiting bytes
    assert ws.write_paused
    assert ws.send(b"y") == 0  # now the 1000 bytes count: over the limit
    assert t.frames() == [(BINARY, b"x")]


def test_without_close_on_limit_sends_work_again_after_the_drain() -> None:
    t, loop = Transport(), FakeLoop()
    ws = core(t, limit=10, loop=loop)
    ws.transport_paused()
    t.backlog = 11
    assert ws.send(b"x") == 0
    assert loop.soon == []
    t.backlog = 0
    ws.transport_resumed()
    assert ws.send(b"x") == 1


def test_close_on_limit_calls_on_over_limit_soon_exactly_once_and_drops_later_sends() -> None:
    t, loop = Transport(), FakeLoop()
    calls: list[Any] = []
    ws = core(t, limit=10, close_on_limit=True, loop=loop, on_over_limit=lambda ws: calls.append(ws))
    ws.transport_paused()
    t.backlog = 11
    assert ws.send(b"x") == 0
    assert calls == []  # not inside the send: after the current handler returns
    assert ws.send(b"y") == 0
    assert ws.pong() == 0
    loop.run()
    assert calls == [ws]  # called with the socket
    # Even once the transport drained, the socket stays doomed.
    t.backlog = 0
    ws.transport_resumed()
    assert ws.send(b"z") == 0
    loop.run()
    assert calls == [ws]
    assert t.writes == 0


async def test_close_on_limit_callback_runs_on_the_real_loop() -> None:
    t = Transport()
    calls: list[Any] = []
    ws = core(t, limit=1, close_on_limit=True, loop=asyncio.get_running_loop(),
              on_over_limit=lambda ws: calls.append(ws))
    ws.transport_paused()
    t.backlog = 2
    assert ws.send("x") == 0
    assert calls == []
    await asyncio.sleep(0)
    assert calls == [ws]


def test_keepalive_ping_is_not_subject_to_the_limit() -> None:
    t = Transport()
    ws = core(t, limit=1)
    ws.transport_paused()
    t.backlog = 50
    assert ws.ping() == 0  # over the limit: dropped
    ws.send_keepalive()
    assert t.frames() == [(PING, b"")]
    ws.mark_closed()
    ws.send_keepalive()
    assert t.writes == 1


# ---------------------------------------------------------------------------- cork
def test_cork_sends_everything_in_one_write_and_returns_the_result() -> None:
    t = Transport()
    ws = core(t)

    def body(sock: WebSocketCore) -> list[int]:
        statuses = [sock.send("a"), sock.send(b"bc"), sock.ping(b"p"), sock.pong()]
        assert t.writes == 0
        return statuses

    assert ws.cork(body) == [1, 2, 1, 0]
    assert t.writes == 1
    assert t.frames() == [(TEXT, b"a"), (BINARY, b"bc"), (PING, b"p"), (PONG, b"")]


def test_nested_corks_flush_once_when_the_outer_one_ends() -> None:
    t = Transport()
    ws = core(t)

    def inner(sock: WebSocketCore) -> str:
        sock.send("b")
        return "inner"

    def outer(sock: WebSocketCore) -> str:
        sock.send("a")
        assert sock.cork(inner) == "inner"
        assert t.writes == 0  # the inner cork's end is not a flush
        sock.send("c")
        return "outer"

    assert ws.cork(outer) == "outer"
    assert t.writes == 1
    assert t.frames() == [(TEXT, b"a"), (TEXT, b"b"), (TEXT, b"c")]


def test_cork_flushes_inside_once_more_than_16_KiB_is_queued() -> None:
    t = Transport()
    ws = core(t)
    seen: list[int] = []

    def body(sock: WebSocketCore) -> None:
        sock.send(b"a" * 16380)  # a 16384-byte frame: at the threshold, kept
        seen.append(t.writes)
        sock.send(b"b")  # past it: the queue is written out inside the cork
        seen.append(t.writes)
        sock.send(b"c")  # queued again, written when the cork ends
        seen.append(t.writes)

    ws.cork(body)
    assert seen == [0, 1, 1]
    assert t.writes == 2
    assert t.frames() == [(BINARY, b"a" * 16380), (BINARY, b"b"), (BINARY, b"c")]


def test_backpressure_inside_a_cork_shows_once_the_threshold_flush_hits_it() -> None:
    t = Transport(keeps=True)
    ws = core(t)
    statuses: list[int] = []
    ws.cork(lambda sock: statuses.extend([sock.send(b"x" * 20000), sock.send(b"y")]))
    assert statuses == [-1, -1]
    assert ws.write_paused


def test_run_corked_passes_args_reraises_and_still_flushes() -> None:
    t = Transport()
    ws = core(t)

    def fails(sock: WebSocketCore, text: str) -> None:
        sock.send(text)
        raise KeyError("boom")

    with pytest.raises(KeyError):
        ws.run_corked(fails, ws, "sent anyway")
    assert t.frames() == [(TEXT, b"sent anyway")]
    assert ws.run_corked(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(KeyError):
        ws.cork(lambda sock: fails(sock, "again"))
    assert t.frames()[-1] == (TEXT, b"again")
    assert t.writes == 2


def test_cork_on_a_closed_socket_runs_the_function_and_writes_nothing() -> None:
    t = Transport()
    ws = core(t)
    ws.mark_closed()
    assert ws.cork(lambda sock: sock.send("x")) == 0
    assert t.writes == 0


def test_buffered_amount_counts_the_transport_and_queued_frames_not_the_cork() -> None:
    t = Transport()
    ws = core(t)
    t.backlog = 7
    assert ws.buffered_amount == 7
    assert ws.get_buffered_amount() == 7
    amounts: list[int] = []
    ws.cork(lambda sock: (sock.send(b"abc"), amounts.append(sock.buffered_amount)))
    assert amounts == [7]
    ws.mark_closed()
    assert ws.buffered_amount == 0


# ---------------------------------------------------------------------------- pongs
def test_queue_pong_writes_at_once_when_the_transport_has_room() -> None:
    t = Transport()
    ws = core(t)
    ws.queue_pong(b"p")
    assert t.frames() == [(PONG, b"p")]
    ws.cork(lambda sock: (sock.queue_pong(b"q"), sock.send("after")))
    assert t.writes == 2  # corked: the pong joins the cork's one write
    assert t.frames()[1:] == [(PONG, b"q"), (TEXT, b"after")]


def test_only_the_latest_pong_is_kept_while_write_paused_and_sent_once_on_resume() -> None:
    t = Transport()
    ws = core(t)
    ws.transport_paused()
    for payload in (b"1", b"2", b"3"):
        ws.queue_pong(payload)
    assert t.writes == 0
    assert ws.transport_resumed() is True  # drain is due
    assert t.frames() == [(PONG, b"3")]
    assert ws.transport_resumed() is True
    assert t.writes == 1


def test_pong_kept_back_is_dropped_when_the_socket_closes() -> None:
    t = Transport()
    ws = core(t)
    ws.transport_paused()
    ws.queue_pong(b"late")
    ws.mark_closed()
    assert ws.transport_resumed() is False  # closed: no drain
    ws.queue_pong(b"more")
    assert t.writes == 0


# ---------------------------------------------------------------------------- check_fill
def test_a_transport_that_never_pauses_is_asked_after_each_write() -> None:
    t = Transport(keeps=True)  # keeps every byte, never calls pause_writing
    ws = core(t)
    assert ws.send(b"abc") == -1  # the bytes stayed in the transport
    assert ws.write_paused
    assert t.limits == [(0, 0)]  # asked to re-run its pause check at high=0
    assert ws.send(b"d") == -1
    assert t.limits == [(0, 0)]  # asked once, not per write
    t.backlog = 0
    assert ws.transport_resumed() is True
    t.keeps = False
    assert ws.send(b"e") == 1
    assert not ws.write_paused


def test_check_fill_leaves_a_closing_transport_limits_alone() -> None:
    t = Transport(keeps=True)
    t.closing = True
    ws = core(t)
    assert ws.send(b"x") == -1
    assert ws.write_paused
    assert t.limits == []


def test_a_transport_that_takes_everything_is_never_paused() -> None:
    t = Transport()
    ws = core(t)
    for _ in range(3):
        assert ws.send(b"ab") == 2
    assert not ws.write_paused
    assert t.limits == []


# ---------------------------------------------------------------------------- close
def test_queue_close_goes_after_the_queued_frames() -> None:
    t = Transport()
    ws = core(t)

    def body(sock: WebSocketCore) -> None:
        sock.send("a")
        sock.send(b"b")
        sock.queue_close(1000, "bye")

    ws.cork(body)
    assert t.writes == 1
    assert t.frames() == [(TEXT, b"a"), (BINARY, b"b"), (CLOSE, close_payload(1000, "bye"))]


def test_queue_close_goes_after_published_frames_waiting_for_the_end_of_tick() -> None:
    t = Transport()
    ws = core(t)
    pending: list[Any] = []
    assert fan_out({ws: None}, TEXT, b"pub", False, None, pending) == 3
    ws.queue_close(None, "")  # no code: an empty Close payload
    assert t.frames() == [(TEXT, b"pub"), (CLOSE, b"")]
    flush_queued(pending)
    assert t.writes == 1  # nothing twice


def test_mark_closed_drops_queued_bytes_and_reports_once() -> None:
    t = Transport()
    ws = core(t)
    results: list[bool] = []

    def body(sock: WebSocketCore) -> None:
        sock.send("queued in the cork")
        results.append(sock.mark_closed())
        results.append(sock.mark_closed())

    ws.cork(body)
    assert results == [True, False]
    assert t.writes == 0
    assert ws.ready_state == 3
    ws.flush()  # nothing was kept to write later
    assert t.writes == 0


def test_mark_closed_drops_published_frames_too() -> None:
    t = Transport()
    ws = core(t)
    pending: list[Any] = []
    fan_out({ws: None}, BINARY, b"x", False, None, pending)
    ws.mark_closed()
    flush_queued(pending)
    assert t.writes == 0


# ---------------------------------------------------------------------------- binary_type
@pytest.mark.parametrize(
    ("name", "canonical", "kind"),
    [
        ("bytes", "bytes", bytes),
        ("nodebuffer", "bytes", bytes),
        ("buffer", "bytes", bytes),
        ("Buffer", "bytes", bytes),
        ("bytearray", "bytearray", bytearray),
        ("arraybuffer", "bytearray", bytearray),
        ("ArrayBuffer", "bytearray", bytearray),
        ("memoryview", "memoryview", memoryview),
        ("uint8array", "memoryview", memoryview),
        ("Uint8Array", "memoryview", memoryview),
    ],
)
def test_binary_type_names_and_aliases(name: str, canonical: str, kind: type) -> None:
    ws = core()
    assert ws.binary_type == "bytes"
    ws.binary_type = name
    assert ws.binary_type == canonical
    converted = ws.binary(b"ab")
    assert type(converted) is kind
    assert bytes(converted) == b"ab"


@pytest.mark.parametrize("value", ["blob", "BYTES", None, ["bytes"]])
def test_binary_type_rejects_unknown_names_and_keeps_the_old_one(value: Any) -> None:
    ws = core()
    ws.binary_type = "bytearray"
    with pytest.raises(InvalidArgument, match="binary_type must be one of 'bytes', 'bytearray', 'memoryview'"):
        ws.binary_type = value
    assert ws.binary_type == "bytearray"


def test_binary_keeps_the_same_bytes_object_by_default() -> None:
    payload = b"xyz"
    assert core().binary(payload) is payload


# ---------------------------------------------------------------------------- fan_out
def test_fan_out_queues_one_shared_frame_and_flush_queued_writes_once_each() -> None:
    ts = [Transport() for _ in range(3)]
    socks = [core(t) for t in ts]
    pending: list[Any] = []
    assert fan_out(dict.fromkeys(socks), TEXT, b"hey", False, None, pending) == 3
    assert all(t.writes == 0 for t in ts)  # end of tick, not now
    assert pending == socks
    assert fan_out(dict.fromkeys(socks), BINARY, b"2", False, None, pending) == 1
    assert pending == socks  # each receiver listed once
    flush_queued(pending)
    chunks = []
    for t in ts:
        assert t.writes == 1
        assert t.frames() == [(TEXT, b"hey"), (BINARY, b"2")]
        [(kind, frames)] = t.calls
        assert kind == "writelines"
        chunks.append(frames)
    # The same frame objects, by reference, in every receiver's write.
    assert chunks[0][0] is chunks[1][0] is chunks[2][0]
    assert chunks[0][1] is chunks[1][1] is chunks[2][1]
    flush_queued(pending)
    assert all(t.writes == 1 for t in ts)


def test_fan_out_excludes_the_publisher() -> None:
    t1, t2 = Transport(), Transport()
    a, b = core(t1), core(t2)
    pending: list[Any] = []
    assert fan_out({a: None, b: None}, TEXT, b"hi", False, b, pending) == 2
    assert pending == [a]
    flush_queued(pending)
    assert t1.frames() == [(TEXT, b"hi")]
    assert t2.writes == 0
    assert fan_out({b: None}, TEXT, b"hi", False, b, pending) == 0  # nobody else


def test_fan_out_to_nobody_is_0() -> None:
    pending: list[Any] = []
    assert fan_out({}, TEXT, b"hi", False, None, pending) == 0
    assert pending == []


def test_fan_out_is_minus_1_when_a_receiver_is_buffering() -> None:
    t1, t2 = Transport(), Transport()
    a, b = core(t1), core(t2)
    b.transport_paused()
    pending: list[Any] = []
    assert fan_out({a: None, b: None}, TEXT, b"hi", False, None, pending) == -1
    flush_queued(pending)
    assert t1.frames() == t2.frames() == [(TEXT, b"hi")]


def test_fan_out_is_0_when_any_receiver_is_over_its_limit_but_the_others_get_it() -> None:
    t1, t2, loop = Transport(), Transport(), FakeLoop()
    calls: list[Any] = []
    a = core(t1)
    b = core(t2, limit=5, close_on_limit=True, loop=loop, on_over_limit=lambda ws: calls.append(ws))
    b.transport_paused()
    t2.backlog = 6
    pending: list[Any] = []
    assert fan_out({a: None, b: None}, TEXT, b"hi", False, None, pending) == 0
    assert fan_out({a: None, b: None}, TEXT, b"ho", False, None, pending) == 0
    loop.run()
    assert calls == [b]
    flush_queued(pending)
    assert t1.frames() == [(TEXT, b"hi"), (TEXT, b"ho")]
    assert t2.writes == 0


def test_published_frames_keep_call_order_with_a_corked_receivers_own_frames() -> None:
    t = Transport()
    ws = core(t)
    pending: list[Any] = []

    def body(sock: WebSocketCore) -> None:
        sock.send("own 1")
        fan_out({sock: None}, TEXT, b"published", False, None, pending)
        sock.send("own 2")

    ws.cork(body)
    assert pending == []  # the cork's end writes it, not the end of the tick
    assert t.writes == 1
    assert t.frames() == [(TEXT, b"own 1"), (TEXT, b"published"), (TEXT, b"own 2")]


def test_a_direct_send_writes_published_frames_queued_before_it_first() -> None:
    t = Transport()
    ws = core(t)
    pending: list[Any] = []
    fan_out({ws: None}, TEXT, b"first", False, None, pending)
    ws.send("second")
    flush_queued(pending)
    assert t.frames() == [(TEXT, b"first"), (TEXT, b"second")]
    assert t.writes == 1


def test_published_bytes_count_against_the_limit_until_written() -> None:
    t = Transport()
    ws = core(t, limit=10)
    pending: list[Any] = []
    assert fan_out({ws: None}, BINARY, b"x" * 20, False, None, pending) == 20
    assert ws.buffered_amount == 22
    assert ws.send(b"y") == 0  # 22 queued bytes > 10
    assert fan_out({ws: None}, BINARY, b"z", False, None, pending) == 0
    flush_queued(pending)
    assert t.frames() == [(BINARY, b"x" * 20)]


class Deflater:
    """Stands in for a permessage-deflate compressor: counts its calls."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.calls = 0

    def compress(self, payload: bytes) -> bytes:
        self.calls += 1
        return self.tag + payload


def test_fan_out_compresses_once_per_shared_deflater_and_per_socket_otherwise() -> None:
    shared, own = Deflater(b"S:"), Deflater(b"O:")
    ts = [Transport() for _ in range(4)]
    a = core(ts[0], deflater=shared, shared_deflate=True)
    b = core(ts[1], deflater=shared, shared_deflate=True)
    c = core(ts[2], deflater=own, shared_deflate=False)
    d = core(ts[3])  # no deflate negotiated
    pending: list[Any] = []
    assert fan_out(dict.fromkeys([a, b, c, d]), TEXT, b"msg", True, None, pending) == 3
    assert fan_out(dict.fromkeys([a, b]), TEXT, b"", True, None, pending) == 0  # empty: not compressed
    flush_queued(pending)
    assert shared.calls == 1 and own.calls == 1
    assert decode(ts[0].wire()) == decode(ts[1].wire()) == [(TEXT, True, b"S:msg"), (TEXT, False, b"")]
    assert decode(ts[2].wire()) == [(TEXT, True, b"O:msg")]
    assert decode(ts[3].wire()) == [(TEXT, False, b"msg")]
    assert ts[0].calls[0][1][0] is ts[1].calls[0][1][0]  # one compressed frame, shared


def test_send_compresses_data_frames_only() -> None:
    deflater = Deflater(b"Z")
    t = Transport()
    ws = core(t, deflater=deflater)
    assert ws.send("abc", compress=True) == 3  # the status is the uncompressed size
    assert ws.send(b"", compress=True) == 0
    assert ws.send("plain") == 5
    assert ws.ping(b"p") == 1
    assert decode(t.wire()) == [
        (TEXT, True, b"Zabc"), (BINARY, False, b""), (TEXT, False, b"plain"), (PING, False, b"p"),
    ]
    assert deflater.calls == 1
    assert ws.deflater is deflater


def test_flush_queued_skips_a_receiver_closed_meanwhile() -> None:
    t1, t2 = Transport(), Transport()
    a, b = core(t1), core(t2)
    pending: list[Any] = []
    fan_out({a: None, b: None}, TEXT, b"x", False, None, pending)
    b.mark_closed()
    fan_out({a: None, b: None}, TEXT, b"y", False, None, pending)  # b still registered
    flush_queued(pending)
    assert t1.writes == 1 and t2.writes == 0


# ---------------------------------------------------------------------------- dispatch
class Session:
    """Records what dispatch() calls, in order."""

    def __init__(self, message: Any = "record", async_message: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        if message == "record":
            message = self.record_message
        self.message = message
        self.async_message = async_message

    def record_message(self, ws: Any, payload: Any) -> None:
        self.calls.append(("message", payload))

    def hold(self, events: list[Any]) -> None:
        self.calls.append(("hold", list(events)))

    def on_ping(self, payload: bytes) -> None:
        self.calls.append(("ping", payload))

    def on_pong(self, payload: bytes) -> None:
        self.calls.append(("pong", payload))

    def on_close(self, code: int, reason: str) -> None:
        self.calls.append(("close", code, reason))

    def on_protocol_error(self, code: int, reason: str) -> None:
        self.calls.append(("protocol_error", code, reason))

    def handler_error(self, exc: Exception) -> None:
        self.calls.append(("error", exc))

    def spawn(self, coro: Any) -> None:
        self.calls.append(("spawn", coro))


def test_dispatch_delivers_messages_and_controls_in_order() -> None:
    ws, s = core(), Session()
    dispatch(ws, [TEXT, "a", BINARY, b"b", PING, b"p", PONG, b"q", TEXT, "c"], s)
    assert s.calls == [("message", "a"), ("message", b"b"), ("ping", b"p"), ("pong", b"q"), ("message", "c")]


def test_dispatch_stops_at_close() -> None:
    ws, s = core(), Session()
    dispatch(ws, [TEXT, "a", CLOSE, (1000, "bye"), TEXT, "never"], s)
    assert s.calls == [("message", "a"), ("close", 1000, "bye")]


def test_dispatch_stops_at_a_protocol_error_event() -> None:
    ws, s = core(), Session()
    dispatch(ws, [TEXT, "a", PROTOCOL_ERROR, (1007, "bad utf-8"), TEXT, "never"], s)
    assert s.calls == [("message", "a"), ("protocol_error", 1007, "bad utf-8")]


def test_dispatch_routes_a_message_exception_and_goes_on() -> None:
    ws = core()
    seen: list[Any] = []

    def message(sock: Any, payload: Any) -> None:
        seen.append(payload)
        if payload == "bad":
            raise ValueError("handler bug")

    s = Session(message)
    dispatch(ws, [TEXT, "bad", TEXT, "good"], s)
    assert seen == ["bad", "good"]
    [(kind, exc)] = s.calls
    assert kind == "error" and isinstance(exc, ValueError)


def test_dispatch_spawns_what_an_async_message_handler_returns() -> None:
    ws = core()
    token = object()
    s = Session(lambda sock, payload: token if payload == "a" else None, async_message=True)
    dispatch(ws, [TEXT, "a", TEXT, "b"], s)
    assert s.calls == [("spawn", token)]  # a None result is not spawned
    s2 = Session(lambda sock, payload: token, async_message=False)
    dispatch(ws, [TEXT, "a"], s2)
    assert s2.calls == []


def test_dispatch_without_message_handler_still_answers_controls() -> None:
    ws, s = core(), Session(message=None)
    dispatch(ws, [TEXT, "a", PING, b"p", BINARY, b"b"], s)
    assert s.calls == [("ping", b"p")]


def test_dispatch_hands_binary_messages_over_as_binary_type() -> None:
    ws, s = core(), Session()
    ws.binary_type = "arraybuffer"
    dispatch(ws, [BINARY, b"ab", TEXT, "t", PING, b"p"], s)
    [(_, payload), (_, text), ping] = s.calls
    assert type(payload) is bytearray and payload == b"ab"
    assert text == "t"
    assert ping == ("ping", b"p")  # the session converts control payloads itself


def test_dispatch_holds_everything_when_paused_before() -> None:
    ws, s = core(), Session()
    ws.hold_inbound(True)
    assert ws.is_paused
    events = [TEXT, "a", PING, b"p"]
    dispatch(ws, events, s)
    assert s.calls == [("hold", events)]


def test_dispatch_holds_the_rest_when_a_handler_pauses() -> None:
    ws = core()
    calls: list[Any] = []

    def message(sock: WebSocketCore, payload: Any) -> None:
        calls.append(payload)
        if payload == "pause":
            sock.hold_inbound(True)

    s = Session(message)
    dispatch(ws, [TEXT, "a", TEXT, "pause", TEXT, "b", PING, b"p"], s)
    assert calls == ["a", "pause"]
    assert s.calls == [("hold", [TEXT, "b", PING, b"p"])]


def test_dispatch_stops_when_a_handler_closes_the_socket() -> None:
    ws = core()
    seen: list[Any] = []

    def message(sock: WebSocketCore, payload: Any) -> None:
        seen.append(payload)
        sock.mark_closed()

    s = Session(message)
    dispatch(ws, [TEXT, "a", TEXT, "b", PING, b"p"], s)
    assert seen == ["a"]
    assert s.calls == []


def test_dispatch_sends_all_answers_of_one_batch_in_one_write() -> None:
    t = Transport()
    ws = core(t)
    writes_during: list[int] = []

    def echo(sock: WebSocketCore, payload: Any) -> None:
        sock.send(payload)
        writes_during.append(t.writes)

    dispatch(ws, [TEXT, "1", TEXT, "2", BINARY, b"3"], Session(echo))
    assert writes_during == [0, 0, 0]
    assert t.writes == 1
    assert t.frames() == [(TEXT, b"1"), (TEXT, b"2"), (BINARY, b"3")]


def test_dispatch_flushes_even_when_a_session_method_raises() -> None:
    t = Transport()
    ws = core(t)

    class Broken(Session):
        def on_ping(self, payload: bytes) -> None:
            raise RuntimeError("session bug")

    with pytest.raises(RuntimeError):
        dispatch(ws, [TEXT, "x", PING, b""], Broken(lambda sock, p: sock.send(p)))
    assert t.frames() == [(TEXT, b"x")]
    assert ws.send("next") == 4  # the cork depth went back to 0
    assert t.writes == 2


# ---------------------------------------------------------------------------- helpers of the module
def test_as_bytes_and_encode_text() -> None:
    data = b"abc"
    assert as_bytes(data, "x") is data
    assert as_bytes(bytearray(b"ab"), "x") == b"ab" and type(as_bytes(bytearray(b"ab"), "x")) is bytes
    assert as_bytes(memoryview(b"ab"), "x") == b"ab"
    with pytest.raises(InvalidType, match="publish_binary expects bytes-like data, got str"):
        as_bytes("s", "publish_binary")
    assert encode_text("é") == b"\xc3\xa9"
    with pytest.raises(InvalidArgument, match="publish expects text that is valid Unicode"):
        encode_text("a\udc00", "publish")
    with pytest.raises(ValueError):  # InvalidArgument is a ValueError for ordinary handlers
        encode_text("\ud800")
