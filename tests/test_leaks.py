"""No leaks (issue 7 item 5): after thousands of connect/message/close cycles mixing
every way a connection ends, no ServerWebSocket, Connection or transport objects
remain, the server's bookkeeping is back to zero and RSS is near its baseline.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
import weakref
from collections import Counter
from typing import Any

import pytest
import wire
from conftest import eventually, running
from rawclient import RawClient

import bunws

PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1024 * 1024
WATCHED = ("ServerWebSocket", "Connection", "Request", "_SelectorSocketTransport", "TCPTransport",
           "StreamWriter", "StreamReader")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def census() -> Counter[str]:
    gc.collect()
    gc.collect()
    return Counter(
        name for o in gc.get_objects() if (name := type(o).__name__) in WATCHED
    )


def rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Tracker:
    """Echo handler that keeps only weak references to the sockets it saw."""

    def __init__(self) -> None:
        self.alive: weakref.WeakSet[bunws.ServerWebSocket] = weakref.WeakSet()
        self.opened = 0
        self.closes: Counter[int] = Counter()
        self.handler = bunws.WebSocketHandler(
            open=self._open, message=self._message, close=self._close, idle_timeout=0
        )

    def _open(self, ws: bunws.ServerWebSocket) -> None:
        self.opened += 1
        self.alive.add(ws)
        ws.subscribe("all")
        ws.subscribe(f"own-{self.opened}")

    def _message(self, ws: bunws.ServerWebSocket, msg: Any) -> None:
        if msg == "server-close":
            ws.close(4000, "bye")
        elif msg == "terminate":
            ws.terminate()
        else:
            ws.send(msg)

    def _close(self, ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
        self.closes[code] += 1


async def http_cycle(port: int) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(b"GET /plain HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        assert data.startswith(b"HTTP/1.1 400")
    finally:
        writer.close()


async def ws_cycle(port: int, kind: int) -> int | None:
    """One connection; returns the close code the client saw (None: no Close frame)."""
    client = await RawClient.connect(port, "/ws", limit=1 << 16)
    try:
        client.send_text("hello")
        assert await client.recv_data() == (wire.TEXT, b"hello")
        if kind == 0:  # normal close by the client
            client.send_close(1000)
            code, _ = await client.recv_close()
            await client.expect_eof()
            return code
        if kind == 1:  # protocol error: unmasked frame
            client.send_raw(wire.frame(wire.TEXT, b"x", mask=None))
            code, _ = await client.recv_close()
            await client.expect_eof()
            return code
        if kind == 2:  # abrupt reset mid-frame
            client.send_raw(wire.client(wire.BINARY, b"y" * 200)[:50])
            await asyncio.sleep(0)
            rst(client.writer)
            return None
        if kind == 3:  # server closes
            client.send_text("server-close")
            code, _ = await client.recv_close()
            client.send_close(4000)
            await client.expect_eof()
            return code
        client.send_text("terminate")  # server terminates
        await client.expect_eof()
        return None
    finally:
        client.close()


async def run_cycles(port: int, total: int, workers: int = 32) -> Counter[Any]:
    seen: Counter[Any] = Counter()
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            kind = i % 6
            if kind == 5:
                await http_cycle(port)
                seen["http"] += 1
            else:
                seen[(kind, await ws_cycle(port, kind))] += 1

    await asyncio.gather(*[worker() for _ in range(workers)])
    return seen


@pytest.mark.parametrize("total", [10_000])
async def test_no_objects_or_memory_left_after_many_cycles(total: int) -> None:
    tracker = Tracker()
    async with running(tracker.handler, close_timeout=2.0) as server:
        await asyncio.wait_for(run_cycles(server.port, 300), 30)  # warm-up
        await eventually(lambda: not server._connections, 5)
        # The census does see live objects (it is not blind to slotted/compiled types).
        probe = await RawClient.connect(server.port, "/probe")
        await eventually(lambda: server.pending_websockets == 1)
        live = census()
        assert live["ServerWebSocket"] >= 1 and live["Connection"] >= 1, live
        assert len(tracker.alive) == 1
        probe.send_close(1000)
        await probe.recv_close()
        await probe.expect_eof()
        probe.close()
        del probe, live
        await eventually(lambda: not server._connections, 5)
        before = census()
        gc.collect()
        base_rss = rss()

        seen = await asyncio.wait_for(run_cycles(server.port, total), 90)
        await eventually(lambda: not server._connections, 5)
        assert server.pending_websockets == 0
        assert server.pending_requests == 0
        assert server.subscriber_count("all") == 0
        assert len(server.pubsub) == 0
        assert not server._tasks
        after = census()
        grown = rss() - base_rss
        alive = len(tracker.alive)
    ws_cycles = total - total // 6
    assert seen[(0, 1000)] + seen[(1, 1002)] + seen[(2, None)] + seen[(3, 4000)] + seen[(4, None)] == ws_cycles, seen
    assert seen["http"] == total // 6
    assert tracker.opened == sum(tracker.closes.values()), "every open has exactly one close"
    kinds = Counter(i % 6 for n in (300, total) for i in range(n))
    assert tracker.closes == Counter(
        {1000: kinds[0] + 1, 1002: kinds[1], 1006: kinds[2] + kinds[4], 4000: kinds[3]}
    ), tracker.closes
    assert alive == 0, f"{alive} ServerWebSocket objects still alive"
    for name in ("ServerWebSocket", "Connection", "Request"):
        assert after[name] <= before[name], (name, before, after)
    for name in ("_SelectorSocketTransport", "TCPTransport", "StreamWriter", "StreamReader"):
        assert after[name] <= before[name] + 2, (name, before, after)
    assert grown < 16 * MiB, grown
    print(f"census before {dict(before)} after {dict(after)}; RSS grew {grown / MiB:.1f} MiB")
