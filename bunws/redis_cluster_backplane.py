"""``RedisBackplane(..., cluster=True)``: the backplane as a Redis Cluster client.

Classic pub/sub (``sharded=False``): a cluster copies every ``PUBLISH`` to all its
nodes, so one node serves the whole app; when it fails the next known node is
used (seeds first, then every node the last topology named).

Sharded pub/sub (``sharded=True``): the backplane reads the slot map
(``CLUSTER SHARDS``, or ``CLUSTER SLOTS`` before Redis 7), hashes each channel to
its slot (CRC16, hash tags), keeps one subscriber connection per node that owns
wanted channels (``SSUBSCRIBE`` batched per slot) and sends each ``SPUBLISH`` to
the master of its slot. A ``MOVED``/``ASK`` answer, a ``sunsubscribe`` the server
pushed (the slot moved away), a failed node or a failover ends the *session*: the
topology is read again, every wanted channel is subscribed again, and the
downtime is reported through ``on_gap`` like a reconnection to a single Redis.
Publishes a redirection refused are queued again ahead of newer ones, so each
publisher's order per topic holds; the queue keeps the bounds of
``max_pending``/``max_pending_bytes`` while the cluster is (partly) down.

Why not redis-py's own asyncio ``ClusterPubSub`` (8.x): it reconnects and
resubscribes behind the caller's back (no gap to report), polls node by node for
messages, and moves a shard subscription only when a *command* meets ``MOVED``, so
a ``sunsubscribe`` pushed after a slot migration leaves the channel silently
unsubscribed (redis-py 8.1.0 against Redis 7.0: after ``CLUSTER SETSLOT ... NODE``
the new owner counted 0 subscribers and no message arrived). Routing here, on
redis-py's connection API, keeps every event visible and reported.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from typing import Any
from urllib.parse import urlparse

from .backplane import RedisBackplane
from .redis_cluster import Address, Topology, key_slot, parse_redirect, parse_shards, parse_slots

__all__ = ["RedisClusterBackplane"]

logger = logging.getLogger("bunws.backplane")

# Channel -> slot cache for publishes; cleared when full so arbitrary topics
# cannot grow it (CRC16 in Python costs a few microseconds per channel).
_SLOT_CACHE_SIZE = 4096


class _SessionEnded(Exception):
    """The cluster session must be rebuilt from a fresh topology."""


def _redirect_text(exc: BaseException) -> str:
    """The full error line of a redis-py ``ResponseError`` (it strips the code)."""
    code = getattr(exc, "status_code", None)
    text = str(exc.args[0]) if exc.args else ""
    return f"{code} {text}" if code else text


class RedisClusterBackplane(RedisBackplane):
    """A :class:`RedisBackplane` that follows a Redis Cluster's slot map.

    Made by ``RedisBackplane(url_or_urls, cluster=True, ...)``; it takes the same
    arguments. ``url`` is one seed URL or a list of them (``redis://`` or
    ``rediss://``, one host each; credentials and TLS of the first apply to every
    node). ``urls`` keeps the seeds; ``url`` names the node in use for classic
    pub/sub (the first seed for sharded). ``topology`` is the slot map of the
    current session, ``None`` before the first one.
    """

    def __init__(self, url: Any = "redis://127.0.0.1:6379/0", *args: Any, **kwargs: Any) -> None:
        urls = [url] if isinstance(url, str) else list(url) if isinstance(url, (list, tuple)) else None
        if not urls or not all(isinstance(u, str) for u in urls):
            raise TypeError("url must be a str or a non-empty list of str")
        seeds: list[Address] = []
        for u in urls:
            parsed = urlparse(u)
            if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
                raise ValueError(f"a cluster seed must be a redis:// or rediss:// URL with a host, got {u!r}")
            seeds.append((parsed.hostname, parsed.port or 6379))
        kwargs.pop("cluster", None)
        self.read_from_replicas = bool(kwargs.get("read_from_replicas", False))
        super().__init__(urls[0], *args, cluster=True, **kwargs)
        if self.read_from_replicas and not self.sharded:
            raise ValueError("read_from_replicas needs sharded=True (classic pub/sub reaches every node)")
        from redis.asyncio.connection import parse_url

        options = dict(parse_url(urls[0]))
        for name in ("host", "port", "db", "path"):
            options.pop(name, None)
        from redis.asyncio.connection import Connection

        self._connection_class = options.pop("connection_class", Connection)
        self._connection_options = options
        self.urls = urls
        self._seeds = seeds
        self._known: list[Address] = list(seeds)
        self._next_node = 0
        self.topology: Topology | None = None
        self._slot_cache: dict[bytes, int] = {}
        # per session (sharded): connections by node, where each channel is
        # subscribed, and the sunsubscribe replies we asked for
        self._subs: dict[Address, Any] = {}
        self._pubs: dict[Address, Any] = {}
        self._sub_node: dict[bytes, Address] = {}
        self._asked_unsub: collections.Counter[bytes] = collections.Counter()
        self._last_rx_at: dict[Address, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._failure: asyncio.Future[None] | None = None
        self._connecting: dict[Address, asyncio.Lock] = {}

    # ------------------------------------------------------------------ connections
    def _connection(self, address: Address) -> Any:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        host, port = address
        # One attempt per call and RESP2, for the reasons RedisBackplane gives.
        return self._connection_class(
            host=host,
            port=port,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            protocol=2,
            **self._connection_options,
        )

    def _make_connections(self) -> tuple[Any, Any]:
        # Classic pub/sub: any node will do; try the known ones in turn.
        address = self._known[self._next_node % len(self._known)]
        self._next_node += 1
        self.url = f"redis://{address[0]}:{address[1]}"
        return self._connection(address), self._connection(address)

    async def _connect(self, address: Address) -> Any:
        conn = self._connection(address)
        try:
            await asyncio.wait_for(conn.connect(), self.connect_timeout + 1)
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        return conn

    # ------------------------------------------------------------------ topology
    async def _discover(self) -> Topology:
        """The slot map as the first node that answers reports it."""
        errors = []
        for address in list(dict.fromkeys(self._known + self._seeds)):
            try:
                conn = await self._connect(address)
            except Exception as exc:
                errors.append(f"{address[0]}:{address[1]}: {exc!r}")
                continue
            try:
                return await self._read_topology(conn, address)
            except Exception as exc:
                errors.append(f"{address[0]}:{address[1]}: {exc!r}")
            finally:
                await conn.disconnect(nowait=True)
        raise _SessionEnded("no cluster node answered: " + "; ".join(errors)[:500])

    async def _read_topology(self, conn: Any, address: Address) -> Topology:
        """Ask the node at ``address`` for the slot map; remember every node it names."""
        from redis.exceptions import ResponseError

        self.stats["refreshes"] += 1
        try:
            topology = parse_shards(await self._ask(conn, "CLUSTER", "SHARDS"), address[0])
        except ResponseError as exc:
            if "unknown" not in str(exc).lower():
                raise
            topology = parse_slots(await self._ask(conn, "CLUSTER", "SLOTS"), address[0])
        if not topology.shards:
            raise _SessionEnded("the cluster has no slots assigned")
        # Ask the node that answered first next time, then the rest.
        self._known = list(dict.fromkeys([address, *topology.addresses, *self._seeds]))
        self._next_node = 1
        self.topology = topology
        return topology

    async def _resubscribe(self, sub: Any) -> None:
        # Classic pub/sub: learn the other nodes first, to fail over to any of them.
        host, port = sub.host, sub.port
        try:
            await self._read_topology(sub, (host, port))
        except Exception as exc:
            logger.debug("bunws backplane: no topology from %s:%s: %r", host, port, exc)
        await super()._resubscribe(sub)

    async def _ask(self, conn: Any, *command: str) -> Any:
        await conn.send_command(*command, check_health=False)
        return await asyncio.wait_for(conn.read_response(), self.connect_timeout + 1)

    def _slot(self, channel: bytes) -> int:
        cache = self._slot_cache
        slot = cache.get(channel)
        if slot is None:
            if len(cache) >= _SLOT_CACHE_SIZE:
                cache.clear()
            slot = cache[channel] = key_slot(channel)
        return slot

    def _owner(self, channel: bytes, for_subscribe: bool) -> Address:
        assert self.topology is not None
        slot = self._slot(channel)
        shard = self.topology.shard_of(slot)
        if shard is None:
            raise _SessionEnded(f"slot {slot} is not served by any node")
        if for_subscribe and self.read_from_replicas and shard.replicas:
            # Spread the processes of a fleet over the replicas of a shard.
            return shard.replicas[self.node_id[0] % len(shard.replicas)]
        return shard.master

    # ------------------------------------------------------------------ session (sharded)
    async def _run(self) -> None:
        """Read the topology, serve one session until it fails, back off, again."""
        if not self.sharded:
            await super()._run()
            return
        backoff = self.backoff_initial
        if self._down_since is None:
            self._down_since = time.monotonic()
        first = True
        while not self._closing:
            try:
                await self._open_session(await self._discover())
                self._mark_connected(first)
                first = False
                backoff = self.backoff_initial
                assert self._failure is not None
                await self._failure
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._mark_down(exc, quiet=first and backoff < self.backoff_max)
            finally:
                await self._close_session()
            if self._closing:
                break
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, self.backoff_max)

    async def _open_session(self, topology: Topology) -> None:
        """Subscribe every wanted channel on its owner, batched per slot."""
        assert self._control_event is not None
        loop = asyncio.get_running_loop()
        self._failure = loop.create_future()
        self._dirty.clear()
        self._control_event.clear()
        self._confirmed.clear()
        channels = list(self._wanted)
        self._sent = set(channels)
        by_node: dict[Address, dict[int, list[bytes]]] = {}
        for channel in channels:
            owner = self._owner(channel, for_subscribe=True)
            self._sub_node[channel] = owner
            by_node.setdefault(owner, {}).setdefault(self._slot(channel), []).append(channel)
        for owner, by_slot in by_node.items():
            conn = await self._subscriber(owner)
            commands = [
                (self._cmd_sub, *chans[i : i + 512]) for chans in by_slot.values() for i in range(0, len(chans), 512)
            ]
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        self._spawn(self._cluster_controller())
        self._spawn(self._cluster_publisher())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        failure = self._failure
        if failure is None or failure.done() or task.cancelled():
            return
        failure.set_exception(task.exception() or _SessionEnded("a session task ended"))

    async def _subscriber(self, address: Address) -> Any:
        """The subscriber connection to ``address``, opened (and read) on first use."""
        conn = self._subs.get(address)
        if conn is None:
            lock = self._connecting.setdefault(address, asyncio.Lock())
            async with lock:
                conn = self._subs.get(address)
                if conn is None:
                    conn = await self._connect(address)
                    if self.read_from_replicas:
                        # A replica serves a client that said READONLY, not only its master.
                        try:
                            await self._ask(conn, "READONLY")
                        except BaseException:
                            await conn.disconnect(nowait=True)
                            raise
                    self._subs[address] = conn
                    self._conns = (*self._subs.values(), *self._pubs.values())
                    self._last_rx_at[address] = asyncio.get_running_loop().time()
                    self._spawn(self._cluster_reader(address, conn))
        return conn

    async def _publisher_to(self, address: Address) -> Any:
        conn = self._pubs.get(address)
        if conn is None:
            conn = self._pubs[address] = await self._connect(address)
            self._conns = (*self._subs.values(), *self._pubs.values())
        return conn

    async def _close_session(self) -> None:
        tasks, self._tasks = self._tasks, []
        conns = (*self._subs.values(), *self._pubs.values())
        self._subs.clear()
        self._pubs.clear()
        self._sub_node.clear()
        self._asked_unsub.clear()
        self._last_rx_at.clear()
        self._connecting.clear()
        failure, self._failure = self._failure, None
        if failure is not None and not failure.done():
            failure.cancel()
        elif failure is not None and not failure.cancelled():
            failure.exception()  # retrieved here: _mark_down reported it
        await self._end_session(tasks, conns)  # type: ignore[arg-type]

    async def _cluster_reader(self, address: Address, conn: Any) -> None:
        from redis.exceptions import ResponseError

        stats = self.stats
        confirmed = self._confirmed
        asked = self._asked_unsub
        on_message = self._on_message
        loop = asyncio.get_running_loop()
        while True:
            try:
                reply = await conn.read_response(disconnect_on_error=True)
            except ResponseError as exc:
                text = _redirect_text(exc)
                if parse_redirect(text) is not None:
                    stats["redirects"] += 1
                raise _SessionEnded(f"{address[0]}:{address[1]} refused a subscription: {text[:200]}") from None
            self._last_rx_at[address] = loop.time()
            if type(reply) is not list or len(reply) < 3:
                continue  # PING answers
            kind = reply[0]
            if kind == b"smessage":
                stats["received"] += 1
                on_message(reply[1], reply[2])
            elif kind == b"ssubscribe":
                confirmed.add(reply[1])
            elif kind == b"sunsubscribe":
                channel = reply[1]
                confirmed.discard(channel)
                if asked[channel] > 0:
                    asked[channel] -= 1
                    if not asked[channel]:
                        del asked[channel]
                else:
                    # Not asked for: the node lost the channel's slot (migrated).
                    stats["redirects"] += 1
                    raise _SessionEnded(f"{address[0]}:{address[1]} dropped {channel!r}: its slot moved")

    async def _cluster_controller(self) -> None:
        """Send (un)subscriptions to the nodes that own them; PING idle nodes."""
        event = self._control_event
        assert event is not None
        loop = asyncio.get_running_loop()
        interval = self.health_check_interval
        while True:
            ping = False
            try:
                await asyncio.wait_for(event.wait(), interval)
            except asyncio.TimeoutError:
                now = loop.time()
                for address, last in self._last_rx_at.items():
                    if now - last > 3 * interval:
                        raise _SessionEnded(f"no reply from {address[0]}:{address[1]} in {3 * interval:.0f} s") from None
                ping = True
            event.clear()
            batches: dict[Address, dict[tuple[str, int], list[bytes]]] = {}
            for command, channel in self._control_commands():
                if command == self._cmd_sub:
                    owner = self._sub_node[channel] = self._owner(channel, for_subscribe=True)
                else:
                    gone = self._sub_node.pop(channel, None)
                    if gone is None:
                        continue
                    owner = gone
                    self._asked_unsub[channel] += 1
                batches.setdefault(owner, {}).setdefault((command, self._slot(channel)), []).append(channel)
            if ping:
                for address in self._subs:
                    batches.setdefault(address, {})
            for address, groups in batches.items():
                commands: list[tuple[Any, ...]] = [(cmd, *chans) for (cmd, _), chans in groups.items()]
                if ping:
                    commands.append(("PING",))
                conn = await self._subscriber(address)
                if not conn.is_connected:
                    raise _SessionEnded(f"subscriber connection to {address[0]}:{address[1]} closed")
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    async def _cluster_publisher(self) -> None:
        """SPUBLISH each queued message to its slot's master, one pipeline per node."""
        from redis.exceptions import ResponseError

        event = self._outbox_event
        assert event is not None
        outbox = self._outbox
        stats = self.stats
        timeout = max(self.connect_timeout, 1.0)
        while True:
            if not outbox:
                event.clear()
                await event.wait()
            batch = []
            while outbox and len(batch) < 1024:
                batch.append(outbox.popleft())
            self._outbox_bytes -= sum(len(c) + len(d) for c, d in batch)
            try:
                by_node: dict[Address, list[tuple[bytes, bytes]]] = {}
                for item in batch:
                    by_node.setdefault(self._owner(item[0], for_subscribe=False), []).append(item)
            except _SessionEnded:
                self._requeue(batch)
                raise
            refused: list[tuple[bytes, bytes]] = []
            sent: list[tuple[Any, list[tuple[bytes, bytes]]]] = []
            unsent = list(by_node.items())
            try:
                while unsent:
                    address, items = unsent[0]
                    conn = await self._publisher_to(address)
                    await conn.send_packed_command(
                        conn.pack_commands([("SPUBLISH", c, d) for c, d in items]), check_health=False
                    )
                    sent.append((conn, items))
                    unsent.pop(0)
            except Exception:
                # Written but unanswered publishes may have gone out: not resent
                # (at-most-once); the ones never written wait for the next session.
                self._requeue([item for _, items in unsent for item in items])
                raise

            async def answers() -> None:
                for conn, items in sent:
                    for item in items:
                        try:
                            await conn.read_response(disconnect_on_error=True)
                            stats["published"] += 1
                        except ResponseError as exc:
                            text = _redirect_text(exc)
                            if parse_redirect(text) is None:
                                raise _SessionEnded(f"SPUBLISH refused: {text[:200]}") from None
                            refused.append(item)

            try:
                await asyncio.wait_for(answers(), timeout)
            except asyncio.TimeoutError:
                raise _SessionEnded(f"no answer to SPUBLISH in {timeout:.0f} s") from None
            if refused:
                # The slot moved: send these again, ahead of newer publishes,
                # once the next session knows the new owner.
                stats["redirects"] += len(refused)
                self._requeue(refused)
                raise _SessionEnded(f"{len(refused)} SPUBLISH redirected: the slot map changed")

    def _requeue(self, items: list[tuple[bytes, bytes]]) -> None:
        """Put ``items`` back at the head of the queue, keeping its bounds."""
        outbox = self._outbox
        outbox.extendleft(reversed(items))
        self._outbox_bytes += sum(len(c) + len(d) for c, d in items)
        dropped = 0
        while outbox and (len(outbox) > self.max_pending or self._outbox_bytes > self.max_pending_bytes):
            channel, data = outbox.popleft()
            self._outbox_bytes -= len(channel) + len(data)
            dropped += 1
        if dropped:
            self._overflowed(dropped, "the queue of publishes for Redis is full, the oldest were dropped")

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        nodes = ",".join(f"{h}:{p}" for h, p in self._seeds)
        kind = "sharded" if self.sharded else "classic"
        return f"<RedisClusterBackplane {kind} seeds={nodes} {state} channels={len(self._wanted)}>"
