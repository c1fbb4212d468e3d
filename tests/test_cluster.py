"""RedisBackplane(cluster=True) against a real Redis Cluster on loopback.

One cluster (3 masters, 1 replica each, ``cluster-node-timeout`` 1000 ms) is started
for the module by ``tests/redis_server.py``. Two bunws servers run in this process,
each seeded with a different cluster node, so every delivery crosses from one
backplane to the other through the cluster. The failover test runs last: it
kills a master (the cluster promotes its replica) and restarts it as a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

import bunws
from bunws.redis_cluster import (
    ClusterReplyError,
    crc16,
    key_slot,
    parse_redirect,
    parse_shards,
    parse_slots,
)
from bunws.redis_cluster_backplane import RedisClusterBackplane
from redis_server import RedisCluster, find_or_install, version

from websockets.asyncio.client import ClientConnection, connect

ASYNCIO_ONLY = pytest.mark.asyncio(loop_factories=["asyncio"])


# ---------------------------------------------------------------------- pure functions
def test_crc16_known_vectors() -> None:
    assert crc16(b"123456789") == 0x31C3  # the XMODEM check value
    assert crc16(b"") == 0
    assert key_slot(b"foo") == 12182
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers") == key_slot(b"user1000")
    assert key_slot(b"foo{}{bar}") == key_slot(b"foo{}{bar}")  # empty tag: the whole key
    assert key_slot(b"foo{}{bar}") != key_slot(b"bar")
    assert key_slot(b"foo{{bar}}zap") == key_slot(b"{bar")
    assert key_slot(b"foo{bar}{zap}") == key_slot(b"bar")


def test_parse_redirect() -> None:
    moved = parse_redirect("MOVED 3999 127.0.0.1:6381")
    assert moved is not None and (moved.kind, moved.slot, moved.host, moved.port) == ("MOVED", 3999, "127.0.0.1", 6381)
    ask = parse_redirect(b"ASK 16383 [::1]:7000")
    assert ask is not None and (ask.kind, ask.slot, ask.host, ask.port) == ("ASK", 16383, "::1", 7000)
    assert parse_redirect("ERR unknown command") is None
    assert parse_redirect("") is None
    for bad in ("MOVED", "MOVED 1", "MOVED x 1.2.3.4:5", "MOVED 16384 h:1", "ASK 1 host", "ASK 1 h:0", "MOVED 1 h:99999", "MOVED 1 h:1 extra"):
        with pytest.raises(ClusterReplyError):
            parse_redirect(bad)


def test_parse_topology_rejects_malformed_replies() -> None:
    good = [[b"slots", [0, 16383], b"nodes", [[b"id", b"x", b"port", 7000, b"ip", b"10.0.0.1", b"endpoint", b"",
                                                 b"role", b"master", b"health", b"online"],
                                                [b"id", b"y", b"port", 7001, b"ip", b"10.0.0.2", b"endpoint", b"10.0.0.2",
                                                 b"role", b"replica", b"health", b"loading"],
                                                [b"id", b"z", b"port", 7002, b"ip", b"10.0.0.3", b"endpoint", b"10.0.0.3",
                                                 b"role", b"replica", b"health", b"fail"]]]]
    topology = parse_shards(good, "seed")
    assert topology.masters == [("seed", 7000)]  # "" endpoint: where we reached the node
    assert topology.shard_of(123).replicas == [("10.0.0.2", 7001)]  # a failed replica is not used
    slots = parse_slots([[0, 99, [b"h", 7000, b"id"], [b"r", 7001, b"id2"]], [100, 16383, [b"h", 7000, b"id"]]], "seed")
    assert len(slots.shards) == 1 and slots.shards[0].ranges == [(0, 99), (100, 16383)]
    assert slots.shard_of(5).replicas == [("r", 7001)]
    for bad in (b"x", [b"x"], [[b"slots", [5, 1], b"nodes", []]], [[b"slots", [0, 1], b"nodes", [[b"port", b"nan"]]]],
                [[b"slots", [0], b"nodes", []]], [[b"slots", [0, 1, 2]]]):
        with pytest.raises(ClusterReplyError):
            parse_shards(bad, "seed")
    for bad in (b"x", [[0]], [[0, 99999, [b"h", 1]]], [[0, 1, [b"h"]]], [[0, 1, [b"h", 0]]]):
        with pytest.raises(ClusterReplyError):
            parse_slots(bad, "seed")


def test_rejects_bad_cluster_options() -> None:
    with pytest.raises(TypeError):
        bunws.RedisBackplane(["redis://127.0.0.1:1"])  # a list needs cluster=True
    with pytest.raises(TypeError):
        bunws.RedisBackplane([], cluster=True)
    with pytest.raises(ValueError):
        bunws.RedisBackplane("unix:///tmp/redis.sock", cluster=True)
    with pytest.raises(ValueError):
        bunws.RedisBackplane("redis://h:1", read_from_replicas=True)
    with pytest.raises(ValueError):
        bunws.RedisBackplane("redis://h:1", cluster=True, read_from_replicas=True)  # needs sharded
    bp = bunws.RedisBackplane(["redis://a:1", "redis://b:2"], cluster=True, sharded=True)
    assert isinstance(bp, RedisClusterBackplane) and isinstance(bp, bunws.RedisBackplane)
    assert "a:1,b:2" in repr(bp)


# ---------------------------------------------------------------------- the cluster
@pytest.fixture(scope="module")
def cluster() -> Any:
    path, why = find_or_install()
    if path is None:
        pytest.skip(f"redis-server unavailable: {why}")
    if version(path) < (7,):
        pytest.skip("sharded pub/sub needs Redis 7")
    c = RedisCluster(path)
    try:
        c.start()
    except Exception:
        c.stop()
        raise
    yield c
    c.stop()


def test_key_slot_agrees_with_the_server(cluster: RedisCluster) -> None:
    keys = [b"", b"a", b"{", b"}", b"{}", b"{a", b"a}", b"{a}", b"x{a}y", b"{}{a}", b"{{a}}", b"a{b}{c}",
            "caf\u00e9".encode(), bytes(range(256))] + [f"bunws:topic-{i}".encode() for i in range(100)]
    port = cluster.nodes[0].port
    for key in keys:
        assert key_slot(key) == cluster.call(port, "CLUSTER", "KEYSLOT", key), key


def topics_over_all_shards(cluster: RedisCluster, prefix: str, count: int = 64) -> list[str]:
    topics = [f"topic-{i}" for i in range(count)]
    owners = {cluster.master_of_slot(key_slot((prefix + t).encode())) for t in topics}
    assert len(owners) == cluster.masters  # the topics really are spread over every shard
    return topics


def upgrade_with_topics(req: bunws.Request, server: bunws.Server) -> Any:
    if server.upgrade(req, data=[t for t in req.query.get("sub", "").split(",") if t]):
        return None
    return bunws.Response("no", status=400)


def subscribe_all(ws: bunws.ServerWebSocket) -> None:
    for topic in ws.data:
        ws.subscribe(topic)


@contextlib.asynccontextmanager
async def two_nodes(cluster: RedisCluster, seeds: tuple[int, int], **options: Any) -> AsyncIterator[tuple[Any, Any, dict[str, list[float]]]]:
    """Two servers, each with a cluster backplane seeded by a different node."""
    gaps: dict[str, list[float]] = {"a": [], "b": []}
    servers = []
    handler = bunws.WebSocketHandler(open=subscribe_all)
    try:
        for name, seed in zip("ab", seeds):
            bp = bunws.RedisBackplane(
                cluster.node(seed).url, cluster=True, on_gap=gaps[name].append,
                backoff_initial=0.02, backoff_max=0.2, connect_timeout=1.0, **options,
            )
            servers.append(await bunws.serve(upgrade_with_topics, handler, hostname="127.0.0.1", port=0, backplane=bp))
        yield servers[0], servers[1], gaps
    finally:
        for s in servers:
            await asyncio.wait_for(s.stop(True), 10)


async def subscriber(server: Any, topics: list[str]) -> ClientConnection:
    ws = await asyncio.wait_for(connect(f"ws://127.0.0.1:{server.port}/?sub={','.join(topics)}", max_size=None), 5)
    for topic in topics:
        assert await server.backplane.wait_subscribed(topic), topic
    return ws


async def receive_set(ws: ClientConnection, count: int, timeout: float = 5.0) -> set[str]:
    got: set[str] = set()
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.add(await ws.recv())
    return got


@ASYNCIO_ONLY
@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "classic"])
async def test_64_topics_delivered_both_ways(cluster: RedisCluster, sharded: bool) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    topics = topics_over_all_shards(cluster, prefix)
    seeds = (cluster.shards()[0]["master"], cluster.shards()[1]["replicas"][0])  # a master and a replica
    async with two_nodes(cluster, seeds, sharded=sharded, channel_prefix=prefix) as (a, b, gaps):  # type: ignore[arg-type]
        ws_a = await subscriber(a, topics)
        ws_b = await subscriber(b, topics)
        for topic in topics:
            a.publish(topic, f"a {topic}")
            b.publish(topic, f"b {topic}")
        # Each side gets its own publish locally and the other side's through the cluster.
        want = {f"{n} {t}" for n in "ab" for t in topics}
        assert await receive_set(ws_a, len(want)) == want
        assert await receive_set(ws_b, len(want)) == want
        for server in (a, b):
            assert server.backplane.stats["delivered"] == len(topics)
            assert server.backplane.stats["own"] == len(topics)  # its own publishes come back once
            assert server.backplane.stats["invalid"] == server.backplane.stats["foreign"] == 0
        if sharded:
            # Each channel is subscribed on its own shard's master, and only there.
            for topic in topics[:8]:
                channel = prefix + topic
                owner = cluster.master_of_slot(key_slot(channel.encode()))
                for port in cluster.live_ports():
                    n = cluster.call(port, "PUBSUB", "SHARDNUMSUB", channel)[1]
                    assert n == (2 if port == owner else 0), (topic, port)
            assert a.backplane.topology is not None and len(a.backplane.topology.shards) == 3
        assert gaps == {"a": [], "b": []}
        await ws_a.close()
        await ws_b.close()


@ASYNCIO_ONLY
async def test_subscriptions_follow_local_sockets(cluster: RedisCluster) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    topics = topics_over_all_shards(cluster, prefix, 16)
    seeds = (cluster.live_ports()[0], cluster.live_ports()[1])
    async with two_nodes(cluster, seeds, sharded=True, channel_prefix=prefix) as (a, b, _):
        ws = await subscriber(b, topics)
        await ws.close()
        async with asyncio.timeout(5):
            while b.backplane.confirmed_channels:
                await asyncio.sleep(0.01)
        for topic in topics:
            channel = prefix + topic
            owner = cluster.master_of_slot(key_slot(channel.encode()))
            assert cluster.call(owner, "PUBSUB", "SHARDNUMSUB", channel)[1] == 0
        ws = await subscriber(b, topics[:1])  # subscribed again: no spurious session restart
        a.publish(topics[0], "again")
        assert await asyncio.wait_for(ws.recv(), 5) == "again"
        assert b.backplane.stats["gaps"] == 0 and b.backplane.stats["redirects"] == 0
        await ws.close()


@ASYNCIO_ONLY
async def test_read_from_replicas(cluster: RedisCluster) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    topics = topics_over_all_shards(cluster, prefix, 32)
    seeds = (cluster.live_ports()[0], cluster.live_ports()[1])
    async with two_nodes(cluster, seeds, sharded=True, channel_prefix=prefix, read_from_replicas=True) as (a, b, _):
        ws = await subscriber(b, topics)
        for topic in topics:
            a.publish(topic, topic)
        assert await receive_set(ws, len(topics)) == set(topics)
        for topic in topics[:6]:
            channel = prefix + topic
            shard = next(s for s in cluster.shards() if s["master"] == cluster.master_of_slot(key_slot(channel.encode())))
            assert cluster.call(shard["replicas"][0], "PUBSUB", "SHARDNUMSUB", channel)[1] == 1
            assert cluster.call(shard["master"], "PUBSUB", "SHARDNUMSUB", channel)[1] == 0
        await ws.close()


@ASYNCIO_ONLY
async def test_a_subprocess_node_seeded_with_a_list(cluster: RedisCluster) -> None:
    """A ``bunws.run`` process (tests/backplane_node.py) seeded with two other nodes."""
    from supervised import http_get
    from test_backplane import node

    prefix = f"t{uuid.uuid4().hex[:6]}:"
    topics = topics_over_all_shards(cluster, prefix, 16)
    seeds = ",".join(cluster.node(p).url for p in cluster.live_ports()[2:])
    async with two_nodes(cluster, (cluster.live_ports()[0], cluster.live_ports()[1]), sharded=True,
                         channel_prefix=prefix) as (a, _, _gaps):
        async with node(seeds, prefix, CLUSTER="1", SHARDED="1") as port:
            ws = await asyncio.wait_for(connect(f"ws://127.0.0.1:{port}/ws?sub={','.join(topics)}"), 5)
            assert (await asyncio.wait_for(ws.recv(), 5)).startswith("hello ")
            async with asyncio.timeout(5):
                for topic in topics:
                    while await http_get(port, f"/confirmed?topic={topic}") != "1":
                        await asyncio.sleep(0.01)
            for topic in topics:
                a.publish(topic, topic)
            assert await receive_set(ws, len(topics)) == set(topics)
            back = await subscriber(a, [topics[0]])  # and from the subprocess to A
            await ws.send(f"P {topics[0]} back")
            assert await asyncio.wait_for(back.recv(), 5) == "back"
            await ws.close()
            await back.close()


class SteadyPublisher:
    """Publishes ``0, 1, 2, ...`` on one topic from one server every 2 ms."""

    def __init__(self, server: Any, topic: str) -> None:
        self.server, self.topic, self.sent = server, topic, 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.server.publish(self.topic, str(self.sent))
            self.sent += 1
            await asyncio.sleep(0.002)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def take_until(ws: ClientConnection, received: list[int], predicate: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            received.append(int(await ws.recv()))


def assert_in_order(received: list[int]) -> None:
    assert received == sorted(set(received)), "duplicated or reordered messages"


@ASYNCIO_ONLY
async def test_slot_migration_during_publishing(cluster: RedisCluster) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    topic = "moving"
    slot = key_slot((prefix + topic).encode())
    source = cluster.master_of_slot(slot)
    target = next(s["master"] for s in cluster.shards() if s["master"] != source)
    seeds = (cluster.live_ports()[0], cluster.live_ports()[-1])
    async with two_nodes(cluster, seeds, sharded=True, channel_prefix=prefix) as (a, b, gaps):
        ws = await subscriber(b, [topic])
        publisher = SteadyPublisher(a, topic)
        received: list[int] = []
        try:
            await take_until(ws, received, lambda: len(received) >= 20, 5)
            started = time.monotonic()
            await asyncio.to_thread(cluster.move_slot, slot, target)
            moved_at = publisher.sent
            # Delivery resumes: messages published after the move arrive.
            await take_until(ws, received, lambda: received[-1] > moved_at + 20, 10)
            resumed = time.monotonic() - started
        finally:
            await publisher.stop()
        assert cluster.master_of_slot(slot) == target
        assert cluster.call(target, "PUBSUB", "SHARDNUMSUB", prefix + topic)[1] == 1
        assert_in_order(received)
        # The subscriber's node saw its subscription dropped and reported the gap.
        assert len(gaps["b"]) >= 1 and all(0 < g < resumed + 1 for g in gaps["b"])
        assert b.backplane.stats["redirects"] >= 1 and b.backplane.stats["refreshes"] >= 2
        window = moved_at + 21  # messages 0..moved_at+20
        lost = window - len([n for n in received if n < window])
        print(f"migration: delivery resumed {resumed * 1000:.0f} ms after the move began; "
              f"gaps reported {[round(g * 1000) for g in gaps['b']]} ms; lost {lost} of {window}")
        await ws.close()


@ASYNCIO_ONLY
@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "classic"])
async def test_master_killed_and_replica_promoted(cluster: RedisCluster, sharded: bool) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    topic = "survivor"
    slot = key_slot((prefix + topic).encode())
    victim = cluster.master_of_slot(slot)
    replica = next(s["replicas"][0] for s in cluster.shards() if s["master"] == victim)
    others = [p for p in cluster.live_ports() if p not in (victim, replica)]
    # Classic: A talks to the victim itself (its one node dies); sharded: the
    # victim owns the topic's slot, whoever the seeds are.
    seeds = (victim, others[0]) if not sharded else (others[0], others[1])
    # A small queue: while A cannot reach the topic's shard, its publishes beyond
    # 100 are dropped (oldest first) instead of piling up.
    async with two_nodes(cluster, seeds, sharded=sharded, channel_prefix=prefix, max_pending=100) as (a, b, gaps):
        ws = await subscriber(b, [topic])
        publisher = SteadyPublisher(a, topic)
        received: list[int] = []
        try:
            await take_until(ws, received, lambda: len(received) >= 20, 5)
            started = time.monotonic()
            cluster.node(victim).kill()
            killed_at = publisher.sent
            await take_until(ws, received, lambda: received[-1] > killed_at + 20, 15)
            resumed = time.monotonic() - started
        finally:
            await publisher.stop()
        assert_in_order(received)
        reporter = "b" if sharded else "a"
        assert len(gaps[reporter]) >= 1 and all(0 < g < resumed + 1 for g in gaps[reporter])
        # Local subscribers were served throughout: A still delivers at once.
        local = await subscriber(a, ["local"])
        a.publish("local", "here")
        assert await asyncio.wait_for(local.recv(), 2) == "here"
        await local.close()
        if sharded:
            assert cluster.master_of_slot(slot, others[0]) == replica
            # A was cut off from the topic's shard for the whole failover.
            assert a.backplane.stats["dropped"] > 0 and len(gaps["a"]) >= 1
        print(f"failover ({'sharded' if sharded else 'classic'}): delivery resumed {resumed * 1000:.0f} ms after the kill; "
              f"gaps reported {[round(g * 1000) for g in gaps[reporter]]} ms")
        await ws.close()
    # The old master comes back as a replica of the promoted one.
    node = cluster.node(victim)
    await asyncio.to_thread(node.start)
    await asyncio.to_thread(cluster.wait_healthy, 20)
