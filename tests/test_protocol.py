"""``bunws.protocol.Connection`` on a stub transport: the HTTP life of a connection
(partial reads, pipelining in order, refusals, bounds, half-close, timeouts) and the
hand-over to a ``WebSocketSession`` at the upgrade.

The stub follows asyncio's transport rules that matter here: ``write()`` after
``write_eof()`` raises, a closing transport delivers ``connection_lost`` once its
buffer is empty (at once after ``abort()``), ``pause_writing``/``resume_writing`` are
called at the water marks, and nothing is read while reading is paused. The client's
side is the test: it decides when the transport's buffer drains.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import wire
from rawclient import RawClient

import bunws
from bunws._frame import FrameParser
from bunws.protocol import Connection, Phase

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
HIGH = 64 * 1024  # asyncio's default write-buffer water marks
LOW = HIGH // 4

_transports: list[StubTransport] = []


@pytest.fixture(autouse=True)
def no_transport_misuse() -> Iterator[None]:
    """Every test: no write reached a transport after close()/abort()."""
    _transports.clear()
    yield
    for t in _transports:
        assert t.late_writes == [], f"written after close/abort: {t.late_writes!r}"


class StubTransport:
    def __init__(self, protocol: Any, *, client_reads: bool = True, tells_pause: bool = True,
                 can_eof: bool = True) -> None:
        self.protocol = protocol
        self.loop = asyncio.get_running_loop()
        self.sent = bytearray()  # what the client has received
        self.written = bytearray()  # everything ever accepted by write()
        self.buffer = bytearray()  # unsent bytes in the transport
        self.client_reads = client_reads
        self.tells_pause = tells_pause
        self.can_eof = can_eof
        self.high, self.low = HIGH, LOW
        self.protocol_paused = False
        self.reading = True
        self.reading_calls: list[str] = []
        self.limit_calls: list[tuple[Any, Any]] = []
        self.closing = self.aborted = self.eof = self.lost = False
        self.late_writes: list[bytes] = []
        _transports.append(self)

    # what the protocol calls
    def write(self, data: Any) -> None:
        if self.eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self.closing:
            self.late_writes.append(bytes(data))
            return
        if not data:
            return
        self.written += data
        if self.client_reads and not self.buffer:
            self.sent += data
        else:
            self.buffer += data
            self._maybe_pause()

    def writelines(self, chunks: list[Any]) -> None:
        self.write(b"".join(chunks))

    def get_write_buffer_size(self) -> int:
        return len(self.buffer)

    def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None:
        self.limit_calls.append((high, low))
        if high is None:
            high = HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        self.high, self.low = high, low
        self._maybe_pause()

    def _maybe_pause(self) -> None:
        if self.tells_pause and len(self.buffer) > self.high and not self.protocol_paused:
            self.protocol_paused = True
            self.protocol.pause_writing()

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if not self.buffer:
            self.loop.call_soon(self._lose)

    def abort(self) -> None:
        self.closing = self.aborted = True
        self.buffer.clear()
        self.loop.call_soon(self._lose)

    def can_write_eof(self) -> bool:
        return self.can_eof

    def write_eof(self) -> None:
        if self.closing or self.eof:
            return
        self.eof = True

    def pause_reading(self) -> None:
        self.reading_calls.append("pause")
        self.reading = False

    def resume_reading(self) -> None:
        self.reading_calls.append("resume")
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def get_protocol(self) -> Any:
        return self.protocol

    # what the test (the client's side) does
    def drain(self) -> None:
        """The client reads everything that is waiting."""
        self.sent += self.buffer
        self.buffer.clear()
        if self.protocol_paused and len(self.buffer) <= self.low:
            self.protocol_paused = False
            self.protocol.resume_writing()
        if self.closing and not self.lost:
            self.loop.call_soon(self._lose)

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connection_lost(None)


def make_server(fetch: Any = None, websocket: Any = None, **options: Any) -> bunws.Server:
    """A Server that is not listening: its connections here are driven by hand."""
    settings: dict[str, Any] = dict(
        hostname="127.0.0.1", port=0, ssl=None, reuse_port=False, backlog=16,
        handshake_timeout=10.0, close_timeout=10.0, max_head_size=16 * 1024,
        max_headers=100, max_body_size=1024 * 1024, max_connections=None,
        max_pending_handshakes=1024, allowed_origins=None,
    )
    settings.update(options)
    return bunws.Server(fetch or (lambda req, server: bunws.Response("ok")), websocket, **settings)


def connect(server: bunws.Server, **transport_options: Any) -> tuple[Connection, StubTransport]:
    conn = Connection(server)
    t = StubTransport(conn, **transport_options)
    conn.connection_made(t)
    return conn, t


def feed(conn: Connection, data: bytes) -> None:
    """As asyncio's BufferedProtocol reading: copy into get_buffer(), then buffer_updated()."""
    view = memoryview(data)
    while view:
        buf = conn.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        conn.buffer_updated(n)
        view = view[n:]


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: h\r\n{extra}\r\n".encode()


def responses(data: bytes) -> tuple[list[tuple[int, dict[str, str], bytes]], bytes]:
    """HTTP responses in ``data``; after a 101 the rest is returned as frames."""
    out = []
    data = bytes(data)
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"partial response head {data[:80]!r}"
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(lines[0].split()[1])
        if status == 101:
            out.append((status, headers, b""))
            return out, rest
        length = int(headers.get("content-length", "0"))
        assert len(rest) >= length, "partial body"
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out, b""


def statuses(t: StubTransport) -> list[int]:
    return [status for status, _, _ in responses(t.sent)[0]]


def bodies(t: StubTransport) -> list[bytes]:
    return [body for _, _, body in responses(t.sent)[0]]


def server_frames(data: bytes) -> list[tuple[int, Any]]:
    """Decoded server frames (text as str), up to a Close."""
    parser = FrameParser(server=False)
    return [(int(op), payload) for op, payload in parser.feed(data)]


def raw_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Every server frame as (opcode, payload bytes), past a Close too."""
    out, pos = [], 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80, "server frames are never masked"
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            n, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif n == 127:
            n, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        assert pos + n <= len(data), "partial frame"
        out.append((b0 & 0x0F, bytes(data[pos : pos + n])))
        pos += n
    return out


async def spin(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def live(server: bunws.Server) -> int:
    """Connections the server still counts (admitted and not released)."""
    return len(server._connections)


# ------------------------------------------------------------------------ partial reads
async def test_request_head_fed_byte_by_byte_is_answered_once_at_its_end() -> None:
    seen: list[str] = []

    def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        seen.append(f"{req.method} {req.path} {req.headers.get('x-a')}")
        return bunws.Response("hi")

    server = make_server(fetch)
    conn, t = connect(server)
    raw = get("/a", "X-A: 1\r\n")
    for i in range(len(raw) - 1):
        feed(conn, raw[i : i + 1])
        assert t.sent == b"", f"answered before the head ended (byte {i})"
    feed(conn, raw[-1:])
    assert seen == ["GET /a 1"]
    assert statuses(t) == [200] and bodies(t) == [b"hi"]
    assert not t.closing  # keep-alive


async def test_body_split_over_reads_is_reassembled() -> None:
    bodies_seen: list[bytes] = []

    async def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        bodies_seen.append(await req.body())
        return bunws.Response("ok")

    server = make_server(fetch)
    conn, t = connect(server)
    raw = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789"
    for i in range(0, len(raw), 7):
        feed(conn, raw[i : i + 7])
    await spin()
    assert bodies_seen == [b"0123456789"]
    assert statuses(t) == [200]


# ------------------------------------------------------------------------ pipelining
async def test_pipelined_requests_are_answered_in_order_with_sync_and_async_fetch() -> None:
    gates = {"/1": asyncio.Event(), "/3": asyncio.Event()}
    calls: list[str] = []

    def fetch(req: bunws.Request, server: bunws.Server) -> Any:
        calls.append(req.path)
        if req.path in gates:
            async def later() -> bunws.Response:
                await gates[req.path].wait()
                return bunws.Response(req.path)
            return later()
        return bunws.Response(req.path)

    server = make_server(fetch)
    conn, t = connect(server)
    feed(conn, get("/1") + get("/2") + get("/3") + get("/4"))
    await spin()
    assert calls == ["/1"]  # one fetch at a time
    assert t.sent == b""
    gates["/3"].set()  # finishing out of order changes nothing
    await spin()
    assert calls == ["/1"]
    gates["/1"].set()
    await spin(10)
    assert calls == ["/1", "/2", "/3", "/4"]
    assert bodies(t) == [b"/1", b"/2", b"/3", b"/4"]
    assert not t.closing


@pytest.mark.parametrize(
    ("bad", "status", "options"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400, {}),  # no Host
        (b"NOT-HTTP\r\n\r\n", 400, {}),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n", 413, {"max_body_size": 1000}),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"v" * 600 + b"\r\n\r\n", 431, {"max_head_size": 300}),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: 1\r\n" * 10 + b"\r\n", 431, {"max_headers": 5}),
    ],
)
async def test_refusal_waits_for_the_slow_answer_before_it(bad: bytes, status: int, options: dict) -> None:
    gate = asyncio.Event()
    calls: list[str] = []

    async def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        calls.append(req.path)
        await gate.wait()
        return bunws.Response("slow")

    server = make_server(fetch, **options)
    conn, t = connect(server)
    feed(conn, get("/slow") + bad + get("/never"))
    await spin()
    assert t.sent == b"" and not t.closing  # the refusal does not overtake
    gate.set()
    await spin()
    got = responses(t.sent)[0]
    assert [s for s, _, _ in got] == [200, status]
    assert got[1][1]["connection"] == "close"
    assert calls == ["/slow"]  # nothing after the refused request is read
    assert t.closing


# ------------------------------------------------------------------------ bounds
async def test_a_full_queue_pauses_reading_and_everything_is_answered_after() -> None:
    gate = asyncio.Event()
    calls: list[str] = []

    def fetch(req: bunws.Request, server: bunws.Server) -> Any:
        calls.append(req.path)
        if req.path == "/0":
            async def slow() -> bunws.Response:
                await gate.wait()
                return bunws.Response("0")
            return slow()
        return bunws.Response(req.path[1:])

    server = make_server(fetch)
    conn, t = connect(server)
    # One read of ~28 KB, as a 256 KiB recv may bring: the queue is looked at between
    # parse slices, so the rest waits unparsed.
    feed(conn, b"".join(get(f"/{i}") for i in range(1000)))
    await spin()
    assert calls == ["/0"]
    assert not t.reading, "a client pipelining behind a busy fetch must stop being read"
    feed(conn, get("/1000"))  # a read that was already under way is kept, not lost
    gate.set()
    await spin(10)
    assert bodies(t) == [str(i).encode() for i in range(1001)]
    assert t.reading and t.reading_calls[-1] == "resume"


async def test_queued_request_bodies_are_bounded_too() -> None:
    gate = asyncio.Event()

    async def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        if req.path == "/0":
            await gate.wait()
        return bunws.Response(await req.body())

    server = make_server(fetch, max_body_size=1000)
    conn, t = connect(server)
    posts = [
        f"POST /{i} HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n".encode() + bytes([65 + i]) * 1000
        for i in range(10)
    ]
    feed(conn, b"".join(posts))  # ten requests, far fewer than the count bound
    await spin()
    assert not t.reading, "queued bodies beyond max_body_size must stop the reading"
    gate.set()
    await spin(40)
    assert bodies(t) == [bytes([65 + i]) * 1000 for i in range(10)]
    assert t.reading


async def test_a_short_pipeline_behind_a_busy_fetch_keeps_reading() -> None:
    gate = asyncio.Event()

    def fetch(req: bunws.Request, server: bunws.Server) -> Any:
        if req.path == "/0":
            async def slow() -> bunws.Response:
                await gate.wait()
                return bunws.Response("0")
            return slow()
        return bunws.Response("x")

    server = make_server(fetch)
    conn, t = connect(server)
    feed(conn, get("/0") + get("/1") + get("/2"))
    await spin()
    assert t.reading_calls == []
    gate.set()
    await spin()
    assert statuses(t) == [200, 200, 200]


@pytest.mark.parametrize("tells_pause", [True, False])
async def test_answers_stop_while_the_client_does_not_read_them(tells_pause: bool) -> None:
    big = b"x" * (100 * 1024)
    calls: list[str] = []

    def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        calls.append(req.path)
        return bunws.Response(big)

    server = make_server(fetch)
    conn, t = connect(server, client_reads=False, tells_pause=tells_pause)
    feed(conn, get("/1") + get("/2") + get("/3"))
    assert calls == ["/1"], "answering must stop while the first answer is unread"
    assert not t.reading
    for expected in (["/1", "/2"], ["/1", "/2", "/3"]):
        t.drain()
        if not tells_pause:
            assert calls == expected[:-1]  # nobody told it: the timer tick asks
            conn.check_timers(server.clock())
        assert calls == expected
    t.drain()
    conn.check_timers(server.clock())
    assert bodies(t) == [big, big, big]
    assert t.reading


# ------------------------------------------------------------------------ half-close
async def test_half_close_still_gets_the_answers_it_is_owed_then_closes() -> None:
    gate = asyncio.Event()

    async def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        await gate.wait()
        return bunws.Response(req.path)

    server = make_server(fetch)
    conn, t = connect(server)
    feed(conn, get("/a") + get("/b"))
    assert conn.eof_received() is True  # keep the write side open
    await spin()
    assert not t.closing
    gate.set()
    await spin(10)
    assert bodies(t) == [b"/a", b"/b"]
    assert t.closing and t.lost
    assert server.pending_requests == 0 and live(server) == 0


async def test_half_close_of_an_idle_connection_lets_the_transport_close() -> None:
    server = make_server()
    conn, t = connect(server)
    feed(conn, get("/a"))
    assert statuses(t) == [200]
    assert not conn.eof_received()


# ------------------------------------------------------------------------ handshake timeout
async def test_idle_connection_is_closed_at_the_handshake_timeout_not_before() -> None:
    server = make_server(handshake_timeout=5.0)
    before = server.clock()
    conn, t = connect(server)
    feed(conn, b"GET / HTTP/1.1\r\nHo")  # slowloris: a head that never ends
    after = server.clock()
    conn.check_timers(before + 4.9)
    assert not t.closing
    conn.check_timers(after + 5.0)
    assert t.closing and not t.aborted  # nothing is owed: a plain close
    await spin()
    assert t.lost and live(server) == 0


async def test_keep_alive_connection_times_out_counting_from_its_last_answer() -> None:
    server = make_server(handshake_timeout=0.1)
    conn, t = connect(server)
    await asyncio.sleep(0.15)  # past the deadline set at connection_made
    answered = server.clock()
    feed(conn, get("/"))
    conn.check_timers(answered + 0.05)
    assert not t.closing, "each answer restarts the wait for the next request"
    conn.check_timers(server.clock() + 0.1)
    assert t.closing and not t.aborted


async def test_unread_answers_at_the_handshake_timeout_abort_the_connection() -> None:
    server = make_server(handshake_timeout=5.0)
    conn, t = connect(server, client_reads=False)
    feed(conn, get("/"))
    assert t.get_write_buffer_size() > 0
    conn.check_timers(server.clock() + 5.0)
    assert t.aborted  # a plain close would wait for a reader forever
    await spin()
    assert t.lost and live(server) == 0


async def test_a_running_fetch_is_not_timed_out_by_the_server() -> None:
    gate = asyncio.Event()

    async def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        await gate.wait()
        return bunws.Response("late")

    server = make_server(fetch, handshake_timeout=5.0)
    conn, t = connect(server)
    feed(conn, get("/"))
    await spin()
    conn.check_timers(server.clock() + 60)
    assert not t.closing
    gate.set()
    await spin()
    assert bodies(t) == [b"late"]


async def test_an_upgrade_fetch_that_never_decides_is_aborted_one_timeout_later() -> None:
    never = asyncio.Event()

    async def fetch(req: bunws.Request, server: bunws.Server) -> None:
        await never.wait()

    server = make_server(fetch, bunws.WebSocketHandler(), handshake_timeout=5.0)
    before = server.clock()
    conn, t = connect(server)
    feed(conn, RawClient.handshake_request("/", key=KEY) + wire.client(wire.TEXT, "held"))
    await spin()
    conn.check_timers(before + 9.9)
    assert not t.closing  # fetch is the application's to bound, for one more timeout
    conn.check_timers(server.clock() + 10.0)
    assert t.aborted  # the client's early frames are not kept forever
    never.set()
    await spin()


async def test_no_fetch_runs_for_requests_queued_behind_an_aborted_connection() -> None:
    """fuzz_http_pipeline's finding C: once a timeout aborted the connection, the slow
    fetch ahead finishing in the same loop iteration must not start the next ones."""
    release = asyncio.Event()
    seen: list[str] = []

    async def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        seen.append(req.path)
        if req.path == "/slow":
            await release.wait()
        return bunws.Response("done")

    server = make_server(fetch, bunws.WebSocketHandler(), handshake_timeout=5.0)
    conn, t = connect(server)
    feed(conn, get("/slow") + get("/charge") + RawClient.handshake_request("/ws", key=KEY))
    await spin()
    release.set()  # /slow's fetch ends in the next iteration ...
    conn.check_timers(server.clock() + 11.0)  # ... right after this abort
    await spin()
    assert t.aborted
    assert seen == ["/slow"]


# ------------------------------------------------------------------------ upgrade
class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def handler(self, **options: Any) -> bunws.WebSocketHandler:
        def open_(ws: bunws.ServerWebSocket) -> None:
            self.events.append("open")
            ws.subscribe("room")
            ws.send("hello")

        def message(ws: bunws.ServerWebSocket, msg: Any) -> None:
            self.events.append(msg)
            ws.send(msg)

        def close(ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
            self.events.append(("close", code, reason))

        return bunws.WebSocketHandler(open=open_, message=message, close=close, **options)


def upgrade_fetch(req: bunws.Request, server: bunws.Server) -> Any:
    if server.upgrade(req, data=req.path):
        return None
    return bunws.Response("no", status=400)


async def test_upgrade_hands_the_frames_that_came_with_the_handshake_to_the_session() -> None:
    rec = Recorder()
    server = make_server(upgrade_fetch, rec.handler())
    conn, t = connect(server)
    assert server.pending_requests == 1
    feed(conn, RawClient.handshake_request("/ws", key=KEY) + wire.client(wire.TEXT, "a") + wire.client(wire.TEXT, "b"))
    await spin()
    got, rest = responses(t.sent)
    assert [s for s, _, _ in got] == [101]
    assert got[0][1]["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert server_frames(rest) == [(1, "hello"), (1, "a"), (1, "b")]
    assert rec.events == ["open", "a", "b"]
    assert conn.phase is Phase.WEBSOCKET
    assert conn.session is not None and conn.session.ws.data == "/ws"
    assert (0, 0) in t.limit_calls  # high-water mark 0: resume_writing means "empty"
    assert server.pending_requests == 0 and server.pending_websockets == 1
    assert server.subscriber_count("room") == 1


async def test_handshake_and_frames_fed_byte_by_byte() -> None:
    rec = Recorder()
    server = make_server(upgrade_fetch, rec.handler())
    conn, t = connect(server)
    raw = RawClient.handshake_request("/ws", key=KEY) + wire.client(wire.TEXT, "a") + wire.client(wire.TEXT, "b")
    for i in range(len(raw)):
        feed(conn, raw[i : i + 1])
        await asyncio.sleep(0)
    got, rest = responses(t.sent)
    assert [s for s, _, _ in got] == [101]
    assert server_frames(rest) == [(1, "hello"), (1, "a"), (1, "b")]
    assert rec.events == ["open", "a", "b"]


async def test_frames_with_the_handshake_go_before_later_reads_while_fetch_awaits() -> None:
    rec = Recorder()
    upgraded = asyncio.Event()
    gate = asyncio.Event()

    async def fetch(req: bunws.Request, server: bunws.Server) -> None:
        await asyncio.sleep(0)
        assert server.upgrade(req)
        upgraded.set()
        await gate.wait()  # fetch goes on awaiting after upgrade()
        return None

    server = make_server(fetch, rec.handler())
    conn, t = connect(server)
    feed(conn, RawClient.handshake_request("/", key=KEY) + wire.client(wire.TEXT, "early"))
    await upgraded.wait()
    feed(conn, wire.client(wire.TEXT, "later"))
    await spin()
    assert rec.events == ["open", "early", "later"]
    gate.set()
    await spin()
    assert server_frames(responses(t.sent)[1]) == [(1, "hello"), (1, "early"), (1, "later")]


async def test_bytes_after_an_upgrade_head_pause_reading_while_fetch_decides() -> None:
    rec = Recorder()
    gate = asyncio.Event()

    async def fetch(req: bunws.Request, server: bunws.Server) -> None:
        await gate.wait()
        server.upgrade(req)

    server = make_server(fetch, rec.handler())
    conn, t = connect(server)
    frames = [wire.client(wire.BINARY, bytes([i % 256]) * 1000) for i in range(300)]
    feed(conn, RawClient.handshake_request("/", key=KEY) + b"".join(frames))
    await spin()
    assert not t.reading, "300 KB held for an undecided upgrade must stop the reading"
    gate.set()
    await spin()
    assert t.reading
    assert rec.events[1:] == [bytes([i % 256]) * 1000 for i in range(300)]


async def test_declined_upgrade_answers_fetch_and_closes_without_parsing_the_rest() -> None:
    calls: list[str] = []

    def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        calls.append(req.path)
        return bunws.Response("no upgrade here", status=400)

    server = make_server(fetch, bunws.WebSocketHandler())
    conn, t = connect(server)
    feed(conn, RawClient.handshake_request("/ws", key=KEY) + get("/smuggled"))
    await spin()
    assert calls == ["/ws"]
    assert statuses(t) == [400]
    assert t.closing


async def test_client_eof_after_the_handshake_frames_dispatches_them_then_closes() -> None:
    rec = Recorder()
    gate = asyncio.Event()

    async def fetch(req: bunws.Request, server: bunws.Server) -> None:
        await gate.wait()
        server.upgrade(req)

    server = make_server(fetch, rec.handler())
    conn, t = connect(server)
    feed(conn, RawClient.handshake_request("/", key=KEY) + wire.client(wire.TEXT, "last words"))
    assert conn.eof_received() is True
    gate.set()
    await spin()
    assert rec.events[:2] == ["open", "last words"]
    assert t.closing
    await spin()
    assert rec.events[-1] == ("close", 1006, "")
    assert server.pending_websockets == 0 and live(server) == 0


# ------------------------------------------------------------------------ connection_lost
async def test_connection_lost_in_http_phase_is_idempotent() -> None:
    server = make_server()
    conn, t = connect(server)
    assert server.pending_requests == 1 and live(server) == 1
    conn.connection_lost(ConnectionResetError())
    conn.connection_lost(None)
    assert server.pending_requests == 0 and live(server) == 0
    assert conn.phase is Phase.CLOSED
    feed(conn, get("/"))  # a late read does nothing
    assert t.sent == b""


async def test_connection_lost_after_upgrade_runs_close_once_and_zeroes_the_books() -> None:
    rec = Recorder()
    server = make_server(upgrade_fetch, rec.handler())
    conn, t = connect(server)
    feed(conn, RawClient.handshake_request("/", key=KEY))
    ws = conn.session.ws
    conn.connection_lost(None)
    conn.connection_lost(None)
    assert rec.events == ["open", ("close", 1006, "")]
    assert server.pending_websockets == 0 and server.pending_requests == 0 and live(server) == 0
    assert server.subscriber_count("room") == 0
    assert ws.ready_state == 3 and ws.send("x") == 0
    assert conn.session is None  # the cycle is broken


async def test_fetch_finishing_after_the_connection_is_gone_writes_nothing() -> None:
    gate = asyncio.Event()
    results: list[bool] = []

    async def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response:
        await gate.wait()
        results.append(server.upgrade(req))
        return bunws.Response("too late")

    server = make_server(fetch, bunws.WebSocketHandler())
    conn, t = connect(server)
    feed(conn, RawClient.handshake_request("/", key=KEY))
    await spin()
    t.abort()
    await spin()
    assert t.lost and live(server) == 0
    gate.set()
    await spin()
    assert results == [False]
    assert t.sent == b""
    assert server.pending_websockets == 0 and server.pending_requests == 0
