"""bunws: Bun's WebSocket server model (``Bun.serve({fetch, websocket})``) for asyncio.

The frame codec and permessage-deflate are compiled (Cython); the server is a thin
Python layer on asyncio Protocols. Start with :func:`serve` (a coroutine) or
:func:`run` (blocking, uvloop when installed). :func:`connect` is the client, on the
same compiled core.
"""

from .asgi import LifespanFailed, run_asgi, serve_asgi
from .asgi_http import ClientDisconnected
from .backplane import Backplane, RedisBackplane
from .client import ClientConnection, connect
from .errors import (
    ClosedError,
    CloseCode,
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeError,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    OpenTimeout,
    InvalidArgument,
    InvalidType,
    MessageTooBig,
    ProtocolError,
    WebSocketError,
    WrongThreadError,
)
from .http import Headers, Request, Response
from .options import WebSocketHandler
from .server import Server, run, serve
from .websocket import SEND_BACKPRESSURE, SEND_DROPPED, ServerWebSocket

__version__ = "0.1.0"

__all__ = [
    "SEND_BACKPRESSURE",
    "SEND_DROPPED",
    "Backplane",
    "ClientConnection",
    "ClientDisconnected",
    "ClosedError",
    "CloseCode",
    "ConcurrencyError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "HandshakeError",
    "InvalidHandshake",
    "InvalidStatus",
    "InvalidURI",
    "Headers",
    "InvalidArgument",
    "InvalidType",
    "LifespanFailed",
    "MessageTooBig",
    "OpenTimeout",
    "ProtocolError",
    "RedisBackplane",
    "Request",
    "Response",
    "Server",
    "ServerWebSocket",
    "WebSocketError",
    "WebSocketHandler",
    "WrongThreadError",
    "__version__",
    "connect",
    "run",
    "run_asgi",
    "serve",
    "serve_asgi",
]
