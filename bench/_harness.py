"""Benchmark harness: servers on loopback, the C load generator, repetitions, medians, tables.

Everything here is plumbing for bench/run.py:

- ``Target``: one server to measure (argv, env, how to tell it is available).
- ``ServerProc``: starts a target on a free 127.0.0.1 port pinned to the server CPU,
  waits until a WebSocket upgrade on /echo answers 101, reads its CPU time and RSS from
  /proc, stops it (process group).
- ``build_loadgen`` / ``run_loadgen``: compile bench/loadgen.c with the system ``cc -O2``
  and run it pinned to the client CPU with a raised RLIMIT_NOFILE; parse its JSON line.
- ``run_wrk`` / ``parse_wrk``: plain HTTP load with wrk pinned to the client CPU;
  ``http_get``: one GET to check a server's plain answer.
- ``Stats`` + ``markdown tables``: medians per (config, target), ratios to Bun and to the
  best Python peer measured in the same run.

Only 127.0.0.1 is ever contacted; every wait is bounded.
"""
from __future__ import annotations

import json
import math
import os
import re
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
WORK = os.path.join(BENCH, ".work")
SERVERS = os.path.join(BENCH, "servers")
HOST = "127.0.0.1"
SERVER_CPU = "1"
CLIENT_CPU = "0"
NOFILE = 65536

# Python peers (for the "best Python peer" ratio). bunws is the subject, c_echo the ceiling,
# bun the reference: none of them is a "Python peer".
PY_PEERS = ("picows", "picows-uvloop", "websockets", "websockets-uvloop", "aiohttp", "socketify")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environment

def venv_python():
    p = os.path.join(WORK, "venv", "bin", "python")
    return p if os.path.exists(p) else sys.executable


def bun_binary():
    p = os.path.join(WORK, "node", "node_modules", ".bin", "bun")
    if os.path.exists(p):
        return p
    return shutil.which("bun")


def have_taskset():
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(argv, cpu):
    return (["taskset", "-c", cpu] + argv) if have_taskset() else argv


def _raise_nofile():
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = max(NOFILE, soft)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
        except (ValueError, OSError):  # not root: go as high as the hard limit allows
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except Exception:
        pass


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def machine_info():
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "kernel": os.uname().release,
            "cpu": "unknown", "cpus": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except Exception:
        pass
    try:
        info["load"] = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        pass
    return info


def versions():
    """Installed peer versions (best effort, one subprocess)."""
    code = ("import importlib.metadata as m, json\nout={}\n"
            "for n in ('picows','websockets','aiohttp','socketify','uvloop','bunws'):\n"
            "    try: out[n]=m.version(n)\n    except Exception: pass\nprint(json.dumps(out))")
    v = {}
    try:
        r = subprocess.run([venv_python(), "-c", code], capture_output=True, text=True, timeout=30)
        v = json.loads(r.stdout.strip() or "{}")
    except Exception:
        pass
    v["python"] = subprocess.run([venv_python(), "-c", "import sys;print(sys.version.split()[0])"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
    b = bun_binary()
    if b:
        try:
            v["bun"] = subprocess.run([b, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception:
            pass
    return v


# --------------------------------------------------------------------------- targets

@dataclass
class Target:
    name: str
    argv: list
    env: dict = field(default_factory=dict)
    check: list | None = None      # a command that must succeed for the target to be available
    note: str = ""
    unavailable: str | None = None  # reason, once known


def all_targets():
    py = venv_python()
    bun = bun_binary()
    c_echo_bin = os.path.join(WORK, "c_echo")
    srv = lambda f: os.path.join(SERVERS, f)
    bunws_env = {"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = [
        Target("c_echo", [c_echo_bin], note="minimal C epoll server: the load generator's ceiling"),
        Target("bun", [bun, srv("bun_server.js")] if bun else [], note="Bun.serve, server.publish"),
        Target("bunws", [py, srv("bunws_server.py")], env=dict(bunws_env),
               check=[py, "-c", "import bunws"], note="stock asyncio"),
        Target("bunws-uvloop", [py, srv("bunws_server.py")], env=dict(bunws_env, UVLOOP="1"),
               check=[py, "-c", "import bunws, uvloop"], note="uvloop"),
        Target("bunws-fast", [py, srv("bunws_server.py")], env=dict(bunws_env, FAST_TRANSPORT="1"),
               check=[py, "-c", "import bunws, aiofastnet"], note="stock asyncio, fast_transport=True (aiofastnet)"),
        Target("picows", [py, srv("picows_server.py")], check=[py, "-c", "import picows"],
               note="loop over a set for fan-out"),
        Target("picows-uvloop", [py, srv("picows_server.py")], env={"UVLOOP": "1"},
               check=[py, "-c", "import picows, uvloop"]),
        Target("websockets", [py, srv("websockets_server.py")], check=[py, "-c", "import websockets"],
               note="websockets.broadcast for fan-out"),
        Target("websockets-uvloop", [py, srv("websockets_server.py")], env={"UVLOOP": "1"},
               check=[py, "-c", "import websockets, uvloop"]),
        Target("aiohttp", [py, srv("aiohttp_server.py")], check=[py, "-c", "import aiohttp"],
               note="loop of send_bytes for fan-out"),
        Target("socketify", [py, srv("socketify_server.py")], check=[py, "-c", "import socketify"],
               note="uWS app.publish; max_backpressure 64 KiB (default)"),
    ]
    if not bun:
        t[1].unavailable = "bun not installed (run bash bench/setup.sh)"
    if not os.path.exists(srv("bunws_server.py")):
        for x in t:
            if x.name.startswith("bunws"):
                x.unavailable = "bench/servers/bunws_server.py does not exist yet"
    return t


def check_target(t: Target):
    """Fill t.unavailable if the target cannot run; returns True if it can."""
    if t.unavailable:
        return False
    if t.check:
        try:
            r = subprocess.run(t.check, capture_output=True, text=True, timeout=60,
                               env=dict(os.environ, **t.env))
        except subprocess.TimeoutExpired:
            t.unavailable = "import check timed out"
            return False
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            t.unavailable = f"import failed: {last[:160]}"
            return False
    return True


# --------------------------------------------------------------------------- build

def build_c(src, out, libs=()):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("no C compiler (cc) found: apt-get install gcc")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return out
    r = subprocess.run([cc, "-O2", "-o", out, src, *libs], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"compiling {src} failed:\n{r.stderr}")
    return out


def build_all():
    lg = build_c(os.path.join(BENCH, "loadgen.c"), os.path.join(WORK, "loadgen"), libs=["-lz"])
    build_c(os.path.join(SERVERS, "c_echo.c"), os.path.join(WORK, "c_echo"))
    return lg


# --------------------------------------------------------------------------- servers

def ws_handshake_ok(port, path="/echo", timeout=1.0):
    """True if a WebSocket upgrade on path is answered with 101."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall((f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: cmVhZGluZXNzLWNoZWNrIQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            buf = b""
            deadline = time.monotonic() + timeout
            while b"\r\n" not in buf and time.monotonic() < deadline:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            ok = buf.startswith(b"HTTP/1.1 101")
            if ok:  # polite close frame (masked, code 1000)
                try:
                    s.sendall(bytes([0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xE8 ^ 2]))
                except OSError:
                    pass
            return ok
    except OSError:
        return False


def proc_cpu_ticks(pid):
    """utime+stime of pid and its threads, in clock ticks (None if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])
    except (OSError, IndexError, ValueError):
        return None


def proc_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ServerProc:
    def __init__(self, target: Target, extra_env=None):
        self.t = target
        self.extra_env = extra_env
        self.port = free_port()
        env = dict(os.environ)
        env.update(target.env)
        env.update(extra_env or {})
        env["PORT"] = str(self.port)
        env.setdefault("MAX_PAYLOAD", str(64 * 1024 * 1024))
        if "UVLOOP" not in target.env:  # never inherit the loop choice from the caller
            env.pop("UVLOOP", None)
        self.logpath = os.path.join(WORK, "logs", f"{target.name}.log")
        os.makedirs(os.path.dirname(self.logpath), exist_ok=True)
        self.log = open(self.logpath, "ab")
        self.log.write(f"\n=== start {time.strftime('%H:%M:%S')} port {self.port}\n".encode())
        self.log.flush()
        self.p = subprocess.Popen(pinned(target.argv, SERVER_CPU), env=env, stdout=self.log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  preexec_fn=_raise_nofile, start_new_session=True)
        self.paused = False

    @property
    def pid(self):
        return self.p.pid  # taskset execs the server, so this is the server itself

    def wait_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                return f"exited with code {self.p.returncode} before ready ({self.tail()})"
            if ws_handshake_ok(self.port):
                return None
            time.sleep(0.1)
        return f"not ready after {timeout:.0f}s (no 101 on /echo) ({self.tail()})"

    def alive(self):
        return self.p.poll() is None

    def tail(self, n=2):
        try:
            with open(self.logpath, "rb") as f:
                f.seek(max(0, os.path.getsize(self.logpath) - 2000))
                lines = f.read().decode(errors="replace").strip().splitlines()
            return " | ".join(lines[-n:])[-240:]
        except OSError:
            return ""

    def cpu(self):
        return proc_cpu_ticks(self.pid)

    def rss(self):
        return proc_rss_kib(self.pid)

    def settle(self, quiet_ms=150, timeout=8.0):
        """Wait until the server has stopped burning CPU (e.g. tearing down 5000 sockets),
        so its cleanup never overlaps the next target's measurement."""
        deadline = time.monotonic() + timeout
        last = self.cpu()
        while time.monotonic() < deadline and last is not None:
            time.sleep(quiet_ms / 1000)
            now = self.cpu()
            if now is None or now - last <= 1:
                return
            last = now

    def pause(self):
        """SIGSTOP the server's process group: an idle peer that polls (socketify uses ~5 %
        of a core while idle) must not take CPU from the target being measured."""
        if self.p.poll() is None and not self.paused:
            os.killpg(self.p.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self):
        if self.p.poll() is None and self.paused:
            os.killpg(self.p.pid, signal.SIGCONT)
            self.paused = False
            time.sleep(0.05)

    def stop(self):
        self.resume()
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(timeout=5)
        self.log.close()


# --------------------------------------------------------------------------- load generator

def run_loadgen(loadgen, args, timeout, server=None):
    """Run the load generator pinned to the client CPU; returns its parsed result line.

    If server is given, its CPU time is sampled when the load generator announces the start
    of the measured window and again when the result arrives: res["server_cpu"] is the
    server's CPU share over (about) the measured window."""
    import selectors
    cmd = pinned([loadgen] + [str(a) for a in args], CLIENT_CPU)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=_raise_nofile, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    res, c0, t0 = None, None, None
    try:
        while res is None and time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = p.stdout.readline()
            if not line:
                break
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("event") == "measuring":
                if server is not None:
                    c0, t0 = server.cpu(), time.monotonic()
                continue
            res = obj
            if server is not None and c0 is not None:
                c1, t1 = server.cpu(), time.monotonic()
                if c1 is not None:
                    res["server_cpu"] = (c1 - c0) / TICK / max(t1 - t0, 1e-6)
    finally:
        sel.close()
        if res is None and p.poll() is None:
            p.kill()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if res is None:
        err = (p.stderr.read() or "")[-300:]
        return {"error": f"no result from the load generator (rc={p.returncode}) {err}".strip()}
    return res


def run_conns(loadgen, server: ServerProc, n, concurrency, timeout):
    """Open n idle connections; returns handshakes/s and server RSS per connection."""
    server.settle()
    rss0 = server.rss()
    cmd = pinned([loadgen, "--mode", "conns", "--port", str(server.port), "--conns", str(n),
                  "--concurrency", str(concurrency), "--hold", str(timeout), "--timeout", str(timeout)],
                 CLIENT_CPU)
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=_raise_nofile)
    res = {}
    try:
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        line = ""
        if sel.select(timeout=timeout + 5):
            line = p.stdout.readline()
        sel.close()
        res = json.loads(line) if line.strip() else {"error": "no output from conns mode"}
        if "opened" in res:
            # let the server finish its per-connection work (open handlers, buffers)
            time.sleep(0.3)
            server.settle()
            rss1 = server.rss()
            if rss0 is not None and rss1 is not None and res["opened"]:
                res["rss_before_kib"] = rss0
                res["rss_after_kib"] = rss1
                res["rss_per_conn_kib"] = (rss1 - rss0) / res["opened"]
            if res["opened"] < n:
                res["error"] = f"only {res['opened']}/{n} connections opened"
    except ValueError as e:
        res = {"error": f"bad conns output: {e}"}
    finally:
        try:
            p.stdin.close()
        except OSError:
            pass
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return res


# --------------------------------------------------------------------------- plain HTTP (wrk)

def have_wrk():
    return shutil.which("wrk") is not None


def parse_wrk(output):
    """wrk's summary as numbers: requests_per_s, requests, non_2xx (non-2xx/3xx responses),
    socket_errors (connect/read/write/timeout counts), latency_avg_us; "error" if wrk printed
    no rate."""
    res = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not m:
        return {"error": f"no rate in wrk's output: {output.strip()[-300:]}"}
    res["requests_per_s"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", output)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                    map(int, m.groups()))) if m else {}
    m = re.search(r"Latency\s+([\d.]+)(us|ms|s)\b", output)
    if m:
        res["latency_avg_us"] = float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
    return res


def run_wrk(port, duration, connections=64, threads=1, path="/", server=None):
    """Run wrk pinned to the client CPU against http://127.0.0.1:port/path; returns
    parse_wrk()'s dict plus client_cpu (wrk's CPU share) and, with server given, server_cpu.
    wrk takes whole seconds: duration is rounded up (at least 1 s)."""
    secs = max(1, math.ceil(duration - 1e-9))
    cmd = pinned(["wrk", f"-t{threads}", f"-c{connections}", f"-d{secs}s",
                  f"http://{HOST}:{port}{path}"], CLIENT_CPU)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    c0 = server.cpu() if server is not None else None
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 30)
    except subprocess.TimeoutExpired:
        return {"error": f"wrk did not finish within {secs + 30} s"}
    wall = max(time.monotonic() - t0, 1e-6)
    c1 = server.cpu() if server is not None else None
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = parse_wrk(r.stdout)
    if r.returncode != 0 and "error" not in res:
        res["error"] = f"wrk exited {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}"
    # the only child reaped during this window is wrk (servers are reaped when stopped)
    res["client_cpu"] = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / wall
    if c0 is not None and c1 is not None:
        res["server_cpu"] = (c1 - c0) / TICK / wall
    return res


def http_get(port, path="/", timeout=2.0):
    """One plain GET on a fresh connection: (status, lower-cased headers, body, keeps_alive).
    keeps_alive is False when the server announced ``Connection: close`` or closed the
    connection right after the response. Raises OSError/ValueError on a broken answer."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
        buf, closed = b"", False
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in buf:
            if time.monotonic() > deadline or len(buf) > 65536:
                raise ValueError("no complete response head")
            chunk = s.recv(65536)
            if not chunk:
                raise ValueError(f"connection closed before the response head ({buf[:80]!r})")
            buf += chunk
        head, body = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            want = int(headers["content-length"])
            while len(body) < want:
                chunk = s.recv(65536)
                if not chunk:
                    raise ValueError("connection closed inside the body")
                body += chunk
        else:  # no length: the body runs to the end of the connection
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
            closed = True
        keeps_alive = not closed and headers.get("connection", "").lower() != "close"
        return status, headers, body, keeps_alive


# --------------------------------------------------------------------------- statistics & tables

class Stats:
    """Samples per (scenario, config, target, metric)."""

    def __init__(self):
        self.samples = {}   # (scenario, config, target, metric) -> [values]
        self.notes = {}     # (scenario, config, target) -> set of notes
        self.raw = []

    def add(self, scenario, config, target, metric, value):
        if value is None:
            return
        self.samples.setdefault((scenario, config, target, metric), []).append(value)

    def note(self, scenario, config, target, text):
        self.notes.setdefault((scenario, config, target), set()).add(text)

    def median(self, scenario, config, target, metric):
        v = self.samples.get((scenario, config, target, metric))
        return statistics.median(v) if v else None

    def spread(self, scenario, config, target, metric):
        v = self.samples.get((scenario, config, target, metric))
        if not v or len(v) < 2:
            return None
        m = statistics.median(v)
        return (max(v) - min(v)) / m if m else None


def fmt_num(v, unit=""):
    if v is None:
        return "–"
    a = abs(v)
    if a >= 1e6:
        s = f"{v / 1e6:.2f} M"
    elif a >= 1e4:
        s = f"{v / 1e3:.0f} k"
    elif a >= 1e3:
        s = f"{v / 1e3:.1f} k"
    elif a >= 100:
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + (f" {unit}" if unit else "")


def fmt_ratio(r):
    if r is None:
        return "–"
    return f"{r:.2f}×" if r < 10 else f"{r:.1f}×"


def cell(stats: Stats, scenario, config, target, metric, unit=""):
    """One table cell: the median, `~` if noisy, `†` if the run has notes."""
    text = fmt_num(stats.median(scenario, config, target, metric), unit)
    sp = stats.spread(scenario, config, target, metric)
    if sp is not None and sp > 0.25:
        text += " ~"  # noisy: (max - min) / median > 25 %
    if stats.notes.get((scenario, config, target)):
        text += " †"
    return text


def table(stats: Stats, scenario, configs, targets, metric, unit="", higher_better=True, title=""):
    """Markdown: one row per config; each target's median, then ratios per target."""
    names = [t for t in targets if any(stats.median(scenario, c, t, metric) is not None for c in configs)]
    if not names:
        return ""
    out = []
    if title:
        out.append(f"**{title}**\n")
    out.append("| config | " + " | ".join(names) + " | best Python peer |")
    out.append("|---" * (len(names) + 2) + "|")
    best = {}
    for c in configs:
        row = [c]
        for t in names:
            row.append(cell(stats, scenario, c, t, metric, unit))
        peers = [(stats.median(scenario, c, p, metric), p) for p in PY_PEERS]
        peers = [(v, p) for v, p in peers if v is not None]
        if peers:
            b = max(peers) if higher_better else min(peers)
            best[c] = b
            row.append(f"{b[1]} ({fmt_num(b[0], unit)})")
        else:
            row.append("–")
        out.append("| " + " | ".join(row) + " |")
    # ratios
    rnames = [t for t in names if t != "c_echo"]
    out.append("")
    out.append(f"Ratios ({'higher' if higher_better else 'lower'} is better for the target): "
               "`×Bun / ×best Python peer` (same run).\n")
    out.append("| config | " + " | ".join(rnames) + " |")
    out.append("|---" * (len(rnames) + 1) + "|")
    for c in configs:
        row = [c]
        bunv = stats.median(scenario, c, "bun", metric)
        bp = best.get(c)
        for t in rnames:
            m = stats.median(scenario, c, t, metric)
            if m is None:
                row.append("–")
                continue
            rb = m / bunv if bunv else None
            rp = m / bp[0] if bp and bp[0] else None
            row.append(f"{fmt_ratio(rb)} / {fmt_ratio(rp)}")
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def interleaved(targets, rep):
    """Target order for one repetition: rotated by rep, so that no target is always measured
    right after the same neighbour (drift and a neighbour's after-effects spread evenly)."""
    k = rep % len(targets) if targets else 0
    return targets[k:] + targets[:k]


def shuffled(seq, seed):
    seq = list(seq)
    random.Random(seed).shuffle(seq)
    return seq


def write_section(path, heading, section):
    """Replace the ``heading`` section of the results file ``path`` (or append it)."""
    text = open(path).read() if os.path.exists(path) else "# Results\n"
    pattern = re.compile(re.escape(heading) + r"\n.*?(?=\n## |\Z)", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)
