"""Fuzz target: permessage-deflate negotiation (bunws.extensions).

    python fuzz/fuzz_extensions.py CORPUS_DIR -max_total_time=60     # atheris
    python fuzz/fuzz_extensions.py --replay crash-FILE

Drives, from one input:
  * ``parse_extensions(header)`` with raw text or a header assembled from
    extension names, parameters, quoted strings, separators and junk;
  * ``DeflateConfig.from_option(value)`` with bools, None, mode strings, numbers
    and dicts with right or wrong keys/values;
  * ``negotiate(config, header)`` and, when it agrees, the codecs it builds.

Documented outcomes: parse_extensions never raises on a str; from_option raises
only InvalidType / InvalidArgument; negotiate never raises. Findings:
  * any other exception;
  * more than 16 offers or 16 parameters per offer, names that are not lower-case
    RFC 7230 tokens;
  * an agreement whose response header does not parse back to one
    ``permessage-deflate`` offer, window bits outside 8..15, or codecs that cannot
    exchange a message: data compressed by zlib within the client window must
    inflate through ``make_inflater()``, and ``make_deflater()`` output must
    inflate with zlib.
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
        import bunws.extensions  # noqa: F401

from bunws.errors import InvalidArgument, InvalidType, ProtocolError  # noqa: E402
from bunws.extensions import (  # noqa: E402
    COMPRESS_MODES,
    MAX_OFFERS,
    MAX_PARAMS,
    Agreement,
    DeflateConfig,
    negotiate,
    parse_extensions,
)

TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
NAMES = ("permessage-deflate", "PerMessage-Deflate", "x-webkit-deflate-frame", "foo", "", "permessage-deflatex")
PARAMS = ("client_max_window_bits", "server_max_window_bits", "client_no_context_takeover",
          "server_no_context_takeover", "Client_Max_Window_Bits", "unknown", "")
VALUES = ("8", "9", "10", "12", "15", "16", "7", "0", "08", "+9", "-1", "1e1", "", "abc",
          '"10"', '"15"', '"1\\5"', '"', '""', '"\\', "99999999999999999999")
SEPS = (",", ";", "=", " ", "\t", ", ", " ; ", ",,", '"', "\\", "\r\n", "\x00", "\x80", "é")
MODE_VALUES = (True, False, None, 0, 1, 1.5, "", "shared", "disable", "dedicated", "3KB",
               "256KB", "512KB", "Shared", b"shared", [], ())


def _header(r: Reader) -> str:
    if r.chance(60):
        return r.text(400)
    parts = []
    for _ in range(r.int_in(0, 24)):
        what = r.byte()
        if what < 70:
            parts.append(r.pick(NAMES))
        elif what < 150:
            param = r.pick(PARAMS)
            parts.append(f"; {param}" if r.chance(128) else f";{param}={r.pick(VALUES)}")
        elif what < 220:
            parts.append(r.pick(SEPS))
        else:
            parts.append(r.text(12))
    return "".join(parts)


def _option(r: Reader):
    kind = r.byte()
    if kind < 120:
        return r.pick(MODE_VALUES)
    if kind < 240:
        keys = ("compress", "decompress", "Compress", "threshold", "")
        return {r.pick(keys): r.pick(MODE_VALUES) for _ in range(r.int_in(0, 3))}
    return r.text(10)


def _is_token(s: str) -> bool:
    return bool(s) and all(c in TCHAR for c in s)


def _check_offers(offers) -> None:
    assert isinstance(offers, list) and len(offers) <= MAX_OFFERS, offers
    for offer in offers:
        name, params = offer
        assert _is_token(name), name
        assert isinstance(params, list) and len(params) <= MAX_PARAMS, params
        for key, value in params:
            assert _is_token(key), key
            assert value is None or isinstance(value, str), value


def _check_agreement(agr: Agreement, payload: bytes) -> None:
    assert isinstance(agr, Agreement), agr
    offers = parse_extensions(agr.response)
    assert len(offers) == 1 and offers[0][0] == "permessage-deflate", agr.response
    assert 8 <= agr.server_max_window_bits <= 15, agr
    assert 8 <= agr.client_max_window_bits <= 15, agr
    # The client compresses within the window it was granted (8 runs as 9 in zlib).
    client_bits = max(9, agr.client_max_window_bits)
    inflater = agr.make_inflater()
    for _ in range(2):  # two messages: exercises context takeover
        co = zlib.compressobj(6, zlib.DEFLATED, -client_bits)
        data = co.compress(payload) + co.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(b"\x00\x00\xff\xff")
        if agr.client_no_context_takeover:
            out = inflater.decompress(data[:-4], 1 << 20, True)
            assert out == payload, "inflater lost a message compressed in the client window"
    deflater = agr.make_deflater()
    if deflater is not None:
        d = zlib.decompressobj(-max(9, agr.server_max_window_bits))
        for _ in range(2):
            out = d.decompress(deflater.compress(payload) + b"\x00\x00\xff\xff")
            assert out == payload, "zlib could not read make_deflater() output"
            if agr.server_no_context_takeover:
                d = zlib.decompressobj(-max(9, agr.server_max_window_bits))


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    header = _header(r)
    offers = parse_extensions(header)
    _check_offers(offers)

    option = _option(r)
    try:
        config = DeflateConfig.from_option(option)
    except (InvalidType, InvalidArgument):
        config = None
    else:
        assert config is None or (config.compress in COMPRESS_MODES
                                  and config.decompress in COMPRESS_MODES), config
    if r.chance(30):
        config = DeflateConfig(r.pick(COMPRESS_MODES), r.pick(COMPRESS_MODES))

    agreement = negotiate(config, header)
    if config is None:
        assert agreement is None
    if agreement is not None:
        try:
            _check_agreement(agreement, r.sized(200))
        except ProtocolError as exc:
            raise AssertionError(f"codecs of {agreement!r} disagree: {exc}") from exc


def seeds() -> list[bytes]:
    return [
        b"\x00" * 8,
        bytes([0]) + b"permessage-deflate; client_max_window_bits" + bytes([1, 1, 2]),
        bytes([255]) * 8,
    ]


if __name__ == "__main__":
    run(test_one_input, seeds)
