"""Type stubs for bunws._wscore: the compiled write side and dispatch of a WebSocket."""

import enum
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

BINARY_TYPES: dict[str, int]

class _DispatchSession(Protocol):
    """What :func:`dispatch` calls (implemented by :class:`bunws.session.WebSocketSession`)."""

    message: Callable[..., Any] | None
    async_message: bool
    def hold(self, events: list[Any]) -> None: ...
    def on_ping(self, payload: bytes) -> None: ...
    def on_pong(self, payload: bytes) -> None: ...
    def on_close(self, code: int, reason: str) -> None: ...
    def on_protocol_error(self, code: int, reason: str) -> None: ...
    def handler_error(self, exc: Exception) -> None: ...
    def spawn(self, coro: Any) -> None: ...

class Counters:
    """A server's traffic counters (C integers, shared by its sockets)."""

    messages_received: int
    messages_sent: int
    bytes_received: int
    bytes_sent: int
    sends_backpressured: int
    sends_dropped: int
    drains: int
    deliveries: int
    def snapshot(self) -> dict[str, int]:
        """The counters as a dict of ints."""

class WebSocketCore:
    """Write-side state and send methods of :class:`bunws.ServerWebSocket`."""

    data: Any
    @property
    def ready_state(self) -> int:
        """1 while open, 3 once closed (Bun never reports 0 or 2)."""
    @property
    def is_paused(self) -> bool:
        """``pause()`` is in effect: inbound messages are held back."""
    @property
    def write_paused(self) -> bool:
        """Bytes are waiting in the transport (sends now return -1)."""
    @property
    def buffered_amount(self) -> int:
        """Bytes of complete frames waiting in user space or the transport."""
    def get_buffered_amount(self) -> int:
        """The same as :attr:`buffered_amount` (Bun's ``getBufferedAmount()``)."""
    binary_type: str
    def send(self, data: str | bytes | bytearray | memoryview, compress: bool = False) -> int:
        """Send ``str`` as text, bytes-like as binary. Returns the payload byte count,
        -1 when queued behind buffered bytes, 0 when dropped or empty."""
    def send_text(self, data: str, compress: bool = False) -> int:
        """Send a text frame (``data`` must be a ``str``); the status is :meth:`send`'s."""
    def send_binary(self, data: bytes | bytearray | memoryview, compress: bool = False) -> int:
        """Send a binary frame (``data`` must be bytes-like); the status is :meth:`send`'s."""
    def ping(self, data: str | bytes | bytearray | memoryview = b"") -> int:
        """Send a Ping; payload at most 125 bytes (InvalidArgument otherwise)."""
    def pong(self, data: str | bytes | bytearray | memoryview = b"") -> int:
        """Send an unsolicited Pong; payload at most 125 bytes."""
    def cork(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(ws)``; everything it sends leaves in one write afterwards."""
    # engine interface (bunws.session)
    def attach(
        self,
        transport: Any,
        loop: Any,
        limit: int,
        close_on_limit: bool,
        on_over_limit: Callable[[WebSocketCore], Any],
        deflater: Any = None,
        shared_deflate: bool = False,
        counters: Counters | None = None,
    ) -> None:
        """Wire the socket to its transport and options (once, at upgrade)."""
    def run_corked(self, fn: Callable[..., T], *args: Any) -> T:
        """The one cork helper: ``fn(*args)`` with every send it makes in one write."""
    def check_thread(self) -> None:
        """Raise ``WrongThreadError`` unless called on the socket's event loop thread."""
    def flush(self) -> None:
        """Hand the queued bytes to the transport in one write."""
    def binary(self, payload: bytes) -> bytes | bytearray | memoryview:
        """A received binary payload as :attr:`binary_type` says."""
    def queue_pong(self, payload: bytes) -> None:
        """Answer a Ping; while the transport is full only the latest pong is kept back."""
    def send_keepalive(self) -> None:
        """The idle timer's empty Ping (not subject to the backpressure limit)."""
    def queue_close(self, code: int | None, reason: str) -> None:
        """The Close frame, after everything queued (``code`` None: empty payload)."""
    def transport_paused(self) -> None:
        """The transport's buffer filled up: later sends report -1 until it drains."""
    def transport_resumed(self) -> bool:
        """The transport's buffer is empty again: send the pong kept back; returns
        whether ``drain`` is due."""
    def hold_inbound(self, held: bool) -> None:
        """Mirror of ``pause()``/``resume()`` that :func:`dispatch` checks per event."""
    def mark_closed(self) -> bool:
        """Closed: drop everything queued; returns whether it was open."""
    def release(self) -> None:
        """The connection is gone: drop what ties the socket to its session and compressor."""
    @property
    def high_water(self) -> int:
        """The transport's high-water mark: 0 on TCP, 1 on TLS (so "paused" means
        "bytes are waiting" on both)."""
    @property
    def counters(self) -> Counters:
        """The counters this socket counts into."""

def as_bytes(data: Any, what: str) -> bytes:
    """``bytes`` of a bytes-like argument; InvalidType for anything else."""

def encode_text(text: str, what: str = "send") -> bytes:
    """UTF-8 of ``text``; InvalidArgument (a ValueError) when it holds a lone surrogate."""

def dispatch(
    ws: WebSocketCore, events: list[Any], session: _DispatchSession, nbytes: int = 0
) -> None:
    """Deliver ``events`` (flat ``[opcode, payload, ...]``) to ``session``, inside one cork;
    ``nbytes`` (their wire size) is counted as received."""
def fan_out(
    receivers: dict[Any, None],
    opcode: int,
    payload: bytes,
    compress: bool,
    exclude: Any,
    flush_list: list[Any],
) -> int:
    """Queue one published frame by reference on every receiver; returns Bun's publish status."""
def flush_queued(pending: list[Any]) -> None:
    """End of tick: one write per receiver for everything published to it."""

class SessionState(enum.IntEnum):
    """Where the close handshake is (``ws.ready_state`` reports Bun's 1 or 3)."""

    OPEN = 1
    CLOSING = 2
    CLOSED = 3

class SessionCore:
    """The compiled read side of an upgraded connection (the base of
    :class:`bunws.session.WebSocketSession`, which provides ``closing_data``)."""

    ws: WebSocketCore
    parser: Any
    receive_buffer: Any
    state: SessionState
    backlog: list[Any] | None
    last_inbound: float
    deadline: float
    ping_sent: bool
    paused: bool
    message: Callable[..., Any] | None
    async_message: bool
    def setup(
        self,
        ws: WebSocketCore,
        parser: Any,
        receive_buffer: Any,
        clock: Callable[[], float],
        message: Callable[..., Any] | None,
        async_message: bool,
    ) -> None:
        """Wire the read path (once, by the session's constructor)."""
    def now(self) -> float:
        """The loop's clock (what the server's timer tick compares with)."""
    def get_buffer(self, sizehint: int) -> Any:
        """The server's one receive buffer."""
    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` arrived in the receive buffer."""
    def data_received(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the peer: parse the frames and dispatch them."""
