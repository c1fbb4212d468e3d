"""Server cost per ASGI request / WebSocket message, robust on a shared machine.

Runs ``python -m bunws asgi_apps:APP`` (or any server command after ``--``) under
``valgrind --tool=cachegrind`` twice, with N and 2N requests (or echoes) from a
small client here, and prints the difference of the instruction counts divided by N:
the cost of one more request, without the start-up and shut-down. Instruction counts
barely move with the machine's load, unlike req/s.

Usage::

    python bench/asgi_profile.py --kind http --count 2000
    python bench/asgi_profile.py --kind ws --count 4000
    python bench/asgi_profile.py --kind http -- python -m uvicorn asgi_apps:raw --port {port} ...

``--cprofile FILE`` runs the server once under cProfile instead (stats written to FILE).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402

PY = sys.executable
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"


async def http_client(port: int, count: int, conns: int) -> None:
    async def one(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(n):
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?i)content-length: *(\d+)", head)
            if not head.startswith(b"HTTP/1.1 200") or match is None:
                raise RuntimeError(f"bad answer {head!r}")
            await reader.readexactly(int(match.group(1)))
        writer.close()

    await asyncio.gather(*(one(count // conns) for _ in range(conns)))


async def ws_client(port: int, count: int, conns: int, size: int = 1024) -> None:
    key = base64.b64encode(os.urandom(16))
    payload = bytes(size)  # mask 0: the masked payload is the payload
    frame = bytes([0x82, 0x80 | 126]) + size.to_bytes(2, "big") + b"\0\0\0\0" + payload

    async def one(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"bad handshake answer {head!r}")
        for _ in range(n):
            writer.write(frame)
            got = await reader.readexactly(4 + size)
            if got[0] != 0x82:
                raise RuntimeError(f"bad frame {got[:4]!r}")
        writer.write(b"\x88\x82\0\0\0\0\x03\xe8")
        await reader.read()
        writer.close()

    await asyncio.gather(*(one(count // conns) for _ in range(conns)))


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited")
        if h.ws_handshake_ok(port, "/echo"):
            return
        time.sleep(0.5)
    raise RuntimeError("the server never became ready")


def run_once(argv: list[str], kind: str, count: int, conns: int, wrapper: list[str]) -> str:
    port = h.free_port()
    argv = [a.replace("{port}", str(port)) for a in argv]
    env = dict(os.environ, PORT=str(port), UVLOOP="1", PYTHONPATH=os.pathsep.join([h.SERVERS, h.ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(h.pinned(wrapper + argv, h.SERVER_CPU), env=env, cwd=h.SERVERS,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_ready(port, proc)
        client = http_client if kind == "http" else ws_client
        asyncio.run(client(port, count, conns))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    return err.decode(errors="replace")


def instructions(argv: list[str], kind: str, count: int, conns: int) -> int:
    out = tempfile.mkdtemp(prefix="cg-")
    wrapper = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}/cg.%p"]
    run_once(argv, kind, count, conns, wrapper)
    total = 0
    for path in glob.glob(f"{out}/cg.*"):
        with open(path) as f:
            for line in f:
                if line.startswith("summary:"):
                    total += int(line.split()[1])
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=("http", "ws"), default="http")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--app", default="raw")
    parser.add_argument("--cprofile", metavar="FILE")
    parser.add_argument("server", nargs="*", help="server command ({port} is replaced; $PORT is set too)")
    args = parser.parse_args()
    argv = args.server or [PY, "-m", "bunws", f"asgi_apps:{args.app}", "--port", "{port}", "--uvloop",
                           "--lifespan", "off"]
    if args.cprofile:
        if argv[:2] != [PY, "-m"]:
            sys.exit("--cprofile needs a `python -m module` server")
        run_once([PY, "-m", "cProfile", "-o", os.path.abspath(args.cprofile), *argv[1:]],
                 args.kind, args.count, args.conns, [])
        return
    small = instructions(argv, args.kind, args.count, args.conns)
    large = instructions(argv, args.kind, 2 * args.count, args.conns)
    unit = "request" if args.kind == "http" else "echo"
    print(f"{(large - small) / args.count:,.0f} instructions per {unit} "
          f"({small:,} for {args.count}, {large:,} for {2 * args.count})")


if __name__ == "__main__":
    main()
