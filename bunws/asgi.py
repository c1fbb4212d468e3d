"""ASGI 3 apps (FastAPI, Starlette, Litestar ...) on the bunws engine.

:func:`serve_asgi` / :func:`run_asgi` start a :class:`~bunws.Server` whose
``fetch`` runs the app: each HTTP request is one :class:`~bunws.asgi_http.HTTPCycle`
in the HTTP front's ordered turn, each WebSocket one
:class:`~bunws.asgi_websocket.WebSocketBridge` on a native session. The lifespan
protocol runs here (:class:`Lifespan`). ``native={"/path": fetch}`` serves some
paths with native ``fetch`` (and the ``websocket`` handler) in the same server.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

from .asgi_http import ASGI_VERSION, HTTPCycle
from .asgi_websocket import (
    RECEIVE_QUEUE,
    TOPIC_EXTENSIONS,
    Topics,
    WebSocketBridge,
    bridge_handler,
    handshake_problem,
    websocket_scope,
)
from .errors import InvalidArgument, InvalidType
from .http import Request
from .options import WebSocketHandler
from .server import Server, serve, serve_until_signalled

__all__ = ["ASGIFetch", "Lifespan", "LifespanFailed", "run_asgi", "serve_asgi", "topics"]

logger = logging.getLogger("bunws")

# Options of serve_asgi that configure ASGI WebSockets (the native handler's names).
WEBSOCKET_OPTIONS = (
    "max_payload_length", "idle_timeout", "send_pings", "publish_to_self",
    "per_message_deflate", "max_fragments",
)
SEND_LIMIT = 1024 * 1024  # bytes a WebSocket may buffer before an ASGI send awaits

# Where asyncio can start a task eagerly (3.12+), an app that answers without
# waiting (most requests) runs inside fetch() with a task of its own and its answer
# is fetch's return value: no second task and loop pass per request.
EAGER_TASKS = "eager_start" in inspect.signature(asyncio.Task).parameters


class LifespanFailed(RuntimeError):
    """The app reported ``lifespan.startup.failed`` (or raised during startup with
    ``lifespan="on"``)."""


def topics(scope: Mapping[str, Any]) -> Topics:
    """Bun's topics from an ASGI scope served by bunws.

    For a ``websocket`` scope: ``subscribe``, ``unsubscribe``, ``is_subscribed``,
    ``publish`` (sender excluded unless ``publish_to_self``) and
    ``subscriber_count``. For an ``http`` scope: ``publish`` to every subscriber
    and ``subscriber_count``.
    """
    found = scope.get("bunws.topics") if isinstance(scope, Mapping) else None
    if found is None:
        raise InvalidArgument("topics() needs a scope from a bunws ASGI server")
    return found


class Lifespan:
    """The ASGI lifespan protocol for one process: ``startup()``, ``shutdown()``."""

    def __init__(self, app: Any, mode: str = "auto", timeout: float = 60.0) -> None:
        if mode not in ("auto", "on", "off"):
            raise InvalidArgument(f"lifespan must be 'auto', 'on' or 'off', got {mode!r}")
        self.app = app
        self.mode = mode
        self.timeout = timeout
        self.state: dict[str, Any] = {}
        self.supported = mode != "off"
        self._inbox: asyncio.Queue[dict[str, Any]] | None = None
        self._answers: asyncio.Queue[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Run ``lifespan.startup``; raises :class:`LifespanFailed` when it failed."""
        if not self.supported:
            return
        self._inbox, self._answers = asyncio.Queue(), asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._main())
        await self._inbox.put({"type": "lifespan.startup"})
        answer = await self._answer()
        if answer["type"] == "lifespan.startup.failed":
            raise LifespanFailed(answer.get("message", "") or "lifespan startup failed")
        if answer["type"] == "raised":
            if self.mode == "on":
                raise LifespanFailed(f"the app raised during lifespan startup: {answer['exc']!r}")
            logger.info("ASGI lifespan not supported by the app (%r): going on without it", answer["exc"])
            self.supported = False

    async def shutdown(self) -> None:
        """Run ``lifespan.shutdown`` (logged when it fails)."""
        if not self.supported or self._task is None or self._task.done():
            return
        assert self._inbox is not None
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            answer = await asyncio.wait_for(self._answer(), self.timeout)
        except asyncio.TimeoutError:
            logger.error("ASGI lifespan shutdown did not finish in %s s", self.timeout)
            self._task.cancel()
            return
        if answer["type"] != "lifespan.shutdown.complete":
            logger.error("ASGI lifespan shutdown failed: %s", answer.get("message") or answer.get("exc"))

    async def _answer(self) -> dict[str, Any]:
        assert self._answers is not None
        return await self._answers.get()

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        assert self._inbox is not None and self._answers is not None
        try:
            await self.app(scope, self._inbox.get, self._send)
        except BaseException as exc:  # noqa: BLE001 - reported to startup()/shutdown()
            if self.mode == "on" or not isinstance(exc, Exception):
                logger.error("ASGI lifespan raised", exc_info=exc)
            await self._answers.put({"type": "raised", "exc": exc})
            if not isinstance(exc, Exception):
                raise

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._answers is not None
        await self._answers.put(message)


class ASGIFetch:
    """The ``fetch`` of a server running an ASGI app (one per process)."""

    def __init__(
        self,
        app: Any,
        *,
        root_path: str = "",
        native: Mapping[str, Callable[..., Any]] | None = None,
        send_limit: int = SEND_LIMIT,
        state: dict[str, Any] | None = None,
        accept_headers: list[tuple[bytes, bytes]] | None = None,
        receive_window: int = RECEIVE_QUEUE,
        hang_up_on_app_end: bool = False,
    ) -> None:
        if not callable(app):
            raise InvalidType("app must be an ASGI callable")
        if not isinstance(root_path, str):
            raise InvalidType("root_path must be a str")
        self.app = app
        self.root_path = root_path.rstrip("/")
        self.native = dict(native or {})
        for path, fetch in self.native.items():
            if not isinstance(path, str) or not path.startswith("/") or not callable(fetch):
                raise InvalidType("native must map paths ('/...') to fetch functions")
        self.send_limit = send_limit
        self.state = state
        self.accept_headers = accept_headers or []  # added to every 101 (uvicorn's Server, Date)
        self.receive_window = receive_window
        self.hang_up_on_app_end = hang_up_on_app_end
        self._server_topics: Topics | None = None
        self._started: asyncio.Future[None] | None = None  # set while lifespan startup runs

    def __call__(self, req: Request, server: Server) -> Any:
        """Route ``req`` to a native ``fetch`` or the app (a coroutine)."""
        if self.native:
            fetch = self._native_fetch(req.path)
            if fetch is not None:
                return fetch(req, server)
        upgrade = req.headers.get("upgrade")
        if upgrade is not None and upgrade.lower() == "websocket":
            return self._websocket(req, server)
        if self._started is None and (req.body_stream is not None or not req.body_size):
            # Nothing to wait for first: the cycle's coroutine is fetch's answer
            # (one coroutine less per request than going through _http).
            cycle, scope = self._cycle(req, server, b"")
            answer = cycle.run(self.app, scope)
        else:
            answer = self._http(req, server)
        if EAGER_TASKS:
            task = asyncio.Task(answer, loop=server.loop, eager_start=True)
            if task.done():
                return task.result()
            return task
        return answer

    def streams_body(self, req: Request) -> bool:
        """Asked by the connection once ``req``'s head is parsed: the app gets the
        body as it arrives (``http.request`` with ``more_body``); native paths and
        Upgrade requests keep theirs read whole first."""
        if "upgrade" in req.headers:
            return False
        return not self.native or self._native_fetch(req.path) is None

    def _native_fetch(self, path: str) -> Callable[..., Any] | None:
        for prefix, fetch in self.native.items():
            if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
                return fetch
        return None

    def _topics(self, server: Server) -> Topics:
        found = self._server_topics
        if found is None:
            found = self._server_topics = Topics(server)
        return found

    async def _http(self, req: Request, server: Server) -> Any:
        if self._started is not None:
            await self._started
        body = b"" if req.body_stream is not None else await req.body()
        cycle, scope = self._cycle(req, server, body)
        return await cycle.run(self.app, scope)

    def _cycle(self, req: Request, server: Server, body: bytes) -> tuple[HTTPCycle, dict[str, Any]]:
        cycle = HTTPCycle(req, body, server.handshake_timeout)
        scope = HTTPCycle.scope(req, self.root_path, self.state, {})
        scope["bunws.topics"] = self._server_topics or self._topics(server)
        return cycle, scope

    async def _websocket(self, req: Request, server: Server) -> Any:
        if self._started is not None:
            await self._started
        problem = handshake_problem(req)
        if problem is not None:
            return problem
        bridge = WebSocketBridge(
            req, server, self.send_limit, self.accept_headers, self.receive_window, self.hang_up_on_app_end)
        extensions: dict[str, Any] = {"websocket.http.response": {}}
        for name in TOPIC_EXTENSIONS:
            extensions[name] = {}
        scope = websocket_scope(req, self.root_path, self.state, extensions)
        scope["bunws.topics"] = bridge.topics
        return await bridge.handshake(self.app, scope)

    # lifespan in a worker (started after the socket listens) ---------------------
    def hold_requests(self) -> None:
        """Requests wait until :meth:`release_requests` (lifespan startup runs)."""
        self._started = asyncio.get_running_loop().create_future()

    def release_requests(self) -> None:
        """Let the requests held by :meth:`hold_requests` run."""
        started, self._started = self._started, None
        if started is not None and not started.done():
            started.set_result(None)


def _split_options(app: Any, options: dict[str, Any]) -> tuple[ASGIFetch, Lifespan, WebSocketHandler, dict[str, Any]]:
    """serve_asgi's options: the ASGI ones, the WebSocket ones, serve()'s."""
    options = dict(options)
    lifespan = Lifespan(app, options.pop("lifespan", "auto"))
    native = options.pop("native", None)
    native_handler = options.pop("websocket", None)
    if isinstance(native_handler, Mapping):
        native_handler = WebSocketHandler(**native_handler)
    ws_options = {name: options.pop(name) for name in WEBSOCKET_OPTIONS if name in options}
    if native_handler is not None and ws_options:
        raise InvalidArgument(
            f"with websocket= the native handler's options hold for every socket; drop {sorted(ws_options)}")
    fetch = ASGIFetch(
        app,
        root_path=options.pop("root_path", ""),
        native=native,
        send_limit=options.pop("send_limit", SEND_LIMIT),
        state=lifespan.state,
    )
    return fetch, lifespan, bridge_handler(ws_options, native_handler), options


async def serve_asgi(app: Any, **options: Any) -> Server:
    """Run the lifespan startup, then serve ``app`` on the running loop; returns the
    :class:`~bunws.Server` (its ``stop()`` runs the lifespan shutdown).

    Options: ``serve()``'s (``hostname``, ``port``, limits, ``ssl``, ``backplane``
    ...), ``root_path``, ``lifespan`` (``"auto"``, ``"on"``, ``"off"``),
    ``send_limit`` (bytes a WebSocket buffers before ``send`` awaits), the
    WebSocket options of :class:`~bunws.WebSocketHandler` (``max_payload_length``,
    ``idle_timeout``, ``send_pings``, ``publish_to_self``, ``per_message_deflate``,
    ``max_fragments``), and ``native={"/path": fetch}`` with ``websocket=handler``
    for paths served by native handlers.
    """
    fetch, lifespan, handler, serve_options = _split_options(app, options)
    await lifespan.startup()
    try:
        server = await serve(fetch, handler, **serve_options)
    except BaseException:
        await lifespan.shutdown()
        raise
    server.on_stop(lifespan.shutdown)
    return server


def run_asgi(
    app: Any,
    *,
    uvloop: bool | None = None,
    on_start: Callable[[Server], Any] | None = None,
    workers: int = 1,
    **options: Any,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM (``serve_asgi``'s options; ``workers=N``
    forks N processes, each with its own lifespan)."""
    if workers == 1:
        _run_one(app, uvloop, on_start, options)
        return
    from .workers import run_workers

    fetch, lifespan, handler, serve_options = _split_options(app, options)

    async def started(server: Server) -> None:
        fetch.hold_requests()
        try:
            await lifespan.startup()
        finally:
            fetch.release_requests()
        server.on_stop(lifespan.shutdown)
        if on_start is not None:
            result = on_start(server)
            if asyncio.iscoroutine(result):
                await result

    run_workers(fetch, handler, workers=workers, uvloop=uvloop, on_start=started, **serve_options)


def _run_one(app: Any, use_uvloop: bool | None, on_start: Callable[[Server], Any] | None, options: dict[str, Any]) -> None:
    serve_until_signalled(lambda: serve_asgi(app, **options), use_uvloop, on_start)
