"""Backpressure: stop sending when ``send`` says so, carry on in ``drain``.

``ws.send`` returns the byte count when the frame went out, ``-1`` when it was
accepted but had to be buffered (the peer is slower than we are: stop and wait),
and ``0`` when it was dropped because more than ``backpressure_limit`` bytes were
already buffered. ``drain(ws)`` runs once the buffer has been written out.

Send ``stream N`` and the server streams N bytes as numbered binary chunks, then a
text ``done CHUNKS DRAINS`` summary.

    python examples/backpressure.py --port 3000
"""

from __future__ import annotations

import argparse

import bunws

CHUNK = 64 * 1024


def message(ws: bunws.ServerWebSocket, msg: str | bytes) -> None:
    if isinstance(msg, str) and msg.startswith("stream "):
        ws.data = {"left": int(msg.split()[1]), "seq": 0, "drains": 0}
        pump(ws)


def pump(ws: bunws.ServerWebSocket) -> None:
    state = ws.data
    while state["left"] > 0:
        size = min(CHUNK, state["left"])
        chunk = state["seq"].to_bytes(8, "big") + bytes(max(size - 8, 0))
        status = ws.send(chunk)
        if status == 0:  # dropped: over backpressure_limit; retry this chunk on drain
            return
        state["left"] -= size
        state["seq"] += 1
        if status == -1:  # buffered: wait for drain before sending more
            return
    ws.send(f"done {state['seq']} {state['drains']}")
    state["left"] = -1  # finished; later drains do nothing


def drain(ws: bunws.ServerWebSocket) -> None:
    if ws.data and ws.data["left"] >= 0:
        ws.data["drains"] += 1
        pump(ws)


def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response | None:
    if server.upgrade(req):
        return None
    return bunws.Response("WebSocket upgrade expected", status=400)


websocket = bunws.WebSocketHandler(
    message=message,
    drain=drain,
    backpressure_limit=1024 * 1024,  # drop sends once 1 MiB is waiting
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bunws backpressure example")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    bunws.run(
        fetch,
        websocket,
        hostname=args.host,
        port=args.port,
        on_start=lambda server: print(f"send 'stream N' to ws://{args.host}:{server.port}/", flush=True),
    )
