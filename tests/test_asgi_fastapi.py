"""A FastAPI app on bunws over loopback: routing, validation, bodies, streaming,
lifespan state and WebSockets (text, bytes, subprotocol, compression, refusal)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import pytest

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from asgi_support import asgi_server, base_url  # noqa: E402
from fastapi import FastAPI, Request, WebSocket  # noqa: E402
from fastapi.responses import StreamingResponse  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402

from bunws.asgi import topics  # noqa: E402


class Item(BaseModel):
    name: str
    price: float


def make_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield {"greeting": "hello from lifespan"}

    app = FastAPI(lifespan=lifespan)

    @app.get("/items/{item_id}")
    async def read_item(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"item_id": item_id, "q": q}

    @app.post("/items")
    async def create_item(item: Item) -> dict[str, Any]:
        return {"name": item.name, "total": item.price * 2}

    @app.post("/size")
    async def size(request: Request) -> dict[str, int]:
        body = await request.body()
        return {"size": len(body), "sum": sum(body) % 65536}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts() -> Any:
            for i in range(5):
                yield f"part {i}\n"
        return StreamingResponse(parts(), media_type="text/plain")

    @app.get("/state")
    async def state(request: Request) -> dict[str, str]:
        return {"greeting": request.state.greeting}

    @app.post("/broadcast/{topic}")
    async def broadcast(topic: str, request: Request) -> dict[str, int]:
        hub = topics(request.scope)
        return {"status": hub.publish(topic, (await request.body()).decode()), "count": hub.subscriber_count(topic)}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        offered = websocket.scope["subprotocols"]
        await websocket.accept(subprotocol="chat.v2" if "chat.v2" in offered else None)
        hub = topics(websocket.scope)
        hub.subscribe("news")
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"].upper())
            else:
                await websocket.send_bytes(message["bytes"][::-1])

    @app.websocket("/private")
    async def private(websocket: WebSocket) -> None:
        await websocket.close(code=1008)

    return app


async def test_routes_params_json_and_validation() -> None:
    async with asgi_server(make_app()) as server, httpx.AsyncClient(base_url=base_url(server)) as client:
        r = await client.get("/items/42", params={"q": "blue"})
        assert r.status_code == 200 and r.json() == {"item_id": 42, "q": "blue"}
        r = await client.post("/items", json={"name": "pen", "price": 1.25})
        assert r.json() == {"name": "pen", "total": 2.5}
        r = await client.get("/items/not-a-number")
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "item_id"]
        r = await client.post("/items", json={"name": "pen"})
        assert r.status_code == 422
        r = await client.get("/missing")
        assert r.status_code == 404
        body = bytes(range(256)) * 1200  # 300 kB
        r = await client.post("/size", content=body)
        assert r.json() == {"size": len(body), "sum": sum(body) % 65536}


async def test_streaming_response_is_chunked_and_lifespan_state_reaches_requests() -> None:
    async with asgi_server(make_app()) as server, httpx.AsyncClient(base_url=base_url(server)) as client:
        r = await client.get("/stream")
        assert r.headers["transfer-encoding"] == "chunked" and "content-length" not in r.headers
        assert r.text == "".join(f"part {i}\n" for i in range(5))
        assert (await client.get("/state")).json() == {"greeting": "hello from lifespan"}


async def test_websocket_text_bytes_subprotocol_compression_and_topics() -> None:
    async with asgi_server(make_app(), per_message_deflate=True) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        async with connect(url, subprotocols=["chat.v1", "chat.v2"]) as ws:
            assert ws.subprotocol == "chat.v2"
            assert "permessage-deflate" in ws.response.headers.get("sec-websocket-extensions", "")
            await ws.send("hello " * 100)
            assert await ws.recv() == "HELLO " * 100
            await ws.send(b"\x01\x02\x03")
            assert await ws.recv() == b"\x03\x02\x01"
            async with httpx.AsyncClient(base_url=base_url(server)) as client:
                r = await client.post("/broadcast/news", content=b"extra")
            assert r.json()["count"] == 1 and r.json()["status"] > 0
            assert await ws.recv() == "extra"
        async with connect(url) as ws:
            assert ws.subprotocol is None  # nothing offered, nothing chosen


async def test_rejected_websocket_is_403() -> None:
    async with asgi_server(make_app()) as server:
        with pytest.raises(InvalidStatus) as info:
            await connect(f"ws://127.0.0.1:{server.port}/private")
        assert info.value.response.status_code == 403
