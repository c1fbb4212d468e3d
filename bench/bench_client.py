"""Client echo benchmark: one connection to one fixed fast server, msg/s per client.

    python bench/bench_client.py [--seconds 2] [--reps 3] [--clients bunws,websockets,aiohttp,picows]
                                 [--write bench/RESULTS.md]

The server is the C reference echo server (bench/servers/c_echo.c, built with cc into
a temporary directory), pinned to CPU 1; each client runs in its own process pinned to
CPU 0. Every awaitable client runs the websockets-style loop: send W messages, then
one ``recv`` and one ``send`` per echo; picows has no awaitable receive, so its loop
sends one message from ``on_ws_frame`` per echo (callbacks, its fastest path).
Scenarios: 16 B and 1 KiB with 64 in flight, 16 B with 1 in flight, 64 KiB with 4.
Clients, loops and scenarios are interleaved within a repetition; the table gives
medians over repetitions and each figure's ratio to picows on the same loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCENARIOS = [(16, 64), (1024, 64), (16, 1), (65536, 4)]
LABELS = {(16, 64): "16 B × 64", (1024, 64): "1 KiB × 64", (16, 1): "16 B × 1",
          (65536, 4): "64 KiB × 4"}
CLIENTS = ["bunws", "websockets", "aiohttp", "picows"]
LOOPS = ["asyncio", "uvloop"]
SECTION = "## Client echo (bench/bench_client.py)"


# ---------------------------------------------------------------- worker side
async def run_bunws(url: str, size: int, window: int, seconds: float) -> int:
    import bunws

    ws = await bunws.connect(url, compression=None, ping_interval=None, proxy=None,
                             max_size=None)
    return await awaitable_loop(ws.send, ws.recv, size, window, seconds, ws.close)


async def run_websockets(url: str, size: int, window: int, seconds: float) -> int:
    from websockets.asyncio.client import connect

    ws = await connect(url, compression=None, ping_interval=None, max_size=None, proxy=None)
    return await awaitable_loop(ws.send, ws.recv, size, window, seconds, ws.close)


async def run_aiohttp(url: str, size: int, window: int, seconds: float) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url, compress=0, autoping=False, max_msg_size=0)

        async def recv() -> bytes:
            return (await ws.receive()).data

        return await awaitable_loop(ws.send_bytes, recv, size, window, seconds, ws.close)


async def awaitable_loop(send, recv, size: int, window: int, seconds: float, close) -> int:
    payload = b"x" * size
    for _ in range(window):
        await send(payload)
    count = 0
    deadline = time.perf_counter() + seconds
    while True:
        # the clock is read once per 64 echoes: reading it is not free
        for _ in range(64):
            await recv()
            await send(payload)
        count += 64
        if time.perf_counter() >= deadline:
            break
    for _ in range(window):
        await recv()
    await close()
    return count


async def run_picows(url: str, size: int, window: int, seconds: float) -> int:
    from picows import WSListener, WSMsgType, ws_connect

    payload = b"x" * size
    done = asyncio.get_running_loop().create_future()

    class Listener(WSListener):
        count = 0
        stopping = False
        outstanding = 0

        def on_ws_connected(self, transport) -> None:
            self.deadline = time.perf_counter() + seconds
            for _ in range(window):
                transport.send(WSMsgType.BINARY, payload)
            self.outstanding = window

        def on_ws_frame(self, transport, frame) -> None:
            frame.get_payload_as_bytes()
            self.outstanding -= 1
            if self.stopping:
                if not self.outstanding and not done.done():
                    done.set_result(self.count)
                return
            self.count += 1
            if not self.count & 63 and time.perf_counter() >= self.deadline:
                self.stopping = True
                if not self.outstanding:
                    done.set_result(self.count)
                return
            transport.send(WSMsgType.BINARY, payload)
            self.outstanding += 1

    transport, _ = await ws_connect(Listener, url, max_frame_size=1 << 24)
    count = await done
    transport.disconnect()
    return count


def worker(args: argparse.Namespace) -> None:
    runner = {"bunws": run_bunws, "websockets": run_websockets, "aiohttp": run_aiohttp,
              "picows": run_picows}[args.worker]
    url = f"ws://127.0.0.1:{args.port}/echo"

    async def main() -> float:
        await runner(url, args.size, args.window, 0.3)  # warm-up on its own connection
        start = time.perf_counter()
        count = await runner(url, args.size, args.window, args.seconds)
        return count / (time.perf_counter() - start)

    if args.loop == "uvloop":
        import uvloop

        rate = uvloop.run(main())
    else:
        rate = asyncio.run(main())
    print(f"{rate:.1f}")


# ---------------------------------------------------------------- driver side
def build_server(workdir: str) -> str:
    binary = os.path.join(workdir, "c_echo")
    subprocess.run(["cc", "-O2", "-o", binary, os.path.join(HERE, "servers", "c_echo.c")],
                   check=True)
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() > 1 else []


def measure(client: str, loop: str, size: int, window: int, seconds: float, port: int) -> float:
    cmd = pinned(0) + [sys.executable, os.path.abspath(__file__), "--worker", client,
                       "--loop", loop, "--size", str(size), "--window", str(window),
                       "--seconds", str(seconds), "--port", str(port)]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    if out.returncode:
        print(f"{client}/{loop} {size}x{window} failed: {out.stderr[-500:]}", file=sys.stderr)
        return float("nan")
    return float(out.stdout.strip().splitlines()[-1])


def fmt(rate: float) -> str:
    if rate != rate:
        return "—"
    return f"{rate / 1000:.1f} k" if rate < 100_000 else f"{rate / 1000:.0f} k"


def table(results: dict, clients: list[str]) -> str:
    lines = ["| client | loop | " + " | ".join(LABELS[s] for s in SCENARIOS) + " |",
             "|---|---|" + "---|" * len(SCENARIOS)]
    for loop in LOOPS:
        for client in clients:
            cells = []
            for scenario in SCENARIOS:
                rate = statistics.median(results[client, loop, scenario])
                base = statistics.median(results.get(("picows", loop, scenario), [float("nan")]))
                ratio = f" ({rate / base:.2f}×)" if client != "picows" and base == base else ""
                cells.append(fmt(rate) + ratio)
            lines.append(f"| {client} | {loop} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--write", default=None, help="append the table to this markdown file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    clients = args.clients.split(",")
    results: dict = {}
    with tempfile.TemporaryDirectory() as workdir:
        binary = build_server(workdir)
        port = free_port()
        server = subprocess.Popen(pinned(1) + [binary], env=dict(os.environ, PORT=str(port)),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            for rep in range(args.reps):
                order = [(c, lp, s) for s in SCENARIOS for lp in LOOPS for c in clients]
                shift = rep % len(clients)
                order = order[shift:] + order[:shift]
                for client, loop, scenario in order:
                    rate = measure(client, loop, *scenario, args.seconds, port)
                    results.setdefault((client, loop, scenario), []).append(rate)
                    print(f"rep {rep + 1}: {client:<10} {loop:<7} {LABELS[scenario]:<11} "
                          f"{fmt(rate)}", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(10)
    text = table(results, clients)
    print(text)
    if args.write:
        header = (f"\n{SECTION}\n\n{time.strftime('%Y-%m-%d', time.gmtime())}, "
                  f"`python bench/bench_client.py --reps {args.reps} --seconds {args.seconds}`, "
                  f"Python {platform.python_version()}, {platform.machine()}, "
                  f"{os.cpu_count()} CPUs shared with other jobs (noisy: read the ratios). "
                  "msg/s (echoes per second) through one connection to bench/servers/c_echo.c; "
                  "median of the repetitions; in brackets the ratio to picows on the same loop. "
                  "bunws, websockets and aiohttp use the awaitable loop (send W, then one "
                  "recv + one send per echo); picows its callbacks.\n\n")
        with open(args.write, "a") as f:
            f.write(header + text + "\n")


if __name__ == "__main__":
    main()
