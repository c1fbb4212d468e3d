"""Starlette and Litestar apps on bunws over loopback: routes, JSON, streaming,
lifespan and a WebSocket echo each."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")

from asgi_support import asgi_server, base_url  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route, WebSocketRoute

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield {"db": "connected"}

    async def user(request: Any) -> Any:
        return JSONResponse({"id": int(request.path_params["uid"]), "db": request.state.db})

    async def upload(request: Any) -> Any:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return PlainTextResponse(str(size))

    async def numbers(request: Any) -> Any:
        async def gen() -> Any:
            for i in range(3):
                yield f"{i},"
        return StreamingResponse(gen())

    async def echo(websocket: Any) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            await websocket.send_text("starlette " + text)

    return Starlette(
        routes=[Route("/users/{uid:int}", user), Route("/upload", upload, methods=["POST"]),
                Route("/numbers", numbers), WebSocketRoute("/ws", echo)],
        lifespan=lifespan,
    )


def litestar_app() -> Any:
    from litestar import Litestar, get, post, websocket_listener

    @get("/hello/{name:str}")
    async def hello(name: str, excited: bool = False) -> dict[str, str]:
        return {"hello": name + ("!" if excited else "")}

    @post("/double")
    async def double(data: dict[str, int]) -> dict[str, int]:
        return {k: v * 2 for k, v in data.items()}

    @websocket_listener("/ws")
    async def echo(data: str) -> str:
        return "litestar " + data

    return Litestar(route_handlers=[hello, double, echo])


async def test_starlette() -> None:
    async with asgi_server(starlette_app()) as server, httpx.AsyncClient(base_url=base_url(server)) as client:
        assert (await client.get("/users/7")).json() == {"id": 7, "db": "connected"}
        assert (await client.post("/upload", content=b"a" * 150_000)).text == "150000"
        r = await client.get("/numbers")
        assert r.text == "0,1,2," and r.headers["transfer-encoding"] == "chunked"
        async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await ws.send("hi")
            assert await ws.recv() == "starlette hi"


async def test_litestar() -> None:
    pytest.importorskip("litestar")
    async with asgi_server(litestar_app()) as server, httpx.AsyncClient(base_url=base_url(server)) as client:
        assert (await client.get("/hello/ann", params={"excited": "true"})).json() == {"hello": "ann!"}
        r = await client.post("/double", json={"a": 2})
        assert r.status_code == 201 and r.json() == {"a": 4}
        assert (await client.post("/double", json=[1])).status_code == 400
        async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await ws.send("hi")
            assert await ws.recv() == "litestar hi"
