"""Helpers for the ASGI tests: a server for an app on a loopback port, a raw HTTP exchange."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import bunws
from bunws.asgi import serve_asgi


@contextlib.asynccontextmanager
async def asgi_server(app: Any, **options: Any) -> AsyncIterator[bunws.Server]:
    """``app`` served on an ephemeral loopback port, stopped afterwards."""
    server = await serve_asgi(app, hostname="127.0.0.1", port=0, **options)
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(close_active=True), 15)


def base_url(server: bunws.Server) -> str:
    return f"http://127.0.0.1:{server.port}"


async def raw_exchange(port: int, data: bytes, *, until: bytes | None = None, timeout: float = 5.0) -> bytes:
    """Send ``data``, read until ``until`` appears (or EOF)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        got = b""
        async with asyncio.timeout(timeout):
            while until is None or until not in got:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                got += chunk
        return got
    finally:
        writer.close()
