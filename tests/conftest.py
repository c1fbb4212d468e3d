"""Shared fixtures: servers on 127.0.0.1:0, both event loops, a raw client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import bunws  # noqa: E402
import bunws.fastnet  # noqa: E402

LOOPS = ["asyncio"]
try:
    import uvloop  # noqa: F401

    LOOPS.append("uvloop")
except ImportError:  # pragma: no cover - uvloop is a test dependency
    pass


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Every async test runs on stock asyncio and on uvloop (when installed).

    A test restricts itself with ``@pytest.mark.asyncio(loop_factories=["asyncio"])``.
    """
    factories: dict[str, Any] = {"asyncio": asyncio.new_event_loop}
    if "uvloop" in LOOPS:
        import uvloop

        factories["uvloop"] = uvloop.new_event_loop
    return factories


# The listening transport: asyncio's own (the default) and aiofastnet's
# (``fast_transport=True``; aiofastnet is in the test extra). Modules that exercise the
# transport directly opt in with ``pytestmark = pytest.mark.usefixtures("both_transports")``.
TRANSPORTS = ["asyncio-transport", "fastnet"] if bunws.fastnet.fast_transport_available() else ["asyncio-transport"]


@pytest.fixture(params=TRANSPORTS)
def both_transports(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on each listening transport: "fastnet" makes every plain-TCP
    server the test starts use aiofastnet's."""
    if request.param == "fastnet":
        resolve = bunws.fastnet.resolve
        monkeypatch.setattr(bunws.fastnet, "resolve", lambda wanted, *, tls=False: resolve(wanted or (wanted is False and not tls), tls=tls))
    return request.param


def upgrade_everything(req: bunws.Request, server: bunws.Server) -> Any:
    """Default fetch: upgrade any request (``ws.data`` = path), else 400."""
    if server.upgrade(req, data=req.path):
        return None
    return bunws.Response("WebSocket upgrade expected", status=400)


@contextlib.asynccontextmanager
async def running(
    websocket: bunws.WebSocketHandler | None = None,
    fetch: Any = upgrade_everything,
    **options: Any,
) -> AsyncIterator[bunws.Server]:
    """A server on an ephemeral loopback port, stopped (at once) afterwards."""
    if websocket is None:
        websocket = bunws.WebSocketHandler()
    server = await bunws.serve(fetch, websocket, hostname="127.0.0.1", port=0, **options)
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(close_active=True), 15)


def ws_url(server: bunws.Server, path: str = "/") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


async def eventually(predicate: Any, timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` is true (polling), failing after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def count_writes(ws: bunws.ServerWebSocket) -> list[bytes]:
    """Wrap the socket's transport so every write() or writelines() call is recorded
    (a writelines() as one write: it is one send on every transport that matters)."""
    transport = ws.transport
    writes: list[bytes] = []
    original = transport.write
    original_lines = transport.writelines

    def write(data: Any) -> None:
        writes.append(bytes(data))
        original(data)

    def writelines(chunks: list[Any]) -> None:
        writes.append(b"".join(chunks))
        original_lines(chunks)

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(transport, name)

    spy = Spy()
    spy.write = write  # type: ignore[attr-defined]
    spy.writelines = writelines  # type: ignore[attr-defined]
    ws.transport = spy  # every frame of the socket goes through it
    return writes
