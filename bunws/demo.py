"""The demo behind ``python -m bunws``: chat rooms, an echo socket and HTTP publish.

One ``fetch`` and one :class:`~bunws.WebSocketHandler` serve everything, the way a
``Bun.serve({fetch, websocket})`` app does:

=========================================  =============================================
``GET /``                                  the chat page (``bunws/static/chat.html``)
``GET /chat?name=NAME&room=ROOM``          WebSocket: join ROOM as NAME (upgrade ``data``)
``GET /echo``                              WebSocket: every message comes straight back
``POST /rooms/ROOM/messages[?name=N]``     publish the request body (text) to ROOM
``GET /rooms``                             JSON ``{room: members}`` from ``subscriber_count``
``GET /stats``                             JSON ``server.stats()`` (every worker's, summed)
=========================================  =============================================

Wire format of ``/chat``. Client to server: a text frame is a chat line, a binary
frame a binary message. Server to client: text frames are JSON events

* ``{"type": "welcome", "name", "room", "members", "extensions"}`` (to the joiner only),
* ``{"type": "join" | "leave", "name", "room", "members"}``,
* ``{"type": "message", "name", "text"}`` (the sender gets its own lines back too),

and a binary frame is ``[1 byte n][n bytes sender name, UTF-8][payload]``.

Each room is the topic ``room:ROOM``; ``members`` is ``server.subscriber_count`` of
that topic at the time of the event. Permessage-deflate is on: every socket that
negotiated it gets compressed frames.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable
from importlib import resources
from typing import Any
from urllib.parse import unquote

from .http import Request, Response
from .options import WebSocketHandler
from .server import Server
from .websocket import ServerWebSocket
from .workers import cluster_stats

__all__ = ["ChatDemo", "MAX_NAME", "MAX_ROOM", "binary_frame", "parse_binary_frame"]

MAX_NAME = 32  # characters; longer names and rooms are cut
MAX_ROOM = 32
MAX_MESSAGE = 64 * 1024  # bytes per WebSocket message (max_payload_length)
DEFAULT_ROOM = "lobby"


def _clean(value: str, limit: int) -> str:
    """Printable text, single-line, at most ``limit`` characters."""
    return "".join(ch for ch in value if ch.isprintable()).strip()[:limit]


def binary_frame(name: str, payload: bytes) -> bytes:
    """A binary chat message as relayed to the room: name length, name, payload."""
    raw = name.encode("utf-8")[:255]
    return bytes([len(raw)]) + raw + payload


def parse_binary_frame(frame: bytes) -> tuple[str, bytes]:
    """Inverse of :func:`binary_frame` (used by the tests and by clients)."""
    n = frame[0]
    return frame[1 : 1 + n].decode("utf-8", errors="replace"), bytes(frame[1 + n :])


def _dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


class ChatDemo:
    """State and handlers of the demo app; one instance per server.

    Use ``ChatDemo().fetch`` and ``ChatDemo().websocket`` with :func:`bunws.serve` or
    :func:`bunws.run`, plus :attr:`serve_options`.
    """

    #: Options for ``serve``/``run``: browsers must come from the page's own origin
    #: (cross-site WebSocket hijacking guard); clients without ``Origin`` are let in.
    serve_options: dict[str, Any] = {"allowed_origins": "same-origin"}

    def __init__(self) -> None:
        self._page = resources.files("bunws").joinpath("static/chat.html").read_bytes()
        self._guests = itertools.count(1)
        self.rooms: set[str] = set()  # rooms that had members; pruned when empty
        self.server: Server | None = None  # set by fetch; the handlers publish through it
        self.websocket = WebSocketHandler(
            open=self._open,
            message=self._message,
            close=self._close,
            per_message_deflate=True,
            max_payload_length=MAX_MESSAGE,
            idle_timeout=120,
        )

    @property
    def _live(self) -> Server:
        assert self.server is not None  # every socket came through fetch
        return self.server

    # ------------------------------------------------------------------ HTTP
    def fetch(self, req: Request, server: Server) -> Response | Awaitable[Response] | None:
        """The ``fetch`` handler; the publish route answers from a coroutine."""
        self.server = server
        path = req.path
        if path == "/chat":
            name = _clean(req.query.get("name", ""), MAX_NAME) or f"guest-{next(self._guests)}"
            room = _clean(req.query.get("room", ""), MAX_ROOM) or DEFAULT_ROOM
            if server.upgrade(req, data={"kind": "chat", "name": name, "room": room}):
                return None
            return Response("expected a WebSocket upgrade", status=400)
        if path == "/echo":
            if server.upgrade(req, data={"kind": "echo"}):
                return None
            return Response("expected a WebSocket upgrade", status=400)
        if path == "/" or path == "/index.html":
            if req.method not in ("GET", "HEAD"):
                return Response("method not allowed", status=405, headers={"Allow": "GET, HEAD"})
            return Response(
                self._page,
                headers={"Content-Type": "text/html;charset=utf-8", "Cache-Control": "no-store"},
            )
        if path == "/rooms":
            return Response.json({room: server.subscriber_count(_topic(room)) for room in sorted(self.rooms)})
        if path == "/stats":
            return Response.json(cluster_stats(server), headers={"Cache-Control": "no-store"})
        if path.startswith("/rooms/") and path.endswith("/messages"):
            return self._http_publish(req, server, unquote(path[len("/rooms/") : -len("/messages")]))
        return Response("not found", status=404)

    async def _http_publish(self, req: Request, server: Server, room: str) -> Response:
        """Publish from an HTTP handler: ``POST /rooms/ROOM/messages`` with a text body."""
        if req.method != "POST":
            return Response("method not allowed", status=405, headers={"Allow": "POST"})
        room = _clean(room, MAX_ROOM)
        if not room:
            return Response("missing room", status=400)
        text = (await req.text())[:MAX_MESSAGE]
        name = _clean(req.query.get("name", ""), MAX_NAME) or "http"
        topic = _topic(room)
        status = server.publish(topic, _dumps({"type": "message", "name": name, "text": text}))
        return Response.json(
            {"room": room, "members": server.subscriber_count(topic), "status": status}
        )

    # ------------------------------------------------------------------ WebSocket
    def _open(self, ws: ServerWebSocket) -> None:
        data = ws.data
        if data["kind"] != "chat":
            return
        topic = _topic(data["room"])
        ws.subscribe(topic)
        self.rooms.add(data["room"])
        members = self._live.subscriber_count(topic)
        ws.send(
            _dumps(
                {
                    "type": "welcome",
                    "name": data["name"],
                    "room": data["room"],
                    "members": members,
                    "extensions": ws.extensions or "",
                }
            ),
            compress=True,
        )
        # ws.publish skips the sender: the others learn about the newcomer.
        ws.publish(
            topic,
            _dumps({"type": "join", "name": data["name"], "room": data["room"], "members": members}),
            compress=True,
        )

    def _message(self, ws: ServerWebSocket, message: str | bytes) -> None:
        data = ws.data
        if data["kind"] == "echo":
            ws.send(message, compress=True)
            return
        server = self._live
        topic = _topic(data["room"])
        # server.publish includes the sender, so everyone sees lines in one order.
        if isinstance(message, str):
            server.publish(topic, _dumps({"type": "message", "name": data["name"], "text": message}))
        else:
            server.publish(topic, binary_frame(data["name"], bytes(message)))

    def _close(self, ws: ServerWebSocket, code: int, reason: str) -> None:
        data = ws.data
        if data["kind"] != "chat":
            return
        # Subscriptions are gone before close runs, so the count excludes this socket.
        server = self._live
        topic = _topic(data["room"])
        members = server.subscriber_count(topic)
        if members == 0:
            self.rooms.discard(data["room"])
            return
        server.publish(
            topic,
            _dumps({"type": "leave", "name": data["name"], "room": data["room"], "members": members}),
        )


def _topic(room: str) -> str:
    return "room:" + room
