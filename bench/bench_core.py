"""Codec micro-benchmarks: bunws._frame side by side with its peers, in one run.

What is measured (each cell: median of --repeat runs):

* parse: a buffer of masked client frames (binary, or text for the "text" rows) is
  fed in 256 KiB chunks and every event's payload is materialised as bytes/str.
  - bunws: ``FrameParser.feed_flat`` on each chunk.
  - picows: its server ``WSProtocol`` driven through ``get_buffer``/``buffer_updated``
    after a real upgrade handshake on a fake transport (the memcpy into its read
    buffer stands in for recv); the listener calls ``frame.get_payload_as_bytes()``
    (or ``get_payload_as_utf8_text()``), since picows frames are borrowed views.
  - websockets: Sans-I/O ``Protocol(SERVER).receive_data`` + ``events_received``
    (its frame parser is a Python generator; fewer frames are used).
* unmask: ``apply_mask(data, mask)`` returning new bytes, against
  ``websockets.speedups.apply_mask`` (C) and a memcpy-speed copy ``bytes(bytearray)``.
  picows has no standalone mask entry point (its SIMD mask is internal).
* utf8: ``validate_utf8(data)`` against CPython's ``bytes.decode('utf-8')``
  (which also builds the str).

Usage: python bench/bench_core.py [--repeat 5] [--quick] [--write bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bunws._frame import FrameParser, apply_mask, encode_frame, validate_utf8  # noqa: E402

MASK = b"\x37\xfa\x21\x3d"
CHUNK = 256 * 1024

try:
    import picows
except ImportError:  # pragma: no cover
    picows = None
try:
    from websockets.frames import Frame  # noqa: F401
    from websockets.protocol import Protocol as WSProtocolSansIO, Side, State
    from websockets.speedups import apply_mask as ws_apply_mask
except ImportError:  # pragma: no cover
    WSProtocolSansIO = None
    ws_apply_mask = None


def chunks(stream: bytes):
    return [stream[i:i + CHUNK] for i in range(0, len(stream), CHUNK)]


def timeit(fn, repeat):
    """Median seconds of `repeat` calls of fn() (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --- parsers -------------------------------------------------------------------------


def bunws_parse(parts, expect):
    def run():
        p = FrameParser(max_payload_length=1 << 24)
        n = 0
        for c in parts:
            n += len(p.feed_flat(c))
        assert n == 2 * expect, (n, expect)
    return run


class _FakeTransport:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def get_extra_info(self, name, default=None):
        return {"socket": self.sock, "peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(
            name, default)

    def write(self, data):
        pass

    def writelines(self, data):
        pass

    def is_closing(self):
        return False

    def close(self):
        self.sock.close()

    def get_write_buffer_size(self):
        return 0

    def set_write_buffer_limits(self, *a, **k):
        pass


def picows_parse(parts, expect, text):
    """Drive picows' server protocol with a fake transport (see module docstring)."""
    from picows.picows import WSProtocol, WSListener

    count = [0]

    class Listener(WSListener):
        def on_ws_frame(self, transport, frame):
            if text:
                frame.get_payload_as_utf8_text()
            else:
                frame.get_payload_as_bytes()
            count[0] += 1

    upgrade = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")

    async def make():
        proto = WSProtocol(None, None, False, lambda req: Listener(), _quiet_logger(), True, None,
                           False, 10, 10, picows.WSAutoPingStrategy.PING_WHEN_IDLE, False,
                           1 << 24, None, 1 << 20)
        tr = _FakeTransport()
        proto.connection_made(tr)
        feed(proto, upgrade)
        await asyncio.sleep(0)
        return proto, tr

    def feed(proto, data):
        mv = memoryview(data)
        while mv:
            buf = proto.get_buffer(-1)
            k = min(len(buf), len(mv))
            buf[:k] = mv[:k]
            proto.buffer_updated(k)
            mv = mv[k:]

    loop = asyncio.new_event_loop()

    def run():
        proto, tr = loop.run_until_complete(make())
        count[0] = 0
        for c in parts:
            feed(proto, c)
        assert count[0] == expect, (count[0], expect)
        tr.close()
    run.close = loop.close
    return run


def _quiet_logger():
    import logging
    lg = logging.getLogger("bench.picows")
    lg.setLevel(logging.ERROR)
    lg.propagate = False
    return lg


def websockets_parse(parts, expect):
    def run():
        p = WSProtocolSansIO(Side.SERVER, state=State.OPEN, max_size=None)
        n = 0
        for c in parts:
            p.receive_data(c)
            n += len(p.events_received())
        assert n == expect, (n, expect)
    return run


# --- table ---------------------------------------------------------------------------


def fmt_rate(x, unit):
    if unit == "GB/s":
        return f"{x:.2f} GB/s"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M/s"
    return f"{x / 1e3:.1f} k/s"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller inputs (smoke test)")
    ap.add_argument("--write", metavar="RESULTS_MD", help="write the table into this file")
    args = ap.parse_args()
    scale = 10 if args.quick else 1
    rows = []  # (name, bunws, {peer: value}, unit)

    parse_cases = [
        ("parse 16 B binary", 16, 100_000, False),
        ("parse 16 B text", 16, 100_000, True),
        ("parse 1 KiB binary", 1024, 20_000, False),
        ("parse 64 KiB binary", 65536, 400, False),
        ("parse 1 MiB binary", 1 << 20, 24, False),
        ("parse 64 KiB text", 65536, 400, True),
    ]
    for name, size, count, text in parse_cases:
        count = max(count // scale, 4)
        payload = (b"a" * size) if text else os.urandom(size)
        frame = encode_frame(1 if text else 2, payload, mask=MASK)
        parts = chunks(frame * count)
        results = {}
        t = timeit(bunws_parse(parts, count), args.repeat)
        bun_msgs = count / t
        if picows is not None:
            run = picows_parse(parts, count, text)
            results["picows"] = count / timeit(run, args.repeat)
            run.close()
        if WSProtocolSansIO is not None:
            wcount = max(count // 20, 4) if size <= 1024 else count
            wparts = chunks(frame * wcount)
            results["websockets"] = wcount / timeit(websockets_parse(wparts, wcount), args.repeat)
        rows.append((name + " (msgs/s)", bun_msgs, results, "msgs/s"))
        rows.append((name + " (GB/s)", bun_msgs * size / 1e9,
                     {k: v * size / 1e9 for k, v in results.items()}, "GB/s"))

    for size in (1024, 65536, 1 << 20):
        data = os.urandom(size)
        ba = bytearray(data)
        n = max((256 << 20) // size // scale, 8)
        label = {1024: "1 KiB", 65536: "64 KiB", 1 << 20: "1 MiB"}[size]

        def loop(fn, *a):
            def run():
                for _ in range(n):
                    fn(*a)
            return run
        results = {"memcpy (bytes(bytearray))": n * size / timeit(loop(bytes, ba), args.repeat) / 1e9}
        if ws_apply_mask is not None:
            results["websockets.speedups"] = n * size / timeit(loop(ws_apply_mask, data, MASK), args.repeat) / 1e9
        bun = n * size / timeit(loop(apply_mask, data, MASK), args.repeat) / 1e9
        rows.append((f"unmask {label}", bun, results, "GB/s"))

    samples = {
        "ASCII": b"The quick brown fox jumps over the lazy dog. " * 1500,
        "mixed (Latin-1/Cyrillic/CJK/emoji)": ("héllo wörld привет мир 你好世界 😀 " * 1000).encode(),
        "Cyrillic": ("привет мир " * 3000).encode(),
    }
    for label, data in samples.items():
        data = data[:65536]
        while data and (data[-1] & 0xC0) == 0x80:
            data = data[:-1]
        data = data[: len(data)]
        try:
            data.decode()
        except UnicodeDecodeError:
            data = data[:-1]
        n = max(4000 // scale, 8)

        def loop(fn, *a):
            def run():
                for _ in range(n):
                    fn(*a)
            return run
        ok = validate_utf8(data)
        assert ok
        cp = n * len(data) / timeit(loop(bytes.decode, data, "utf-8"), args.repeat) / 1e9
        bun = n * len(data) / timeit(loop(validate_utf8, data), args.repeat) / 1e9
        rows.append((f"UTF-8 validate 64 KiB {label}", bun, {"CPython bytes.decode": cp}, "GB/s"))

    baselines = ("memcpy (bytes(bytearray))", "CPython bytes.decode")
    cols = []
    for _, _, res, _ in rows:
        for k in res:
            if k not in cols:
                cols.append(k)
    head = ("| benchmark | bunws | " + " | ".join(cols)
            + " | bunws / best peer | bunws / baseline |")
    lines = [head, "|" + "---|" * (len(cols) + 4)]
    for name, bun, res, unit in rows:
        cells = [fmt_rate(res[p], unit) if p in res else "n/a" for p in cols]
        peer_vals = [v for k, v in res.items() if k not in baselines]
        base_vals = [v for k, v in res.items() if k in baselines]
        ratio = f"{bun / max(peer_vals):.2f}x" if peer_vals else "n/a"
        base = f"{bun / base_vals[0]:.2f}x" if base_vals else "n/a"
        lines.append(f"| {name} | {fmt_rate(bun, unit)} | " + " | ".join(cells)
                     + f" | {ratio} | {base} |")
    table = "\n".join(lines)
    print(table)

    if args.write:
        write_results(args.write, table, args)


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        cores = re.search(r"^CPU\(s\):\s*(\d+)", out, re.M)
        return f"{m.group(1).strip() if m else platform.processor()}, {cores.group(1) if cores else '?'} CPUs"
    except OSError:
        return platform.processor()


def write_results(path, table, args):
    versions = []
    for mod in ("picows", "websockets"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except Exception:
            pass
    cmd = "python bench/bench_core.py " + " ".join(
        a for a in sys.argv[1:])
    section = (
        "## Codec (bench/bench_core.py)\n\n"
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}  \n"
        f"Command: `{cmd}`  \n"
        f"CPU: {cpu_model()}; Python {platform.python_version()}; {', '.join(versions)}  \n"
        f"Medians of {args.repeat} runs. Parse rows feed 256 KiB chunks of masked client frames "
        "and materialise every payload (see the module docstring for how each peer is driven).\n\n"
        f"{table}\n"
    )
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmark results\n\n"
    start = text.find("## Codec (bench/bench_core.py)")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[nxt:] if nxt != -1 else "")
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
