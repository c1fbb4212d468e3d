"""One ASGI ``http`` request/response cycle on a bunws :class:`~bunws.protocol.Connection`.

The cycle runs as the connection's ``fetch`` for one request, so pipelined
requests are answered in order by the HTTP front as for native apps, with its
limits (431/413/503, ``handshake_timeout``). The answer is written to the
transport by the cycle itself (a :class:`~bunws.protocol.WrittenAnswer`): a body
given in one ``http.response.body`` goes out with ``Content-Length`` in one write;
a streamed one (``more_body``) goes out chunked, each ``send`` awaiting while the
client is not reading.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from typing import Any
from urllib.parse import unquote

from .errors import WebSocketError
from .http import Request, http_date, reason_phrase, simple_response
from .protocol import HTTP_WRITE_LIMIT, WrittenAnswer

__all__ = ["ASGI_VERSION", "BODY_CHUNK", "ClientDisconnected", "HTTPCycle", "asgi_headers", "encode_head", "keeps_alive"]

logger = logging.getLogger("bunws")

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}

# Request bodies reach the app in slices of this size (``more_body`` between them).
BODY_CHUNK = 64 * 1024

# RFC 9110 §5.1 / §5.5 for what an app puts in a response head: a token name, a
# value without CR, LF or NUL (anything else could split the response).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_NO_BODY_STATUSES = frozenset({204, 304})
KEEP_OPEN, CLOSE = WrittenAnswer(close=False), WrittenAnswer(close=True)

# (client, server) addresses per connection: asked once, not per request (uvloop
# answers get_extra_info("peername") with a system call each time).
_addresses: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()


class ClientDisconnected(WebSocketError, OSError):
    """``send`` on a connection that is gone (ASGI 2.4 asks for an ``OSError``)."""


# Request header lines already converted for ASGI, by their (name, value) str pair:
# clients repeat the same few (Host, User-Agent, Accept ...) on every request.
# Bounded in entries and in the length of what is kept.
_ASGI_PAIRS: dict[tuple[str, str], tuple[bytes, bytes]] = {}
_ASGI_PAIRS_MAX = 512
_ASGI_PAIR_CACHED_SIZE = 256


def asgi_headers(req: Request) -> list[tuple[bytes, bytes]]:
    """The request's headers as ASGI wants them: lower-cased names, bytes."""
    cache = _ASGI_PAIRS
    result = []
    for pair in req.headers.raw():
        converted = cache.get(pair)
        if converted is None:
            name, value = pair
            converted = (name.lower().encode("latin-1"), value.encode("latin-1"))
            if len(name) + len(value) <= _ASGI_PAIR_CACHED_SIZE:
                if len(cache) >= _ASGI_PAIRS_MAX:
                    cache.clear()
                cache[pair] = converted
        result.append(converted)
    return result


def keeps_alive(req: Request) -> bool:
    """The same rule llhttp applies to the request (RFC 9112 §9.3)."""
    tokens = req.headers.get("connection", "").lower()
    if req.http_version == "1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def encode_head(status: int, headers: Any, *, close: bool, chunked: bool, length: int | None) -> bytes:
    """A response head from the app's ``status`` and ``headers`` (bytes pairs)."""
    start, flags = _head_start(status, headers)
    if length is not None and flags & _HAS_LENGTH:
        block, flags = _encode_headers(tuple(headers), drop_length=True)
        start = _status_line(status) + block
    return start + _framing(flags, close=close, chunked=chunked, length=length)


# Head starts (status line and the app's headers) already validated and encoded, by
# status and (name, value) pairs: an app answers with the same few again and again
# (cProfile: the per-header checks were a tenth of an ASGI request). Bounded in
# entries and in size.
_HEAD_STARTS: dict[tuple[Any, ...], tuple[bytes, int]] = {}
_HEAD_STARTS_MAX = 256
_HEAD_START_CACHED_SIZE = 1024  # bytes; longer ones are encoded each time
_HAS_DATE, _HAS_LENGTH = 1, 2
_STATUS_LINES: dict[int, bytes] = {}
_date_line: list[Any] = ["", b""]  # http_date()'s value and its encoded header line


def _head_start(status: int, headers: Any) -> tuple[bytes, int]:
    """The status line and the app's headers, checked (RFC 9110 token names, no
    CR/LF/NUL in values) and encoded without Connection and Transfer-Encoding (the
    server frames the body); and flags: ``_HAS_DATE``, ``_HAS_LENGTH`` (the app gave
    ``Content-Length``)."""
    key = (status, *headers)
    cacheable = type(status) is int
    found = None
    if cacheable:
        try:
            found = _HEAD_STARTS.get(key)
        except TypeError:  # unhashable pairs (lists, bytearrays): encoded each time
            cacheable = False
    if found is None:
        block, flags = _encode_headers(key[1:], drop_length=False)
        found = (_status_line(status) + block, flags)
        if cacheable and len(found[0]) <= _HEAD_START_CACHED_SIZE:
            if len(_HEAD_STARTS) >= _HEAD_STARTS_MAX:
                _HEAD_STARTS.clear()
            _HEAD_STARTS[key] = found
    return found


def _encode_headers(pairs: tuple[Any, ...], *, drop_length: bool) -> tuple[bytes, int]:
    parts = []
    flags = 0
    for name, value in pairs:
        name, value = bytes(name), bytes(value)
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise ValueError(f"invalid response header {name!r}: {value!r}")
        lower = name.lower()
        if lower in (b"connection", b"transfer-encoding"):
            continue  # the server frames the body and decides about the connection
        if lower == b"content-length":
            if drop_length:
                continue
            flags |= _HAS_LENGTH
        elif lower == b"date":
            flags |= _HAS_DATE
        parts.append(name + b": " + value + b"\r\n")
    return b"".join(parts), flags


def _status_line(status: Any) -> bytes:
    line = _STATUS_LINES.get(status) if type(status) is int else None
    if line is None:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 999:
            raise ValueError(f"ASGI response status must be an int in 100..999, got {status!r}")
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status).encode())
    return line


def _framing(flags: int, *, close: bool, chunked: bool, length: int | None) -> bytes:
    """The end of a head: Date (unless the app gave one), Connection, the framing."""
    tail = b""
    if not flags & _HAS_DATE:
        date = http_date()
        if date is not _date_line[0]:
            _date_line[:] = [date, b"Date: " + date.encode() + b"\r\n"]
        tail = _date_line[1]
    if close:
        tail += b"Connection: close\r\n"
    if chunked:
        return tail + b"Transfer-Encoding: chunked\r\n\r\n"
    if length is not None:
        return tail + b"Content-Length: %d\r\n\r\n" % length
    return tail + b"\r\n"


class HTTPCycle:
    """The ``receive``/``send`` pair of one request, and the answer they write."""

    __slots__ = (
        "req", "conn", "transport", "body", "offset", "close", "head_only",
        "status", "headers", "started", "complete", "chunked", "length_given",
        "done", "write_timeout", "stream", "refused",
    )

    def __init__(self, req: Request, body: bytes, write_timeout: float) -> None:
        self.req = req
        self.conn = conn = req.connection
        self.transport = conn.transport
        self.body = body
        self.offset = 0
        # An Upgrade request the app answers ends the connection (what followed it
        # was not parsed as HTTP), so its answer says so.
        headers = req.headers
        self.close = (
            ("connection" in headers or req.http_version == "1.0") and not keeps_alive(req)
        ) or conn.server.stopping or "upgrade" in headers
        self.head_only = req.method == "HEAD"
        self.status = 0
        self.headers: Any = ()
        self.started = False  # http.response.start received
        self.complete = False  # the last body part was written
        self.chunked = False
        self.length_given = False  # the app sent its own Content-Length
        self.done: asyncio.Future[None] | None = None  # receive() after the body waits on it
        self.write_timeout = write_timeout
        self.stream = req.body_stream  # the body as it arrives, when the connection streams it
        self.refused = False  # the server answered 413 for the app (body too large)

    # ------------------------------------------------------------------ the scope
    @staticmethod
    def scope(req: Request, root_path: str, state: dict[str, Any] | None, extensions: dict[str, Any]) -> dict[str, Any]:
        """The ASGI ``http`` scope of ``req``."""
        target = req.target
        if target[:1] != "/" and "://" in target:
            # absolute-form (RFC 9112 §3.2.2): the path starts after the authority
            slash = target.find("/", target.index("://") + 3)
            target = "/" if slash < 0 else target[slash:]
        mark = target.find("?")
        raw_path, query = (target, "") if mark < 0 else (target[:mark], target[mark + 1:])
        conn = req.connection
        addresses = _addresses.get(conn)
        if addresses is None:
            transport = conn.transport
            addresses = _addresses[conn] = (
                _address(transport.get_extra_info("peername")), _address(transport.get_extra_info("sockname")))
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": req.http_version,
            "method": req.method,
            "scheme": req.scheme,
            "path": root_path + (unquote(raw_path) if "%" in raw_path else raw_path),
            "raw_path": (root_path + raw_path).encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": root_path,
            "headers": asgi_headers(req),
            "client": addresses[0],
            "server": addresses[1],
            "extensions": extensions,
        }
        if state is not None:
            scope["state"] = state.copy()
        return scope

    # ------------------------------------------------------------------ receive
    async def receive(self) -> dict[str, Any]:
        """The body in slices, then (once answered, or when the client goes)
        ``http.disconnect``."""
        stream = self.stream
        if stream is not None and self.done is None:
            return await self._receive_streamed(stream)
        body = self.body
        if stream is None and (self.offset < len(body) or (self.offset == 0 and self.done is None)):
            start = self.offset
            self.offset = start + BODY_CHUNK
            if self.offset >= len(body):
                self.done = self.conn.server.loop.create_future()
            return {"type": "http.request", "body": body[start:self.offset], "more_body": self.offset < len(body)}
        conn = self.conn
        while not self.complete and not self.transport.is_closing() and not conn.peer_closed:
            waiter = self.done
            if waiter is None or waiter.done():
                waiter = self.done = self.conn.server.loop.create_future()
            lost = conn.wait_writable()
            await asyncio.wait((waiter, lost), return_when=asyncio.FIRST_COMPLETED)
        return {"type": "http.disconnect"}

    async def _receive_streamed(self, stream: Any) -> dict[str, Any]:
        """The next part of a body the connection streams (bounded buffer)."""
        data = await stream.read()
        if stream.too_large:
            self._refuse_body()
            self.done = self.conn.server.loop.create_future()
            return {"type": "http.disconnect"}
        if not data and not stream.complete:  # the client left mid-body
            self.done = self.conn.server.loop.create_future()
            return {"type": "http.disconnect"}
        more = not (stream.complete and not stream.buffered)
        if not more:
            self.done = self.conn.server.loop.create_future()
        return {"type": "http.request", "body": data, "more_body": more}

    def _refuse_body(self) -> None:
        """The body went past ``max_body_size``: 413 if nothing of the answer is
        out yet (the app's own answer is then dropped), else end the connection."""
        self.close = True
        if not self.started or self.headers is not None:
            self.refused = True
            self.complete = True
            self.transport.write(simple_response(413, head_only=self.head_only))
        else:
            self.transport.close()

    # ------------------------------------------------------------------ send
    async def send(self, message: dict[str, Any]) -> None:
        """``http.response.start`` then ``http.response.body`` parts."""
        kind = message["type"]
        if self.refused:
            return  # the server answered 413 instead
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.status = message["status"]
            self.headers = message.get("headers", ())
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r} in an http cycle")
        if not self.started:
            raise RuntimeError("http.response.body before http.response.start")
        if self.complete:
            raise RuntimeError("http.response.body after the response was complete")
        transport = self.transport
        if transport.is_closing():
            return  # the client left; the app finds out through receive()
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        status = self.status
        bodiless = self.head_only or status in _NO_BODY_STATUSES or 100 <= status < 200
        if self.headers is not None:
            head = self._head(body, more, bodiless)
            self.headers = None  # the head is out
            if not more:
                self._finish()
                transport.write(head if bodiless else head + body)
                return
            transport.write(head if bodiless or not body else head + self._frame(body))
        elif not bodiless and body:
            transport.write(self._frame(body))
        if not more:
            self._finish()
            if self.chunked and not bodiless:
                transport.write(b"0\r\n\r\n")
            return
        if transport.get_write_buffer_size() > HTTP_WRITE_LIMIT:
            await self._drain()

    def _head(self, body: bytes, more: bool, bodiless: bool) -> bytes:
        start, flags = _head_start(self.status, self.headers)
        self.length_given = length_given = bool(flags & _HAS_LENGTH)
        close = self.close
        if bodiless and not self.head_only:
            tail = _framing(flags, close=close, chunked=False, length=None)
        elif not more and not length_given:
            tail = _framing(flags, close=close, chunked=False, length=len(body))
        elif length_given:
            tail = _framing(flags, close=close, chunked=False, length=None)
        elif self.req.http_version == "1.0":
            self.close = True  # no chunked coding for HTTP/1.0: the end of the body is the close
            tail = _framing(flags, close=True, chunked=False, length=None)
        else:
            self.chunked = True
            tail = _framing(flags, close=close, chunked=True, length=None)
        return start + tail

    def _frame(self, body: bytes) -> bytes:
        if not self.chunked:
            return body
        return b"%x\r\n%b\r\n" % (len(body), body)

    def _finish(self) -> None:
        self.complete = True
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def _drain(self) -> None:
        """Wait while the client is not reading; one that reads nothing for
        ``write_timeout`` seconds is cut off (its answer could never finish)."""
        transport = self.transport
        while transport.get_write_buffer_size() > HTTP_WRITE_LIMIT and not transport.is_closing():
            before = transport.get_write_buffer_size()
            try:
                await asyncio.wait_for(self.conn.wait_writable(), self.write_timeout)
            except asyncio.TimeoutError:
                if transport.get_write_buffer_size() >= before:
                    transport.abort()

    # ------------------------------------------------------------------ the answer
    async def run(self, app: Any, scope: dict[str, Any]) -> WrittenAnswer:
        """Run the app for this request; what the connection does after it."""
        try:
            await app(scope, self.receive, self.send)
        except Exception as exc:
            logger.error("ASGI app raised for %s %s", self.req.method, self.req.target, exc_info=exc)
            return self._failed()
        finally:
            self._finish_waiters()
        if self.refused:
            return CLOSE
        if not self.started:
            logger.error("ASGI app returned without a response for %s %s", self.req.method, self.req.target)
            return self._failed()
        if not self.complete:
            logger.error("ASGI app returned mid-response for %s %s", self.req.method, self.req.target)
            return CLOSE
        return CLOSE if self.close else KEEP_OPEN

    def _failed(self) -> WrittenAnswer:
        if self.refused:
            return CLOSE
        if not self.started or self.headers is not None:
            # Nothing written yet: a 500 still fits.
            self.transport.write(simple_response(500, head_only=self.head_only))
        return CLOSE

    def _finish_waiters(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None

