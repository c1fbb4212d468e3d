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
from .protocol import Connection, Phase
from .server import Server, serve

__all__ = ["WebSocketProtocol"]

_engines: weakref.WeakKeyDictionary[Any, Server] = weakref.WeakKeyDictionary()


def _idle_timeout(config: Any) -> int:
    """uvicorn's ping interval + timeout as bunws's idle timeout (pings before it)."""
    interval = getattr(config, "ws_ping_interval", None)
    if not interval:
        return 0
    total = interval + (getattr(config, "ws_ping_timeout", None) or 0)
    return min(max(int(total + 0.999), 8), 960)


def tracked(app: Any, tasks: set[asyncio.Task[Any]]) -> Any:
    """``app`` whose running calls are in uvicorn's ``server_state.tasks``, so that
    uvicorn's shutdown waits for them (``timeout_graceful_shutdown``) as for its own."""

    async def tracked_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await app(scope, receive, send)

    return tracked_app


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
        {
            "max_payload_length": int(getattr(config, "ws_max_size", 16 * 1024 * 1024)),
            "idle_timeout": _idle_timeout(config),
            "per_message_deflate": bool(getattr(config, "ws_per_message_deflate", False)),
        },
        None,
    )
    fetch = ASGIFetch(
        tracked(config.loaded_app, server_state.tasks), root_path=getattr(config, "root_path", "") or "", state=app_state,
        # bunws writes its own Date in the 101; uvicorn's other defaults (Server) are kept.
        accept_headers=[(k, v) for k, v in getattr(server_state, "default_headers", []) if bytes(k).lower() != b"date"],
    )
    server = Server(fetch, handler, **defaults)
    server.start_timers()
    _engines[config] = server
    return server


class WebSocketProtocol(Connection):
    """uvicorn's WebSocket protocol interface on a bunws connection."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        if not config.loaded:
            config.load()
        super().__init__(engine(config, server_state, app_state))
        self.config = config
        self.server_state = server_state
        self.app_state = app_state

    def connection_made(self, transport: Any) -> None:
        """uvicorn hands over the transport, then replays the upgrade request."""
        self.server_state.connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection ended: uvicorn stops tracking it."""
        self.server_state.connections.discard(self)
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
