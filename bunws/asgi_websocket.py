"""The ASGI ``websocket`` bridge: one app call on one bunws WebSocket session.

The handshake is decided by the app (``websocket.accept`` upgrades through
``Server.upgrade``; ``websocket.close`` before it is a 403; the denial-response
extension sends the app's own answer). After the upgrade, the frames, the close
handshake, permessage-deflate, ``max_payload_length``, the idle timeout and pings
are the native session's; this module only turns handler calls into ASGI messages
and ASGI messages into sends. Flow control: inbound messages queue up to
``RECEIVE_QUEUE`` and then the socket pauses until the app receives; ``send``
awaits while the socket has more than ``send_limit`` bytes buffered.

Topics: ``websocket.subscribe`` / ``websocket.unsubscribe`` / ``websocket.publish``
messages, or the :class:`Topics` object that :func:`bunws.asgi.topics` returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from .asgi_http import ClientDisconnected, HTTPCycle
from .errors import ClosedError, HandshakeError, InvalidArgument
from .http import Request, Response, check_upgrade_request
from .options import WebSocketHandler
from .protocol import Phase

if TYPE_CHECKING:
    from .server import Server
    from .websocket import ServerWebSocket

__all__ = ["RECEIVE_QUEUE", "Topics", "WebSocketBridge", "bridge_handler", "handshake_problem", "websocket_scope"]

logger = logging.getLogger("bunws")

RECEIVE_QUEUE = 16  # inbound messages held for an app that does not receive; then reading pauses
TOPIC_EXTENSIONS = ("websocket.subscribe", "websocket.unsubscribe", "websocket.publish")


def websocket_scope(
    req: Request, root_path: str, state: dict[str, Any] | None, extensions: dict[str, Any]
) -> dict[str, Any]:
    """The ASGI ``websocket`` scope of an upgrade request."""
    scope = HTTPCycle.scope(req, root_path, state, extensions)
    scope["type"] = "websocket"
    scope["scheme"] = "wss" if req.scheme == "https" else "ws"
    del scope["method"]
    offered = req.headers.get("sec-websocket-protocol", "")
    scope["subprotocols"] = [p.strip() for p in offered.split(",") if p.strip()]
    return scope


class Topics:
    """Bun's topics for one ASGI WebSocket (or, from an HTTP scope, the server's).

    ``subscribe``/``unsubscribe``/``is_subscribed`` need an accepted WebSocket;
    ``publish`` from a socket leaves the sender out unless ``publish_to_self``;
    ``publish`` from an HTTP scope reaches every subscriber.
    """

    __slots__ = ("_server", "_bridge")

    def __init__(self, server: Server, bridge: WebSocketBridge | None = None) -> None:
        self._server = server
        self._bridge = bridge

    def _socket(self) -> ServerWebSocket:
        ws = self._bridge.ws if self._bridge is not None else None
        if ws is None:
            raise ClosedError("topics need an accepted WebSocket (after websocket.accept)")
        return ws

    def subscribe(self, topic: str) -> bool:
        """Subscribe this WebSocket to ``topic``."""
        return self._socket().subscribe(topic)

    def unsubscribe(self, topic: str) -> bool:
        """Unsubscribe this WebSocket from ``topic``."""
        return self._socket().unsubscribe(topic)

    def is_subscribed(self, topic: str) -> bool:
        """Whether this WebSocket is subscribed to ``topic``."""
        return self._socket().is_subscribed(topic)

    def publish(self, topic: str, data: str | bytes | bytearray | memoryview, compress: bool = False) -> int:
        """Send ``data`` to every subscriber of ``topic`` (Bun's publish status)."""
        if self._bridge is None:
            return self._server.publish(topic, data, compress)
        return self._socket().publish(topic, data, compress)

    def subscriber_count(self, topic: str) -> int:
        """Sockets subscribed to ``topic`` in this process."""
        return self._server.subscriber_count(topic)


class WebSocketBridge:
    """The ``receive``/``send`` pair of one ASGI WebSocket and its native socket."""

    __slots__ = (
        "req", "server", "send_limit", "ws", "decision", "inbox", "waiter", "state",
        "denial", "denial_body", "close_code", "connect_sent", "topics", "send_waiter", "accept_headers", "closed_here",
        "loop", "receive_window", "hang_up_on_end",
    )

    def __init__(
        self, req: Request, server: Server, send_limit: int, accept_headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
        receive_window: int = RECEIVE_QUEUE, hang_up_on_end: bool = False,
    ) -> None:
        self.req = req
        self.receive_window = receive_window  # unreceived messages held before reading pauses
        self.hang_up_on_end = hang_up_on_end  # an app that ends early: drop TCP, no Close frame
        self.accept_headers = accept_headers
        self.closed_here = False  # the close started on this side (no peer reason to report)
        self.server = server
        self.loop = server.loop
        self.send_limit = send_limit
        self.ws: ServerWebSocket | None = None
        self.decision: asyncio.Future[Any] = server.loop.create_future()  # fetch's answer
        self.inbox: deque[dict[str, Any]] = deque()
        self.waiter: asyncio.Future[dict[str, Any]] | None = None  # receive() waiting: gets the next message
        self.state = "connecting"  # connecting -> open -> closed
        self.denial: tuple[int, list[tuple[str, str]]] | None = None
        self.denial_body = bytearray()
        self.close_code: int | None = None
        self.connect_sent = False
        self.topics = Topics(server, self)
        self.send_waiter: asyncio.Future[None] | None = None  # send() waiting for drain

    # ------------------------------------------------------------------ the handshake
    async def handshake(self, app: Any, scope: dict[str, Any]) -> Response | None:
        """Run the app as a task; return what the HTTP front answers (None: upgraded)."""
        task = self.server.create_task(self._run(app, scope))
        conn = self.req.connection
        try:
            while not self.decision.done():
                # A client that leaves before the app decides: the app's receive()
                # gets websocket.disconnect (1006) instead of waiting for ever.
                lost = conn.wait_writable()
                await asyncio.wait((self.decision, lost), return_when=asyncio.FIRST_COMPLETED)
                lost.cancel()
                if conn.phase is Phase.CLOSED:
                    self._decide(Response(None, 500))  # nobody reads it; the app learns of the loss
            return self.decision.result()
        except asyncio.CancelledError:
            task.cancel()
            raise

    async def _run(self, app: Any, scope: dict[str, Any]) -> None:
        try:
            result = await app(scope, self.receive, self.send)
        except Exception as exc:
            if self.state == "closed":
                # Frameworks raise their own "disconnected" error out of the app.
                logger.debug("ASGI app raised after its WebSocket closed: %r", exc)
            else:
                logger.error("ASGI app raised on a WebSocket %s", self.req.target, exc_info=exc)
            self._decide(self._answer_after_error())
            if self.ws is not None and self.ws.ready_state == 1:
                if self.hang_up_on_end:
                    self.req.connection.session.hang_up()
                else:
                    self.ws.close(1011, "Internal error")
            return
        if self.state == "connecting":
            if self.denial is None:
                logger.error("ASGI app returned without accepting or closing %s", self.req.target)
            self._decide(self._answer_after_error())
        elif self.ws is not None and self.ws.ready_state == 1:
            if result is not None:  # not an ASGI app: no orderly close for what it did
                logger.error("ASGI app returned %r instead of None on %s", result, self.req.target)
                self.ws.terminate()
            elif self.hang_up_on_end:
                self.req.connection.session.hang_up()
            else:
                self.close(1000)

    def _answer_after_error(self) -> Response:
        """What the client gets when the app fails before deciding: the denial it
        started (its status and headers, the body so far), or a 500."""
        if self.denial is not None:
            status, headers = self.denial
            if 100 <= status <= 599:
                return Response(bytes(self.denial_body), status, headers)
        return Response("Internal Server Error", 500)

    def _decide(self, answer: Response | None) -> None:
        if not self.decision.done():
            self.decision.set_result(answer)
        if answer is not None and self.state == "connecting":
            self.state = "closed"
            self._push({"type": "websocket.disconnect", "code": 1006})

    # ------------------------------------------------------------------ receive
    async def receive(self) -> dict[str, Any]:
        """``websocket.connect``, then the messages, then ``websocket.disconnect``."""
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        inbox = self.inbox
        if not inbox:
            if self.state == "closed" and self.close_code is None:
                return {"type": "websocket.disconnect", "code": 1006}
            # The next message is handed over as this future's result (_push), not
            # through the inbox.
            waiter = self.waiter = self.loop.create_future()
            try:
                return await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    inbox.appendleft(waiter.result())  # handed over, not taken: kept for the next receive()
                raise
            finally:
                if self.waiter is waiter:
                    self.waiter = None
        message = inbox.popleft()
        ws = self.ws
        if ws is not None and ws.is_paused and len(inbox) < max(1, self.receive_window // 2):
            ws.resume()
        return message

    def _push(self, message: dict[str, Any]) -> None:
        """To the app waiting in receive() (no queueing), else into the inbox."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.waiter = None
            waiter.set_result(message)
        else:
            self.inbox.append(message)

    # handler calls (bridge_handler routes them here) ------------------------------
    def opened(self, ws: ServerWebSocket) -> None:
        """The ``open`` handler: the upgrade is done, ``ws`` is the native socket."""
        self.ws = ws
        self.state = "open"

    def message(self, ws: ServerWebSocket, data: Any) -> None:
        """The ``message`` handler: queue it for ``receive()``, pause reading when full."""
        if type(data) is str:
            message = {"type": "websocket.receive", "text": data}
        else:
            message = {"type": "websocket.receive", "bytes": data if type(data) is bytes else bytes(data)}
        self._push(message)
        if len(self.inbox) >= self.receive_window:
            ws.pause()

    def closed(self, code: int, reason: str) -> None:
        """The ``close`` handler: ``websocket.disconnect`` for ``receive()``."""
        self.state = "closed"
        self.close_code = code
        message: dict[str, Any] = {"type": "websocket.disconnect", "code": code}
        if code != 1006 and not self.closed_here:
            message["reason"] = reason  # what the peer's Close frame said
        self._push(message)
        self.drained()  # a send waiting for the buffer to drain learns it never will

    def drained(self) -> None:
        """The ``drain`` handler: a ``send`` waiting for the buffer goes on."""
        waiter, self.send_waiter = self.send_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ send
    async def send(self, message: dict[str, Any]) -> None:
        """Accept, deny, send text/bytes, close, or a topic message."""
        kind = message["type"]
        if self.state == "connecting":
            self._before_accept(kind, message)
            return
        ws = self.ws
        if self.state == "closed" or ws is None or ws.ready_state != 1:
            raise ClientDisconnected(f"{kind} on a closed WebSocket")
        if kind == "websocket.send":
            text = message.get("text")
            if ws.buffered_amount > self.send_limit:
                await self._drain(ws)
            if text is not None:
                ws.send_text(text, True)
            else:
                data = message.get("bytes")
                if data is None:
                    raise InvalidArgument("websocket.send needs 'text' or 'bytes'")
                ws.send_binary(data, True)
        elif kind == "websocket.close":
            self.close(message.get("code") or 1000, message.get("reason") or "")
        elif kind == "websocket.publish":
            text = message.get("text")
            ws.publish(message["topic"], text if text is not None else message["bytes"], True)
        elif kind == "websocket.subscribe":
            ws.subscribe(message["topic"])
        elif kind == "websocket.unsubscribe":
            ws.unsubscribe(message["topic"])
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on an open WebSocket")

    def close(self, code: int, reason: str = "") -> None:
        """Close the WebSocket from this side (the app, or a server shutting down)."""
        ws = self.ws
        if ws is not None and ws.ready_state == 1:
            self.closed_here = True
            ws.close(code, reason)

    async def _drain(self, ws: ServerWebSocket) -> None:
        while ws.ready_state == 1 and ws.buffered_amount > self.send_limit:
            waiter = self.send_waiter = self.server.loop.create_future()
            await waiter
        if ws.ready_state != 1:
            raise ClientDisconnected("the WebSocket closed while send waited")

    def _before_accept(self, kind: str, message: dict[str, Any]) -> None:
        if kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.close":
            self._decide(Response(None, 403))
        elif kind == "websocket.http.response.start":
            if self.denial is not None:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.http.response.body' but got 'websocket.http.response.start'.")
            headers = [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in message.get("headers", ())]
            self.denial = (message["status"], headers)
        elif kind == "websocket.http.response.body":
            if self.denial is None:
                raise RuntimeError("websocket.http.response.body before websocket.http.response.start")
            self.denial_body += message.get("body", b"")
            if not message.get("more_body", False):
                status, headers = self.denial
                self._decide(Response(bytes(self.denial_body), status, headers))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} before websocket.accept")

    def _accept(self, message: dict[str, Any]) -> None:
        given = [*self.accept_headers, *message.get("headers", ())]
        headers = [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in given]
        headers.append(("Sec-WebSocket-Protocol", message.get("subprotocol") or ""))
        if self.server.upgrade(self.req, data=self, headers=headers):
            self._decide(None)
        else:
            self._decide(Response(None, 400))


def handshake_problem(req: Request) -> Response | None:
    """The answer for an upgrade request that is not a valid WebSocket handshake
    (the app is not called for it), as the native front gives it."""
    if not req.headers.get("sec-websocket-key", "").strip():
        return Response("Missing Sec-WebSocket-Key header", 400)  # the commonest mistake, named
    try:
        check_upgrade_request(req)
    except HandshakeError as exc:
        if exc.status == 426:
            return Response(None, 426, [("Sec-WebSocket-Version", "13")])
        return Response(exc.reason, exc.status)
    return None


def bridge_handler(options: dict[str, Any], native: WebSocketHandler | None) -> WebSocketHandler:
    """The server's one :class:`WebSocketHandler`: ASGI sockets (their ``data`` is
    a :class:`WebSocketBridge`) go to their bridge, the others to ``native``'s
    handlers. With a ``native`` handler its options hold for every socket."""

    def open_(ws: Any) -> Any:
        bridge = ws.data
        if type(bridge) is WebSocketBridge:
            return bridge.opened(ws)
        return native.open(ws) if native is not None and native.open is not None else None

    def message(ws: Any, data: Any) -> Any:
        bridge = ws.data
        if type(bridge) is WebSocketBridge:
            return bridge.message(ws, data)
        return native.message(ws, data) if native is not None and native.message is not None else None

    def close(ws: Any, code: int, reason: str) -> Any:
        bridge = ws.data
        if type(bridge) is WebSocketBridge:
            return bridge.closed(code, reason)
        return native.close(ws, code, reason) if native is not None and native.close is not None else None

    def drain(ws: Any) -> Any:
        bridge = ws.data
        if type(bridge) is WebSocketBridge:
            return bridge.drained()
        return native.drain(ws) if native is not None and native.drain is not None else None

    if native is None:
        # Nothing is dropped: an ASGI send waits for the drain instead of Bun's limit.
        handler = WebSocketHandler(
            open=open_, message=message, close=close, drain=drain,
            backpressure_limit=0, **options,
        )
        return handler
    handler = WebSocketHandler(
        open=open_, message=message, close=close, drain=drain,
        ping=native.ping, pong=native.pong, error=native.error,
        max_payload_length=native.max_payload_length,
        backpressure_limit=native.backpressure_limit,
        close_on_backpressure_limit=native.close_on_backpressure_limit,
        idle_timeout=native.idle_timeout, send_pings=native.send_pings,
        publish_to_self=native.publish_to_self,
        per_message_deflate=native.per_message_deflate,
        max_fragments=native.max_fragments,
    )
    handler.async_handlers = native.async_handlers  # the wrappers pass native coroutines on
    return handler
