"""RFC 7692 §7 negotiation: Bun's answers (docs/bun-behaviour.md §10, measured with raw
handshakes against Bun), option validation, and a tokenizer that never crashes and stays
linear."""

from __future__ import annotations

import time

import pytest

from bunws._deflate import Deflater, Inflater
from bunws.errors import InvalidArgument, InvalidType
from bunws.extensions import (
    MAX_OFFERS,
    DeflateConfig,
    negotiate,
    parse_extensions,
    shared_deflater,
)

PMD = "permessage-deflate"
CNCT = "client_no_context_takeover"
SNCT = "server_no_context_takeover"

OFFERS = [
    PMD,
    f"{PMD}; client_max_window_bits",
    f"{PMD}; server_max_window_bits=10; client_max_window_bits=12",
    f"{PMD}; {SNCT}",
]

SHARED_ANSWERS = [f"{PMD}; {CNCT}; {SNCT}", f"{PMD}; {CNCT}; {SNCT}", None, f"{PMD}; {CNCT}; {SNCT}"]

# Measured on Bun 1.4.4 (raw handshakes): config -> answers to OFFERS.
BUN_TABLE = [
    (True, SHARED_ANSWERS),
    ({"compress": "shared", "decompress": "shared"}, SHARED_ANSWERS),
    ({"compress": True}, SHARED_ANSWERS),
    ({"decompress": True}, SHARED_ANSWERS),
    (
        {"compress": "dedicated", "decompress": "dedicated"},
        [PMD, PMD, f"{PMD}; client_max_window_bits=12; server_max_window_bits=10", f"{PMD}; {SNCT}"],
    ),
    (
        {"compress": "3KB"},
        [
            f"{PMD}; {CNCT}; server_max_window_bits=9",
            f"{PMD}; {CNCT}; server_max_window_bits=9",
            f"{PMD}; {CNCT}; server_max_window_bits=9",
            f"{PMD}; {CNCT}; {SNCT}",
        ],
    ),
    (
        {"compress": "16KB", "decompress": "dedicated"},
        [
            f"{PMD}; server_max_window_bits=11",
            f"{PMD}; server_max_window_bits=11",
            f"{PMD}; client_max_window_bits=12; server_max_window_bits=10",
            f"{PMD}; {SNCT}",
        ],
    ),
    (
        {"compress": "256KB"},
        [
            f"{PMD}; {CNCT}",
            f"{PMD}; {CNCT}",
            f"{PMD}; {CNCT}; server_max_window_bits=10",
            f"{PMD}; {CNCT}; {SNCT}",
        ],
    ),
]


def answer(option, offer):
    agreement = negotiate(DeflateConfig.from_option(option), offer)
    return None if agreement is None else agreement.response


class TestBunTable:
    @pytest.mark.parametrize("option,answers", BUN_TABLE, ids=lambda x: str(x)[:40])
    @pytest.mark.parametrize("col", range(4))
    def test_answers_like_bun(self, option, answers, col):
        assert answer(option, OFFERS[col]) == answers[col]

    @pytest.mark.parametrize("option", [True, {"compress": "shared"}, {"decompress": True}])
    def test_shared_declines_server_max_window_bits_8(self, option):
        assert answer(option, f"{PMD}; server_max_window_bits=8") is None

    @pytest.mark.parametrize("mode", ["dedicated", "3KB", "16KB", "256KB"])
    def test_dedicated_answers_server_max_window_bits_8(self, mode):
        got = answer({"compress": mode, "decompress": "dedicated"}, f"{PMD}; server_max_window_bits=8")
        assert got is not None and got.endswith("server_max_window_bits=8")

    def test_x_webkit_deflate_frame_never_accepted(self):
        assert answer(True, "x-webkit-deflate-frame") is None
        assert answer(True, "x-webkit-deflate-frame, " + PMD) == SHARED_ANSWERS[0]

    def test_first_permessage_deflate_offer_is_used(self):
        opt = {"compress": "dedicated", "decompress": "dedicated"}
        got = answer(opt, f"{PMD}; server_max_window_bits=10, {PMD}")
        assert got == f"{PMD}; server_max_window_bits=10"

    def test_first_acceptable_offer_is_used_after_a_declined_one(self):
        assert answer(True, f"{PMD}; server_max_window_bits=10, {PMD}") == SHARED_ANSWERS[0]

    @pytest.mark.parametrize("header", [None, "", "foo", "foo; bar=1"])
    def test_no_offer_no_header(self, header):
        assert answer(True, header) is None

    def test_compression_off_never_negotiates(self):
        assert negotiate(None, PMD) is None


class TestAgreement:
    def test_shared_mode_uses_one_module_level_deflater(self):
        a = negotiate(DeflateConfig.from_option(True), PMD)
        b = negotiate(DeflateConfig.from_option(True), PMD)
        assert a.shared_deflate and a.compress_enabled
        assert a.make_deflater() is b.make_deflater() is shared_deflater()
        assert a.make_deflater().no_context_takeover
        inf = a.make_inflater()
        assert inf.no_context_takeover and not inf.holds_zlib_state

    def test_compress_false_decompress_true_negotiates_but_never_compresses(self):
        a = negotiate(DeflateConfig.from_option({"compress": False, "decompress": True}), PMD)
        assert a.response == SHARED_ANSWERS[0]
        assert not a.compress_enabled and not a.shared_deflate
        assert a.make_deflater() is None

    def test_compress_true_decompress_false_still_inflates(self):
        a = negotiate(DeflateConfig.from_option({"compress": True, "decompress": False}), PMD)
        assert a.client_no_context_takeover
        c = Deflater(no_context_takeover=True).compress(b"hello hello")
        assert a.make_inflater().decompress(c, 100, True) == b"hello hello"

    @pytest.mark.parametrize(
        "mode,bits,mem",
        [("3KB", 9, 1), ("4KB", 9, 2), ("8KB", 10, 3), ("16KB", 11, 4), ("32KB", 12, 5),
         ("64KB", 13, 6), ("128KB", 14, 7), ("256KB", 15, 8), ("dedicated", 15, 8)],
    )
    def test_dedicated_sizes_map_to_window_and_mem_level(self, mode, bits, mem):
        a = negotiate(DeflateConfig.from_option({"compress": mode}), PMD)
        d = a.make_deflater()
        assert (d.window_bits, d.mem_level, d.no_context_takeover) == (bits, mem, False)
        assert not a.shared_deflate
        assert d is not a.make_deflater()

    def test_dedicated_window_is_clipped_to_server_max_window_bits(self):
        a = negotiate(DeflateConfig.from_option({"compress": "128KB"}), f"{PMD}; server_max_window_bits=10")
        d = a.make_deflater()
        assert (d.window_bits, d.mem_level) == (10, 7)
        assert a.server_max_window_bits == 10

    def test_server_no_context_takeover_switches_dedicated_to_shared(self):
        a = negotiate(DeflateConfig.from_option({"compress": "16KB"}), f"{PMD}; {SNCT}")
        assert a.shared_deflate and a.make_deflater() is shared_deflater()

    def test_dedicated_decompress_keeps_client_context(self):
        a = negotiate(DeflateConfig.from_option({"decompress": "dedicated", "compress": "dedicated"}),
                      f"{PMD}; client_max_window_bits=12")
        inf = a.make_inflater()
        assert not inf.no_context_takeover and inf.window_bits == 12
        assert a.client_max_window_bits == 12

    def test_client_no_context_takeover_offer_is_echoed_for_dedicated(self):
        opt = {"compress": "dedicated", "decompress": "dedicated"}
        assert answer(opt, f"{PMD}; {CNCT}") == f"{PMD}; {CNCT}"

    def test_decompress_size_quirk_is_treated_as_dedicated(self):
        # Bun maps decompress sizes to compressor constants; bunws: dedicated.
        assert answer({"decompress": "3KB"}, PMD) == answer({"decompress": "dedicated"}, PMD)

    def test_both_server_params_with_dedicated(self):
        # Bun declines this one (see TestServerMaxWindowBits15); the parameter order is Bun's.
        a = negotiate(DeflateConfig.from_option({"compress": "dedicated"}),
                      f"{PMD}; {SNCT}; server_max_window_bits=11")
        assert a.response == f"{PMD}; {CNCT}; {SNCT}; server_max_window_bits=11"
        d = a.make_deflater()
        assert d.window_bits == 11 and d.no_context_takeover
        # Stateless, so shared by every connection with the same window (frame-once fan-out).
        assert a.shared_deflate and d is shared_deflater(11, 8)


# Bun 1.4.5, raw handshakes: shared mode accepts server_max_window_bits=15 (its
# stateless compressor already has a 15-bit window) and answers with the window and
# server_no_context_takeover, whatever the client window; the Autobahn 13.4/13.6 offers
# are the last two.
SHARED_15 = f"{PMD}; {CNCT}; {SNCT}; server_max_window_bits=15"
OFFERS_15 = [
    f"{PMD}; server_max_window_bits=15",
    f'{PMD}; server_max_window_bits="15"',
    f"{PMD}; server_max_window_bits=15; {SNCT}",
    f"{PMD}; {SNCT}; server_max_window_bits=15",
    f"{PMD}; server_max_window_bits=15; client_max_window_bits",
    f"{PMD}; server_max_window_bits=15; client_max_window_bits=15",
    f"{PMD}; server_max_window_bits=15; client_max_window_bits=9",
    f"{PMD}; server_max_window_bits=15; client_max_window_bits=8",
    f"{PMD}; {CNCT}; server_max_window_bits=15",
    f"{PMD}; {CNCT}; client_max_window_bits; server_max_window_bits=15",
    f"{PMD}; {CNCT}; client_max_window_bits; {SNCT}; server_max_window_bits=15",
]
SHARED_COMPRESSOR_OPTIONS = [
    True,
    {"compress": "shared"},
    {"compress": True, "decompress": False},
    {"decompress": True},  # compressor disabled: Bun still answers
    {"compress": False, "decompress": True},
]


class TestServerMaxWindowBits15:
    """Issue 13, item 18: shared mode declined every server_max_window_bits offer."""

    @pytest.mark.parametrize("option", SHARED_COMPRESSOR_OPTIONS, ids=str)
    @pytest.mark.parametrize("offer", OFFERS_15)
    def test_shared_mode_accepts_server_max_window_bits_15(self, option, offer):
        assert answer(option, offer) == SHARED_15

    @pytest.mark.parametrize(
        "offer,expected",
        [
            (f"{PMD}; server_max_window_bits=15", f"{PMD}; {SNCT}; server_max_window_bits=15"),
            (f"{PMD}; server_max_window_bits=15; {SNCT}", f"{PMD}; {SNCT}; server_max_window_bits=15"),
            (f"{PMD}; server_max_window_bits=15; client_max_window_bits",
             f"{PMD}; {SNCT}; server_max_window_bits=15"),
            (f"{PMD}; server_max_window_bits=15; client_max_window_bits=9",
             f"{PMD}; client_max_window_bits=9; {SNCT}; server_max_window_bits=15"),
            (OFFERS_15[-1], SHARED_15),
        ],
    )
    def test_shared_compressor_dedicated_decompressor(self, offer, expected):
        # Bun's answers: the client side follows the dedicated decompressor.
        assert answer({"compress": "shared", "decompress": "dedicated"}, offer) == expected

    def test_shared_agreement_uses_buns_shared_compressor(self):
        a = negotiate(DeflateConfig.from_option(True), OFFERS_15[-1])
        assert (a.server_max_window_bits, a.server_no_context_takeover, a.shared_deflate) == (15, True, True)
        assert a.make_deflater() is shared_deflater(15, 8)
        assert a.client_no_context_takeover and a.make_inflater().no_context_takeover

    def test_compressor_disabled_agreement_never_compresses(self):
        a = negotiate(DeflateConfig.from_option({"compress": False, "decompress": True}), OFFERS_15[0])
        assert a.response == SHARED_15 and not a.compress_enabled and a.make_deflater() is None

    @pytest.mark.parametrize("option", SHARED_COMPRESSOR_OPTIONS, ids=str)
    @pytest.mark.parametrize("bits", range(8, 15))
    @pytest.mark.parametrize("extra", ["", f"; {SNCT}", f"; {CNCT}; client_max_window_bits"])
    def test_shared_mode_still_declines_smaller_windows(self, option, bits, extra):
        # Bun declines these (Autobahn 13.3/13.5 offer 9): a 15-bit stream could
        # reference data farther back than the client keeps.
        assert answer(option, f"{PMD}; server_max_window_bits={bits}{extra}") is None

    def test_declined_smaller_window_falls_through_to_15(self):
        assert answer(True, f"{PMD}; server_max_window_bits=9, {PMD}; server_max_window_bits=15") == SHARED_15

    @pytest.mark.parametrize(
        "option",
        [{"compress": "dedicated"}, {"compress": "dedicated", "decompress": "dedicated"}],
        ids=str,
    )
    def test_dedicated_answers_both_server_params_in_buns_order(self, option):
        a = negotiate(DeflateConfig.from_option(option), OFFERS_15[-1])
        assert a.response == SHARED_15
        assert a.make_deflater() is shared_deflater(15, 8)


class TestDeclined:
    @pytest.mark.parametrize(
        "params",
        [
            f"{SNCT}; {SNCT}",
            f"{CNCT}; {CNCT}",
            "client_max_window_bits=10; client_max_window_bits=11",
            "server_max_window_bits=10; server_max_window_bits=10",
        ],
    )
    def test_duplicate_parameters(self, params):
        assert answer({"compress": "dedicated", "decompress": "dedicated"}, f"{PMD}; {params}") is None

    @pytest.mark.parametrize("value", ["0", "7", "16", "abc", "-9", "+9", "09", "9.0", '"7"', '"abc"', '""'])
    @pytest.mark.parametrize("param", ["client_max_window_bits", "server_max_window_bits"])
    def test_invalid_window_values(self, param, value):
        assert answer({"compress": "dedicated", "decompress": "dedicated"}, f"{PMD}; {param}={value}") is None

    def test_bare_server_max_window_bits(self):
        assert answer({"compress": "dedicated"}, f"{PMD}; server_max_window_bits") is None

    def test_value_on_no_context_takeover(self):
        assert answer(True, f"{PMD}; {SNCT}=1") is None
        assert answer(True, f"{PMD}; {CNCT}=x") is None

    @pytest.mark.parametrize("param", ["foo", "foo=1", "mux", "client_max_window"])
    def test_unknown_parameters(self, param):
        assert answer(True, f"{PMD}; {param}") is None

    def test_quoted_valid_window_is_unquoted_per_rfc7692(self):
        opt = {"compress": "dedicated", "decompress": "dedicated"}
        assert answer(opt, f'{PMD}; client_max_window_bits="12"') == f"{PMD}; client_max_window_bits=12"

    @pytest.mark.parametrize(
        "header",
        [
            f"{PMD};",
            f"{PMD}; ; {SNCT}",
            f"{PMD} {SNCT}",
            f"{PMD}; =1",
            f"{PMD}; client_max_window_bits=",
            f'{PMD}; client_max_window_bits="12',
            f"{PMD}; a=b=c",
            "; " + PMD,
            f"{PMD}\x00",
            "permessage-deflate\u00e9",
            '"permessage-deflate"',
        ],
    )
    def test_malformed_offers_are_dropped(self, header):
        assert answer(True, header) is None
        expected = None if header.count('"') % 2 else SHARED_ANSWERS[0]  # an open quote swallows the rest
        assert answer(True, header + ", " + PMD) == expected

    def test_only_16_offers_considered(self):
        header = ", ".join(["foo"] * MAX_OFFERS + [PMD])
        assert answer(True, header) is None
        header = ", ".join(["foo"] * (MAX_OFFERS - 1) + [PMD])
        assert answer(True, header) == SHARED_ANSWERS[0]

    def test_more_than_16_params_declined(self):
        assert answer(True, PMD + "; x" * 17) is None
        assert parse_extensions("a" + "; x" * 16) == [("a", [("x", None)] * 16)]


class TestTokenizer:
    def test_parses_tokens_and_quoted_strings(self):
        got = parse_extensions('a; b=1 ; c = "x\\"y" , ,d;E')
        assert got == [("a", [("b", "1"), ("c", 'x"y')]), ("d", [("e", None)])]

    def test_names_are_case_insensitive(self):
        assert answer(True, "Permessage-Deflate; Client_Max_Window_Bits") == SHARED_ANSWERS[0]

    def test_rejects_non_str(self):
        with pytest.raises(InvalidType):
            parse_extensions(b"permessage-deflate")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "make",
        [
            lambda n: "b" + " " * n + "x",  # the ws CVE-2021-32640 shape
            lambda n: '"' + "\\a" * (n // 2),
            lambda n: "a;" * (n // 2),
            lambda n: ",a=" * (n // 3),
            lambda n: PMD + "; x=" + '"' * n,
        ],
    )
    def test_linear_time_on_hostile_headers(self, make):
        def cost(n):
            h = make(n)
            t = time.perf_counter()
            for _ in range(3):
                parse_extensions(h)
                negotiate(DeflateConfig(), h)
            return time.perf_counter() - t

        small, big = cost(20_000), cost(200_000)
        # 10x the input: well under 100x the time (quadratic would be ~100x).
        assert big < 40 * small + 0.05


class TestConfig:
    @pytest.mark.parametrize("value", [False, None, {}, {"compress": False, "decompress": False},
                                       {"compress": "disable", "decompress": "disable"},
                                       {"compress": None}])
    def test_off(self, value):
        assert DeflateConfig.from_option(value) is None

    def test_true_is_shared_shared(self):
        assert DeflateConfig.from_option(True) == DeflateConfig("shared", "shared")

    def test_absent_side_is_disabled(self):
        assert DeflateConfig.from_option({"compress": "4KB"}) == DeflateConfig("4KB", "disable")
        assert DeflateConfig.from_option({"decompress": True}) == DeflateConfig("disable", "shared")

    @pytest.mark.parametrize("value", ["shared", "true", 1, 0, 1.5, [True], object()])
    def test_wrong_type(self, value):
        with pytest.raises(InvalidType, match="boolean or an object"):
            DeflateConfig.from_option(value)

    @pytest.mark.parametrize("mode", ["3kb", "Shared", "512KB", "", "dedicated "])
    def test_unknown_mode_case_sensitive(self, mode):
        with pytest.raises(InvalidArgument, match="must be a bool or one of"):
            DeflateConfig.from_option({"compress": mode})

    @pytest.mark.parametrize("value", [1, 3.0, b"shared", ["shared"]])
    def test_mode_wrong_type(self, value):
        with pytest.raises(InvalidType):
            DeflateConfig.from_option({"decompress": value})

    def test_unknown_key(self):
        with pytest.raises(InvalidArgument, match="compres"):
            DeflateConfig.from_option({"compres": True})


def test_agreement_codecs_interoperate_with_each_other():
    """A dedicated server deflater's output inflates with a matching inflater."""
    a = negotiate(DeflateConfig.from_option({"compress": "8KB", "decompress": "dedicated"}), PMD)
    d, i = a.make_deflater(), Inflater(a.server_max_window_bits)
    for msg in [b"abc" * 100, b"abc" * 100, b"xyz"]:
        assert i.decompress(d.compress(msg), 1 << 20, True) == msg


class TestCompressionLevel:
    """``level`` is a bunws addition to Bun's option dict (zlib -1..9, default 1)."""

    def test_default_level_is_fast(self):
        from bunws.extensions import COMPRESSION_LEVEL

        a = negotiate(DeflateConfig.from_option(True), PMD)
        assert COMPRESSION_LEVEL == 1 and a.make_deflater().level == 1

    @pytest.mark.parametrize("level", [-1, 0, 6, 9])
    def test_level_reaches_shared_and_dedicated_deflaters(self, level):
        shared = negotiate(DeflateConfig.from_option({"compress": "shared", "level": level}), PMD)
        dedicated = negotiate(DeflateConfig.from_option({"compress": "dedicated", "level": level}), PMD)
        assert shared.make_deflater().level == level
        assert shared.make_deflater() is shared_deflater(15, 8, level)
        assert dedicated.make_deflater().level == level

    @pytest.mark.parametrize("level, error", [(10, InvalidArgument), (-2, InvalidArgument),
                                              ("6", InvalidType), (True, InvalidType), (1.0, InvalidType)])
    def test_invalid_levels_raise(self, level, error):
        with pytest.raises(error):
            DeflateConfig.from_option({"compress": "shared", "level": level})
