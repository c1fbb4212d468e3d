#!/usr/bin/env python3
"""Per-category summary of an Autobahn|Testsuite fuzzingclient report.

    python scripts/autobahn/summarize.py REPORT_DIR_OR_INDEX_JSON [options]

Options:
  --markdown            print GitHub markdown tables (for tests/conformance/RESULTS.md)
  --details             list every problem case with the suite's own words
                        (description, expectation, observed result, close result),
                        read from the per-case JSON files next to index.json
  --fail-unimplemented  also fail when a case is UNIMPLEMENTED (e.g. 12.*/13.*
                        when permessage-deflate was expected to be negotiated)
  --strict-close        treat a close behaviour of INFORMATIONAL as a problem too
  --expect-cases N      fail unless the report holds exactly N cases per agent

Exit status: 0 when every case is OK / NON-STRICT / INFORMATIONAL (or UNIMPLEMENTED
without --fail-unimplemented) and every close behaviour is OK; 1 otherwise;
2 when the report cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict

BEHAVIOURS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"}

CATEGORY_NAMES = {
    1: "Framing",
    2: "Pings/Pongs",
    3: "Reserved bits",
    4: "Opcodes",
    5: "Fragmentation",
    6: "UTF-8 handling",
    7: "Close handling",
    9: "Limits/performance",
    10: "Miscellaneous",
    12: "Compression (payloads)",
    13: "Compression (parameters)",
}


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in case_id.split("."))


def load_index(path: str) -> tuple[dict, str]:
    if os.path.isdir(path):
        path = os.path.join(path, "index.json")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh), os.path.dirname(os.path.abspath(path))


def is_problem(res: dict, args) -> bool:
    behaviour = res.get("behavior", "?")
    close = res.get("behaviorClose", "?")
    ok_close = {"OK", "INFORMATIONAL"} if not args.strict_close else {"OK"}
    accepted = ACCEPTED - ({"UNIMPLEMENTED"} if args.fail_unimplemented else set())
    return behaviour not in accepted or close not in ok_close


def case_details(report_dir: str, res: dict) -> dict:
    name = res.get("reportfile")
    if not name:
        return {}
    try:
        with open(os.path.join(report_dir, name), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def clip(text, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summarize_agent(agent: str, cases: dict, report_dir: str, args, out) -> bool:
    per_cat: dict[int, Counter] = defaultdict(Counter)
    bad_close: Counter = Counter()
    problems = []
    for cid, res in cases.items():
        cat = case_key(cid)[0]
        per_cat[cat][res.get("behavior", "?")] += 1
        close = res.get("behaviorClose", "?")
        if close not in ("OK", "INFORMATIONAL") or (args.strict_close and close != "OK"):
            bad_close[cat] += 1
        if is_problem(res, args):
            problems.append(cid)
    problems.sort(key=case_key)

    cols = list(BEHAVIOURS) + ["close not OK"]
    total = Counter()
    rows = []
    for cat in sorted(per_cat):
        counts = [per_cat[cat][b] for b in BEHAVIOURS] + [bad_close[cat]]
        other = sum(per_cat[cat].values()) - sum(counts[:-1])
        if other:  # a behaviour this script does not know: show it, count it as a problem
            cols_extra = ", ".join(f"{k}={v}" for k, v in per_cat[cat].items() if k not in BEHAVIOURS)
            print(f"note: category {cat} has other behaviours: {cols_extra}", file=sys.stderr)
        for name, n in zip(cols, counts):
            total[name] += n
        rows.append([f"{cat} {CATEGORY_NAMES.get(cat, '')}".strip()] + counts)
    rows.append(["total"] + [total[c] for c in cols])

    w = out.write
    if args.markdown:
        w(f"\n### {agent}: {len(cases)} cases\n\n")
        w("| category | " + " | ".join(cols) + " |\n")
        w("|---|" + "---:|" * len(cols) + "\n")
        for r in rows:
            label = f"**{r[0]}**" if r[0] == "total" else r[0]
            w("| " + " | ".join([label] + [str(x) for x in r[1:]]) + " |\n")
    else:
        w(f"\nAutobahn fuzzingclient report for {agent!r}: {len(cases)} cases\n")
        w(f"{'category':<30}" + "".join(f"{c:>15}" for c in cols) + "\n")
        for r in rows:
            w(f"{r[0]:<30}" + "".join(f"{x:>15}" for x in r[1:]) + "\n")

    if problems:
        w(f"\n{len(problems)} problem case(s): "
          + ", ".join(f"{c} ({cases[c].get('behavior')}/{cases[c].get('behaviorClose')})" for c in problems)
          + "\n")
        if args.details:
            for cid in problems:
                d = case_details(report_dir, cases[cid])
                w(f"\n- case {cid}: behaviour {cases[cid].get('behavior')}, "
                  f"close {cases[cid].get('behaviorClose')}\n")
                for key in ("description", "expectation", "result", "resultClose"):
                    if d.get(key):
                        w(f"  - {key}: {clip(d[key])}\n")
                if d:
                    exp = d.get("expectedClose") or {}
                    w(f"  - close: server sent {d.get('remoteCloseCode')} {d.get('remoteCloseReason')!r}, "
                      f"expected {exp.get('closeCode')}; clean={d.get('wasClean')}"
                      + (f" ({clip(d['wasNotCleanReason'], 120)})" if d.get("wasNotCleanReason") else "")
                      + "\n")
                if cases[cid].get("reportfile"):
                    w(f"  - report: {cases[cid]['reportfile']}\n")
    else:
        w("\nno problem cases\n")
    if args.expect_cases is not None and len(cases) != args.expect_cases:
        w(f"\nexpected {args.expect_cases} cases, report has {len(cases)}\n")
        return False
    return not problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", help="report directory or its index.json")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--details", action="store_true")
    ap.add_argument("--fail-unimplemented", action="store_true")
    ap.add_argument("--strict-close", action="store_true")
    ap.add_argument("--expect-cases", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        index, report_dir = load_index(args.report)
    except (OSError, ValueError) as exc:
        print(f"cannot read report {args.report}: {exc}", file=sys.stderr)
        return 2
    if not index:
        print("report holds no agent", file=sys.stderr)
        return 2
    ok = True
    for agent in sorted(index):
        ok = summarize_agent(agent, index[agent], report_dir, args, sys.stdout) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
