"""RedisBackplane against a real redis-server: nodes in separate processes.

The session fixture finds ``redis-server`` or installs Debian's package, then runs a
private instance (no persistence) on a free loopback port. Nodes are
``tests/backplane_node.py`` subprocesses; the reconnect and untrusted-input tests
run servers in this process so they can watch the backplane directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

import bunws
from bunws.backplane import decode_envelope, encode_envelope
from redis_server import RedisServer, find_or_install, free_port, version
from supervised import http_get

import redis.asyncio
from websockets.asyncio.client import ClientConnection, connect

HERE = os.path.dirname(os.path.abspath(__file__))
NODE = os.path.join(HERE, "backplane_node.py")

# Subprocess nodes make the loop under test irrelevant: stock asyncio only.
ASYNCIO_ONLY = pytest.mark.asyncio(loop_factories=["asyncio"])


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def redis_path() -> str:
    path, why = find_or_install()
    if path is None:
        pytest.skip(f"redis-server unavailable: {why}")
    return path


@pytest.fixture(scope="session")
def redis_server(redis_path: str) -> Any:
    server = RedisServer(redis_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


@contextlib.asynccontextmanager
async def node(redis_url: str, prefix: str, **env: str) -> AsyncIterator[int]:
    """A backplane node subprocess; yields its port; SIGTERM afterwards."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        NODE,
        env=dict(os.environ, REDIS_URL=redis_url, PREFIX=prefix, **env),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line, "node exited before listening"
        yield json.loads(line)["port"]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def client(port: int, *topics: str) -> ClientConnection:
    """A client on a node, subscribed to ``topics``; waits until Redis confirmed them."""
    ws = await asyncio.wait_for(connect(f"ws://127.0.0.1:{port}/ws?sub={','.join(topics)}"), 5)
    hello = await asyncio.wait_for(ws.recv(), 5)
    assert hello.startswith("hello ")
    for topic in topics:
        await until_confirmed(port, topic)
    return ws


async def until_confirmed(port: int, topic: str, want: bool = True) -> None:
    async with asyncio.timeout(5):
        while (await http_get(port, f"/confirmed?topic={topic}")) != ("1" if want else "0"):
            await asyncio.sleep(0.01)


async def recv(ws: ClientConnection, timeout: float = 5) -> Any:
    return await asyncio.wait_for(ws.recv(), timeout)


async def eventually(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def redis_client(port: int) -> redis.asyncio.Redis:
    """A plain Redis client: what another program (or an attacker) on the same Redis uses."""
    return redis.asyncio.Redis(host="127.0.0.1", port=port, socket_timeout=5)


class RedisRelay:
    """A TCP relay in front of Redis that a test can cut and restore.

    To a backplane connected through it, a cut is Redis going away (connections
    reset, new ones refused) and a restore is Redis coming back, while a client
    connected to Redis directly stays subscribed and sees what gets through.
    """

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()

    async def __aenter__(self) -> RedisRelay:
        await self.restore()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self.cut()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        server, self._server = self._server, None
        assert server is not None
        server.close()
        for transport in self._transports:
            transport.abort()
        self._transports.clear()
        await asyncio.wait_for(server.wait_closed(), 5)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        except OSError:
            writer.transport.abort()
            return
        self._transports.update((writer.transport, up_writer.transport))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


# ---------------------------------------------------------------------- wire format
def test_envelope_round_trips_and_rejects_foreign_messages() -> None:
    node_id = b"\x01\x02\x03"
    for opcode in (1, 2):
        for compress in (False, True):
            for payload in (b"", b"x", bytes(range(256)) * 3):
                data = encode_envelope(node_id, opcode, payload, compress)
                assert len(data) == 3 + len(node_id) + len(payload)
                assert decode_envelope(data) == (node_id, opcode, payload, compress)
    assert decode_envelope(b"hello") is None
    assert decode_envelope(b"") is None
    assert decode_envelope(bytes((0xB5, 9, 1, 7))) is None  # bad opcode
    assert decode_envelope(bytes((0xB5, 1, 5, 7))) is None  # truncated node id
    assert decode_envelope(bytes((0xB5, 0x41, 1, 7))) is None  # unknown flag bit
    assert decode_envelope(bytes((0xB5, 1, 0, 7))) is None  # empty node id


def test_rejects_bad_options() -> None:
    with pytest.raises(ValueError):
        bunws.RedisBackplane(node_id=b"")
    with pytest.raises(ValueError):
        bunws.RedisBackplane(backoff_max=0)
    with pytest.raises(TypeError):
        bunws.RedisBackplane(channel_prefix=b"x")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- across processes
@ASYNCIO_ONLY
async def test_publishes_cross_in_both_directions_excluding_the_sender(redis_server: Any, prefix: str) -> None:
    async with node(redis_server.url, prefix) as pa, node(redis_server.url, prefix) as pb:
        a1 = await client(pa, "t")
        b1 = await client(pb, "t")
        b2 = await client(pb, "t")
        await until_confirmed(pa, "t")

        await a1.send("P t hi")  # text, A -> B
        assert await recv(b1) == "hi"
        assert await recv(b2) == "hi"

        await b1.send(b"t\x00\x00\xffbin")  # binary, B -> A (and B's other subscriber)
        assert await recv(a1) == b"\x00\xffbin"
        assert await recv(b2) == b"\x00\xffbin"

        # Redis orders one channel totally: had a node delivered its own message
        # again (or a sender received its own), it would arrive before this marker.
        await b2.send("P t end")
        assert await recv(a1) == "end"
        assert await recv(b1) == "end"

        # server.publish (no sender to exclude) reaches everyone, text preserved.
        await b2.send("X t all")
        for ws in (a1, b1, b2):
            assert await recv(ws) == "all"
        for ws in (a1, b1, b2):
            await ws.close()


@ASYNCIO_ONLY
async def test_publish_to_self_holds_across_nodes(redis_server: Any, prefix: str) -> None:
    async with node(redis_server.url, prefix, PUBLISH_TO_SELF="1") as pa, node(
        redis_server.url, prefix, PUBLISH_TO_SELF="1"
    ) as pb:
        a1 = await client(pa, "t")
        b1 = await client(pb, "t")
        await a1.send("P t mine")
        assert await recv(a1) == "mine"  # delivered locally, once
        assert await recv(b1) == "mine"
        await b1.send("P t next")
        assert await recv(b1) == "next"
        assert await recv(a1) == "next"  # no second "mine" came back through Redis
        await a1.close()
        await b1.close()


@ASYNCIO_ONLY
async def test_keeps_the_order_of_each_publisher(redis_server: Any, prefix: str) -> None:
    n = 300
    async with node(redis_server.url, prefix) as pa, node(redis_server.url, prefix) as pb:
        a1 = await client(pa, "t")
        b1 = await client(pb, "t")
        b2 = await client(pb)  # a publisher only
        await until_confirmed(pa, "t")

        async def blast(ws: ClientConnection, tag: str) -> None:
            for i in range(n):
                await ws.send(f"P t {tag}{i}")

        await asyncio.gather(blast(a1, "a"), blast(b2, "b"))
        got: dict[str, list[int]] = {"a": [], "b": []}
        async with asyncio.timeout(15):
            while len(got["a"]) < n or len(got["b"]) < n:
                msg = await b1.recv()
                got[msg[0]].append(int(msg[1:]))
        assert got["a"] == list(range(n))  # remote publisher, via Redis
        assert got["b"] == list(range(n))  # local publisher
        seen = []
        async with asyncio.timeout(15):
            while len(seen) < n:
                msg = await a1.recv()
                assert msg[0] == "b", "a1 must not get its own messages"
                seen.append(int(msg[1:]))
        assert seen == list(range(n))
        for ws in (a1, b1, b2):
            await ws.close()


@ASYNCIO_ONLY
async def test_redis_subscriptions_follow_first_and_last_local_subscriber(
    redis_server: Any, prefix: str
) -> None:
    async with node(redis_server.url, prefix) as pa:
        channel = prefix + "x"
        assert redis_server.numsub(channel) == 0
        c1 = await client(pa, "x")
        assert redis_server.numsub(channel) == 1
        c2 = await client(pa, "x")
        assert redis_server.numsub(channel) == 1  # one Redis subscription per node
        await c1.send("U x")
        await asyncio.sleep(0.1)
        assert redis_server.numsub(channel) == 1  # c2 still subscribed
        await c1.send("S y")
        await until_confirmed(pa, "y")
        assert redis_server.numsub(prefix + "y") == 1
        await c2.close()
        await eventually(lambda: redis_server.numsub(channel) == 0)
        await c1.close()
        await eventually(lambda: redis_server.numsub(prefix + "y") == 0)


@ASYNCIO_ONLY
async def test_sharded_pubsub(redis_path: str, redis_server: Any, prefix: str) -> None:
    if version(redis_path) < (7,):
        pytest.skip("sharded pub/sub needs redis-server >= 7")
    async with node(redis_server.url, prefix, SHARDED="1") as pa, node(
        redis_server.url, prefix, SHARDED="1"
    ) as pb:
        a1 = await client(pa, "s")
        b1 = await client(pb, "s")
        await until_confirmed(pa, "s")
        assert redis_server.numsub(prefix + "s", sharded=True) == 2
        assert redis_server.numsub(prefix + "s") == 0  # not classic channels
        await a1.send("P s over-shards")
        assert await recv(b1) == "over-shards"
        await b1.send(b"s\x00\x01\x02")
        assert await recv(a1) == b"\x01\x02"
        await a1.close()
        await b1.close()
        await eventually(lambda: redis_server.numsub(prefix + "s", sharded=True) == 0)


# ---------------------------------------------------------------------- Redis going away
def upgrade_all(req: bunws.Request, server: bunws.Server) -> Any:
    if server.upgrade(req):
        return None
    return bunws.Response("no", status=400)


@ASYNCIO_ONLY
async def test_survives_a_redis_restart_and_reports_the_gap(redis_path: str, prefix: str) -> None:
    redis = RedisServer(redis_path)
    redis.start()
    gaps: dict[str, list[float]] = {"a": [], "b": []}
    handler = bunws.WebSocketHandler(open=lambda ws: ws.subscribe("t"))
    servers = []
    try:
        for name in ("a", "b"):
            bp = bunws.RedisBackplane(
                redis.url, channel_prefix=prefix, on_gap=gaps[name].append, backoff_max=0.2
            )
            servers.append(await bunws.serve(upgrade_all, handler, port=0, backplane=bp))
        a, b = servers
        ws = await asyncio.wait_for(connect(f"ws://127.0.0.1:{b.port}/"), 5)
        assert await b.backplane.wait_subscribed("t")

        sent = 0
        stop = asyncio.Event()

        async def publisher() -> None:
            nonlocal sent
            while not stop.is_set():
                a.publish("t", str(sent))
                sent += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(publisher())
        received: list[int] = []

        async def take(count: int) -> None:
            async with asyncio.timeout(10):
                for _ in range(count):
                    received.append(int(await ws.recv()))

        await take(20)
        redis.kill()
        await eventually(lambda: not a.backplane.connected and not b.backplane.connected)
        await asyncio.sleep(0.4)
        # Both servers keep serving locally while Redis is down.
        local = await asyncio.wait_for(connect(f"ws://127.0.0.1:{a.port}/"), 5)
        a.publish("t", "local")
        # The publisher task keeps publishing to "t" on A, so its numbers may reach
        # the new subscriber first.
        got = await recv(local)
        while got != "local":
            assert got.isdigit(), got
            got = await recv(local)
        await local.close()
        restart_at = sent
        redis.start()
        await eventually(lambda: gaps["a"] and gaps["b"], timeout=10)
        async with asyncio.timeout(10):
            while not received or received[-1] < restart_at + 20:
                msg = await ws.recv()
                if msg != "local":  # queued by A while Redis was away, maybe delivered
                    received.append(int(msg))
        stop.set()
        await task
        assert received == sorted(set(received)), "no duplicates, publisher order kept"
        assert len(gaps["a"]) == 1 and len(gaps["b"]) == 1
        assert gaps["b"][0] >= 0.3  # the ~0.4 s Redis was away
        assert b.backplane.stats["gaps"] == 1
        await ws.close()
    finally:
        for s in servers:
            await asyncio.wait_for(s.stop(True), 10)
        redis.stop()


@ASYNCIO_ONLY
async def test_starts_while_redis_is_down_and_connects_later(redis_path: str, prefix: str) -> None:
    port = free_port()
    bp = bunws.RedisBackplane(
        f"redis://127.0.0.1:{port}/0", channel_prefix=prefix, connect_timeout=0.3, backoff_max=0.1
    )
    server = await bunws.serve(upgrade_all, bunws.WebSocketHandler(open=lambda ws: ws.subscribe("t")), port=0, backplane=bp)
    redis = RedisServer(redis_path, port=port)
    try:
        assert not bp.connected
        ws = await asyncio.wait_for(connect(f"ws://127.0.0.1:{server.port}/"), 5)
        server.publish("t", "local only")
        assert await recv(ws) == "local only"
        redis.start()
        assert await bp.wait_connected(5)
        assert await bp.wait_subscribed("t")
        assert redis.numsub(prefix + "t") == 1
        await ws.close()
    finally:
        await asyncio.wait_for(server.stop(True), 10)
        redis.stop()


# ---------------------------------------------------------------------- untrusted input
INTRUDER = b"intruder"  # a node id no bunws process in these tests uses


def hostile_envelopes() -> list[bytes]:
    """What a broken or hostile publisher can put on a bunws channel."""
    n = bytes((len(INTRUDER),))
    return [
        encode_envelope(INTRUDER, 1, b"\xff\xfe not UTF-8", False),
        encode_envelope(INTRUDER, 1, b"\xed\xa0\x80", False),  # a UTF-16 surrogate
        encode_envelope(INTRUDER, 1, b"\xc0\xaf", False),  # overlong "/"
        encode_envelope(INTRUDER, 1, b"cut \xe2\x82", False),  # truncated sequence
        encode_envelope(INTRUDER, 1, b"\xf4\x90\x80\x80", True),  # above U+10FFFF
        b"\xb5\x08" + n + INTRUDER + b"\x03\xe8",  # opcode 8 (close)
        b"\xb5\x09" + n + INTRUDER + b"ping",  # opcode 9 (ping)
        b"\xb5\x00" + n + INTRUDER + b"cont",  # opcode 0 (continuation)
        b"\xb5\x03" + n + INTRUDER + b"rsv",  # a reserved opcode
        b"\xb5\x41" + n + INTRUDER + b"flag",  # a flag bit this version does not know
        b"\xb5\x01\x00" + b"x",  # empty node id
        b"\xb5\x01\xc8" + b"short",  # node id cut off
        b"\xb5\x01",  # header cut off
        b"",
        b"plain text from another program",
    ]


async def test_drops_invalid_envelopes_from_redis_and_keeps_subscribers_open(
    redis_server: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bunws.backplane")
    bp = bunws.RedisBackplane(redis_server.url, channel_prefix=prefix)
    handler = bunws.WebSocketHandler(open=lambda ws: ws.subscribe("t"))
    server = await bunws.serve(upgrade_all, handler, port=0, backplane=bp)
    try:
        ws = await asyncio.wait_for(connect(f"ws://127.0.0.1:{server.port}/"), 5)
        assert await bp.wait_subscribed("t")
        hostile = hostile_envelopes()
        rounds = 40
        r = redis_client(redis_server.port)
        try:
            for _ in range(rounds):
                for data in hostile:
                    await r.publish(prefix + "t", data)
            # Valid messages after them: a binary payload may hold any bytes.
            await r.publish(prefix + "t", encode_envelope(INTRUDER, 2, b"\xff\x00", False))
            await r.publish(prefix + "t", encode_envelope(INTRUDER, 1, "apr\u00e8s".encode(), False))
        finally:
            await r.aclose()
        # Redis keeps one channel's order, so anything relayed would arrive first
        # (and invalid UTF-8 in a text frame would make the client fail with 1007).
        assert await recv(ws) == b"\xff\x00"
        assert await recv(ws) == "apr\u00e8s"
        assert bp.stats["invalid"] + bp.stats["foreign"] == rounds * len(hostile)
        assert bp.stats["delivered"] == 2
        assert bp.connected
        await asyncio.wait_for(await ws.ping(), 5)  # the client's connection is still open

        # One line for the flood (the rest are counted), naming the channel and why.
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "bunws.backplane"]
        assert 1 <= len(lines) <= 2, lines
        assert "UTF-8" in lines[0] and prefix + "t" in lines[0], lines[0]
        await ws.close()
    finally:
        await asyncio.wait_for(server.stop(True), 10)


# ---------------------------------------------------------------------- bounded queues
@ASYNCIO_ONLY
async def test_subscription_churn_while_redis_is_down_keeps_one_state_per_topic(
    redis_path: str, prefix: str
) -> None:
    redis = RedisServer(redis_path)
    redis.start()
    opened: list[bunws.ServerWebSocket] = []
    bp = bunws.RedisBackplane(redis.url, channel_prefix=prefix, backoff_max=0.2)
    server = await bunws.serve(upgrade_all, bunws.WebSocketHandler(open=opened.append), port=0, backplane=bp)
    churned = ["c0", "c1", "c2", "c3"]
    topics = {"keep", "gone", *churned}

    def churn(names: list[str], pairs: int) -> None:
        for i in range(pairs):
            topic = names[i % len(names)]
            sws.subscribe(topic)
            sws.unsubscribe(topic)
            if i % 1000 == 0:
                assert bp.pending_control <= len(topics)

    try:
        ws = await asyncio.wait_for(connect(f"ws://127.0.0.1:{server.port}/"), 5)
        await eventually(lambda: opened)
        sws = opened[0]
        sws.subscribe("keep")
        sws.subscribe("gone")
        assert await bp.wait_subscribed("keep") and await bp.wait_subscribed("gone")

        redis.kill()
        await eventually(lambda: not bp.connected)
        churn(churned, 50_000)  # 100 000 first-subscriber / last-subscriber events
        sws.subscribe("c0")
        sws.subscribe("c2")
        sws.unsubscribe("gone")
        assert bp.pending_control <= len(topics)
        assert bp.channels == {"keep", "c0", "c2"}

        redis.start()
        assert await bp.wait_connected(10)
        for topic in ("keep", "c0", "c2"):
            assert await bp.wait_subscribed(topic)
            assert redis.numsub(prefix + topic) == 1
        for topic in ("gone", "c1", "c3"):
            assert redis.numsub(prefix + topic) == 0
        r = redis_client(redis.port)
        try:
            await r.publish(prefix + "c2", encode_envelope(INTRUDER, 1, b"back", False))
            assert await recv(ws) == "back"  # delivery resumed

            # The same churn within one tick while connected is coalesced too.
            churn(["c1", "c3"], 50_000)
            sws.unsubscribe("keep")
            sws.subscribe("marker")
            assert bp.pending_control <= len(topics) + 1
            # Redis answers one connection's commands in order: once "marker" is
            # confirmed, everything before it has been applied.
            assert await bp.wait_subscribed("marker")
            assert bp.confirmed_channels == {"c0", "c2", "marker"}
            for topic in ("keep", "c1", "c3"):
                assert redis.numsub(prefix + topic) == 0
            await r.publish(prefix + "c0", encode_envelope(INTRUDER, 2, b"still", False))
            assert await recv(ws) == b"still"
        finally:
            await r.aclose()
        await ws.close()
    finally:
        await asyncio.wait_for(server.stop(True), 10)
        redis.stop()


@ASYNCIO_ONLY
async def test_outbox_is_bounded_in_bytes_while_redis_is_down(redis_server: Any, prefix: str) -> None:
    # Redis stays up behind a relay, so a watcher subscribed directly sees exactly
    # what the backplane sends once the relay is restored (no reconnect race).
    n, size = 2000, 60_000
    async with RedisRelay(redis_server.port) as relay:
        bp = bunws.RedisBackplane(relay.url, channel_prefix=prefix, backoff_max=0.2)
        server = await bunws.serve(upgrade_all, bunws.WebSocketHandler(), port=0, backplane=bp)
        r = redis_client(redis_server.port)
        watcher = r.pubsub()
        try:
            await watcher.subscribe(prefix + "t")
            assert await bp.wait_connected(5)
            await relay.cut()
            await eventually(lambda: not bp.connected)

            bound = bp.max_pending_bytes
            assert 1 << 20 <= bound <= 16 << 20  # a few MiB by default
            for i in range(n):
                server.publish("t", i.to_bytes(4, "big") + bytes(size - 4))
                assert bp.pending_bytes <= bound
            assert bound - size - 100 < bp.pending_bytes  # full: no needless drops
            server.publish("t", bytes(bound + 1))  # can never fit: dropped alone
            assert bp.stats["dropped"] > 0
            assert bound - size - 100 < bp.pending_bytes <= bound
            server.publish("t", b"last")
            dropped = bp.stats["dropped"]

            await relay.restore()
            assert await bp.wait_connected(10)
            got: list[bytes] = []
            async with asyncio.timeout(10):
                while not got or got[-1] != b"last":
                    msg = await watcher.get_message(ignore_subscribe_messages=True, timeout=1)
                    if msg is not None:
                        env = decode_envelope(msg["data"])
                        assert env is not None and env[0] == bp.node_id
                        got.append(env[2])
            # The newest publishes were kept, in order; the oldest were dropped.
            indices = [int.from_bytes(p[:4], "big") for p in got[:-1]]
            assert indices == list(range(n - len(indices), n))
            assert all(len(p) == size for p in got[:-1])
            assert len(indices) + 1 == n + 2 - dropped  # every publish is sent or counted
            assert bp.pending_bytes == 0

            server.publish("t", b"fresh")
            async with asyncio.timeout(5):
                while (msg := await watcher.get_message(ignore_subscribe_messages=True, timeout=1)) is None:
                    pass
            assert decode_envelope(msg["data"])[2] == b"fresh"  # type: ignore[index]
        finally:
            await asyncio.wait_for(server.stop(True), 10)
            await watcher.aclose()
            await r.aclose()
