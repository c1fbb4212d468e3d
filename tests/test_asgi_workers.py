"""``python -m bunws MODULE:APP --workers 2 --redis URL``: a raw ASGI app's topic
messages (``websocket.subscribe`` / ``websocket.publish``) cross workers through
the Redis backplane, each worker runs its own lifespan, SIGTERM stops cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import pytest
from websockets.asyncio.client import connect

from redis_server import free_port, running_redis
from supervised import wait_until_serving

ASYNCIO_ONLY = pytest.mark.asyncio(loop_factories=["asyncio"])

APP = '''
import os

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            scope["state"]["pid"] = os.getpid()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(scope["state"]["pid"]).encode()})
        return
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.subscribe", "topic": "news"})
    await send({"type": "websocket.send", "text": str(os.getpid())})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.publish", "topic": "news", "text": message["text"]})
'''


@pytest.fixture(scope="module")
def redis() -> Any:
    yield from running_redis()


@ASYNCIO_ONLY
async def test_topic_messages_cross_two_workers_through_redis(redis: Any, tmp_path: Any) -> None:
    (tmp_path / "topicapp.py").write_text(APP)
    port = free_port()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bunws", "topicapp:app", "--workers", "2", "--port", str(port),
        "--redis", redis.url, "--no-uvloop", cwd=str(tmp_path), env=env,
        stdout=asyncio.subprocess.DEVNULL,
    )
    clients = {}
    try:
        async with asyncio.timeout(20):
            await wait_until_serving(proc, port, "/", timeout=20)
            for _ in range(60):
                ws = await connect(f"ws://127.0.0.1:{port}/")
                pid = int(await ws.recv())
                if pid in clients:
                    await ws.close()
                else:
                    clients[pid] = ws
                if len(clients) == 2:
                    break
            assert len(clients) == 2, "every connection landed on one worker"
            first, second = clients.values()
            # The other worker's subscription reaches Redis asynchronously: publish until it arrives.
            while True:
                await first.send("across")
                try:
                    assert await asyncio.wait_for(second.recv(), 0.2) == "across"
                    break
                except asyncio.TimeoutError:
                    continue
            await second.send("back")
            assert await asyncio.wait_for(first.recv(), 5) == "back"
        proc.send_signal(signal.SIGTERM)
        for ws in clients.values():
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1001
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
