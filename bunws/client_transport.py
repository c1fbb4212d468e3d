"""How the client reaches a server: a direct TCP connection or an HTTP CONNECT
tunnel (RFC 9110 §9.3.6) through a proxy, then TLS when the URI is ``wss://``.

The proxy comes from ``proxy=`` (a URI), or with ``proxy=True`` from the
environment (``HTTPS_PROXY``/``HTTP_PROXY``, ``NO_PROXY`` exempts hosts).
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from .client_handshake import MAX_HEAD, Target
from .errors import InvalidArgument, InvalidHandshake, InvalidStatus, InvalidType

__all__ = ["choose_proxy", "open_connection"]


def choose_proxy(proxy: object, target: Target) -> str | None:
    """The proxy URI to use for ``target``, or None for a direct connection."""
    if proxy is None or proxy is False:
        return None
    if proxy is True:
        proxies = urllib.request.getproxies()
        if urllib.request.proxy_bypass(target.host):
            return None
        scheme = "https" if target.secure else "http"
        found = proxies.get(scheme) or proxies.get("https") or proxies.get("http")
        return found or None
    if isinstance(proxy, str):
        return proxy
    raise InvalidType(f"proxy must be a str, True or None, got {type(proxy).__name__}")


def _proxy_address(proxy: str) -> tuple[str, int]:
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if parts.scheme != "http":
        raise InvalidArgument(f"only http:// proxies are supported, got {proxy!r}")
    if not parts.hostname:
        raise InvalidArgument(f"proxy {proxy!r} has no host")
    return parts.hostname, parts.port or 80


async def _tunnel(loop: asyncio.AbstractEventLoop, proxy: str, target: Target) -> socket.socket:
    """A socket connected to ``target`` through the proxy's CONNECT method."""
    host, port = _proxy_address(proxy)
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: Exception = OSError(f"cannot resolve proxy {host}")
    sock = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            break
        except OSError as exc:
            sock.close()
            sock = None
            last = exc
    if sock is None:
        raise last
    try:
        host_text = f"[{target.host}]" if ":" in target.host else target.host
        authority = f"{host_text}:{target.port}"
        request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
        await loop.sock_sendall(sock, request.encode("latin-1"))
        head = b""
        # Read byte-sized steps past the blank line only: what follows is the tunnel's.
        while not head.endswith(b"\r\n\r\n"):
            chunk = await loop.sock_recv(sock, 1)
            if not chunk:
                raise InvalidHandshake("the proxy closed the connection during CONNECT")
            head += chunk
            if len(head) > MAX_HEAD:
                raise InvalidHandshake("the proxy's answer is over 64 KiB")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise InvalidHandshake(f"the proxy sent {status_line[:80]!r}")
        if not 200 <= int(parts[1]) < 300:
            raise InvalidStatus(int(parts[1]), parts[2] if len(parts) > 2 else "")
    except BaseException:
        sock.close()
        raise
    return sock


async def open_connection(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Any,
    target: Target,
    *,
    ssl: Any,
    server_hostname: str | None,
    proxy: str | None,
    sock: socket.socket | None,
) -> tuple[asyncio.Transport, Any]:
    """TCP (direct, tunnelled or the given ``sock``), then TLS for ``wss://``."""
    context = None
    if target.secure:
        if ssl is None or ssl is True:
            context = ssl_module.create_default_context()
        elif isinstance(ssl, ssl_module.SSLContext):
            context = ssl
        else:
            raise InvalidType(f"ssl must be an ssl.SSLContext, got {type(ssl).__name__}")
    elif ssl is not None:
        raise InvalidArgument("ssl is only valid with a wss:// URI")
    kwargs: dict[str, Any] = {}
    if context is not None:
        kwargs["ssl"] = context
        kwargs["server_hostname"] = server_hostname or target.host
    if sock is None and proxy is not None:
        sock = await _tunnel(loop, proxy, target)
    if sock is not None:
        return await loop.create_connection(protocol_factory, sock=sock, **kwargs)
    return await loop.create_connection(protocol_factory, target.host, target.port, **kwargs)
