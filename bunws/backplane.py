"""Cross-process pub/sub: the ``Backplane`` protocol and ``RedisBackplane``.

A backplane carries every ``publish`` to the other processes (workers, hosts) that
serve the same app, and hands their publishes to the local frame-once fan-out.
The server calls it synchronously from the publish path, so nothing here blocks:
publishes and (un)subscriptions are queued and sent by asyncio tasks.

Delivery guarantee (the same as Redis pub/sub's): **at-most-once**. A message
published while a node is disconnected from Redis is lost for that node; messages
from one publisher (one process) on one topic arrive in the order they were
published. Local subscribers get a message at once, before it goes to Redis, and
a node never delivers its own message twice (every message carries the sender's
node id). ``server.subscriber_count`` counts this process's sockets only.

Wire format of a Redis message (binary safe; the channel is
``channel_prefix + topic``)::

    byte 0      0xB5 (format marker)
    byte 1      flags: bits 0-3 opcode (1 text, 2 binary), bit 4 compress
    byte 2      n = length of the node id (1..255)
    n bytes     node id of the publishing process
    rest        the payload (UTF-8 for text), unchanged

Whatever arrives from Redis is checked as strictly as a client's frames: anything
else that reaches a bunws channel (another program's message, an envelope that is
cut off, has an unknown opcode or flag, or a text payload that is not UTF-8) is
dropped, counted in ``stats`` and logged at most once per 10 s, never relayed.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import os
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._frame import Opcode, validate_utf8

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Backplane", "RedisBackplane", "encode_envelope", "decode_envelope"]

logger = logging.getLogger("bunws.backplane")

MAGIC = 0xB5
_COMPRESS_FLAG = 0x10
_OPCODE_MASK = 0x0F
_KNOWN_FLAGS = _OPCODE_MASK | _COMPRESS_FLAG

# Why a message from Redis was dropped when it is not a bunws envelope at all.
_FOREIGN = "not a bunws envelope"

# Dropped-message warnings: at most one per interval, so a hostile or broken
# publisher cannot flood the log (stats count every one).
_LOG_INTERVAL = 10.0


def encode_envelope(node_id: bytes, opcode: int, payload: bytes, compress: bool) -> bytes:
    """The Redis message for one publish (see the module docstring)."""
    flags = opcode | (_COMPRESS_FLAG if compress else 0)
    return bytes((MAGIC, flags, len(node_id))) + node_id + payload


def decode_envelope(data: bytes) -> tuple[bytes, int, bytes, bool] | None:
    """``(node_id, opcode, payload, compress)``, or ``None`` for a foreign or malformed
    message. The payload is returned as is: a text payload's UTF-8 is not checked."""
    env = _parse_envelope(data)
    return None if type(env) is str else env  # type: ignore[return-value]


def _parse_envelope(data: object) -> tuple[bytes, int, bytes, bool] | str:
    """The envelope's fields, or why ``data`` is not a well-formed envelope."""
    if type(data) is not bytes or not data or data[0] != MAGIC:
        return _FOREIGN
    if len(data) < 3:
        return "envelope header cut off"
    flags = data[1]
    if flags & ~_KNOWN_FLAGS:
        # A newer format's flag could change what the payload means: not ours to relay.
        return f"unknown flag bits 0x{flags & ~_KNOWN_FLAGS:02x}"
    opcode = flags & _OPCODE_MASK
    if opcode not in (Opcode.TEXT, Opcode.BINARY):
        return f"opcode {opcode} is neither text (1) nor binary (2)"
    n = data[2]
    if n == 0:
        return "empty node id"
    if len(data) < 3 + n:
        return "node id cut off"
    return data[3 : 3 + n], opcode, data[3 + n :], bool(flags & _COMPRESS_FLAG)


class _LimitedLog:
    """Warnings of one kind, at most one per ``_LOG_INTERVAL`` seconds; the next
    line that gets through says how many were held back."""

    __slots__ = ("_next", "_held")

    def __init__(self) -> None:
        self._next = 0.0
        self._held = 0

    def warning(self, msg: str, *args: Any, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        if self._held:
            msg += " (%d more like this since the previous report)"
            args += (self._held,)
        self._held = 0
        self._next = now + _LOG_INTERVAL
        logger.warning(msg, *args, exc_info=exc_info)


class Backplane:
    """What a server expects of a backplane (subclass it or duck-type it).

    Every method except ``start``/``close`` is called synchronously from the
    server's publish and subscribe paths and must not block.
    """

    async def start(self, server: Server) -> None:
        """Called once by ``serve(backplane=...)`` / ``server.attach_backplane``."""

    def publish(self, topic: str, opcode: int, payload: bytes, compress: bool) -> None:
        """A local publish (``opcode`` 1 text / 2 binary); forward it to the other nodes."""

    def subscribe(self, topic: str) -> None:
        """``topic`` gained its first local subscriber."""

    def unsubscribe(self, topic: str) -> None:
        """``topic`` lost its last local subscriber."""

    async def close(self) -> None:
        """Called by ``server.stop()``."""


class _Down(Exception):
    """The Redis session ended (connection lost, timeout, protocol error)."""


class RedisBackplane(Backplane):
    """Redis pub/sub backplane on the ``redis`` package's asyncio client.

    Args:
        url: a ``redis://``, ``rediss://`` or ``unix://`` URL.
        channel_prefix: Redis channel of topic ``t`` is ``channel_prefix + t``; give
            each app its own prefix when apps share a Redis.
        sharded: use Redis 7 sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``), which
            keeps a message on the shard that owns its channel instead of
            broadcasting it to every cluster node. Without ``cluster`` the URL
            names the one node to talk to.
        cluster: the URL (or a list of seed URLs) names nodes of a Redis Cluster;
            the backplane then follows the cluster's slot map (see
            ``RedisClusterBackplane``).
        read_from_replicas: with ``cluster`` and ``sharded``, subscribe on a
            replica of each shard instead of its master.
        node_id: this process's id in the wire format (≤255 bytes). By default a
            random id is drawn in :meth:`start`, so forked workers differ. Give one
            only if it is unique per process.
        on_gap: called (sync or async) as ``on_gap(downtime_seconds)`` after the
            connection to Redis came back, because messages of that period were
            lost; a warning is logged as well. Use it to resynchronise clients.
        max_pending: publishes kept while Redis is unreachable (or slower than
            the publishers); beyond it the oldest are dropped.
        max_pending_bytes: the same bound in bytes (channel + envelope of each
            queued publish), 4 MiB by default. A publish larger than this on its
            own is dropped; otherwise the oldest queued ones make room. Drops of
            either bound are counted in ``stats["dropped"]``.
        backoff_initial: the first reconnect delay (it doubles, with jitter).
        backoff_max: the longest reconnect delay.
        health_check_interval: seconds between PINGs on the subscriber
            connection; a connection silent for 3 intervals is considered dead.
        connect_timeout: TCP connect timeout, and how long :meth:`start` waits for
            the first connection (it then keeps trying in the background).

    ``stats`` counts ``published`` (sent to Redis), ``received`` (messages from
    Redis), ``delivered`` (handed to local subscribers), ``own`` (this process's
    messages coming back), ``dropped`` (publishes over ``max_pending`` /
    ``max_pending_bytes``), ``gaps`` (reconnections), ``foreign`` (messages on a
    bunws channel that are not envelopes), ``invalid`` (malformed envelopes and
    text payloads that are not UTF-8), and for a cluster ``redirects`` (``MOVED``/
    ``ASK`` answers and subscriptions the server dropped because a slot moved) and
    ``refreshes`` (topology reads).

    Raises:
        ImportError: the ``redis`` package is missing (``pip install bunws[redis]``).
    """

    def __new__(cls, *args: Any, cluster: bool = False, **kwargs: Any) -> RedisBackplane:
        if cluster and cls is RedisBackplane:
            from .redis_cluster_backplane import RedisClusterBackplane

            return super().__new__(RedisClusterBackplane)
        return super().__new__(cls)

    def __init__(
        self,
        url: str | list[str] = "redis://127.0.0.1:6379/0",
        channel_prefix: str = "bunws:",
        sharded: bool = False,
        node_id: str | bytes | None = None,
        on_gap: Callable[[float], Any] | None = None,
        *,
        cluster: bool = False,
        read_from_replicas: bool = False,
        max_pending: int = 10_000,
        max_pending_bytes: int = 4 * 1024 * 1024,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        health_check_interval: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as exc:  # pragma: no cover - redis is a test dependency
            raise ImportError("RedisBackplane needs the redis package: pip install 'bunws[redis]'") from exc
        if not isinstance(url, str):
            raise TypeError("url must be a str (a list of seed URLs needs cluster=True)")
        if read_from_replicas and not cluster:
            raise ValueError("read_from_replicas needs cluster=True")
        if not isinstance(channel_prefix, str):
            raise TypeError("channel_prefix must be a str")
        if isinstance(node_id, str):
            node_id = node_id.encode()
        if node_id is not None and not 1 <= len(node_id) <= 255:
            raise ValueError(f"node_id must be 1..255 bytes, got {len(node_id)}")
        for name, value in (
            ("max_pending", max_pending),
            ("max_pending_bytes", max_pending_bytes),
            ("backoff_initial", backoff_initial),
            ("backoff_max", backoff_max),
            ("health_check_interval", health_check_interval),
            ("connect_timeout", connect_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        self.url = url
        self.channel_prefix = channel_prefix
        self._prefix_b = channel_prefix.encode()
        self.sharded = bool(sharded)
        self._fixed_node_id = node_id
        self.node_id: bytes = node_id or b""
        self.on_gap = on_gap
        self.max_pending = int(max_pending)
        self.max_pending_bytes = int(max_pending_bytes)
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.health_check_interval = float(health_check_interval)
        self.connect_timeout = float(connect_timeout)
        if self.sharded:
            self._cmd_pub, self._cmd_sub, self._cmd_unsub = "SPUBLISH", "SSUBSCRIBE", "SUNSUBSCRIBE"
            self._msg_type, self._sub_reply, self._unsub_reply = b"smessage", b"ssubscribe", b"sunsubscribe"
        else:
            self._cmd_pub, self._cmd_sub, self._cmd_unsub = "PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE"
            self._msg_type, self._sub_reply, self._unsub_reply = b"message", b"subscribe", b"unsubscribe"
        self._server: Server | None = None
        self._headers: dict[tuple[int, bool], bytes] = {}
        # channel -> None: channels this process wants (topics with local subscribers)
        self._wanted: dict[bytes, None] = {}
        # channels Redis confirmed on the current connection
        self._confirmed: set[bytes] = set()
        # channels the current connection was told to subscribe to; None between
        # connections, when only _wanted matters (a new one subscribes to all of it)
        self._sent: set[bytes] | None = None
        # channels whose wanted state may differ from _sent: one entry per channel
        # however often its topic is joined and left, so churn cannot grow it
        self._dirty: dict[bytes, None] = {}
        # (channel, envelope) publishes not yet sent, and their total size
        self._outbox: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._outbox_bytes = 0
        self._outbox_event: asyncio.Event | None = None
        self._control_event: asyncio.Event | None = None
        self._connected_event: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._down_since: float | None = None
        self._last_rx = 0.0
        self._conns: tuple[Any, ...] = ()
        self._drop_log = _LimitedLog()
        self._overflow_log = _LimitedLog()
        self._delivery_log = _LimitedLog()
        self.stats = {
            "published": 0,
            "received": 0,
            "delivered": 0,
            "own": 0,
            "dropped": 0,
            "gaps": 0,
            "foreign": 0,
            "invalid": 0,
            "redirects": 0,
            "refreshes": 0,
        }

    # ------------------------------------------------------------------ introspection
    @property
    def connected(self) -> bool:
        """True while both Redis connections are up."""
        return self._connected_event is not None and self._connected_event.is_set()

    @property
    def channels(self) -> set[str]:
        """Topics this process is (or is about to be) subscribed to in Redis."""
        n = len(self._prefix_b)
        return {c[n:].decode("utf-8", "surrogatepass") for c in self._wanted}

    @property
    def confirmed_channels(self) -> set[str]:
        """Topics whose subscription Redis has confirmed on the current connection."""
        n = len(self._prefix_b)
        return {c[n:].decode("utf-8", "surrogatepass") for c in self._confirmed}

    @property
    def pending_control(self) -> int:
        """Channels whose (un)subscribe is waiting to be sent (at most one per topic)."""
        return len(self._dirty)

    @property
    def pending_bytes(self) -> int:
        """Size of the publishes waiting to be sent (at most ``max_pending_bytes``)."""
        return self._outbox_bytes

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected to Redis; ``False`` after ``timeout`` seconds."""
        if self._connected_event is None:
            raise RuntimeError("RedisBackplane is not started")
        try:
            await asyncio.wait_for(self._connected_event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def wait_subscribed(self, topic: str, timeout: float = 5.0) -> bool:
        """Wait until Redis confirmed this process's subscription to ``topic``."""
        channel = self._channel(topic)
        deadline = time.monotonic() + timeout
        while channel not in self._confirmed:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    # ------------------------------------------------------------------ server hooks
    async def start(self, server: Server) -> None:
        """Attach to ``server`` and start the Redis link (a backplane serves one server)."""
        if self._server is not None:
            raise RuntimeError("a RedisBackplane serves one server")
        self._server = server
        if self._fixed_node_id is None:
            # Drawn here, not in __init__, so workers forked from one configured
            # object still get distinct ids.
            self.node_id = os.urandom(8)
        self._headers = {
            (op, c): encode_envelope(self.node_id, op, b"", c)
            for op in (Opcode.TEXT, Opcode.BINARY) for c in (False, True)
        }
        self._outbox_event = asyncio.Event()
        self._control_event = asyncio.Event()
        self._connected_event = asyncio.Event()
        for topic in server.pubsub.topics():  # attached to a server that already has topics
            self._wanted[self._channel(topic)] = None
        self._runner = asyncio.get_running_loop().create_task(self._run())
        if not await self.wait_connected(self.connect_timeout):
            logger.warning(
                "bunws backplane: Redis at %s not reachable yet; serving locally and retrying",
                _safe_url(self.url),
            )

    def publish(self, topic: str, opcode: int, payload: bytes, compress: bool) -> None:
        """Queue a local publish for Redis (bounded by ``max_pending`` and
        ``max_pending_bytes``; the oldest is dropped first)."""
        if self._closing or self._outbox_event is None:
            return
        channel = self._channel(topic)
        header = self._headers[opcode, bool(compress)]
        size = len(channel) + len(header) + len(payload)
        if size > self.max_pending_bytes:
            self._overflowed(1, f"a {size}-byte publish is larger than max_pending_bytes")
            return
        outbox = self._outbox
        if len(outbox) >= self.max_pending or self._outbox_bytes + size > self.max_pending_bytes:
            self._make_room(size)
        outbox.append((channel, header + payload))
        self._outbox_bytes += size
        self._outbox_event.set()

    def subscribe(self, topic: str) -> None:
        """The first local socket subscribed to ``topic``: subscribe to its channel."""
        channel = self._channel(topic)
        self._wanted[channel] = None
        self._mark_dirty(channel)

    def unsubscribe(self, topic: str) -> None:
        """The last local socket left ``topic``: unsubscribe from its channel."""
        channel = self._channel(topic)
        self._wanted.pop(channel, None)
        self._mark_dirty(channel)

    async def close(self, flush_timeout: float = 1.0) -> None:
        """Send what is queued (up to ``flush_timeout`` s), then disconnect."""
        if self._closing:
            return
        if self._runner is not None and self.connected and self._outbox:
            deadline = time.monotonic() + flush_timeout
            while self._outbox and self.connected and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        self._closing = True
        if self._runner is not None:
            # Closing the sockets first ends pending reads with an error, so the
            # session tasks finish even where a cancellation would be swallowed.
            for conn in self._conns:
                try:
                    await conn.disconnect(nowait=True)
                except Exception:
                    pass
            self._runner.cancel()
            try:
                await asyncio.wait_for(self._runner, 5)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                pass
            except Exception:  # pragma: no cover - _run handles its own errors
                logger.exception("bunws backplane: error while closing")
            self._runner = None

    # ------------------------------------------------------------------ internals
    def _channel(self, topic: str) -> bytes:
        return self._prefix_b + topic.encode("utf-8", "surrogatepass")

    def _make_room(self, size: int) -> None:
        """Drop the oldest queued publishes until one of ``size`` bytes fits.

        Oldest first: what was published last is closest to the current state,
        which is what clients need after an outage (``on_gap`` tells the app that
        messages were lost). Each publisher's order is kept either way.
        """
        outbox = self._outbox
        limit = self.max_pending_bytes - size
        dropped = 0
        while outbox and (len(outbox) >= self.max_pending or self._outbox_bytes > limit):
            channel, data = outbox.popleft()
            self._outbox_bytes -= len(channel) + len(data)
            dropped += 1
        self._overflowed(dropped, "the queue of publishes for Redis is full, the oldest were dropped")

    def _overflowed(self, dropped: int, why: str) -> None:
        self.stats["dropped"] += dropped
        self._overflow_log.warning(
            "bunws backplane: %s (%d dropped in all); Redis at %s is %s",
            why,
            self.stats["dropped"],
            _safe_url(self.url),
            "connected" if self.connected else "unreachable",
        )

    def _mark_dirty(self, channel: bytes) -> None:
        if self._sent is None or self._control_event is None:
            return  # no connection: the next one subscribes to _wanted as a whole
        self._dirty[channel] = None
        self._control_event.set()

    def _control_commands(self) -> list[tuple[str, bytes]]:
        """The (un)subscribe commands that bring the connection to ``_wanted``.

        Only the latest state of a channel counts, so a topic joined and left
        many times since the last round costs one command or none.
        """
        sent = self._sent
        assert sent is not None
        wanted = self._wanted
        commands = []
        for channel in self._dirty:
            if channel in wanted:
                if channel not in sent:
                    sent.add(channel)
                    commands.append((self._cmd_sub, channel))
            elif channel in sent:
                sent.discard(channel)
                commands.append((self._cmd_unsub, channel))
        self._dirty.clear()
        return commands

    def _make_connections(self) -> tuple[Any, Any]:
        from redis.asyncio import ConnectionPool
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One attempt per call: this class owns reconnection and gap reporting, so
        # redis-py must not silently reconnect (and resubscribe) behind our back.
        pool = ConnectionPool.from_url(
            self.url,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            # RESP2: pub/sub messages are plain replies; under RESP3 redis-py would
            # route them to its push handler.
            protocol=2,
        )
        return pool.make_connection(), pool.make_connection()

    async def _run(self) -> None:
        """Connect, serve one session until it fails, back off, again (until close)."""
        backoff = self.backoff_initial
        assert self._connected_event is not None
        if self._down_since is None:
            self._down_since = time.monotonic()
        first = True
        while not self._closing:
            sub = pub = None
            tasks: list[asyncio.Task[None]] = []
            try:
                sub, pub = self._make_connections()
                self._conns = (sub, pub)
                await asyncio.wait_for(sub.connect(), self.connect_timeout + 1)
                await asyncio.wait_for(pub.connect(), self.connect_timeout + 1)
                await self._resubscribe(sub)
                self._mark_connected(first)
                first = False
                backoff = self.backoff_initial
                tasks = self._session_tasks(sub, pub)
                await self._until_one_fails(tasks)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._mark_down(exc, quiet=first and backoff < self.backoff_max)
            finally:
                await self._end_session(tasks, (sub, pub))
            if self._closing:
                break
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, self.backoff_max)

    async def _resubscribe(self, sub: Any) -> None:
        """The new connection's subscriptions are exactly ``_wanted``; from here on,
        changes to it are sent as they come."""
        assert self._control_event is not None
        self._dirty.clear()
        self._control_event.clear()
        self._confirmed.clear()
        channels = list(self._wanted)
        self._sent = set(channels)
        if self.sharded:
            # One channel per SSUBSCRIBE: a cluster refuses channels of different
            # slots in one command.
            commands = [(self._cmd_sub, c) for c in channels]
        else:
            commands = [(self._cmd_sub, *channels[i : i + 512]) for i in range(0, len(channels), 512)]
        if commands:
            await sub.send_packed_command(sub.pack_commands(commands), check_health=False)

    def _mark_connected(self, first: bool) -> None:
        assert self._connected_event is not None and self._down_since is not None
        downtime = time.monotonic() - self._down_since
        self._down_since = None
        self._connected_event.set()
        if first:
            logger.debug("bunws backplane: connected to %s", _safe_url(self.url))
        else:
            self._report_gap(downtime)

    def _session_tasks(self, sub: Any, pub: Any) -> list[asyncio.Task[None]]:
        loop = asyncio.get_running_loop()
        return [
            loop.create_task(self._reader(sub)),
            loop.create_task(self._controller(sub)),
            loop.create_task(self._publisher(pub)),
        ]

    @staticmethod
    async def _until_one_fails(tasks: list[asyncio.Task[None]]) -> None:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            exc = t.exception()
            if exc is not None:
                raise exc
        raise _Down("session ended")

    def _mark_down(self, exc: Exception, quiet: bool) -> None:
        assert self._connected_event is not None
        if self._connected_event.is_set():
            self._connected_event.clear()
            self._down_since = time.monotonic()
            logger.warning(
                "bunws backplane: lost Redis at %s (%s); messages are lost until it is back",
                _safe_url(self.url),
                exc or type(exc).__name__,
            )
        elif not quiet:
            logger.debug("bunws backplane: reconnect failed: %r", exc)

    async def _end_session(self, tasks: list[asyncio.Task[None]], conns: tuple[Any, Any]) -> None:
        assert self._connected_event is not None
        self._connected_event.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except BaseException:
                pass
        for conn in conns:
            if conn is not None:
                try:
                    await conn.disconnect(nowait=True)
                except Exception:
                    pass
        self._confirmed.clear()
        self._sent = None
        self._dirty.clear()
        self._conns = ()

    def _report_gap(self, downtime: float) -> None:
        self.stats["gaps"] += 1
        logger.warning(
            "bunws backplane: reconnected to Redis at %s after %.3f s; messages of that period were lost",
            _safe_url(self.url),
            downtime,
        )
        if self.on_gap is None:
            return
        try:
            result = self.on_gap(downtime)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                task.add_done_callback(_log_task_error)
        except Exception:
            logger.exception("bunws backplane: on_gap raised")

    async def _reader(self, conn: Any) -> None:
        msg_type = self._msg_type
        sub_reply, unsub_reply = self._sub_reply, self._unsub_reply
        confirmed = self._confirmed
        stats = self.stats
        on_message = self._on_message
        loop = asyncio.get_running_loop()
        while True:
            reply = await conn.read_response(disconnect_on_error=True)
            self._last_rx = loop.time()
            if type(reply) is not list or len(reply) < 3:
                continue  # PING answers
            kind = reply[0]
            if kind == msg_type:
                stats["received"] += 1
                on_message(reply[1], reply[2])
            elif kind == sub_reply:
                confirmed.add(reply[1])
            elif kind == unsub_reply:
                confirmed.discard(reply[1])

    def _on_message(self, channel: bytes, data: bytes) -> None:
        """Hand a message from Redis to the local subscribers, if it is valid.

        Redis carries whatever anyone publishes on the channel, so it gets the
        checks a client's frames get; a bad message is dropped, never raised.
        """
        env = _parse_envelope(data)
        if type(env) is str:
            self._drop(channel, env)
            return
        node, opcode, payload, compress = env  # type: ignore[misc]
        if node == self.node_id:
            self.stats["own"] += 1
            return
        if opcode == Opcode.TEXT and not validate_utf8(payload):
            self._drop(channel, "text payload is not valid UTF-8")
            return
        topic = self._topic(channel)
        if topic is None:
            self._drop(channel, "channel is not a topic of this backplane")
            return
        server = self._server
        assert server is not None
        try:
            server.deliver_local(topic, opcode, payload, compress)
        except Exception:
            self._delivery_log.warning(
                "bunws backplane: local delivery of a message from Redis failed", exc_info=True
            )
            return
        self.stats["delivered"] += 1

    def _topic(self, channel: object) -> str | None:
        """The topic of a channel this backplane subscribes to, else ``None``."""
        if type(channel) is not bytes or not channel.startswith(self._prefix_b):
            return None
        try:
            return channel[len(self._prefix_b) :].decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return None

    def _drop(self, channel: object, reason: str) -> None:
        self.stats["foreign" if reason is _FOREIGN else "invalid"] += 1
        name = channel.decode("utf-8", "backslashreplace") if type(channel) is bytes else repr(channel)
        self._drop_log.warning(
            "bunws backplane: dropped a message from Redis on channel %r: %s", name[:200], reason
        )

    async def _controller(self, conn: Any) -> None:
        event = self._control_event
        assert event is not None
        loop = asyncio.get_running_loop()
        interval = self.health_check_interval
        self._last_rx = loop.time()
        while True:
            ping = False
            try:
                await asyncio.wait_for(event.wait(), interval)
            except asyncio.TimeoutError:
                # The reader notes every reply; PING makes Redis reply when idle,
                # so 3 silent intervals mean a dead (e.g. half-open) connection.
                if loop.time() - self._last_rx > 3 * interval:
                    raise _Down(f"no reply from Redis in {3 * interval:.0f} s") from None
                ping = True
            event.clear()
            commands: list[tuple[str, ...]] = list(self._control_commands())
            if ping:
                commands.append(("PING",))
            if not commands:
                continue
            if not conn.is_connected:  # never let redis-py reconnect without our resubscribe
                raise _Down("subscriber connection closed")
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    async def _publisher(self, conn: Any) -> None:
        event = self._outbox_event
        assert event is not None
        outbox = self._outbox
        command = self._cmd_pub
        stats = self.stats
        timeout = max(self.connect_timeout, 1.0)
        while True:
            if not outbox:
                event.clear()
                await event.wait()
            # Everything published during the previous round trip goes in one
            # pipeline: one write, one pass over the answers, order kept.
            batch = []
            sent_bytes = 0
            while outbox and len(batch) < 1024:
                channel, data = outbox.popleft()
                sent_bytes += len(channel) + len(data)
                batch.append((command, channel, data))
            self._outbox_bytes -= sent_bytes
            if not conn.is_connected:
                raise _Down("publisher connection closed")
            await conn.send_packed_command(conn.pack_commands(batch), check_health=False)
            stats["published"] += len(batch)

            async def answers(n: int = len(batch)) -> None:
                for _ in range(n):
                    await conn.read_response(disconnect_on_error=True)

            try:
                await asyncio.wait_for(answers(), timeout)
            except asyncio.TimeoutError:
                raise _Down(f"no answer to PUBLISH in {timeout:.0f} s") from None

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<RedisBackplane {_safe_url(self.url)} {state} channels={len(self._wanted)}>"


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url


def _log_task_error(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("bunws backplane: on_gap raised", exc_info=task.exception())
