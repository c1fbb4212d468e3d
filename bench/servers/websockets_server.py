"""websockets peer for the bunws benchmark (bench/README.md, "Server convention").

127.0.0.1:$PORT with the asyncio implementation (websockets.asyncio.server); /echo echoes,
/sub joins the subscriber set, /pub relays each message with websockets.broadcast().
GET / -> 200. UVLOOP=1 runs on uvloop; DEFLATE=1 enables permessage-deflate;
MAX_PAYLOAD sets max_size. Keepalive pings are disabled.
"""
import asyncio
import http
import os

from websockets.asyncio.server import broadcast, serve

PORT = int(os.environ.get("PORT", "9001"))
MAX_PAYLOAD = int(os.environ.get("MAX_PAYLOAD", str(64 * 1024 * 1024)))
DEFLATE = os.environ.get("DEFLATE") == "1"
SUBS = set()


async def handler(ws):
    path = ws.request.path.split("?", 1)[0]
    if path == "/echo":
        async for msg in ws:
            await ws.send(msg)
    elif path == "/sub":
        SUBS.add(ws)
        try:
            await ws.wait_closed()
        finally:
            SUBS.discard(ws)
    elif path == "/pub":
        async for msg in ws:
            broadcast(SUBS, msg)


def process_request(connection, request):
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return connection.respond(http.HTTPStatus.OK, "ok")
    return None


async def main():
    async with serve(handler, "127.0.0.1", PORT, process_request=process_request,
                     ping_interval=None, ping_timeout=None, max_size=MAX_PAYLOAD, backlog=4096,
                     compression="deflate" if DEFLATE else None) as server:
        print(f"websockets listening on 127.0.0.1:{PORT}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    if os.environ.get("UVLOOP") == "1":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
