"""``Connection``: one TCP connection, from its first HTTP byte to its last frame.

It owns the read side and the lifecycle: the HTTP/1.1 phase (httptools, keep-alive,
pipelining, limits, ``fetch``), the switch to WebSocket, dispatch of parsed frames to
the handlers (auto-corked: one ``write`` per read batch), the close handshake, the
idle timer, and the guarantee that the ``close`` handler runs exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from ._frame import FrameParser, encode_close, encode_frame
from ._wscore import dispatch
from .errors import ProtocolError
from .http import Headers, Request, Response, build_response, simple_response
from .websocket import OP_PING, OP_PONG, ServerWebSocket

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Connection"]

logger = logging.getLogger("bunws")

# Connection phases.
HTTP = 0
WEBSOCKET = 1
CLOSING = 2  # our Close frame is out; waiting for the peer's Close or EOF
CLOSED = 3

_TIMEOUT_REASON = "WebSocket timed out from inactivity"
_EMPTY_PING = encode_frame(OP_PING, b"")


class Connection(asyncio.BufferedProtocol):
    """asyncio protocol for one client connection (HTTP, then maybe WebSocket).

    A BufferedProtocol: the transport reads into the server's one receive buffer
    instead of allocating a fresh 256 KiB ``bytes`` per read and shrinking it
    (py-spy, 10 000 handshakes: that ``recv`` was 19.5 % of the server's time).
    Sharing one buffer is safe because every consumer copies what it keeps before
    ``buffer_updated`` returns (the frame parser, httptools, ``_held``), and the loop
    never reads for another connection while one's ``buffer_updated`` runs.
    """

    # Slots: thousands of idle connections are the normal case (see the RSS per
    # connection figure in bench/RESULTS.md).
    __slots__ = (
        "server", "clock", "transport", "remote_address", "phase", "paused",
        "_http", "_url", "_headers", "_head_bytes", "_in_head", "_body", "_requests",
        "_busy", "_held", "_close_after", "_answer", "deadline",
        "ws", "_parser", "_backlog", "last_inbound", "_ping_sent", "__weakref__",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        # Timestamps come from the loop's clock, not the server's coarse tick, so a
        # timeout never fires early (the tick only decides how late it may be). One
        # bound method shared by all connections: each object a connection keeps
        # alive is scanned by every full GC pass (bench: conns scenario).
        self.clock = server._clock
        self.transport: Any = None
        self.remote_address: str | None = None
        self.phase = HTTP
        self.paused = False  # ws.pause(): reading stopped, events held in _backlog
        # HTTP phase
        self._http: httptools.HttpRequestParser | None = None
        self._url = b""
        self._headers: list[tuple[str, str]] | None = None  # set per request head
        self._head_bytes = 0
        self._in_head = False
        self._body: bytearray | None = None
        # (request, keep-alive); None once upgraded (one fewer object per WebSocket).
        self._requests: deque[tuple[Request, bool]] | None = deque()
        self._busy = False  # a fetch() is running (async) or a response is pending
        self._held: bytearray | None = None  # bytes after an Upgrade request's head
        self._close_after = False  # close once the queued responses are written
        self._answer: bytes | None = None  # server's own answer replacing fetch's (426/403/503)
        self.deadline = 0.0  # handshake / close-handshake deadline (loop time)
        # WebSocket phase
        self.ws: ServerWebSocket | None = None
        self._parser: FrameParser | None = None
        self._backlog: list[Any] | None = None  # events held while paused
        self.last_inbound = 0.0
        self._ping_sent = False

    # ================================================================ transport events
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        peer = transport.get_extra_info("peername")
        if peer:
            self.remote_address = peer[0] if isinstance(peer, tuple) else str(peer)
        server._connections.add(self)
        self.deadline = self.clock() + server.handshake_timeout
        if server._stopping or (
            server.max_connections is not None and len(server._connections) > server.max_connections
        ) or server._http_connections >= server.max_pending_handshakes:
            transport.write(simple_response(503))
            transport.close()
            self.phase = CLOSED
            return
        server._http_connections += 1
        self._http = httptools.HttpRequestParser(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server._recv_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.server._recv_view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        phase = self.phase
        if phase == WEBSOCKET:
            self._ws_data(data)
        elif phase == HTTP:
            self._http_data(data)
        elif phase == CLOSING:
            self._closing_data(data)

    def eof_received(self) -> bool | None:
        # Returning a false value makes the transport close itself.
        return None

    def pause_writing(self) -> None:
        # High-water mark 0 (set at upgrade): the transport now holds unsent bytes.
        if self.ws is not None:
            self.ws._write_paused = True

    def resume_writing(self) -> None:
        # With a high-water mark of 0 this runs exactly when the transport's buffer is
        # empty again: send the one pong kept back meanwhile, then ``drain``.
        ws = self.ws
        if ws is None:
            return
        ws._write_paused = False
        if self.phase != WEBSOCKET:
            return
        pong = ws._pending_pong
        if pong is not None:
            ws._pending_pong = None
            ws._out += encode_frame(OP_PONG, pong)
            ws._flush()
        drain = self.server._websocket.drain
        if drain is not None:
            self._call_corked("drain", drain, ws)

    def connection_lost(self, exc: BaseException | None) -> None:
        server = self.server
        server._connections.discard(self)
        if self.phase == HTTP:
            server._http_connections -= 1
        ws = self.ws
        if ws is not None and ws._ready_state == 1:
            self._finish(1006, "")
        self.phase = CLOSED
        self._http = None
        self._parser = None
        self._requests = None
        # Break the Connection <-> ServerWebSocket cycle so a closed connection is
        # freed by reference counting, not left for a full GC pass (the app may
        # still hold the socket: its methods then see a closed connection).
        self.ws = None
        server._connection_gone()

    # ================================================================ HTTP phase
    def _http_data(self, data: bytes | memoryview) -> None:
        if self._held is not None:
            # After an Upgrade request's head nothing is parsed as HTTP until fetch decides.
            self._held += data
            return
        parser = self._http
        if parser is None:
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.server.max_head_size:
                return self._reject(431)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._held = bytearray(data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError:
            # One of our callbacks rejected the request and already answered it.
            if self.phase == HTTP and not self._close_after:
                self._reject(400)
            return
        except httptools.HttpParserError:
            return self._reject(400)
        if self.phase == HTTP:
            self._pump()

    # httptools callbacks ---------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = None
        self._in_head = True
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.server.max_head_size:
            self._reject(431)
            raise _Rejected

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        assert headers is not None  # on_message_begin made it
        self._head_bytes += len(name) + len(value) + 4
        if len(headers) >= self.server.max_headers or self._head_bytes > self.server.max_head_size:
            self._reject(431)
            raise _Rejected
        headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        limit = self.server.max_body_size
        headers = self._headers
        assert headers is not None  # on_message_begin made it
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False  # llhttp has already rejected a malformed length
                if too_big:
                    self._reject(413)
                    raise _Rejected
            elif lower == "expect" and value.lower() == "100-continue":
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._body is None:
            self._body = bytearray()
        self._body += body
        if len(self._body) > self.server.max_body_size:
            self._reject(413)
            raise _Rejected

    def on_message_complete(self) -> None:
        parser, headers = self._http, self._headers
        assert parser is not None and headers is not None
        version = parser.get_http_version()
        req = Request(
            parser.get_method().decode("latin-1"),
            self._url.decode("latin-1"),
            Headers(headers),
            bytes(self._body) if self._body else b"",
            http_version=version,
            remote_address=self.remote_address,
            scheme=self.server._scheme,
            connection=self,
        )
        req_keep_alive = parser.should_keep_alive()
        assert self._requests is not None  # None only once closed or upgraded
        self._requests.append((req, req_keep_alive))
        self._url = b""
        self._headers = None
        self._body = None

    # request processing -----------------------------------------------------------
    def _pump(self) -> None:
        """Run ``fetch`` for queued requests, one at a time, in order."""
        while self._requests and not self._busy and self.phase == HTTP:
            req, keep_alive = self._requests.popleft()
            server = self.server
            if server._stopping:
                self._answer = simple_response(503)
                self._write_answer(req, None, False)
                return
            try:
                result = server._fetch(req, server)
            except Exception as exc:
                self._fetch_failed(req, exc)
                continue
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                self._busy = True
                task = server._loop.create_task(self._await_fetch(req, result, keep_alive))
                server._tasks.add(task)
                task.add_done_callback(server._tasks.discard)
                return
            self._write_answer(req, result, keep_alive)

    async def _await_fetch(self, req: Request, pending: Any, keep_alive: bool) -> None:
        try:
            result = await pending
        except Exception as exc:
            self._busy = False
            self._fetch_failed(req, exc)
        else:
            self._busy = False
            self._write_answer(req, result, keep_alive)
        if self.phase == HTTP:
            self._pump()

    def _fetch_failed(self, req: Request, exc: Exception) -> None:
        logger.error("fetch() raised for %s %s", req.method, req.target, exc_info=exc)
        if req._upgraded:
            self._after_upgrade()
        elif self.phase == HTTP:
            self._send_http(simple_response(500), close=True)

    def _write_answer(self, req: Request, result: Any, keep_alive: bool) -> None:
        if req._upgraded:
            self._after_upgrade()
            return
        if self.phase != HTTP:
            return
        if self._answer is not None:
            answer, self._answer = self._answer, None
            self._send_http(answer, close=True)
            return
        if not isinstance(result, Response):
            if result is None:
                logger.error(
                    "fetch() returned None for %s %s without upgrading", req.method, req.target
                )
            else:
                logger.error(
                    "fetch() must return a Response, got %s", type(result).__name__
                )
            self._send_http(simple_response(500), close=True)
            return
        # A request that paused llhttp for an upgrade and was not upgraded ends the
        # connection: the bytes after it were never parsed as HTTP.
        close = not keep_alive or self._held is not None or self.server._stopping
        self._send_http(
            build_response(result, keep_alive=not close, head_only=req.method == "HEAD"),
            close=close,
        )

    def _send_http(self, payload: bytes, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(payload)
        self.deadline = self.clock() + self.server.handshake_timeout
        if close:
            self._close_after = True
            if self._requests is not None:
                self._requests.clear()
            self._http = None
            transport.close()

    def _reject(self, status: int) -> None:
        """Answer a request the server refuses on its own, then close."""
        if self.phase != HTTP or self._close_after:
            return
        self._send_http(simple_response(status), close=True)

    # ================================================================ upgrade
    def upgrade(self, req: Request, response_head: bytes, ws: ServerWebSocket, parser: FrameParser) -> None:
        """Switch to the WebSocket phase (called by ``Server.upgrade``)."""
        server = self.server
        req._upgraded = True
        self.transport.write(response_head)
        server._http_connections -= 1
        self.phase = WEBSOCKET
        self._http = None
        self._requests = None
        self._headers = None
        self.ws = ws
        self._parser = parser
        self.last_inbound = self.clock()
        # High-water mark 0: asyncio calls resume_writing exactly when the buffer is
        # empty again, which is when Bun fires ``drain``.
        self.transport.set_write_buffer_limits(high=0)
        server._pending_websockets += 1
        opener = server._websocket.open
        if opener is not None:
            self._call_corked("open", opener, ws)

    def _after_upgrade(self) -> None:
        """Frames that arrived with the handshake are dispatched after fetch returns."""
        held, self._held = self._held, None
        if held and self.phase == WEBSOCKET:
            self._ws_data(bytes(held))

    # ================================================================ WebSocket phase
    def _ws_data(self, data: bytes | memoryview) -> None:
        self.last_inbound = self.clock()
        self._ping_sent = False
        parser = self._parser
        try:
            events = parser.feed_flat(data)  # type: ignore[union-attr]
        except ProtocolError as exc:
            events = [_ERROR, (exc.close_code, exc.reason)]
        else:
            if parser.failed:  # type: ignore[union-attr]
                # Events completed before the error are delivered first (_frame's rule).
                events += [_ERROR, (parser.close_code, parser.reason)]  # type: ignore[union-attr]
        if self._backlog is not None:
            # Paused: keep parsing (bounded by the limits) but hold the events.
            self._backlog += events
        elif events:
            self._dispatch(events, 0)

    def _dispatch(self, events: list[Any], start: int) -> None:
        """Deliver parsed events to the handlers inside one cork (compiled loop)."""
        dispatch(self, self.ws, events, start, self.server._websocket)

    def _hold(self, events: list[Any]) -> None:
        """Paused mid-batch: keep the rest for resume()."""
        self._backlog = events

    def _on_ping(self, payload: bytes) -> None:
        ws = self.ws
        assert ws is not None
        # RFC 6455 §5.5.3 lets us answer only the latest ping: while the peer is not
        # reading, keep at most one pong back instead of queueing one per ping.
        if ws._write_paused:
            ws._pending_pong = payload
        else:
            ws._out += encode_frame(OP_PONG, payload)
        handler = self.server._websocket.ping
        if handler is not None:
            self._call("ping", handler, ws, self._binary(payload))

    def _on_pong(self, payload: bytes) -> None:
        handler = self.server._websocket.pong
        if handler is not None:
            self._call("pong", handler, self.ws, self._binary(payload))

    def _binary(self, payload: bytes) -> Any:
        kind = self.ws._binary_kind  # type: ignore[union-attr]
        if kind == 0:
            return payload
        return bytearray(payload) if kind == 1 else memoryview(payload)

    # ================================================================ closing
    def _peer_close(self, code: int, reason: str) -> None:
        """The peer sent Close: echo it (Bun echoes code and reason), then end TCP."""
        ws = self.ws
        assert ws is not None
        if code == 1005:
            frame = encode_close(None, "")
        else:
            frame = encode_close(code, reason)
        ws._out += frame
        ws._flush()
        self.transport.close()
        self._finish(code, reason)

    def _protocol_error(self, code: int, reason: str) -> None:
        """The peer broke the protocol: answer with the precise Close code."""
        if self.phase != WEBSOCKET:
            return
        ws = self.ws
        assert ws is not None
        ws._out += encode_close(code, reason)
        ws._flush()
        # Half-close and discard what the peer still sends (until its FIN or the close
        # timeout): closing with unread input makes the kernel answer with a reset,
        # and the peer would lose our Close frame before reading it.
        self._parser = None
        self.phase = CLOSING
        self.deadline = self.clock() + self.server.close_timeout
        self._half_close()
        self._finish(code, reason)

    def _half_close(self) -> None:
        transport = self.transport
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:  # the peer is already gone
                transport.abort()
        else:
            transport.close()

    def close_with_frame(self, frame: bytes, code: int, reason: str) -> None:
        """``ws.close()``: Close frame after everything queued, FIN once flushed."""
        ws = self.ws
        assert ws is not None
        ws._out += frame
        ws._flush()
        self.phase = CLOSING
        self.deadline = self.clock() + self.server.close_timeout
        self._half_close()
        self._finish(code, reason)

    def _closing_data(self, data: bytes | memoryview) -> None:
        """After our Close: ignore data frames, end TCP on the peer's Close."""
        parser = self._parser
        if parser is None:
            return
        try:
            events = parser.feed_flat(data)
        except ProtocolError:
            self.transport.abort()
            return
        for i in range(0, len(events), 2):
            if events[i] == 8:
                self.transport.close()
                return
        if parser.failed:
            self.transport.abort()

    def abort(self, code: int, reason: str) -> None:
        """End TCP at once, no Close frame (terminate, timeouts, backpressure)."""
        if self.ws is None or self.ws._ready_state != 1:
            return
        self.transport.abort()
        self._finish(code, reason)

    def _finish(self, code: int, reason: str) -> None:
        """Mark the socket closed and run the ``close`` handler exactly once."""
        ws = self.ws
        if ws is None or ws._ready_state != 1:
            return
        ws._ready_state = 3
        if self.phase == WEBSOCKET:
            self.phase = CLOSING
        server = self.server
        server._pending_websockets -= 1
        # Subscriptions go before the close handler runs (BUN_SEMANTICS.md §5).
        ws._unsubscribe_all()
        ws._discard()
        ws._pending_pong = None
        self._backlog = None
        closer = server._websocket.close
        if closer is not None:
            self._call("close", closer, ws, code, reason)

    # ================================================================ pause / timers
    def pause(self) -> None:
        if self.paused or self.phase != WEBSOCKET:
            return
        self.paused = True
        self.ws._paused = True  # type: ignore[union-attr]
        self._backlog = []
        self.transport.pause_reading()

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self.ws._paused = False  # type: ignore[union-attr]
        self.last_inbound = self.clock()
        if self.phase != WEBSOCKET:
            return
        self.transport.resume_reading()
        backlog, self._backlog = self._backlog, None
        if backlog:
            # Not inside the caller's stack: resume() may be called from a handler.
            self.server._loop.call_soon(self._dispatch_backlog, backlog)

    def _dispatch_backlog(self, backlog: list[Any]) -> None:
        if self.phase == WEBSOCKET:
            if self.paused:
                self._backlog = backlog + (self._backlog or [])
            else:
                self._dispatch(backlog, 0)

    def check_timers(self, now: float) -> None:
        """Called by the server tick: handshake, idle/ping and close deadlines."""
        phase = self.phase
        if phase == WEBSOCKET:
            handler = self.server._websocket
            idle = handler.idle_timeout
            if not idle or self.paused:
                return
            silence = now - self.last_inbound
            if silence >= idle:
                self.abort(1006, _TIMEOUT_REASON)
            elif handler.send_pings and not self._ping_sent and silence >= idle - self.server._ping_margin:
                self._ping_sent = True
                ws = self.ws
                if ws is not None:
                    ws._out += _EMPTY_PING
                    ws._flush()
        elif phase == HTTP:
            if not self._busy and now >= self.deadline and self._held is None:
                self._close_after = True
                self.transport.close()
            elif self._held is not None and now >= self.deadline + self.server.handshake_timeout:
                self.transport.abort()
        elif phase == CLOSING:
            if now >= self.deadline:
                self.transport.abort()

    # ================================================================ handlers
    def _call(self, name: str, fn: Any, *args: Any) -> None:
        try:
            result = fn(*args)
        except Exception as exc:
            self._handler_error(exc)
            return
        if result is not None and name in self.server._websocket.async_handlers:
            self._spawn(result)

    def _call_corked(self, name: str, fn: Any, ws: ServerWebSocket) -> None:
        """``open`` and ``drain`` run corked: their sends leave in one write."""
        ws._corked += 1
        try:
            self._call(name, fn, ws)
        finally:
            ws._corked -= 1
            if not ws._corked and ws._ready_state == 1:
                ws._flush()

    def _spawn(self, coro: Any) -> None:
        server = self.server
        task = server._loop.create_task(coro)
        server._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.server._tasks.discard(task)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None and isinstance(exc, Exception):
                self._handler_error(exc)

    def _handler_error(self, exc: Exception) -> None:
        """Route a handler exception to ``error(exc, ws)``, or log it and close 1011."""
        ws = self.ws
        on_error = self.server._websocket.error
        if on_error is not None:
            try:
                result = on_error(exc, ws)
                if result is not None and "error" in self.server._websocket.async_handlers:
                    self.server._loop.create_task(result)
                return
            except Exception as second:
                logger.error("error handler raised", exc_info=second)
        else:
            logger.error("unhandled exception in a websocket handler", exc_info=exc)
        if ws is not None and ws._ready_state == 1:
            ws.close(1011, "Internal error")


_ERROR = -1  # pseudo-opcode: a protocol error, delivered after the events before it


class _Rejected(Exception):
    """Raised inside an httptools callback to stop parsing a refused request."""
