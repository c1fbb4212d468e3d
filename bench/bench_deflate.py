"""Codec-level permessage-deflate benchmark: bunws._deflate vs Python's zlib vs
websockets' PerMessageDeflate, plus zlib memory per connection for each Bun mode.

Usage:  python bench/bench_deflate.py [--reps 7] [--write bench/RESULTS.md]

Throughput: MB/s of *uncompressed* bytes, median of ``--reps`` runs, each run
compressing (or inflating) a fixed batch of distinct JSON-ish messages through
one context-takeover stream (zlib level -1 = 6, window 15, memLevel 8, as Bun).
Memory: each mode runs in a fresh subprocess that creates N connections'
(deflater, inflater) pairs, sends one 16 KiB message through each, and reports
the RSS delta / N.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bunws._deflate import Deflater, Inflater  # noqa: E402

TAIL = b"\x00\x00\xff\xff"


def make_messages(size: int, count: int, seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    words = ["user", "id", "name", "status", "online", "room", "message", "ts", "value", "tags"]
    out = []
    for _ in range(count):
        buf = []
        n = 0
        while n < size:
            item = '{"%s": %d, "%s": "%s-%x"}, ' % (
                rnd.choice(words), rnd.randint(0, 99999), rnd.choice(words),
                rnd.choice(words), rnd.getrandbits(24))
            buf.append(item)
            n += len(item)
        out.append("".join(buf).encode()[:size])
    return out


# -- the three implementations -------------------------------------------------

def ours_compress(msgs):
    d = Deflater()
    return [d.compress(m) for m in msgs]


def ours_decompress(payloads):
    i = Inflater()
    return [i.decompress(p, 1 << 30, True) for p in payloads]


def zlib_compress(msgs):
    c = zlib.compressobj(-1, zlib.DEFLATED, -15, 8)
    out = []
    for m in msgs:
        data = c.compress(m) + c.flush(zlib.Z_SYNC_FLUSH)
        out.append(data[:-4])
    return out


def zlib_decompress(payloads):
    d = zlib.decompressobj(-15)
    return [d.decompress(p + TAIL, 1 << 30) for p in payloads]


def _wsk():
    from websockets.extensions.permessage_deflate import PerMessageDeflate
    from websockets.frames import Frame, Opcode

    return PerMessageDeflate, Frame, Opcode


def websockets_compress(msgs):
    PerMessageDeflate, Frame, Opcode = _wsk()
    ext = PerMessageDeflate(False, False, 15, 15)
    return [ext.encode(Frame(Opcode.BINARY, m)).data for m in msgs]


def websockets_decompress(payloads):
    PerMessageDeflate, Frame, Opcode = _wsk()
    ext = PerMessageDeflate(False, False, 15, 15)
    return [ext.decode(Frame(Opcode.BINARY, p, rsv1=True), max_size=1 << 30).data for p in payloads]


IMPLS = {
    "bunws": (ours_compress, ours_decompress),
    "zlib": (zlib_compress, zlib_decompress),
    "websockets": (websockets_compress, websockets_decompress),
}


def timed(fn, arg, reps):
    fn(arg)  # warm up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def throughput(reps: int) -> list[dict]:
    rows = []
    for size, count in ((1024, 2000), (65536, 64)):
        msgs = make_messages(size, count)
        total = size * count
        payloads = zlib_compress(msgs)
        # Every implementation must agree with the oracle before it is timed.
        for name, (comp, decomp) in IMPLS.items():
            assert zlib_decompress([bytes(x) for x in comp(msgs)]) == msgs, name
            assert [bytes(x) for x in decomp(payloads)] == msgs, name
        ratio = total / sum(map(len, payloads))
        for op, idx, arg in (("compress", 0, msgs), ("decompress", 1, payloads)):
            speeds = {name: total / timed(impls[idx], arg, reps) / 1e6 for name, impls in IMPLS.items()}
            rows.append({"size": size, "op": op, "ratio": ratio, **speeds})
    return rows


# -- memory per connection -----------------------------------------------------

MODES = ["off", "shared", "3KB", "4KB", "8KB", "16KB", "32KB", "64KB", "128KB", "256KB"]
SIZES = {"3KB": (9, 1), "4KB": (9, 2), "8KB": (10, 3), "16KB": (11, 4), "32KB": (12, 5),
         "64KB": (13, 6), "128KB": (14, 7), "256KB": (15, 8)}

MEM_CHILD = r"""
import gc, os, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, os.path.join(sys.argv[1], "bench"))
from bench_deflate import make_messages, SIZES
from bunws._deflate import Deflater, Inflater
from bunws.extensions import shared_deflater
mode, n = sys.argv[2], int(sys.argv[3])
msg = make_messages(16384, 1)[0]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
payload = Deflater().compress(msg)
gc.collect()
base = rss()
conns = []
for _ in range(n):
    if mode == "off":
        conns.append(None)
    elif mode == "shared":
        d, i = shared_deflater(), Inflater(no_context_takeover=True)
        d.compress(msg); i.decompress(payload, 1 << 20, True)
        conns.append((d, i))
    else:
        w, m = SIZES[mode]
        d, i = Deflater(w, m), Inflater(15)
        d.compress(msg); i.decompress(payload, 1 << 20, True)
        conns.append((d, i))
print((rss() - base) / n)
"""


def memory(n: int) -> dict[str, float]:
    out = {}
    for mode in MODES:
        res = subprocess.run([sys.executable, "-c", MEM_CHILD, ROOT, mode, str(n)],
                             capture_output=True, text=True, check=True, timeout=120)
        out[mode] = float(res.stdout.strip())
    return out


# -- report --------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render(rows, mem, reps, n, command) -> str:
    import websockets

    lines = [
        "## Deflate codec (bench/bench_deflate.py)",
        "",
        f"Date: {datetime.date.today().isoformat()} · command: `{command}` · CPU: {cpu_model()} "
        f"({os.cpu_count()} cores, shared) · Python {platform.python_version()} · "
        f"zlib {zlib.ZLIB_RUNTIME_VERSION} · websockets {websockets.__version__}",
        "",
        "Throughput in MB/s of uncompressed data (median of "
        f"{reps} runs; context takeover, level -1 = 6, window 15, memLevel 8 for all three; "
        "JSON-ish text, 2000 × 1 KiB or 64 × 64 KiB distinct messages per run).",
        "",
        "| payload | op | ratio | bunws | zlib module | websockets | bunws/zlib | bunws/websockets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size'] // 1024} KiB | {r['op']} | {r['ratio']:.1f}× | {r['bunws']:.0f} | "
            f"{r['zlib']:.0f} | {r['websockets']:.0f} | {r['bunws'] / r['zlib']:.2f}× | "
            f"{r['bunws'] / r['websockets']:.2f}× |"
        )
    lines += [
        "",
        f"RSS per connection after one 16 KiB message each way ({n} connections per mode, "
        "fresh process per mode; deflater + inflater; `shared` = the module-level shared "
        "compressor + a stateless inflater, `NKB` = Bun's dedicated compressor size + the "
        "dedicated 15-bit inflater):",
        "",
        "| mode | " + " | ".join(MODES) + " |",
        "|---" * (len(MODES) + 1) + "|",
        "| KiB/conn | " + " | ".join(f"{mem[m] / 1024:.1f}" for m in MODES) + " |",
        "",
    ]
    return "\n".join(lines)


def write_section(path: str, section: str) -> None:
    header = "## Deflate codec (bench/bench_deflate.py)"
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmark results\n"
    start = text.find(header)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(header))
        text = text[:start] + section + ("" if end == -1 else text[end:])
    with open(path, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--conns", type=int, default=300)
    ap.add_argument("--write", metavar="RESULTS_MD")
    args = ap.parse_args()
    reps = max(5, args.reps)
    rows = throughput(reps)
    mem = memory(args.conns)
    command = "python bench/bench_deflate.py " + " ".join(sys.argv[1:])
    section = render(rows, mem, reps, args.conns, command.strip())
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
