"""``serve()`` / ``run()`` and ``Server``: the listener, upgrades, topics, shutdown.

``Server`` mirrors Bun's ``Server`` object: ``upgrade``, ``publish``,
``subscriber_count``, ``pending_websockets``, ``stop``. It owns the set of live
connections, one coarse clock tick that drives every timeout (no timer handle per
connection), and the end-of-tick flush of queued publishes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl as _ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from . import fastnet
from ._frame import FrameParser
from .arguments import check_compress, check_port, check_topic, positive_int, positive_number
from .errors import ClosedError, HandshakeError, InvalidArgument, InvalidType, WrongThreadError
from .extensions import negotiate
from .http import (
    Request,
    build_101,
    check_upgrade_request,
    first_subprotocol,
    header_pairs,
    simple_response,
)
from .options import WebSocketHandler, ping_margin
from .protocol import Connection
from .pubsub import PubSub, ThreadsafePublisher, encode_message
from .session import WebSocketSession
from .stats import StatsRecorder
from .timers import TimerWheel

__all__ = ["Server", "serve", "run"]

logger = logging.getLogger("bunws")

# The clock tick driving every timeout. Bun's uSockets ticks every 4 s; a finer tick
# keeps our timeouts within half a second, and a tick looks only at the connections
# whose deadline is due (bunws.timers).
TICK_SECONDS = 0.5

# Bytes that publish_threadsafe() may have waiting for the loop before it refuses.
THREADSAFE_LIMIT = 64 * 1024 * 1024


class Server:
    """A running bunws server (returned by :func:`serve`)."""

    def __init__(
        self,
        fetch: Callable[..., Any],
        websocket: WebSocketHandler | None,
        *,
        hostname: str,
        port: int,
        ssl: _ssl.SSLContext | None,
        reuse_port: bool,
        backlog: int,
        handshake_timeout: float,
        close_timeout: float,
        max_head_size: int,
        max_headers: int,
        max_body_size: int,
        max_connections: int | None,
        max_pending_handshakes: int,
        allowed_origins: Iterable[str] | str | None,
        fast_transport: bool = False,
    ) -> None:
        if not callable(fetch):
            raise InvalidType("fetch must be callable")
        websocket = _websocket_handler(websocket)
        if ssl is not None and not isinstance(ssl, _ssl.SSLContext):
            raise InvalidType("ssl must be an ssl.SSLContext")
        for name, value in (
            ("max_head_size", max_head_size),
            ("max_headers", max_headers),
            ("max_body_size", max_body_size),
            ("max_pending_handshakes", max_pending_handshakes),
            ("backlog", backlog),
        ):
            positive_int(name, value)
        positive_int("max_connections", max_connections, optional=True)
        check_port(port)
        self.fetch = fetch
        self._websocket = websocket or WebSocketHandler()
        self._has_websocket = websocket is not None
        self.hostname = hostname
        self._requested_port = port
        self.ssl = ssl
        self.scheme = "https" if ssl else "http"  # of this server's URLs
        self.reuse_port = reuse_port
        self.backlog = backlog
        self.handshake_timeout = positive_number("handshake_timeout", handshake_timeout)
        self.close_timeout = positive_number("close_timeout", close_timeout)
        self.max_head_size = max_head_size
        self.max_headers = max_headers
        self.max_body_size = max_body_size
        self.max_connections = max_connections
        self.max_pending_handshakes = max_pending_handshakes
        self.allowed_origins = _origins(allowed_origins)
        self.fast_transport = fastnet.resolve(fast_transport, tls=ssl is not None)
        self._ping_margin = ping_margin(self._websocket.idle_timeout)
        # A dict used as a set: about half a set's memory per entry (idle connections).
        self._connections: dict[Connection, None] = {}
        self._http_connections = 0
        self._pending_websockets = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stopping = False  # stop() has begun: new connections and handshakes are refused
        self._stopped = asyncio.Event()
        self._all_gone: asyncio.Event | None = None
        # The engine interface (what connections and sessions use, read per request
        # and per read) is plain attributes: a property costs a Python call each time.
        self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()  # the loop the server runs on
        # One clock for every connection; the stock loop's time() is a Python frame
        # around time.monotonic(), so that is called directly.
        loop_time = self.loop.time
        stock = getattr(loop_time, "__func__", None) is asyncio.BaseEventLoop.time
        self.clock = time.monotonic if stock else loop_time
        self.recorder = StatsRecorder()  # what stats() reports; the sockets count into it
        self.counters = self.recorder.counters  # the compiled Counters every socket counts into
        self.pubsub = PubSub(self.loop, self.recorder)
        self._loop_thread = threading.get_ident()
        self._threadsafe = ThreadsafePublisher(self.pubsub, self.loop, THREADSAFE_LIMIT)
        # Every connection's reads land here (Connection.get_buffer); 256 KiB is
        # asyncio's own read size.
        self.receive_buffer = memoryview(bytearray(256 * 1024))
        self.timers = TimerWheel(TICK_SECONDS)  # which connections the tick looks at, when
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tick_due = 0.0
        self._aio_server: asyncio.base_events.Server | None = None
        self.port = port
        self.backplane: Any = None
        self._stop_callbacks: list[Callable[[], Any]] = []

    # ------------------------------------------------------------------ lifecycle
    async def listen(self, sock: socket.socket | None = None) -> None:
        """Start listening (``serve()`` calls it once)."""
        loop = self.loop
        # TLS is not handed to create_server: each Connection starts it after the
        # accept, so a handshake in progress counts against max_pending_handshakes.
        kwargs: dict[str, Any] = dict(backlog=self.backlog)
        create_server = fastnet.create_server(loop, self.fast_transport)
        if sock is not None:
            self._aio_server = await create_server(lambda: Connection(self), sock=sock, **kwargs)
        else:
            self._aio_server = await create_server(
                lambda: Connection(self),
                self.hostname,
                self._requested_port,
                reuse_port=self.reuse_port or None,
                **kwargs,
            )
        sockname = self._aio_server.sockets[0].getsockname()
        self.port = sockname[1]
        self._schedule_tick()

    def start_timers(self) -> None:
        """Run the timeout tick without listening: for a server whose connections
        another server accepts (``bunws.uvicorn``)."""
        if self._tick_handle is None:
            self._schedule_tick()

    def _schedule_tick(self) -> None:
        # On the wheel's tick boundaries, so a tick pops exactly its own tick's bucket.
        tick = self.timers.tick
        self._tick_due = (math.floor(self.clock() / tick) + 1) * tick
        self._tick_handle = self.loop.call_at(self._tick_due, self._tick)

    def _tick(self) -> None:
        now = self.clock()
        # The tick's own lateness is the loop lag stats() reports.
        self.recorder.tick_drift(now - self._tick_due)
        timers, connections = self.timers, self._connections
        try:
            # A loop clock may run the tick a hair before its time: it still pops its tick.
            for conn in timers.pop_due(max(now, self._tick_due)):
                try:
                    when = conn.check_timers(now)
                except Exception:
                    # One connection's failure (say, a backplane's unsubscribe raising
                    # while an idle socket is reaped) must not stop every timeout.
                    logger.exception("timer check failed for %r", conn)
                    when = now  # look again at the next tick
                if conn in connections:
                    timers.schedule(conn, when)
        finally:
            if not self._stopped.is_set():
                self._schedule_tick()

    @property
    def url(self) -> str:
        """``scheme://host:port/`` of the listener (an IPv6 host in brackets)."""
        host = self.hostname
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}/"

    # ------------------------------------------------------------------ engine interface
    # What connections and sessions use; applications have no need for these.
    @property
    def websocket_handler(self) -> WebSocketHandler:
        """The :class:`~bunws.WebSocketHandler` given to ``serve``."""
        return self._websocket

    @property
    def ping_margin(self) -> int:
        """Seconds between the keep-alive ping and the idle timeout."""
        return self._ping_margin

    def create_task(self, coro: Any) -> asyncio.Task[Any]:
        """A task the server keeps a reference to until it is done."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def admit(self, conn: Connection) -> bool:
        """A new connection: counted, and whether the limits let it in."""
        self._connections[conn] = None
        self.timers.soon(conn)
        if self.stopping or (
            self.max_connections is not None and len(self._connections) > self.max_connections
        ) or self._http_connections >= self.max_pending_handshakes:
            self.recorder.rejected(503)
            return False
        self._http_connections += 1
        return True

    def http_phase_ended(self) -> None:
        """An admitted connection was upgraded."""
        self._http_connections -= 1

    def websocket_opened(self) -> None:
        """A WebSocket opened (counted in ``pending_websockets``)."""
        self._pending_websockets += 1
        self.recorder.connections_total += 1

    def websocket_closed(self, code: int | None = None) -> None:
        """A WebSocket closed; ``code`` is what its ``close`` handler receives."""
        self._pending_websockets -= 1
        if code is not None:
            self.recorder.close_codes.add(code)

    def release(self, conn: Connection, in_http: bool) -> None:
        """A connection is gone (idempotent)."""
        if conn not in self._connections:
            return
        del self._connections[conn]
        self.timers.cancel(conn)
        if in_http:
            self._http_connections -= 1
        if self._all_gone is not None and not self._connections:
            self._all_gone.set()

    def deliver_local(
        self, topic: str, opcode: int, payload: bytes, compress: bool, exclude: Any = None
    ) -> int:
        """A message published in another process (the backplane's entry point)."""
        return self.pubsub.deliver_local(topic, opcode, payload, compress, exclude)

    @property
    def pending_websockets(self) -> int:
        """Number of open WebSocket connections."""
        return self._pending_websockets

    @property
    def pending_requests(self) -> int:
        """Number of connections still in their HTTP phase."""
        return self._http_connections

    async def stop(self, close_active: bool = False) -> None:
        """Stop accepting; close every WebSocket with 1001; wait for the close handlers.

        ``stop()`` waits up to ``close_timeout`` for peers to answer the Close frame,
        then aborts whatever is left. ``stop(True)`` does not wait for the answers.
        In-flight handshakes are answered 503.
        """
        if self.stopping:
            await self._stopped.wait()
            return
        self.stopping = True
        self._threadsafe.close()
        if self._aio_server is not None:
            self._aio_server.close()
        for conn in list(self._connections):
            conn.shutdown(close_active)
        if self._connections:
            self._all_gone = asyncio.Event()
            try:
                await asyncio.wait_for(self._all_gone.wait(), self.close_timeout)
            except asyncio.TimeoutError:
                pass
            for conn in list(self._connections):
                conn.abort()
            # Let connection_lost callbacks run.
            for _ in range(3):
                if not self._connections:
                    break
                await asyncio.sleep(0)
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        if self.backplane is not None:
            await self.backplane.close()
        if self._aio_server is not None:
            await self._aio_server.wait_closed()
        for callback in self._stop_callbacks:
            try:
                await callback()
            except Exception:
                logger.exception("stop callback %r failed", callback)
        self._stopped.set()

    def on_stop(self, callback: Callable[[], Any]) -> None:
        """Await ``callback()`` at the end of :meth:`stop`, once every connection is
        gone (an ASGI app's lifespan shutdown)."""
        self._stop_callbacks.append(callback)

    async def attach_backplane(self, backplane: Any) -> None:
        """Connect a cross-process pub/sub backplane (see :mod:`bunws.backplane`).

        The backplane gets ``publish(topic, opcode, payload, compress)`` for every
        publish, ``subscribe(topic)`` / ``unsubscribe(topic)`` when a topic gains its
        first / loses its last local subscriber, and delivers remote messages with
        :meth:`deliver_local`. It is closed by :meth:`stop`.
        """
        self.backplane = backplane
        self.pubsub.backplane = backplane
        await backplane.start(self)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(close_active=True)

    async def serve_forever(self) -> None:
        """Wait until :meth:`stop` completes."""
        await self._stopped.wait()

    # ------------------------------------------------------------------ upgrade
    def upgrade(
        self,
        req: Request,
        data: Any = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> bool:
        """Upgrade ``req`` to a WebSocket; ``open`` runs before this returns.

        Returns ``False`` (and ``fetch``'s own response is sent) when the request is
        not a valid WebSocket handshake; a wrong ``Sec-WebSocket-Version`` is answered
        426 by the server itself, as in Bun.
        """
        self.check_thread()
        if not self._has_websocket:
            raise ClosedError("upgrade() needs a server started with a websocket handler")
        if not isinstance(req, Request):
            raise InvalidType(f"upgrade expects a bunws.Request, got {type(req).__name__}")
        conn = req.connection
        if (
            not isinstance(conn, Connection)
            or conn.server is not self
            or req.upgraded
            or not conn.can_upgrade()
        ):
            return False
        user_headers = header_pairs(headers)
        try:
            key = check_upgrade_request(req)
            if self.stopping:
                raise HandshakeError(503, "server is shutting down")
            self._check_origin(req)
        except HandshakeError as exc:
            self.recorder.rejected(exc.status)
            answer = _server_answer(exc.status)
            if answer is not None:
                conn.replace_answer(answer)
            return False
        agreement = self._negotiate_compression(req)
        subprotocol, kept_headers = _subprotocol_and_headers(req, user_headers)
        extensions = agreement.response if agreement is not None else None
        head = build_101(key, kept_headers, subprotocol, extensions)
        deflater = agreement.make_deflater() if agreement is not None else None
        session = WebSocketSession(
            conn, conn.transport, self, self._frame_parser(agreement), data,
            subprotocol=subprotocol,
            extensions=extensions,
            deflater=deflater,
            shared_deflate=agreement is not None and deflater is not None and agreement.shared_deflate,
        )
        conn.upgrade(req, head, session)
        return True

    def _negotiate_compression(self, req: Request) -> Any:
        config = self._websocket.deflate
        if config is None:
            return None
        return negotiate(config, req.headers.get("sec-websocket-extensions"))

    def _frame_parser(self, agreement: Any) -> FrameParser:
        handler = self._websocket
        return FrameParser(
            server=True,
            max_payload_length=handler.max_payload_length,
            max_fragments=handler.max_fragments,
            inflater=agreement.make_inflater() if agreement is not None else None,
        )

    def _check_origin(self, req: Request) -> None:
        allowed = self.allowed_origins
        if allowed is None:
            return
        origin = req.headers.get("origin")
        if origin is None:
            return  # non-browser clients send no Origin; CSWSH needs a browser
        origin = origin.strip().lower()
        if allowed == "same-origin":
            host = req.headers.get("host", "").strip().lower()
            for scheme in ("http://", "https://"):
                if origin == scheme + host:
                    return
        elif "*" in allowed or origin in allowed:
            return
        raise HandshakeError(403, "Origin not allowed")

    # ------------------------------------------------------------------ pub/sub
    def publish(
        self, topic: str, data: str | bytes | bytearray | memoryview, compress: bool = True
    ) -> int:
        """Send to every subscriber of ``topic``; returns Bun's publish status."""
        self.check_thread()
        check_topic(topic)
        if compress is not True:
            check_compress(compress)
        return self.pubsub.publish(topic, data, compress, None)

    def publish_threadsafe(
        self, topic: str, data: str | bytes | bytearray | memoryview, compress: bool = True
    ) -> bool:
        """``publish`` from any thread (a Kafka consumer, sync code in an executor).

        Returns at once: the publish happens on the loop, in call order. Arguments
        are checked and the message encoded in the caller's thread, so a bad one
        raises there. Returns False (and counts it in ``threadsafe_refused``) when
        more than ``THREADSAFE_LIMIT`` bytes already wait for the loop. Raises
        :class:`ClosedError` once the server is stopping.
        """
        check_topic(topic)
        if compress is not True:
            check_compress(compress)
        opcode, payload = encode_message(data)
        if self.stopping:
            raise ClosedError("the server is stopping")
        return self._threadsafe.publish(topic, opcode, payload, compress)

    @property
    def threadsafe_refused(self) -> int:
        """``publish_threadsafe`` calls refused because the loop was behind."""
        return self._threadsafe.refused

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot of this process's counters and gauges (README,
        "Stats and metrics"). Under ``run(workers=N)`` it is this worker's part;
        :func:`bunws.workers.cluster_stats` sums every worker's.

        Cheap enough to call every second: one pass over the open connections for
        ``buffered_bytes``, the rest is read from counters kept as things happen.
        """
        snap = self.recorder.snapshot()
        snap["connections_open"] = self._pending_websockets
        snap["topics"] = len(self.pubsub)
        snap["subscriptions"] = self.pubsub.subscriptions
        buffered = 0
        for conn in self._connections:
            session = conn.session
            if session is not None:
                buffered += session.ws.buffered_amount
        snap["buffered_bytes"] = buffered
        backplane = self.backplane
        if backplane is not None:
            counts = getattr(backplane, "stats", None)
            info: dict[str, Any] = dict(counts) if isinstance(counts, Mapping) else {}
            # RedisBackplane counts its reconnections as "gaps" (each may lose messages).
            info.setdefault("reconnects", info.get("gaps", 0))
            info["connected"] = bool(getattr(backplane, "connected", False))
            snap["backplane"] = info
        return snap

    def check_thread(self) -> None:
        """Raise :class:`WrongThreadError` unless on the loop's thread (loop-only
        methods would corrupt the server's state from another thread)."""
        if threading.get_ident() != self._loop_thread:
            raise WrongThreadError(
                "Server methods must be called on the event loop's thread; from another "
                "thread use server.publish_threadsafe() or loop.call_soon_threadsafe()")

    def subscriber_count(self, topic: str) -> int:
        """Live number of sockets subscribed to ``topic`` in this process."""
        if not isinstance(topic, str):
            raise InvalidType(f"topic must be a str, got {type(topic).__name__}")
        return self.pubsub.count(topic)

    def __repr__(self) -> str:
        return f"<bunws.Server {self.url} websockets={self._pending_websockets}>"


def _websocket_handler(websocket: Any) -> WebSocketHandler | None:
    """``serve()``'s ``websocket`` argument: a handler, a dict of its options, or None."""
    if websocket is None or isinstance(websocket, WebSocketHandler):
        return websocket
    if isinstance(websocket, Mapping):
        return WebSocketHandler(**websocket)
    raise InvalidType("websocket must be a WebSocketHandler or a dict of its options")


def _server_answer(status: int) -> bytes | None:
    """What the server answers itself for a refused upgrade (Bun's 426), if anything:
    a 400 leaves the answer to ``fetch``."""
    if status == 426:
        return simple_response(426, [("Sec-WebSocket-Version", "13")], body=False)
    if status in (403, 503):
        return simple_response(status)
    return None


def _subprotocol_and_headers(
    req: Request, user_headers: list[tuple[str, str]]
) -> tuple[str | None, list[tuple[str, str]]]:
    """Bun auto-echoes the first offered subprotocol; a ``Sec-WebSocket-Protocol``
    header passed to ``upgrade()`` chooses instead (docs/bun-behaviour.md §11)."""
    subprotocol = first_subprotocol(req.headers)
    kept = []
    for name, value in user_headers:
        if name.lower() == "sec-websocket-protocol":
            subprotocol = value.strip() or None
        else:
            kept.append((name, value))
    return subprotocol, kept


def _origins(value: Iterable[str] | str | None) -> frozenset[str] | str | None:
    if value is None:
        return None
    if value == "same-origin":
        return "same-origin"
    if isinstance(value, str):
        value = [value]
    try:
        return frozenset(v.strip().lower().rstrip("/") for v in value)
    except (TypeError, AttributeError):
        raise InvalidType("allowed_origins must be None, 'same-origin' or an iterable of str") from None


async def serve(
    fetch: Callable[..., Any],
    websocket: WebSocketHandler | Mapping[str, Any] | None = None,
    *,
    hostname: str = "127.0.0.1",
    port: int = 3000,
    ssl: _ssl.SSLContext | None = None,
    reuse_port: bool = False,
    backlog: int = 1024,
    handshake_timeout: float = 10.0,
    close_timeout: float = 10.0,
    max_head_size: int = 16 * 1024,
    max_headers: int = 100,
    max_body_size: int = 16 * 1024 * 1024,
    max_connections: int | None = None,
    max_pending_handshakes: int = 1024,
    allowed_origins: Iterable[str] | str | None = None,
    sock: socket.socket | None = None,
    backplane: Any = None,
    fast_transport: bool = False,
) -> Server:
    """Start a server on the running loop and return it (``Bun.serve``).

    ``fetch(req, server)`` answers HTTP requests (sync or async) and may call
    ``server.upgrade(req)``; ``websocket`` holds the WebSocket handlers and options.
    ``fast_transport=True`` listens through aiofastnet's compiled transport (less
    CPU per message, more memory per connection; see :mod:`bunws.fastnet`).
    """
    server = Server(
        fetch,
        websocket,  # type: ignore[arg-type]
        hostname=hostname,
        port=port,
        ssl=ssl,
        reuse_port=reuse_port,
        backlog=backlog,
        handshake_timeout=handshake_timeout,
        close_timeout=close_timeout,
        max_head_size=max_head_size,
        max_headers=max_headers,
        max_body_size=max_body_size,
        max_connections=max_connections,
        max_pending_handshakes=max_pending_handshakes,
        allowed_origins=allowed_origins,
        fast_transport=fast_transport,
    )
    await server.listen(sock)
    if backplane is not None:
        if not hasattr(backplane, "start") and callable(backplane):
            backplane = backplane()  # a factory, as run(workers=N) accepts
        await server.attach_backplane(backplane)
    return server


def new_event_loop(use_uvloop: bool | None = None) -> asyncio.AbstractEventLoop:
    """uvloop when installed (or asked for), else the stock loop."""
    if use_uvloop is not False:
        try:
            import uvloop
        except ImportError:
            if use_uvloop:
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(
    fetch: Callable[..., Any],
    websocket: WebSocketHandler | Mapping[str, Any] | None = None,
    *,
    uvloop: bool | None = None,
    on_start: Callable[[Server], Any] | None = None,
    workers: int = 1,
    **options: Any,
) -> None:
    """Serve until SIGINT/SIGTERM, then stop gracefully (1001 to every client).

    Uses uvloop when it is installed unless ``uvloop=False``. ``workers=N`` (N > 1)
    forks N processes sharing the port, supervised (see :mod:`bunws.workers`).
    """
    if workers != 1:
        from .workers import run_workers

        return run_workers(fetch, websocket, workers=workers, uvloop=uvloop, on_start=on_start, **options)

    serve_until_signalled(lambda: serve(fetch, websocket, **options), uvloop, on_start)


def serve_until_signalled(
    start: Callable[[], Awaitable[Server]],
    use_uvloop: bool | None,
    on_start: Callable[[Server], Any] | None,
) -> None:
    """Run ``await start()`` on a new loop, serve until SIGINT/SIGTERM, then stop."""
    import signal

    loop = new_event_loop(use_uvloop)
    asyncio.set_event_loop(loop)

    async def main() -> None:
        server = await start()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop_requested.set)
            except (NotImplementedError, RuntimeError):
                pass
        if on_start is not None:
            result = on_start(server)
            if asyncio.iscoroutine(result):
                await result
        await stop_requested.wait()
        await server.stop()

    try:
        loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
