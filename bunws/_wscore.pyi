"""Type stubs for bunws._wscore: the compiled per-message path of a ServerWebSocket."""

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

class WebSocketCore:
    """Write-side state and send methods of :class:`bunws.ServerWebSocket`."""

    data: Any
    def send(self, data: str | bytes | bytearray | memoryview, compress: bool = False) -> int:
        """Send ``str`` as text, bytes-like as binary. Returns the payload byte count,
        -1 when queued behind buffered bytes, 0 when dropped or empty."""
    def send_text(self, data: str, compress: bool = False) -> int: ...
    def send_binary(self, data: bytes | bytearray | memoryview, compress: bool = False) -> int: ...
    def ping(self, data: str | bytes | bytearray | memoryview = b"") -> int:
        """Send a Ping; payload at most 125 bytes (InvalidArgument otherwise)."""
    def pong(self, data: str | bytes | bytearray | memoryview = b"") -> int:
        """Send an unsolicited Pong; payload at most 125 bytes."""
    def cork(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(ws)``; everything it sends leaves in one write afterwards."""

def encode_text(text: str, what: str = "send") -> bytes:
    """UTF-8 of ``text``; InvalidArgument (a ValueError) when it holds a lone surrogate."""

def dispatch(conn: Any, ws: WebSocketCore, events: list[Any], start: int, handler: Any) -> None: ...
def fan_out(
    receivers: dict[Any, None],
    opcode: int,
    payload: bytes,
    compress: bool,
    exclude: Any,
    flush_list: list[Any],
) -> int: ...
def flush_queued(pending: list[Any]) -> None: ...
