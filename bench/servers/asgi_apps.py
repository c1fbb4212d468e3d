"""The ASGI apps bench/bench_asgi.py runs on every server: ``raw`` (HTTP hello on
every path, WebSocket echo on every path) and ``fastapi_app`` (a FastAPI WebSocket
echo on /echo, hello on /)."""


async def raw(scope, receive, send):
    kind = scope["type"]
    if kind == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
        await send({"type": "http.response.body", "body": b"Hello, World!"})
    elif kind == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")})
    elif kind == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return


def _fastapi():
    try:
        from fastapi import FastAPI, WebSocket, WebSocketDisconnect
    except ImportError:
        return None
    app = FastAPI()

    @app.get("/")
    async def hello():
        return "Hello, World!"

    @app.websocket("/echo")
    async def echo(websocket: WebSocket):
        await websocket.accept()
        try:
            while True:
                await websocket.send_bytes(await websocket.receive_bytes())
        except WebSocketDisconnect:
            pass

    return app


fastapi_app = _fastapi()
