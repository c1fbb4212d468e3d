"""aiohttp peer for the bunws benchmark (bench/README.md, "Server convention").

127.0.0.1:$PORT; /echo echoes with the same message type, /sub joins the subscriber set,
/pub sends each message to every subscriber in a loop (aiohttp has no broadcast helper).
GET / -> 200. DEFLATE=1 enables permessage-deflate; MAX_PAYLOAD sets max_msg_size;
no heartbeat. UVLOOP=1 runs on uvloop.
"""
import asyncio
import os

from aiohttp import WSMsgType, web

PORT = int(os.environ.get("PORT", "9001"))
MAX_PAYLOAD = int(os.environ.get("MAX_PAYLOAD", str(64 * 1024 * 1024)))
DEFLATE = os.environ.get("DEFLATE") == "1"
SUBS = set()


def make_ws():
    return web.WebSocketResponse(max_msg_size=MAX_PAYLOAD, compress=DEFLATE, heartbeat=None)


async def echo(request):
    ws = make_ws()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def sub(request):
    ws = make_ws()
    await ws.prepare(request)
    SUBS.add(ws)
    try:
        async for _ in ws:
            pass
    finally:
        SUBS.discard(ws)
    return ws


async def pub(request):
    ws = make_ws()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            for s in list(SUBS):
                await s.send_bytes(msg.data)
        elif msg.type == WSMsgType.TEXT:
            for s in list(SUBS):
                await s.send_str(msg.data)
    return ws


async def index(request):
    return web.Response(text="ok")


async def main():
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/echo", echo)
    app.router.add_get("/sub", sub)
    app.router.add_get("/pub", pub)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", PORT, backlog=4096)
    await site.start()
    print(f"aiohttp listening on 127.0.0.1:{PORT}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    if os.environ.get("UVLOOP") == "1":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
