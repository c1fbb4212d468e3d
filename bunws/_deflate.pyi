"""Types of the compiled permessage-deflate codec (bunws/_deflate.pyx)."""

from typing import Final

from typing_extensions import Buffer

__all__ = ["Deflater", "Inflater", "DEFAULT_LEVEL", "shared_deflater_count", "stateless_deflater"]

DEFAULT_LEVEL: Final[int]

def shared_deflater_count() -> int:
    """Number of module-level shared compressor streams created so far."""

def stateless_deflater(window_bits: int = 15, mem_level: int = 8, level: int = ...) -> Deflater:
    """The one module-level ``Deflater(no_context_takeover=True)`` for these parameters."""

class Deflater:
    """Compress whole messages for RSV1 frames (RFC 7692 §7.2.1).

    With ``no_context_takeover`` the object holds no zlib state: all Deflaters of
    the same (window_bits, mem_level, level) share one module-level stream.
    """

    @property
    def window_bits(self) -> int:
        """LZ77 window size as a power of two (9–15)."""
    @property
    def mem_level(self) -> int:
        """zlib memLevel (1–9): memory for the compressor's internal state."""
    @property
    def level(self) -> int:
        """zlib compression level (-1 is zlib's default, 0–9)."""
    @property
    def no_context_takeover(self) -> bool:
        """Every message is compressed on its own (no shared history between messages)."""
    @property
    def holds_zlib_state(self) -> bool:
        """This object owns an allocated per-connection z_stream (a stateless one never does)."""
    def __init__(
        self,
        window_bits: int = 15,
        mem_level: int = 8,
        level: int = -1,
        no_context_takeover: bool = False,
    ) -> None: ...
    def compress(self, data: Buffer | str) -> bytes:
        """Raw deflate + Z_SYNC_FLUSH, ``00 00 ff ff`` stripped; ``b""`` -> ``b"\\x00"``."""

class Inflater:
    """Inflate RSV1 messages fragment by fragment, within a byte budget.

    After it raises, an Inflater is dead: every later call raises
    ``ProtocolError(1007)``.
    """

    @property
    def window_bits(self) -> int:
        """LZ77 window size as a power of two (9–15) the peer compresses with."""
    @property
    def no_context_takeover(self) -> bool:
        """The peer resets its history between messages: nothing is kept between them."""
    @property
    def failed(self) -> bool:
        """A previous call raised: every later call raises ``ProtocolError(1007)``."""
    @property
    def holds_zlib_state(self) -> bool:
        """This object owns an allocated z_stream."""
    def __init__(self, window_bits: int = 15, no_context_takeover: bool = False) -> None: ...
    def decompress(self, data: Buffer, max_length: int, final: bool) -> bytes:
        """Inflate one fragment; raises MessageTooBig (1009) past ``max_length``,
        ProtocolError (1007) on undecodable data."""
