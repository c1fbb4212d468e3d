"""bunws: Bun's WebSocket server model (``Bun.serve({fetch, websocket})``) for asyncio.

The frame codec and permessage-deflate are compiled (Cython); the server is a thin
Python layer on asyncio Protocols.
"""

from .errors import (
    ClosedError,
    CloseCode,
    HandshakeError,
    InvalidArgument,
    InvalidType,
    MessageTooBig,
    ProtocolError,
    WebSocketError,
)

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "CloseCode",
    "HandshakeError",
    "InvalidArgument",
    "InvalidType",
    "MessageTooBig",
    "ProtocolError",
    "WebSocketError",
    "__version__",
]
