"""``bunws.uvicorn:WebSocketProtocol``: bunws's WebSockets inside a uvicorn server.

``uvicorn app:app --ws bunws.uvicorn:WebSocketProtocol`` keeps uvicorn for HTTP and
hands each upgrade to a bunws :class:`~bunws.protocol.Connection` that runs the
app through the same ASGI bridge as :func:`bunws.serve_asgi`
(:mod:`bunws.asgi_websocket`): the compiled frame core, permessage-deflate, flow
control and the close handshake are bunws's. Per uvicorn ``Config`` there is one
bunws engine (a :class:`~bunws.Server` that never listens; uvicorn accepts).
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from typing import Any

from .asgi import ASGIFetch
from .asgi_websocket import WebSocketBridge, bridge_handler
from .http import simple_response
from .options import WebSocketHandler
from .protocol import Connection, Phase
from .server import Server, serve

__all__ = ["WebSocketProtocol"]

_engines: weakref.WeakKeyDictionary[Any, Server] = weakref.WeakKeyDictionary()


def _pong(ws: Any, data: Any) -> None:
    """A Pong arrived: the keepalive of the connection behind ``ws`` is answered."""
    bridge = ws.data
    if isinstance(bridge, WebSocketBridge):
        conn = bridge.req.connection
        if isinstance(conn, WebSocketProtocol):
            conn.ping_sent_at = 0.0


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
        # bunws writes its own Date in the 101; uvicorn's other defaults (Server) are kept.
        accept_headers=[(k, v) for k, v in getattr(server_state, "default_headers", []) if bytes(k).lower() != b"date"],
    )
    server = Engine(server_state.tasks, fetch, handler, **defaults)
    server.start_timers()
    _engines[config] = server
    return server


class PartialTransport:
    """A transport that has only the part of ``asyncio.Transport`` uvicorn's own
    protocols use (``write``, ``close``, ``is_closing``, reading pauses,
    ``get_extra_info``), completed for bunws: its write buffer is reported empty
    (flow control then rests on ``pause_writing``/``resume_writing``), ``writelines``
    writes the joined bytes, ``abort`` closes, there is no ``write_eof``."""

    def __init__(self, transport: Any, protocol: Any) -> None:
        self.transport = transport
        self.protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)

    def get_write_buffer_size(self) -> int:
        """Unknown, so 0: the protocol's ``pause_writing`` says when it is full."""
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Nothing to set on such a transport."""

    def writelines(self, chunks: Any) -> None:
        """One ``write`` of the joined chunks."""
        self.transport.write(b"".join(chunks))

    def abort(self) -> None:
        """``close`` (such a transport has no abort)."""
        self.transport.close()

    def can_write_eof(self) -> bool:
        """No half-close on such a transport."""
        return False

    def get_protocol(self) -> Any:
        """The protocol this transport feeds."""
        return self.protocol


TRANSPORT_METHODS = ("get_write_buffer_size", "set_write_buffer_limits", "writelines", "abort", "can_write_eof", "get_protocol")


class WebSocketProtocol(Connection):
    """uvicorn's WebSocket protocol interface on a bunws connection."""

    # uvicorn (and its test-suite) hands every read to this protocol object.
    session_reads_directly = False

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        if not config.loaded:
            config.load()
        super().__init__(engine(config, server_state, app_state))
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.ping_timer: asyncio.TimerHandle | None = None  # uvicorn's keepalive (keepalive())
        self.ping_sent_at = 0.0  # loop time of the Ping awaiting its Pong (0: none)

    def keepalive(self) -> None:
        """uvicorn's keepalive: a Ping every ``ws_ping_interval`` seconds once the
        WebSocket is open; no Pong within ``ws_ping_timeout`` closes it with 1011."""
        interval = self.config.ws_ping_interval
        bridge = self.session.ws.data if self.session is not None else None
        ws = bridge.ws if isinstance(bridge, WebSocketBridge) else None
        loop = self.server.loop
        if ws is not None and ws.ready_state == 1:
            timeout = self.config.ws_ping_timeout
            if self.ping_sent_at and timeout is not None and loop.time() - self.ping_sent_at >= timeout:
                ws.close(1011, "keepalive ping timeout")
                return
            if not self.ping_sent_at:
                self.ping_sent_at = loop.time()
                ws.ping()
            if timeout is not None and timeout < interval:
                interval = timeout  # look again when the Pong is due
        elif ws is not None or self.phase is Phase.CLOSED:
            return  # closed: no more pings
        self.ping_timer = loop.call_later(interval, self.keepalive)

    def connection_made(self, transport: Any) -> None:
        """uvicorn hands over the transport, then replays the upgrade request."""
        self.server_state.connections.add(self)
        if not all(hasattr(transport, name) for name in TRANSPORT_METHODS):
            transport = PartialTransport(transport, self)
        super().connection_made(transport)
        if self.config.ws_ping_interval:
            self.ping_timer = self.server.loop.call_later(self.config.ws_ping_interval, self.keepalive)

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection ended: uvicorn stops tracking it."""
        self.server_state.connections.discard(self)
        if self.ping_timer is not None:
            self.ping_timer.cancel()
            self.ping_timer = None
        super().connection_lost(exc)

    def shutdown(self, close_active: bool = False) -> None:  # type: ignore[override]
        """uvicorn's shutdown: an open WebSocket is closed with 1012 (service restart)."""
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
