"""Fuzz target: the HTTP/1.1 front's pipelining and upgrade state machine, checked against a model.

    python fuzz/fuzz_http_pipeline.py CORPUS_DIR -max_total_time=60     # atheris
    python fuzz/fuzz_http_pipeline.py --replay crash-FILE               # re-run one input
    python fuzz/fuzz_http_pipeline.py --describe crash-FILE             # print the plan, then run it

One real ``bunws.protocol.Connection`` per input on a stub transport that behaves as
asyncio's selector transport does: reads only while reading is not paused (through
``get_buffer``/``buffer_updated``, into the server's one shared receive buffer, which
is scribbled over after every read), a write buffer that the *client* drains at
chosen moments, ``pause_writing``/``resume_writing`` at the water marks,
``close``/``abort``/``write_eof`` and ``connection_lost`` once the buffer is empty.

The input chooses, in this order:
  * the server (defaults, or tight limits: 1 KiB head, 20 headers, 2000-byte bodies)
    and the transport's water marks (asyncio's 64/16 KiB, 4/1 KiB, or never pausing);
  * a sequence of requests, each carrying its index in the path: GET/HEAD (keep-alive,
    ``Connection: close``, HTTP/1.0), POSTs with Content-Length or chunked bodies,
    ``Expect: 100-continue`` (the client may hold the body until it reads the 100),
    malformed requests (400), over-long heads or too many headers (431), oversized
    bodies (413), bursts of up to 257 small GETs, and last maybe an Upgrade request
    followed by text frames ``m0, m1, ...`` (some 100 KiB, to reach the hold limit)
    and maybe a Close;
  * per request how ``fetch`` answers: sync, async after k loop iterations, raising
    (sync/async), and for an upgrade: upgrade at once, await then upgrade, upgrade
    then go on awaiting, or decline (sync/async); and the answer's size;
  * a list of steps: deliver a read of a chosen size, run loop iterations, let the
    client read (drain) some or all of its answers, the server tick
    (``check_timers`` at the loop's time), the clock passing the handshake
    timeout (``check_timers`` with a fake later ``now``), half-close (EOF), and one
    more read right after reading paused (a read under way, which ``_http_data``
    keeps in ``_unparsed``).
After the steps the client sends what is left, reads everything, maybe half-closes,
then time passes every deadline.

Oracles (a failure is a finding; see fuzz/README.md):
  * order: the N-th final answer answers the N-th request (status, ``X-Index`` and
    body ``"N|pad..."``, or no body for HEAD), the server's own refusal (400/413/431)
    or 500 exactly where the model puts the first request that ends the connection
    and nothing after it, ``Connection: close`` exactly on that last answer, a
    ``100 Continue`` only right before the answer of an ``Expect`` request and at most
    once; ``fetch`` runs once per answered request, in order, with the body sent;
  * after a ``101`` the messages arrive exactly as sent (so the frames that came with
    the handshake go before any later frame), valid server frames only;
  * bounds, after every step: ``len(_queue) <= MAX_QUEUED_REQUESTS + PARSE_SLICE //
    smallest request + 1``; ``_unparsed`` <= two reads, ``_early_bytes`` <= ``HOLD_LIMIT``
    + two reads; the write buffer <= ``HTTP_WRITE_LIMIT`` + the largest write + one
    ``100 Continue`` in the HTTP phase; reading paused while ``_unparsed`` or a full
    ``_early_bytes`` waits; ``pending_requests``/``pending_websockets`` match the phase;
  * liveness: once the client has sent and read everything, the server has read
    everything too (or closed), and a client holding its body for a ``100 Continue``
    got it; after time passes ``connection_lost`` has run and ``_connections``,
    ``pending_requests``, ``pending_websockets``, tasks and topics are back to zero;
    no write after ``abort()``/``write_eof()``; no exception reaches the loop.
If a step passed a deadline, answers and messages need only be a prefix of the model's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fuzzlib import (  # noqa: E402
    Reader,
    parse_http_output,
    parse_server_frames,
    run,
    split_http_responses,
    whole_frames_prefix,
)

if __name__ == "__main__" and sys.argv[1:2] not in (["--replay"], ["--describe"]):  # replays need no atheris
    import atheris

    with atheris.instrument_imports(include=["bunws"]):
        import bunws  # noqa: F401
        import bunws.protocol  # noqa: F401

import bunws  # noqa: E402
from bunws.protocol import (  # noqa: E402
    HOLD_LIMIT,
    HTTP,
    HTTP_WRITE_LIMIT,
    MAX_QUEUED_REQUESTS,
    PARSE_SLICE,
    Connection,
)
from bunws.session import SessionState  # noqa: E402

logging.getLogger("bunws").setLevel(logging.CRITICAL)  # fetch errors are part of the plan

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x37\xfa\x21\x3d"
HANDSHAKE_TIMEOUT = 10.0
READ_SIZES = (1, 7, 64, 512, 4096, 8192, 65536, 262144)
DRAIN_SIZES = (None, 1, 100, 1000, 16384, 65536, None, None)  # None: everything
PADS = (0, 0, 1, 100, 5000, 20000, 40000, 70000)
BODY_LENS = (0, 1, 10, 100, 500, 1500, 2000, 8000)
TIMEOUT_FACTORS = (0.5, 1.01, 2.01, 13.0)  # 13 x 10 s also passes the 120 s idle timeout
MAX_STEPS = 400


class KnownFinding(AssertionError):
    """The run is wrong exactly as one of the findings below made it wrong (a regression).

    Raised only when the run fails the model, one of those bugs was seen to trigger, and
    the run matches in every other respect the model with that bug's effect allowed, so
    the failure names the old bug; the smoke test fails on it like on any other
    AssertionError. The findings, all fixed in bunws/protocol.py and bunws/http.py:
      A  a request answered while an Upgrade head behind it is already parsed gets
         ``Connection: close`` and the upgrade is never answered;
      B  the server's own answers (500, 400, 413, 431) to a HEAD request carry a body;
      C  once the timer aborted a connection whose Upgrade fetch was deciding, the fetch
         before it finishing makes the server call ``fetch`` for the requests queued
         behind, on the aborted transport;
      D  a 101 written while unread answers keep the transport near its high-water mark
         pauses writing in the HTTP branch: the WebSocket never reads again.
    Atheris reports it as a crash (FUZZ_IGNORE_KNOWN=1 looks past them).
    """

    def __init__(self, letters: str, message: str) -> None:
        super().__init__(message)
        self.letters = letters


# ------------------------------------------------------------------------ stub transport
class Transport:
    """asyncio's _SelectorSocketTransport as far as the Connection can tell.

    ``buffer`` is what the server wrote and the client has not read; ``received`` what
    it has read. Water marks as asyncio: pause_writing once the buffer exceeds
    ``high``, resume_writing once a drain brings it to ``low`` or below.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: Connection, high: int | None) -> None:
        self.loop = loop
        self.protocol = protocol
        self.buffer = bytearray()
        self.received = bytearray()
        self.pauses = high is not None  # None: a transport that never calls pause_writing
        self.high = high if high is not None else 1 << 62
        self.low = self.high // 4
        self.protocol_paused = False
        self.reading = True
        self.late_read = False  # one read may still arrive right after pause_reading
        self.closing = False
        self.aborted = False
        self.eof_written = False
        self.conn_lost = False  # connection_lost scheduled or done (asyncio's _conn_lost)
        self.lost = False  # connection_lost has run
        self.max_write = 0

    # write side -------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.eof_written, "write() after write_eof() (asyncio raises RuntimeError)"
        assert not self.aborted, "write() after abort()"
        if not data or self.conn_lost:
            return  # asyncio drops (and after a few, logs) writes once the connection is lost
        self.buffer += data
        self.max_write = max(self.max_write, len(data))
        if self.protocol.phase == HTTP and bytes(data[:12]) == b"HTTP/1.1 101":
            SESSION.paused_by_101 = self._crosses_high()  # finding D's trigger
        self._maybe_pause()

    def writelines(self, chunks: list[bytes | bytearray]) -> None:
        self.write(b"".join(chunks))

    def get_write_buffer_size(self) -> int:
        return len(self.buffer)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if self.pauses:
            self.high, self.low = high, low
            self._maybe_pause()

    def _crosses_high(self) -> bool:
        return self.pauses and len(self.buffer) > self.high and not self.protocol_paused

    def _maybe_pause(self) -> None:
        if self._crosses_high():
            self.protocol_paused = True
            self.protocol.pause_writing()

    def drain(self, n: int | None) -> None:
        """The client reads ``n`` bytes (None: all); asyncio's _write_ready."""
        if self.conn_lost or not self.buffer:
            return
        n = len(self.buffer) if n is None else min(n, len(self.buffer))
        self.received += self.buffer[:n]
        del self.buffer[:n]
        if self.protocol_paused and len(self.buffer) <= self.low:
            self.protocol_paused = False
            self.protocol.resume_writing()  # may write more
        if not self.buffer and self.closing and not self.conn_lost:
            self.conn_lost = True
            self._call_connection_lost()  # asyncio calls it directly here

    # lifecycle ----------------------------------------------------------------------
    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.reading = False
        if not self.buffer:
            self.conn_lost = True
            self.loop.call_soon(self._call_connection_lost)

    def abort(self) -> None:
        if self.conn_lost:
            return
        self.buffer.clear()  # the client never gets what it did not read
        self.closing = self.aborted = True
        self.reading = False
        self.conn_lost = True
        self.loop.call_soon(self._call_connection_lost)

    def _call_connection_lost(self) -> None:
        assert not self.lost, "connection_lost called twice"
        self.lost = True
        self.protocol.connection_lost(None)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self.closing or self.eof_written:
            return
        self.eof_written = True

    # read side ----------------------------------------------------------------------
    def pause_reading(self) -> None:
        if self.closing or not self.reading:
            return
        self.reading = False
        self.late_read = True

    def resume_reading(self) -> None:
        if self.closing or self.reading:
            return
        self.reading = True
        self.late_read = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def get_protocol(self) -> Connection:
        return self.protocol


# ------------------------------------------------------------------------ the app
class Session:
    """What the app saw during one input."""

    def __init__(self) -> None:
        self.fetched: list[int] = []
        self.bodies: dict[int, bytes] = {}
        self.messages: list[int] = []
        self.opens = 0
        self.closes = 0
        # What the open findings need to show (see KnownFinding): A, plain requests
        # answered while an Upgrade head behind them was already parsed; C, requests
        # fetched on a closing transport; D, the 101 write made the transport pause.
        self.answered_while_held: list[int] = []
        self.fetched_closing: list[int] = []
        self.paused_by_101 = False


SESSION = Session()


def _answer(index: int, pad: int, req: bunws.Request | None = None) -> bunws.Response:
    if req is not None and req.connection._early_bytes is not None:
        SESSION.answered_while_held.append(index)  # _write_answer runs right after this returns
    return bunws.Response(f"{index}|" + "x" * pad, headers={"X-Index": str(index)})


async def _iterations(k: int) -> None:
    for _ in range(k):
        await asyncio.sleep(0)


def fetch(req: bunws.Request, server: bunws.Server) -> Any:
    # target: /<index>/<mode>/<k>/<pad>
    _, index_s, mode, k_s, pad_s = req.path.split("/")
    index, k, pad = int(index_s), int(k_s), int(pad_s)
    SESSION.fetched.append(index)
    if req.connection.transport.is_closing():
        SESSION.fetched_closing.append(index)
    SESSION.bodies[index] = req._body
    if mode == "s":
        return _answer(index, pad, req)
    if mode == "e":
        raise RuntimeError("fetch raised")
    if mode == "U":
        return None if server.upgrade(req) else bunws.Response("no upgrade", status=400)
    if mode == "D":
        return _answer(index, pad)  # declines the upgrade
    return _async_fetch(req, server, index, mode, k, pad)


async def _async_fetch(req: bunws.Request, server: bunws.Server, index: int, mode: str, k: int, pad: int) -> Any:
    if mode == "W":  # upgrade, then go on awaiting: held frames must still go first
        upgraded = server.upgrade(req)
        await _iterations(k)
        return None if upgraded else bunws.Response("no upgrade", status=400)
    await _iterations(k)
    if mode == "E":
        raise ValueError("async fetch raised")
    if mode == "V":
        return None if server.upgrade(req) else bunws.Response("no upgrade", status=400)
    return _answer(index, pad, req if mode == "a" else None)  # "a", and "d" (a declined upgrade)


def ws_open(ws: bunws.ServerWebSocket) -> None:
    SESSION.opens += 1


def ws_message(ws: bunws.ServerWebSocket, msg: str | bytes) -> None:
    text = msg if isinstance(msg, str) else bytes(msg).decode("latin-1")
    head = text.split("|", 1)[0]
    SESSION.messages.append(int(head[1:]) if head[:1] == "m" and head[1:].isdigit() else -1)


def ws_close(ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
    SESSION.closes += 1


_loop: asyncio.AbstractEventLoop | None = None
_servers: list[bunws.Server] = []
_loop_errors: list[dict[str, Any]] = []


def _setup() -> None:
    global _loop
    if _loop is not None:
        return
    _loop = asyncio.new_event_loop()
    _loop.set_exception_handler(lambda loop, context: _loop_errors.append(context))
    handler = bunws.WebSocketHandler(open=ws_open, message=ws_message, close=ws_close)
    _servers.append(_loop.run_until_complete(bunws.serve(fetch, handler, port=0, handshake_timeout=HANDSHAKE_TIMEOUT)))
    _servers.append(_loop.run_until_complete(bunws.serve(
        fetch, handler, port=0, handshake_timeout=HANDSHAKE_TIMEOUT,
        max_head_size=1024, max_headers=20, max_body_size=2000,
    )))


def _spin(n: int) -> None:
    """Run exactly ``n`` loop iterations, so reads can come between any two (between
    ``upgrade()`` and the release of the held frames, say)."""
    assert _loop is not None
    for _ in range(n):
        _loop.call_soon(_loop.stop)
        _loop.run_forever()


# ------------------------------------------------------------------------ the plan
class Req:
    """One request as sent, and what the model says must answer it."""

    __slots__ = ("index", "method", "wire", "body_after_100", "outcome", "status", "body", "pad", "expect", "note")

    def __init__(self, index: int, method: str, wire: bytes, outcome: str, status: int = 200, *,
                 body: bytes = b"", pad: int = 0, expect: bool = False, body_after_100: bytes | None = None,
                 note: str = "") -> None:
        self.index = index
        self.method = method
        self.wire = wire  # the bytes sent (the head only when the body waits for a 100)
        self.body_after_100 = body_after_100
        # "ok": answered, keep-alive; "close": answered with Connection: close; "error":
        # fetch raises -> 500; "refuse": the server's own 400/413/431; "upgrade": 101;
        # "decline": an Upgrade request answered by fetch (then the connection ends)
        self.outcome = outcome
        self.status = status
        self.body = body
        self.pad = pad
        self.expect = expect
        self.note = note

    @property
    def ends(self) -> bool:
        return self.outcome != "ok"

    @property
    def size(self) -> int:
        return len(self.wire) + len(self.body_after_100 or b"")

    def __repr__(self) -> str:
        return f"#{self.index} {self.method} {self.outcome} {self.status} {self.note} ({self.size} B)"


class Plan:
    def __init__(self) -> None:
        self.tight = False
        self.high: int | None = 64 * 1024
        self.final_read = 8192
        self.final_eof = False
        self.reqs: list[Req] = []
        self.frames: list[bytes] = []  # client frames after the Upgrade request
        self.close_frame = b""
        self.steps: list[tuple[str, Any]] = []

    def expected(self, close_at: int | None = None) -> list[Req]:
        """The model: requests are answered in order up to the first that ends the connection
        (``close_at``: known finding A makes that request's answer end it)."""
        out = []
        for req in self.reqs:
            if req.index == close_at:
                req = Req(req.index, req.method, req.wire, "close", req.status, body=req.body, pad=req.pad,
                          expect=req.expect, note=req.note + " (closes: known finding A)")
            out.append(req)
            if req.ends:
                break
        return out

    def segments(self) -> list[tuple[int | None, bytes]]:
        """The client's bytes, cut where it waits for a 100 Continue: (gate, data)."""
        out: list[tuple[int | None, bytes]] = []
        gate: int | None = None
        cur = bytearray()
        for req in self.reqs:
            cur += req.wire
            if req.body_after_100 is not None:
                out.append((gate, bytes(cur)))
                gate, cur = req.index, bytearray(req.body_after_100)
        for frame in self.frames:
            cur += frame
        cur += self.close_frame
        out.append((gate, bytes(cur)))
        return out

    def describe(self) -> str:
        lines = [f"server={'tight' if self.tight else 'default'} high={self.high} final_read={self.final_read} "
                 f"final_eof={self.final_eof} frames={len(self.frames)} close_frame={bool(self.close_frame)}"]
        lines += [f"  {req!r}" for req in self.reqs]
        lines.append("  steps: " + " ".join(f"{name}:{arg}" for name, arg in self.steps))
        return "\n".join(lines)


def _mask(payload: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    keys = (MASK * (n // 4 + 1))[:n]  # one big-int XOR: the 100 KiB frames stay cheap
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")


def _client_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + MASK + _mask(payload)


MALFORMED = (
    (b"BROKEN\r\n\r\n", "bad method"),
    (b"GET /{i}/s/0/0 HTTP/1.1\r\n\r\n", "no Host"),
    (b"GET /{i}/s/0/0 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "two Hosts"),
    (b"GET /{i}/s/0/0 HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n", "space in a header name"),
    (b"GET /{i}/s/0/0 HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n", "bad Content-Length"),
    (b"POST /{i}/s/0/0 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"\x00\x01garbage", "binary"),
    (b"GET /{i}/s/0/0 HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "two Content-Lengths"),
)


def _fetch_mode(r: Reader) -> tuple[str, int]:
    m = r.byte()
    return "ssssaaeE"[m % 8], (m // 8) % 5


def _pad(r: Reader, high: int | None) -> int:
    p = r.byte()
    if p >= 248:
        return r.uint(2) * 2  # any size up to 128 KiB
    if p >= 232:  # an answer that leaves the buffer just around the transport's water mark
        return (high or HTTP_WRITE_LIMIT) - 300 + r.byte()
    return PADS[p % 8]


def _gen_requests(r: Reader, plan: Plan, server: bunws.Server) -> None:
    reqs = plan.reqs
    head_limit, body_limit = server.max_head_size, server.max_body_size
    for _ in range(1 + r.byte() % 8):
        i = len(reqs)
        kind = r.byte() % 16
        if kind <= 3 or kind == 14:  # GET / HEAD, keep-alive or not
            mode, k = _fetch_mode(r)
            pad = _pad(r, plan.high)
            method = "HEAD" if kind == 3 else "GET"
            variant = r.byte() % 16 if kind == 14 else 15
            version, extra, close = "HTTP/1.1", "", False
            if variant == 0:
                extra, close = "Connection: close\r\n", True
            elif variant == 1:
                version, close = "HTTP/1.0", True
            elif variant == 2:
                version, extra = "HTTP/1.0", "Connection: keep-alive\r\n"
            host = "" if version == "HTTP/1.0" and variant == 1 else "Host: h\r\n"
            wire = f"{method} /{i}/{mode}/{k}/{pad} {version}\r\n{host}{extra}\r\n".encode()
            outcome = "error" if mode in "eE" else "close" if close else "ok"
            reqs.append(Req(i, method, wire, outcome, 500 if outcome == "error" else 200, pad=pad,
                            note=f"{mode}{k} pad={pad} {version} {extra.strip()}"))
        elif kind in (4, 5, 6):  # POST with Content-Length, chunked, or Expect: 100-continue
            mode, k = _fetch_mode(r)
            pad = _pad(r, plan.high)
            size = min(BODY_LENS[r.byte() % 8], body_limit)
            body = (f"<{i}>" * (size // 3 + 1)).encode()[:size]
            head = f"POST /{i}/{mode}/{k}/{pad} HTTP/1.1\r\nHost: h\r\n"
            outcome = "error" if mode in "eE" else "ok"
            status = 500 if outcome == "error" else 200
            if kind == 5:
                step = 1 + r.byte() % 64
                chunks = b"".join(f"{len(body[j:j + step]):x}\r\n".encode() + body[j:j + step] + b"\r\n"
                                  for j in range(0, len(body), step))
                wire = (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
                reqs.append(Req(i, "POST", wire, outcome, status, body=body, pad=pad, note=f"{mode}{k} chunked {size}"))
            elif kind == 4:
                wire = (head + f"Content-Length: {size}\r\n\r\n").encode() + body
                reqs.append(Req(i, "POST", wire, outcome, status, body=body, pad=pad, note=f"{mode}{k} CL {size}"))
            else:
                gate = r.boolean() and size > 0  # the client waits for the 100 before the body
                wire = (head + f"Content-Length: {size}\r\nExpect: 100-continue\r\n\r\n").encode()
                reqs.append(Req(i, "POST", wire if gate else wire + body, outcome, status, body=body, pad=pad,
                                expect=True, body_after_100=body if gate else None,
                                note=f"{mode}{k} Expect {size}{' gated' if gate else ''}"))
        elif kind == 7:  # malformed: 400
            raw, why = MALFORMED[r.byte() % len(MALFORMED)]
            reqs.append(Req(i, "GET", raw.replace(b"{i}", str(i).encode()), "refuse", 400, note=why))
        elif kind == 8:  # head too big or too many headers: 431
            b = r.byte()
            variant, method = b % 3, "HEAD" if b & 8 else "GET"
            if variant == 0:
                wire = f"{method} /{i}/s/0/0 HTTP/1.1\r\nHost: h\r\nX-Long: {'v' * (2 * head_limit)}\r\n\r\n"
            elif variant == 1:
                wire = f"{method} /{i}/s/0/0 HTTP/1.1\r\nHost: h\r\n" + "X-H: v\r\n" * (server.max_headers + 5) + "\r\n"
            else:
                wire = f"{method} /{i}/s/0/0?{'q' * (2 * head_limit)} HTTP/1.1\r\nHost: h\r\n\r\n"
            reqs.append(Req(i, method, wire.encode(), "refuse", 431, note=("long header", "many headers", "long URL")[variant]))
        elif kind == 9:  # body too big: 413 (the 100 may come first when Expect precedes the length)
            variant = r.byte() % 3
            head = f"POST /{i}/s/0/0 HTTP/1.1\r\nHost: h\r\n"
            if variant == 2 and body_limit <= 4096:
                body = b"z" * (body_limit + 1)
                wire = (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
                reqs.append(Req(i, "POST", wire, "refuse", 413, note="chunked body over the limit"))
            else:
                expect = variant == 1
                wire = head + ("Expect: 100-continue\r\n" if expect else "") + f"Content-Length: {body_limit + 1}\r\n\r\n"
                reqs.append(Req(i, "POST", wire.encode(), "refuse", 413, expect=expect, note="Content-Length over the limit"))
        elif kind in (10, 11):  # an Upgrade request with trailing frames; nothing HTTP after it
            m = r.byte()
            mode, k = "UVWDd"[(m & 7) % 5], (m >> 3) % 5
            wire = (f"GET /{i}/{mode}/{k}/0 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
            outcome = "decline" if mode in "Dd" else "upgrade"
            reqs.append(Req(i, "GET", wire, outcome, 200 if outcome == "decline" else 101, note=f"upgrade {mode}{k}"))
            n, big = r.byte() % 7, r.byte()
            plan.frames = [_client_frame(1, f"m{j}|".encode() + (b"y" * 100_000 if big >> j & 1 else b""))
                           for j in range(n)]
            if r.boolean():
                plan.close_frame = _client_frame(8, b"\x03\xe8")
            return
        else:  # a burst of small pipelined GETs (fills the queue behind a busy fetch)
            count = 2 + r.byte()
            pad = min(_pad(r, plan.high), 5000)  # 257 answers of 5000 B already cross every write limit
            for j in range(i, i + count):
                reqs.append(Req(j, "GET", f"GET /{j}/s/0/{pad} HTTP/1.1\r\nHost: h\r\n\r\n".encode(), "ok",
                                pad=pad, note=f"burst pad={pad}"))


def decode(data: bytes) -> Plan:
    r = Reader(data)
    plan = Plan()
    b = r.byte()
    plan.tight = bool(b & 1)
    plan.high = (64 * 1024, 64 * 1024, 4096, None)[(b >> 1) % 4]
    b = r.byte()
    plan.final_read = READ_SIZES[b % 8]
    plan.final_eof = bool(b & 8)
    _setup()
    _gen_requests(r, plan, _servers[int(plan.tight)])
    while r.remaining and len(plan.steps) < MAX_STEPS:
        b = r.byte()
        if b < 96:
            plan.steps.append(("read", READ_SIZES[r.byte() % 8]))
        elif b < 136:
            plan.steps.append(("spin", 1 + b % 4))
        elif b < 184:
            plan.steps.append(("drain", DRAIN_SIZES[r.byte() % 8]))
        elif b < 200:
            plan.steps.append(("tick", 0.0))
        elif b < 208:
            plan.steps.append(("timeout", TIMEOUT_FACTORS[b % 4]))
        elif b < 224:
            plan.steps.append(("eof", 0))
        elif b < 232:
            plan.steps.append(("late-read", READ_SIZES[r.byte() % 8]))
    return plan


# ------------------------------------------------------------------------ the client
class Client:
    """Sends the plan's bytes in reads the transport accepts, waits at 100-continue gates."""

    def __init__(self, plan: Plan, conn: Connection, transport: Transport) -> None:
        self.segments = plan.segments()
        self.seg = 0
        self.pos = 0
        self.conn = conn
        self.transport = transport
        self.is_head = lambda p: p < len(plan.reqs) and plan.reqs[p].method == "HEAD"
        self.biggest_read = 0
        self.eof_sent = False
        self.total = sum(len(data) for _, data in self.segments)
        self._gate_seen = -1
        self._continues: set[int] = set()
        self._junk = b"\xee" * len(conn.server.receive_buffer)

    def _available(self) -> int:
        while self.pos >= len(self.segments[self.seg][1]):
            if self.seg + 1 >= len(self.segments) or not self._gate_open(self.segments[self.seg + 1][0]):
                return 0
            self.seg += 1
            self.pos = 0
        return len(self.segments[self.seg][1]) - self.pos

    def _gate_open(self, gate: int | None) -> bool:
        if gate is None:
            return True
        received = self.transport.received
        if self._gate_seen != len(received):  # parse again only when the client read more
            self._gate_seen = len(received)
            try:
                responses, _, _ = split_http_responses(bytes(received), self.is_head, allow_partial=True)
            except AssertionError:
                return False  # bad output: a client would stop here; the final check says why
            self._continues = {pos for pos, status, _, _ in responses if status == 100}
        return gate in self._continues

    @property
    def waiting_for_100(self) -> int | None:
        if self._available() or self.seg + 1 >= len(self.segments):
            return None
        return self.segments[self.seg + 1][0]

    @property
    def done(self) -> bool:
        return self._available() == 0 and self.seg + 1 >= len(self.segments)

    def read(self, size: int, late: bool = False) -> bool:
        """Deliver one read as asyncio's BufferedProtocol path does; False if none."""
        t = self.transport
        if t.closing or self.eof_sent or not (t.reading or (late and t.late_read)):
            return False
        n = min(size, self._available())
        if not n:
            return False
        if late:
            t.late_read = False
        buf = self.conn.get_buffer(-1)
        n = min(n, len(buf))
        data = self.segments[self.seg][1]
        buf[:n] = data[self.pos:self.pos + n]
        self.pos += n
        self.biggest_read = max(self.biggest_read, n)
        self.conn.buffer_updated(n)
        buf[:n] = self._junk[:n]  # whoever kept a view of the shared buffer now sees junk
        return True

    def eof(self) -> bool:
        t = self.transport
        if self.eof_sent or t.closing or not t.reading or not self.done:
            return False
        self.eof_sent = True
        if not self.conn.eof_received():
            t.close()  # as asyncio does on a false answer
        return True


# ------------------------------------------------------------------------ oracles
def _check_bounds(conn: Connection, t: Transport, client: Client, server: bunws.Server, min_req: int) -> None:
    queue = conn._queue
    if queue is not None:
        bound = MAX_QUEUED_REQUESTS + PARSE_SLICE // min_req + 1
        assert len(queue) <= bound, f"{len(queue)} requests queued, bound {bound} (smallest request {min_req} B)"
    unparsed = conn._unparsed
    if unparsed is not None:
        assert len(unparsed) <= 2 * client.biggest_read, (
            f"_unparsed holds {len(unparsed)} B, reads were at most {client.biggest_read} B")
        assert not unparsed or t.closing or not t.reading, f"{len(unparsed)} B wait unparsed while reading goes on"
    held = conn._early_bytes
    if held is not None:
        assert len(held) <= HOLD_LIMIT + 2 * client.biggest_read, (
            f"_early_bytes holds {len(held)} B, HOLD_LIMIT {HOLD_LIMIT}, reads <= {client.biggest_read} B")
        assert len(held) < HOLD_LIMIT or t.closing or not t.reading, f"{len(held)} B held while reading goes on"
    if conn.phase == HTTP and not t.conn_lost:
        bound = HTTP_WRITE_LIMIT + t.max_write + len(CONTINUE)
        assert len(t.buffer) <= bound, (
            f"{len(t.buffer)} unread answer bytes, HTTP_WRITE_LIMIT {HTTP_WRITE_LIMIT} + largest write {t.max_write}")
    in_http = conn.phase == HTTP and not t.lost
    assert server.pending_requests == int(in_http), f"pending_requests={server.pending_requests}, phase={conn.phase}"
    session = conn.session
    open_ws = session is not None and session.state is SessionState.OPEN
    assert server.pending_websockets == int(open_ws), f"pending_websockets={server.pending_websockets}"


def _check_output(plan: Plan, t: Transport, timed_out: bool, known: bool = False) -> None:
    """The model's answers, fetch calls and messages; ``known``: as the open findings make them."""
    expected = plan.expected(min(SESSION.answered_while_held, default=None) if known else None)

    def no_body(p: int) -> bool:
        if p >= len(plan.reqs) or plan.reqs[p].method != "HEAD":
            return False
        # known finding B: the server's own answers (500, 400, 413, 431) to HEAD carry a body
        return not (known and p < len(expected) and expected[p].outcome in ("error", "refuse"))

    data = bytes(t.received)
    responses, rest, _ = split_http_responses(data, no_body, allow_partial=t.aborted)
    if not t.aborted:
        parse_http_output(data)  # the shared structural checks (status lines, heads, lengths)
    finals = [x for x in responses if not 100 <= x[1] < 200 or x[1] == 101]
    statuses = [x[1] for x in finals]
    want = [req.status for req in expected]
    if timed_out:
        assert len(finals) <= len(want) and statuses == want[:len(finals)], (
            f"answers {statuses} are not a prefix of the model's {want}")
    else:
        assert statuses == want, f"answers {statuses}, the model says {want} (last: {expected[-1]!r})"
    seen_continue = set()
    for pos, status, headers, body in responses:
        if status == 100:
            assert pos < len(plan.reqs) and plan.reqs[pos].expect, (
                f"100 Continue before answer #{pos}, which is not an Expect request")
            assert pos not in seen_continue, f"two 100 Continue for request #{pos}"
            seen_continue.add(pos)
            continue
        req = expected[pos]
        if status in (200, 500, 400, 413, 431):
            close = "close" in headers.get("connection", "").lower()
            assert close == req.ends, f"answer #{pos} ({status}): Connection: close is {close}, the model says {req.ends}"
        if req.outcome in ("ok", "close", "decline"):
            assert headers.get("x-index") == str(req.index), f"answer #{pos} is X-Index {headers.get('x-index')}"
            want_body = b"" if req.method == "HEAD" else f"{req.index}|".encode() + b"x" * req.pad
            assert body == want_body, f"answer #{pos}: body {body[:20]!r}... ({len(body)} B), expected {len(want_body)} B"
    # fetch ran once per answered request, in order, with the body that was sent
    want_fetched = [req.index for req in expected if req.outcome != "refuse"]
    got = SESSION.fetched
    if known:  # finding C: calls on a closing transport are extra
        got = [index for index in got if index not in SESSION.fetched_closing]
    if timed_out:
        assert got == want_fetched[:len(got)], f"fetch saw {got[:20]}..., not a prefix of {want_fetched[:20]}..."
    else:
        assert got == want_fetched, f"fetch saw {got[:20]}... ({len(got)}), the model says {want_fetched[:20]}... ({len(want_fetched)})"
    by_index = {req.index: req for req in plan.reqs}
    for index in got:
        assert SESSION.bodies[index] == by_index[index].body, f"request #{index}: fetch got another body"
    # the WebSocket part: the server upgraded when open ran; the client saw it unless an
    # abort dropped the 101 unread
    got_101 = bool(finals) and finals[-1][1] == 101
    assert SESSION.opens <= 1, f"open ran {SESSION.opens} times"
    if got_101:
        parse_server_frames(rest[:whole_frames_prefix(rest)] if t.aborted else rest)  # abort may cut a frame
        assert SESSION.opens == 1, "101 without open()"
    else:
        assert not rest
        assert not SESSION.opens or (timed_out and t.aborted), "open() ran, the client got no 101"
    if SESSION.opens:
        n = len(plan.frames)
        if timed_out or (known and SESSION.paused_by_101):  # finding D: the socket stops reading
            assert SESSION.messages == list(range(len(SESSION.messages))), f"messages out of order: {SESSION.messages}"
        else:
            assert SESSION.messages == list(range(n)), f"messages {SESSION.messages}, sent m0..m{n - 1} in order"
    else:
        assert SESSION.messages == [], f"messages {SESSION.messages} without an upgrade"
    assert SESSION.opens == SESSION.closes, f"open ran {SESSION.opens} times, close {SESSION.closes}"


# ------------------------------------------------------------------------ the target
def _discard_leftovers() -> None:
    """After an input that failed half-way (a replay of several crash files), end what it left."""
    for server in _servers:
        for conn in list(server._connections):
            transport = conn.transport
            if isinstance(transport, Transport) and not transport.lost:
                transport.abort()
        _spin(3)
        for conn in list(server._connections):
            conn.connection_lost(None)
        server._connections.clear()
        server._http_connections = server._pending_websockets = 0


def execute(plan: Plan) -> None:
    global SESSION
    _setup()
    assert _loop is not None
    if any(server._connections or server._http_connections or server._tasks for server in _servers):
        _discard_leftovers()
    server = _servers[int(plan.tight)]
    SESSION = Session()
    _loop_errors.clear()
    conn = Connection(server)
    t = Transport(_loop, conn, plan.high)
    conn.connection_made(t)
    client = Client(plan, conn, t)
    min_req = min(req.size for req in plan.reqs)
    timed_out = False

    def check() -> None:
        _check_bounds(conn, t, client, server, min_req)

    def state() -> tuple[Any, ...]:
        return (client.seg, client.pos, len(t.received), len(t.buffer), t.reading, t.lost, conn.phase,
                len(SESSION.fetched), len(SESSION.messages))

    def settle(read_size: int) -> None:
        """The client sends what it can, reads everything; the loop runs dry."""
        for _ in range(1000):
            before = state()
            while client.read(read_size):
                check()
            for _ in range(50):
                if not server._tasks:
                    break
                _spin(1)
                check()
            t.drain(None)
            conn.check_timers(_loop.time())  # the server's own tick, in time
            _spin(2)
            check()
            if before == state():
                return
        raise AssertionError("no quiescence after 1000 rounds")

    check()
    for name, arg in plan.steps:
        if t.lost:
            break
        if name == "read":
            client.read(arg)
        elif name == "late-read":
            client.read(arg, late=True)
        elif name == "spin":
            _spin(arg)
        elif name == "drain":
            t.drain(arg)
        elif name in ("tick", "timeout"):
            if arg >= 1:
                timed_out = True
            conn.check_timers(_loop.time() + arg * HANDSHAKE_TIMEOUT)
            if t.conn_lost and not t.lost:
                # The server ticks from the loop: the connection_lost that abort/close
                # scheduled runs before the next tick can look at this connection.
                _spin(1)
        elif name == "eof":
            client.eof()
        check()

    # the reads after the steps: the fuzzer's size, but not 1-byte reads of 600 KB
    final_read = max(plan.final_read, client.total // 256)
    settle(final_read)
    stall = None  # liveness: the client sent and read everything it could
    if not timed_out and not t.closing:
        gate = client.waiting_for_100
        if gate is not None:
            stall = f"the client waits for the 100 Continue of request #{gate}, the server waits for its body"
        elif not client.done:
            stall = (f"the server stopped reading: {len(client.segments[client.seg][1]) - client.pos} B not read, "
                     f"phase {conn.phase}, reading {t.reading}")
    if plan.final_eof:
        client.eof()
        settle(final_read)
    for _ in range(5):  # time passes every deadline (handshake, idle, close)
        if t.lost:
            break
        conn.check_timers(_loop.time() + 10_000)
        _spin(2)
        t.drain(None)
        _spin(2)
    assert t.lost, f"connection never closed (phase {conn.phase}, closing {t.closing}, {len(t.buffer)} B unread)"
    for _ in range(20):
        if not server._tasks:
            break
        _spin(1)
    assert not server._tasks, "fetch/handler tasks still pending"
    assert not server._connections, "connection still in server._connections"
    assert server.pending_requests == 0, server.pending_requests
    assert server.pending_websockets == 0, server.pending_websockets
    assert len(server.pubsub) == 0, "topics left in the registry"
    assert not _loop_errors, f"exception reached the loop: {_loop_errors[0].get('message')} {_loop_errors[0].get('exception')!r}"

    def verdict(known: bool) -> None:
        assert stall is None or (known and SESSION.paused_by_101), stall
        _check_output(plan, t, timed_out, known)

    try:
        verdict(False)
    except AssertionError as wrong:
        seen = "".join(letter for letter, hit in (
            ("A", SESSION.answered_while_held),
            ("B", any(req.method == "HEAD" and req.outcome in ("error", "refuse") for req in plan.expected())),
            ("C", SESSION.fetched_closing),
            ("D", SESSION.paused_by_101),
        ) if hit)
        if not seen:
            raise
        try:
            verdict(True)
        except AssertionError:
            raise wrong from None
        raise KnownFinding(seen, f"open finding(s) {','.join(seen)}: {wrong}") from None


IGNORE_KNOWN = os.environ.get("FUZZ_IGNORE_KNOWN") == "1"


def test_one_input(data: bytes) -> None:
    try:
        execute(decode(data))
    except KnownFinding:
        if not IGNORE_KNOWN:
            raise


def shutdown() -> None:
    """Stop the servers and close the loop (the smoke test calls this at the end)."""
    global _loop
    if _loop is None:
        return
    for server in _servers:
        _loop.run_until_complete(server.stop(True))
    _servers.clear()
    _loop.close()
    _loop = None


# ------------------------------------------------------------------------ seeds
def _mode(mode: str = "s", k: int = 0) -> int:
    return "ssssaaeE".index(mode) + 8 * k


def _pad_bytes(pad: int) -> tuple[int, ...]:
    return (PADS.index(pad),) if pad in PADS else (248, pad // 2 >> 8, pad // 2 & 0xFF)


def get(mode: str = "s", k: int = 0, pad: int = 0, head: bool = False) -> tuple[int, ...]:
    return (3 if head else 0, _mode(mode, k)) + _pad_bytes(pad)


def get_close(variant: int = 0, mode: str = "s", k: int = 0) -> tuple[int, ...]:
    return (14, _mode(mode, k), 0, variant)  # 0 Connection: close, 1 HTTP/1.0, 2 HTTP/1.0 keep-alive


def post(kind: str = "cl", size: int = 100, mode: str = "s", k: int = 0, gate: bool = False) -> tuple[int, ...]:
    code = {"cl": 4, "chunked": 5, "expect": 6}[kind]
    tail = (7,) if kind == "chunked" else (int(gate),) if kind == "expect" else ()
    return (code, _mode(mode, k), 0, BODY_LENS.index(size)) + tail


def upgrade(mode: str = "U", k: int = 0, frames: int = 0, big: int = 0, close: bool = False) -> tuple[int, ...]:
    return (10, "UVWDd".index(mode) + 8 * k, frames, big, int(close))


def burst(count: int, pad: int = 0) -> tuple[int, ...]:
    return (12, count - 2) + _pad_bytes(pad)


def seed(items: list[tuple[int, ...]], steps: list[tuple[Any, ...]], *, tight: bool = False,
         high: int | None = 64 * 1024, final_read: int = 8192, final_eof: bool = False) -> bytes:
    """Bytes that ``decode`` turns into this plan (steps as in ``Plan.steps``)."""
    out = [int(tight) | {64 * 1024: 0, 4096: 2, None: 3}[high] << 1,
           READ_SIZES.index(final_read) | (8 if final_eof else 0), len(items) - 1]
    for item in items:
        out += item
    for name, *arg in steps:
        if name in ("read", "late-read"):
            out += (0 if name == "read" else 224, READ_SIZES.index(arg[0]))
        elif name == "spin":
            out.append(96 + arg[0] - 1)
        elif name == "drain":
            out += (140, DRAIN_SIZES.index(arg[0] if arg else None))
        elif name == "tick":
            out.append(184)
        elif name == "timeout":
            out.append(200 + TIMEOUT_FACTORS.index(arg[0]))
        elif name == "eof":
            out.append(208)
    return bytes(out)


def seeds() -> list[bytes]:
    """The classic shapes, as plans; the smoke test runs each."""
    return [s for s, _ in SEEDS]


# (input, the finding it once showed or None): the seeds of findings A-D stay, as
# regression inputs that must now pass
SEEDS: list[tuple[bytes, str | None]] = [
    # three sync GETs in one read, the client reads, then half-closes
    (seed([get(), get(), get()], [("read", 262144), ("drain",), ("eof",)]), None),
    # a slow GET, then 50 pipelined GETs in 8 KiB reads: they queue behind it
    (seed([get("a", 4), burst(50)], [("read", 8192)] * 4 + [("spin", 4), ("drain",)] * 4), None),
    # tight server, 4 KiB water marks: a 70 000 B answer, a HEAD, then Connection: close
    (seed([get(pad=70000), get(head=True), get_close(0)], [("read", 65536), ("drain", 16384)] * 6,
          tight=True, high=4096, final_read=4096), None),
    # Expect: the client holds the body until it reads the 100, behind a slow answer
    (seed([get("a", 4), post("expect", 100, gate=True), get()], [("read", 65536), ("spin", 4)] * 4), None),
    # a 431 and a 413 (and a malformed request) behind a slow answer
    (seed([get("a", 4, pad=5000), (8, 0), (9, 0), (7, 0)], [("read", 65536), ("spin", 4), ("drain",)] * 3), None),
    # upgrade; fetch goes on awaiting after upgrade(); frames with the handshake and later
    (seed([upgrade("W", 3, frames=4, close=True)], [("read", 64), ("spin", 1)] * 40, final_read=512), None),
    # fetch upgrades, then awaits: frames arrive before the held ones are released
    (seed([upgrade("W", 2, frames=6, close=True)], [("read", 64)] * 3 + [("spin", 1), ("read", 64), ("spin", 4)]), None),
    # await then upgrade, three 100 KiB frames behind the head: over the hold limit
    (seed([upgrade("V", 4, frames=3, big=7)], [("read", 262144), ("spin", 1)] * 8, final_read=262144), None),
    # a slow GET answered while the Upgrade head behind it is still arriving; the client
    # half-closes right after its frames
    (seed([get("a", 2), upgrade("U", frames=2)], [("read", 64), ("spin", 4), ("read", 262144), ("eof",), ("spin", 4)]), None),
    # the timeout passes while the answers wait unread: the connection is aborted
    (seed([get(pad=70000), get(pad=70000), get()], [("read", 262144), ("timeout", 1.01), ("spin", 2)]), None),
    # a malformed request after keep-alive answers (tight server, 1-byte reads)
    (seed([get(), post("cl", 10), (7, 5), get()], [("read", 1)] * 200, tight=True), None),
    # finding A: a GET answered while the Upgrade head behind it is already parsed (same
    # read) gets Connection: close and the upgrade is never answered
    (seed([get(), upgrade("U", frames=1)], [("read", 262144), ("drain",)]), None),
    # finding B: fetch raises for a HEAD request; the 500 carries a body
    (seed([get("e", head=True)], [("read", 512)]), None),
    # candidate C: the timer aborts while an Upgrade's fetch decides; the slow fetch before
    # it fails in the same loop iteration; is fetch still called for the GET queued between?
    (seed([get("E"), get(), upgrade("U")], [("read", 262144), ("timeout", 2.01)]), None),
    # candidate D: the 101 pushes the unread answers over the 64 KiB water mark
    (seed([get(pad=65400), upgrade("U", frames=3)],
          [("read", 7)] * 5 + [("read", 1)] * 3 + [("read", 64)] * 2 + [("read", 7)] * 3 + [("read", 262144)]), None),
]


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--describe":
        for path in sys.argv[2:]:
            with open(path, "rb") as fh:
                plan = decode(fh.read())
            print(plan.describe())
            execute(plan)
            print(f"ok: {path}")
        sys.exit(0)
    run(test_one_input, seeds)
