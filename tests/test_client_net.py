"""How the client reaches servers: TLS (a ``trustme`` CA, SNI), HTTP CONNECT
proxies (from ``proxy=`` and the environment), redirects, IPv6 literals."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
from conftest import running

import bunws
from bunws import connect

pytestmark = pytest.mark.timeout(30)

FAST = {"ping_interval": None, "close_timeout": 1, "open_timeout": 5}


def echo() -> bunws.WebSocketHandler:
    return bunws.WebSocketHandler(message=lambda ws, msg: ws.send(msg, True),
                                  per_message_deflate=True)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def contexts(ca: trustme.CA, names: list[str]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def test_wss_with_trusted_cert_and_sni(ca: trustme.CA) -> None:
    server_ctx, client_ctx = contexts(ca, ["localhost", "127.0.0.1"])
    names: list[str | None] = []
    server_ctx.sni_callback = lambda sslobj, name, ctx: names.append(name)
    async with running(echo(), ssl=server_ctx) as server:
        uri = f"wss://127.0.0.1:{server.port}/"
        async with connect(uri, ssl=client_ctx, proxy=None, **FAST) as ws:
            for message in ["tls", b"\x07" * 200_000]:
                await ws.send(message)
                assert await ws.recv() == message
            assert ws.extensions
        async with connect(uri, ssl=client_ctx, server_hostname="localhost", proxy=None,
                           **FAST) as ws:
            await ws.send("sni")
            assert await ws.recv() == "sni"
    assert "localhost" in names


async def test_wss_untrusted_cert_fails(ca: trustme.CA) -> None:
    server_ctx, _ = contexts(ca, ["127.0.0.1"])
    # a bare TLS listener: the default context does not know the test CA
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=server_ctx)
    port = listener.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(f"wss://127.0.0.1:{port}/", proxy=None, **FAST)
    finally:
        listener.close()


async def test_ssl_with_ws_uri_is_refused() -> None:
    with pytest.raises(bunws.InvalidArgument):
        await connect("ws://127.0.0.1:9/", ssl=ssl.create_default_context(), proxy=None)


class ConnectProxy:
    """A small HTTP CONNECT proxy on loopback that records the targets asked for."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.targets: list[str] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            method, target, _ = head.split("\r\n", 1)[0].split(" ", 2)
            assert method == "CONNECT"
            self.targets.append(target)
            if self.status != 200:
                writer.write(f"HTTP/1.1 {self.status} No\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
                return
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                try:
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                finally:
                    dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                                 return_exceptions=True)
        finally:
            writer.close()

    async def __aenter__(self) -> ConnectProxy:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.close()


async def test_explicit_proxy_and_environment(ca: trustme.CA, monkeypatch: Any) -> None:
    server_ctx, client_ctx = contexts(ca, ["127.0.0.1"])
    async with running(echo()) as plain, running(echo(), ssl=server_ctx) as secure:
        async with ConnectProxy() as proxy:
            proxy_uri = f"http://127.0.0.1:{proxy.port}"
            async with connect(f"ws://127.0.0.1:{plain.port}/", proxy=proxy_uri, **FAST) as ws:
                await ws.send("via proxy")
                assert await ws.recv() == "via proxy"
            monkeypatch.setenv("HTTPS_PROXY", proxy_uri)
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            async with connect(f"wss://127.0.0.1:{secure.port}/", ssl=client_ctx,
                               **FAST) as ws:
                await ws.send("tls in a tunnel")
                assert await ws.recv() == "tls in a tunnel"
            assert proxy.targets == [f"127.0.0.1:{plain.port}", f"127.0.0.1:{secure.port}"]
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            async with connect(f"wss://127.0.0.1:{secure.port}/", ssl=client_ctx, **FAST):
                pass
            async with connect(f"wss://127.0.0.1:{secure.port}/", ssl=client_ctx, proxy=None,
                               **FAST):
                pass
            assert len(proxy.targets) == 2
        async with ConnectProxy(status=407) as refusing:
            with pytest.raises(bunws.InvalidStatus) as info:
                await connect(f"ws://127.0.0.1:{plain.port}/",
                              proxy=f"http://127.0.0.1:{refusing.port}", **FAST)
            assert info.value.status == 407


@pytest.fixture
async def redirecting() -> AsyncIterator[bunws.Server]:
    def fetch(req: bunws.Request, server: bunws.Server) -> Any:
        path = req.path
        if path.startswith("/hop/"):
            n = int(path.rsplit("/", 1)[1])
            status = (301, 302, 303, 307, 308)[n % 5]
            location = "/final" if n == 0 else f"/hop/{n - 1}"
            if n == 2:  # an absolute Location once
                location = f"ws://127.0.0.1:{server.port}/hop/1"
            return bunws.Response("", status=status, headers={"Location": location})
        if path == "/loop":
            return bunws.Response("", status=302, headers={"Location": "/loop"})
        server.upgrade(req, data=path)
        return None

    async with running(bunws.WebSocketHandler(open=lambda ws: ws.send(ws.data)),
                       fetch=fetch) as server:
        yield server


async def test_redirect_chain(redirecting: bunws.Server) -> None:
    async with connect(f"ws://127.0.0.1:{redirecting.port}/hop/9", proxy=None, **FAST) as ws:
        assert await ws.recv() == "/final"
    with pytest.raises(bunws.InvalidHandshake, match="redirects"):
        await connect(f"ws://127.0.0.1:{redirecting.port}/loop", proxy=None, **FAST)


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback on this machine")
async def test_ipv6_literal() -> None:
    server = await bunws.serve(lambda req, srv: srv.upgrade(req) and None, echo(),
                               hostname="::1", port=0)
    try:
        async with connect(f"ws://[::1]:{server.port}/", proxy=None, **FAST) as ws:
            await ws.send("v6")
            assert await ws.recv() == "v6"
            assert ws.remote_address[0] == "::1"
    finally:
        await server.stop(close_active=True)
