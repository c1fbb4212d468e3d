"""Types of the compiled RFC 6455 frame codec (bunws/_frame.pyx)."""

import enum
from typing import Protocol

from typing_extensions import Buffer

class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 §5.2, §11.8); ``PROTOCOL_ERROR`` never goes on the
    wire (it marks a peer error in ``FrameParser.feed_events``)."""

    PROTOCOL_ERROR = -1
    CONTINUATION = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10

class _InflaterLike(Protocol):
    """What ``FrameParser(inflater=...)`` needs (RFC 7692)."""

    def decompress(self, data: bytes, max_length: int, final: bool) -> bytes:
        """Inflate one frame's payload; ``final`` is set on the message's last frame.

        Raises:
            MessageTooBig: the output would exceed ``max_length``.
            ProtocolError: 1007 "Received invalid compressed data".
        """

Payload = str | bytes | tuple[int, str]

class FrameParser:
    """Incremental RFC 6455 parser: bytes in, complete events out.

    Events are ``(opcode, payload)``: TEXT -> ``str``; BINARY, PING, PONG ->
    ``bytes``; CLOSE -> ``(code, reason)`` (``(1005, "")`` for an empty payload).
    Only whole messages are emitted; control frames received between fragments come
    out in arrival order. After a CLOSE event the rest of the input is ignored
    (RFC 6455 §5.5.1).

    Error rule: on a protocol violation the parser becomes failed and stays failed.
    If the ``feed``/``feed_flat`` call that hit the error had already completed
    events, it returns them without raising and sets ``failed``, ``close_code`` and
    ``reason``: check ``failed`` after handling them. If it had completed none, it
    raises the error. Every later call raises it again.
    """

    server: bool
    max_payload_length: int
    max_fragments: int
    inflater: _InflaterLike | None
    validate_utf8: bool
    close_code: int
    """Close code of the error once failed, else 0."""
    reason: str
    """Close reason of the error once failed, else ""."""

    def __init__(
        self,
        *,
        server: bool = True,
        max_payload_length: int = 16 * 1024 * 1024,
        max_fragments: int = -1,
        inflater: _InflaterLike | None = None,
        validate_utf8: bool = True,
    ) -> None:
        """
        Args:
            server: parse client frames (must be masked); ``False`` parses server
                frames (must not be masked).
            max_payload_length: largest data message in bytes (single frame,
                fragmented total or inflated size); ``0`` rejects any non-empty
                message. Control frames are exempt.
            max_fragments: most data frames per message, empty ones included;
                ``-1`` means ``max(1024, max_payload_length // 256)``.
            inflater: decompressor for messages whose first frame has RSV1 set.
            validate_utf8: strict RFC 3629 check of text and close reasons; when
                false, invalid sequences are decoded with ``errors="replace"``.

        Raises:
            InvalidType: a non-int limit, or an inflater without ``decompress``.
            InvalidArgument: ``max_payload_length < 0`` or ``max_fragments`` not
                ``>= 1`` and not ``-1``.
        """
    @property
    def failed(self) -> bool:
        """True once a protocol error was found."""
    @property
    def closed(self) -> bool:
        """True once a CLOSE event was emitted."""
    @property
    def buffer_capacity(self) -> int:
        """Bytes reserved for the message being received (reassembly buffer plus the
        frame being filled). It grows with the payload bytes that arrived, not with
        the length a header declares."""
    def feed(self, data: Buffer) -> list[tuple[Opcode, Payload]]:
        """Parse ``data``; return the completed events.

        Raises:
            ProtocolError: the peer broke RFC 6455 (and no event completed in this call).
            MessageTooBig: a message exceeds ``max_payload_length`` (same rule).
            InvalidType: ``data`` is not a bytes-like object.
        """
    def feed_flat(self, data: Buffer) -> list[int | Payload]:
        """Like ``feed`` but flat: ``[opcode0, payload0, opcode1, payload1, ...]``
        with plain-int opcodes."""
    def feed_events(self, data: Buffer) -> list[int | Payload | tuple[int, str]]:
        """``feed_flat`` with one error channel (the server's read path): a peer's
        protocol error never raises, it is the last event,
        ``(Opcode.PROTOCOL_ERROR, (close_code, reason))``."""

def encode_frame(
    opcode: int,
    payload: Buffer | str,
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask: Buffer | None = None,
) -> bytes:
    """Build one frame: unmasked (server) when ``mask`` is None, else masked with
    the 4-byte ``mask`` (client). ``str`` payloads are encoded as UTF-8.

    Raises:
        InvalidType: wrong argument type.
        InvalidArgument: invalid opcode, mask not 4 bytes, control payload over
            125 bytes, or a control frame with ``fin=False``.
    """

def close_reason_bytes(reason: str) -> bytes:
    """UTF-8 of ``reason`` (lone surrogates as U+FFFD), cut to at most 123 bytes at a
    character boundary: the reason part of a Close payload."""

def encode_close(code: int | None = 1000, reason: str = "") -> bytes:
    """Build a server Close frame like Bun's ``ws.close``: only the low 16 bits of
    ``code`` are sent; ``None`` or low bits 0/1005/1006 give an empty payload; the
    reason is cut to at most 123 UTF-8 bytes at a character boundary.

    Raises:
        InvalidType: code not an int/None, or reason not a str.
    """

def apply_mask(data: Buffer, mask: Buffer) -> bytes:
    """Return ``data`` XOR the repeating 4-byte ``mask`` (RFC 6455 §5.3)."""

def validate_utf8(data: Buffer) -> bool:
    """True exactly when ``bytes(data).decode("utf-8")`` would succeed (RFC 3629)."""
