"""Types of the compiled client connection core (bunws/_client.pyx)."""

import asyncio
from typing import Any

from bunws._frame import FrameParser

class ClientCore:
    """The asyncio Protocol of one client connection: masked frames out, parsed
    messages into a bounded queue."""

    transport: asyncio.Transport | None
    started: bool
    stopped: bool
    lost: bool
    reading_paused: bool
    write_paused: bool
    def __init__(self, session: Any, loop: asyncio.AbstractEventLoop, write_limit: int,
                 max_queue: int) -> None: ...
    def connection_made(self, transport: Any) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def start(self, parser: FrameParser, deflater: Any, leftover: bytes) -> None:
        """The handshake succeeded: parse frames from now on."""
    def next_message(self) -> str | bytes | None:
        """The oldest received message, or None when none is queued."""
    def message_waiter(self) -> asyncio.Future[None] | None:
        """A future resolved when a message is queued or the stream ends; None if
        another receiver is waiting."""
    def drain_waiter_future(self) -> asyncio.Future[None]:
        """A future resolved when the transport's buffer drained."""
    @property
    def queued_messages(self) -> int: ...
    @property
    def buffered_amount(self) -> int: ...
    def send_message(self, opcode: int, payload: bytes) -> bool:
        """Queue one whole data message; True when the caller must wait to drain."""
    def send_frame(self, opcode: int, payload: bytes, fin: bool) -> bool:
        """Queue one uncompressed frame; True when the caller must wait to drain."""
    def flush(self) -> None:
        """Hand the queued frames to the transport in one write."""
