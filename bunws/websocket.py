"""``ServerWebSocket``: the socket the ``websocket`` handlers are given.

The per-message methods (``send*``, ``ping``, ``pong``, ``cork``) and the outgoing
queue are compiled in :mod:`bunws._wscore` (``WebSocketCore``, the one owner of
the socket's bytes, with Bun's send statuses: docs/bun-behaviour.md §2-§4). Here:
closing, pause/resume (through the socket's :class:`~bunws.session.WebSocketSession`)
and subscriptions (through the server's :class:`~bunws.pubsub.PubSub`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._frame import close_reason_bytes as cut_reason
from ._wscore import WebSocketCore
from .arguments import as_bytes, check_compress, check_topic
from .errors import InvalidType

if TYPE_CHECKING:
    from .pubsub import PubSub
    from .session import WebSocketSession

__all__ = ["ServerWebSocket", "SEND_DROPPED", "SEND_BACKPRESSURE"]

SEND_DROPPED = 0
SEND_BACKPRESSURE = -1


class ServerWebSocket(WebSocketCore):
    """An upgraded connection, as handed to the ``websocket`` handlers.

    Send methods (compiled, see :mod:`bunws._wscore`) return Bun's status: the
    payload byte count when the frame went to the kernel or the cork buffer, ``-1``
    (:data:`SEND_BACKPRESSURE`) when it was queued behind buffered bytes, ``0``
    (:data:`SEND_DROPPED`) when it was dropped (socket closed, or buffered amount
    already over ``backpressure_limit``) or the payload was empty (an empty frame is
    still sent).
    """

    __slots__ = (
        "_session",
        "_pubsub",
        "_topics",
        "_remote_address",
        "_publish_to_self",
        "subprotocol",
        "extensions",
    )

    def __init__(
        self,
        session: WebSocketSession,
        pubsub: PubSub,
        data: Any,
        remote_address: str | None,
        *,
        subprotocol: str | None = None,
        extensions: str | None = None,
        publish_to_self: bool = False,
    ) -> None:
        self.data = data
        self._session: WebSocketSession | None = session
        self._pubsub = pubsub
        self._topics: set[str] | None = None
        self._remote_address = remote_address
        self._publish_to_self = publish_to_self
        self.subprotocol = subprotocol
        self.extensions = extensions

    # ---------------------------------------------------------------- properties
    @property
    def remote_address(self) -> str | None:
        """The TCP peer's IP address, or ``None`` when unknown."""
        return self._remote_address

    @property
    def subscriptions(self) -> list[str]:
        """A fresh list of this socket's topics (order unspecified, as in Bun)."""
        return list(self._topics) if self._topics else []

    # ---------------------------------------------------------------- closing
    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a Close frame after everything queued, then end the connection.

        As in Bun, the code is not range-checked: its low 16 bits go on the wire,
        and codes whose low 16 bits are 0, 1005 or 1006 send an empty Close payload.
        The ``close`` handler runs synchronously inside this call.
        """
        if isinstance(code, bool) or not isinstance(code, int):
            raise InvalidType("close requires an int code")
        if reason is None:
            reason = ""
        if not isinstance(reason, str):
            raise InvalidType(f"close reason must be a str, got {type(reason).__name__}")
        self.check_thread()
        if self.ready_state != 1 or self._session is None:
            return
        self._session.close(code, cut_reason(reason).decode("utf-8"))

    def terminate(self) -> None:
        """Close the TCP connection at once, without a Close frame (handler gets 1006)."""
        self.check_thread()
        if self.ready_state == 1 and self._session is not None:
            self._session.abort(1006, "")

    def pause(self) -> None:
        """Stop dispatching inbound messages (sends keep working)."""
        self.check_thread()
        if self._session is not None:
            self._session.pause()

    def resume(self) -> None:
        """Dispatch inbound messages again, starting with those held back."""
        self.check_thread()
        if self._session is not None:
            self._session.resume()

    # ---------------------------------------------------------------- pub/sub
    def subscribe(self, topic: str) -> bool:
        """Subscribe to ``topic``: ``True`` (even if already subscribed), ``False`` once closed."""
        self.check_thread()
        check_topic(topic)
        if self.ready_state != 1:
            return False
        if self._topics is None:
            self._topics = set()
        if topic not in self._topics:
            self._topics.add(topic)
            self._pubsub.subscribe(topic, self)
        return True

    def unsubscribe(self, topic: str) -> bool:
        """Leave ``topic``; ``True`` only when the socket was subscribed to it."""
        self.check_thread()
        check_topic(topic)
        if self.ready_state != 1 or not self._topics or topic not in self._topics:
            return False
        self._topics.discard(topic)
        self._pubsub.unsubscribe(topic, self)
        return True

    def is_subscribed(self, topic: str) -> bool:
        """Whether this socket is subscribed to ``topic``."""
        check_topic(topic)
        return bool(self._topics) and topic in self._topics  # type: ignore[operator]

    def publish(
        self, topic: str, data: str | bytes | bytearray | memoryview, compress: bool = False
    ) -> int:
        """Publish to every subscriber of ``topic`` except this socket (unless
        ``publish_to_self``)."""
        self.check_thread()
        check_topic(topic)
        if compress is not False:
            check_compress(compress)
        return self._pubsub.publish(topic, data, compress, self._publish_exclude())

    def publish_text(self, topic: str, data: str, compress: bool = False) -> int:
        """Publish a text message (``data`` must be a ``str``) like :meth:`publish`;
        an empty topic returns 0, as in Bun."""
        if type(data) is not str:
            raise InvalidType(f"publish_text expects a str, got {type(data).__name__}")
        self.check_thread()
        if topic == "":
            return 0  # Bun returns 0 here instead of throwing (docs/bun-behaviour.md §5)
        check_topic(topic)
        if compress is not False:
            check_compress(compress)
        return self._pubsub.publish(topic, data, compress, self._publish_exclude())

    def publish_binary(
        self, topic: str, data: bytes | bytearray | memoryview, compress: bool = False
    ) -> int:
        """Publish a binary message (``data`` must be bytes-like) like :meth:`publish`."""
        self.check_thread()
        check_topic(topic)
        if compress is not False:
            check_compress(compress)
        return self._pubsub.publish(
            topic, as_bytes(data, "publish_binary"), compress, self._publish_exclude()
        )

    def _publish_exclude(self) -> ServerWebSocket | None:
        if self.ready_state != 1 or self._publish_to_self:
            return None
        return self

    def detach(self) -> None:
        """The connection is gone (the session calls it): no reference back to the
        session, so closed sockets are freed by reference counting."""
        self._session = None
        self.release()

    def unsubscribe_all(self) -> None:
        """Leave every topic (the session calls it before the ``close`` handler)."""
        topics = self._topics
        if topics:
            self._topics = None
            pubsub = self._pubsub
            for topic in topics:
                pubsub.unsubscribe(topic, self)

    def __repr__(self) -> str:
        state = {1: "open", 3: "closed"}.get(self.ready_state, "?")
        return f"<ServerWebSocket {state} {self._remote_address}>"
