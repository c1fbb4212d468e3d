"""Fuzz target: bunws._frame.FrameParser.feed (RFC 6455 frame parsing and reassembly).

    python fuzz/fuzz_frame_parser.py CORPUS_DIR -max_total_time=60     # atheris
    python fuzz/fuzz_frame_parser.py --replay crash-FILE               # re-run one input

The first input byte picks the mode: raw bytes fed as they are, or a stream of
frames built from the input (valid or slightly wrong headers, masks, lengths,
fragments, interleaved control frames, deflate-compressed messages). Parser options
(server side, payload limit, fragment limit, optional Inflater) come from the input.

Accepted outcome: a list of (opcode, payload) events, then possibly a
bunws.errors.ProtocolError (MessageTooBig included), raised or flagged by
``parser.failed`` per the parser's documented error rule. Findings (AssertionError or any other exception):
  * an unexpected exception type;
  * an item with a bad opcode, a control payload > 125 bytes, a data message longer
    than max_payload_length;
  * the stream fed in random chunks giving a different result (events, or error
    close code) than the same stream fed at once;
  * a failed parser that does not raise the same error again.
"""

from __future__ import annotations

import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fuzzlib import Reader, chunked, run  # noqa: E402

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["bunws"]):
        import bunws.errors  # noqa: F401

from bunws._deflate import Inflater  # noqa: E402
from bunws._frame import FrameParser  # noqa: E402
from bunws.errors import ProtocolError  # noqa: E402

LIMITS = (1, 2, 125, 126, 1000, 65535, 65536, 1 << 20)
FRAGMENT_LIMITS = (1, 2, 3, 8, 1024)
DATA_OPCODES = (1, 2)
CONTROL_OPCODES = (8, 9, 10)
VALID_OPCODES = (1, 2, 8, 9, 10)


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return payload
    n = len(payload)
    full = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(full, "little")).to_bytes(n, "little")


def _frame(r: Reader, opcode: int, payload: bytes, fin: bool, rsv: int, masked: bool) -> bytes:
    length = len(payload)
    style = r.byte()
    if style < 232:  # minimal length encoding
        if length < 126:
            ext = b""; l7 = length
        elif length < 65536:
            ext = length.to_bytes(2, "big"); l7 = 126
        else:
            ext = length.to_bytes(8, "big"); l7 = 127
    elif style < 240:  # non-minimal 16-bit (allowed by the parser or rejected: both fine)
        ext = min(length, 65535).to_bytes(2, "big"); l7 = 126
    elif style < 248:  # non-minimal 64-bit
        ext = length.to_bytes(8, "big"); l7 = 127
    else:  # a lie: huge or random declared length (2^63, 2^64-1, ...)
        ext = r.pick((1 << 63, (1 << 64) - 1, 1 << 62, (1 << 31), r.uint(8))).to_bytes(8, "big")
        ext = bytes([ext[0] & r.pick((0xFF, 0x7F))]) + ext[1:]
        l7 = 127
    b0 = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)
    b1 = (0x80 if masked else 0) | l7
    head = bytes((b0, b1)) + ext
    if masked:
        key = r.take(4).ljust(4, b"\0")
        return head + key + _mask(payload, key)
    return head + payload


def _payload(r: Reader, text: bool) -> bytes:
    kind = r.byte()
    if kind < 200:
        data = r.sized(300)
    elif kind < 230:  # long repetitive payloads: 16-bit and 64-bit lengths, limits
        data = r.take(4).ljust(1, b"a") * r.int_in(1, 20000)
    else:
        data = b""
    if text and r.chance(220):
        data = data.decode("utf-8", "replace").encode("utf-8")
    return data


def _stream(r: Reader, server: bool, compress_bits: int | None) -> bytes:
    """A sequence of frames described by the input."""
    out = []
    deflater = None
    if compress_bits is not None:
        deflater = zlib.compressobj(r.int_in(0, 9), zlib.DEFLATED, -compress_bits)
    for _ in range(r.int_in(1, 12)):
        if not r.remaining:
            break
        what = r.byte()
        masked = server if r.chance(245) else not server
        if what < 150:  # a data message, maybe fragmented, maybe compressed
            opcode = r.pick(DATA_OPCODES)
            data = _payload(r, opcode == 1)
            rsv1 = deflater is not None and r.chance(200)
            if rsv1:
                if r.chance(40):
                    deflater = zlib.compressobj(6, zlib.DEFLATED, -compress_bits)  # a new context
                data = deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH)
                if data.endswith(b"\x00\x00\xff\xff") and r.chance(230):
                    data = data[:-4]
            nfrag = r.int_in(1, 4)
            cuts = sorted(r.int_in(0, len(data)) for _ in range(nfrag - 1))
            parts = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                rsv = (4 if rsv1 and i == 0 else 0) | (r.uint(1) & 7 if r.chance(6) else 0)
                out.append(_frame(r, opcode if i == 0 else 0, part, last, rsv, masked))
                if not last and r.chance(40):  # a control frame between fragments
                    out.append(_frame(r, r.pick((9, 10)), r.sized(125), True, 0, masked))
        elif what < 200:  # a control frame
            opcode = r.pick(CONTROL_OPCODES)
            if opcode == 8 and r.chance(200):
                code = r.pick((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 3000, 4999,
                               999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535))
                payload = code.to_bytes(2, "big") + r.sized(130)
            else:
                payload = r.sized(130)
            fin = r.chance(240)
            out.append(_frame(r, opcode, payload, fin, 0, masked))
        elif what < 230:  # any header bits at all
            b0 = r.byte()
            out.append(_frame(r, b0 & 0x0F, r.sized(200), bool(b0 & 0x80), b0 >> 4 & 7, masked))
        else:  # raw junk
            out.append(r.sized(32))
    return b"".join(out)


def _parse(parser_args: dict, inflater_args, chunks: list[bytes]):
    """Feed chunks; return (events, close_code or None).

    Error rule of FrameParser: a feed() call that completed events before an error
    returns them and leaves the parser ``failed``; one that completed none raises.
    """
    inflater = Inflater(*inflater_args) if inflater_args is not None else None
    parser = FrameParser(inflater=inflater, **parser_args)
    events = []
    code = None
    for chunk in chunks:
        try:
            result = parser.feed(chunk)
        except ProtocolError as exc:
            code = exc.close_code
            assert parser.failed and parser.close_code == code, (parser.failed, parser.close_code, code)
            break
        assert isinstance(result, list), type(result)
        events.extend(result)
        if parser.failed:
            code = parser.close_code
            assert isinstance(code, int), code
            break
    if code is not None:
        assert code in (1002, 1007, 1008, 1009, 1010), code
        try:  # a failed parser keeps failing with the same error
            parser.feed(b"\x81")
        except ProtocolError as exc:
            assert exc.close_code == code, (exc.close_code, code)
        else:
            raise AssertionError("feed() on a failed parser did not raise")
    return events, code


def _check_items(events, parser_args: dict) -> None:
    limit = parser_args["max_payload_length"]
    closed = False
    for item in events:
        assert not closed, "event after CLOSE"
        assert isinstance(item, tuple) and len(item) == 2, item
        opcode, payload = item
        assert opcode in VALID_OPCODES, opcode
        if opcode == 8:
            code, reason = payload
            assert isinstance(code, int) and isinstance(reason, str), payload
            assert code == 1005 and reason == "" or 1000 <= code <= 4999, payload
            assert len(reason.encode("utf-8", "surrogatepass")) <= 123, payload
            closed = True
        elif opcode == 1:
            assert isinstance(payload, str), type(payload)
            assert len(payload.encode("utf-8", "surrogatepass")) <= limit, (len(payload), limit)
        else:
            assert isinstance(payload, bytes), type(payload)
            assert len(payload) <= (125 if opcode in CONTROL_OPCODES else limit), (opcode, len(payload))


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    server = r.chance(220)
    parser_args = {
        "server": server,
        "max_payload_length": r.pick(LIMITS),
        "max_fragments": r.pick(FRAGMENT_LIMITS),
    }
    inflater_args = None
    compress_bits = None
    if r.boolean():
        inflater_args = (r.int_in(9, 15), r.boolean())
        compress_bits = inflater_args[0] if r.chance(220) else r.int_in(9, 15)
    structured = r.chance(160)
    stream = _stream(r, server, compress_bits) if structured else r.take(r.remaining // 2 + 1)
    pieces = chunked(stream, r, r.pick((1, 2, 7, 64, 4096)))

    whole = _parse(parser_args, inflater_args, [stream] if stream else [])
    split = _parse(parser_args, inflater_args, pieces)
    _check_items(whole[0], parser_args)
    _check_items(split[0], parser_args)
    assert split == whole, ("chunked feed differs from a single feed", split, whole)


def seeds() -> list[bytes]:
    return [
        b"",
        bytes([0xC8]) + bytes(64),
        bytes([0x10, 0x01, 0x00, 0x50]) + bytes(range(7, 256)) * 2,
        bytes(range(256)) * 4,
    ]


if __name__ == "__main__":
    run(test_one_input, seeds)
