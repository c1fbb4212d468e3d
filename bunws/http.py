"""HTTP/1.1 side of the server: requests, responses and the WebSocket handshake checks.

Parsing itself is done by ``httptools`` (llhttp) inside :mod:`bunws.protocol`; this
module holds the objects handed to ``fetch`` and the pure functions that validate an
upgrade (RFC 6455 §4.2.1) and serialise answers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json as _json
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from .errors import ClosedError, HandshakeError, InvalidArgument, InvalidType

__all__ = ["Headers", "Request", "Response", "accept_key", "check_host", "check_upgrade_request"]

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# RFC 9110 §5.1: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: a field value is visible characters, SP/HTAB inside and obs-text
# (bytes 80-FF, sent as latin-1); control characters and anything past U+00FF can
# not be written on an HTTP/1.1 connection.
_BAD_FIELD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")
# RFC 9112 §3.2 / RFC 3986 §3.2.2: Host is uri-host [":" port]; uri-host is an
# IP-literal in brackets or a reg-name/IPv4 of unreserved, pct-encoded, sub-delims.
_HOST = re.compile(r"(?:\[[0-9A-Za-z:.%~_-]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")

# Headers the server writes itself in a 101 answer; user values for them are dropped
# (docs/bun-behaviour.md §11).
_RESERVED_101 = frozenset(
    {"upgrade", "connection", "sec-websocket-accept", "sec-websocket-extensions"}
)


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only view of HTTP headers.

    Repeated headers are joined with ``", "`` (RFC 9110 §5.3); :meth:`get_all` returns
    each value separately (use it for ``Set-Cookie``).
    """

    __slots__ = ("_raw", "_joined")

    def __init__(self, raw: Iterable[tuple[str, str]] = ()) -> None:
        self._raw: list[tuple[str, str]] = [(k, v) for k, v in raw]
        joined: dict[str, str] = {}
        for name, value in self._raw:
            key = name.lower()
            if key in joined:
                joined[key] = f"{joined[key]}, {value}"
            else:
                joined[key] = value
        self._joined = joined

    def __getitem__(self, name: str) -> str:
        return self._joined[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        """The value of ``name`` (case-insensitive, repeats joined), or ``default``."""
        # Direct lookup: Mapping.get goes through __getitem__ and a try/except.
        return self._joined.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._joined

    def __iter__(self) -> Iterator[str]:
        return iter(self._joined)

    def __len__(self) -> int:
        return len(self._joined)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in arrival order, one per header line."""
        key = name.lower()
        return [v for k, v in self._raw if k.lower() == key]

    def raw(self) -> list[tuple[str, str]]:
        """The headers in arrival order with their original spelling."""
        return list(self._raw)

    def __repr__(self) -> str:
        return f"Headers({self._raw!r})"


class Request:
    """An HTTP request as handed to ``fetch(req, server)``.

    The body has already been received (bounded by ``max_request_body_size``); the
    ``text()``/``json()``/``body()`` methods are coroutines to keep the shape of
    Bun's ``Request``.
    """

    __slots__ = (
        "method",
        "target",
        "headers",
        "http_version",
        "remote_address",
        "scheme",
        "_body",
        "_connection",
        "_upgraded",
        "_query",
        "_stream",
        "__weakref__",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes = b"",
        *,
        http_version: str = "1.1",
        remote_address: str | None = None,
        scheme: str = "http",
        connection: Any = None,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version
        self.remote_address = remote_address
        self.scheme = scheme
        self._body = body
        self._connection = connection
        self._upgraded = False
        self._query: dict[str, str] | None = None
        self._stream: Any = None

    @property
    def connection(self) -> Any:
        """The :class:`bunws.protocol.Connection` the request arrived on."""
        return self._connection

    @property
    def upgraded(self) -> bool:
        """Whether ``server.upgrade(req)`` succeeded."""
        return self._upgraded

    def mark_upgraded(self) -> None:
        """Record that ``server.upgrade(req)`` succeeded (a request upgrades once)."""
        self._upgraded = True

    @property
    def body_stream(self) -> Any:
        """The :class:`bunws.body_stream.BodyStream` the body arrives through while
        ``fetch`` runs, for a ``fetch`` that asked for it (``streams_body``); else
        ``None`` and the body was read whole first."""
        return self._stream

    def attach_body_stream(self, stream: Any) -> None:
        """The connection streams this request's body through ``stream`` (set once,
        before ``fetch`` runs)."""
        self._stream = stream

    @property
    def body_size(self) -> int:
        """Length of the request body in bytes (of a streamed one: what ``body()`` read)."""
        return len(self._body)

    @property
    def path(self) -> str:
        """The path part of the request target, without the query string."""
        target = self.target
        end = target.find("?")
        path = target if end < 0 else target[:end]
        if path.startswith(("http://", "https://")):  # absolute-form (RFC 9112 §3.2.2)
            slash = path.find("/", path.find("//") + 2)
            path = "/" if slash < 0 else path[slash:]
        return path or "/"

    @property
    def query_string(self) -> str:
        """The raw query string after ``?`` (``""`` when there is none)."""
        end = self.target.find("?")
        return "" if end < 0 else self.target[end + 1 :]

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; for a repeated name the first value wins."""
        if self._query is None:
            query: dict[str, str] = {}
            for key, value in parse_qsl(self.query_string, keep_blank_values=True):
                query.setdefault(key, value)
            self._query = query
        return self._query

    @property
    def url(self) -> str:
        """The absolute URL, as Bun's ``req.url``."""
        if self.target.startswith(("http://", "https://")):
            return self.target
        host = self.headers.get("host", "localhost")
        return f"{self.scheme}://{host}{self.target}"

    async def body(self) -> bytes:
        """The request body as ``bytes`` (read whole before ``fetch`` runs, or from
        what is left of :attr:`body_stream` now, bounded by ``max_request_body_size``); raises
        :class:`~bunws.errors.ClosedError` for a streamed body that cannot be had
        whole (the client left mid-body, it went past the limit, or the answer
        was given and the rest dropped)."""
        stream = self._stream
        if stream is not None:
            parts = [self._body]  # what earlier calls read
            while chunk := await stream.read():
                parts.append(chunk)
            if not stream.complete or stream.too_large or stream.discarding:
                raise ClosedError("the request body ended early (client gone or past max_body_size)")
            self._body = b"".join(parts)
        return self._body

    async def text(self) -> str:
        """The request body decoded as UTF-8 (invalid bytes become U+FFFD)."""
        return (await self.body()).decode("utf-8", errors="replace")

    async def json(self) -> Any:
        """The request body parsed as JSON."""
        return _json.loads(await self.body())

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target}>"


class Response:
    """An HTTP response returned from ``fetch``.

    ``body`` may be ``str`` (sent as UTF-8 ``text/plain``), bytes-like
    (``application/octet-stream``) or ``None``. Use :meth:`json` for JSON.
    """

    __slots__ = ("body", "status", "headers")

    def __init__(
        self,
        body: str | bytes | bytearray | memoryview | None = None,
        status: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        if not isinstance(status, int) or isinstance(status, bool):
            raise InvalidType(f"status must be an int, got {type(status).__name__}")
        if not 100 <= status <= 999:
            raise InvalidArgument(f"status must be in 100..999, got {status}")
        header_list = header_pairs(headers)
        names = {k.lower() for k, _ in header_list}
        if body is None:
            payload = b""
        elif isinstance(body, str):
            payload = body.encode("utf-8")
            if "content-type" not in names:
                header_list.append(("Content-Type", "text/plain;charset=utf-8"))
        elif isinstance(body, (bytes, bytearray, memoryview)):
            payload = bytes(body)
            if "content-type" not in names and payload:
                header_list.append(("Content-Type", "application/octet-stream"))
        else:
            raise InvalidType(
                f"Response body must be str, bytes-like or None, got {type(body).__name__}"
            )
        self.body = payload
        self.status = status
        self.headers = header_list

    @classmethod
    def json(
        cls,
        data: Any,
        status: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> Response:
        """A response whose body is ``data`` serialised as JSON (``application/json``)."""
        pairs = header_pairs(headers)
        if not any(k.lower() == "content-type" for k, _ in pairs):
            pairs.append(("Content-Type", "application/json;charset=utf-8"))
        return cls(_json.dumps(data, separators=(",", ":")).encode(), status, pairs)

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


def header_pairs(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
) -> list[tuple[str, str]]:
    """Validated ``(name, value)`` pairs for a response: names are RFC 9110 tokens,
    values have no control characters and fit latin-1 (surrounding blanks trimmed).
    Raises :class:`InvalidType` / :class:`InvalidArgument` when building the answer,
    so a bad header never reaches the wire half-written."""
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        items = list(headers.items())
    elif isinstance(headers, Iterable) and not isinstance(headers, (str, bytes)):
        items = list(headers)
    else:
        raise InvalidType("headers must be a mapping or an iterable of (name, value) pairs")
    pairs = []
    for item in items:
        try:
            name, value = item
        except (TypeError, ValueError):
            raise InvalidType("headers must be (name, value) pairs") from None
        name, value = str(name), str(value).strip(" \t")
        if not _TOKEN.fullmatch(name):
            raise InvalidArgument(f"invalid header name {name!r}: it must be an RFC 9110 token")
        bad = _BAD_FIELD_VALUE.search(value)
        if bad is not None:
            raise InvalidArgument(
                f"invalid value for header {name!r}: {bad.group()!r} at index {bad.start()} "
                "(HTTP/1.1 carries no control characters and nothing beyond U+00FF; "
                "percent- or otherwise encode it)"
            )
        pairs.append((name, value))
    return pairs


def check_host(headers: Iterable[tuple[str, str]], http_version: str) -> str | None:
    """Why the request's Host is unacceptable (RFC 9112 §3.2), or ``None``.

    HTTP/1.1 needs exactly one Host line with a valid ``host[:port]`` value (empty
    is allowed); HTTP/1.0 may omit it.
    """
    values = [value for name, value in headers if name.lower() == "host"]
    if len(values) > 1:
        return "more than one Host header"
    if not values:
        return None if http_version == "1.0" else "no Host header"
    if not _HOST.fullmatch(values[0].strip(" \t")):
        return f"invalid Host {values[0]!r}"
    return None


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1(key.encode("ascii") + _WS_GUID).digest()
    return binascii.b2a_base64(digest, newline=False).decode("ascii")  # b64encode's core, one frame less


def check_upgrade_request(req: Request) -> str:
    """Validate a WebSocket opening handshake (RFC 6455 §4.2.1, Bun's rules).

    Returns the ``Sec-WebSocket-Key``. Raises :class:`HandshakeError` with status 400
    when this is not a valid upgrade, or 426 when only the version is wrong (the
    server then answers 426 itself, as Bun does). The ``Connection`` header is not
    checked, as in Bun (docs/bun-behaviour.md §11).
    """
    headers = req.headers
    if req.method != "GET":
        raise HandshakeError(400, "WebSocket upgrade requires GET")
    if headers.get("upgrade", "").strip().lower() != "websocket":
        raise HandshakeError(400, "missing Upgrade: websocket")
    key = headers.get("sec-websocket-key", "").strip()
    if len(key) != 24:
        raise HandshakeError(400, "Sec-WebSocket-Key must be base64 of 16 bytes")
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise HandshakeError(400, "Sec-WebSocket-Key is not base64") from None
    if len(raw) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key must be base64 of 16 bytes")
    if headers.get("sec-websocket-version", "").strip() != "13":
        raise HandshakeError(426, "Sec-WebSocket-Version must be 13")
    return key


def first_subprotocol(headers: Headers) -> str | None:
    """The first offered subprotocol token, trimmed (Bun auto-echoes it)."""
    offered = headers.get("sec-websocket-protocol")
    if offered is None:
        return None
    first = offered.split(",", 1)[0].strip()
    return first or None


def build_101(
    key: str,
    user_headers: list[tuple[str, str]],
    subprotocol: str | None,
    extensions: str | None,
) -> bytes:
    """The ``101 Switching Protocols`` answer in Bun's header order."""
    lines = ["HTTP/1.1 101 Switching Protocols"]
    has_date = False
    for name, value in user_headers:
        lower = name.lower()
        if lower in _RESERVED_101:
            continue
        if lower == "set-cookie":
            name = "set-cookie"
        has_date = has_date or lower == "date"
        lines.append(f"{name}: {value}")
    lines.append("Upgrade: websocket")
    lines.append("Connection: Upgrade")
    lines.append(f"Sec-WebSocket-Accept: {accept_key(key)}")
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    if not has_date:  # one Date field (RFC 9110 §6.6.1): the caller's, else ours
        lines.append(f"Date: {http_date()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def without_date(head: bytes) -> bytes:
    """A response head (status line and fields, ending in an empty line) without its
    ``Date`` field, for a front told to send none (uvicorn's ``date_header=False``);
    RFC 9110 §6.6.1 makes ``Date`` optional on a 1xx answer such as the 101."""
    lines = head.split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.lower().startswith(b"date:"))


_date_cache: list[Any] = [0, ""]


def http_date() -> str:
    """The ``Date`` header value, formatted at most once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True)
    return _date_cache[1]


def reason_phrase(status: int) -> str:
    """The reason phrase of ``status`` (``"Unknown"`` for an unregistered one)."""
    return _reason(status)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def build_response(response: Response, *, keep_alive: bool, head_only: bool = False) -> bytes:
    """Serialise a :class:`Response` (status line, headers, Content-Length, body)."""
    lines = [f"HTTP/1.1 {response.status} {_reason(response.status)}"]
    has_date = False
    for name, value in response.headers:
        lower = name.lower()
        if lower in ("content-length", "transfer-encoding", "connection"):
            continue
        has_date = has_date or lower == "date"
        lines.append(f"{name}: {value}")
    if not has_date:
        lines.append(f"Date: {http_date()}")
    if not keep_alive:
        lines.append("Connection: close")
    status = response.status
    if not (100 <= status < 200 or status in (204, 304)):
        lines.append(f"Content-Length: {len(response.body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if head_only or status in (204, 304) or 100 <= status < 200:
        return head
    return head + response.body


def simple_response(
    status: int,
    extra: list[tuple[str, str]] | None = None,
    *,
    body: bool = True,
    head_only: bool = False,
) -> bytes:
    """An answer the server gives on its own (400, 413, 426, 431, 503 ...), then closes.

    The body is the reason phrase; Bun's 426 has an empty body (``body=False``). The
    answer to a HEAD request (``head_only``) has the same head and no body (RFC 9110 §9.3.2).
    """
    payload = _reason(status).encode() if body else b""
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    for name, value in extra or ():
        lines.append(f"{name}: {value}")
    lines.append("Connection: close")
    if payload:
        lines.append("Content-Type: text/plain;charset=utf-8")
    lines.append(f"Content-Length: {len(payload)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + payload
