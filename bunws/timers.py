"""``TimerWheel``: which connections the server's tick looks at, and when.

Every connection says, after each look, when it next needs one (its idle, ping or
close deadline; the next tick while something must be polled; never while nothing
can expire). The wheel files it under that tick, so a tick costs one look per
connection that is due, not one per open connection: 100 000 idle WebSockets with
a 120 s idle timeout cost about 400 looks per 0.5 s tick instead of 100 000.

Deadlines that move later (every read moves the idle deadline) are not refiled:
the look at the old time finds the connection not yet due and files it again.
Whoever moves a deadline earlier (a close handshake starts, writing stalls)
refiles the connection with :meth:`TimerWheel.schedule`.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["TimerWheel"]


class TimerWheel:
    """Items filed by tick number: tick ``k`` is the one that runs at ``k * tick``.

    An item filed for time ``t`` sits under ``ceil(t / tick)``, the first tick at or
    after ``t``, so a look is never early by the clock and at most one tick late.
    """

    __slots__ = ("tick", "_buckets", "_index_of", "_next")

    def __init__(self, tick: float) -> None:
        if not tick > 0:
            raise ValueError(f"tick must be a positive number of seconds, got {tick!r}")
        self.tick = tick
        self._buckets: dict[int, dict[Any, None]] = {}
        self._index_of: dict[Any, int] = {}
        self._next: int | None = None  # the first tick not yet popped

    def __len__(self) -> int:
        """How many items are filed."""
        return len(self._index_of)

    def __contains__(self, item: Any) -> bool:
        return item in self._index_of

    def schedule(self, item: Any, when: float | None) -> None:
        """File ``item`` for a look at loop time ``when`` (a past time: the next
        tick), replacing where it was filed; ``None`` files it nowhere."""
        if when is None:
            self.cancel(item)
            return
        index = math.ceil(when / self.tick)
        if self._next is not None and index < self._next:
            index = self._next  # that tick has run: the next one looks
        old = self._index_of.get(item)
        if old == index:
            return
        if old is not None:
            self._remove(item, old)
        self._index_of[item] = index
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = {}
        bucket[item] = None

    def soon(self, item: Any) -> None:
        """File ``item`` for the next tick."""
        self.schedule(item, 0.0)

    def cancel(self, item: Any) -> None:
        """Forget ``item`` (no-op if it is not filed)."""
        old = self._index_of.pop(item, None)
        if old is not None:
            self._remove(item, old)

    def due_at(self, item: Any) -> float | None:
        """The loop time of the tick that will look at ``item`` (None: not filed)."""
        index = self._index_of.get(item)
        return None if index is None else index * self.tick

    def pop_due(self, now: float) -> list[Any]:
        """Unfile and return the items of every tick up to ``now``, in filing order
        within a tick and tick by tick."""
        last = math.floor(now / self.tick)
        start = self._next
        buckets = self._buckets
        due: list[Any] = []
        if start is None or last - start > len(buckets):
            # First pop, or the loop was away for many ticks: walk the filed ticks.
            indexes = sorted(i for i in buckets if i <= last)
        else:
            indexes = [i for i in range(start, last + 1) if i in buckets]
        index_of = self._index_of
        for index in indexes:
            bucket = buckets.pop(index)
            for item in bucket:
                del index_of[item]
            due.extend(bucket)
        if start is None or last + 1 > start:
            self._next = last + 1
        return due

    def _remove(self, item: Any, index: int) -> None:
        bucket = self._buckets[index]
        del bucket[item]
        if not bucket:
            del self._buckets[index]
