"""Topic registry and frame-once fan-out.

A publish encodes its frame once (and deflates once for every receiver that uses
the shared, context-free compressor) and appends the same bytes to each receiver's
outgoing queue. Receivers are written once per event-loop iteration, so a burst of
publishes costs one ``write`` per receiver, as in uWebSockets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._frame import encode_frame
from .errors import InvalidType

if TYPE_CHECKING:
    from .websocket import ServerWebSocket

__all__ = ["TopicRegistry", "encode_message", "fan_out"]


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
                self.listener.subscribe(topic)
        else:
            subs[ws] = None

    def remove(self, topic: str, ws: ServerWebSocket) -> None:
        subs = self._topics.get(topic)
        if subs is not None:
            subs.pop(ws, None)
            if not subs:
                del self._topics[topic]
                if self.listener is not None:
                    self.listener.unsubscribe(topic)

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
        return 1, data.encode()
    if isinstance(data, bytes):
        return 2, data
    if isinstance(data, (bytearray, memoryview)):
        return 2, bytes(data)
    raise InvalidType(f"publish expects str or bytes-like data, got {type(data).__name__}")


def fan_out(
    receivers: dict[ServerWebSocket, None],
    opcode: int,
    payload: bytes,
    compress: bool,
    exclude: ServerWebSocket | None,
    flush_list: list[ServerWebSocket],
) -> int:
    """Queue one message for every receiver; return Bun's publish status (§5).

    The status is the payload size if every receiver took it, -1 if any receiver now
    has bytes buffered, 0 if nobody received it or any receiver was over its limit.
    """
    size = len(payload)
    frame = encode_frame(opcode, payload)
    deflated = None
    count = 0
    dropped = False
    buffering = False
    for ws in receivers:
        if ws is exclude:
            continue
        count += 1
        if ws._doomed:
            dropped = True
            continue
        out = ws._out
        buffered = ws._transport.get_write_buffer_size()
        limit = ws._limit
        if limit and buffered + (0 if ws._corked else len(out)) > limit:
            ws._over_limit()
            dropped = True
            continue
        if compress and size and ws._deflater is not None:
            if ws._shared_deflate:
                # Every shared-mode socket holds the same stateless deflater, so one
                # compressed frame serves all of them.
                if deflated is None:
                    deflated = encode_frame(opcode, ws._deflater.compress(payload), rsv1=True)
                out += deflated
            else:
                out += encode_frame(opcode, ws._deflater.compress(payload), rsv1=True)
        else:
            out += frame
        if buffered:
            buffering = True
        if not ws._corked and not ws._queued:
            ws._queued = True
            flush_list.append(ws)
    if not count or dropped:
        return 0
    if buffering:
        return -1
    return size
