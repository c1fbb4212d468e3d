"""ASGI WebSockets on bunws with raw ASGI apps: the scope, accept headers, denial
responses, close codes both ways, send after close, flow control both ways, topic
messages, and native handlers on the same port."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import bunws
from asgi_support import asgi_server
from bunws.asgi import topics
from bunws.asgi_http import ClientDisconnected
from conftest import eventually


async def test_scope_accept_headers_and_close_codes_both_ways() -> None:
    seen: dict[str, Any] = {}
    done = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["scope"] = scope
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.accept", "subprotocol": "b", "headers": [(b"x-server", b"yes")]})
        seen["first"] = await receive()
        seen["disconnect"] = await receive()
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except OSError as exc:
            seen["error"] = exc
        done.set()

    async with asgi_server(app, lifespan="off") as server:
        async with connect(f"ws://127.0.0.1:{server.port}/chat?room=1", subprotocols=["a", "b"]) as ws:
            assert ws.subprotocol == "b" and ws.response.headers["x-server"] == "yes"
            await ws.send("hi")
            await ws.close(4001, "bye now")
        await asyncio.wait_for(done.wait(), 5)
    scope = seen["scope"]
    assert scope["type"] == "websocket" and scope["scheme"] == "ws" and scope["path"] == "/chat"
    assert scope["query_string"] == b"room=1" and scope["subprotocols"] == ["a", "b"]
    assert {"websocket.http.response", "websocket.publish", "websocket.subscribe"} <= set(scope["extensions"])
    assert seen["first"] == {"type": "websocket.receive", "text": "hi"}
    assert seen["disconnect"] == {"type": "websocket.disconnect", "code": 4001, "reason": "bye now"}
    assert isinstance(seen["error"], ClientDisconnected) and isinstance(seen["error"], bunws.WebSocketError)


async def test_server_close_denial_response_and_close_before_accept() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        if scope["path"] == "/deny":
            await send({"type": "websocket.http.response.start", "status": 401, "headers": [(b"x-why", b"token")]})
            await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
            await send({"type": "websocket.http.response.body", "body": b"entry"})
        elif scope["path"] == "/refuse":
            await send({"type": "websocket.close"})
        else:
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "bytes": b"\x00bin"})
            await send({"type": "websocket.close", "code": 4321, "reason": "done"})

    async with asgi_server(app, lifespan="off") as server:
        with pytest.raises(InvalidStatus) as info:
            await connect(f"ws://127.0.0.1:{server.port}/deny")
        assert info.value.response.status_code == 401 and info.value.response.body == b"no entry"
        assert info.value.response.headers["x-why"] == "token"
        with pytest.raises(InvalidStatus) as info:
            await connect(f"ws://127.0.0.1:{server.port}/refuse")
        assert info.value.response.status_code == 403
        async with connect(f"ws://127.0.0.1:{server.port}/ok") as ws:
            assert await ws.recv() == b"\x00bin"
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 4321 and ws.close_reason == "done"


async def test_an_app_that_receives_late_gets_every_message_in_order() -> None:
    go = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await go.wait()
        for i in range(200):
            message = await receive()
            assert message["text"] == str(i)
        await send({"type": "websocket.send", "text": "all 200"})

    async with asgi_server(app, lifespan="off") as server:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            for i in range(200):
                await ws.send(str(i))
            await asyncio.sleep(0.05)  # the 200 messages reach the server, which pauses after 16
            go.set()
            assert await asyncio.wait_for(ws.recv(), 5) == "all 200"


async def test_send_awaits_a_client_that_does_not_read_then_delivers_everything() -> None:
    sent = [0]
    message = "m" * 65536

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        for _ in range(300):  # 19.7 MB
            await send({"type": "websocket.send", "text": message})
            sent[0] += 1

    async with asgi_server(app, lifespan="off", send_limit=256 * 1024) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/", max_size=None, max_queue=1) as ws:
            await eventually(lambda: sent[0] > 2)
            stalled = -1
            while stalled != sent[0]:
                stalled = sent[0]
                await asyncio.sleep(0.2)
            assert sent[0] < 150
            for _ in range(300):
                assert await asyncio.wait_for(ws.recv(), 10) == message


async def test_topic_messages_and_the_topics_helper() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            hub = topics(scope)
            status = hub.publish("room", "from http")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"%d %d" % (status, hub.subscriber_count("room"))})
            return
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.subscribe", "topic": "room"})
        await send({"type": "websocket.send", "text": "joined"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "leave":
                await send({"type": "websocket.unsubscribe", "topic": "room"})
                assert not topics(scope).is_subscribed("room")
                await send({"type": "websocket.send", "text": "left"})
            else:
                await send({"type": "websocket.publish", "topic": "room", "text": message.get("text"), "bytes": message.get("bytes")})

    async with asgi_server(app, lifespan="off") as server:
        url = f"ws://127.0.0.1:{server.port}/"
        async with connect(url) as a, connect(url) as b:
            assert await a.recv() == "joined" and await b.recv() == "joined"
            assert server.subscriber_count("room") == 2
            await a.send("to everyone else")
            assert await b.recv() == "to everyone else"  # a, the sender, gets nothing
            await b.send(b"\x01binary")
            assert await a.recv() == b"\x01binary"
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert answer.endswith(b" 2") and await a.recv() == "from http" and await b.recv() == "from http"
            await b.send("leave")
            assert await b.recv() == "left"
            await eventually(lambda: server.subscriber_count("room") == 1)


async def test_native_handlers_share_the_port() -> None:
    def native_fetch(req: bunws.Request, server: bunws.Server) -> Any:
        if server.upgrade(req, data="native"):
            return None
        return bunws.Response("native http")

    handler = bunws.WebSocketHandler(message=lambda ws, msg: ws.send(f"native {ws.data}: {msg}"))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": "asgi: " + message["text"]})

    async with asgi_server(app, lifespan="off", native={"/hot": native_fetch}, websocket=handler) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/hot") as hot, connect(f"ws://127.0.0.1:{server.port}/app") as other:
            await hot.send("x")
            await other.send("y")
            assert await hot.recv() == "native native: x"
            assert await other.recv() == "asgi: y"


async def test_a_message_handed_to_a_cancelled_receive_is_kept_for_the_next() -> None:
    """A message given to an app waiting in receive() is that call's result; when
    the call is cancelled before it resumes (on stock asyncio: a timer due in the
    same loop pass as the data), the message goes to the next receive()."""
    waiting: list[asyncio.Task[Any]] = []
    go_on = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        waiting.append(asyncio.ensure_future(receive()))
        await go_on.wait()
        message = await receive()
        await send({"type": "websocket.send", "text": f"{waiting[0].cancelled()} {message.get('text')}"})

    async with asgi_server(app, lifespan="off") as server:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            await eventually(lambda: bool(waiting))
            await asyncio.sleep(0.01)  # the receive() task waits on its future
            asyncio.get_running_loop().call_later(0.01, waiting[0].cancel)
            await ws.send("kept")
            time.sleep(0.05)  # block the loop: the frame and the timer are both due on the next pass
            await asyncio.sleep(0.05)
            go_on.set()
            assert await asyncio.wait_for(ws.recv(), 5) == "True kept"
