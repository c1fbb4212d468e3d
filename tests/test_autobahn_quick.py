"""Autobahn|Testsuite quick subset (cases 1.* to 7.*) against bunws's echo server.

The suite is Python 2.7 code that scripts/autobahn/install.sh sets up outside the
repository (minutes on a cold cache), so the run is opt-in:

    BUNWS_AUTOBAHN=1 pytest tests/test_autobahn_quick.py

AUTOBAHN_PREFIX (default /tmp/autobahn27) says where the suite is or goes.
The full 517-case run, compression included, is ``scripts/autobahn/run.sh``;
its latest results are in tests/conformance/RESULTS.md.

The summarizer tests below run always: they need no suite, only a fake report.
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
SERVER = REPO / "bench" / "servers" / "bunws_server.py"
QUICK_CASES = 246  # cases 1.* .. 7.* in autobahntestsuite 25.10.1


def _summarize(report: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "summarize.py"), str(report), *args],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.skipif(
    os.environ.get("BUNWS_AUTOBAHN") != "1",
    reason="Autobahn|Testsuite is opt-in: set BUNWS_AUTOBAHN=1 "
    "(installs Python 2.7 + wstest via scripts/autobahn/install.sh, several minutes)",
)
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_autobahn_quick_subset(tmp_path):
    if not SERVER.exists():
        pytest.skip(f"{SERVER.relative_to(REPO)} does not exist")
    prefix = os.environ.get("AUTOBAHN_PREFIX", "/tmp/autobahn27")
    inst = subprocess.run(
        ["bash", str(SCRIPTS / "install.sh"), prefix],
        capture_output=True, text=True, timeout=1500,
    )
    assert inst.returncode == 0, f"install.sh failed:\n{inst.stderr[-4000:]}"
    out = tmp_path / "report"
    env = dict(os.environ, PYTHON=sys.executable, AUTOBAHN_PREFIX=prefix,
               AB_TIMEOUT="900", DEFLATE=os.environ.get("DEFLATE", "dedicated"))
    run = subprocess.run(
        ["bash", str(SCRIPTS / "run.sh"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=1200, env=env, cwd=str(tmp_path),
    )
    report = f"stdout:\n{run.stdout[-8000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert run.returncode == 0, report
    index = json.loads((out / "index.json").read_text())
    assert sum(len(cases) for cases in index.values()) == QUICK_CASES, report


# ---------------------------------------------------------------- summarizer

def _fake_report(tmp_path: Path, cases: dict[str, tuple[str, str]]) -> Path:
    index = {"agent": {}}
    for cid, (behaviour, close) in cases.items():
        name = f"agent_case_{cid.replace('.', '_')}.json"
        index["agent"][cid] = {"behavior": behaviour, "behaviorClose": close,
                               "duration": 1, "remoteCloseCode": 1000, "reportfile": name}
        (tmp_path / name).write_text(json.dumps({
            "description": f"case {cid}", "expectation": "echo", "result": "r",
            "resultClose": "rc", "remoteCloseCode": 1002, "remoteCloseReason": "x",
            "expectedClose": {"closeCode": [1000]}, "wasClean": True,
        }))
    (tmp_path / "index.json").write_text(json.dumps(index))
    return tmp_path


def test_summarize_all_good(tmp_path):
    rep = _fake_report(tmp_path, {
        "1.1.1": ("OK", "OK"), "3.2": ("NON-STRICT", "OK"),
        "7.1.6": ("INFORMATIONAL", "INFORMATIONAL"), "12.1.1": ("UNIMPLEMENTED", "OK"),
    })
    res = _summarize(rep, "--markdown")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "| **total** | 1 | 1 | 1 | 1 | 0 | 0 |" in res.stdout
    assert _summarize(rep, "--fail-unimplemented").returncode == 1
    assert _summarize(rep, "--strict-close").returncode == 1
    assert _summarize(rep, "--expect-cases", "5").returncode == 1


@pytest.mark.parametrize("behaviour,close", [("FAILED", "OK"), ("OK", "WRONG CODE"),
                                             ("OK", "UNCLEAN"), ("FAILED", "FAILED")])
def test_summarize_problem_cases_fail(tmp_path, behaviour, close):
    rep = _fake_report(tmp_path, {"1.1.1": ("OK", "OK"), "7.1.5": (behaviour, close)})
    res = _summarize(rep, "--details")
    assert res.returncode == 1
    assert "7.1.5" in res.stdout and "server sent 1002" in res.stdout


def test_summarize_unreadable_report(tmp_path):
    assert _summarize(tmp_path / "missing").returncode == 2
