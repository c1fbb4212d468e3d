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


# ---------------------------------------------------------------- server output parsers
# Used by the server-level targets (fuzz_handshake.py, fuzz_topics.py) to check what
# a real Connection wrote to its stub transport. Plain Python; raise AssertionError.

def parse_server_frames(data: bytes, rsv1_ok: bool = False) -> list[tuple[int, bytes, bool]]:
    """Split server-to-client bytes into ``(opcode, payload, rsv1)`` frames.

    Every byte must belong to a complete, well-formed server frame: unmasked,
    RSV2/RSV3 clear (RSV1 only on a first data frame when ``rsv1_ok``), a known
    opcode, control frames unfragmented and <= 125 bytes, minimal length encoding,
    Close payloads empty or a valid code plus UTF-8 reason, nothing after Close.
    """
    frames: list[tuple[int, bytes, bool]] = []
    mv = memoryview(bytes(data))
    i, n = 0, len(mv)
    in_message = False
    while i < n:
        assert not frames or frames[-1][0] != 8, ("bytes after a Close frame", bytes(mv[i:i + 16]))
        assert n - i >= 2, ("truncated frame header", bytes(mv[i:]))
        b0, b1 = mv[i], mv[i + 1]
        fin, rsv1, opcode = bool(b0 & 0x80), bool(b0 & 0x40), b0 & 0x0F
        assert not b0 & 0x30, ("RSV2/RSV3 set", hex(b0))
        assert not b1 & 0x80, "server frame is masked"
        length = b1 & 0x7F
        i += 2
        if length == 126:
            assert n - i >= 2, "truncated 16-bit length"
            length = int.from_bytes(mv[i:i + 2], "big")
            assert length >= 126, ("non-minimal 16-bit length", length)
            i += 2
        elif length == 127:
            assert n - i >= 8, "truncated 64-bit length"
            length = int.from_bytes(mv[i:i + 8], "big")
            assert length >= 65536 and length < 1 << 63, ("bad 64-bit length", length)
            i += 8
        assert n - i >= length, ("truncated payload", length, n - i)
        payload = bytes(mv[i:i + length])
        i += length
        assert opcode in (0, 1, 2, 8, 9, 10), ("bad opcode", opcode)
        if opcode >= 8:
            assert fin and length <= 125 and not rsv1, ("bad control frame", opcode, fin, length, rsv1)
            if opcode == 8:
                assert length != 1, "Close payload of 1 byte"
                if length:
                    code = int.from_bytes(payload[:2], "big")
                    assert 1000 <= code <= 4999 and code not in (1004, 1005, 1006, 1015), ("bad close code", code)
                    payload[2:].decode("utf-8")
        else:
            assert (opcode == 0) == in_message, ("fragmentation out of order", opcode, in_message)
            assert not rsv1 or (rsv1_ok and opcode != 0), ("unexpected RSV1", opcode)
            in_message = not fin
        frames.append((opcode, payload, rsv1))
    return frames


def parse_http_output(data: bytes) -> tuple[list[tuple[int, dict[str, str]]], bytes]:
    """Split what a server wrote in its HTTP phase into responses.

    Returns ``([(status, headers), ...], rest)`` where ``rest`` is what follows a
    ``101`` (WebSocket frames) or ``b""``. Each response must start with
    ``HTTP/1.1 NNN ``, have a complete head with a Content-Length (except 1xx,
    101, 204, 304), and a body of that length, or none at all when the next bytes
    start another response (the answer to a HEAD request).
    """
    responses: list[tuple[int, dict[str, str]]] = []
    data = bytes(data)
    i = 0
    while i < len(data):
        assert data.startswith(b"HTTP/1.1 ", i), ("not an HTTP/1.1 status line", data[i:i + 40])
        status_txt = data[i + 9:i + 12]
        assert len(status_txt) == 3 and status_txt.isdigit() and data[i + 12:i + 13] == b" ", (
            "bad status", data[i:i + 40])
        end = data.find(b"\r\n\r\n", i)
        assert end >= 0, ("incomplete response head", data[i:i + 200])
        lines = data[i:end].decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            assert sep and name and name == name.strip(), ("bad header line", line)
            headers[name.lower()] = value.strip()
        status = int(status_txt)
        responses.append((status, headers))
        i = end + 4
        if status == 101:
            return responses, data[i:]
        if 100 <= status < 200 or status in (204, 304):
            continue
        assert "content-length" in headers, ("response without Content-Length", lines)
        length = int(headers["content-length"])
        if data.startswith(b"HTTP/1.1 ", i) or i == len(data):
            continue  # HEAD answer (no body) or a body-less answer
        assert len(data) - i >= length, ("truncated body", length, len(data) - i)
        i += length
    return responses, b""


def split_http_responses(
    data: bytes, no_body: Callable[[int], bool], allow_partial: bool = False
) -> tuple[list[tuple[int, int, dict[str, str], bytes]], bytes, bool]:
    """Split HTTP-phase output into ``(position, status, headers, body)`` responses.

    Unlike :func:`parse_http_output` it needs no guess about HEAD answers: ``no_body(p)``
    says whether the ``p``-th final answer (1xx interim answers other than 101 are not
    counted) has no body although it has a Content-Length (it answers a HEAD request). ``position`` is that count, so a ``100 Continue``
    carries the position of the final answer it precedes. Returns the responses, what
    follows a ``101`` and whether the data ended inside a response, which only
    ``allow_partial`` accepts (an aborted transport drops what was not read).
    """
    out: list[tuple[int, int, dict[str, str], bytes]] = []
    data = bytes(data)
    i, position = 0, 0
    while i < len(data):
        end = data.find(b"\r\n\r\n", i)
        if end < 0 and allow_partial:  # a head cut short: still the start of a status line
            tail = data[i:i + 9]
            assert b"HTTP/1.1 ".startswith(tail), ("not an HTTP/1.1 status line", data[i:i + 40])
            return out, b"", True
        assert data.startswith(b"HTTP/1.1 ", i), ("not an HTTP/1.1 status line", data[i:i + 40])
        status_txt = data[i + 9:i + 12]
        assert status_txt.isdigit() and data[i + 12:i + 13] == b" ", ("bad status", data[i:i + 40])
        assert end >= 0, ("incomplete response head", data[i:i + 200])
        lines = data[i:end].decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            assert sep and name and name == name.strip(), ("bad header line", line)
            assert name.lower() not in headers, ("repeated header", name)
            headers[name.lower()] = value.strip()
        status = int(status_txt)
        i = end + 4
        if status == 101:
            out.append((position, status, headers, b""))
            return out, data[i:], False
        if 100 <= status < 200:
            out.append((position, status, headers, b""))
            continue
        body = b""
        if status not in (204, 304):
            assert "content-length" in headers, ("response without Content-Length", lines)
            length = int(headers["content-length"])
            if not no_body(position):
                if len(data) - i < length:
                    assert allow_partial, ("truncated body", length, len(data) - i)
                    return out, b"", True
                body = data[i:i + length]
                i += length
        out.append((position, status, headers, body))
        position += 1
    return out, b"", False


def whole_frames_prefix(data: bytes) -> int:
    """Length of the longest prefix of ``data`` made of whole (unmasked) frames: what an
    aborted connection delivered before it was cut, for :func:`parse_server_frames`."""
    i, n = 0, len(data)
    while n - i >= 2:
        length, head = data[i + 1] & 0x7F, 2
        if length == 126:
            head = 4
        elif length == 127:
            head = 10
        if n - i < head:
            break
        if head > 2:
            length = int.from_bytes(data[i + 2:i + head], "big")
        if n - i < head + length:
            break
        i += head + length
    return i
