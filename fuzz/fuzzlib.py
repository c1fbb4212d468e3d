"""Helpers shared by the fuzz targets in this directory.

Every target exposes ``test_one_input(data: bytes)``: a deterministic function of
its input that raises only on a finding. ``run(test_one_input)`` drives it with
atheris (libFuzzer) when the target is executed as a script, and
tests/test_fuzz_smoke.py drives the same function with hypothesis-generated
inputs, so the targets need atheris only for long runs.

``Reader`` turns the fuzzer's bytes into structured choices, like atheris's
FuzzedDataProvider but in plain Python (so the smoke test and a replay of a crash
file need no atheris) and never failing: once the input is used up it returns the
lowest choice, zeros or empty bytes.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


class Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uint(self, nbytes: int) -> int:
        """Big-endian unsigned integer from up to ``nbytes`` bytes."""
        chunk = self.take(nbytes)
        return int.from_bytes(chunk, "big") if chunk else 0

    def int_in(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi] (inclusive)."""
        if hi <= lo:
            return lo
        span = hi - lo + 1
        nbytes = max(1, (span.bit_length() + 7) // 8)
        return lo + self.uint(nbytes) % span

    def boolean(self) -> bool:
        return bool(self.byte() & 1)

    def chance(self, numerator: int, denominator: int = 256) -> bool:
        """True with probability numerator/denominator for uniform input bytes."""
        return self.byte() * denominator < numerator * 256

    def pick(self, options: Sequence[T]) -> T:
        return options[self.int_in(0, len(options) - 1)]

    def take(self, n: int) -> bytes:
        n = max(0, min(n, self.remaining))
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def sized(self, max_len: int) -> bytes:
        """A length-prefixed chunk of at most ``max_len`` bytes."""
        return self.take(self.int_in(0, max_len))

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def text(self, max_len: int) -> str:
        return self.sized(max_len).decode("utf-8", "surrogateescape")


def chunked(data: bytes, reader: Reader, max_chunk: int = 64) -> list[bytes]:
    """Split ``data`` into pieces whose sizes come from ``reader`` (at least 1 byte)."""
    out = []
    i = 0
    while i < len(data):
        if reader.remaining:
            size = 1 + reader.byte() % max_chunk
        else:
            size = len(data) - i
        out.append(data[i:i + size])
        i += size
    return out


def run(test_one_input: Callable[[bytes], None], seeds: Callable[[], list[bytes]] | None = None) -> None:
    """Entry point of a target run as a script.

    ``python fuzz/fuzz_X.py [CORPUS_DIR ...] [libFuzzer flags]`` runs atheris.
    ``python fuzz/fuzz_X.py --replay FILE ...`` runs inputs once without atheris.
    An empty corpus directory is first filled with the target's seed inputs.
    """
    argv = list(sys.argv)
    if len(argv) > 1 and argv[1] == "--replay":
        for path in argv[2:]:
            with open(path, "rb") as fh:
                test_one_input(fh.read())
            print(f"ok: {path}")
        return
    if seeds is not None:
        for arg in argv[1:]:
            if not arg.startswith("-") and os.path.isdir(arg) and not os.listdir(arg):
                for i, seed in enumerate(seeds()):
                    with open(os.path.join(arg, f"seed-{i:03d}"), "wb") as fh:
                        fh.write(seed)
    import atheris  # noqa: PLC0415  (only the long runs need it)

    # Coverage feedback for the Python side (this harness's structure-building
    # code and bunws's pure-Python modules). The compiled modules give feedback
    # only when built with clang's -fsanitize=fuzzer-no-link (see README.md).
    atheris.instrument_all()
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
