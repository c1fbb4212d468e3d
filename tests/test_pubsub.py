"""Pub/sub over real loopback sockets: every rule of docs/bun-behaviour.md §5.

Only the public API is driven (``subscribe``/``publish*``/``subscriptions``,
``Server.publish``/``subscriber_count``); what subscribers receive is checked byte by
byte with :class:`RawClient`. Two internals are read, never written, where §5 makes a
claim about cost rather than behaviour: ``len(server.pubsub)`` (no per-topic cost
left) and the socket's transport, wrapped to count ``write`` calls (coalescing).
"""

from __future__ import annotations

import asyncio
import resource
import sys
import textwrap
import time
import zlib
from typing import Any

import pytest
import wire
from conftest import count_writes, eventually, running
from rawclient import RawClient

import bunws

TAIL = b"\x00\x00\xff\xff"

# The fan-out rules of docs/bun-behaviour.md §5 are checked with 10 000 subscribers on
# one topic. The subscriber side runs in a child process: both ends in one process
# would need ~20 000 descriptors and the hard RLIMIT_NOFILE here is 20 000.
MANY_SUBSCRIBERS = 10_000
MANY_TOPICS = 1_000
STUCK_LIMIT = 1 << 16


class Hub:
    """Handlers that record sockets (in open order), closes and close-time state."""

    def __init__(self, **options: Any) -> None:
        self.sockets: list[bunws.ServerWebSocket] = []
        self.closes: list[tuple[int, str]] = []
        self.at_close: list[dict[str, Any]] = []
        self.on_open: Any = None
        self.on_message: Any = None
        self.on_close: Any = None
        self.server: bunws.Server | None = None
        self.handler = bunws.WebSocketHandler(
            open=self._open, message=self._message, close=self._close, **options
        )

    def _open(self, ws: bunws.ServerWebSocket) -> None:
        self.sockets.append(ws)
        if self.on_open:
            self.on_open(ws)

    def _message(self, ws: bunws.ServerWebSocket, msg: Any) -> None:
        if self.on_message:
            self.on_message(ws, msg)

    def _close(self, ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
        self.closes.append((code, reason))
        if self.on_close:
            self.on_close(ws, code, reason)


async def connect(server: bunws.Server, hub: Hub, n: int, **kw: Any) -> list[RawClient]:
    """``n`` raw clients, connected one after the other so ``hub.sockets[i]`` is client i."""
    clients = []
    for _ in range(n):
        start = len(hub.sockets)
        clients.append(await RawClient.connect(server.port, **kw))
        await eventually(lambda: len(hub.sockets) == start + 1)
    return clients


async def no_more_data(client: RawClient, server: bunws.Server, topic: str) -> None:
    """Prove nothing else is queued for ``client``: a marker published now arrives next."""
    assert server.publish(topic, "marker", compress=False) == 6
    assert await client.recv_data() == (wire.TEXT, b"marker")


# ---------------------------------------------------------------- sender exclusion
@pytest.mark.parametrize("method", ["publish", "publish_text", "publish_binary"])
@pytest.mark.parametrize("sender_subscribed", [True, False])
async def test_ws_publish_excludes_the_sender(method: str, sender_subscribed: bool) -> None:
    hub = Hub()
    async with running(hub.handler) as server:
        a, b = await connect(server, hub, 2)
        wa, wb = hub.sockets
        wb.subscribe("t")
        if sender_subscribed:
            wa.subscribe("t")
        data: Any = "hi" if method == "publish_text" else b"hi"
        assert getattr(wa, method)("t", data) == 2
        op = wire.TEXT if method == "publish_text" else wire.BINARY
        assert await b.recv_data() == (op, b"hi")
        if sender_subscribed:
            await no_more_data(a, server, "t")  # the sender got only the marker
        a.close()
        b.close()


async def test_only_the_excluded_sender_subscribed_returns_zero() -> None:
    hub = Hub()
    async with running(hub.handler) as server:
        (a,) = await connect(server, hub, 1)
        (wa,) = hub.sockets
        wa.subscribe("t")
        assert wa.publish("t", "x") == 0
        assert wa.publish_text("t", "x") == 0
        assert wa.publish_binary("t", b"x") == 0
        assert wa.publish("nobody", "x") == 0  # no subscribers at all
        assert server.publish("nobody", "x") == 0
        await no_more_data(a, server, "t")
        a.close()


async def test_publish_to_self_delivers_to_the_sender() -> None:
    hub = Hub(publish_to_self=True)
    async with running(hub.handler) as server:
        a, b = await connect(server, hub, 2)
        wa, wb = hub.sockets
        wa.subscribe("t")
        wb.subscribe("t")
        assert wa.publish("t", "one") == 3
        assert wa.publish_binary("t", b"two") == 3
        assert wa.publish_text("t", "three") == 5
        for client in (a, b):
            assert [await client.recv_data() for _ in range(3)] == [
                (wire.TEXT, b"one"),
                (wire.BINARY, b"two"),
                (wire.TEXT, b"three"),
            ]
        # Alone on the topic, the sender is a receiver: the status is the size.
        wb.unsubscribe("t")
        assert wa.publish("t", "solo") == 4
        assert await a.recv_data() == (wire.TEXT, b"solo")
        # An unsubscribed sender still does not receive its own publish.
        wa.unsubscribe("t")
        wb.subscribe("t")
        assert wa.publish("t", "other") == 5
        assert await b.recv_data() == (wire.TEXT, b"other")
        assert wa.subscribe("marker-topic-a")
        await no_more_data(a, server, "marker-topic-a")
        a.close()
        b.close()


async def test_server_publish_reaches_every_subscriber() -> None:
    hub = Hub()
    async with running(hub.handler) as server:
        clients = await connect(server, hub, 4)
        for ws in hub.sockets[:3]:
            assert ws.subscribe("news")
        assert server.subscriber_count("news") == 3
        assert server.publish("news", "extra!") == 6
        for client in clients[:3]:
            assert await client.recv_data() == (wire.TEXT, b"extra!")
        hub.sockets[3].subscribe("other")
        await no_more_data(clients[3], server, "other")
        for client in clients:
            client.close()


# ---------------------------------------------------------------- subscribe rules
async def test_subscribe_unsubscribe_return_values_and_fresh_list() -> None:
    hub = Hub()
    async with running(hub.handler) as server:
        (a,) = await connect(server, hub, 1)
        (ws,) = hub.sockets
        assert ws.subscriptions == []
        assert ws.unsubscribe("a") is False  # never subscribed
        assert ws.subscribe("a") is True
        assert ws.subscribe("a") is True  # already subscribed: still True
        assert server.subscriber_count("a") == 1  # counted once
        assert ws.subscribe("b") is True
        assert ws.subscribe("é/ü") is True  # any non-empty str
        assert ws.is_subscribed("a") and ws.is_subscribed("é/ü")
        assert not ws.is_subscribed("c")

        subs = ws.subscriptions
        assert sorted(subs) == ["a", "b", "é/ü"]  # order unspecified (§5)
        assert isinstance(subs, list)
        subs.append("mutated")
        subs.remove("a")
        assert sorted(ws.subscriptions) == ["a", "b", "é/ü"]  # a fresh list each time
        assert ws.subscriptions is not ws.subscriptions

        assert ws.unsubscribe("a") is True
        assert ws.unsubscribe("a") is False  # no longer subscribed
        assert not ws.is_subscribed("a")
        assert server.subscriber_count("a") == 0
        assert sorted(ws.subscriptions) == ["b", "é/ü"]
        a.close()


async def test_closed_socket_cannot_subscribe() -> None:
    hub = Hub()
    async with running(hub.handler) as server:
        (a,) = await connect(server, hub, 1)
        (ws,) = hub.sockets
        ws.subscribe("a")
        ws.close()
        assert ws.ready_state == 3
        assert ws.subscribe("a") is False
        assert ws.subscribe("new") is False
        assert ws.unsubscribe("a") is False
        assert ws.is_subscribed("a") is False
        assert ws.subscriptions == []
        assert server.subscriber_count("a") == 0
        assert server.subscriber_count("new") == 0
        assert len(server.pubsub) == 0
        a.close()


async def test_topic_argument_errors() -> None:
    hub = Hub()
    async with running(hub.handler) as server:
        (a,) = await connect(server, hub, 1)
        (ws,) = hub.sockets
        A, T = bunws.InvalidArgument, bunws.InvalidType
        empty_calls = [
            lambda: ws.subscribe(""),
            lambda: ws.unsubscribe(""),
            lambda: ws.is_subscribed(""),
            lambda: ws.publish("", "x"),
            lambda: ws.publish_binary("", b"x"),
            lambda: server.publish("", "x"),
        ]
        for call in empty_calls:
            with pytest.raises(A):
                call()
        # Bun quirk: publishText with an empty topic just returns 0.
        assert ws.publish_text("", "x") == 0
        assert server.subscriber_count("") == 0
        assert server.subscriber_count("never-seen") == 0

        for bad in (1, b"t", None, ["t"]):
            for call in (
                lambda: ws.subscribe(bad),
                lambda: ws.unsubscribe(bad),
                lambda: ws.is_subscribed(bad),
                lambda: ws.publish(bad, "x"),
                lambda: ws.publish_text(bad, "x"),
                lambda: ws.publish_binary(bad, b"x"),
                lambda: server.publish(bad, "x"),
                lambda: server.subscriber_count(bad),
            ):
                with pytest.raises(T):
                    call()
        # Wrong data types for the typed variants and for publish.
        ws.subscribe("t")
        with pytest.raises(T):
            ws.publish_text("t", b"bytes")
        with pytest.raises(T):
            ws.publish_binary("t", "str")
        with pytest.raises(T):
            server.publish("t", 123)
        with pytest.raises(T):
            ws.publish("t", "x", compress="yes")
        with pytest.raises(T):
            server.publish("t", "x", compress=1)
        with pytest.raises(T):
            ws.publish_binary("t", b"x", compress=None)
        assert issubclass(A, ValueError) and issubclass(T, TypeError)
        assert ws.ready_state == 1  # errors never close the socket
        a.close()


async def test_topics_are_exact_strings() -> None:
    hub = Hub()
    async with running(hub.handler) as server:
        (a,) = await connect(server, hub, 1)
        (ws,) = hub.sockets
        ws.subscribe("a/b")
        for near in ("a/+", "a/#", "a/*", "a/", "a", "A/B", "a/b ", " a/b", "a/b/c", "*", "#"):
            assert server.publish(near, "no") == 0, near
            assert server.subscriber_count(near) == 0
        assert server.publish("a/b", "yes") == 3
        assert await a.recv_data() == (wire.TEXT, b"yes")
        await no_more_data(a, server, "a/b")
        a.close()


async def test_text_and_binary_kinds_are_preserved() -> None:
    hub = Hub()
    async with running(hub.handler) as server:
        a, b = await connect(server, hub, 2)
        wa, wb = hub.sockets
        wb.subscribe("t")
        sent = [
            (server.publish("t", "tëxt"), (wire.TEXT, "tëxt".encode())),
            (server.publish("t", b"\x00\xff"), (wire.BINARY, b"\x00\xff")),
            (server.publish("t", bytearray(b"ba")), (wire.BINARY, b"ba")),
            (server.publish("t", memoryview(b"xmvx")[1:3]), (wire.BINARY, b"mv")),
            (wa.publish("t", "s"), (wire.TEXT, b"s")),
            (wa.publish("t", b"b"), (wire.BINARY, b"b")),
            (wa.publish_text("t", "pt"), (wire.TEXT, b"pt")),
            (wa.publish_binary("t", bytearray(b"pb")), (wire.BINARY, b"pb")),
            (wa.publish_binary("t", memoryview(b"mv2")), (wire.BINARY, b"mv2")),
        ]
        got = [await b.recv_data() for _ in sent]
        assert got == [frame for _, frame in sent]
        assert [status for status, _ in sent] == [len(frame[1]) for _, frame in sent]
        a.close()
        b.close()


async def test_empty_payload_returns_zero_but_is_delivered() -> None:
    hub = Hub()
    async with running(hub.handler) as server:
        a, b = await connect(server, hub, 2)
        wa, wb = hub.sockets
        wb.subscribe("t")
        assert server.publish("t", "") == 0
        assert server.publish("t", b"") == 0
        assert wa.publish("t", "") == 0
        assert wa.publish_binary("t", b"") == 0
        assert [await b.recv_data() for _ in range(4)] == [
            (wire.TEXT, b""),
            (wire.BINARY, b""),
            (wire.TEXT, b""),
            (wire.BINARY, b""),
        ]
        a.close()
        b.close()


# ---------------------------------------------------------------- return values
async def test_status_minus_one_when_a_receiver_is_buffering() -> None:
    """A subscriber that stops reading: publishes go on returning the size until its
    kernel buffers are full, then -1; a reading subscriber gets every message."""
    hub = Hub(backpressure_limit=0)  # no limit: nothing is ever dropped
    payload = b"\x5a" * (256 * 1024)
    async with running(hub.handler) as server:
        # A small StreamReader limit: the stuck client's reader pauses the transport
        # after 128 KiB, so everything else stays in the kernel and the server.
        (stuck,) = await connect(server, hub, 1, limit=STUCK_LIMIT)
        (reader,) = await connect(server, hub, 1)
        ws_stuck, ws_reader = hub.sockets
        ws_stuck.subscribe("t")
        ws_reader.subscribe("t")

        received = 0

        async def read_all() -> None:
            nonlocal received
            while True:
                opcode, data = await reader.recv_data(timeout=10)
                if data == b"end":
                    return
                if data != b"small":
                    assert data == payload
                    received += 1

        task = asyncio.ensure_future(read_all())
        statuses: list[int] = []
        deadline = time.monotonic() + 10
        # Until the stuck one is buffering (on a loaded machine the reading one may
        # also lag for a moment: that is a -1 too, and publishing goes on).
        while not (statuses and statuses[-1] == -1 and ws_stuck.buffered_amount > 0) and (
            len(statuses) < 400 and time.monotonic() < deadline
        ):
            statuses.append(server.publish("t", payload, compress=False))
            await asyncio.sleep(0.002)  # let the end-of-tick flush reach the kernel
        assert -1 in statuses, f"never -1 after {len(statuses)} publishes"
        first = statuses.index(-1)
        assert first > 0 and set(statuses[:first]) == {len(payload)}
        assert set(statuses[first:]) <= {len(payload), -1}  # never dropped: no limit
        assert ws_stuck.buffered_amount > 0
        # Still buffering: a small publish reports -1 as well.
        statuses.append(server.publish("t", b"small", compress=False))
        assert statuses[-1] == -1
        assert server.publish("t", "end", compress=False) == -1
        await asyncio.wait_for(task, 15)
        assert received == len(statuses) - 1  # every big one (the small one is not payload)
        stuck.abort()
        reader.close()


async def test_status_zero_when_a_receiver_is_over_the_limit() -> None:
    """backpressure_limit 1 MiB: once the stuck subscriber is over it, publishes return
    0 and its copies are dropped, while the other subscriber still gets everything."""
    limit = 1 << 20
    hub = Hub(backpressure_limit=limit)
    payload = b"\x33" * (256 * 1024)
    async with running(hub.handler) as server:
        # A small StreamReader limit: the stuck client's reader pauses the transport
        # after 128 KiB, so everything else stays in the kernel and the server.
        (stuck,) = await connect(server, hub, 1, limit=STUCK_LIMIT)
        (reader,) = await connect(server, hub, 1)
        ws_stuck, ws_reader = hub.sockets
        ws_stuck.subscribe("t")
        ws_reader.subscribe("t")

        reader_count = 0

        async def read_reader() -> None:
            nonlocal reader_count
            while True:
                _, data = await reader.recv_data(timeout=10)
                if data == b"end":
                    return
                assert data == payload
                reader_count += 1

        reader_task = asyncio.ensure_future(read_reader())
        statuses: list[int] = []
        deadline = time.monotonic() + 10
        while 0 not in statuses and len(statuses) < 400 and time.monotonic() < deadline:
            statuses.append(server.publish("t", payload, compress=False))
            await asyncio.sleep(0.002)
        assert 0 in statuses, f"never 0 after {len(statuses)} publishes"
        first_zero = statuses.index(0)
        assert -1 in statuses[:first_zero]  # the send crossing the limit is queued whole
        assert set(statuses[:first_zero]) <= {len(payload), -1}
        assert ws_stuck.buffered_amount > limit
        assert ws_stuck.ready_state == 1  # dropping is not closing
        for _ in range(3):
            statuses.append(server.publish("t", payload, compress=False))
            assert statuses[-1] == 0

        # The stuck one reads again; once drained it gets the end marker.
        stuck_count = 0

        async def read_stuck() -> None:
            nonlocal stuck_count
            while True:
                _, data = await stuck.recv_data(timeout=10)
                if data == b"end":
                    return
                assert data == payload
                stuck_count += 1

        stuck_task = asyncio.ensure_future(read_stuck())
        await eventually(lambda: ws_stuck.buffered_amount == 0, timeout=10)
        assert server.publish("t", "end", compress=False) == 3
        await asyncio.wait_for(asyncio.gather(reader_task, stuck_task), 15)
        assert reader_count == len(statuses)  # the reader lost nothing
        assert stuck_count == len(statuses) - statuses.count(0)  # dropped exactly the 0s
        stuck.close()
        reader.close()


async def test_ws_publish_status_zero_when_receiver_over_limit() -> None:
    """The same rule through ws.publish (the sender's own state does not matter)."""
    hub = Hub(backpressure_limit=64 * 1024)
    async with running(hub.handler) as server:
        (sender,) = await connect(server, hub, 1)
        (stuck,) = await connect(server, hub, 1, limit=STUCK_LIMIT)
        ws_sender, ws_stuck = hub.sockets
        ws_stuck.subscribe("t")
        statuses = []
        deadline = time.monotonic() + 10
        while 0 not in statuses and len(statuses) < 400 and time.monotonic() < deadline:
            statuses.append(ws_sender.publish("t", b"y" * 65536))
            await asyncio.sleep(0.002)
        assert 0 in statuses, statuses
        first_zero = statuses.index(0)
        assert statuses[0] == 65536 and -1 in statuses[:first_zero]
        assert set(statuses[:first_zero]) <= {65536, -1}
        assert ws_sender.buffered_amount == 0  # the sender's own state is irrelevant
        sender.close()
        stuck.abort()


# ---------------------------------------------------------------- compress defaults
async def test_compress_defaults_server_true_ws_false() -> None:
    hub = Hub(per_message_deflate=True)
    text = "compress me " * 20
    async with running(hub.handler) as server:
        a = (await connect(server, hub, 1))[0]
        b = (await connect(server, hub, 1, extensions="permessage-deflate"))[0]
        wa, wb = hub.sockets
        assert wb.extensions and "permessage-deflate" in wb.extensions
        wb.subscribe("t")
        assert server.publish("t", text) == len(text)  # compress=True by default
        assert wa.publish("t", text) == len(text)  # compress=False by default
        assert server.publish("t", text, compress=False) == len(text)
        assert wa.publish("t", text, compress=True) == len(text)
        assert wa.publish_text("t", text, True) == len(text)
        assert wa.publish_binary("t", text.encode(), True) == len(text)
        rsv = []
        for _ in range(6):
            opcode, payload, fin, rsv1 = await b.recv_frame()
            if rsv1:
                payload = zlib.decompressobj(-15).decompress(payload + TAIL)
            assert payload == text.encode()
            rsv.append((opcode, rsv1))
        assert rsv == [(1, True), (1, False), (1, False), (1, True), (1, True), (2, True)]
        a.close()
        b.close()


# ---------------------------------------------------------------- ordering
@pytest.mark.parametrize("where", ["handler", "timer"])
async def test_ordering_of_sends_and_publishes(where: str) -> None:
    """§5: send a; server.publish b; send c; ws.publish d; send e."""
    hub = Hub()
    statuses: list[int] = []

    def sequence(ws: bunws.ServerWebSocket) -> None:
        assert hub.server is not None
        statuses.append(ws.send("a"))
        statuses.append(hub.server.publish("t", "b"))
        statuses.append(ws.send("c"))
        statuses.append(ws.publish("t", "d"))
        statuses.append(ws.send("e"))

    if where == "handler":
        hub.on_message = lambda ws, msg: sequence(ws)
    else:
        hub.on_message = lambda ws, msg: asyncio.get_running_loop().call_later(0.01, sequence, ws)
    async with running(hub.handler) as server:
        hub.server = server
        caller, other = await connect(server, hub, 2)
        for ws in hub.sockets:
            ws.subscribe("t")
        caller.send_text("go")
        got_other = [await other.recv_data() for _ in range(2)]
        got_caller = [await caller.recv_data() for _ in range(4)]
        assert [p for _, p in got_other] == [b"b", b"d"]
        assert [p for _, p in got_caller] == [b"a", b"b", b"c", b"e"]
        await no_more_data(other, server, "t")
        assert await caller.recv_data() == (wire.TEXT, b"marker")  # d never reached the caller
        assert statuses == [1, 1, 1, 1, 1]
        caller.close()
        other.close()


async def test_publish_from_a_closed_socket_reaches_all_subscribers() -> None:
    hub = Hub()
    async with running(hub.handler) as server:
        clients = await connect(server, hub, 3)
        dead, w1, w2 = hub.sockets
        dead.subscribe("t")
        w1.subscribe("t")
        w2.subscribe("t")
        dead.close()
        assert (await clients[0].recv_close())[0] == 1000
        assert server.subscriber_count("t") == 2
        assert dead.publish("t", "ghost") == 5
        assert dead.publish_binary("t", b"gb") == 2
        assert dead.publish_text("t", "gt") == 2
        for client in clients[1:]:
            assert [await client.recv_data() for _ in range(3)] == [
                (wire.TEXT, b"ghost"),
                (wire.BINARY, b"gb"),
                (wire.TEXT, b"gt"),
            ]
        for client in clients:
            client.close()


# ---------------------------------------------------------------- close removes subscriptions
CLOSE_KINDS = [
    "ws.close",
    "terminate",
    "peer close",
    "peer vanishes",
    "protocol error",
    "server.stop",
    "backpressure limit",
]


@pytest.mark.parametrize("kind", CLOSE_KINDS)
async def test_subscriptions_are_gone_before_close_handler(kind: str) -> None:
    options: dict[str, Any] = {}
    if kind == "backpressure limit":
        options = {"backpressure_limit": 64 * 1024, "close_on_backpressure_limit": True}
    hub = Hub(**options)

    def on_close(ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
        assert hub.server is not None
        if kind != "server.stop":
            # Publishing from the closing socket goes the server-wide way (§5).
            hub.at_close.append({"ws": None, "left": ws.publish("b", "left")})
        hub.at_close.append(
            {
                "ws": ws,
                "subscriptions": ws.subscriptions,
                "is_subscribed": ws.is_subscribed("a"),
                "count_a": hub.server.subscriber_count("a"),
                "count_b": hub.server.subscriber_count("b"),
                "subscribe": ws.subscribe("late"),
                "unsubscribe": ws.unsubscribe("a"),
                "count_late": hub.server.subscriber_count("late"),
            }
        )

    def on_message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        if kind == "ws.close":
            ws.close(1000, "bye")
        elif kind == "terminate":
            ws.terminate()

    hub.on_close, hub.on_message = on_close, on_message
    async with running(hub.handler) as server:
        hub.server = server
        (victim,) = await connect(server, hub, 1, limit=STUCK_LIMIT)
        (witness,) = await connect(server, hub, 1)
        wv, ww = hub.sockets
        for topic in ("a", "b"):
            wv.subscribe(topic)
        ww.subscribe("b")
        assert server.subscriber_count("b") == 2
        if kind in ("ws.close", "terminate"):
            victim.send_text("close yourself")
        elif kind == "peer close":
            victim.send_close(1000, "")
        elif kind == "peer vanishes":
            victim.abort()
        elif kind == "protocol error":
            victim.send_raw(wire.client(3, b""))
        elif kind == "backpressure limit":
            # The victim does not read; the topic "a" is only its own.
            statuses = []
            for _ in range(200):
                statuses.append(server.publish("a", b"z" * 65536, compress=False))
                await asyncio.sleep(0.002)
                if hub.at_close:
                    break
            assert 0 in statuses
        else:
            await asyncio.wait_for(server.stop(close_active=True), 10)
        await eventually(lambda: any(s["ws"] is wv for s in hub.at_close))
        first = next(s for s in hub.at_close if s["ws"] is wv)
        assert first["subscriptions"] == []
        assert first["is_subscribed"] is False
        assert first["count_a"] == 0
        assert first["count_b"] in (0, 1)
        assert first["subscribe"] is False
        assert first["unsubscribe"] is False
        assert first["count_late"] == 0
        if kind != "server.stop":
            assert first["count_b"] == 1  # only the witness left
            assert server.subscriber_count("b") == 1
            assert hub.at_close[0]["left"] == 4
            assert await witness.recv_data() == (wire.TEXT, b"left")
            await no_more_data(witness, server, "b")
        else:
            await eventually(lambda: len(hub.at_close) == 2)
            assert all(s["subscriptions"] == [] for s in hub.at_close)
            assert len(server.pubsub) == 0
        victim.abort()
        witness.close()


async def test_subscriber_count_drops_synchronously_on_close() -> None:
    hub = Hub()
    seen: list[int] = []

    def on_message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        assert hub.server is not None
        others = [s for s in hub.sockets if s is not ws]
        seen.append(hub.server.subscriber_count("t"))
        others[0].close()
        seen.append(hub.server.subscriber_count("t"))
        others[1].terminate()
        seen.append(hub.server.subscriber_count("t"))
        ws.close()
        seen.append(hub.server.subscriber_count("t"))

    hub.on_message = on_message
    async with running(hub.handler) as server:
        hub.server = server
        clients = await connect(server, hub, 3)
        for ws in hub.sockets:
            ws.subscribe("t")
        clients[0].send_text("go")
        await eventually(lambda: len(seen) == 4)
        assert seen == [3, 2, 1, 0]
        assert len(server.pubsub) == 0
        for client in clients:
            client.abort()


# ---------------------------------------------------------------- scale
async def test_many_topics_on_one_socket_leave_nothing_behind() -> None:
    hub = Hub()
    topics = [f"topic/{i}" for i in range(MANY_TOPICS)]
    async with running(hub.handler) as server:
        a, b = await connect(server, hub, 2)
        wa, wb = hub.sockets
        assert all(wa.subscribe(t) for t in topics)
        assert len(wa.subscriptions) == MANY_TOPICS
        assert all(server.subscriber_count(t) == 1 for t in topics)
        wb.subscribe(topics[0])
        # Unsubscribing half one by one frees those topics right away.
        assert all(wa.unsubscribe(t) for t in topics[1::2])
        assert all(server.subscriber_count(t) == 0 for t in topics[1::2])
        assert len(server.pubsub) == MANY_TOPICS // 2
        # Each remaining topic still delivers.
        assert server.publish(topics[-2], "last") == 4
        assert await a.recv_data() == (wire.TEXT, b"last")
        wa.close()
        assert all(server.subscriber_count(t) == 0 for t in topics[1:])
        assert server.subscriber_count(topics[0]) == 1  # b is still there
        assert len(server.pubsub) == 1
        wb.unsubscribe(topics[0])
        assert len(server.pubsub) == 0  # no per-topic cost once the last one left
        a.close()
        b.close()


async def test_burst_of_publishes_coalesces_into_one_write_per_receiver() -> None:
    hub = Hub()
    hub.on_open = lambda ws: ws.subscribe("t")
    writes: list[list[bytes]] = []
    async with running(hub.handler) as server:
        clients = await connect(server, hub, 3)
        writes = [count_writes(ws) for ws in hub.sockets]
        # Outside any handler: 200 publishes in one tick.
        for i in range(200):
            assert server.publish("t", f"m{i}", compress=False) == len(f"m{i}")
        for client in clients:
            got = [await client.recv_data() for _ in range(200)]
            assert [p for _, p in got] == [f"m{i}".encode() for i in range(200)]
        expected = b"".join(wire.server(wire.TEXT, f"m{i}") for i in range(200))
        for w in writes:
            assert len(w) == 1 and w[0] == expected

        # Inside a handler: the publisher's burst of ws.publish also coalesces.
        for w in writes:
            w.clear()

        def burst(ws: bunws.ServerWebSocket, msg: Any) -> None:
            for i in range(100):
                ws.publish("t", b"%d" % i)

        hub.on_message = burst
        clients[0].send_text("go")
        for client in clients[1:]:
            got = [await client.recv_data() for _ in range(100)]
            assert [p for _, p in got] == [b"%d" % i for i in range(100)]
        assert [len(w) for w in writes] == [0, 1, 1]
        for client in clients:
            client.close()


_SUBSCRIBERS = textwrap.dedent(
    r"""
    import base64, os, socket, sys, time
    port, n, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    req = (
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode() + "\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    socks = []
    t0 = time.monotonic()
    for start in range(0, n, batch):
        group = []
        for _ in range(min(batch, n - start)):
            s = socket.create_connection(("127.0.0.1", port), timeout=20)
            s.sendall(req)
            group.append(s)
        for s in group:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    raise SystemExit("eof during handshake")
                head += chunk
            if not head.startswith(b"HTTP/1.1 101"):
                raise SystemExit("bad handshake " + repr(head[:40]))
            if not head.endswith(b"\r\n\r\n"):
                raise SystemExit("data with the 101")
        socks.extend(group)
    print("ready", time.monotonic() - t0, flush=True)
    sys.stdin.readline()
    expected = bytes.fromhex(sys.argv[4])
    ok = 0
    for s in socks:
        got = b""
        while len(got) < len(expected):
            chunk = s.recv(len(expected) - len(got))
            if not chunk:
                break
            got += chunk
        ok += got == expected
    print("ok", ok, flush=True)
    sys.stdin.readline()
    """
)


@pytest.mark.timeout(120)
async def test_ten_thousand_subscribers_on_one_topic() -> None:
    hub = Hub(idle_timeout=0)
    hub.on_open = lambda ws: ws.subscribe("all")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MANY_SUBSCRIBERS + 1000
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    message = "to everyone"
    frame = wire.server(wire.TEXT, message)
    async with running(hub.handler, backlog=4096) as server:
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SUBSCRIBERS, str(server.port), str(MANY_SUBSCRIBERS), "200",
            frame.hex(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line.startswith(b"ready"), line
            await eventually(lambda: server.subscriber_count("all") == MANY_SUBSCRIBERS, timeout=20)
            connected = time.monotonic() - t0
            t1 = time.perf_counter()
            assert server.publish("all", message) == len(message)
            publish_call = time.perf_counter() - t1
            proc.stdin.write(b"read\n")
            await asyncio.wait_for(proc.stdin.drain(), 10)
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line.split() == [b"ok", str(MANY_SUBSCRIBERS).encode()], line
            delivered = time.perf_counter() - t1
            print(
                f"\n{MANY_SUBSCRIBERS} subscribers: connect {connected:.2f}s, "
                f"publish() {publish_call * 1e3:.1f} ms, all delivered {delivered:.2f}s"
            )
            # Everyone leaves: the registry forgets the topic.
            proc.stdin.write(b"bye\n")
            await asyncio.wait_for(proc.stdin.drain(), 10)
            await asyncio.wait_for(proc.wait(), 30)
            await eventually(lambda: server.subscriber_count("all") == 0, timeout=30)
            assert len(server.pubsub) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 10)
