"""Topic registry and frame-once fan-out.

A publish encodes its frame once (and deflates once for every receiver that uses
the shared, context-free compressor) and appends the same bytes to each receiver's
outgoing queue. Receivers are written once per event-loop iteration, so a burst of
publishes costs one ``write`` per receiver, as in uWebSockets.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._wscore import encode_text, fan_out, flush_queued
from .errors import InvalidType

if TYPE_CHECKING:
    from .websocket import ServerWebSocket

# The per-receiver loop (fan_out) and the end-of-tick write (flush_queued) are
# compiled in _wscore: it is the only Python-level work per receiver.
__all__ = ["TopicRegistry", "encode_message", "fan_out", "flush_queued"]

logger = logging.getLogger("bunws")


class TopicRegistry:
    """``topic -> {socket: None}``; a topic disappears with its last subscriber.

    ``listener`` (a backplane) hears ``subscribe(topic)`` when a topic gains its first
    local subscriber and ``unsubscribe(topic)`` when it loses its last one.
    """

    __slots__ = ("_topics", "listener")

    def __init__(self) -> None:
        self._topics: dict[str, dict[ServerWebSocket, None]] = {}
        self.listener: Any = None

    def add(self, topic: str, ws: ServerWebSocket) -> None:
        subs = self._topics.get(topic)
        if subs is None:
            self._topics[topic] = {ws: None}
            if self.listener is not None:
                self._tell("subscribe", topic)
        else:
            subs[ws] = None

    def remove(self, topic: str, ws: ServerWebSocket) -> None:
        subs = self._topics.get(topic)
        if subs is not None:
            subs.pop(ws, None)
            if not subs:
                del self._topics[topic]
                if self.listener is not None:
                    self._tell("unsubscribe", topic)

    def _tell(self, what: str, topic: str) -> None:
        # A listener's failure must not leave the registry half-updated or skip the
        # close handler of the socket whose unsubscribe triggered it.
        try:
            getattr(self.listener, what)(topic)
        except Exception:
            logger.exception("backplane %s(%r) failed", what, topic)

    def topics(self) -> list[str]:
        """Topics with at least one local subscriber."""
        return list(self._topics)

    def get(self, topic: str) -> dict[ServerWebSocket, None] | None:
        return self._topics.get(topic)

    def count(self, topic: str) -> int:
        subs = self._topics.get(topic)
        return len(subs) if subs else 0

    def __len__(self) -> int:
        return len(self._topics)

    def __contains__(self, topic: object) -> bool:
        return topic in self._topics


def encode_message(data: Any) -> tuple[int, bytes]:
    """``(opcode, payload)`` for a publish: ``str`` is text, bytes-like is binary."""
    if type(data) is str:
        return 1, encode_text(data, "publish")
    if isinstance(data, bytes):
        return 2, data
    if isinstance(data, (bytearray, memoryview)):
        return 2, bytes(data)
    raise InvalidType(f"publish expects str or bytes-like data, got {type(data).__name__}")
