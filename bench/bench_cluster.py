"""2 bunws workers on a 3-node Redis Cluster, sharded vs classic, next to one Redis.

    python bench/bench_cluster.py [--quick] [--reps 3] [--duration 5] [--write bench/RESULTS.md]

The measurements are bench/bench_backplane.py's (fan-out deliveries/s by
bench/loadgen.c, publish → receipt latency across the two workers over a Python
client); the servers are its ``--serve`` servers, whose workers are seeded with
different cluster nodes (``CLUSTER=1``). The cluster has 3 masters and no
replicas, started like the tests start theirs (tests/redis_server.py). Nothing is
pinned: the 2 workers, 3 (or 1) redis-server and the load generator share the
machine's cores. Only 127.0.0.1 is contacted; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.join(os.path.dirname(BENCH), "tests"))

from bench_backplane import Server, fanout, measure_latency, pct, write_results  # noqa: E402


def measure(loadgen: str, name: str, url: str, env: dict[str, str], a: argparse.Namespace) -> tuple:
    rates: list[float] = []
    latency: list[float] = []
    for _ in range(a.reps):
        srv = Server(2, url, **env)
        try:
            res = fanout(loadgen, srv.port, a.subs, a.size, a.window, a.duration)
            rate = res.get("deliveries_per_s") or res.get("rate") or res.get("msgs_per_s")
            if rate:
                rates.append(float(rate))
            print(name, json.dumps(res)[:300], file=sys.stderr)
            latency += asyncio.run(measure_latency(srv.port, a.samples // a.reps, True)) or []
        finally:
            srv.stop()
    return name, rates, latency


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--subs", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--samples", type=int, default=900)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--write", metavar="RESULTS_MD")
    a = ap.parse_args()
    if a.quick:
        a.duration, a.samples, a.reps = 2.0, 300, 1

    from _harness import build_c
    from redis_server import RedisCluster, RedisServer, find_or_install

    loadgen = build_c(os.path.join(BENCH, "loadgen.c"), os.path.join(BENCH, ".work", "loadgen"), libs=["-lz"])
    path, why = find_or_install()
    if path is None:
        sys.exit(f"redis-server unavailable: {why}")
    single = RedisServer(path)
    cluster = RedisCluster(path, masters=3, replicas=0)
    rows = []
    try:
        single.start()
        cluster.start()
        urls = ",".join(cluster.urls)
        # Interleaved per repetition would need 3 clusters; the configurations run
        # one after the other instead, each with its own fresh servers.
        rows.append(measure(loadgen, "single Redis, classic", single.url, {}, a))
        rows.append(measure(loadgen, "3-node cluster, classic", urls, {"CLUSTER": "1"}, a))
        rows.append(measure(loadgen, "3-node cluster, sharded", urls, {"CLUSTER": "1", "SHARDED": "1"}, a))
    finally:
        single.stop()
        cluster.stop()

    base = statistics.median(rows[0][1]) if rows[0][1] else None
    lines = [
        f"2 workers (each seeded with a different cluster node). Fan-out: {a.subs} subscribers × {a.size} B, "
        f"window {a.window}, {a.duration:g} s × {a.reps} (bench/loadgen.c); latency: publish in one worker → "
        f"receipt from the other, {a.samples} samples, p50/p99 in ms.",
        "",
        "| Redis | deliveries/s (median) | vs single Redis | cross-worker latency p50 / p99 |",
        "|---|---:|---:|---:|",
    ]
    for name, rates, lat in rows:
        med = statistics.median(rates) if rates else None
        ratio = f"{med / base:.2f}×" if med and base else "–"
        lt = f"{pct(lat, 0.5):.3f} / {pct(lat, 0.99):.3f}" if lat else "–"
        lines.append(f"| {name} | {med:,.0f} | {ratio} | {lt} |" if med else f"| {name} | – | – | {lt} |")
    table = "\n".join(lines)
    print(table)
    if a.write:
        write_results(a.write, "Redis Cluster backplane", "bench/bench_cluster.py", "uvloop, nothing pinned; the machine is shared with other jobs and noisy: compare ratios", table)


if __name__ == "__main__":
    main()
