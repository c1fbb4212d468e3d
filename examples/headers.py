"""Custom headers and cookies on the ``101 Switching Protocols`` answer.

``server.upgrade(req, headers=...)`` adds headers to the handshake response: the
usual place to set a session cookie. Pass a list of pairs to repeat a header
(several ``Set-Cookie``). ``Upgrade``, ``Connection``, ``Sec-WebSocket-Accept`` and
``Sec-WebSocket-Extensions`` are the server's and cannot be overridden.

    python examples/headers.py --port 3000
"""

from __future__ import annotations

import argparse
import secrets
from http.cookies import SimpleCookie

import bunws


def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response | None:
    cookies = SimpleCookie(req.headers.get("cookie", ""))
    session = cookies["session"].value if "session" in cookies else secrets.token_hex(8)
    headers = [
        ("Set-Cookie", f"session={session}; Path=/; HttpOnly; SameSite=Strict"),
        ("Set-Cookie", "theme=dark; Path=/"),
        ("X-Powered-By", "bunws"),
    ]
    if server.upgrade(req, data={"session": session}, headers=headers):
        return None
    return bunws.Response("WebSocket upgrade expected", status=400)


def open(ws: bunws.ServerWebSocket) -> None:
    ws.send(f"your session is {ws.data['session']}")


websocket = bunws.WebSocketHandler(open=open)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bunws custom handshake headers example")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    bunws.run(
        fetch,
        websocket,
        hostname=args.host,
        port=args.port,
        on_start=lambda server: print(f"listening on ws://{args.host}:{server.port}/", flush=True),
    )
