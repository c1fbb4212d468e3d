"""Byte-level tests of the frame codec (bunws._frame): RFC 6455 §5 rules with Bun's
close codes and reasons, length boundaries, chunking invariance, the error rule, and
memory reserved as payload arrives rather than as a header declares."""

from __future__ import annotations

import random
import tracemalloc
import zlib

import pytest

import wire
from bunws._frame import (
    FrameParser,
    Opcode,
    apply_mask,
    encode_close,
    encode_frame,
    validate_utf8,
)
from bunws.errors import InvalidArgument, InvalidType, MessageTooBig, ProtocolError

M = wire.DEFAULT_MASK


def parse(stream: bytes, chunks=None, **kw):
    """Feed ``stream`` (optionally cut into ``chunks``) and return (events, error)
    where error is (close_code, reason) or None. Applies the documented error rule."""
    p = FrameParser(**kw)
    if chunks is None:
        chunks = [stream]
    events = []
    for c in chunks:
        try:
            events += p.feed(c)
        except ProtocolError as e:
            assert p.failed
            return events, (e.close_code, e.reason)
        if p.failed:
            return events, (p.close_code, p.reason)
    return events, None


def split_every_way(stream: bytes):
    yield [stream]
    for i in range(len(stream) + 1):
        yield [stream[:i], stream[i:]]
    yield [stream[i:i + 1] for i in range(len(stream))]


def check_all_splits(stream: bytes, **kw):
    whole = parse(stream, **kw)
    for chunks in split_every_way(stream):
        assert parse(stream, chunks, **kw) == whole, chunks
    return whole


# --- RFC 6455 §5.7 examples ---------------------------------------------------------

RFC_EXAMPLES = [
    # (stream, server side?, events)
    (bytes.fromhex("810548656c6c6f"), False, [(1, "Hello")]),
    (bytes.fromhex("818537fa213d7f9f4d5158"), True, [(1, "Hello")]),
    (bytes.fromhex("010348656c") + bytes.fromhex("80026c6f"), False, [(1, "Hello")]),
    (bytes.fromhex("890548656c6c6f"), False, [(9, b"Hello")]),
    (bytes.fromhex("8a8537fa213d7f9f4d5158"), True, [(10, b"Hello")]),
    (bytes.fromhex("827e0100") + bytes(256), False, [(2, bytes(256))]),
    (bytes.fromhex("827f0000000000010000") + bytes(65536), False, [(2, bytes(65536))]),
]


@pytest.mark.parametrize("stream,server,events", RFC_EXAMPLES)
def test_parses_rfc6455_section_5_7_examples(stream, server, events):
    assert parse(stream, server=server) == (events, None)


def test_encodes_rfc6455_section_5_7_examples():
    assert encode_frame(Opcode.TEXT, b"Hello") == bytes.fromhex("810548656c6c6f")
    assert encode_frame(Opcode.TEXT, "Hello", mask=M) == bytes.fromhex("818537fa213d7f9f4d5158")
    assert encode_frame(Opcode.TEXT, "Hel", fin=False) == bytes.fromhex("010348656c")
    assert encode_frame(Opcode.CONTINUATION, "lo") == bytes.fromhex("80026c6f")
    assert encode_frame(Opcode.PING, b"Hello") == bytes.fromhex("890548656c6c6f")
    assert encode_frame(Opcode.PONG, b"Hello", mask=M) == bytes.fromhex("8a8537fa213d7f9f4d5158")
    assert encode_frame(Opcode.BINARY, bytes(256)) == bytes.fromhex("827e0100") + bytes(256)
    assert encode_frame(2, bytes(65536)) == bytes.fromhex("827f0000000000010000") + bytes(65536)


# --- lengths --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 8, 125, 126, 127, 65535, 65536, 70001])
@pytest.mark.parametrize("server", [True, False])
def test_length_boundaries_round_trip(n, server):
    data = bytes(range(256)) * (n // 256 + 1)
    data = data[:n]
    text = ("a" * n)
    mask = M if server else None
    assert wire.frame(2, data, mask=mask) == encode_frame(2, data, mask=mask)
    stream = encode_frame(2, data, mask=mask) + encode_frame(1, text, mask=mask)
    assert parse(stream, server=server) == ([(2, data), (1, text)], None)


@pytest.mark.parametrize("length_size", [0, 2, 8])
def test_accepts_non_minimal_length_encodings(length_size):
    assert parse(wire.client(2, b"hello", length_size=length_size)) == ([(2, b"hello")], None)


def test_rejects_declared_length_of_2_pow_32_as_too_big():
    stream = wire.header(2, 2**32, mask=M)
    assert parse(stream) == ([], (1009, "Received too big message"))


def test_rejects_64_bit_length_with_top_bit_set():
    stream = wire.header(2, 2**63, mask=M)
    assert parse(stream, max_payload_length=2**62) == ([], (1002, "Received invalid frame length"))


def test_too_big_is_decided_from_the_header_before_the_payload():
    p = FrameParser(max_payload_length=100)
    with pytest.raises(MessageTooBig):
        p.feed(wire.header(2, 101, mask=M))  # no payload byte sent


# --- the rule table -----------------------------------------------------------------

P = 1002
RULES = [
    ("unmasked_frame", wire.server(1, "x"), {}, P, "Received an incorrectly masked frame"),
    ("masked_frame_on_client", wire.client(1, "x"), {"server": False}, P,
     "Received an incorrectly masked frame"),
    ("rsv1_without_inflater", wire.client(1, "x", rsv1=True), {}, P, "Received unexpected RSV1 bit"),
    ("rsv2", wire.client(1, "x", rsv2=True), {}, P, "Received unexpected RSV2 or RSV3 bit"),
    ("rsv3", wire.client(2, b"x", rsv3=True), {}, P, "Received unexpected RSV2 or RSV3 bit"),
    *[(f"opcode_{op}", wire.client(op, b"x"), {}, P, "Received invalid opcode")
      for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)],
    ("too_big_ping", wire.client(9, bytes(126)), {}, P, "Received too big control frame"),
    ("too_big_close", wire.client(8, wire.close_payload(1000, "x" * 124)), {}, P,
     "Received too big control frame"),
    ("fragmented_ping", wire.client(9, b"x", fin=False), {}, P, "Received fragmented control frame"),
    ("fragmented_pong", wire.client(10, b"", fin=False), {}, P, "Received fragmented control frame"),
    ("fragmented_close", wire.client(8, b"", fin=False), {}, P, "Received fragmented control frame"),
    ("continuation_without_message", wire.client(0, b"x"), {}, P,
     "Received continuation frame outside a fragmented message"),
    ("text_inside_fragmented_message", wire.client(1, "a", fin=False) + wire.client(1, "b"), {}, P,
     "Received new message inside a fragmented message"),
    ("binary_inside_fragmented_message", wire.client(2, b"a", fin=False) + wire.client(2, b"b"),
     {}, P, "Received new message inside a fragmented message"),
    ("one_byte_close_payload", wire.client(8, b"\x03"), {}, P, "Received invalid close payload"),
    *[(f"close_code_{c}", wire.client(8, wire.close_payload(c)), {}, P, "Received invalid close code")
      for c in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)],
    ("invalid_utf8_close_reason", wire.client(8, b"\x03\xe8\xff"), {}, 1007, "Received invalid UTF-8"),
    ("surrogate_in_text", wire.client(1, b"\xed\xa0\x80"), {}, 1007, "Received invalid UTF-8"),
    ("overlong_in_text", wire.client(1, b"\xc0\xaf"), {}, 1007, "Received invalid UTF-8"),
    ("above_max_code_point_in_text", wire.client(1, b"\xf4\x90\x80\x80"), {}, 1007,
     "Received invalid UTF-8"),
    ("truncated_code_point_at_message_end",
     wire.fragments(1, [b"a", b"\xe2\x82"]), {}, 1007, "Received invalid UTF-8"),
    ("too_big_single_frame", wire.client(2, bytes(11)), {"max_payload_length": 10}, 1009,
     "Received too big message"),
    ("too_big_fragmented_total", wire.fragments(2, [bytes(6), bytes(5)]),
     {"max_payload_length": 10}, 1009, "Received too big message"),
    ("non_empty_message_with_zero_limit", wire.client(1, "a"), {"max_payload_length": 0}, 1009,
     "Received too big message"),
    ("too_many_fragments", wire.fragments(2, [b"", b"", b"", b""]), {"max_fragments": 3}, 1008,
     "Received too many fragments"),
    ("rsv1_on_continuation", wire.client(2, b"x", fin=False) + wire.client(0, b"y", rsv1=True),
     {"inflater": "zlib"}, P, "Received unexpected RSV1 bit"),
    ("rsv1_on_ping", wire.client(9, b"", rsv1=True), {"inflater": "zlib"}, P,
     "Received unexpected RSV1 bit"),
    ("invalid_compressed_data", wire.client(2, b"\xff\xff\xff", rsv1=True), {"inflater": "zlib"},
     1007, "Received invalid compressed data"),
    # ("too_big_inflated_message", ...) is appended below, once deflate() exists
]


class ZlibInflater:
    """A test inflater (RFC 7692 §7.2.2: append 00 00 ff ff to the final frame)."""

    def __init__(self):
        self.d = zlib.decompressobj(-15)
        self.calls = []

    def decompress(self, data, max_length, final):
        self.calls.append((bytes(data), max_length, final))
        if final:
            data = bytes(data) + b"\x00\x00\xff\xff"
        try:
            out = self.d.decompress(data, max_length + 1)
        except zlib.error:
            raise ProtocolError(1007, "Received invalid compressed data") from None
        if len(out) > max_length:
            raise MessageTooBig()
        return out


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


RULES.append(("too_big_inflated_message", wire.client(2, deflate(bytes(1000)), rsv1=True),
             {"inflater": "zlib", "max_payload_length": 10}, 1009, "Received too big message"))


def _kw(kw):
    kw = dict(kw)
    if kw.get("inflater") == "zlib":
        kw["inflater"] = ZlibInflater()
    return kw


@pytest.mark.parametrize("name,stream,kw,code,reason", RULES, ids=[r[0] for r in RULES])
def test_rejects_with_bun_close_code_and_reason(name, stream, kw, code, reason):
    for chunks in split_every_way(stream):
        assert parse(stream, chunks, **_kw(kw)) == ([], (code, reason)), chunks


def test_rejects_invalid_utf8_at_the_first_bad_fragment():
    p = FrameParser()
    p.feed(wire.client(1, "ok", fin=False))
    with pytest.raises(ProtocolError) as e:
        p.feed(wire.client(0, b"\xff", fin=False))  # the message is still open
    assert (e.value.close_code, e.value.reason) == (1007, "Received invalid UTF-8")


def test_rejects_a_fragment_that_starts_an_impossible_code_point():
    p = FrameParser()
    p.feed(wire.client(1, b"\xe0", fin=False))  # a valid prefix so far
    with pytest.raises(ProtocolError):
        p.feed(wire.client(0, b"\x80", fin=False))  # E0 80 is overlong


def test_accepts_a_code_point_split_across_fragments():
    euro = "€".encode()
    stream = wire.fragments(1, [b"a" + euro[:1], euro[1:2], euro[2:] + b"b"])
    assert check_all_splits(stream) == ([(1, "a€b")], None)


def test_control_frames_are_not_subject_to_max_payload_length():
    stream = wire.client(9, bytes(125)) + wire.client(8, wire.close_payload(1000, "x" * 123))
    assert parse(stream, max_payload_length=0) == (
        [(9, bytes(125)), (8, (1000, "x" * 123))], None)


def test_empty_message_passes_a_zero_limit():
    assert parse(wire.client(1, ""), max_payload_length=0) == ([(1, "")], None)


def test_message_exactly_at_the_limit_is_accepted():
    stream = wire.fragments(2, [bytes(6), bytes(4)])
    assert parse(stream, max_payload_length=10) == ([(2, bytes(10))], None)


def test_default_fragment_cap_is_max_of_1024_and_limit_over_256():
    assert FrameParser().max_fragments == 16 * 1024 * 1024 // 256
    assert FrameParser(max_payload_length=1000).max_fragments == 1024
    ok = wire.fragments(2, [b""] * 1024)
    assert parse(ok, max_payload_length=1000) == ([(2, b"")], None)
    bad = wire.fragments(2, [b""] * 1025)
    assert parse(bad, max_payload_length=1000)[1] == (1008, "Received too many fragments")


# --- valid streams, chunking ----------------------------------------------------------

VALID_STREAMS = {
    "mixed": (
        wire.client(1, "héllo")
        + wire.fragments(2, [b"ab", b"", b"cd"])
        + wire.client(9, b"p")
        + wire.client(10, b"")
        + wire.client(1, "x" * 130),
        [(1, "héllo"), (2, b"abcd"), (9, b"p"), (10, b""), (1, "x" * 130)],
    ),
    "control_between_fragments": (
        wire.client(1, "he", fin=False) + wire.client(9, b"1") + wire.client(0, "l", fin=False)
        + wire.client(10, b"2") + wire.client(0, "lo"),
        [(9, b"1"), (10, b"2"), (1, "hello")],
    ),
    "close_then_ignored_garbage": (
        wire.client(2, b"x") + wire.client(8, wire.close_payload(4000, "bye")) + b"\xff\x00garbage",
        [(2, b"x"), (8, (4000, "bye"))],
    ),
    "empty_close": (wire.client(8, b""), [(8, (1005, ""))]),
    "close_code_only": (wire.client(8, wire.close_payload(1000)), [(8, (1000, ""))]),
    "empty_frames": (wire.client(1, b"") + wire.client(2, b"") + wire.client(9, b""),
                     [(1, ""), (2, b""), (9, b"")]),
}


@pytest.mark.parametrize("name", VALID_STREAMS)
def test_valid_stream_gives_same_events_whole_split_and_byte_by_byte(name):
    stream, events = VALID_STREAMS[name]
    assert check_all_splits(stream) == (events, None)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999])
def test_accepts_valid_close_codes(code):
    assert parse(wire.client(8, wire.close_payload(code, "r"))) == ([(8, (code, "r"))], None)


def test_events_carry_opcode_members_and_types():
    (op, payload), = FrameParser().feed(wire.client(1, "hi"))
    assert op is Opcode.TEXT and type(payload) is str
    (op, payload), = FrameParser().feed(wire.client(2, b"hi"))
    assert op is Opcode.BINARY and type(payload) is bytes


def test_feed_flat_matches_feed():
    stream, events = VALID_STREAMS["mixed"]
    flat = FrameParser().feed_flat(stream)
    assert [type(x) for x in flat[::2]] == [int] * len(events)
    assert list(zip(flat[::2], flat[1::2])) == events


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_accepts_any_buffer(kind):
    stream, events = VALID_STREAMS["mixed"]
    assert FrameParser().feed(kind(stream)) == events


def test_payload_is_not_a_view_into_the_input_or_a_reused_buffer():
    buf = bytearray(wire.client(2, b"abcdef") + wire.fragments(2, [b"12", b"34"]))
    p = FrameParser()
    events = p.feed(buf)
    buf[:] = bytes(len(buf))
    events += p.feed(wire.fragments(2, [b"zz", b"zz"]))
    assert [e[1] for e in events] == [b"abcdef", b"1234", b"zzzz"]


def test_client_side_parses_unmasked_server_frames():
    stream = encode_frame(1, "hi") + encode_close(1001, "bye")
    assert parse(stream, server=False) == ([(1, "hi"), (8, (1001, "bye"))], None)


def test_invalid_utf8_is_replaced_when_validation_is_off():
    stream = wire.client(1, b"a\xffb") + wire.client(8, b"\x03\xe8\xff")
    assert parse(stream, validate_utf8=False) == ([(1, "a\ufffdb"), (8, (1000, "\ufffd"))], None)


# --- the error rule -----------------------------------------------------------------


def test_error_without_prior_events_raises_and_the_parser_stays_failed():
    p = FrameParser()
    with pytest.raises(ProtocolError) as e:
        p.feed(wire.server(1, "x"))
    assert (e.value.close_code, p.failed, p.close_code, p.reason) == (
        1002, True, 1002, "Received an incorrectly masked frame")
    for again in (b"", wire.client(1, "ok")):
        with pytest.raises(ProtocolError) as e2:
            p.feed(again)
        assert e2.value.close_code == 1002


def test_events_before_an_error_are_returned_and_the_error_is_flagged():
    p = FrameParser()
    events = p.feed_flat(wire.client(9, b"a") + wire.client(1, "b") + wire.server(1, "x"))
    assert events == [9, b"a", 1, "b"]
    assert (p.failed, p.close_code, p.reason) == (True, 1002, "Received an incorrectly masked frame")
    with pytest.raises(ProtocolError):
        p.feed_flat(b"")


def test_message_too_big_keeps_its_class_when_raised_again():
    p = FrameParser(max_payload_length=1)
    for _ in range(2):
        with pytest.raises(MessageTooBig):
            p.feed(wire.client(2, b"ab"))
    assert (p.close_code, p.reason) == (1009, "Received too big message")


def test_fresh_parser_is_not_failed():
    p = FrameParser()
    assert (p.failed, p.close_code, p.reason) == (False, 0, "")


def test_bytes_after_close_are_ignored_even_if_invalid():
    p = FrameParser()
    assert p.feed(wire.client(8, b"")) == [(8, (1005, ""))]
    assert p.feed(b"\xff" * 20) == []
    assert not p.failed


# --- inflater hook --------------------------------------------------------------------


def test_inflates_single_frame_and_fragmented_messages():
    text = "héllo " * 50
    comp = deflate(text.encode())
    inf = ZlibInflater()
    stream = (wire.client(1, comp, rsv1=True)
              + wire.client(2, comp[:5], rsv1=True, fin=False)
              + wire.client(9, b"p")
              + wire.client(0, comp[5:])
              + wire.client(2, b"raw"))
    events, err = parse(stream, inflater=inf)
    assert err is None
    assert events == [(1, text), (9, b"p"), (2, text.encode()), (2, b"raw")]


def test_inflater_receives_the_remaining_budget_and_fin():
    data = bytes(range(200))
    comp = deflate(data)
    inf = ZlibInflater()
    stream = wire.client(2, comp[:10], rsv1=True, fin=False) + wire.client(0, comp[10:])
    assert parse(stream, inflater=inf, max_payload_length=1000) == ([(2, data)], None)
    (d1, b1, f1), (d2, b2, f2) = inf.calls
    produced = len(zlib.decompressobj(-15).decompress(comp[:10]))
    assert (d1, b1, f1) == (comp[:10], 1000, False)
    assert (d2, b2, f2) == (comp[10:], 1000 - produced, True)


def test_rejects_compressed_frame_longer_than_the_limit_from_its_header():
    p = FrameParser(inflater=ZlibInflater(), max_payload_length=5)
    with pytest.raises(MessageTooBig):
        p.feed(wire.header(2, 6, rsv1=True, mask=M))


# --- memory follows the payload that arrived ---------------------------------------

BIG = 16 * 1024 * 1024  # the default max_payload_length
FIRST_RESERVE = 64 * 1024  # the most a frame that barely started may reserve past what arrived
TEN = b"0123456789"

# name -> (the start of a message declaring about BIG bytes, parser options)
LARGE_STARTS = {
    "single_frame_binary": (wire.header(2, BIG, mask=M) + TEN, {}),
    "single_frame_text": (wire.header(1, BIG, mask=M) + TEN, {}),
    "first_fragment": (wire.header(2, BIG, fin=False, mask=M) + TEN, {}),
    "continuation": (wire.client(1, "ab", fin=False) + wire.header(0, BIG - 2, mask=M) + TEN, {}),
    "compressed": (wire.header(2, BIG, rsv1=True, mask=M) + TEN, {"inflater": "zlib"}),
    "client_side": (wire.header(2, BIG) + TEN, {"server": False}),
}


@pytest.mark.parametrize("name", LARGE_STARTS)
def test_a_header_declaring_16_mib_reserves_memory_only_for_what_arrived(name):
    stream, kw = LARGE_STARTS[name]
    p = FrameParser(**_kw(kw))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert p.feed(stream) == []
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert p.buffer_capacity <= FIRST_RESERVE + len(stream)
    assert peak <= FIRST_RESERVE + 16 * 1024  # plus small Python objects


@pytest.mark.parametrize("server", [True, False])
@pytest.mark.parametrize("opcode,fin", [(2, True), (1, True), (2, False)])
def test_reserved_memory_grows_with_the_payload_that_arrived(server, opcode, fin):
    data = b"x" * (3 << 20)
    stream = wire.frame(opcode, data, fin=fin, mask=M if server else None)
    if not fin:
        stream += wire.frame(0, b"", mask=M if server else None)
    p = FrameParser(server=server)
    events, received = [], 0
    for i in range(0, len(stream), 65536):
        chunk = stream[i:i + 65536]
        events += p.feed(chunk)
        received += len(chunk)
        if not events:
            assert p.buffer_capacity <= 2 * received + FIRST_RESERVE
    assert events == [(opcode, data.decode() if opcode == 1 else data)]
    assert p.buffer_capacity <= FIRST_RESERVE  # a large reassembly buffer is released


def test_a_frame_arriving_whole_fills_its_result_with_one_reservation():
    data = random.Random(1).randbytes(1 << 20)
    stream = wire.client(2, data)
    p = FrameParser()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        (event,) = p.feed(stream)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert event == (2, data)
    assert peak <= len(data) + 16 * 1024  # no second buffer, no copy


def large_splits(stream: bytes):
    """Chunkings of a stream of frames over 64 KiB: two-way splits around the header,
    the first reservation, each doubling and the end; fixed chunk sizes with odd
    strides (every mask phase), including one byte at a time."""
    n = len(stream)
    points = set(range(24)) | set(range(n - 8, n + 1))
    for edge in (1 << 16, 1 << 17, 1 << 18):
        points |= set(range(edge - 20, edge + 20))
    yield [stream]
    for i in sorted(q for q in points if 0 <= q <= n):
        yield [stream[:i], stream[i:]]
    for size in (1, 7, 4093, 65535, 65537, 200_003):
        yield [stream[i:i + size] for i in range(0, n, size)]


RNG = random.Random(17)
BLOB = RNG.randbytes(200_000)
TEXT = "".join(RNG.choice("aé€𝄞 ") for _ in range(90_000))  # ~200 KB, code points of 1-4 bytes
RAW = TEXT.encode()
BAD = RAW[:150_001] + b"\xff" + RAW[150_001:]
TAIL = wire.client(1, "tail")
LARGE_STREAMS = {
    "binary": (wire.client(2, BLOB) + TAIL, {}, ([(2, BLOB), (1, "tail")], None)),
    "binary_client_side": (wire.server(2, BLOB) + wire.server(1, "tail"), {"server": False},
                           ([(2, BLOB), (1, "tail")], None)),
    "text": (wire.client(1, TEXT) + TAIL, {}, ([(1, TEXT), (1, "tail")], None)),
    "fragmented_text_split_inside_code_points": (
        wire.fragments(1, [RAW[:70_001], RAW[70_001:70_002], RAW[70_002:]]) + TAIL, {},
        ([(1, TEXT), (1, "tail")], None)),
    "fragmented_binary_with_ping": (
        wire.client(2, BLOB[:100_000], fin=False) + wire.client(9, b"p")
        + wire.client(0, BLOB[100_000:]) + TAIL, {},
        ([(9, b"p"), (2, BLOB), (1, "tail")], None)),
    "compressed": (wire.client(2, deflate(BLOB), rsv1=True) + TAIL, {"inflater": "zlib"},
                   ([(2, BLOB), (1, "tail")], None)),
    "compressed_fragmented": (
        wire.client(1, deflate(RAW)[:90_000], rsv1=True, fin=False)
        + wire.client(0, deflate(RAW)[90_000:]) + TAIL, {"inflater": "zlib"},
        ([(1, TEXT), (1, "tail")], None)),
    "invalid_utf8_in_large_text": (wire.client(1, BAD) + TAIL, {},
                                   ([], (1007, "Received invalid UTF-8"))),
    "invalid_utf8_in_large_fragment": (
        wire.client(1, BAD[:160_000], fin=False) + wire.client(0, BAD[160_000:]), {},
        ([], (1007, "Received invalid UTF-8"))),
    "too_big_after_a_large_fragment": (
        wire.client(2, BLOB, fin=False) + wire.client(0, BLOB), {"max_payload_length": 300_000},
        ([], (1009, "Received too big message"))),
}


@pytest.mark.parametrize("name", LARGE_STREAMS)
def test_large_frames_give_the_same_outcome_however_they_are_cut(name):
    stream, kw, expected = LARGE_STREAMS[name]
    for chunks in large_splits(stream):
        assert parse(stream, chunks, **_kw(kw)) == expected, [len(c) for c in chunks]


# --- encoders -----------------------------------------------------------------------


def test_encode_frame_flags_and_mask():
    f = encode_frame(Opcode.BINARY, b"abc", fin=False, rsv1=True, mask=M)
    assert f == wire.frame(2, b"abc", fin=False, rsv1=True, mask=M)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_encode_frame_accepts_any_buffer(kind):
    assert encode_frame(2, kind(b"xyz")) == b"\x82\x03xyz"


@pytest.mark.parametrize("code,reason,payload", [
    (1000, "", b"\x03\xe8"),
    (1000, "bye", b"\x03\xe8bye"),
    (None, "dropped", b""),
    (0, "x", b""), (65536, "x", b""), (1005, "x", b""), (1006, "x", b""), (2**31, "x", b""),
    (-1, "", b"\xff\xff"), (65537, "", b"\x00\x01"), (999, "", b"\x03\xe7"), (5000, "", b"\x13\x88"),
    (1000, "b" * 130, b"\x03\xe8" + b"b" * 123),
    (1000, "é" * 62, b"\x03\xe8" + "é".encode() * 61),
    (1000, "€" * 42, b"\x03\xe8" + "€".encode() * 41),
])
def test_encode_close_follows_bun(code, reason, payload):
    assert encode_close(code, reason) == wire.server(8, payload)


def test_encode_close_defaults_to_1000():
    assert encode_close() == b"\x88\x02\x03\xe8"


def test_apply_mask_twice_is_identity_and_matches_reference():
    data = bytes(range(256)) * 5 + b"tail"
    for start in range(9):
        chunk = data[start:]
        assert apply_mask(chunk, M) == wire.mask_bytes(chunk, M)
        assert apply_mask(apply_mask(chunk, M), M) == chunk
    assert apply_mask(bytearray(b"abc"), memoryview(M)) == wire.mask_bytes(b"abc", M)


def test_validate_utf8_examples():
    assert validate_utf8(b"") and validate_utf8("héllo €𝄞".encode() * 20)
    for bad in (b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xff", b"a\xe2\x82",
                b"\x80", b"\xf8\x88\x80\x80\x80"):
        assert not validate_utf8(bad)
        assert not validate_utf8(b"x" * 40 + bad + b"y" * 40)


# --- misuse ---------------------------------------------------------------------------


@pytest.mark.parametrize("call,exc,message", [
    (lambda: FrameParser(max_payload_length=-1), InvalidArgument, "max_payload_length must be >= 0"),
    (lambda: FrameParser(max_payload_length="1"), InvalidType, "max_payload_length must be an int"),
    (lambda: FrameParser(max_fragments=0), InvalidArgument, "max_fragments must be >= 1 or -1"),
    (lambda: FrameParser(inflater=object()), InvalidType, "inflater must have a decompress"),
    (lambda: FrameParser().feed("text"), InvalidType, "data must be a bytes-like object"),
    (lambda: encode_frame(9, bytes(126)), InvalidArgument,
     "control frame payload must be <= 125 bytes, got 126"),
    (lambda: encode_frame(9, b"", fin=False), InvalidArgument, "must not be fragmented"),
    (lambda: encode_frame(3, b""), InvalidArgument, "opcode must be one of"),
    (lambda: encode_frame("1", b""), InvalidType, "opcode must be an int"),
    (lambda: encode_frame(1, 5), InvalidType, "payload must be bytes-like or str"),
    (lambda: encode_frame(1, b"", mask=b"abc"), InvalidArgument, "mask must be 4 bytes, got 3"),
    (lambda: encode_frame(1, b"", mask="abcd"), InvalidType, "mask must be bytes-like"),
    (lambda: encode_close("1000"), InvalidType, "close code must be an int"),
    (lambda: encode_close(1000, b"r"), InvalidType, "close reason must be a str"),
    (lambda: apply_mask(b"", b"12345"), InvalidArgument, "mask must be 4 bytes, got 5"),
    (lambda: apply_mask("ab", M), InvalidType, "data must be bytes-like"),
    (lambda: validate_utf8("ab"), InvalidType, "data must be bytes-like"),
])
def test_misuse_raises_bunws_error_with_the_limit(call, exc, message):
    with pytest.raises(exc, match=message.replace("(", r"\(")):
        call()
    assert issubclass(InvalidArgument, ValueError) and issubclass(InvalidType, TypeError)
