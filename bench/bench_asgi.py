"""ASGI servers side by side, one run: the same app on bunws, uvicorn and granian.

Scenarios (each server pinned to CPU 1, the load generator to CPU 0, interleaved
over ``--reps`` repetitions; medians):

* ``http``: HTTP hello (``raw`` app), ``wrk -t1 -c64``: bunws vs uvicorn
  (httptools + uvloop) vs granian (ASGI, 1 worker).
* ``ws``: WebSocket echo, 1 KiB binary x 256 connections (``bench/loadgen.c``,
  one message in flight per connection): bunws vs uvicorn (websockets-sansio) vs granian.
* ``fastapi-ws``: the same echo through a FastAPI route: bunws vs uvicorn.

Usage: ``python bench/bench_asgi.py [--reps 3] [--duration 5]``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402

PY = sys.executable
APPS = os.path.join(h.SERVERS, "asgi_apps.py")


def server_argv(server: str, app: str, port: int) -> list[str]:
    target = f"asgi_apps:{app}"
    if server == "bunws":
        return [PY, "-m", "bunws", target, "--port", str(port), "--uvloop", "--lifespan", "off"]
    if server == "uvicorn":
        return [PY, "-m", "uvicorn", target, "--port", str(port), "--http", "httptools", "--loop", "uvloop",
                "--ws", "websockets-sansio", "--log-level", "warning", "--no-access-log", "--lifespan", "off"]
    if server == "granian":
        return [PY, "-m", "granian", "--interface", "asgi", "--workers", "1", "--port", str(port),
                "--loop", "uvloop", "--log-level", "warning", target]
    raise ValueError(server)


class Proc:
    def __init__(self, server: str, app: str) -> None:
        self.port = h.free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([h.SERVERS, h.ROOT, os.environ.get("PYTHONPATH", "")]))
        os.makedirs(os.path.join(h.WORK, "logs"), exist_ok=True)
        self.log = open(os.path.join(h.WORK, "logs", f"asgi-{server}-{app}.log"), "w")
        self.p = subprocess.Popen(h.pinned(server_argv(server, app, self.port), h.SERVER_CPU), env=env,
                                  stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                  cwd=h.SERVERS)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{server} exited: see {self.log.name}")
            if h.ws_handshake_ok(self.port, "/echo"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{server} never became ready")

    def stop(self) -> None:
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
            self.p.wait(10)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
        self.log.close()


def run_wrk(port: int, duration: float) -> float:
    res = h.run_wrk(port, duration, connections=64, threads=1)
    if "error" in res or res["non_2xx"] or any(res["socket_errors"].values()):
        raise RuntimeError(f"wrk: {res.get('error') or res}")
    return res["requests_per_s"]


def run_echo(loadgen: str, port: int, duration: float) -> float:
    res = h.run_loadgen(loadgen, ["--mode", "echo", "--port", port, "--conns", 256, "--window", 1,
                                  "--size", 1024, "--duration", duration, "--path", "/echo"], duration + 60)
    if "error" in res:
        raise RuntimeError(res["error"])
    return float(res["msgs_per_s"])


SCENARIOS = {
    "http": ("raw", ("bunws", "uvicorn", "granian"), "req/s"),
    "ws": ("raw", ("bunws", "uvicorn", "granian"), "msg/s"),
    "fastapi-ws": ("fastapi_app", ("bunws", "uvicorn"), "msg/s"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    if not h.have_wrk():
        sys.exit("wrk is needed for the http scenario (apt-get install wrk)")
    loadgen = h.build_c(os.path.join(h.BENCH, "loadgen.c"), os.path.join(h.WORK, "loadgen"), libs=["-lz"])
    results: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.reps):
        for scenario in args.scenarios.split(","):
            app, servers, _ = SCENARIOS[scenario]
            for server in servers:
                proc = Proc(server, app)
                try:
                    value = run_wrk(proc.port, args.duration) if scenario == "http" else run_echo(loadgen, proc.port, args.duration)
                except RuntimeError as exc:
                    print(f"{scenario} {server}: {exc}", file=sys.stderr)
                    continue
                finally:
                    proc.stop()
                results.setdefault((scenario, server), []).append(value)
                print(f"rep {rep + 1} {scenario:11} {server:8} {value:12,.0f}", file=sys.stderr, flush=True)
    print("| scenario | server | median | runs | bunws / this |")
    print("|---|---|---:|---:|---:|")
    for scenario in args.scenarios.split(","):
        _, servers, unit = SCENARIOS[scenario]
        ours = results.get((scenario, "bunws"))
        for server in servers:
            values = results.get((scenario, server))
            if not values:
                print(f"| {scenario} | {server} | failed | 0 | |")
                continue
            median = statistics.median(values)
            ratio = f"{statistics.median(ours) / median:.2f}x" if ours else ""
            print(f"| {scenario} | {server} | {median:,.0f} {unit} | {len(values)} | {ratio} |")
    print(json.dumps({f"{k[0]}/{k[1]}": v for k, v in results.items()}), file=sys.stderr)


if __name__ == "__main__":
    main()
