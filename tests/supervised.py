"""Talking to a supervisor started by a test (``bunws.run(workers=N)`` in a subprocess)."""

from __future__ import annotations

import asyncio


async def http_get(port: int, path: str) -> str:
    """The body of ``GET path`` on 127.0.0.1:port (one request, ``Connection: close``)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return data.partition(b"\r\n\r\n")[2].decode()


async def wait_until_serving(proc: object, port: int, path: str, timeout: float = 15.0) -> None:
    """Poll ``GET path`` until a started supervisor's worker answers with digits (a pid)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                if (await http_get(port, path)).isdigit():
                    return
            except OSError:
                pass
            assert getattr(proc, "returncode") is None, "the supervisor exited"
            await asyncio.sleep(0.05)
