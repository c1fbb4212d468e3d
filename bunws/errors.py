"""The bunws exception tree and the RFC 6455 close codes.

::

    WebSocketError
    ├── ProtocolError(close_code, reason)   the peer broke RFC 6455 / RFC 7692
    │   └── MessageTooBig                   1009: frame, message or inflated size
    ├── HandshakeError(status, reason)      a bad upgrade, answered with an HTTP status
    ├── InvalidArgument(..., ValueError)    the caller passed a value out of range
    ├── InvalidType(..., TypeError)         the caller passed a value of the wrong type
    └── ClosedError                         the socket or server is already closed

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
