"""The bunws exception tree and the RFC 6455 close codes.

::

    WebSocketError
    ├── ProtocolError(close_code, reason)   the peer broke RFC 6455 / RFC 7692
    │   └── MessageTooBig                   1009: frame, message or inflated size
    ├── HandshakeError(status, reason)      a bad upgrade, answered with an HTTP status
    ├── InvalidArgument(..., ValueError)    the caller passed a value out of range
    ├── InvalidType(..., TypeError)         the caller passed a value of the wrong type
    ├── ClosedError                         the socket or server is already closed
    │   └── ConnectionClosed(code, reason)  a client connection ended (bunws.connect)
    │       ├── ConnectionClosedOK          ... with 1000, 1001 or 1005 both ways
    │       └── ConnectionClosedError       ... any other way (sent_code: what we sent)
    ├── InvalidHandshake                    a server's answer to bunws.connect broke RFC 6455
    │   └── InvalidStatus(status, body)     ... it was not 101 (also a HandshakeError)
    ├── InvalidURI(..., InvalidArgument)    not a ws:// or wss:// URI
    ├── OpenTimeout(..., TimeoutError)      connect() did not open within open_timeout
    └── ConcurrencyError(..., RuntimeError) two coroutines recv() on one connection

Errors caused by the peer carry the close code that goes on the wire; errors caused
by the calling Python code also subclass ``TypeError``/``ValueError`` so that
ordinary ``except ValueError`` handling keeps working.
"""

from __future__ import annotations

import enum

__all__ = [
    "CloseCode",
    "WebSocketError",
    "ProtocolError",
    "MessageTooBig",
    "HandshakeError",
    "InvalidArgument",
    "InvalidType",
    "ClosedError",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "InvalidHandshake",
    "InvalidStatus",
    "InvalidURI",
    "OpenTimeout",
    "ConcurrencyError",
]


class CloseCode(enum.IntEnum):
    """Close codes of RFC 6455 §7.4.1 (plus the IANA registry's 1012-1014)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never on the wire
    ABNORMAL = 1006  # never on the wire
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


class WebSocketError(Exception):
    """Base class of every error bunws raises."""


class ProtocolError(WebSocketError):
    """The peer violated the protocol; ``close_code`` is what we send back."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(close_code, reason)
        self.close_code = close_code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason} (close code {self.close_code})"


class MessageTooBig(ProtocolError):
    """A frame, a reassembled message or an inflated message exceeded the limit (1009)."""

    def __init__(self, reason: str = "Received too big message") -> None:
        super().__init__(1009, reason)


class HandshakeError(WebSocketError):
    """An HTTP request could not be upgraded; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class InvalidArgument(WebSocketError, ValueError):
    """A value passed by the calling code is out of range."""


class InvalidType(WebSocketError, TypeError):
    """A value passed by the calling code has the wrong type."""


class ClosedError(WebSocketError):
    """The operation needs an open socket or a running server."""


class WrongThreadError(WebSocketError, RuntimeError):
    """A loop-only method was called from another thread (use
    ``Server.publish_threadsafe``, or ``loop.call_soon_threadsafe``)."""


class ConnectionClosed(ClosedError):
    """A client connection (:func:`bunws.connect`) has ended.

    ``code``/``reason`` are what the server sent (1006 and "" when no Close frame
    arrived); ``sent_code``/``sent_reason`` what the client sent (None if nothing).
    """

    def __init__(
        self, code: int, reason: str, sent_code: int | None = None, sent_reason: str = ""
    ) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.sent_code = sent_code
        self.sent_reason = sent_reason

    def __str__(self) -> str:
        text = f"received {self.code} ({self.reason or 'no reason'})"
        if self.sent_code is not None:
            text += f"; sent {self.sent_code} ({self.sent_reason or 'no reason'})"
        return text


class ConnectionClosedOK(ConnectionClosed):
    """The connection ended normally (1000, 1001 or 1005 received and sent)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection ended abnormally: an error close code, a protocol error
    (``sent_code`` is the code the client sent) or no Close frame at all (1006)."""


class InvalidHandshake(WebSocketError):
    """The server's answer to the opening handshake broke RFC 6455 §4.1 (a wrong
    ``Sec-WebSocket-Accept``, an extension or subprotocol that was not offered, a
    malformed HTTP response, too many redirects)."""


class InvalidStatus(HandshakeError, InvalidHandshake):
    """The server refused the upgrade: ``status`` (not 101), ``headers`` and up
    to 64 KiB of ``body``."""

    def __init__(self, status: int, reason: str, headers: object = None, body: bytes = b"") -> None:
        HandshakeError.__init__(self, status, reason)
        self.headers = headers
        self.body = body


class InvalidURI(InvalidArgument):
    """The URI given to :func:`bunws.connect` is not a valid ``ws://``/``wss://`` URI."""


class OpenTimeout(WebSocketError, TimeoutError):
    """:func:`bunws.connect` did not finish DNS, TCP, TLS and the handshake within
    ``open_timeout``."""


class ConcurrencyError(WebSocketError, RuntimeError):
    """Two coroutines called ``recv`` on one client connection at the same time."""
