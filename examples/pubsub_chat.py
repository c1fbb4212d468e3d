"""Pub/sub chat: one topic, every member subscribed, messages published to it.

``ws.subscribe(topic)`` / ``ws.publish(topic, msg)`` (everyone but the sender) and
``server.publish(topic, msg)`` (everyone) replace any bookkeeping of who is
connected; ``server.subscriber_count(topic)`` says how many there are.

    python examples/pubsub_chat.py --port 3000
    # connect several clients to ws://127.0.0.1:3000/chat?username=NAME
"""

from __future__ import annotations

import argparse

import bunws

TOPIC = "the-group-chat"
app: dict[str, bunws.Server] = {}


def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response | None:
    if req.path == "/chat":
        username = req.query.get("username") or "anonymous"
        if server.upgrade(req, data={"username": username}):
            return None
        return bunws.Response("WebSocket upgrade expected", status=400)
    return bunws.Response("not found", status=404)


def open(ws: bunws.ServerWebSocket) -> None:
    ws.subscribe(TOPIC)
    # The newcomer is a subscriber already, so server.publish reaches them too.
    app["server"].publish(TOPIC, f"{ws.data['username']} has entered the chat")


def message(ws: bunws.ServerWebSocket, msg: str | bytes) -> None:
    text = msg if isinstance(msg, str) else msg.decode("utf-8", "replace")
    app["server"].publish(TOPIC, f"{ws.data['username']}: {text}")


def close(ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
    # The socket is already unsubscribed here; the rest of the room hears about it.
    app["server"].publish(TOPIC, f"{ws.data['username']} has left the chat")


websocket = bunws.WebSocketHandler(open=open, message=message, close=close)


def started(server: bunws.Server) -> None:
    app["server"] = server
    print(f"chat on ws://{server.hostname}:{server.port}/chat?username=NAME", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bunws pub/sub chat example")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    bunws.run(fetch, websocket, hostname=args.host, port=args.port, on_start=started)
