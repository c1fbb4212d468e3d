"""Contextual data: attach per-connection data at upgrade time, read it as ``ws.data``.

Whatever ``fetch`` knows about the request (query, cookies, headers, an authenticated
user) can be handed to ``server.upgrade(req, data=...)``; every handler then sees it
on ``ws.data`` without any lookup.

    python examples/contextual_data.py --port 3000
    # connect to ws://127.0.0.1:3000/?user=ada  (or send a cookie "user=ada")
"""

from __future__ import annotations

import argparse
import time
from http.cookies import SimpleCookie

import bunws


def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response | None:
    cookies = SimpleCookie(req.headers.get("cookie", ""))
    user = req.query.get("user") or (cookies["user"].value if "user" in cookies else "anonymous")
    data = {"user": user, "since": time.time(), "messages": 0}
    if server.upgrade(req, data=data):
        return None
    return bunws.Response("WebSocket upgrade expected", status=400)


def open(ws: bunws.ServerWebSocket) -> None:
    ws.send(f"hello {ws.data['user']}")


def message(ws: bunws.ServerWebSocket, msg: str | bytes) -> None:
    # ws.data is an ordinary object owned by this connection: mutate it freely.
    ws.data["messages"] += 1
    ws.send(f"{ws.data['user']} #{ws.data['messages']}: {msg!s}")


def close(ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
    seconds = time.time() - ws.data["since"]
    print(f"{ws.data['user']} left after {seconds:.1f}s and {ws.data['messages']} messages", flush=True)


websocket = bunws.WebSocketHandler(open=open, message=message, close=close)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bunws contextual data example")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    bunws.run(
        fetch,
        websocket,
        hostname=args.host,
        port=args.port,
        on_start=lambda server: print(f"listening on ws://{args.host}:{server.port}/?user=NAME", flush=True),
    )
