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
    def window_bits(self) -> int: ...
    @property
    def mem_level(self) -> int: ...
    @property
    def level(self) -> int: ...
    @property
    def no_context_takeover(self) -> bool: ...
    @property
    def holds_zlib_state(self) -> bool: ...
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
    def window_bits(self) -> int: ...
    @property
    def no_context_takeover(self) -> bool: ...
    @property
    def failed(self) -> bool: ...
    @property
    def holds_zlib_state(self) -> bool: ...
    def __init__(self, window_bits: int = 15, no_context_takeover: bool = False) -> None: ...
    def decompress(self, data: Buffer, max_length: int, final: bool) -> bytes:
        """Inflate one fragment; raises MessageTooBig (1009) past ``max_length``,
        ProtocolError (1007) on undecodable data."""
