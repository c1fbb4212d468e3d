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

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Backplane", "RedisBackplane", "encode_envelope", "decode_envelope"]

logger = logging.getLogger("bunws.backplane")

MAGIC = 0xB5
_COMPRESS_FLAG = 0x10
_OPCODE_MASK = 0x0F


def encode_envelope(node_id: bytes, opcode: int, payload: bytes, compress: bool) -> bytes:
    """The Redis message for one publish (see the module docstring)."""
    flags = opcode | (_COMPRESS_FLAG if compress else 0)
    return bytes((MAGIC, flags, len(node_id))) + node_id + payload


def decode_envelope(data: bytes) -> tuple[bytes, int, bytes, bool] | None:
    """``(node_id, opcode, payload, compress)``, or ``None`` for a foreign message."""
    if len(data) < 3 or data[0] != MAGIC:
        return None
    flags = data[1]
    opcode = flags & _OPCODE_MASK
    n = data[2]
    if opcode not in (1, 2) or n == 0 or len(data) < 3 + n:
        return None
    return data[3 : 3 + n], opcode, data[3 + n :], bool(flags & _COMPRESS_FLAG)


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
            broadcasting it to every cluster node. The URL names the node to talk to.
        node_id: this process's id in the wire format (≤255 bytes). By default a
            random id is drawn in :meth:`start`, so forked workers differ. Give one
            only if it is unique per process.
        on_gap: called (sync or async) as ``on_gap(downtime_seconds)`` after the
            connection to Redis came back, because messages of that period were
            lost; a warning is logged as well. Use it to resynchronise clients.
        max_pending: publishes kept while Redis is unreachable; beyond it the
            oldest are dropped (counted in ``stats["dropped"]``).
        backoff_initial, backoff_max: reconnect delays (doubling, with jitter).
        health_check_interval: seconds between PINGs on the subscriber
            connection; a connection silent for 3 intervals is considered dead.
        connect_timeout: TCP connect timeout, and how long :meth:`start` waits for
            the first connection (it then keeps trying in the background).

    Raises:
        ImportError: the ``redis`` package is missing (``pip install bunws[redis]``).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        channel_prefix: str = "bunws:",
        sharded: bool = False,
        node_id: str | bytes | None = None,
        on_gap: Callable[[float], Any] | None = None,
        *,
        max_pending: int = 10_000,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        health_check_interval: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as exc:  # pragma: no cover - redis is a test dependency
            raise ImportError("RedisBackplane needs the redis package: pip install 'bunws[redis]'") from exc
        if not isinstance(channel_prefix, str):
            raise TypeError("channel_prefix must be a str")
        if isinstance(node_id, str):
            node_id = node_id.encode()
        if node_id is not None and not 1 <= len(node_id) <= 255:
            raise ValueError(f"node_id must be 1..255 bytes, got {len(node_id)}")
        for name, value in (
            ("max_pending", max_pending),
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
        self._outbox: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._control: collections.deque[tuple[str, bytes]] = collections.deque()
        self._outbox_event: asyncio.Event | None = None
        self._control_event: asyncio.Event | None = None
        self._connected_event: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._down_since: float | None = None
        self._last_rx = 0.0
        self._conns: tuple[Any, ...] = ()
        self.stats = {"published": 0, "received": 0, "delivered": 0, "own": 0, "dropped": 0, "gaps": 0, "foreign": 0}

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
        if self._server is not None:
            raise RuntimeError("a RedisBackplane serves one server")
        self._server = server
        if self._fixed_node_id is None:
            # Drawn here, not in __init__, so workers forked from one configured
            # object still get distinct ids.
            self.node_id = os.urandom(8)
        self._headers = {
            (op, c): encode_envelope(self.node_id, op, b"", c) for op in (1, 2) for c in (False, True)
        }
        self._outbox_event = asyncio.Event()
        self._control_event = asyncio.Event()
        self._connected_event = asyncio.Event()
        for topic in server._topics.topics():  # attached to a server that already has topics
            self._wanted[self._channel(topic)] = None
        self._runner = asyncio.get_running_loop().create_task(self._run())
        if not await self.wait_connected(self.connect_timeout):
            logger.warning(
                "bunws backplane: Redis at %s not reachable yet; serving locally and retrying",
                _safe_url(self.url),
            )

    def publish(self, topic: str, opcode: int, payload: bytes, compress: bool) -> None:
        if self._closing or self._outbox_event is None:
            return
        outbox = self._outbox
        if len(outbox) >= self.max_pending:
            outbox.popleft()
            self.stats["dropped"] += 1
        outbox.append((self._channel(topic), self._headers[opcode, bool(compress)] + payload))
        self._outbox_event.set()

    def subscribe(self, topic: str) -> None:
        channel = self._channel(topic)
        self._wanted[channel] = None
        self._queue_control(self._cmd_sub, channel)

    def unsubscribe(self, topic: str) -> None:
        channel = self._channel(topic)
        self._wanted.pop(channel, None)
        self._queue_control(self._cmd_unsub, channel)

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

    def _queue_control(self, command: str, channel: bytes) -> None:
        if self._control_event is None:
            return
        self._control.append((command, channel))
        self._control_event.set()

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
                # The new connection's subscriptions are exactly _wanted; queued
                # (un)subscribe commands describe the old one.
                self._control.clear()
                self._confirmed.clear()
                channels = list(self._wanted)
                if self.sharded:
                    # One channel per SSUBSCRIBE: a cluster refuses channels of
                    # different slots in one command.
                    commands = [(self._cmd_sub, c) for c in channels]
                else:
                    commands = [(self._cmd_sub, *channels[i : i + 512]) for i in range(0, len(channels), 512)]
                if commands:
                    await sub.send_packed_command(sub.pack_commands(commands), check_health=False)
                downtime = time.monotonic() - self._down_since
                self._down_since = None
                backoff = self.backoff_initial
                self._connected_event.set()
                if first:
                    first = False
                    logger.debug("bunws backplane: connected to %s", _safe_url(self.url))
                else:
                    self._report_gap(downtime)
                loop = asyncio.get_running_loop()
                tasks = [
                    loop.create_task(self._reader(sub)),
                    loop.create_task(self._controller(sub)),
                    loop.create_task(self._publisher(pub)),
                ]
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    exc = t.exception()
                    if exc is not None:
                        raise exc
                raise _Down("session ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._connected_event.is_set():
                    self._connected_event.clear()
                    self._down_since = time.monotonic()
                    logger.warning(
                        "bunws backplane: lost Redis at %s (%s); messages are lost until it is back",
                        _safe_url(self.url),
                        exc or type(exc).__name__,
                    )
                elif not first or backoff >= self.backoff_max:
                    logger.debug("bunws backplane: reconnect failed: %r", exc)
            finally:
                self._connected_event.clear()
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    try:
                        await t
                    except BaseException:
                        pass
                for conn in (sub, pub):
                    if conn is not None:
                        try:
                            await conn.disconnect(nowait=True)
                        except Exception:
                            pass
                self._confirmed.clear()
                self._conns = ()
            if self._closing:
                break
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, self.backoff_max)

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
        server = self._server
        assert server is not None
        publish_local = server._publish_local
        own = self.node_id
        prefix_len = len(self._prefix_b)
        msg_type = self._msg_type
        sub_reply, unsub_reply = self._sub_reply, self._unsub_reply
        confirmed = self._confirmed
        stats = self.stats
        loop = asyncio.get_running_loop()
        while True:
            reply = await conn.read_response(disconnect_on_error=True)
            self._last_rx = loop.time()
            if type(reply) is not list or len(reply) < 3:
                continue  # PING answers
            kind = reply[0]
            if kind == msg_type:
                stats["received"] += 1
                env = decode_envelope(reply[2])
                if env is None:
                    stats["foreign"] += 1
                    continue
                node, opcode, payload, compress = env
                if node == own:
                    stats["own"] += 1
                    continue
                topic = reply[1][prefix_len:].decode("utf-8", "surrogatepass")
                try:
                    publish_local(topic, opcode, payload, compress, None)
                    stats["delivered"] += 1
                except Exception:
                    logger.exception("bunws backplane: local delivery of a remote message failed")
            elif kind == sub_reply:
                confirmed.add(reply[1])
            elif kind == unsub_reply:
                confirmed.discard(reply[1])

    async def _controller(self, conn: Any) -> None:
        event = self._control_event
        assert event is not None
        control = self._control
        loop = asyncio.get_running_loop()
        interval = self.health_check_interval
        self._last_rx = loop.time()
        while True:
            try:
                await asyncio.wait_for(event.wait(), interval)
            except asyncio.TimeoutError:
                # The reader notes every reply; PING makes Redis reply when idle,
                # so 3 silent intervals mean a dead (e.g. half-open) connection.
                if loop.time() - self._last_rx > 3 * interval:
                    raise _Down(f"no reply from Redis in {3 * interval:.0f} s") from None
                control.append(("PING", b""))
            event.clear()
            if not control:
                continue
            commands = []
            while control:
                command, channel = control.popleft()
                commands.append((command,) if command == "PING" else (command, channel))
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
            while outbox and len(batch) < 1024:
                channel, data = outbox.popleft()
                batch.append((command, channel, data))
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
