"""Hand-written RFC 6455 frames for tests, in plain Python (never imports bunws).

These helpers build frames byte by byte, including invalid ones (reserved bits,
unknown opcodes, unmasked client frames, non-minimal or absurd lengths), so that
tests can feed the parser or a live server exactly what a hostile peer would send.
"""

from __future__ import annotations

import struct

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10

DEFAULT_MASK = b"\x37\xfa\x21\x3d"  # the mask of the RFC 6455 §5.7 examples


def mask_bytes(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the repeating 4-byte ``mask`` (RFC 6455 §5.3)."""
    if len(mask) != 4:
        raise ValueError("mask must be 4 bytes")
    if not data:
        return b""
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


def header(
    opcode: int,
    length: int,
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    mask: bytes | None = None,
    length_size: int | None = None,
) -> bytes:
    """A frame header. ``length_size`` forces the length encoding: 0 (7-bit),
    2 (16-bit) or 8 (64-bit), which allows non-minimal and out-of-range lengths."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0)
    b0 |= (0x10 if rsv3 else 0) | (opcode & 0x0F)
    if length_size is None:
        length_size = 0 if length < 126 else 2 if length < 65536 else 8
    mbit = 0x80 if mask is not None else 0
    if length_size == 0:
        out = bytes([b0, mbit | length])
    elif length_size == 2:
        out = bytes([b0, mbit | 126]) + struct.pack("!H", length)
    else:
        out = bytes([b0, mbit | 127]) + struct.pack("!Q", length)
    return out + (mask or b"")


def frame(
    opcode: int,
    payload: bytes | str = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    mask: bytes | None = DEFAULT_MASK,
    length_size: int | None = None,
) -> bytes:
    """A whole frame; masked with ``mask`` (a client frame) unless ``mask=None``."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    h = header(opcode, len(payload), fin=fin, rsv1=rsv1, rsv2=rsv2, rsv3=rsv3,
               mask=mask, length_size=length_size)
    return h + (mask_bytes(payload, mask) if mask is not None else payload)


def client(opcode: int, payload: bytes | str = b"", **kw) -> bytes:
    """A masked (client-to-server) frame."""
    kw.setdefault("mask", DEFAULT_MASK)
    return frame(opcode, payload, **kw)


def server(opcode: int, payload: bytes | str = b"", **kw) -> bytes:
    """An unmasked (server-to-client) frame."""
    return frame(opcode, payload, mask=None, **kw)


def close_payload(code: int | None = None, reason: bytes | str = b"") -> bytes:
    """The payload of a Close frame; ``code=None`` gives an empty payload."""
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    return struct.pack("!H", code) + reason


def fragments(opcode: int, parts: list[bytes], *, mask: bytes | None = DEFAULT_MASK) -> bytes:
    """One message split into ``parts`` (first frame carries ``opcode``)."""
    out = b""
    for i, part in enumerate(parts):
        out += frame(opcode if i == 0 else CONT, part, fin=i == len(parts) - 1, mask=mask)
    return out
