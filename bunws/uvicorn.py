"""``bunws.uvicorn:WebSocketProtocol``: bunws's WebSockets inside a uvicorn server.

``uvicorn app:app --ws bunws.uvicorn:WebSocketProtocol`` keeps uvicorn for HTTP and
hands each upgrade to a bunws :class:`~bunws.protocol.Connection` that runs the
app through the same ASGI bridge as :func:`bunws.serve_asgi`
(:mod:`bunws.asgi_websocket`): the compiled frame core, permessage-deflate, flow
control and the close handshake are bunws's, with uvicorn's choices where they are
as correct (the peer's Close awaited on an open connection, ``send`` waiting while
the transport holds unsent bytes, reads paused while one message waits, no Close
frame for an app that ends without one, its keepalive, ``date_header``). Per uvicorn
``Config`` there is one bunws engine (a :class:`~bunws.Server` that never listens;
uvicorn accepts).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import weakref
from typing import Any

from .asgi import ASGIFetch
from .asgi_websocket import WebSocketBridge, bridge_handler
from .http import simple_response, without_date
from .options import WebSocketHandler
from .protocol import Connection, Phase
from .server import Server, serve

__all__ = ["WebSocketProtocol"]

_engines: weakref.WeakKeyDictionary[Any, Server] = weakref.WeakKeyDictionary()


def _pong(ws: Any, data: Any) -> None:
    """A Pong arrived: the keepalive of the connection behind ``ws`` may be answered."""
    bridge = ws.data
    if isinstance(bridge, WebSocketBridge):
        conn = bridge.req.connection
        if isinstance(conn, WebSocketProtocol):
            conn.pong_received(data)


class Engine(Server):
    """The bunws server behind one uvicorn ``Config``: its tasks (each upgrade's
    ``fetch`` and app call) are in uvicorn's ``server_state.tasks`` from the moment
    they exist, so uvicorn's shutdown waits for them as for its own."""

    def __init__(self, tasks: set[asyncio.Task[Any]], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.uvicorn_tasks = tasks

    def create_task(self, coro: Any) -> asyncio.Task[Any]:
        """A task the server keeps, listed in uvicorn's ``server_state.tasks`` too."""
        task = super().create_task(coro)
        self.uvicorn_tasks.add(task)
        task.add_done_callback(self.uvicorn_tasks.discard)
        return task


def engine(config: Any, server_state: Any, app_state: dict[str, Any]) -> Server:
    """The bunws engine serving ``config``'s app (made on first use, on the running loop)."""
    found = _engines.get(config)
    if found is not None:
        return found
    defaults = {
        name: p.default for name, p in inspect.signature(serve).parameters.items()
        if p.default is not inspect.Parameter.empty and name not in ("websocket", "sock", "backplane")
    }
    handler = bridge_handler(
        {},
        WebSocketHandler(
            pong=_pong,
            max_payload_length=int(getattr(config, "ws_max_size", 16 * 1024 * 1024)),
            # uvicorn's keepalive (WebSocketProtocol.keepalive) replaces the idle timeout.
            idle_timeout=0, send_pings=False, backpressure_limit=0,
            per_message_deflate=bool(getattr(config, "ws_per_message_deflate", False)),
        ),
    )
    fetch = ASGIFetch(
        config.loaded_app, root_path=getattr(config, "root_path", "") or "", state=app_state,
        # uvicorn's flow control: send waits while the transport holds unsent bytes
        # (it pauses the protocol as soon as one waits).
        send_limit=0,
        # uvicorn's flow control on reads too: pause while one message waits for the
        # app; and an app that ends (or fails) without websocket.close drops the TCP
        # connection, no Close frame, as uvicorn's classes do.
        receive_window=1, hang_up_on_app_end=True,
        # bunws writes its own Date in the 101; uvicorn's other defaults (Server) are kept.
        accept_headers=[(k, v) for k, v in getattr(server_state, "default_headers", []) if bytes(k).lower() != b"date"],
    )
    server = Engine(server_state.tasks, fetch, handler, **defaults)
    server.start_timers()
    _engines[config] = server
    return server


class UvicornTransport:
    """The transport as bunws sees it inside uvicorn. Two jobs:

    * uvicorn's close handshake: after our Close frame the TCP connection stays
      open until the peer's Close, then closes (FIN) — so the peer's echo never
      meets a closed socket — or until the protocol's ``close_timeout``. The
      session ends its side with ``write_eof()``; here that sends no FIN and arms
      the protocol's ``close_timer`` instead (RFC 6455 allows both orders).
    * a transport that has only the part of ``asyncio.Transport`` uvicorn's own
      protocols use (``write``, ``close``, ``is_closing``, reading pauses,
      ``get_extra_info``) is completed: its write buffer size is not known, so it
      is reported 0, or 1 while the transport has paused the protocol (at least
      one byte waits then); ``writelines`` writes the joined bytes, ``abort`` closes.
    """

    def __init__(self, transport: Any, protocol: WebSocketProtocol) -> None:
        self.transport = transport
        self.protocol = protocol
        self.writing_paused = False  # what a partial transport last told the protocol
        # The calls made per frame go straight to the transport (instance attributes
        # shadow the fallbacks below).
        self.write = transport.write
        for name in ("writelines", "get_write_buffer_size", "set_write_buffer_limits", "get_protocol",
                     "is_closing", "pause_reading", "resume_reading", "get_extra_info"):
            method = getattr(transport, name, None)
            if method is not None:
                setattr(self, name, method)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)

    def get_write_buffer_size(self) -> int:
        """Not known: 1 while the transport has paused the protocol, else 0."""
        return 1 if self.writing_paused else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Nothing to set on such a transport."""

    def writelines(self, chunks: Any) -> None:
        """One ``write`` of the joined chunks."""
        self.transport.write(b"".join(chunks))

    def get_protocol(self) -> Any:
        """The protocol this transport feeds."""
        return self.protocol

    def can_write_eof(self) -> bool:
        """True: ``write_eof`` is how the session says its Close frame is out."""
        return True

    def write_eof(self) -> None:
        """Our Close frame is out. A peer whose frames are still read gets to answer
        it with the connection open; otherwise (it broke the protocol, or missed
        its keepalive Pong) our side ends now: FIN, or close without a half-close."""
        if self.protocol.await_close_reply():
            return
        transport = self.transport
        if getattr(transport, "can_write_eof", lambda: False)():
            transport.write_eof()
        else:
            self.close()

    def close(self) -> None:
        """Close after the buffered bytes (the close handshake is over)."""
        self.protocol.cancel_close_timer()
        self.transport.close()

    def abort(self) -> None:
        """End the connection now (``close`` on a transport without ``abort``)."""
        self.protocol.cancel_close_timer()
        abort = getattr(self.transport, "abort", None)
        (abort or self.transport.close)()


class WebSocketProtocol(Connection):
    """uvicorn's WebSocket protocol interface on a bunws connection.

    As uvicorn's own classes: ``close_timeout`` (seconds) bounds the wait for the
    peer's Close after ours, ``close_timer`` is that wait's timer while it runs,
    ``ping_timer``/``ping_sent_at`` are the keepalive's, and ``send`` waits while
    the transport has paused writing.
    """

    # uvicorn (and its test-suite) hands every read to this protocol object.
    session_reads_directly = False

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        if not config.loaded:
            config.load()
        super().__init__(engine(config, server_state, app_state))
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.close_timeout = self.server.close_timeout
        self.close_timer: asyncio.TimerHandle | None = None  # waiting for the peer's Close
        # uvicorn's keepalive (keepalive()): its timers, the last Ping's time and
        # payload (None once answered), and whether it gave up on the peer.
        self.ping_timer: asyncio.TimerHandle | None = None
        self.pong_timer: asyncio.TimerHandle | None = None
        self.ping_sent_at = 0.0
        self.pending_ping_payload: bytes | None = None
        self.ping_expired = False

    def open_socket(self) -> Any:
        """The app's WebSocket while it is open, else None."""
        bridge = self.session.ws.data if self.session is not None else None
        ws = bridge.ws if isinstance(bridge, WebSocketBridge) else None
        return ws if ws is not None and ws.ready_state == 1 else None

    def keepalive(self) -> None:
        """uvicorn's keepalive: once the WebSocket is open, a Ping every
        ``ws_ping_interval`` seconds; no Pong within ``ws_ping_timeout`` closes it
        with 1011. Each Ping carries 4 random bytes, so only its own Pong counts."""
        self.ping_timer = None
        loop = self.server.loop
        ws = self.open_socket()
        if ws is None:
            if self.phase is Phase.HTTP:  # the app has not accepted yet
                self.ping_timer = loop.call_later(self.config.ws_ping_interval, self.keepalive)
            return
        self.pending_ping_payload = os.urandom(4)
        self.ping_sent_at = loop.time()
        ws.ping(self.pending_ping_payload)
        timeout = self.config.ws_ping_timeout
        if timeout is not None:
            self.pong_timer = loop.call_later(timeout, self.keepalive_expired)
        else:
            self.ping_timer = loop.call_later(self.config.ws_ping_interval, self.keepalive)

    def pong_received(self, payload: Any) -> None:
        """A Pong: if it answers the keepalive Ping, the next Ping is due one
        interval after that Ping was sent."""
        if self.pending_ping_payload is None or bytes(payload) != self.pending_ping_payload:
            return  # unsolicited, or a stale answer
        self.pending_ping_payload = None
        if self.pong_timer is not None:
            self.pong_timer.cancel()
            self.pong_timer = None
            loop = self.server.loop
            delay = max(0.0, self.config.ws_ping_interval - (loop.time() - self.ping_sent_at))
            self.ping_timer = loop.call_later(delay, self.keepalive)

    def keepalive_expired(self) -> None:
        """No Pong within ``ws_ping_timeout``: close with 1011, not waiting for a
        Close from a peer that answers nothing."""
        self.pong_timer = None
        self.pending_ping_payload = None
        ws = self.open_socket()
        if ws is not None:
            self.ping_expired = True
            ws.close(1011, "keepalive ping timeout")

    def stop_keepalive(self) -> None:
        """No more keepalive Pings (the connection is gone)."""
        for timer in (self.ping_timer, self.pong_timer):
            if timer is not None:
                timer.cancel()
        self.ping_timer = self.pong_timer = None
        self.pending_ping_payload = None

    def await_close_reply(self) -> bool:
        """Our Close frame is out: whether the peer's answer is awaited (up to
        ``close_timeout`` seconds), which needs a peer that is read and alive."""
        session = self.session
        if session is None or session.parser is None or self.ping_expired:
            return False
        if self.close_timer is None:
            self.close_timer = self.server.loop.call_later(self.close_timeout, self.close_reply_late)
        return True

    def close_reply_late(self) -> None:
        """No Close came back in time: close (abort if the peer is not reading either)."""
        self.close_timer = None
        transport = self.transport
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    def cancel_close_timer(self) -> None:
        """The wait for the peer's Close is over."""
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None

    def connection_made(self, transport: Any) -> None:
        """uvicorn hands over the transport, then replays the upgrade request."""
        self.server_state.connections.add(self)
        super().connection_made(UvicornTransport(transport, self))
        if self.config.ws_ping_interval:
            self.ping_timer = self.server.loop.call_later(self.config.ws_ping_interval, self.keepalive)

    def upgrade(self, req: Any, response_head: bytes, session: Any) -> None:
        """The 101 goes out without ``Date`` when uvicorn's ``date_header`` is off."""
        if not getattr(self.config, "date_header", True):
            response_head = without_date(response_head)
        super().upgrade(req, response_head, session)

    def pause_writing(self) -> None:
        """The transport is full (a partial transport's size is known from this)."""
        if isinstance(self.transport, UvicornTransport):
            self.transport.writing_paused = True
        super().pause_writing()

    def resume_writing(self) -> None:
        """The transport drained."""
        if isinstance(self.transport, UvicornTransport):
            self.transport.writing_paused = False
        super().resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection ended: uvicorn stops tracking it."""
        self.server_state.connections.discard(self)
        self.stop_keepalive()
        self.cancel_close_timer()
        super().connection_lost(exc)

    def shutdown(self, close_active: bool = False) -> None:  # type: ignore[override]
        """uvicorn's shutdown: an open WebSocket is closed with 1012 (service restart);
        one already waiting for the peer's Close is closed now."""
        if self.close_timer is not None:
            self.cancel_close_timer()
            self.transport.close()
            return
        session = self.session
        bridge = session.ws.data if session is not None else None
        if isinstance(bridge, WebSocketBridge):
            bridge.close(1012)
            return
        if self.phase is Phase.HTTP and self.transport is not None:
            # The upgrade is still with the app: uvicorn closes such connections now
            # (the app's receive() then gives websocket.disconnect 1006).
            self.transport.write(simple_response(503))
            self.transport.close()
            return
        super().shutdown(close_active)
