#!/usr/bin/env python3
"""Drive Autobahn|Testsuite's fuzzing server with the bunws client (client mode).

    python scripts/autobahn/client_echo.py ws://127.0.0.1:PORT [--agent NAME] [--uvloop]

For every case the server offers, connect to ``/runCase?case=N&agent=NAME``, echo
every message back until the connection closes, then ask the server to write its
report (``/updateReports``). The exit status is 0 when every case ran.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import bunws
from bunws.errors import WebSocketError

# Case 9.* sends messages up to 16 MiB; 12.*/13.* negotiate permessage-deflate.
OPTIONS = {"max_size": 64 * 1024 * 1024, "compression": "deflate", "ping_interval": None,
           "open_timeout": 30, "close_timeout": 10, "proxy": None}


async def run_case(base: str, case: int, agent: str) -> None:
    try:
        async with bunws.connect(f"{base}/runCase?case={case}&agent={agent}", **OPTIONS) as ws:
            async for message in ws:
                await ws.send(message)
    except (WebSocketError, OSError):
        pass  # the suite judges what was on the wire; an abnormal end is its to grade


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--agent", default="bunws-client")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    base = args.url.rstrip("/")
    async with bunws.connect(f"{base}/getCaseCount", **OPTIONS) as ws:
        count = int(await ws.recv())
    print(f"{count} cases", file=sys.stderr)
    for case in range(1, count + 1):
        await run_case(base, case, args.agent)
    async with bunws.connect(f"{base}/updateReports?agent={args.agent}", **OPTIONS) as ws:
        try:
            await ws.recv()
        except bunws.ConnectionClosed:
            pass
    return 0


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        import uvloop

        sys.exit(uvloop.run(main()))
    sys.exit(asyncio.run(main()))
