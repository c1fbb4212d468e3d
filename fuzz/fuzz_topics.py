"""Fuzz target: the topic registry and fan-out, through the public API, against a model.

    python fuzz/fuzz_topics.py CORPUS_DIR -max_total_time=60     # atheris
    python fuzz/fuzz_topics.py --replay crash-FILE               # re-run one input

Each input picks a server configuration (``publish_to_self``, a small
``backpressure_limit`` so that drops happen, ``close_on_backpressure_limit``; the
servers are started once per process in a persistent event loop and never
connected to), upgrades 1-5 real ``Connection`` objects on stub transports (as
bench/bench_dispatch.py does), then runs a fuzzer-chosen sequence of operations:
``subscribe``/``unsubscribe``/``is_subscribed``/``publish``/``publish_text``/
``publish_binary``/``send``/``server.publish``/``server.subscriber_count``/
``subscriptions``/``buffered_amount`` with valid and odd topics (empty, NUL,
non-ASCII, a lone surrogate, 300 characters, non-str), ``close``/``terminate``,
stalling a transport (its ``get_write_buffer_size`` grows with every write and it
calls ``pause_writing()`` as asyncio does with a high-water mark of 0), draining it
(``resume_writing()``), and event-loop iterations (the end-of-tick flush of
publishes and the deferred aborts of ``close_on_backpressure_limit``).

The same operations run on a small pure-Python model of Bun's rules (README "Send
status" and "Pub/sub"). Findings (AssertionError, or an exception the model did not
predict; the only predicted ones are InvalidType/InvalidArgument for bad topics and
data types, and InvalidArgument for a str with a lone surrogate):
  * a return value that differs from the model (``subscribe``/``unsubscribe``/
    ``is_subscribed`` booleans, send and publish statuses: size / -1 / 0);
  * ``subscriptions``, ``subscriber_count``, ``buffered_amount`` or ``ready_state``
    differing from the model after any operation;
  * the close handler seeing the socket still subscribed or counted anywhere, or a
    publish made from the close handler returning another status than the model's;
  * the frames written to each stub transport (decoded) differing from the model's,
    a write after ``close()``/``abort()``, a malformed frame;
  * the registry or the server's bookkeeping not empty once every socket is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fuzzlib import Reader, parse_server_frames, run  # noqa: E402

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["bunws"]):
        import bunws  # noqa: F401
        import bunws.pubsub  # noqa: F401
        import bunws.websocket  # noqa: F401

import bunws  # noqa: E402
from bunws.http import Headers, Request  # noqa: E402
from bunws.protocol import Connection  # noqa: E402

logging.getLogger("bunws").setLevel(logging.CRITICAL)

TOPICS: tuple[Any, ...] = ("a", "b", "room:1", "A", "", " ", "\x00", "é☃", "\ud800", "t" * 300, b"a", None, 7)
VALID_TOPICS = [t for t in TOPICS if isinstance(t, str) and t]
LIMITS = (0, 40, 150, 1000)
SIZES = (0, 1, 10, 100, 125, 126, 300, 70000)


# ------------------------------------------------------------------------ stub transport
class StubTransport:
    def __init__(self, protocol: Connection) -> None:
        self.protocol = protocol
        self.out = bytearray()
        self.stalled = False
        self.buffered = 0
        self.paused = False
        self.closed = False
        self.aborted = False
        self.lost = False

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.aborted, "write after close()/abort()"
        self.out += data
        if self.stalled:
            self.buffered += len(data)
            if not self.paused and self.buffered > 0:  # asyncio, high-water mark 0
                self.paused = True
                self.protocol.pause_writing()

    def drain(self) -> None:
        self.stalled = False
        self.buffered = 0
        if self.paused:
            self.paused = False
            self.protocol.resume_writing()

    def writelines(self, chunks: list[bytes | bytearray]) -> None:
        self.write(b"".join(chunks))  # as asyncio.WriteTransport.writelines does

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


# ------------------------------------------------------------------------ the model
def frame_len(n: int) -> int:
    return n + (2 if n < 126 else 4 if n < 65536 else 10)


class MSock:
    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.open = True
        self.doomed = False
        self.subs: set[str] = set()
        self.out: list[tuple[int, bytes]] = []  # frames in ws._out
        self.out_len = 0
        self.stalled = False
        self.tbuf = 0
        self.paused = False
        self.queued = False
        self.written: list[tuple[int, bytes]] = []


class Model:
    def __init__(self, n: int, limit: int, close_on_limit: bool, to_self: bool, close_topic: str | None) -> None:
        self.socks = [MSock(i) for i in range(n)]
        self.limit = limit
        self.close_on_limit = close_on_limit
        self.to_self = to_self
        self.close_topic = close_topic
        self.registry: dict[str, dict[MSock, None]] = {}
        self.callbacks: list[tuple[str, MSock | None]] = []
        self.flush_list: list[MSock] = []
        self.flush_scheduled = False
        self.closes: list[tuple] = []

    # write side ----------------------------------------------------------------
    def _write(self, s: MSock, frames: list[tuple[int, bytes]], nbytes: int) -> None:
        s.written += frames
        if s.stalled:
            s.tbuf += nbytes
            if not s.paused and s.tbuf > 0:
                s.paused = True

    def _flush(self, s: MSock) -> None:
        if s.out:
            frames, nbytes = s.out, s.out_len
            s.out, s.out_len = [], 0
            self._write(s, frames, nbytes)

    def _append(self, s: MSock, opcode: int, payload: bytes) -> None:
        s.out.append((opcode, payload))
        s.out_len += frame_len(len(payload))

    def _buffered(self, s: MSock) -> int:
        return (s.tbuf if s.paused else 0) + s.out_len

    def _over_limit(self, s: MSock) -> None:
        if self.close_on_limit and not s.doomed:
            s.doomed = True
            self.callbacks.append(("abort", s))

    def send(self, s: MSock, opcode: int, payload: bytes) -> int:
        if not s.open or s.doomed:
            return 0
        if self.limit and self._buffered(s) > self.limit:
            self._over_limit(s)
            return 0
        self._append(s, opcode, payload)
        self._flush(s)
        return -1 if s.paused else len(payload)

    def publish(self, topic: str, opcode: int, payload: bytes, exclude: MSock | None) -> int:
        receivers = self.registry.get(topic)
        if not receivers:
            return 0
        count, dropped, buffering = 0, False, False
        for s in list(receivers):
            if s is exclude:
                continue
            count += 1
            if s.doomed:
                dropped = True
                continue
            if self.limit and self._buffered(s) > self.limit:
                self._over_limit(s)
                dropped = True
                continue
            self._append(s, opcode, payload)
            if s.paused:
                buffering = True
            if not s.queued:
                s.queued = True
                self.flush_list.append(s)
        if self.flush_list and not self.flush_scheduled:
            self.flush_scheduled = True
            self.callbacks.append(("flush", None))
        if not count or dropped:
            return 0
        return -1 if buffering else len(payload)

    def exclude(self, s: MSock) -> MSock | None:
        return None if (not s.open or self.to_self) else s

    # subscriptions ----------------------------------------------------------------
    def subscribe(self, s: MSock, topic: str) -> bool:
        if not s.open:
            return False
        if topic not in s.subs:
            s.subs.add(topic)
            self.registry.setdefault(topic, {})[s] = None
        return True

    def unsubscribe(self, s: MSock, topic: str) -> bool:
        if not s.open or topic not in s.subs:
            return False
        s.subs.discard(topic)
        self._registry_remove(topic, s)
        return True

    def _registry_remove(self, topic: str, s: MSock) -> None:
        subs = self.registry.get(topic)
        if subs is not None:
            subs.pop(s, None)
            if not subs:
                del self.registry[topic]

    def count(self, topic: str) -> int:
        return len(self.registry.get(topic, ()))

    # lifecycle ------------------------------------------------------------------
    def _finish(self, s: MSock, code: int, reason: str) -> None:
        if not s.open:
            return
        s.open = False
        for topic in list(s.subs):
            self._registry_remove(topic, s)
        s.subs = set()
        s.out, s.out_len = [], 0
        status = None
        if self.close_topic is not None:
            status = self.publish(self.close_topic, 1, f"bye{s.idx}".encode(), None)
        self.closes.append((s.idx, code, reason, (), self.counts(), status))

    def counts(self) -> tuple[int, ...]:
        return tuple(self.count(t) for t in VALID_TOPICS)

    def close(self, s: MSock, code: int, reason: str) -> None:
        if not s.open:
            return
        self._append(s, 8, code.to_bytes(2, "big") + reason.encode())
        self._flush(s)
        self._finish(s, code, reason)

    def terminate(self, s: MSock) -> None:
        if s.open:
            self._finish(s, 1006, "")

    def drain(self, s: MSock) -> None:
        s.stalled = False
        s.tbuf = 0
        s.paused = False

    def run_callbacks(self) -> None:
        while self.callbacks:
            kind, s = self.callbacks.pop(0)
            if kind == "flush":
                self.flush_scheduled = False
                pending, self.flush_list = self.flush_list, []
                for q in pending:
                    q.queued = False
                    if q.open:
                        self._flush(q)
            else:
                assert s is not None
                if s.open:
                    self._finish(s, 1006, "")


# ------------------------------------------------------------------------ servers
class Ctx:
    """What the shared close handler reports into, for the current input."""

    model_closes: list[tuple] = []
    index: dict[Any, int] = {}
    close_topic: str | None = None
    server: Any = None


def _on_close(ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
    server = Ctx.server
    idx = Ctx.index[ws]
    subs = tuple(sorted(ws.subscriptions))
    for topic in VALID_TOPICS:
        assert not ws.is_subscribed(topic), ("subscribed inside the close handler", topic)
    counts = tuple(server.subscriber_count(t) for t in VALID_TOPICS)
    status = None
    if Ctx.close_topic is not None:
        status = server.publish(Ctx.close_topic, f"bye{idx}")
    Ctx.model_closes.append((idx, code, reason, subs, counts, status))


_loop: asyncio.AbstractEventLoop | None = None
_servers: dict[tuple[bool, int, bool], bunws.Server] = {}


def _server(to_self: bool, limit: int, close_on_limit: bool) -> bunws.Server:
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    key = (to_self, limit, close_on_limit)
    if key not in _servers:
        handler = bunws.WebSocketHandler(
            close=_on_close, publish_to_self=to_self, backpressure_limit=limit,
            close_on_backpressure_limit=close_on_limit, idle_timeout=0,
        )
        _servers[key] = _loop.run_until_complete(bunws.serve(lambda req, srv: None, handler, port=0))
    return _servers[key]


def _spin(n: int) -> None:
    assert _loop is not None
    for _ in range(n):
        _loop.run_until_complete(asyncio.sleep(0))


def _open_socket(server: bunws.Server) -> tuple[Connection, StubTransport, bunws.ServerWebSocket]:
    conn = Connection(server)
    stub = StubTransport(conn)
    conn.connection_made(stub)
    req = Request(
        "GET", "/",
        Headers([("Upgrade", "websocket"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                 ("Sec-WebSocket-Version", "13")]),
        connection=conn,
    )
    assert server.upgrade(req)
    assert stub.out.startswith(b"HTTP/1.1 101 ")
    stub.out.clear()
    assert conn.session is not None
    return conn, stub, conn.session.ws


# ------------------------------------------------------------------------ the target
def _expect(fn: Any, want: Any) -> None:
    """Run ``fn``; ``want`` is the model's return value or an exception class."""
    if isinstance(want, type) and issubclass(want, BaseException):
        try:
            got = fn()
        except want:
            return
        raise AssertionError(f"expected {want.__name__}, got {got!r}")
    got = fn()
    assert got == want, (got, want)


def _topic_error(topic: Any) -> type[BaseException] | None:
    if not isinstance(topic, str):
        return bunws.InvalidType
    if not topic:
        return bunws.InvalidArgument
    return None


def _data(r: Reader, n: int, kind: int) -> tuple[Any, int, bytes, type[BaseException] | None]:
    """(value, opcode, payload, expected error) of a message numbered n."""
    size = r.pick(SIZES)
    body = (f"m{n}." * (size // 3 + 1))[:size] if size else ""
    if kind == 0:
        if r.chance(8):
            return body + "\ud800", 1, b"", bunws.InvalidArgument
        return body, 1, body.encode(), None
    raw = body.encode()
    choice = r.byte() % 8
    if choice == 0:
        return bytearray(raw), 2, raw, None
    if choice == 1:
        return memoryview(raw), 2, raw, None
    if choice == 2 and r.chance(64):
        return 12345, 0, b"", bunws.InvalidType
    return raw, 2, raw, None


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    to_self, limit, close_on_limit = r.boolean(), r.pick(LIMITS), r.boolean()
    server = _server(to_self, limit, close_on_limit)
    assert len(server.pubsub) == 0 and not server._connections
    n = r.int_in(1, 5)
    close_topic = r.pick(VALID_TOPICS[:4]) if r.chance(80) else None
    model = Model(n, limit, close_on_limit, to_self, close_topic)
    Ctx.model_closes = []
    Ctx.close_topic = close_topic
    Ctx.server = server
    Ctx.index = {}
    socks = []
    for i in range(n):
        conn, stub, ws = _open_socket(server)
        Ctx.index[ws] = i
        socks.append((conn, stub, ws))
    msg_no = 0

    def tick() -> None:
        _spin(4)
        model.run_callbacks()
        for conn, stub, _ in socks:
            if (stub.closed or stub.aborted) and not stub.lost:
                stub.lost = True
                conn.connection_lost(None)

    for _ in range(r.int_in(1, 60)):
        if not r.remaining:
            break
        op = r.byte() % 17
        i = r.int_in(0, n - 1)
        conn, stub, ws = socks[i]
        s = model.socks[i]
        topic = r.pick(("a", "b")) if r.chance(180) else r.pick(TOPICS)
        err = _topic_error(topic)
        msg_no += 1
        if op == 0:
            _expect(lambda: ws.subscribe(topic), err or model.subscribe(s, topic))
        elif op == 1:
            _expect(lambda: ws.unsubscribe(topic), err or model.unsubscribe(s, topic))
        elif op == 2:
            _expect(lambda: ws.is_subscribed(topic), err or (topic in s.subs))
        elif op in (3, 4, 5, 6):
            kind = 0 if op == 4 else 1 if op == 5 else r.byte() & 1
            value, opcode, payload, data_err = _data(r, msg_no, kind)
            if op == 3:
                want = err or data_err or model.publish(topic, opcode, payload, model.exclude(s))
                _expect(lambda: ws.publish(topic, value), want)
            elif op == 4:
                if topic == "":
                    want = 0  # Bun: 0 rather than an error; the data is not encoded
                else:
                    want = err or data_err or model.publish(topic, opcode, payload, model.exclude(s))
                _expect(lambda: ws.publish_text(topic, value), want)
            elif op == 5:
                want = err or data_err or model.publish(topic, opcode, payload, model.exclude(s))
                _expect(lambda: ws.publish_binary(topic, value), want)
            else:
                want = err or data_err or model.publish(topic, opcode, payload, None)
                _expect(lambda: server.publish(topic, value), want)
        elif op == 7:
            value, opcode, payload, data_err = _data(r, msg_no, r.byte() & 1)
            _expect(lambda: ws.send(value), data_err or model.send(s, opcode, payload))
        elif op == 8:
            stub.stalled = s.stalled = True
        elif op == 9:
            model.drain(s)
            stub.drain()
        elif op == 10:
            tick()
        elif op == 11:
            code = r.pick((1000, 1001, 4000, 4999))
            reason = r.pick(("", "bye", "é"))
            model.close(s, code, reason)
            ws.close(code, reason)
        elif op == 12:
            model.terminate(s)
            ws.terminate()
        elif op == 13:
            _expect(lambda: server.subscriber_count(topic),
                    bunws.InvalidType if not isinstance(topic, str) else model.count(topic))
        elif op == 14:
            assert sorted(ws.subscriptions) == sorted(s.subs), (ws.subscriptions, s.subs)
        else:
            want = (s.tbuf + s.out_len) if s.open else 0
            assert ws.buffered_amount == want, (ws.buffered_amount, want)
        # state after every operation
        assert Ctx.model_closes == model.closes, (Ctx.model_closes, model.closes)
        for (_, _, w), m in zip(socks, model.socks):
            assert w.ready_state == (1 if m.open else 3)
            assert set(w.subscriptions) == m.subs, (w.subscriptions, m.subs)
        for t in VALID_TOPICS:
            assert server.subscriber_count(t) == model.count(t), (t, server.subscriber_count(t), model.count(t))
        assert sorted(server.pubsub.topics()) == sorted(model.registry)

    # Close everything, let the loop run, compare what each client would read.
    for (conn, stub, ws), s in zip(socks, model.socks):
        if r.boolean():
            model.terminate(s)
            ws.terminate()
        else:
            model.close(s, 1000, "")
            ws.close()
    tick()
    assert not model.callbacks
    assert Ctx.model_closes == model.closes, (Ctx.model_closes, model.closes)
    for (conn, stub, ws), s in zip(socks, model.socks):
        frames = [(op, payload) for op, payload, _ in parse_server_frames(bytes(stub.out))]
        assert frames == s.written, (s.idx, frames[:8], s.written[:8])
    assert len(server.pubsub) == 0, server.pubsub.topics()
    assert not server._connections and server.pending_websockets == 0 and server._http_connections == 0
    assert server.pubsub.pending_flushes == 0


def shutdown() -> None:
    """Stop the servers and close the loop (the smoke test calls this at the end)."""
    global _loop
    if _loop is None:
        return
    for server in _servers.values():
        _loop.run_until_complete(server.stop(True))
    _servers.clear()
    _loop.close()
    _loop = None


def seeds() -> list[bytes]:
    out = [b"", bytes(range(256)), bytes(range(255, -1, -1))]
    # to_self, limit idx, close_on_limit, n, close_topic chance/pick, then ops:
    # subscribe a (0), publish (3), stall (8), sends (7), tick (10), drain (9).
    for cfg in ((0, 1, 0), (1, 2, 1), (0, 0, 0), (1, 3, 1)):
        ops = b""
        for i in range(3):
            ops += bytes((0, i, 0))              # subscribe sock i to "a"
        ops += bytes((8, 1, 0))                  # stall sock 1
        for k in range(6):
            ops += bytes((3, k % 3, 0, 1, 6, 2))  # publish 300 B to "a"
            ops += bytes((7, 1, 0, 6, 4))         # send 300 B on sock 1
        ops += bytes((10, 0, 0, 9, 1, 0, 10, 0, 0, 11, 2, 0, 1, 12, 0, 0))
        out.append(bytes(cfg) + bytes((2, 0, 0)) + ops)
    return out


if __name__ == "__main__":
    run(test_one_input, seeds)
