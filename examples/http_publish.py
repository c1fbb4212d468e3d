"""Publish from an HTTP handler: a ``POST`` reaches every WebSocket subscribed to a topic.

``server.publish`` works anywhere, not only inside WebSocket handlers: here
``POST /news`` with a text body broadcasts it to every socket connected at
``/subscribe``, and answers how many sockets are listening.

    python examples/http_publish.py --port 3000
    # connect to ws://127.0.0.1:3000/subscribe, then:
    # curl -d 'breaking news' http://127.0.0.1:3000/news
"""

from __future__ import annotations

import argparse

import bunws

TOPIC = "news"


async def fetch(req: bunws.Request, server: bunws.Server) -> bunws.Response | None:
    if req.path == "/subscribe":
        if server.upgrade(req):
            return None
        return bunws.Response("WebSocket upgrade expected", status=400)
    if req.path == "/news" and req.method == "POST":
        text = await req.text()
        server.publish(TOPIC, text)
        return bunws.Response.json({"delivered_to": server.subscriber_count(TOPIC)})
    return bunws.Response("not found", status=404)


def open(ws: bunws.ServerWebSocket) -> None:
    ws.subscribe(TOPIC)


websocket = bunws.WebSocketHandler(open=open)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bunws publish-from-HTTP example")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()

    def started(server: bunws.Server) -> None:
        print(f"subscribe at ws://{args.host}:{server.port}/subscribe", flush=True)
        print(f"publish with POST http://{args.host}:{server.port}/news", flush=True)

    bunws.run(fetch, websocket, hostname=args.host, port=args.port, on_start=started)
