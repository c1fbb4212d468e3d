"""Raw-socket WebSocket servers for the client tests: they answer the opening
handshake (right or wrong, as the test says) and then do exactly what the test
scripts, byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from bunws.http import accept_key

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> dict[str, str]:
    """The upgrade request's headers (lower-case names)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines) if k}


def answer(headers: dict[str, str], *, accept: str | None = None, extra: str = "") -> bytes:
    """A 101 answer; ``accept`` overrides the right Sec-WebSocket-Accept."""
    accept = accept if accept is not None else accept_key(headers["sec-websocket-key"])
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
    ).encode("latin-1")


@contextlib.asynccontextmanager
async def raw_server(script: Script, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """Serve ``script`` on an ephemeral loopback port; yields the port. Every
    connection task is cancelled at the end, so a script may wait forever."""
    tasks: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(run, host, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for task in tasks:
            task.cancel()
        server.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
