"""The WebSocket client: ``bunws.connect()`` and :class:`ClientConnection`.

The API follows ``websockets.asyncio.client``, so moving a client over is a
one-line change; the per-message path is the compiled ``bunws._client.ClientCore``
(masking, parsing, the receive queue and the write buffer) on the same codec and
permessage-deflate as the server. This module is the readable rest: opening
(timeouts, redirects, proxies, TLS), the closing handshake, keepalive, errors.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping
from typing import Any
from urllib.parse import urljoin

from ._client import ClientCore
from ._frame import FrameParser, Opcode, close_reason_bytes
from ._wscore import encode_text
from .client_handshake import (
    DEFLATE_OFFER,
    ResponseReader,
    Target,
    build_request,
    check_response,
    new_key,
    parse_uri,
)
from .client_transport import choose_proxy, open_connection
from .errors import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidArgument,
    InvalidHandshake,
    InvalidStatus,
    InvalidType,
    OpenTimeout,
)
from .http import Headers

__all__ = ["ClientConnection", "connect", "process_exception"]

USER_AGENT = "Python/bunws"
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_OK_CODES = frozenset({1000, 1001, 1005})
_CONNECTING, _OPEN, _CLOSING, _CLOSED = range(4)


def process_exception(exc: Exception) -> Exception | None:
    """The default retry rule of ``async for ws in connect(...)``: None (retry) for
    network errors, timeouts and 500/502/503/504 answers; the error otherwise."""
    if isinstance(exc, (OSError, TimeoutError, EOFError)):
        return None
    if isinstance(exc, InvalidStatus) and exc.status in _RETRY_STATUSES:
        return None
    return exc


def _int_option(name: str, value: object, low: int, allow_none: bool) -> int:
    if value is None and allow_none:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidType(f"{name} must be an int{' or None' if allow_none else ''}, "
                          f"got {type(value).__name__}")
    if value < low:
        raise InvalidArgument(f"{name} must be >= {low}, got {value}")
    return value


def _seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidType(f"{name} must be a number or None, got {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise InvalidArgument(f"{name} must be a positive finite number, got {value}")
    return float(value)


def _header_list(headers: object) -> list[tuple[str, str]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    try:
        pairs = [(name, value) for name, value in items]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InvalidType("additional_headers must be a mapping or (name, value) pairs") from None
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidType("additional_headers names and values must be str")
    return pairs


class ClientConnection:
    """One open client WebSocket (what :func:`connect` returns).

    ``recv`` returns ``str`` for text and ``bytes`` for binary messages; ``send``
    takes ``str``, bytes-like, or an iterable of fragments of one type.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, options: _Options) -> None:
        self._loop = loop
        self._options = options
        self._core = ClientCore(self, loop, options.write_limit, options.max_queue)
        self._state = _CONNECTING
        self._reader = ResponseReader()
        self._head_done = False
        self._opened: asyncio.Future[None] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._key = new_key()
        self._offered_deflate = options.compression is not None
        self.request_headers: Headers = Headers()
        """Headers of the upgrade request the client sent."""
        self.response_headers: Headers = Headers()
        """Headers of the server's 101 answer."""
        self.subprotocol: str | None = None
        """The subprotocol the server chose, or None."""
        self.extensions: list[str] = []
        """The extensions in use (``["permessage-deflate; ..."]`` or empty)."""
        self.close_code: int | None = None
        """The server's close code (1006 without a Close frame); None while open."""
        self.close_reason: str | None = None
        """The server's close reason; None while open."""
        self.latency: float = 0.0
        """Round-trip time of the latest Ping answered, in seconds."""
        self._sent_close: tuple[int, str] | None = None
        self._received_close: tuple[int, str] | None = None
        self._pings: dict[bytes, tuple[asyncio.Future[float], float]] = {}
        self._keepalive: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._sending_fragments = False

    # ------------------------------------------------------------ session interface
    def connection_made(self, transport: asyncio.Transport) -> None:
        """Called by the core once the socket is connected: send the request."""
        self._transport = transport
        options = self._options
        headers = options.headers
        request = build_request(
            options.target,
            self._key,
            headers=headers,
            subprotocols=options.subprotocols,
            origin=options.origin,
            extensions=DEFLATE_OFFER if self._offered_deflate else None,
            user_agent=options.user_agent,
        )
        self.request_headers = Headers(
            line.split(": ", 1)  # type: ignore[misc]
            for line in request.decode("latin-1").split("\r\n")[1:]
            if ": " in line
        )
        transport.write(request)

    def handshake_data(self, data: bytes) -> None:
        """Bytes of the server's answer (before the core parses frames)."""
        if self._opened.done():
            return
        try:
            if not self._head_done:
                if not self._reader.feed_head(data):
                    return
                self._head_done = True
                if self._reader.status == 101:
                    self._finish_handshake()
                    return
                data = self._reader.leftover
            if self._reader.feed_body(data):
                self._refused()
        except Exception as exc:
            self._fail_opening(exc)

    def eof_received(self) -> None:
        """The server shut its side: end of a refusal's body, or of the stream."""
        if not self._opened.done() and self._head_done:
            self._reader.feed_body(b"", eof=True)
            self._refused()

    def _refused(self) -> None:
        reader = self._reader
        self._fail_opening(InvalidStatus(reader.status, reader.reason, reader.headers, reader.body))

    def _fail_opening(self, exc: Exception) -> None:
        if not self._opened.done():
            self._opened.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()

    def _finish_handshake(self) -> None:
        options = self._options
        reader = self._reader
        protocol, deflate = check_response(
            reader, self._key, options.subprotocols, self._offered_deflate
        )
        self.response_headers = reader.headers  # type: ignore[assignment]
        self.subprotocol = protocol
        deflater = inflater = None
        if deflate is not None:
            deflater = deflate.make_deflater()
            inflater = deflate.make_inflater()
            self.extensions = [deflate.response]
        parser = FrameParser(
            server=False, max_payload_length=options.max_size, inflater=inflater
        )
        self._state = _OPEN
        self._opened.set_result(None)
        self._core.start(parser, deflater, reader.leftover)
        self._schedule_keepalive()

    def on_pong(self, payload: bytes) -> None:
        """A Pong: resolve its Ping and every earlier one still waiting."""
        if payload not in self._pings:
            return
        now = time.monotonic()
        for key in list(self._pings):
            waiter, sent_at = self._pings.pop(key)
            if not waiter.done():
                waiter.set_result(now - sent_at)
            if key == payload:
                self.latency = now - sent_at
                break

    def on_close(self, code: int, reason: str) -> None:
        """The server's Close: answer it (once) and wait for the server to end TCP."""
        self._received_close = (code, reason)
        if self._sent_close is None:
            self._send_close(code if code != 1005 else None, reason if code != 1005 else "")
        self._state = _CLOSING
        self._arm_close_timer()

    def on_protocol_error(self, code: int, reason: str) -> None:
        """The server broke the protocol: Close with its code, then end."""
        if self._sent_close is None:
            self._send_close(code, reason)
        self._state = _CLOSING
        self._arm_close_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is gone: settle every waiter."""
        self._state = _CLOSED
        if not self._opened.done():
            self._opened.set_exception(
                ConnectionError("the server closed the connection during the handshake")
            )
        received = self._received_close or (1006, "")
        self.close_code, self.close_reason = received
        for timer in (self._keepalive, self._close_timer):
            if timer is not None:
                timer.cancel()
        for waiter, _ in self._pings.values():
            if not waiter.done():
                waiter.set_exception(self._closed_error())
        self._pings.clear()
        if not self._closed.done():
            self._closed.set_result(None)

    # ------------------------------------------------------------ internals
    def _send_close(self, code: int | None, reason: str) -> None:
        payload = b"" if code is None else code.to_bytes(2, "big") + close_reason_bytes(reason)
        self._sent_close = (1005, "") if code is None else (code, reason)
        self._core.send_frame(Opcode.CLOSE, payload, True)
        self._core.flush()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and self._transport is not None:
            transport = self._transport
            self._close_timer = self._loop.call_later(
                self._options.close_timeout or 1e9, transport.abort
            )

    def _schedule_keepalive(self) -> None:
        interval = self._options.ping_interval
        if interval is not None:
            self._keepalive = self._loop.call_later(interval, self._keepalive_ping)

    def _keepalive_ping(self) -> None:
        if self._state != _OPEN:
            return
        waiter = self._ping_now(None)
        timeout = self._options.ping_timeout
        if timeout is not None:
            timer = self._loop.call_later(timeout, self._keepalive_expired, waiter)
            waiter.add_done_callback(lambda _: timer.cancel())
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._schedule_keepalive()

    def _keepalive_expired(self, waiter: asyncio.Future[float]) -> None:
        if not waiter.done() and self._state == _OPEN:
            self._send_close(1011, "keepalive ping timeout")
            self._state = _CLOSING
            self._arm_close_timer()

    def _ping_now(self, data: bytes | None) -> asyncio.Future[float]:
        if data is None:
            data = os.urandom(4)
            while data in self._pings:
                data = os.urandom(4)
        elif data in self._pings:
            raise ConcurrencyError("a ping with the same payload is already waiting")
        waiter: asyncio.Future[float] = self._loop.create_future()
        self._pings[data] = (waiter, time.monotonic())
        self._core.send_frame(Opcode.PING, data, True)
        return waiter

    def _closed_error(self) -> ConnectionClosed:
        received = self._received_close or (1006, "")
        sent = self._sent_close
        ok = received[0] in _OK_CODES and (sent is None or sent[0] in _OK_CODES)
        if self._received_close is None:
            ok = False
        cls = ConnectionClosedOK if ok else ConnectionClosedError
        return cls(received[0], received[1], *(sent or (None, "")))

    def _check_open(self) -> None:
        if self._state != _OPEN:
            raise self._closed_error()

    async def _drain(self) -> None:
        await self._core.drain_waiter_future()
        if self._core.lost:
            raise self._closed_error()

    # ------------------------------------------------------------ public API
    async def open(self) -> None:
        """Connect (TCP, proxy tunnel, TLS) and run the opening handshake;
        :func:`connect` calls it once, within ``open_timeout``."""
        options = self._options
        proxy = None if options.sock is not None else choose_proxy(options.proxy, options.target)
        transport, _ = await open_connection(
            self._loop,
            lambda: self._core,
            options.target,
            ssl=options.ssl,
            server_hostname=options.server_hostname,
            proxy=proxy,
            sock=options.sock,
        )
        try:
            await self._opened
        except BaseException:
            transport.abort()
            raise

    async def recv(self) -> str | bytes:
        """The next message: ``str`` (text) or ``bytes`` (binary).

        Raises:
            ConnectionClosedOK: the connection closed normally.
            ConnectionClosedError: it closed abnormally (or on a protocol error).
            ConcurrencyError: another coroutine is already waiting in ``recv``.
        """
        core = self._core
        message = core.next_message()
        if message is not None:
            return message
        while True:
            if core.stopped:
                await asyncio.shield(self._closed)
                raise self._closed_error()
            waiter = core.message_waiter()
            if waiter is None:
                raise ConcurrencyError("another coroutine is already waiting in recv()")
            await waiter
            message = core.next_message()
            if message is not None:
                return message

    async def send(self, message: str | bytes | bytearray | memoryview | Iterable[Any]) -> None:
        """Send a text (``str``) or binary (bytes-like) message, or an iterable of
        fragments of one type as one fragmented message; waits while more than
        ``write_limit`` bytes are buffered.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            InvalidType: not str, bytes-like or an iterable of them, or mixed types.
        """
        if self._state != _OPEN or self._sending_fragments:
            if self._sending_fragments and self._state == _OPEN:
                raise ConcurrencyError("send() while another send() streams fragments")
            self._check_open()
        core = self._core
        if type(message) is str:
            wait = core.send_message(1, encode_text(message))
        elif type(message) is bytes:
            wait = core.send_message(2, message)
        elif isinstance(message, (bytearray, memoryview)):
            wait = core.send_message(2, bytes(message))
        elif isinstance(message, Mapping) or not (
            isinstance(message, Iterable) or hasattr(message, "__aiter__")
        ):
            raise InvalidType(f"send expects str, bytes-like or an iterable, got "
                              f"{type(message).__name__}")
        else:
            await self._send_fragments(message)
            return
        if wait:
            await self._drain()

    async def _send_fragments(self, fragments: Any) -> None:
        core = self._core
        self._sending_fragments = True
        kind = 0
        first = True
        previous: bytes | None = None
        try:
            async for fragment in _each(fragments):
                if isinstance(fragment, str):
                    data, this = encode_text(fragment), 1
                elif isinstance(fragment, (bytes, bytearray, memoryview)):
                    data, this = bytes(fragment), 2
                else:
                    raise InvalidType(
                        f"fragments must be str or bytes-like, got {type(fragment).__name__}"
                    )
                if not kind:
                    kind = this
                elif this != kind:
                    raise InvalidType("fragments of one message must all be str or all bytes")
                if previous is not None:
                    self._check_open()
                    if core.send_frame(kind if first else 0, previous, False):
                        await self._drain()
                    first = False
                previous = data
            if previous is not None:
                self._check_open()
                if core.send_frame(kind if first else 0, previous, True):
                    await self._drain()
        except Exception:
            if not first and self._state == _OPEN:
                # Part of a message is on the wire: the stream cannot be resumed.
                self._state = _CLOSING
                self._send_close(1011, "incomplete fragmented message")
                self._arm_close_timer()
            raise
        finally:
            self._sending_fragments = False

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start (or finish) the closing handshake and wait until the connection is
        gone, at most ``close_timeout`` seconds before the socket is dropped."""
        if not isinstance(code, int) or isinstance(code, bool):
            raise InvalidType(f"close code must be an int, got {type(code).__name__}")
        if not isinstance(reason, str):
            raise InvalidType(f"close reason must be a str, got {type(reason).__name__}")
        if not (code == 1000 or 3000 <= code <= 4999 or 1001 <= code <= 1003
                or 1007 <= code <= 1014):
            raise InvalidArgument(f"close code {code} may not be sent")
        if self._state == _OPEN:
            self._state = _CLOSING
            self._send_close(code, reason)
            self._arm_close_timer()
        await asyncio.shield(self._closed)

    async def wait_closed(self) -> None:
        """Wait until the connection is gone."""
        await asyncio.shield(self._closed)

    async def ping(self, data: str | bytes | None = None) -> asyncio.Future[float]:
        """Send a Ping; returns a future that resolves to the round-trip time in
        seconds when the Pong arrives (random 4 bytes when ``data`` is None)."""
        self._check_open()
        if isinstance(data, str):
            data = encode_text(data)
        elif data is not None:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise InvalidType(f"ping expects str or bytes-like, got {type(data).__name__}")
            data = bytes(data)
        if data is not None and len(data) > 125:
            raise InvalidArgument("a ping payload is at most 125 bytes")
        return self._ping_now(data)

    async def pong(self, data: str | bytes = b"") -> None:
        """Send an unsolicited Pong."""
        self._check_open()
        payload = encode_text(data) if isinstance(data, str) else bytes(data)
        if len(payload) > 125:
            raise InvalidArgument("a pong payload is at most 125 bytes")
        self._core.send_frame(Opcode.PONG, payload, True)

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        try:
            while True:
                yield await self.recv()
        except ConnectionClosedOK:
            return

    @property
    def remote_address(self) -> Any:
        """The server's socket address (``(host, port)`` or ``(host, port, flow, scope)``)."""
        return None if self._transport is None else self._transport.get_extra_info("peername")

    @property
    def local_address(self) -> Any:
        """The client's socket address."""
        return None if self._transport is None else self._transport.get_extra_info("sockname")

    @property
    def buffered_amount(self) -> int:
        """Bytes queued for sending and not yet taken by the kernel."""
        return self._core.buffered_amount

    @property
    def state(self) -> str:
        """``"CONNECTING"``, ``"OPEN"``, ``"CLOSING"`` or ``"CLOSED"``."""
        return ("CONNECTING", "OPEN", "CLOSING", "CLOSED")[self._state]

    async def __aenter__(self) -> ClientConnection:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


async def _each(source: Any) -> AsyncIterator[Any]:
    if hasattr(source, "__aiter__"):
        async for item in source:
            yield item
    else:
        for item in source:
            yield item


class _Options:
    """Checked arguments of one :func:`connect` call."""

    def __init__(self, uri: str, kw: dict[str, Any]) -> None:
        self.target: Target = parse_uri(uri)
        self.headers = _header_list(kw["additional_headers"])
        subprotocols = kw["subprotocols"]
        if subprotocols is not None:
            if isinstance(subprotocols, str) or not all(isinstance(p, str) for p in subprotocols):
                raise InvalidType("subprotocols must be a list of str")
            subprotocols = list(subprotocols)
        self.subprotocols: list[str] | None = subprotocols
        origin = kw["origin"]
        if origin is not None and not isinstance(origin, str):
            raise InvalidType("origin must be a str")
        self.origin: str | None = origin
        compression = kw["compression"]
        if compression not in ("deflate", None):
            raise InvalidArgument(f'compression must be "deflate" or None, got {compression!r}')
        self.compression = compression
        self.open_timeout = _seconds("open_timeout", kw["open_timeout"])
        self.ping_interval = _seconds("ping_interval", kw["ping_interval"])
        self.ping_timeout = _seconds("ping_timeout", kw["ping_timeout"])
        self.close_timeout = _seconds("close_timeout", kw["close_timeout"])
        max_size = _int_option("max_size", kw["max_size"], 0, True)
        self.max_size = max_size if kw["max_size"] is not None else 0x7FFFFFFFFFFFFFFF
        self.max_queue = _int_option("max_queue", kw["max_queue"], 1, True)
        self.write_limit = _int_option("write_limit", kw["write_limit"], 0, False)
        self.ssl = kw["ssl"]
        server_hostname = kw["server_hostname"]
        if server_hostname is not None and not isinstance(server_hostname, str):
            raise InvalidType("server_hostname must be a str")
        self.server_hostname = server_hostname
        self.proxy = kw["proxy"]
        if self.proxy not in (True, None, False) and not isinstance(self.proxy, str):
            raise InvalidType("proxy must be a str, True or None")
        self.sock = kw["sock"]
        user_agent = kw["user_agent_header"]
        if user_agent is not None and not isinstance(user_agent, str):
            raise InvalidType("user_agent_header must be a str or None")
        self.user_agent = user_agent
        self.process_exception = kw["process_exception"]
        if not callable(self.process_exception):
            raise InvalidType("process_exception must be callable")

    def redirected(self, location: str) -> _Options:
        """The same options for the URI a redirect points to."""
        new = object.__new__(_Options)
        new.__dict__.update(self.__dict__)
        target = parse_uri(location)
        if self.target.secure and not target.secure:
            raise InvalidHandshake(f"refusing a redirect from wss:// to {location!r}")
        new.target = target
        new.sock = None
        return new


class connect:
    """Open a client WebSocket, the way ``websockets.asyncio.client.connect`` does.

    ``ws = await connect(uri)``, ``async with connect(uri) as ws``, or
    ``async for ws in connect(uri)`` (reconnects with jittered exponential backoff
    while ``process_exception`` returns None for the error).

    Raises (when opening):
        InvalidURI, InvalidArgument, InvalidType: bad arguments.
        InvalidStatus: the server answered with another status than 101.
        InvalidHandshake: the server's answer broke RFC 6455.
        OpenTimeout: not open within ``open_timeout``.
        OSError: the network failed.
    """

    BACKOFF_INITIAL_DELAY = 5.0
    """Upper bound of the random first delay before a reconnection, in seconds."""
    BACKOFF_MIN_DELAY = 3.1
    """First delay between two failed attempts, in seconds."""
    BACKOFF_MAX_DELAY = 90.0
    """Longest delay between two attempts, in seconds."""
    BACKOFF_FACTOR = 1.618
    """Growth of the delay after each failed attempt."""

    def __init__(
        self,
        uri: str,
        *,
        additional_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        subprotocols: Iterable[str] | None = None,
        origin: str | None = None,
        compression: str | None = "deflate",
        open_timeout: float | None = 10,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        close_timeout: float | None = 10,
        max_size: int | None = 1024 * 1024,
        max_queue: int | None = 16,
        write_limit: int = 32 * 1024,
        ssl: Any = None,
        server_hostname: str | None = None,
        proxy: str | bool | None = True,
        sock: Any = None,
        user_agent_header: str | None = USER_AGENT,
        process_exception: Callable[[Exception], Exception | None] = process_exception,
    ) -> None:
        self._options = _Options(uri, dict(locals()))
        self._connection: ClientConnection | None = None

    async def _open(self) -> ClientConnection:
        loop = asyncio.get_running_loop()
        timeout = self._options.open_timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._follow_redirects(loop)
        except TimeoutError as exc:
            if isinstance(exc, OpenTimeout):
                raise
            raise OpenTimeout(f"not open after {timeout} s") from None

    async def _follow_redirects(self, loop: asyncio.AbstractEventLoop) -> ClientConnection:
        options = self._options
        for _ in range(MAX_REDIRECTS + 1):
            try:
                return await self._open_once(loop, options)
            except InvalidStatus as exc:
                location = exc.headers.get("location") if exc.headers is not None else None
                if exc.status not in _REDIRECTS or location is None:
                    raise
                options = options.redirected(_redirect_uri(options.target.uri, location))
        raise InvalidHandshake(f"more than {MAX_REDIRECTS} redirects")

    async def _open_once(self, loop: asyncio.AbstractEventLoop,
                         options: _Options) -> ClientConnection:
        connection = ClientConnection(loop, options)
        await connection.open()
        return connection

    def __await__(self) -> Generator[Any, None, ClientConnection]:
        return self._open().__await__()

    async def __aenter__(self) -> ClientConnection:
        self._connection = await self._open()
        return self._connection

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def __aiter__(self) -> AsyncIterator[ClientConnection]:
        delays = None
        while True:
            try:
                connection = await self._open()
            except Exception as exc:
                error = self._options.process_exception(exc)
                if error is exc:
                    raise
                if error is not None:
                    raise error from exc
                if delays is None:
                    delays = _backoff(self)
                await asyncio.sleep(next(delays))
                continue
            delays = None
            try:
                yield connection
            except GeneratorExit:
                await connection.close()
                raise
            await connection.close()


def _redirect_uri(current: str, location: str) -> str:
    """Where a redirect points: ``location`` resolved against the current URI, with
    http/https spelt ws/wss (urljoin knows only the HTTP schemes' rules)."""
    base = "http" + current[2:]  # ws:// -> http://, wss:// -> https://
    target = urljoin(base, location)
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if target.startswith(http):
            return ws + target[len(http):]
    return target


def _backoff(settings: connect) -> Generator[float, None, None]:
    """Jittered exponential backoff: a random first delay, then growing ones."""
    yield random.random() * settings.BACKOFF_INITIAL_DELAY
    delay = settings.BACKOFF_MIN_DELAY
    while delay < settings.BACKOFF_MAX_DELAY:
        yield delay * (0.5 + random.random() / 2)
        delay *= settings.BACKOFF_FACTOR
    while True:
        yield settings.BACKOFF_MAX_DELAY
