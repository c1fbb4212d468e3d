"""Basic echo server: every message comes straight back (text stays text, binary stays binary).

    python examples/echo.py --port 3000
    # then, e.g.:  python -m websockets ws://127.0.0.1:3000/
"""

from __future__ import annotations

import argparse

import bunws


def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response | None:
    # upgrade() answers 101 and returns True; the handlers take over from here.
    if server.upgrade(req):
        return None
    return bunws.Response("This is a WebSocket endpoint", status=400)


def message(ws: bunws.ServerWebSocket, msg: str | bytes) -> None:
    ws.send(msg)  # str -> text frame, bytes -> binary frame


websocket = bunws.WebSocketHandler(message=message)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bunws echo server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    bunws.run(
        fetch,
        websocket,
        hostname=args.host,
        port=args.port,
        on_start=lambda server: print(f"echo server on ws://{args.host}:{server.port}/", flush=True),
    )
