"""``WebSocketSession``: the life of one connection after its upgrade.

It owns the read side (the frame parser; pause/resume and the events held
meanwhile), the handlers (``close`` exactly once, exceptions routed to ``error``),
the close handshake and the WebSocket timers. Every byte it sends goes through its
socket's :class:`~bunws._wscore.WebSocketCore`, and it is the ``session`` that
:func:`bunws._wscore.dispatch` calls for everything rarer than a data message.
The HTTP life before it is :class:`bunws.protocol.Connection`'s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ._frame import FrameParser, Opcode
from ._wscore import SessionCore, SessionState, dispatch
from .websocket import ServerWebSocket

if TYPE_CHECKING:
    from .protocol import Connection
    from .server import Server

__all__ = ["SessionState", "WebSocketSession"]

logger = logging.getLogger("bunws")

_TIMEOUT_REASON = "WebSocket timed out from inactivity"
_CLOSE = int(Opcode.CLOSE)


class WebSocketSession(SessionCore, asyncio.BufferedProtocol):
    """One upgraded connection: the read side, the handlers and the timers.

    Once the 101 and the frames that came with the handshake are through, the
    session is its transport's protocol: reads go straight to the compiled
    :class:`~bunws._wscore.SessionCore` (``get_buffer``/``buffer_updated``); the
    rarer transport callbacks go on to the :class:`~bunws.protocol.Connection`.
    """

    __slots__ = ("conn", "transport", "server", "handler", "__weakref__")

    def __init__(
        self,
        conn: Connection,
        transport: Any,
        server: Server,
        parser: FrameParser,
        data: Any,
        *,
        subprotocol: str | None,
        extensions: str | None,
        deflater: Any = None,
        shared_deflate: bool = False,
    ) -> None:
        handler = server.websocket_handler
        self.conn = conn
        self.transport = transport
        self.server = server
        self.handler = handler
        ws = ServerWebSocket(
            self, server.pubsub, data, conn.remote_address,
            subprotocol=subprotocol, extensions=extensions,
            publish_to_self=handler.publish_to_self,
        )
        ws.attach(
            transport, server.loop, handler.backpressure_limit,
            # terminate(): Bun's (1006, "") with no Close frame. One function for every
            # socket rather than a bound callable per connection.
            handler.close_on_backpressure_limit, ServerWebSocket.terminate,
            deflater, shared_deflate, server.counters,
        )
        # What dispatch() reads per batch is resolved once.
        self.setup(
            ws, parser, server.receive_buffer, server.clock,
            handler.message, "message" in handler.async_handlers,
        )

    def opened(self) -> None:
        """After the 101 is written: ``open`` runs corked (one write for its sends)."""
        self.server.websocket_opened()
        opener = self.handler.open
        if opener is not None:
            self.ws.run_corked(self.call, "open", opener, self.ws)

    # ================================================================ read side
    # data_received / get_buffer / buffer_updated: compiled in SessionCore.

    # The transport's other callbacks, once the session is its protocol: the
    # connection still owns the connection's life.
    def eof_received(self) -> bool | None:
        """The peer half-closed (the connection decides)."""
        return self.conn.eof_received()

    def pause_writing(self) -> None:
        """The transport is full (the connection tells the session back)."""
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        """The transport drained (the connection wakes its waiters, then the session)."""
        self.conn.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        """The TCP connection is gone."""
        self.conn.connection_lost(exc)

    def closing_data(self, data: bytes | bytearray | memoryview) -> None:
        """After our Close: ignore data frames, end TCP on the peer's Close."""
        self.ws.counters.bytes_received += len(data)
        parser = self.parser
        if parser is None:
            return
        events = parser.feed_events(data)
        for i in range(0, len(events), 2):
            if events[i] == _CLOSE:
                self.transport.close()
                return
            if events[i] == Opcode.PROTOCOL_ERROR:
                self.transport.abort()
                return

    # dispatch() calls these -------------------------------------------------------
    def hold(self, events: list[Any]) -> None:
        """Paused mid-batch: keep the rest for resume()."""
        self.backlog = events

    def on_ping(self, payload: bytes) -> None:
        """A Ping arrived: answer it, then call the ``ping`` handler."""
        ws = self.ws
        ws.queue_pong(payload)
        handler = self.handler.ping
        if handler is not None:
            self.call("ping", handler, ws, ws.binary(payload))

    def on_pong(self, payload: bytes) -> None:
        """A Pong arrived: call the ``pong`` handler."""
        handler = self.handler.pong
        if handler is not None:
            self.call("pong", handler, self.ws, self.ws.binary(payload))

    def on_close(self, code: int, reason: str) -> None:
        """The peer sent Close: echo it (Bun echoes code and reason), then end TCP."""
        self.ws.queue_close(None if code == 1005 else code, reason)
        # close_timeout bounds the flush of the echo and what was queued before it.
        self._closing()
        self.transport.close()
        self._finish(code, reason)

    def on_protocol_error(self, code: int, reason: str) -> None:
        """The peer broke the protocol: answer with the precise Close code."""
        if self.state is not SessionState.OPEN:
            return
        self.ws.queue_close(code, reason)
        # Half-close and discard what the peer still sends (until its FIN or the close
        # timeout): closing with unread input makes the kernel answer with a reset,
        # and the peer would lose our Close frame before reading it.
        self.parser = None
        self._closing()
        self._half_close()
        self._finish(code, reason)

    # ================================================================ closing
    def close(self, code: int, reason: str) -> None:
        """``ws.close()``: Close frame after everything queued, FIN once flushed."""
        if self.state is not SessionState.OPEN:
            return
        self.ws.queue_close(code & 0xFFFF, reason)
        self._closing()
        self._half_close()
        self._finish(code, reason)

    def abort(self, code: int, reason: str) -> None:
        """End TCP at once, no Close frame (terminate, timeouts, backpressure)."""
        if self.ws.ready_state != 1:
            return
        self.transport.abort()
        self._finish(code, reason)

    def hang_up(self) -> None:
        """End TCP once what is queued is written, without a Close frame (the
        ``close`` handler gets 1006): uvicorn's end for an app that stops early."""
        if self.state is not SessionState.OPEN:
            return
        self.ws.flush()
        self.parser = None  # nothing more is read: the peer's frames are not answered
        self._closing()  # close_timeout bounds the flush
        self.transport.close()
        self._finish(1006, "")

    def _closing(self) -> None:
        self.state = SessionState.CLOSING
        self.deadline = self.server.clock() + self.server.close_timeout
        self._refile_timers()
        # A paused socket must still read the peer's Close answer and its FIN.
        self.conn.update_reading()

    def _half_close(self) -> None:
        transport = self.transport
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:  # the peer is already gone
                transport.abort()
        else:
            transport.close()

    def _finish(self, code: int, reason: str) -> None:
        """Mark the socket closed and run the ``close`` handler exactly once."""
        ws = self.ws
        if not ws.mark_closed():
            return
        if self.state is SessionState.OPEN:
            self.state = SessionState.CLOSING
        self.server.websocket_closed(code)
        # Subscriptions go before the close handler runs (docs/bun-behaviour.md §5).
        ws.unsubscribe_all()
        self.backlog = None
        closer = self.handler.close
        if closer is not None:
            self.call("close", closer, ws, code, reason)

    def lost(self) -> None:
        """The TCP connection is gone (``connection_lost``)."""
        self._finish(1006, "")
        self.state = SessionState.CLOSED
        self.parser = None
        self.ws.detach()

    def shutdown(self, close_active: bool) -> None:
        """``Server.stop()``: 1001, then (``close_active``) no wait for the answer."""
        if self.state is SessionState.OPEN:
            self.ws.close(1001, "Server shutting down")
        if close_active:
            self.transport.close()  # the 1001 is flushed first

    # ================================================================ flow control
    def transport_paused(self) -> None:
        """The transport is full: sends report -1 from now on."""
        self.ws.transport_paused()
        self._refile_timers()

    def transport_resumed(self) -> None:
        """The transport drained: send the pong kept back, then run ``drain``."""
        # With a high-water mark of 0 this runs exactly when the transport's buffer is
        # empty again: the pong kept back goes out, then ``drain`` runs.
        if self.ws.transport_resumed() and self.state is SessionState.OPEN:
            drain = self.handler.drain
            if drain is not None:
                self.ws.run_corked(self.call, "drain", drain, self.ws)

    def pause(self) -> None:
        """Hold inbound messages back (``ws.pause()``); reading stops."""
        if self.paused or self.state is not SessionState.OPEN:
            return
        self.paused = True
        self.ws.hold_inbound(True)
        if self.backlog is None:  # else a replay is still due: keep its events first
            self.backlog = []
        self.conn.update_reading()

    def resume(self) -> None:
        """Dispatch the held messages, then read again (``ws.resume()``)."""
        if not self.paused:
            return
        self.paused = False
        self.ws.hold_inbound(False)
        self.last_inbound = self.server.clock()
        if self.state is not SessionState.OPEN:
            return
        self._refile_timers()
        self.conn.update_reading()
        if self.backlog:
            # Not inside the caller's stack (resume() may be called from a handler).
            # The backlog stays the place where reads land until the replay runs, so
            # a read that comes first (uvloop may read before it) queues behind it.
            self.server.loop.call_soon(self._replay_backlog)
        else:
            self.backlog = None

    def _replay_backlog(self) -> None:
        if self.state is not SessionState.OPEN or self.paused:
            return  # closed meanwhile, or paused again: the backlog waits for resume()
        backlog, self.backlog = self.backlog, None
        if backlog:
            dispatch(self.ws, backlog, self)

    # ================================================================ timers
    def check_timers(self, now: float) -> float | None:
        """Called by the server tick: idle/ping and close-handshake deadlines.
        Returns when the tick must look next (:meth:`next_check`)."""
        if self.state is SessionState.CLOSING:
            if now >= self.deadline:
                self.transport.abort()
                return None
        elif self.state is SessionState.OPEN:
            ws = self.ws
            if ws.write_paused and not self.transport.get_write_buffer_size():
                self.transport_resumed()  # a transport that never resumed us: drain anyway
            handler = self.handler
            idle = handler.idle_timeout
            if idle and not self.paused and self.state is SessionState.OPEN:
                # Deadlines as sums, not `now - last >= idle`: (t + 8) - t can round below 8.
                last = self.last_inbound
                if now >= last + idle:
                    self.abort(1006, _TIMEOUT_REASON)
                elif handler.send_pings and not self.ping_sent and now >= last + (idle - self.server.ping_margin):
                    self.ping_sent = True
                    ws.send_keepalive()
        return self.next_check(now)

    def next_check(self, now: float) -> float | None:
        """When the server tick must look at this session next: the close deadline,
        the next tick while writing is stalled, the ping or idle deadline, or None
        (nothing can expire until something changes, and that re-files it)."""
        state = self.state
        if state is SessionState.CLOSING:
            return self.deadline
        if state is not SessionState.OPEN:
            return None
        if self.ws.write_paused:
            return now  # polled: a transport that never calls resume_writing
        handler = self.handler
        idle = handler.idle_timeout
        if not idle or self.paused:
            return None
        if handler.send_pings and not self.ping_sent:
            return self.last_inbound + (idle - self.server.ping_margin)
        return self.last_inbound + idle

    def _refile_timers(self) -> None:
        """A deadline moved earlier: tell the server's tick (later ones need not)."""
        self.server.timers.schedule(self.conn, self.next_check(self.server.clock()))

    # ================================================================ handlers
    def call(self, name: str, fn: Any, *args: Any) -> None:
        """Run handler ``fn(*args)``; an exception goes to ``handler_error``, a
        coroutine becomes a task."""
        try:
            result = fn(*args)
        except Exception as exc:
            self.handler_error(exc)
            return
        if result is not None and name in self.handler.async_handlers:
            self.spawn(result)

    def spawn(self, coro: Any) -> None:
        """Run an async handler as a task; its exception reaches ``error(exc, ws)``."""
        task = self.server.create_task(coro)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled():
            exc = task.exception()
            if exc is not None and isinstance(exc, Exception):
                self.handler_error(exc)

    def handler_error(self, exc: Exception) -> None:
        """Route a handler exception to ``error(exc, ws)``, or log it and close 1011."""
        ws = self.ws
        on_error = self.handler.error
        if on_error is not None:
            try:
                result = on_error(exc, ws)
                if result is not None and "error" in self.handler.async_handlers:
                    self.server.create_task(result)
                return
            except Exception as second:
                logger.error("error handler raised", exc_info=second)
        else:
            logger.error("unhandled exception in a websocket handler", exc_info=exc)
        if ws.ready_state == 1:
            ws.close(1011, "Internal error")
