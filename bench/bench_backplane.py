"""Pub/sub beyond one process: 2 workers + RedisBackplane vs 1 process.

    python bench/bench_backplane.py [--quick] [--subs 1000] [--duration 5] [--write bench/RESULTS.md]

1. Fan-out deliveries/s, measured by bench/loadgen.c (``--mode fanout``): N
   subscribers on ``/sub`` (spread over the workers by SO_REUSEPORT), one publisher
   on ``/pub`` whose worker delivers locally and through Redis to the other worker.
2. Latency of one publish from the publisher's send to the subscriber's receipt,
   local (same process) vs cross-process (through Redis), measured with a Python
   asyncio client (websockets; the client's own cost is in every figure alike).

Servers: this file with ``--serve`` (the bench convention: /sub, /pub, /echo, plus
/lsub and /lpub that first send the worker's pid). Redis: a private redis-server
started like the tests do (tests/redis_server.py). Nothing is pinned: the
2-worker case needs both cores, shared with Redis and the load generator.
Only 127.0.0.1 is contacted; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.join(ROOT, "tests"))


# --------------------------------------------------------------------------- server
def make_backplane():  # type: ignore[no-untyped-def]
    """The backplane ``REDIS_URL`` names; with ``CLUSTER=1`` it is a comma-separated
    list of cluster nodes, and each worker is seeded with a different one."""
    import bunws
    from bunws.workers import worker_id

    url = os.environ["REDIS_URL"]
    if os.environ.get("CLUSTER") != "1":
        return bunws.RedisBackplane(url)
    urls = url.split(",")
    first = (worker_id() or 0) % len(urls)
    return bunws.RedisBackplane(urls[first:] + urls[:first], cluster=True, sharded=os.environ.get("SHARDED") == "1")


def serve() -> None:
    sys.path.insert(0, ROOT)
    import bunws

    def fetch(req, server):
        if req.path in ("/sub", "/pub", "/echo", "/lsub", "/lpub") and server.upgrade(req, data=req.path):
            return None
        return bunws.Response("ok")

    def open_(ws):
        if ws.data in ("/sub", "/lsub"):
            ws.subscribe("t")
        if ws.data in ("/lsub", "/lpub"):
            ws.send_text(str(os.getpid()))

    def message(ws, msg):
        if ws.data in ("/pub", "/lpub"):
            ws.publish("t", msg)
        elif ws.data == "/echo":
            ws.send(msg)

    workers = int(os.environ.get("WORKERS", "1"))
    url = os.environ.get("REDIS_URL")
    options = {}
    if url:
        options["backplane"] = make_backplane if workers > 1 else make_backplane()
    if workers > 1:
        options["workers"] = workers
    bunws.run(
        fetch,
        bunws.WebSocketHandler(
            open=open_, message=message, idle_timeout=0, send_pings=False,
            max_payload_length=64 * 1024 * 1024, backpressure_limit=64 * 1024 * 1024,
        ),
        hostname="127.0.0.1",
        port=int(os.environ["PORT"]),
        uvloop=os.environ.get("UVLOOP", "1") == "1",
        backlog=4096,
        max_pending_handshakes=100_000,
        **options,
    )


class Server:
    def __init__(self, workers: int, redis_url: str | None, **extra_env: str) -> None:
        from redis_server import free_port

        self.port = free_port()
        env = dict(os.environ, PORT=str(self.port), WORKERS=str(workers), PYTHONPATH=ROOT, **extra_env)
        if redis_url:
            env["REDIS_URL"] = redis_url
        self.p = subprocess.Popen([sys.executable, __file__, "--serve"], env=env, start_new_session=True)
        from _harness import ws_handshake_ok

        deadline = time.monotonic() + 20
        while not ws_handshake_ok(self.port):
            if time.monotonic() > deadline or self.p.poll() is not None:
                self.stop()
                raise RuntimeError("bench server did not start")
            time.sleep(0.1)
        time.sleep(0.5 if workers > 1 else 0.1)  # every worker listening

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()


# --------------------------------------------------------------------------- measurements
def fanout(loadgen: str, port: int, subs: int, size: int, window: int, duration: float) -> dict:
    from _harness import run_loadgen

    args = ["--mode", "fanout", "--port", port, "--subs", subs, "--size", size, "--window", window,
            "--duration", duration, "--warmup", 1, "--timeout", duration + 40]
    return run_loadgen(loadgen, args, timeout=duration + 60)


async def measure_latency(port: int, samples: int, want_remote: bool) -> list[float] | None:
    from websockets.asyncio.client import connect

    async def conn(path: str):
        ws = await asyncio.wait_for(connect(f"ws://127.0.0.1:{port}{path}", max_size=None), 5)
        return ws, int(await asyncio.wait_for(ws.recv(), 5))

    sub, sub_pid = await conn("/lsub")
    pub = None
    for _ in range(60):
        pub, pub_pid = await conn("/lpub")
        if (pub_pid != sub_pid) == want_remote:
            break
        await pub.close()
        pub = None
    if pub is None:
        await sub.close()
        return None
    await asyncio.sleep(0.3)  # the subscription reached Redis
    out = []
    try:
        for i in range(samples + 50):
            t0 = time.perf_counter()
            await pub.send(f"{i}")
            async with asyncio.timeout(5):
                while await sub.recv() != f"{i}":
                    pass
            if i >= 50:
                out.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.002)
    finally:
        await sub.close()
        await pub.close()
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--subs", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--write", metavar="RESULTS_MD")
    a = ap.parse_args()
    if a.serve:
        return serve()
    if a.quick:
        a.duration, a.samples, a.reps = 2.0, 300, 1

    from _harness import build_c
    from redis_server import RedisServer, find_or_install

    loadgen = build_c(os.path.join(BENCH, "loadgen.c"), os.path.join(BENCH, ".work", "loadgen"), libs=["-lz"])
    path, why = find_or_install()
    if path is None:
        sys.exit(f"redis-server unavailable: {why}")
    redis = RedisServer(path)
    redis.start()
    configs = [("1 process", 1, False), ("1 process + Redis backplane", 1, True), ("2 workers + Redis", 2, True)]
    rows = []
    try:
        for name, workers, use_redis in configs:
            rates, cpus, lat_local, lat_remote = [], [], [], []
            for _ in range(a.reps):
                srv = Server(workers, redis.url if use_redis else None)
                try:
                    res = fanout(loadgen, srv.port, a.subs, a.size, a.window, a.duration)
                    if "error" in res:
                        print(name, res["error"], file=sys.stderr)
                    rate = res.get("deliveries_per_s") or res.get("rate") or res.get("msgs_per_s")
                    if rate:
                        rates.append(float(rate))
                    print(name, json.dumps(res)[:300], file=sys.stderr)
                finally:
                    srv.stop()
                srv = Server(workers, redis.url if use_redis else None)
                try:
                    lat_local += asyncio.run(measure_latency(srv.port, a.samples // a.reps, False)) or []
                    if workers > 1:
                        lat_remote += asyncio.run(measure_latency(srv.port, a.samples // a.reps, True)) or []
                finally:
                    srv.stop()
            rows.append((name, rates, lat_local, lat_remote))
    finally:
        redis.stop()

    base = statistics.median(rows[0][1]) if rows[0][1] else None
    lines = [
        f"Fan-out: {a.subs} subscribers × {a.size} B, window {a.window}, {a.duration:g} s × {a.reps} "
        "(bench/loadgen.c); latency: publish → receipt over a Python asyncio client "
        f"(websockets), {a.samples} samples, p50/p99 in ms.",
        "",
        "| configuration | deliveries/s (median) | vs 1 process | latency local p50 / p99 | latency cross-process p50 / p99 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rates, ll, lr in rows:
        med = statistics.median(rates) if rates else None
        ratio = f"{med / base:.2f}×" if med and base else "–"
        loc = f"{pct(ll, 0.5):.3f} / {pct(ll, 0.99):.3f}" if ll else "–"
        rem = f"{pct(lr, 0.5):.3f} / {pct(lr, 0.99):.3f}" if lr else "–"
        lines.append(f"| {name} | {med:,.0f} | {ratio} | {loc} | {rem} |" if med else f"| {name} | – | – | {loc} | {rem} |")
    table = "\n".join(lines)
    print(table)
    if a.write:
        write_results(a.write, "Backplane", "bench/bench_backplane.py", "uvloop, nothing pinned (2 workers, redis-server and the load generator share the 2 cores)", table)



def write_results(path: str, title: str, script: str, note: str, table: str) -> None:
    """Replace this benchmark's section of the results file with ``table``."""
    from _harness import machine_info, write_section

    info = machine_info()
    args = " ".join(x for x in sys.argv[1:] if not x.startswith("--write")).replace(path, "").strip()
    heading = f"## {title} ({script})"
    section = (
        f"{heading}\n\n{info['date']} · `python {script} {args}` · {info['cpu']}, {info['cpus']} CPUs, "
        f"load {info.get('load', '?')} · {note}\n\n{table}\n"
    )
    write_section(path, heading, section)

if __name__ == "__main__":
    main()
