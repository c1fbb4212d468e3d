"""Cork: batch several sends into one write (one syscall, one TCP segment).

Inside a plain (non-async) handler bunws already corks everything the handler
sends. Code that runs later, like an ``async`` handler after an ``await``, a timer
or a background task, sends one write per frame unless it uses ``ws.cork(fn)``:
whatever ``fn(ws)`` sends leaves together when it returns, and ``cork`` returns
what ``fn`` returned.

    python examples/cork.py --port 3000
"""

from __future__ import annotations

import argparse
import asyncio

import bunws


async def lookup(query: str) -> list[str]:
    await asyncio.sleep(0.01)  # stands for a database or HTTP call
    return [f"{query}-{i}" for i in range(3)]


async def message(ws: bunws.ServerWebSocket, msg: str | bytes) -> None:
    query = msg if isinstance(msg, str) else msg.decode("utf-8", "replace")
    rows = await lookup(query)

    def reply(w: bunws.ServerWebSocket) -> int:
        w.send("begin")
        for row in rows:
            w.send(row)
        w.send("end")
        return len(rows)

    ws.cork(reply)  # five frames, one write


def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response | None:
    if server.upgrade(req):
        return None
    return bunws.Response("WebSocket upgrade expected", status=400)


websocket = bunws.WebSocketHandler(message=message)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bunws cork example")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    bunws.run(
        fetch,
        websocket,
        hostname=args.host,
        port=args.port,
        on_start=lambda server: print(f"cork example on ws://{args.host}:{server.port}/", flush=True),
    )
