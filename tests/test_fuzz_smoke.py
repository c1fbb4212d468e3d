"""Smoke run of the fuzz targets in fuzz/ without atheris.

Each target's ``test_one_input(bytes)`` runs over its seed inputs and a bounded
number of hypothesis-generated inputs (the whole file stays well under 30 s), so
CI exercises the harnesses and their oracles on every run. Long coverage-guided
runs use atheris: see fuzz/README.md.
"""

from __future__ import annotations

import importlib.util
import random
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"
TARGETS = ("fuzz_frame_parser", "fuzz_extensions", "fuzz_inflater")
EXAMPLES = {"fuzz_frame_parser": 3000, "fuzz_extensions": 2000, "fuzz_inflater": 1500}


def _load(name: str):
    if str(FUZZ_DIR) not in sys.path:
        sys.path.insert(0, str(FUZZ_DIR))
    spec = importlib.util.spec_from_file_location(f"_bunws_{name}", FUZZ_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# hypothesis's own binary() favours tiny inputs; mix in long uniform random ones so
# the structured modes of the targets build multi-frame streams.
INPUTS = st.one_of(
    st.binary(max_size=1500),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(16, 3000)).map(
        lambda t: random.Random(t[0]).randbytes(t[1])),
)


@pytest.fixture(scope="module", params=TARGETS)
def target(request):
    return request.param, _load(request.param)


def test_seeds(target):
    _, module = target
    for seed in module.seeds():
        module.test_one_input(seed)


@pytest.mark.parametrize("name", TARGETS)
def test_generated_inputs(name):
    module = _load(name)

    @settings(max_examples=EXAMPLES[name], deadline=None, derandomize=True,
              database=None, suppress_health_check=list(HealthCheck))
    @given(INPUTS)
    def run(data):
        module.test_one_input(data)

    run()


def test_parse_extensions_is_linear():
    """Pathological headers (the shapes behind header-parser ReDoS CVEs) stay fast."""
    from bunws.extensions import parse_extensions

    n = 200_000
    headers = [
        "b" + " " * n + "x",
        "permessage-deflate" + ";" * n,
        "a; b=" + '"' + "\\a" * (n // 2),
        ", " * n + "permessage-deflate",
        "x" * n,
        "p; " + "k=v; " * (n // 5),
    ]
    for header in headers:
        start = time.perf_counter()
        parse_extensions(header)
        assert time.perf_counter() - start < 2.0, header[:40]
