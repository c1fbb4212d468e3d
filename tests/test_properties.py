"""Property tests of the frame codec against test-only oracles: wsproto (frames),
``bytes.decode('utf-8')`` (UTF-8) and tests/wire.py (masking)."""

from __future__ import annotations

import random
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode as WOpcode

import wire
from bunws._frame import FrameParser, apply_mask, encode_frame, validate_utf8
from bunws.errors import MessageTooBig, ProtocolError

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- helpers ----------------------------------------------------------------------------


def cut(data, cuts):
    """Split ``data`` at the sorted, de-duplicated positions ``cuts``."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


def parse_chunks(chunks, **kw):
    """Feed chunks; return (events, (code, reason) or None) following the error rule."""
    p = FrameParser(**kw)
    events = []
    for c in chunks:
        try:
            events += p.feed(c)
        except ProtocolError as e:
            return events, (e.close_code, e.reason)
        if p.failed:
            return events, (p.close_code, p.reason)
    return events, None


# A message: ("text", [str parts]) or ("binary", [bytes parts]) or ("ping", bytes).
text_msg = st.tuples(st.just("text"), st.lists(st.text(max_size=40), min_size=1, max_size=5))
binary_msg = st.tuples(st.just("binary"), st.lists(st.binary(max_size=300), min_size=1, max_size=5))
ping_msg = st.tuples(st.just("ping"), st.binary(max_size=125))
messages = st.lists(st.one_of(text_msg, binary_msg, ping_msg), max_size=8)


def wsproto_client_stream(msgs, ping_between):
    """Encode with wsproto's client (masked, random keys); return (stream, events)."""
    proto = FrameProtocol(client=True, extensions=[])
    stream = bytearray()
    events = []
    pings = iter(ping_between)
    for kind, value in msgs:
        if kind == "ping":
            stream += proto.ping(value)
            events.append((9, value))
            continue
        for i, part in enumerate(value):
            stream += proto.send_data(part, fin=i == len(value) - 1)
            if i < len(value) - 1:
                extra = next(pings, None)
                if extra is not None:  # a ping between fragments (RFC 6455 §5.4)
                    stream += proto.ping(extra)
                    events.append((9, extra))
        joined = "".join(value) if kind == "text" else b"".join(value)
        events.append((1 if kind == "text" else 2, joined))
    return bytes(stream), events


# --- parser vs wsproto ----------------------------------------------------------------


@PROPS
@given(messages, st.lists(st.binary(max_size=20), max_size=6), st.lists(st.integers(0, 10**6), max_size=12))
def test_parses_what_wsproto_client_sends(msgs, pings, cuts):
    stream, events = wsproto_client_stream(msgs, pings)
    assert parse_chunks(cut(stream, cuts)) == (events, None)
    flat = FrameParser().feed_flat(stream)
    assert list(zip(flat[::2], flat[1::2])) == events


@PROPS
@given(messages, st.lists(st.integers(0, 10**6), max_size=6))
def test_wsproto_parses_what_encode_frame_builds(msgs, cuts):
    """Our frames, unmasked (server) and masked (client), decode under wsproto."""
    for client_side in (False, True):
        mask = b"\x01\x02\x03\x04" if client_side else None
        stream = bytearray()
        expected = []
        for kind, value in msgs:
            if kind == "ping":
                stream += encode_frame(9, value, mask=mask)
                expected.append((WOpcode.PING, value))
                continue
            op = 1 if kind == "text" else 2
            for i, part in enumerate(value):
                stream += encode_frame(op if i == 0 else 0, part, fin=i == len(value) - 1, mask=mask)
            expected.append((WOpcode.TEXT if op == 1 else WOpcode.BINARY,
                             "".join(value) if op == 1 else b"".join(value)))
        # wsproto's client reads server frames and vice versa
        proto = FrameProtocol(client=not client_side, extensions=[])
        got, current = [], None
        for chunk in cut(bytes(stream), cuts):
            proto.receive_bytes(chunk)
            for f in proto.received_frames():
                if f.opcode in (WOpcode.PING, WOpcode.PONG):
                    got.append((f.opcode, bytes(f.payload)))
                    continue
                if current is None:
                    current = [f.opcode, f.payload]
                else:
                    current[1] += f.payload
                if f.message_finished:
                    got.append((current[0], current[1] if current[0] == WOpcode.TEXT else bytes(current[1])))
                    current = None
        assert got == expected


@PROPS
@given(messages, st.lists(st.integers(0, 10**6), max_size=4))
def test_client_side_parser_reads_wsproto_server_frames(msgs, cuts):
    proto = FrameProtocol(client=False, extensions=[])
    stream = bytearray()
    events = []
    for kind, value in msgs:
        if kind == "ping":
            stream += proto.ping(value)
            events.append((9, value))
            continue
        for i, part in enumerate(value):
            stream += proto.send_data(part, fin=i == len(value) - 1)
        events.append((1, "".join(value)) if kind == "text" else (2, b"".join(value)))
    assert parse_chunks(cut(bytes(stream), cuts), server=False) == (events, None)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["text", "binary"]),
    st.integers(1, 3),
    st.integers(60_000, 300_000),
    st.integers(0, 2**32 - 1),
    st.lists(st.integers(0, 10**6), max_size=12),
    st.booleans(),
)
def test_large_messages_parse_the_same_however_they_are_cut(kind, nparts, size, seed, cuts, server):
    """Frames over 64 KiB arriving in pieces take the growing-buffer path."""
    rng = random.Random(seed)
    if kind == "text":
        data = "".join(rng.choice("aé€𝄞") for _ in range(size // 2)).encode()
    else:
        data = rng.randbytes(size)
    parts = cut(data, [rng.randrange(len(data) + 1) for _ in range(nparts - 1)])
    stream = wire.fragments(1 if kind == "text" else 2, parts, mask=wire.DEFAULT_MASK if server else None)
    expected = (1, data.decode()) if kind == "text" else (2, data)
    assert parse_chunks(cut(stream, cuts), server=server) == ([expected], None)


# --- UTF-8 ----------------------------------------------------------------------------


def decodes(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


cont = st.integers(0x80, 0xBF)
utf8_piece = st.one_of(
    st.characters().map(lambda c: c.encode("utf-8", "surrogatepass")),  # includes surrogates
    st.integers(0xD800, 0xDFFF).map(lambda c: chr(c).encode("utf-8", "surrogatepass")),
    st.tuples(st.integers(0xC0, 0xC1), cont).map(bytes),  # overlong 2-byte
    st.tuples(st.just(0xE0), st.integers(0x80, 0x9F), cont).map(bytes),  # overlong 3-byte
    st.tuples(st.just(0xF0), st.integers(0x80, 0x8F), cont, cont).map(bytes),  # overlong 4-byte
    st.tuples(st.just(0xF4), st.integers(0x90, 0xBF), cont, cont).map(bytes),  # > U+10FFFF
    st.tuples(st.integers(0xF5, 0xFF), cont, cont, cont).map(bytes),
    cont.map(lambda c: bytes([c])),  # stray continuation
    st.characters(min_codepoint=0x80).map(lambda c: c.encode("utf-8", "surrogatepass")[:-1]),  # truncated
    st.text(alphabet=st.characters(max_codepoint=0x7F), min_size=8, max_size=40).map(str.encode),
)
utf8_soup = st.lists(utf8_piece, max_size=30).map(b"".join)


@PROPS
@given(st.one_of(st.binary(max_size=200), utf8_soup))
def test_validate_utf8_matches_cpython_decoder(data):
    assert validate_utf8(data) == decodes(data)


@PROPS
@given(st.text(max_size=100).map(str.encode))
def test_validate_utf8_accepts_all_valid_text(data):
    assert validate_utf8(data)


@PROPS
@given(utf8_soup, st.lists(st.integers(0, 10**6), max_size=6))
def test_fragmented_text_is_accepted_exactly_when_it_decodes(data, cuts):
    stream = wire.fragments(1, cut(data, cuts))
    events, err = parse_chunks([stream])
    if decodes(data):
        assert (events, err) == ([(1, data.decode())], None)
    else:
        assert (events, err) == ([], (1007, "Received invalid UTF-8"))


# --- masking ----------------------------------------------------------------------------


@PROPS
@given(st.binary(max_size=600), st.binary(min_size=4, max_size=4))
def test_masking_twice_is_identity_and_matches_reference(data, mask):
    once = apply_mask(data, mask)
    assert once == wire.mask_bytes(data, mask)
    assert apply_mask(once, mask) == data


# --- hostile input --------------------------------------------------------------------

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 16)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
)


def mutate(stream: bytes, ops) -> bytes:
    b = bytearray(stream)
    for kind, pos, arg in ops:
        pos = pos % (len(b) + 1)
        if kind == "flip" and pos < len(b):
            b[pos] ^= arg or 1
        elif kind == "insert":
            b[pos:pos] = arg
        elif kind == "delete":
            del b[pos:pos + arg]
        elif kind == "truncate":
            del b[pos:]
    return bytes(b)


class TinyInflater:
    """Inflater stand-in that 'decompresses' by repeating each byte twice."""

    def decompress(self, data, max_length, final):
        out = bytes(x for b in data for x in (b, b))
        if len(out) > max_length:
            raise MessageTooBig()
        if out[:1] == b"\xff":
            raise ProtocolError(1007, "Received invalid compressed data")
        return out


@PROPS
@given(
    messages,
    st.lists(mutation, min_size=1, max_size=4),
    st.lists(st.integers(0, 10**6), max_size=6),
    st.sampled_from([0, 10, 300, 1 << 20]),
    st.booleans(),
    st.booleans(),
)
def test_mutated_streams_yield_only_events_or_protocol_errors(msgs, ops, cuts, limit, server, inflate):
    stream, _ = wsproto_client_stream(msgs, [])
    if not server:
        stream = b"".join(
            encode_frame(op, p) for op, p in FrameParser(max_payload_length=1 << 20).feed(stream)
            if op != 8)
    bad = mutate(stream, ops)
    kw = dict(server=server, max_payload_length=limit, max_fragments=3 if limit == 10 else -1,
              inflater=TinyInflater() if inflate else None)
    whole = parse_chunks([bad], **kw)  # only ProtocolError/MessageTooBig may escape
    assert parse_chunks(cut(bad, cuts), **kw) == whole  # chunking never changes the outcome
    for op, payload in whole[0]:
        assert op in (1, 2, 8, 9, 10)
        if op == 1:
            assert type(payload) is str
        elif op == 8:
            code, reason = payload
            assert isinstance(code, int) and isinstance(reason, str)
        else:
            assert type(payload) is bytes


@PROPS
@given(st.binary(max_size=300), st.booleans())
def test_random_bytes_yield_only_events_or_protocol_errors(data, server):
    p = FrameParser(server=server, max_payload_length=1 << 16)
    try:
        p.feed(data)
    except ProtocolError:
        pass


def test_random_header_lengths_never_allocate_past_the_limit():
    # a declared 2**62-byte frame is refused from its header alone
    p = FrameParser(max_payload_length=1 << 20)
    try:
        p.feed(struct.pack("!BBQ", 0x82, 0xFF, 1 << 62) + b"mask")
    except MessageTooBig as e:
        assert e.close_code == 1009
    else:  # pragma: no cover
        raise AssertionError("expected MessageTooBig")
