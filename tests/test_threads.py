"""Producers on other threads: ``Server.publish_threadsafe`` and the loop-only rule.

Everything runs over real loopback sockets; the producer threads are plain
``threading.Thread`` objects, as a Kafka consumer or an executor would be.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import websockets
from conftest import eventually, running, ws_url

import bunws
import bunws.server

ASYNCIO_ONLY = pytest.mark.asyncio(loop_factories=["asyncio"])


def subscriber_handler(opened: list[bunws.ServerWebSocket]) -> bunws.WebSocketHandler:
    def open_(ws: bunws.ServerWebSocket) -> None:
        ws.subscribe("t")
        opened.append(ws)

    return bunws.WebSocketHandler(open=open_, idle_timeout=0)


async def receive(client: Any, count: int, timeout: float = 20) -> list[Any]:
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.append(await client.recv())
    return got


async def in_threads(*targets: Any) -> None:
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join(20) for t in threads])


async def test_one_producer_thread_is_published_in_call_order() -> None:
    opened: list[bunws.ServerWebSocket] = []
    async with running(subscriber_handler(opened)) as server:
        async with websockets.connect(ws_url(server), max_queue=None) as client:
            await eventually(lambda: server.subscriber_count("t") == 1)
            results: list[bool] = []

            def produce() -> None:
                for i in range(2000):
                    results.append(server.publish_threadsafe("t", f"{i}"))

            await in_threads(produce)
            got = await receive(client, 2000)
    assert all(results)
    assert got == [f"{i}" for i in range(2000)]


async def test_several_producer_threads_keep_each_ones_order_and_lose_nothing() -> None:
    opened: list[bunws.ServerWebSocket] = []
    async with running(subscriber_handler(opened)) as server:
        async with websockets.connect(ws_url(server), max_queue=None) as client:
            await eventually(lambda: server.subscriber_count("t") == 1)

            def producer(name: str) -> Any:
                def produce() -> None:
                    for i in range(500):
                        assert server.publish_threadsafe("t", f"{name}:{i}".encode(), compress=False)
                return produce

            await in_threads(*(producer(n) for n in "abcd"))
            got = await receive(client, 2000)
    for name in "abcd":
        mine = [int(m.split(b":")[1]) for m in got if m.startswith(name.encode())]
        assert mine == list(range(500)), name


async def test_publish_threadsafe_checks_its_arguments_in_the_callers_thread() -> None:
    async with running() as server:
        errors: list[type] = []

        def produce() -> None:
            for args in (("", "x"), (1, "x"), ("t", 3.5), ("t", "x\ud800")):
                try:
                    server.publish_threadsafe(*args)
                except bunws.WebSocketError as exc:
                    errors.append(type(exc))
            try:
                server.publish_threadsafe("t", "x", compress=1)  # type: ignore[arg-type]
            except bunws.WebSocketError as exc:
                errors.append(type(exc))

        await in_threads(produce)
    assert errors == [bunws.InvalidArgument, bunws.InvalidType, bunws.InvalidType,
                      bunws.InvalidArgument, bunws.InvalidType]


@ASYNCIO_ONLY
async def test_a_producer_faster_than_the_loop_is_refused_not_buffered(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[bunws.ServerWebSocket] = []
    monkeypatch.setattr(bunws.server, "THREADSAFE_LIMIT", 16 * 1024)
    async with running(subscriber_handler(opened)) as server:
        async with websockets.connect(ws_url(server), max_queue=None) as client:
            await eventually(lambda: server.subscriber_count("t") == 1)
            accepted: list[int] = []
            started = threading.Event()

            def produce() -> None:
                started.wait(5)
                for i in range(100):
                    if server.publish_threadsafe("t", f"{i:04d}" + "x" * 1020):
                        accepted.append(i)

            thread = threading.Thread(target=produce)
            thread.start()
            started.set()
            time.sleep(0.3)  # the loop is busy: nothing is drained meanwhile
            thread.join(5)
            assert server.threadsafe_refused == 100 - len(accepted) > 0
            assert 0 < len(accepted) <= 16
            got = await receive(client, len(accepted))
    assert [int(m[:4]) for m in got] == accepted


async def test_publish_threadsafe_after_stop_raises_closed() -> None:
    async with running() as server:
        pass
    with pytest.raises(bunws.ClosedError):
        server.publish_threadsafe("t", "late")


async def test_loop_only_methods_raise_wrong_thread_from_another_thread() -> None:
    opened: list[bunws.ServerWebSocket] = []
    async with running(subscriber_handler(opened)) as server:
        async with websockets.connect(ws_url(server)) as client:
            await eventually(lambda: bool(opened))
            ws = opened[0]
            raised: list[str] = []
            calls = {
                "send": lambda: ws.send("x"),
                "send_text": lambda: ws.send_text("x"),
                "ping": lambda: ws.ping(),
                "cork": lambda: ws.cork(lambda w: None),
                "subscribe": lambda: ws.subscribe("u"),
                "unsubscribe": lambda: ws.unsubscribe("t"),
                "ws.publish": lambda: ws.publish("t", "x"),
                "close": lambda: ws.close(),
                "terminate": lambda: ws.terminate(),
                "pause": lambda: ws.pause(),
                "server.publish": lambda: server.publish("t", "x"),
            }

            def misuse() -> None:
                for name, call in calls.items():
                    try:
                        call()
                    except bunws.WrongThreadError:
                        raised.append(name)

            await in_threads(misuse)
            # nothing was corrupted: the socket still works from the loop
            assert ws.ready_state == 1 and ws.is_subscribed("t")
            assert ws.send("still fine") > 0
            assert await asyncio.wait_for(client.recv(), 5) == "still fine"
    assert raised == list(calls)
    assert issubclass(bunws.WrongThreadError, RuntimeError)
