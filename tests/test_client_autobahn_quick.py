"""Autobahn|Testsuite quick subset (cases 1.* to 7.*) against the bunws client,
with wstest as the fuzzing server (client mode). Opt-in, like the server's run:

    BUNWS_AUTOBAHN=1 pytest tests/test_client_autobahn_quick.py

AUTOBAHN_PREFIX (default /tmp/autobahn27) says where the suite is or goes. The full
517-case client run is ``scripts/autobahn/run_client.sh``; its latest results are in
tests/conformance/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts" / "autobahn"
QUICK_CASES = 246  # cases 1.* .. 7.* in autobahntestsuite 25.10.1


@pytest.mark.skipif(
    os.environ.get("BUNWS_AUTOBAHN") != "1",
    reason="Autobahn|Testsuite is opt-in: set BUNWS_AUTOBAHN=1 "
    "(installs Python 2.7 + wstest via scripts/autobahn/install.sh, several minutes)",
)
@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_autobahn_client_quick_subset(tmp_path: Path, loop: str) -> None:
    prefix = os.environ.get("AUTOBAHN_PREFIX", "/tmp/autobahn27")
    inst = subprocess.run(["bash", str(SCRIPTS / "install.sh"), prefix],
                          capture_output=True, text=True, timeout=1500)
    assert inst.returncode == 0, f"install.sh failed:\n{inst.stderr[-4000:]}"
    out = tmp_path / "report"
    env = dict(os.environ, PYTHON=sys.executable, AUTOBAHN_PREFIX=prefix, AB_TIMEOUT="900")
    args = ["--quick", "--out", str(out)] + (["--uvloop"] if loop == "uvloop" else [])
    run = subprocess.run(["bash", str(SCRIPTS / "run_client.sh"), *args],
                         capture_output=True, text=True, timeout=1200, env=env, cwd=str(tmp_path))
    report = f"stdout:\n{run.stdout[-8000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert run.returncode == 0, report
    index = json.loads((out / "index.json").read_text())
    assert sum(len(cases) for cases in index.values()) == QUICK_CASES, report
    behaviours = {case["behavior"] for cases in index.values() for case in cases.values()}
    assert behaviours <= {"OK", "NON-STRICT", "INFORMATIONAL"}, report
