"""Topics: the registry, frame-once fan-out and the end-of-tick write.

A publish encodes its frame once (and deflates once for every receiver that uses
the shared, context-free compressor) and queues the same bytes on each receiver.
Receivers are written once per event-loop iteration, so a burst of publishes
costs one ``write`` per receiver, as in uWebSockets. The per-receiver loop
(``fan_out``) and the end-of-tick write (``flush_queued``) are compiled in
:mod:`bunws._wscore`: they are the only per-receiver work.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from ._frame import Opcode
from ._wscore import encode_text, fan_out, flush_queued
from .errors import InvalidType

if TYPE_CHECKING:
    from .websocket import ServerWebSocket

__all__ = ["PubSub", "ThreadsafePublisher", "encode_message"]

logger = logging.getLogger("bunws")

_TEXT = int(Opcode.TEXT)  # plain ints: they travel into the compiled fan-out
_BINARY = int(Opcode.BINARY)


class PubSub:
    """One server's topics: ``topic -> {socket: None}`` and how publishes reach them.

    A topic disappears with its last subscriber. ``backplane`` (a
    :class:`bunws.backplane.Backplane`-like object, or ``None``) hears
    ``subscribe(topic)`` when a topic gains its first local subscriber,
    ``unsubscribe(topic)`` when it loses its last one, and ``publish(...)`` for every
    publish; it delivers what other processes published with :meth:`deliver_local`.
    """

    __slots__ = ("_topics", "_loop", "_pending", "_flush_scheduled", "_recorder",
                 "subscriptions", "backplane")

    def __init__(self, loop: asyncio.AbstractEventLoop, recorder: Any = None) -> None:
        self._topics: dict[str, dict[ServerWebSocket, None]] = {}
        self._recorder = recorder  # a StatsRecorder: publishes are counted there
        self.subscriptions = 0  # (socket, topic) pairs, kept as they change
        self._loop = loop
        self._pending: list[ServerWebSocket] = []  # receivers to write at the end of the tick
        self._flush_scheduled = False
        self.backplane: Any = None

    # ---------------------------------------------------------------- registry
    def subscribe(self, topic: str, ws: ServerWebSocket) -> None:
        """Add ``ws`` to ``topic`` (the topic's first subscriber tells the backplane)."""
        subs = self._topics.get(topic)
        if subs is None:
            self._topics[topic] = {ws: None}
            self.subscriptions += 1
            self._tell_backplane("subscribe", topic)
        elif ws not in subs:
            subs[ws] = None
            self.subscriptions += 1

    def unsubscribe(self, topic: str, ws: ServerWebSocket) -> None:
        """Remove ``ws`` from ``topic``; a topic left empty is forgotten (backplane told)."""
        subs = self._topics.get(topic)
        if subs is not None and ws in subs:
            del subs[ws]
            self.subscriptions -= 1
            if not subs:
                del self._topics[topic]
                self._tell_backplane("unsubscribe", topic)

    def _tell_backplane(self, what: str, topic: str) -> None:
        # A backplane's failure must not leave the registry half-updated or skip the
        # close handler of the socket whose unsubscribe triggered it.
        if self.backplane is None:
            return
        try:
            getattr(self.backplane, what)(topic)
        except Exception:
            logger.exception("backplane %s(%r) failed", what, topic)

    def topics(self) -> list[str]:
        """Topics with at least one local subscriber."""
        return list(self._topics)

    def count(self, topic: str) -> int:
        """Local subscribers of ``topic`` (0 for an unknown one)."""
        subs = self._topics.get(topic)
        return len(subs) if subs else 0

    def __len__(self) -> int:
        return len(self._topics)

    def __contains__(self, topic: object) -> bool:
        return topic in self._topics

    @property
    def pending_flushes(self) -> int:
        """Receivers waiting for the end-of-tick write."""
        return len(self._pending)

    # ---------------------------------------------------------------- publishing
    def publish(self, topic: str, data: Any, compress: bool, exclude: ServerWebSocket | None) -> int:
        """Publish here and through the backplane; returns Bun's local status."""
        opcode, payload = encode_message(data)
        return self.publish_encoded(topic, opcode, payload, compress, exclude)

    def publish_encoded(
        self, topic: str, opcode: int, payload: bytes, compress: bool,
        exclude: ServerWebSocket | None = None,
    ) -> int:
        """Publish an already encoded message here and through the backplane;
        returns Bun's local status."""
        if self._recorder is not None:
            self._recorder.publishes += 1
        status = self.deliver_local(topic, opcode, payload, compress, exclude)
        if self.backplane is not None:
            try:
                self.backplane.publish(topic, opcode, payload, compress)
            except Exception:  # local subscribers already have it; say what was lost
                logger.exception("backplane publish(%r) failed", topic)
        return status

    def deliver_local(
        self,
        topic: str,
        opcode: int,
        payload: bytes,
        compress: bool,
        exclude: ServerWebSocket | None = None,
    ) -> int:
        """Queue an encoded message for this process's subscribers only (the entry
        point of a backplane); returns Bun's publish status."""
        receivers = self._topics.get(topic)
        if not receivers:
            return 0
        pending = self._pending
        status = fan_out(receivers, opcode, payload, compress, exclude, pending)
        if pending and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return status

    def _flush(self) -> None:
        """End of tick: one write per receiver for everything published to it."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        flush_queued(pending)


class ThreadsafePublisher:
    """Publishes handed over from other threads, made on the loop in call order.

    A producer thread appends under a lock and wakes the loop once per batch; the
    loop drains everything queued so far in one callback. What waits is bounded in
    bytes (``limit``): past it a publish is refused (``publish`` returns False) and
    counted, so a producer faster than the loop learns it instead of growing memory.
    """

    __slots__ = ("_pubsub", "_loop", "_lock", "_queue", "_queued_bytes", "_wakeup_due",
                 "_closed", "limit", "refused")

    def __init__(self, pubsub: PubSub, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._pubsub = pubsub
        self._loop = loop
        self._lock = threading.Lock()
        self._queue: deque[tuple[str, int, bytes, bool]] = deque()
        self._queued_bytes = 0
        self._wakeup_due = False
        self._closed = False
        self.limit = limit
        self.refused = 0

    def publish(self, topic: str, opcode: int, payload: bytes, compress: bool) -> bool:
        """Queue one encoded publish from any thread; False when over the limit."""
        with self._lock:
            if self._closed:
                return False
            if self._queued_bytes + len(payload) > self.limit and self._queue:
                self.refused += 1
                return False
            self._queue.append((topic, opcode, payload, compress))
            self._queued_bytes += len(payload)
            if self._wakeup_due:
                return True
            self._wakeup_due = True
        self._loop.call_soon_threadsafe(self._drain)
        return True

    def _drain(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, deque()
            self._queued_bytes = 0
            self._wakeup_due = False
        publish = self._pubsub.publish_encoded
        for topic, opcode, payload, compress in batch:
            try:
                publish(topic, opcode, payload, compress)
            except Exception:  # one failing backplane must not lose the rest of the batch
                logger.exception("publish_threadsafe(%r) failed", topic)

    def close(self) -> None:
        """The server stopped: later calls are refused; what was queued is dropped."""
        with self._lock:
            self._closed = True
            self._queue.clear()
            self._queued_bytes = 0

    @property
    def queued_bytes(self) -> int:
        """Payload bytes handed over by other threads and not yet published."""
        return self._queued_bytes


def encode_message(data: Any) -> tuple[int, bytes]:
    """``(opcode, payload)`` for a publish: ``str`` is text, bytes-like is binary."""
    if type(data) is str:
        return _TEXT, encode_text(data, "publish")
    if isinstance(data, bytes):
        return _BINARY, data
    if isinstance(data, (bytearray, memoryview)):
        return _BINARY, bytes(data)
    raise InvalidType(f"publish expects str or bytes-like data, got {type(data).__name__}")

