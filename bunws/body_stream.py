"""``BodyStream``: a request body handed to a running ``fetch`` as it arrives.

The connection feeds it (``feed``/``finish``/``client_gone``/``refuse_too_large``)
and stops parsing while it holds more than ``STREAM_LIMIT`` bytes; the consumer
(the ASGI cycle) drains it with ``read``, which lets the connection read again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["STREAM_LIMIT", "BodyStream"]

# Body bytes kept for a fetch that has not read them yet; past it, reading pauses
# (one parse slice more may land before the pause takes effect).
STREAM_LIMIT = 64 * 1024


class BodyStream:
    """A bounded buffer between the HTTP parser (producer) and ``fetch`` (consumer)."""

    __slots__ = (
        "_loop", "_on_drained", "_chunks", "_buffered", "_received", "_high_water",
        "_complete", "_gone", "_too_large", "_discarding", "_waiter",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, on_drained: Callable[[], None]) -> None:
        self._loop = loop
        self._on_drained = on_drained  # the producer may read again
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._received = 0
        self._high_water = 0
        self._complete = False
        self._gone = False
        self._too_large = False
        self._discarding = False
        self._waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ producer
    def feed(self, data: bytes | memoryview) -> None:
        """Body bytes from the parser (dropped once :meth:`discard` was called)."""
        self._received += len(data)
        if self._discarding:
            return
        self._chunks.append(bytes(data))
        self._buffered += len(data)
        if self._buffered > self._high_water:
            self._high_water = self._buffered
        self._wake()

    def finish(self) -> None:
        """The whole body was received."""
        self._complete = True
        self._wake()

    def client_gone(self) -> None:
        """The client closed (or half-closed) before the body ended."""
        if not self._complete:
            self._gone = True
            self._wake()

    def refuse_too_large(self) -> None:
        """The body went past ``max_body_size``: nothing more of it comes."""
        self._too_large = True
        self._chunks.clear()
        self._buffered = 0
        self._wake()

    def discard(self) -> None:
        """``fetch`` answered without reading it all: drop what is held and what comes."""
        self._discarding = True
        self._chunks.clear()
        self._buffered = 0
        self._wake()

    @property
    def full(self) -> bool:
        """More than ``STREAM_LIMIT`` bytes wait for the consumer: stop parsing."""
        return self._buffered > STREAM_LIMIT

    @property
    def received(self) -> int:
        """Body bytes received so far (kept or discarded)."""
        return self._received

    @property
    def discarding(self) -> bool:
        """Whether :meth:`discard` was called."""
        return self._discarding

    # ------------------------------------------------------------------ consumer
    @property
    def complete(self) -> bool:
        """The whole body was received (some of it may still be buffered)."""
        return self._complete

    @property
    def disconnected(self) -> bool:
        """The client left before the body ended."""
        return self._gone

    @property
    def too_large(self) -> bool:
        """The body went past ``max_body_size`` (the answer should be 413)."""
        return self._too_large

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet."""
        return self._buffered

    @property
    def high_water(self) -> int:
        """The most bytes ever buffered at once (bounded by about ``STREAM_LIMIT``)."""
        return self._high_water

    async def read(self) -> bytes:
        """What arrived since the last read, waiting for some; ``b""`` once nothing
        more comes (see :attr:`complete`, :attr:`disconnected`, :attr:`too_large`,
        :attr:`discarding`)."""
        while not self._chunks and not (self._complete or self._gone or self._too_large or self._discarding):
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        if self._too_large or self._discarding or not self._chunks:
            return b""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        was_full = self.full
        self._buffered = 0
        if was_full:
            self._on_drained()
        return data

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
