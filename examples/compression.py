"""Compression: permessage-deflate (RFC 7692), negotiated per connection.

``per_message_deflate=True`` offers compression to every client that asks for it
(browsers, Node's ``ws``, Python's ``websockets`` all do). A dict picks the modes:
``{"compress": "shared" | "dedicated" | "4KB".."256KB" | "disable", "decompress": ...}``;
a shared compressor costs no memory per connection, a dedicated one compresses
better. Compression is then chosen per message with ``send(data, compress=True)``
(``server.publish`` compresses by default); ``ws.extensions`` tells what was agreed.

    python examples/compression.py --port 3000
"""

from __future__ import annotations

import argparse

import bunws

SMALL = 64  # bytes; deflating tiny messages costs more than it saves


def open(ws: bunws.ServerWebSocket) -> None:
    ws.send(f"extensions: {ws.extensions or 'none'}")


def message(ws: bunws.ServerWebSocket, msg: str | bytes) -> None:
    ws.send(msg, compress=len(msg) > SMALL)


def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response | None:
    if server.upgrade(req):
        return None
    return bunws.Response("WebSocket upgrade expected", status=400)


websocket = bunws.WebSocketHandler(
    open=open,
    message=message,
    per_message_deflate={"compress": "dedicated", "decompress": "shared"},
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bunws compression example")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    bunws.run(
        fetch,
        websocket,
        hostname=args.host,
        port=args.port,
        on_start=lambda server: print(f"compression example on ws://{args.host}:{server.port}/", flush=True),
    )
