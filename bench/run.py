"""The one benchmark command: bunws side by side with Bun and the Python WebSocket servers.

    bash bench/setup.sh                 # once: peers into bench/.work/
    python bench/run.py --quick         # a few minutes
    python bench/run.py                 # full: 3 repetitions, every combination
    python bench/run.py --scenarios echo --targets bun,bunws,picows --write bench/RESULTS.md

    python bench/run.py --targets bun,bunws,bunws-uvloop,picows --estimate   # plan and time only

Scenarios: echo (throughput and fixed-rate latency), fanout, deflate, conns, http (wrk on
GET /), core (bench/bench_core.py). Method: server pinned to CPU 1, load generator to CPU 0;
targets interleaved within each repetition (rotated between repetitions); medians over
repetitions; every figure also as a ratio to Bun and to the best Python peer measured in the
same run. The report ends with the issue 17 goals, each checked against this run's medians.
See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

SECTION = "## Servers (bench/run.py)"

# Per-connection in-flight window per payload size: deep enough that the server, not the
# round trip, is the limit (measured: at W=16 with 256 connections both c_echo and the
# load generator sit half idle in lock-step; at these depths c_echo runs several times the
# fastest peer). See bench/README.md.
ECHO_WINDOW = {16: 128, 1024: 32, 65536: 4}
SIZE_LABEL = {16: "16 B", 64: "64 B", 1024: "1 KiB", 65536: "64 KiB"}

# (connections, payload, window). 16 B × 256 also runs at W64: issue 17's goal configuration.
ECHO_FULL = ([(c, 16, ECHO_WINDOW[16]) for c in (1, 16, 256)] + [(256, 16, 64)]
             + [(c, s, ECHO_WINDOW[s]) for s in (1024, 65536) for c in (1, 16, 256)])
# quick: issue 17's two echo goal configurations and the 1 KiB middle ground
ECHO_QUICK = [(256, 16, 64), (16, 1024, 32), (256, 65536, 4)]
# (connections, payload, total msgs/s): rates every peer sustains; 1 KiB @ 5 k is issue 17's
LATENCY = [(16, 1024, 5000), (16, 16, 10000)]
FANOUT_FULL = [(n, s, w) for n in (100, 1000, 5000) for s in (64, 1024) for w in (32, 128)]
FANOUT_QUICK = [(5000, 64, 32), (5000, 1024, 32), (1000, 64, 128)]
CONNS = 10000
CONNS_CONCURRENCY = 64           # in-flight handshakes: below asyncio's default backlog (100)
HTTP_CONNS, HTTP_THREADS = 64, 1  # wrk -t1 -c64 on GET /, every server answers like Response("ok")

# Seconds a run costs beyond its warm-up and measured time (readiness checks, connection
# set-up, the settle waits before and after), fitted to runs on this 2-core machine
# (bench/README.md, "Run time"); only used to print the estimated wall time.
OVERHEAD_S = {"echo": 0.5, "latency": 0.5, "fanout": 0.6, "deflate": 0.5, "http": 0.4}
OVERHEAD_PER_CONN_S = 0.0002     # opening and tearing down one connection (fan-out subscribers)
START_S = 1.0                    # starting one server (per scenario and repetition)
CONNS_RUN_S = 1.5                # conns: a fresh server's start, settle and stop ...
CONNS_PER_CONN_S = 0.0002        # ... plus opening and holding each idle connection
CORE_S = {True: 30, False: 150}  # bench_core.py --quick / full


# Echo with permessage-deflate on both sides: the client sends deflated text frames
# (loadgen --compress), the server inflates, and echoes compressed. Peers that compress.
DEFLATE_TARGETS = {"bun", "bunws", "bunws-uvloop", "websockets", "websockets-uvloop", "aiohttp"}
DEFLATE_CONFIGS = [(16, 1024, 32), (16, 16384, 8)]


def deflate_label(c, s, w):
    return f"{SIZE_LABEL.get(s, f'{s // 1024} KiB')} text × {c} conn (W{w}), deflate"


def echo_label(c, s, w):
    return f"{SIZE_LABEL[s]} × {c} conn (W{w})"


def latency_label(c, s, rate):
    return f"{SIZE_LABEL[s]} × {c} conn @ {rate // 1000} k msg/s"


def conns_label(n):
    return f"{n} idle conns"


HTTP_LABEL = f'GET / → "ok" (wrk -t{HTTP_THREADS} -c{HTTP_CONNS})'


@dataclass(frozen=True)
class Goal:
    """One row of issue 17's goal table: subject's median against factor × reference's
    median (or against an absolute limit when reference is None), same run."""
    title: str
    scenario: str
    config: str
    metric: str
    unit: str
    subject: str
    reference: str | None
    factor: float
    higher_better: bool = True

    def text(self):
        op = "≥" if self.higher_better else "≤"
        if self.reference is None:
            return f"{self.subject} {op} {H.fmt_num(self.factor, self.unit)}"
        times = "" if self.factor == 1 else f"{self.factor:g}× "
        return f"{self.subject} {op} {times}{self.reference}"


def issue17_goals(conns):
    """Issue 17's goals (stock asyncio unless the subject says uvloop)."""
    lat = latency_label(*LATENCY[0])
    held = conns_label(conns)
    hs = "handshakes/s, 10 000 connections" + ("" if conns == CONNS else f" (this run: {conns})")
    rss = "RSS per idle WebSocket" + ("" if conns == CONNS else f" (this run: {conns} connections)")
    return [
        Goal(f"latency p50, {lat}", "latency", lat, "lat_p50_us", "µs", "bunws", "picows", 1.0, False),
        Goal(f"latency p99, {lat}", "latency", lat, "lat_p99_us", "µs", "bunws", "picows", 1.0, False),
        # The same with the opt-in compiled transport (picows runs on that library too).
        Goal(f"latency p50, {lat}", "latency", lat, "lat_p50_us", "µs", "bunws-fast", "picows", 1.0, False),
        Goal(f"latency p99, {lat}", "latency", lat, "lat_p99_us", "µs", "bunws-fast", "picows", 1.0, False),
        Goal(hs, "conns", held, "handshakes_per_s", "handshakes/s", "bunws", "bun", 0.8),
        Goal(hs, "conns", held, "handshakes_per_s", "handshakes/s", "bunws-uvloop", "bun", 1.0),
        Goal(rss, "conns", held, "rss_per_conn_kib", "KiB", "bunws", None, 1.5, False),
        Goal("echo " + echo_label(256, 16, 64), "echo", echo_label(256, 16, 64), "msgs_per_s", "msg/s",
             "bunws", "bun", 1.0),
        Goal("echo " + echo_label(256, 16, 64), "echo", echo_label(256, 16, 64), "msgs_per_s", "msg/s",
             "bunws-fast", "bun", 1.0),
        Goal("echo " + echo_label(256, 65536, 4), "echo", echo_label(256, 65536, 4), "msgs_per_s", "msg/s",
             "bunws", "picows", 1.2),
        Goal("fan-out " + fanout_label(5000, 1024, 32), "fanout", fanout_label(5000, 1024, 32),
             "deliveries_per_s", "deliveries/s", "bunws", "bun", 1.0),
        Goal("fan-out " + fanout_label(5000, 64, 32), "fanout", fanout_label(5000, 64, 32),
             "deliveries_per_s", "deliveries/s", "bunws", "bun", 1.0),
        Goal(f"HTTP hello, {HTTP_LABEL}", "http", HTTP_LABEL, "requests_per_s", "req/s", "bunws", "bun", 0.9),
    ]


def fanout_label(n, s, w):
    return f"{n} subs × {SIZE_LABEL[s]} (W{w})"


class Runner:
    def __init__(self, args):
        self.args = args
        self.stats = H.Stats()
        self.loadgen = H.build_all()
        self.dur = args.duration or (1.0 if args.quick else 2.0)
        self.warm = args.warmup if args.warmup is not None else (0.3 if args.quick else 0.5)
        self.reps = args.reps or (1 if args.quick else 3)
        self.targets = H.all_targets()
        if args.targets:
            want = [x.strip() for x in args.targets.split(",") if x.strip()]
            unknown = set(want) - {t.name for t in self.targets}
            if unknown:
                sys.exit(f"unknown targets: {', '.join(sorted(unknown))}")
            self.targets = [t for t in self.targets if t.name in want]
        for t in self.targets:
            H.check_target(t)
            if t.unavailable:
                H.log(f"[skip] {t.name}: {t.unavailable}")
        self.core_md = None
        self.http_missing = None
        self.estimate_s = None

    # -- plan ---------------------------------------------------------------------------

    def plan(self, scenarios):
        """[(scenario, runs, estimated seconds)] for the scenarios about to run."""
        quick, reps = self.args.quick, self.reps
        names = [t.name for t in self.available()]
        per_run = self.warm + self.dur

        def runs(scenario, configs, conns_of, targets):
            n = len(targets) * reps
            secs = n * START_S + sum(n * (per_run + OVERHEAD_S[scenario] + OVERHEAD_PER_CONN_S * conns_of(c))
                                     for c in configs)
            return (scenario, n * len(configs), secs)

        rows = []
        for sc in scenarios:
            if sc == "echo":
                rows.append(runs("echo", ECHO_QUICK if quick else ECHO_FULL, lambda c: c[0], names))
                rows.append(runs("latency", LATENCY, lambda c: c[0], names))
            elif sc == "fanout":
                rows.append(runs("fanout", FANOUT_QUICK if quick else FANOUT_FULL, lambda c: c[0], names))
            elif sc == "deflate":
                rows.append(runs("deflate", DEFLATE_CONFIGS, lambda c: c[0],
                                 [t for t in names if t in DEFLATE_TARGETS]))
            elif sc == "conns":
                n = len(names) * reps
                rows.append(("conns", n, n * (CONNS_RUN_S + CONNS_PER_CONN_S * (self.args.conns or CONNS))))
            elif sc == "http":
                n = len(names) * reps if H.have_wrk() else 0
                wrk_s = (1 if self.warm > 0 else 0) + max(1, math.ceil(self.dur))
                rows.append(("http", n, n * (START_S + wrk_s + OVERHEAD_S["http"])))
            elif sc == "core":
                rows.append(("core", 1, CORE_S[bool(quick)]))
        return rows

    def print_plan(self, scenarios):
        rows = self.plan(scenarios)
        total = sum(r[2] for r in rows)
        names = [t.name for t in self.available()]
        H.log(f"[plan] {len(names)} targets ({', '.join(names)}), {self.reps} repetition(s), "
              f"{self.dur:g} s measured + {self.warm:g} s warm-up per run")
        for sc, n, secs in rows:
            H.log(f"[plan]   {sc:8s} {n:4d} runs  ~{secs / 60:5.1f} min")
        H.log(f"[plan] estimated wall time ~{total / 60:.0f} min")
        return total

    # -- helpers ------------------------------------------------------------------------

    def available(self):
        return [t for t in self.targets if not t.unavailable]

    def start_all(self, scenario, only=None, extra_env=None):
        servers = {}
        for t in self.available():
            if only is not None and t.name not in only:
                continue
            s = H.ServerProc(t, extra_env)
            err = s.wait_ready()
            if err:
                s.stop()
                t.unavailable = f"failed to start: {err}"
                H.log(f"[skip] {t.name}: {t.unavailable}")
                continue
            s.pause()
            servers[t.name] = s
        return servers

    def ensure_alive(self, servers, name, scenario, config):
        s = servers[name]
        s.resume()
        if s.alive():
            s.settle()  # a loaded machine can leave it busy with the previous teardown
            for _ in range(3):
                if H.ws_handshake_ok(s.port, timeout=2.0):
                    return s
                if not s.alive():
                    break
        self.stats.note(scenario, config, name, "server died or stopped answering; restarted")
        H.log(f"[warn] {name} not answering before {config}: restarting ({s.tail()})")
        s.stop()
        s = H.ServerProc(s.t, s.extra_env)
        err = s.wait_ready()
        if err:
            s.stop()
            return None
        servers[name] = s
        return s

    def measure(self, servers, name, scenario, config, lg_args=None, run=None):
        """One run against servers[name]: the load generator with lg_args, or run(server)."""
        t0 = time.monotonic()
        s = self.ensure_alive(servers, name, scenario, config)
        if s is None:
            self.stats.note(scenario, config, name, "could not restart")
            return None
        # every other server is SIGSTOPped (see start_all); only this one can run
        s.settle()
        if run is None:
            res = H.run_loadgen(self.loadgen, ["--port", s.port] + lg_args,
                                timeout=self.warm + self.dur + 60, server=s)
        else:
            res = run(s)
        s.settle()  # its teardown of this run's connections happens now, not in the next run
        s.pause()
        res.update(target=name, scenario=scenario, config=config, wall_s=time.monotonic() - t0)
        self.stats.raw.append(res)
        if "error" in res:
            self.stats.note(scenario, config, name, f"error: {res['error']}")
            H.log(f"  {name:18s} ERROR {res['error']}")
            return None
        if res.get("failed"):
            self.stats.note(scenario, config, name, f"{res['failed']} connections failed")
        if res.get("closed_by_server"):
            self.stats.note(scenario, config, name, f"{res['closed_by_server']} connections closed by server")
        if res.get("bad_len"):
            self.stats.note(scenario, config, name, f"{res['bad_len']} messages of unexpected length")
        return res

    # -- scenarios ----------------------------------------------------------------------

    def echo(self):
        configs = ECHO_QUICK if self.args.quick else ECHO_FULL
        text = ["--text"] if self.args.text else []
        for rep in range(self.reps):
            H.log(f"[echo] repetition {rep + 1}/{self.reps}")
            servers = self.start_all("echo")
            names = H.interleaved(list(servers), rep)
            try:
                for (c, size, w) in configs:
                    label = echo_label(c, size, w)
                    H.log(f" {label}")
                    for name in names:
                        r = self.measure(servers, name, "echo", label,
                                         ["--mode", "echo", "--conns", c, "--size", size,
                                          "--window", w, "--duration", self.dur,
                                          "--warmup", self.warm, "--concurrency", CONNS_CONCURRENCY] + text)
                        if r:
                            self.stats.add("echo", label, name, "msgs_per_s", r["msgs_per_s"])
                            self.stats.add("echo", label, name, "client_cpu", r.get("client_cpu"))
                            self.stats.add("echo", label, name, "server_cpu", r.get("server_cpu"))
                            H.log(f"  {name:18s} {H.fmt_num(r['msgs_per_s'])} msg/s  "
                                  f"client {r.get('client_cpu', 0):.0%} server {r.get('server_cpu', 0):.0%}")
                for (lat_c, lat_s, lat_rate) in LATENCY:
                    lat_label = latency_label(lat_c, lat_s, lat_rate)
                    H.log(f" {lat_label}")
                    for name in names:
                        r = self.measure(servers, name, "latency", lat_label,
                                         ["--mode", "echo", "--conns", lat_c, "--size", lat_s,
                                          "--rate", lat_rate, "--duration", self.dur, "--warmup", self.warm,
                                          "--concurrency", CONNS_CONCURRENCY] + text)
                        if r and r.get("lat_samples"):
                            for k in ("lat_p50_us", "lat_p99_us"):
                                self.stats.add("latency", lat_label, name, k, r[k])
                            if r["msgs_per_s"] < 0.9 * lat_rate:
                                self.stats.note("latency", lat_label, name,
                                                f"could not keep the rate ({r['msgs_per_s']:.0f}/s)")
                            H.log(f"  {name:18s} p50 {r['lat_p50_us']:.0f} µs  p99 {r['lat_p99_us']:.0f} µs")
            finally:
                for s in servers.values():
                    s.stop()

    def fanout(self):
        configs = FANOUT_QUICK if self.args.quick else FANOUT_FULL
        for rep in range(self.reps):
            H.log(f"[fanout] repetition {rep + 1}/{self.reps}")
            servers = self.start_all("fanout")
            names = H.interleaved(list(servers), rep)
            try:
                for (n, size, w) in configs:
                    label = fanout_label(n, size, w)
                    H.log(f" {label}")
                    for name in names:
                        r = self.measure(servers, name, "fanout", label,
                                         ["--mode", "fanout", "--subs", n, "--size", size, "--window", w,
                                          "--duration", self.dur, "--warmup", self.warm,
                                          "--concurrency", CONNS_CONCURRENCY])
                        if r:
                            self.stats.add("fanout", label, name, "deliveries_per_s", r["deliveries_per_s"])
                            self.stats.add("fanout", label, name, "client_cpu", r.get("client_cpu"))
                            self.stats.add("fanout", label, name, "server_cpu", r.get("server_cpu"))
                            if r.get("lost"):
                                self.stats.note("fanout", label, name,
                                                f"{r['lost']} messages lost by subscribers (sequence gaps) "
                                                "while measuring")
                            if r.get("stall_sends"):
                                self.stats.note("fanout", label, name,
                                                f"slowest subscriber made no progress for 1 s "
                                                f"{r['stall_sends']}× (the publisher then sent past the window)")
                            H.log(f"  {name:18s} {H.fmt_num(r['deliveries_per_s'])} deliveries/s  "
                                  f"client {r.get('client_cpu', 0):.0%} lost {r.get('lost', 0)} "
                                  f"stalls {r.get('stall_sends', 0)}")
            finally:
                for s in servers.values():
                    s.stop()

    def deflate(self):
        for rep in range(self.reps):
            H.log(f"[deflate] repetition {rep + 1}/{self.reps}")
            servers = self.start_all("deflate", only=DEFLATE_TARGETS, extra_env={"DEFLATE": "1"})
            names = H.interleaved(list(servers), rep)
            try:
                for (c, size, w) in DEFLATE_CONFIGS:
                    label = deflate_label(c, size, w)
                    H.log(f" {label}")
                    for name in names:
                        r = self.measure(servers, name, "deflate", label,
                                         ["--mode", "echo", "--conns", c, "--size", size, "--window", w,
                                          "--duration", self.dur, "--warmup", self.warm, "--text",
                                          "--compress", "--concurrency", CONNS_CONCURRENCY])
                        if r:
                            self.stats.add("deflate", label, name, "msgs_per_s", r["msgs_per_s"])
                            self.stats.add("deflate", label, name, "client_cpu", r.get("client_cpu"))
                            self.stats.add("deflate", label, name, "server_cpu", r.get("server_cpu"))
                            H.log(f"  {name:18s} {H.fmt_num(r['msgs_per_s'])} msg/s")
            finally:
                for s in servers.values():
                    s.stop()

    def conns(self):
        n = self.args.conns or CONNS
        label = conns_label(n)
        for rep in range(self.reps):
            H.log(f"[conns] repetition {rep + 1}/{self.reps}")
            for t in H.interleaved(self.available(), rep):
                s = H.ServerProc(t)   # fresh server: RSS must start from an idle process
                try:
                    err = s.wait_ready()
                    if err:
                        self.stats.note("conns", label, t.name, f"failed to start: {err}")
                        continue
                    t0 = time.monotonic()
                    r = H.run_conns(self.loadgen, s, n, CONNS_CONCURRENCY, timeout=120)
                    r.update(target=t.name, scenario="conns", config=label, wall_s=time.monotonic() - t0)
                    self.stats.raw.append(r)
                    if "error" in r:
                        self.stats.note("conns", label, t.name, r["error"])
                    if r.get("opened"):
                        self.stats.add("conns", label, t.name, "handshakes_per_s", r.get("handshakes_per_s"))
                        self.stats.add("conns", label, t.name, "rss_per_conn_kib", r.get("rss_per_conn_kib"))
                        self.stats.add("conns", label, t.name, "client_cpu", r.get("client_cpu"))
                        H.log(f"  {t.name:18s} {H.fmt_num(r.get('handshakes_per_s'))} handshakes/s  "
                              f"{r.get('rss_per_conn_kib', 0):.2f} KiB/conn  ({r.get('opened')} open)")
                    else:
                        H.log(f"  {t.name:18s} ERROR {r.get('error')}")
                finally:
                    s.stop()

    def http(self):
        """Plain HTTP: wrk on GET /, which every server answers like Response("ok")."""
        if not H.have_wrk():
            self.http_missing = "wrk not installed (apt-get install wrk): http scenario skipped"
            H.log(f"[http] {self.http_missing}")
            return
        for rep in range(self.reps):
            H.log(f"[http] repetition {rep + 1}/{self.reps}")
            servers = self.start_all("http")
            names = H.interleaved(list(servers), rep)
            try:
                H.log(f" {HTTP_LABEL}")
                for name in names:
                    r = self.measure(servers, name, "http", HTTP_LABEL,
                                     run=lambda s, name=name: self.wrk_run(s, name))
                    if r:
                        for k in ("requests_per_s", "client_cpu", "server_cpu"):
                            self.stats.add("http", HTTP_LABEL, name, k, r.get(k))
                        H.log(f"  {name:18s} {H.fmt_num(r['requests_per_s'])} req/s  "
                              f"client {r.get('client_cpu', 0):.0%} server {r.get('server_cpu', 0):.0%}")
            finally:
                for s in servers.values():
                    s.stop()

    def wrk_run(self, server, name):
        """Check the server's answer to GET /, warm it up with wrk, then measure with wrk."""
        try:
            status, _, body, keeps_alive = H.http_get(server.port)
        except (OSError, ValueError) as e:
            return {"error": f"GET / failed: {e}"}
        if status != 200 or body != b"ok":
            self.stats.note("http", HTTP_LABEL, name, f"GET / answered {status} {body[:40]!r}, not 200 'ok'")
        if not keeps_alive:
            self.stats.note("http", HTTP_LABEL, name, "closes the connection after each response "
                            "(wrk opens a new connection for every request)")
        if self.warm > 0:  # wrk counts whole seconds only: a 1 s warm-up run, not measured
            H.run_wrk(server.port, 1, HTTP_CONNS, HTTP_THREADS)
        res = H.run_wrk(server.port, self.dur, HTTP_CONNS, HTTP_THREADS, server=server)
        if "error" not in res and res["non_2xx"]:
            res["error"] = f"{res['non_2xx']} of {res.get('requests', '?')} responses were not 2xx/3xx"
        errors = {k: v for k, v in res.get("socket_errors", {}).items() if v}
        if errors:
            self.stats.note("http", HTTP_LABEL, name, "wrk socket errors: " +
                            ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
        return res

    def core(self):
        path = os.path.join(H.BENCH, "bench_core.py")
        if not os.path.exists(path):
            self.core_md = "_bench/bench_core.py not present yet: codec table skipped._\n"
            H.log("[core] bench/bench_core.py not present: skipped")
            return
        env = dict(os.environ, PYTHONPATH=H.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = H.pinned([H.venv_python(), path] + (["--quick"] if self.args.quick else []), H.SERVER_CPU)
        H.log(f"[core] {' '.join(cmd)}")
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=H.ROOT)
            if r.returncode != 0 and self.args.quick and "unrecognized arguments" in r.stderr:
                cmd = cmd[:-1]
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=H.ROOT)
        except subprocess.TimeoutExpired:
            self.core_md = "_bench/bench_core.py timed out (900 s)._\n"
            return
        if r.returncode != 0:
            self.core_md = (f"_bench/bench_core.py failed (exit {r.returncode}):_\n\n```\n"
                            f"{r.stderr.strip()[-1500:]}\n```\n")
        else:
            self.core_md = r.stdout.strip() + "\n"

    # -- report -------------------------------------------------------------------------

    def report(self, argv, t_start):
        S = self.stats
        info = H.machine_info()
        v = H.versions()
        order = [t.name for t in self.targets]
        out = [SECTION, ""]
        if self.args.note:
            out += [f"> {self.args.note}", ""]
        est = f", estimated {self.estimate_s:.0f} s" if self.estimate_s else ""
        out.append(f"- date: {info['date']} (wall time {time.time() - t_start:.0f} s{est})")
        out.append(f"- command: `{argv}`")
        out.append(f"- machine: {info['cpu']}, {info['cpus']} CPUs, kernel {info['kernel']}, "
                   f"load average at the end {info.get('load', '?')}")
        out.append("- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
        out.append(f"- method: server pinned to CPU {H.SERVER_CPU}, load generator (bench/loadgen.c, "
                   f"`cc -O2`) to CPU {H.CLIENT_CPU}{'' if H.have_taskset() else ' (taskset missing: UNPINNED)'}; "
                   f"{self.reps} repetition(s), {self.dur:g} s measured after {self.warm:g} s warm-up; targets "
                   "interleaved within each repetition (order rotated per repetition); medians. "
                   "`~` = spread (max−min)/median over 25 %; `†` = see notes.")
        out.append("")
        if any(k[0] == "echo" for k in S.samples):
            cfgs = [echo_label(*x) for x in (ECHO_QUICK if self.args.quick else ECHO_FULL)]
            out.append("### Echo throughput (messages/s echoed, higher is better)\n")
            out.append(f"Binary frames{' (text: --text)' if self.args.text else ''}; "
                       "W = messages in flight per connection.\n")
            out.append(H.table(S, "echo", cfgs, order, "msgs_per_s"))
            out.append(self.cpu_table("echo", cfgs, order))
        if any(k[0] == "latency" for k in S.samples):
            cfgs = [latency_label(*x) for x in LATENCY]
            out.append("### Echo round-trip latency at a fixed moderate rate (µs, lower is better)\n")
            out.append(H.table(S, "latency", cfgs, order, "lat_p50_us", higher_better=False,
                               title="p50"))
            out.append(H.table(S, "latency", cfgs, order, "lat_p99_us", higher_better=False,
                               title="p99"))
        if any(k[0] == "fanout" for k in S.samples):
            cfgs = [fanout_label(*x) for x in (FANOUT_QUICK if self.args.quick else FANOUT_FULL)]
            out.append("### Fan-out (deliveries/s to all subscribers, higher is better)\n")
            out.append("One publisher on /pub, N subscribers on /sub; W = messages published but not yet "
                       "received by the slowest subscriber.\n")
            out.append(H.table(S, "fanout", cfgs, order, "deliveries_per_s"))
            out.append(self.cpu_table("fanout", cfgs, order))
        if any(k[0] == "deflate" for k in S.samples):
            cfgs = [deflate_label(*x) for x in DEFLATE_CONFIGS]
            out.append("### Echo with permessage-deflate (messages/s, higher is better)\n")
            out.append("The client sends deflated JSON-like text (RSV1, client_no_context_takeover); "
                       "the server inflates and echoes compressed (`DEFLATE=1`: Bun's and bunws's "
                       "shared compressor, websockets' and aiohttp's defaults).\n")
            out.append(H.table(S, "deflate", cfgs, order, "msgs_per_s"))
            out.append(self.cpu_table("deflate", cfgs, order))
        if any(k[0] == "conns" for k in S.samples):
            label = conns_label(self.args.conns or CONNS)
            out.append("### Connections (idle WebSockets, deflate off)\n")
            out.append(H.table(S, "conns", [label], order, "handshakes_per_s", title="handshakes/s "
                               f"(at most {CONNS_CONCURRENCY} in flight; higher is better)"))
            out.append(H.table(S, "conns", [label], order, "rss_per_conn_kib", unit="KiB",
                               higher_better=False, title="server RSS per connection (VmRSS after − before, "
                               "lower is better)"))
        if any(k[0] == "http" for k in S.samples):
            out.append("### HTTP hello (requests/s, higher is better)\n")
            out.append(f"`wrk -t{HTTP_THREADS} -c{HTTP_CONNS}` pinned to CPU {H.CLIENT_CPU} on plain `GET /`, "
                       "which every server answers 200 with the body `ok` (Bun: `new Response(\"ok\")`); "
                       f"a 1 s wrk warm-up run first; {max(1, math.ceil(self.dur)):d} s measured (wrk counts "
                       "whole seconds).\n")
            out.append(H.table(S, "http", [HTTP_LABEL], order, "requests_per_s"))
            out.append(self.cpu_table("http", [HTTP_LABEL], order))
        if self.core_md is not None:
            out.append("### Codec (bench/bench_core.py)\n")
            out.append(self.core_md)
        notes = []
        for t in self.targets:
            if t.unavailable:
                notes.append(f"- **{t.name}** not measured: {t.unavailable}")
        if self.http_missing:
            notes.append(f"- {self.http_missing}")
        for (sc, cfg, t), ns in sorted(S.notes.items()):
            for n in sorted(ns):
                notes.append(f"- † {sc} / {cfg} / {t}: {n}")
        ceiling = self.ceiling_line()
        if ceiling:
            notes.insert(0, ceiling)
        if notes:
            out.append("### Notes\n")
            out.extend(notes)
            out.append("")
        out.append(self.goals_table())
        return "\n".join(out).rstrip() + "\n"

    def goals_table(self):
        """Issue 17's goals against this run's medians: figures, ratio, goal, met or not."""
        S = self.stats
        out = ["### Issue 17 goals\n",
               "Medians of this run (the tables above); ratio = subject / reference. A goal whose "
               "subject or reference was not measured in this run says so. `~` / `†` as above.\n",
               "| scenario | subject | reference | ratio | goal | met |", "|---|---|---|---|---|---|"]
        for g in issue17_goals(self.args.conns or CONNS):
            mine = S.median(g.scenario, g.config, g.subject, g.metric)
            subject = f"{g.subject} {H.cell(S, g.scenario, g.config, g.subject, g.metric, g.unit)}"
            if g.reference is None:
                ref, limit, reference, ratio = None, g.factor, "–", "–"
            else:
                ref = S.median(g.scenario, g.config, g.reference, g.metric)
                limit = g.factor * ref if ref else None
                reference = f"{g.reference} {H.cell(S, g.scenario, g.config, g.reference, g.metric, g.unit)}"
                ratio = H.fmt_ratio(mine / ref) if mine is not None and ref else "–"
            if mine is None or limit is None:
                missing = [n for n in (g.subject, g.reference)
                           if n and S.median(g.scenario, g.config, n, g.metric) is None]
                met = f"not measured ({', '.join(missing)})"
            else:
                met = "met" if (mine >= limit if g.higher_better else mine <= limit) else "**not met**"
            out.append(f"| {g.title} | {subject} | {reference} | {ratio} | {g.text()} | {met} |")
        return "\n".join(out) + "\n"

    def cpu_table(self, scenario, cfgs, order):
        S = self.stats
        out = ["Load-generator CPU share / server CPU share over the measured window (median). A client "
               "near 100 % means the figure is a lower bound set by the one client core; a server well "
               "under 100 % did not get its whole core (shared machine) or waited on round trips.\n"]
        names = [t for t in order if any(S.median(scenario, c, t, "client_cpu") is not None for c in cfgs)]
        out.append("| config | " + " | ".join(names) + " |")
        out.append("|---" * (len(names) + 1) + "|")
        for c in cfgs:
            row = [c]
            for t in names:
                a, b = S.median(scenario, c, t, "client_cpu"), S.median(scenario, c, t, "server_cpu")
                row.append("–" if a is None else f"{a:.0%} / {b:.0%}" if b is not None else f"{a:.0%}")
            out.append("| " + " | ".join(row) + " |")
        return "\n".join(out) + "\n"

    def ceiling_line(self):
        S = self.stats
        parts = []
        for key in sorted({k[1] for k in S.samples if k[0] == "echo"}):
            ce = S.median("echo", key, "c_echo", "msgs_per_s")
            others = [(S.median("echo", key, t.name, "msgs_per_s"), t.name) for t in self.targets
                      if t.name != "c_echo"]
            others = [o for o in others if o[0]]
            if ce and others:
                best = max(others)
                parts.append(f"{key}: c_echo {H.fmt_num(ce)} = {ce / best[0]:.1f}× the fastest server "
                             f"({best[1]})")
        fparts = []
        for key in sorted({k[1] for k in S.samples if k[0] == "fanout"}):
            ce = S.median("fanout", key, "c_echo", "deliveries_per_s")
            cc = S.median("fanout", key, "c_echo", "client_cpu")
            others = [(S.median("fanout", key, t.name, "deliveries_per_s"), t.name) for t in self.targets
                      if t.name != "c_echo"]
            others = [o for o in others if o[0]]
            if ce and others:
                best = max(others)
                bc = S.median("fanout", key, best[1], "client_cpu")
                fparts.append(f"{key}: c_echo {H.fmt_num(ce)} = {ce / best[0]:.1f}× {best[1]} "
                              f"(client CPU {cc:.0%} vs {bc:.0%})" if cc is not None and bc is not None else
                              f"{key}: c_echo {H.fmt_num(ce)} = {ce / best[0]:.1f}× {best[1]}")
        lines = []
        if parts:
            cc = [v for k, v in S.samples.items() if k[0] == "echo" and k[3] == "client_cpu" and k[2] != "c_echo"]
            mx = max(max(x) for x in cc) if cc else None
            s = "- Instrument ceiling (echo): " + "; ".join(parts) + "."
            if mx is not None:
                s += f" Highest load-generator CPU share against a real server: {mx:.0%}."
            lines.append(s)
        ccs = [(S.median("conns", k[1], k[2], "client_cpu"), k[2]) for k in S.samples
               if k[0] == "conns" and k[3] == "client_cpu"]
        ccs = [c for c in ccs if c[0] is not None]
        if ccs:
            mx = max(ccs)
            lines.append(f"- Instrument ceiling (conns): the load generator's CPU share while opening "
                         f"connections peaked at {mx[0]:.0%} (against {mx[1]}).")
        if fparts:
            lines.append("- Instrument ceiling (fan-out): " + "; ".join(fparts) + ". A client CPU share near "
                         "100 % means that figure is a lower bound set by the one client core.")
        return "\n".join(lines)


SCENARIOS = ("echo", "fanout", "deflate", "conns", "http", "core")


def write_section(path, section):
    """Replace only the '## Servers (bench/run.py)' section of path (append if absent)."""
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.strip() == SECTION), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((j for j in range(start + 1, len(lines)) if re.match(r"^## (?!#)", lines[j])), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    with open(path, "w") as f:
        f.write(new)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few combinations, 1 repetition (a few minutes)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma list of {','.join(SCENARIOS)} (default: all)")
    ap.add_argument("--targets", default="", help="comma list of target names (default: all available)")
    ap.add_argument("--reps", type=int, default=0, help="repetitions (default 1 quick, 3 full)")
    ap.add_argument("--duration", type=float, default=0,
                    help="measured seconds per run (default 1 quick, 2 full; http rounds up to whole s)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="warm-up seconds before each measured run (default 0.3 quick, 0.5 full)")
    ap.add_argument("--conns", type=int, default=0, help=f"idle connections for conns (default {CONNS})")
    ap.add_argument("--text", action="store_true", help="echo with text frames instead of binary")
    ap.add_argument("--write", metavar="RESULTS.md", help="replace the servers section of this file")
    ap.add_argument("--json", metavar="FILE", help="also dump every raw run as JSON")
    ap.add_argument("--list", action="store_true", help="list targets and their availability, then exit")
    ap.add_argument("--estimate", action="store_true", help="print the plan and its estimated time, then exit")
    ap.add_argument("--note", default="", help="a line printed under the section heading")
    args = ap.parse_args()
    argv = "python bench/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    t_start = time.time()
    r = Runner(args)
    if args.list:
        for t in r.targets:
            print(f"{t.name:18s} {'ok' if not t.unavailable else 'SKIP: ' + t.unavailable}  {t.note}")
        return
    scen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = set(scen) - set(SCENARIOS)
    if bad:
        sys.exit(f"unknown scenarios: {', '.join(sorted(bad))}")
    r.estimate_s = r.print_plan(scen)
    if args.estimate:
        return
    try:
        for s in scen:
            getattr(r, s)()
    except KeyboardInterrupt:
        H.log("interrupted: reporting what was measured")
    md = r.report(argv, t_start)
    print(md)
    raw_path = args.json or os.path.join(H.WORK, "last-run.json")
    with open(raw_path, "w") as f:
        json.dump({"command": argv, "runs": r.stats.raw}, f, indent=1)
    if args.write:
        write_section(args.write, md)
        H.log(f"[write] section '{SECTION}' of {args.write} replaced")


if __name__ == "__main__":
    main()
