"""Smoke run of the server-level fuzz targets (fuzz/fuzz_handshake.py, fuzz/fuzz_topics.py,
fuzz/fuzz_http_pipeline.py).

Each target drives real ``bunws.protocol.Connection`` objects on stub transports
inside its own event loop (servers started once per process, never connected to).
Here each runs over its seeds and a bounded number of hypothesis-generated inputs
(about 30 s for the three on 2 shared cores), so CI exercises the harnesses and their
oracles without atheris. Long coverage-guided runs: see fuzz/README.md.

fuzz_http_pipeline's findings A-D (its docstring) are fixed; its seeds for them now
run like any other seed, and every failure, ``KnownFinding`` included, fails here.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"
TARGETS = ("fuzz_handshake", "fuzz_topics", "fuzz_http_pipeline")
EXAMPLES = {"fuzz_handshake": 5000, "fuzz_topics": 5000, "fuzz_http_pipeline": 2000}

INPUTS = st.one_of(
    st.binary(max_size=800),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(16, 1200)).map(
        lambda t: random.Random(t[0]).randbytes(t[1])),
)


@pytest.fixture(scope="module", params=TARGETS)
def target(request):
    if str(FUZZ_DIR) not in sys.path:
        sys.path.insert(0, str(FUZZ_DIR))
    name = request.param
    spec = importlib.util.spec_from_file_location(f"_bunws_{name}", FUZZ_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield name, module
    module.shutdown()


def test_seeds_and_generated_inputs(target):
    name, module = target
    for seed in module.seeds():
        module.test_one_input(seed)

    @settings(max_examples=EXAMPLES[name], deadline=None, derandomize=True,
              database=None, suppress_health_check=list(HealthCheck))
    @given(INPUTS)
    def run(data):
        # A KnownFinding is an AssertionError too: findings A-D are fixed, so a run
        # that is wrong "only the way they made it" is a regression and fails here.
        module.test_one_input(data)

    run()


def test_handshake_oracles_catch_a_bad_server_output():
    """The output parsers reject what the targets must flag."""
    if str(FUZZ_DIR) not in sys.path:
        sys.path.insert(0, str(FUZZ_DIR))
    from fuzzlib import parse_http_output, parse_server_frames, split_http_responses

    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x02hi"
    responses, rest = parse_http_output(ok)
    assert [s for s, _ in responses] == [200, 101]
    assert parse_server_frames(rest) == [(1, b"hi", False)]
    for bad in (b"HTTP/1.0 200 OK\r\n\r\n", b"HTTP/1.1 20 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\n",
                b"HTTP/1.1 200 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"):
        with pytest.raises(AssertionError):
            parse_http_output(bad)
    for bad in (b"\x81\x82\x00\x00\x00\x00hi", b"\x91\x00", b"\x83\x00", b"\x09\x00",
                b"\x88\x01x", b"\x88\x02\x03\xed", b"\x88\x00\x81\x00", b"\x81\x7e\x00\x05hello",
                b"\x81\x05hi", b"\x80\x00", b"\xc1\x00"):
        with pytest.raises(AssertionError):
            parse_server_frames(bad)
    # split_http_responses: positions of 100 Continue, HEAD answers without a body, a cut tail
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
    data = b"HTTP/1.1 100 Continue\r\n\r\n" + head + b"abc" + head + b"HTTP/1.1 101 S\r\n\r\n\x81\x00"
    responses, rest, cut = split_http_responses(data, lambda p: p == 1)
    assert [(p, s, b) for p, s, _, b in responses] == [(0, 100, b""), (0, 200, b"abc"), (1, 200, b""), (2, 101, b"")]
    assert rest == b"\x81\x00" and not cut
    assert split_http_responses(head + b"a", lambda p: False, allow_partial=True)[2]
    for bad in (head + b"a", head + b"abcX", head + head):  # truncated, junk after, HEAD guessed wrong
        with pytest.raises(AssertionError):
            split_http_responses(bad, lambda p: False)
