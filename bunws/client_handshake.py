"""The client's side of the opening handshake (RFC 6455 §4.1), without I/O.

Pure functions and one incremental reader: parse a ``ws://``/``wss://`` URI,
write the upgrade request, read the HTTP/1.1 response (RFC 9112 §2-§7, bounded),
and check it: status 101, ``Upgrade``/``Connection``, ``Sec-WebSocket-Accept``,
a subprotocol and extensions that were offered, the permessage-deflate answer
(RFC 7692 §7.1). :mod:`bunws.client` does the I/O.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from ._deflate import Deflater, Inflater
from .errors import InvalidHandshake, InvalidStatus, InvalidURI
from .extensions import COMPRESSION_LEVEL, parse_extensions
from .http import Headers, accept_key

__all__ = [
    "DEFLATE_OFFER",
    "ClientDeflate",
    "ResponseReader",
    "Target",
    "build_request",
    "check_response",
    "new_key",
    "parse_uri",
]

# Offer the server a choice of our window (RFC 7692 §7.1.2.2); the server's window
# is its own business (15 inflates any of them).
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
# Bounds of what is read of a response: header section and a refusal's body.
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024
MAX_HEADERS = 256


@dataclass(frozen=True)
class Target:
    """Where a ``ws://``/``wss://`` URI points."""

    secure: bool
    host: str  # without brackets for IPv6 literals
    port: int
    resource: str  # path and query, at least "/"
    uri: str

    @property
    def host_header(self) -> str:
        """``Host`` value: the port only when it is not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == (443 if self.secure else 80):
            return host
        return f"{host}:{self.port}"


def parse_uri(uri: object) -> Target:
    """Split a WebSocket URI (RFC 6455 §3); :class:`InvalidURI` when it is not one."""
    if not isinstance(uri, str):
        raise InvalidURI(f"uri must be a str, got {type(uri).__name__}")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise InvalidURI(f"{uri!r} is not a valid URI: {exc}") from None
    if parts.scheme not in ("ws", "wss"):
        raise InvalidURI(f"{uri!r} is not a ws:// or wss:// URI")
    if parts.fragment or "#" in uri:
        raise InvalidURI(f"{uri!r}: a WebSocket URI has no fragment")
    host = parts.hostname
    if not host:
        raise InvalidURI(f"{uri!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidURI(f"{uri!r}: user information is not supported")
    if any(c in uri for c in " \r\n\t\x00"):
        raise InvalidURI(f"{uri!r} contains whitespace or control characters")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise InvalidURI(f"{uri!r} has an invalid IPv6 literal") from None
    secure = parts.scheme == "wss"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return Target(secure, host, port or (443 if secure else 80), resource, uri)


def new_key() -> str:
    """A fresh ``Sec-WebSocket-Key``: base64 of 16 random bytes (RFC 6455 §4.1)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def _check_field(name: str, value: str) -> None:
    if not name or any(c in name for c in " \t\r\n:") or any(c in value for c in "\r\n\x00"):
        raise InvalidURI(f"invalid header {name!r}: {value!r}")


def build_request(
    target: Target,
    key: str,
    *,
    headers: list[tuple[str, str]],
    subprotocols: list[str] | None,
    origin: str | None,
    extensions: str | None,
    user_agent: str | None,
) -> bytes:
    """The upgrade request; user headers come last and may not repeat ours."""
    lines = [
        f"GET {target.resource} HTTP/1.1",
        f"Host: {target.host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if subprotocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}")
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    if user_agent is not None:
        lines.append(f"User-Agent: {user_agent}")
    for name, value in headers:
        _check_field(name, value)
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ResponseReader:
    """Incremental reader of one HTTP/1.1 response head, then (for a refusal) its
    body, each bounded (64 KiB)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.status = 0
        self.reason = ""
        self.headers: Headers | None = None
        self.leftover = b""
        self.body = b""
        self.body_done = False
        self._body_length: int | None = None
        self._chunked = False

    def feed_head(self, data: bytes) -> bool:
        """Add bytes; True once the head is parsed (``leftover`` is what followed)."""
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                raise InvalidHandshake("the response's header section is over 64 KiB")
            return False
        if end > MAX_HEAD:
            raise InvalidHandshake("the response's header section is over 64 KiB")
        head = bytes(self.buffer[:end]).decode("latin-1")
        self.leftover = bytes(self.buffer[end + 4 :])
        self.buffer = bytearray()
        self._parse_head(head)
        return True

    def _parse_head(self, head: str) -> None:
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0"):
            raise InvalidHandshake(f"not an HTTP/1.1 status line: {status_line[:80]!r}")
        if len(parts[1]) != 3 or not parts[1].isdigit():
            raise InvalidHandshake(f"invalid status code: {status_line[:80]!r}")
        self.status = int(parts[1])
        self.reason = parts[2] if len(parts) > 2 else ""
        if len(lines) > MAX_HEADERS:
            raise InvalidHandshake(f"the response has more than {MAX_HEADERS} headers")
        fields = []
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
                raise InvalidHandshake(f"malformed header line: {line[:80]!r}")
            fields.append((name, value.strip(" \t")))
        self.headers = Headers(fields)
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in self.headers:
            length = self.headers["content-length"]
            if not length.isdigit():
                raise InvalidHandshake(f"invalid Content-Length: {length[:40]!r}")
            self._body_length = int(length)

    def feed_body(self, data: bytes, eof: bool = False) -> bool:
        """Add body bytes (``eof``: the server closed); True once the body (or its
        first 64 KiB) is complete."""
        self.buffer += data
        if self._chunked:
            self._dechunk(eof)
        elif self._body_length is not None:
            if len(self.buffer) >= min(self._body_length, MAX_BODY) or eof:
                self.body = bytes(self.buffer[: min(self._body_length, MAX_BODY)])
                self.body_done = True
        elif eof or len(self.buffer) >= MAX_BODY:
            self.body = bytes(self.buffer[:MAX_BODY])
            self.body_done = True
        return self.body_done

    def _dechunk(self, eof: bool) -> None:
        body = bytearray()
        pos = 0
        buf = self.buffer
        while len(body) < MAX_BODY:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            size_text = bytes(buf[pos:end]).split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                break
            if size == 0:
                self.body_done = True
                break
            if len(buf) < end + 2 + size:
                body += buf[end + 2 : end + 2 + size]
                break
            body += buf[end + 2 : end + 2 + size]
            pos = end + 4 + size
        self.body = bytes(body[:MAX_BODY])
        if eof or len(body) >= MAX_BODY or len(buf) > 2 * MAX_BODY:
            self.body_done = True


@dataclass(frozen=True)
class ClientDeflate:
    """The permessage-deflate parameters the server agreed to (RFC 7692 §7.1)."""

    server_no_context_takeover: bool
    client_no_context_takeover: bool
    server_max_window_bits: int
    client_max_window_bits: int
    response: str

    def make_deflater(self) -> Deflater:
        """Our compressor: the client's window, reset per message if agreed."""
        return Deflater(
            self.client_max_window_bits,
            8,
            COMPRESSION_LEVEL,
            no_context_takeover=self.client_no_context_takeover,
        )

    def make_inflater(self) -> Inflater:
        """The server's messages: its window, statelessly when it resets."""
        return Inflater(
            self.server_max_window_bits, no_context_takeover=self.server_no_context_takeover
        )


_WINDOW = {str(n): n for n in range(8, 16)}


def _deflate_answer(params: list[tuple[str, str | None]], response: str) -> ClientDeflate:
    seen: dict[str, str | None] = {}
    for name, value in params:
        if name in seen:
            raise InvalidHandshake(f"permessage-deflate: {name} given twice")
        seen[name] = value
    for name in ("server_no_context_takeover", "client_no_context_takeover"):
        if name in seen and seen[name] is not None:
            raise InvalidHandshake(f"permessage-deflate: {name} takes no value")
    windows = {}
    for name in ("server_max_window_bits", "client_max_window_bits"):
        if name in seen:
            value = seen[name]
            if value not in _WINDOW:
                raise InvalidHandshake(f"permessage-deflate: invalid {name}={value!r}")
            windows[name] = _WINDOW[value]
    unknown = set(seen) - {
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    }
    if unknown:
        raise InvalidHandshake(f"permessage-deflate: unknown parameter {sorted(unknown)[0]}")
    return ClientDeflate(
        "server_no_context_takeover" in seen,
        "client_no_context_takeover" in seen,
        windows.get("server_max_window_bits", 15),
        windows.get("client_max_window_bits", 15),
        response,
    )


def check_response(
    reader: ResponseReader,
    key: str,
    subprotocols: list[str] | None,
    offered_deflate: bool,
) -> tuple[str | None, ClientDeflate | None]:
    """Check a 101 answer; returns the subprotocol and the deflate agreement.

    Raises:
        InvalidStatus: the status is not 101 (redirects are handled by the caller).
        InvalidHandshake: any other rule of RFC 6455 §4.1 is broken.
    """
    headers = reader.headers
    assert headers is not None
    if reader.status != 101:
        raise InvalidStatus(reader.status, reader.reason, headers, reader.body)
    if headers.get("upgrade", "").strip().lower() != "websocket":
        raise InvalidHandshake("101 without Upgrade: websocket")
    tokens = [t.strip().lower() for t in headers.get("connection", "").split(",")]
    if "upgrade" not in tokens:
        raise InvalidHandshake("101 without Connection: Upgrade")
    accept = headers.get_all("sec-websocket-accept")
    if len(accept) != 1 or accept[0] != accept_key(key):
        raise InvalidHandshake("wrong Sec-WebSocket-Accept")
    protocol = None
    protocols = headers.get_all("sec-websocket-protocol")
    if protocols:
        if len(protocols) > 1 or "," in protocols[0]:
            raise InvalidHandshake("the server chose more than one subprotocol")
        protocol = protocols[0]
        if not subprotocols or protocol not in subprotocols:
            raise InvalidHandshake(f"the server chose a subprotocol not offered: {protocol!r}")
    deflate = None
    raw = headers.get("sec-websocket-extensions")
    if raw is not None:
        offers = parse_extensions(raw)
        if not offers:
            raise InvalidHandshake(f"malformed Sec-WebSocket-Extensions: {raw[:80]!r}")
        for name, params in offers:
            if name != "permessage-deflate" or not offered_deflate:
                raise InvalidHandshake(f"the server chose an extension not offered: {name!r}")
            if deflate is not None:
                raise InvalidHandshake("the server chose permessage-deflate twice")
            deflate = _deflate_answer(params, raw)
    return protocol, deflate
