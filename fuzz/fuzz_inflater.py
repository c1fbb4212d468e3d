"""Fuzz target: bunws._deflate.Inflater.decompress (RFC 7692 inflation).

    python fuzz/fuzz_inflater.py CORPUS_DIR -max_total_time=60     # atheris
    python fuzz/fuzz_inflater.py --replay crash-FILE

One input describes an Inflater (window bits 8..15, context takeover or not) and
a sequence of decompress(data, max_length, final) calls. The data is either raw
fuzz bytes, or real deflate streams (built with zlib from the input, optionally
corrupted, cut into fragments; a deflate bomb of zeros now and then).

Documented outcomes: bytes no longer than max_length, or ProtocolError /
MessageTooBig (once failed, the Inflater keeps raising ProtocolError). Findings:
  * any other exception, or output longer than ``max_length``;
  * a well-formed message (not corrupted, compressed within the window, budget
    large enough) that does not inflate back to its original bytes;
  * a message over budget that does not raise MessageTooBig.
"""

from __future__ import annotations

import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fuzzlib import Reader, run  # noqa: E402

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["bunws"]):
        import bunws.errors  # noqa: F401

from bunws._deflate import Inflater  # noqa: E402
from bunws.errors import MessageTooBig, ProtocolError  # noqa: E402

BUDGETS = (0, 1, 100, 1024, 65536, 1 << 20)


def _message(r: Reader) -> bytes:
    kind = r.byte()
    if kind < 200:
        return r.sized(600)
    if kind < 240:
        return r.take(3).ljust(1, b"x") * r.int_in(1, 30000)
    return bytes(r.int_in(0, 3 << 20))  # zeros: compresses ~1000:1 (a small bomb)


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    window_bits = r.int_in(8, 15)
    takeover = r.chance(128)
    inflater = Inflater(window_bits, not takeover)
    # Streams the peer would send: same window (8 runs as 9), maybe a bigger one.
    peer_bits = max(9, window_bits) if r.chance(220) else r.int_in(9, 15)
    window_ok = peer_bits <= max(9, window_bits)
    deflater = zlib.compressobj(r.int_in(0, 9), zlib.DEFLATED, -peer_bits)
    failed = False
    history_ok = True  # every previous message went through, so the context is in sync
    for _ in range(r.int_in(1, 6)):
        if not r.remaining:
            break
        raw_mode = r.chance(50)
        if raw_mode:
            original = None
            payload = r.sized(300)
        else:
            if not takeover:
                deflater = zlib.compressobj(6, zlib.DEFLATED, -peer_bits)
            original = _message(r)
            payload = deflater.compress(original) + deflater.flush(zlib.Z_SYNC_FLUSH)
            assert payload.endswith(b"\x00\x00\xff\xff")
            payload = payload[:-4]
        corrupted = False
        if payload and r.chance(20):
            i = r.int_in(0, len(payload) - 1)
            payload = payload[:i] + bytes([payload[i] ^ (r.byte() | 1)]) + payload[i + 1:]
            corrupted = True
        budget = r.pick(BUDGETS)
        nfrag = r.int_in(1, 4)
        cuts = sorted(r.int_in(0, len(payload)) for _ in range(nfrag - 1))
        parts = [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)])]
        out = []
        used = 0
        error = None
        try:
            for i, part in enumerate(parts):
                chunk = inflater.decompress(part, budget - used, i == len(parts) - 1)
                assert isinstance(chunk, bytes), type(chunk)
                assert len(chunk) <= max(0, budget - used), (len(chunk), budget - used)
                used += len(chunk)
                out.append(chunk)
        except ProtocolError as exc:
            error = exc
        if failed:
            assert error is not None and not isinstance(error, MessageTooBig), \
                "a failed Inflater accepted more input"
            continue
        if error is not None:
            failed = True
            assert error.close_code in (1007, 1009), error.close_code
        expected_ok = (original is not None and not corrupted and window_ok
                       and (history_ok or not takeover))
        if expected_ok:
            if len(original) <= budget:
                assert error is None, f"valid message rejected: {error!r}"
                assert b"".join(out) == original, "inflated bytes differ"
            else:
                assert isinstance(error, MessageTooBig), f"over budget, got {error!r}"
        if original is None or corrupted or error is not None:
            history_ok = False


def seeds() -> list[bytes]:
    return [b"\x07\x00\x00\x10hello", b"\xff" * 16, bytes(range(64))]


if __name__ == "__main__":
    run(test_one_input, seeds)
