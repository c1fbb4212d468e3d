"""Backpressure against clients that stop reading: send statuses, buffered amount,
drain, close_on_backpressure_limit, close() with buffered data, bounded pongs.

Reference: docs/bun-behaviour.md §2 (statuses), §3 (backpressure, drain, limits), §6.1
(close flushes queued data), §9 and §14 (slow consumers, ping floods).

The peer here is a plain non-blocking socket driven through the loop's ``sock_*``
calls, so "not reading" really means nothing is read (no StreamReader buffering).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest
import wire
from conftest import eventually, running
from rawclient import RawClient

import bunws

pytestmark = pytest.mark.usefixtures("both_transports")

MSG = 64 * 1024
LIMIT = 1024 * 1024
FRAME = MSG + 10  # 64 KiB payload: 2-byte header + 8-byte extended length


class Peer:
    """A raw WebSocket client on a bare socket: reads only when told to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, port: int, path: str = "/", rcvbuf: int | None = 65536) -> Peer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        peer = cls(sock)
        await asyncio.wait_for(peer.loop.sock_connect(sock, ("127.0.0.1", port)), 5)
        await peer.sendall(RawClient.handshake_request(path))
        async with asyncio.timeout(5):
            while b"\r\n\r\n" not in peer.buf:
                await peer.recv_some()
        head, _, rest = bytes(peer.buf).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        peer.buf = bytearray(rest)
        return peer

    async def sendall(self, data: bytes, timeout: float = 10) -> None:
        await asyncio.wait_for(self.loop.sock_sendall(self.sock, data), timeout)

    async def recv_some(self, timeout: float = 5) -> bytes:
        try:
            chunk = await asyncio.wait_for(self.loop.sock_recv(self.sock, 1 << 20), timeout)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
        self.buf += chunk
        return chunk

    def frames(self) -> list[tuple[int, bytes]]:
        """Complete server frames in the buffer (consumed); a partial tail is kept."""
        out = []
        buf = self.buf
        pos = 0
        while True:
            if len(buf) - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            assert not b1 & 0x80, "server frames are never masked"
            n = b1 & 0x7F
            hdr = 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                (n,) = struct.unpack_from("!H", buf, pos + 2)
                hdr = 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                (n,) = struct.unpack_from("!Q", buf, pos + 2)
                hdr = 10
            if len(buf) - pos < hdr + n:
                break
            out.append((b0 & 0x0F, bytes(buf[pos + hdr : pos + hdr + n])))
            pos += hdr + n
        del buf[:pos]
        return out

    async def read_all(self, timeout: float) -> list[tuple[int, bytes]]:
        """Read until EOF; every complete frame received."""
        frames: list[tuple[int, bytes]] = []
        async with asyncio.timeout(timeout):
            while not self.eof:
                await self.recv_some(timeout)
                frames += self.frames()
        return frames

    async def read_frames(self, count: int, timeout: float) -> list[tuple[int, bytes]]:
        frames: list[tuple[int, bytes]] = []
        async with asyncio.timeout(timeout):
            while len(frames) < count and not self.eof:
                await self.recv_some(timeout)
                frames += self.frames()
        return frames

    def close(self) -> None:
        self.sock.close()


class Sockets:
    """Handlers recording open sockets, drains (buffered amount at the call) and closes."""

    def __init__(self, **options: Any) -> None:
        self.opened: list[bunws.ServerWebSocket] = []
        self.drains: list[int] = []
        self.closes: list[tuple[int, str]] = []
        self.on_message: Any = None
        self.handler = bunws.WebSocketHandler(
            open=self.opened.append,
            message=self._message,
            drain=lambda ws: self.drains.append(ws.buffered_amount),
            close=lambda ws, code, reason: self.closes.append((code, reason)),
            **options,
        )

    def _message(self, ws: bunws.ServerWebSocket, msg: Any) -> None:
        if self.on_message is not None:
            self.on_message(ws, msg)

    async def socket(self) -> bunws.ServerWebSocket:
        await eventually(lambda: bool(self.opened))
        return self.opened[-1]


def numbered(i: int, size: int = MSG) -> bytes:
    return struct.pack("!I", i) + bytes(size - 4)


def burst(ws: bunws.ServerWebSocket, max_count: int = 600, zeros: int = 5) -> tuple[list[int], list[int]]:
    """Send numbered 64 KiB messages (each its own write: not in a handler) until
    ``zeros`` of them were dropped; returns (statuses, buffered_amount after each)."""
    statuses: list[int] = []
    buffered: list[int] = []
    for i in range(max_count):
        statuses.append(ws.send(numbered(i)))
        buffered.append(ws.buffered_amount)
        if statuses.count(0) >= zeros:
            break
    return statuses, buffered


def runs(statuses: list[int]) -> list[tuple[int, int]]:
    """Run-length encoding: [(value, count), ...]."""
    out: list[tuple[int, int]] = []
    for s in statuses:
        if out and out[-1][0] == s:
            out[-1] = (s, out[-1][1] + 1)
        else:
            out.append((s, 1))
    return out


# ================================================================ statuses and drain
async def test_statuses_buffered_amount_and_drain_against_a_non_reader() -> None:
    rec = Sockets(backpressure_limit=LIMIT)
    async with running(rec.handler) as server:
        peer = await Peer.connect(server.port)
        try:
            ws = await rec.socket()
            statuses, buffered = burst(ws, zeros=20)
            # >0 (kernel took it), then -1 (queued in user space), then 0 (dropped).
            assert [v for v, _ in runs(statuses)] == [MSG, -1, 0], runs(statuses)
            first_drop = statuses.index(0)
            # The send that crossed the limit was queued whole and returned -1.
            assert buffered[first_drop - 1] > LIMIT
            assert buffered[first_drop - 2] <= LIMIT
            assert max(buffered) <= LIMIT + FRAME
            assert all(b == buffered[first_drop - 1] for b in buffered[first_drop:])
            # Dropped is not closed.
            assert ws.ready_state == 1 and rec.closes == []
            assert rec.drains == [], "nothing flushed yet"

            # The client resumes reading: everything accepted arrives, in order, and
            # nothing that returned 0.
            frames = await peer.read_frames(first_drop, 15)
            assert [op for op, _ in frames] == [wire.BINARY] * first_drop
            assert [struct.unpack("!I", p[:4])[0] for _, p in frames] == list(range(first_drop))
            assert all(len(p) == MSG for _, p in frames)
            await eventually(lambda: bool(rec.drains) and rec.drains[-1] == 0)
            assert ws.buffered_amount == 0
            # Nothing else is on the wire.
            ws.send(b"marker")
            more = await peer.read_frames(1, 5)
            assert more == [(wire.BINARY, b"marker")]
        finally:
            peer.close()


async def test_drain_fires_each_time_the_buffer_empties() -> None:
    rec = Sockets(backpressure_limit=0)  # no limit
    async with running(rec.handler) as server:
        peer = await Peer.connect(server.port)
        try:
            ws = await rec.socket()
            total = 0
            for rnd in range(2):
                statuses = [ws.send(numbered(i)) for i in range(80)]  # 5 MiB: more than the kernel takes
                assert -1 in statuses and 0 not in statuses
                total += 80
                got = await peer.read_frames(80, 15)
                assert len(got) == 80
                await eventually(lambda: len(rec.drains) >= rnd + 1 and rec.drains[-1] == 0)
            assert rec.drains[-1] == 0 and len(rec.drains) >= 2
        finally:
            peer.close()


async def test_small_sends_inside_a_handler_report_success() -> None:
    """Inside a handler sends are corked: small ones report their size, and the
    cork buffer is not part of buffered_amount."""
    rec = Sockets(backpressure_limit=LIMIT)
    seen: list[Any] = []

    def on_message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        seen.append([ws.send(b"x" * 1000) for _ in range(10)])
        seen.append(ws.buffered_amount)

    rec.on_message = on_message
    async with running(rec.handler) as server:
        peer = await Peer.connect(server.port)
        try:
            await peer.sendall(wire.client(wire.TEXT, "go"))
            frames = await peer.read_frames(10, 5)
        finally:
            peer.close()
    assert seen == [[1000] * 10, 0]
    assert frames == [(wire.BINARY, b"x" * 1000)] * 10


async def test_corked_burst_still_respects_the_limit() -> None:
    """A handler sending 6 MiB to a non-reader: the cork does not hide the limit."""
    rec = Sockets(backpressure_limit=LIMIT)
    seen: list[list[int]] = []
    rec.on_message = lambda ws, msg: seen.append([ws.send(numbered(i)) for i in range(96)])
    async with running(rec.handler) as server:
        peer = await Peer.connect(server.port)
        try:
            await peer.sendall(wire.client(wire.TEXT, "go"))
            await eventually(lambda: bool(seen))
            ws = rec.opened[0]
            assert ws.buffered_amount <= LIMIT + FRAME
            [statuses] = seen
            assert [v for v, _ in runs(statuses)][-1] == 0 and -1 in statuses
            accepted = len(statuses) - statuses.count(0)
            assert 0 not in statuses[:accepted]
            frames = await peer.read_frames(accepted, 15)
            assert [struct.unpack("!I", p[:4])[0] for _, p in frames] == list(range(accepted))
        finally:
            peer.close()


# ================================================================ close on limit
async def test_close_on_backpressure_limit_tears_down_without_close_frame() -> None:
    rec = Sockets(backpressure_limit=LIMIT, close_on_backpressure_limit=True)
    async with running(rec.handler) as server:
        peer = await Peer.connect(server.port)
        try:
            ws = await rec.socket()
            statuses, buffered = burst(ws, zeros=5)
            first_drop = statuses.index(0)
            assert [v for v, _ in runs(statuses)] == [MSG, -1, 0], runs(statuses)
            assert buffered[first_drop - 1] > LIMIT
            # Torn down right after the current code returns, not inside send().
            assert ws.ready_state == 1 and rec.closes == []
            await eventually(lambda: rec.closes == [(1006, "")], 3)
            assert ws.ready_state == 3 and ws.buffered_amount == 0
            assert ws.send(b"after") == 0
            frames = await peer.read_all(15)
        finally:
            peer.close()
    assert all(op == wire.BINARY for op, _ in frames), "no Close frame"
    seqs = [struct.unpack("!I", p[:4])[0] for _, p in frames]
    assert seqs == list(range(len(seqs)))
    assert len(seqs) < first_drop, "nothing sent after the first drop arrives"


# ================================================================ close() with buffered data
async def test_close_delivers_buffered_frames_then_close_then_fin() -> None:
    rec = Sockets(backpressure_limit=0)
    async with running(rec.handler) as server:
        peer = await Peer.connect(server.port)
        try:
            ws = await rec.socket()
            statuses = [ws.send(numbered(i)) for i in range(64)]  # 4 MiB
            assert -1 in statuses and 0 not in statuses
            ws.close(4000, "bye")
            assert rec.closes == [(4000, "bye")]
            frames = await peer.read_all(15)
        finally:
            peer.close()
    assert [op for op, _ in frames] == [wire.BINARY] * 64 + [wire.CLOSE]
    assert [struct.unpack("!I", p[:4])[0] for _, p in frames[:-1]] == list(range(64))
    assert frames[-1][1] == struct.pack("!H", 4000) + b"bye"
    assert peer.buf == b"", "FIN right after the Close frame"


# ================================================================ pongs while not reading
async def test_pong_replies_are_bounded_while_the_peer_does_not_read() -> None:
    pings: list[int] = []
    rec = Sockets(backpressure_limit=0)
    rec.handler.ping = lambda ws, data: pings.append(struct.unpack("!I", bytes(data))[0])
    count = 100_000
    async with running(rec.handler) as server:
        peer = await Peer.connect(server.port)
        try:
            ws = await rec.socket()
            # Fill the pipe first, so the kernel takes no pongs either.
            statuses = [ws.send(numbered(i)) for i in range(64)]
            assert statuses[-1] == -1
            before = ws.buffered_amount
            flood = b"".join(wire.client(wire.PING, struct.pack("!I", i)) for i in range(count))
            await peer.sendall(flood, timeout=20)
            await eventually(lambda: len(pings) == count, 20)
            # At most one pong kept back while the peer does not read.
            assert ws.buffered_amount <= before + 6, (before, ws.buffered_amount)
            frames = await peer.read_frames(64, 15)
            await asyncio.sleep(0.2)
            peer.sock.setblocking(False)
            while True:
                try:
                    chunk = peer.sock.recv(1 << 20)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                peer.buf += chunk
            frames += peer.frames()
        finally:
            peer.close()
    assert pings == list(range(count))
    pongs = [p for op, p in frames if op == wire.PONG]
    data = [p for op, p in frames if op == wire.BINARY]
    assert len(data) == 64
    assert 1 <= len(pongs) <= 2, len(pongs)
    assert struct.unpack("!I", pongs[-1])[0] == count - 1, "the latest ping is the one answered"


# ================================================================ drain-driven producer
async def test_drain_driven_producer_of_large_messages_never_stalls() -> None:
    """Send 64 KiB messages until -1, continue from ``drain`` (Bun #38177: a >=16 KiB
    send from inside drain used to stall)."""
    total = 200  # 12.5 MiB
    state = {"next": 0, "statuses": []}

    def pump(ws: bunws.ServerWebSocket) -> None:
        while state["next"] < total:
            status = ws.send(numbered(state["next"]))
            state["statuses"].append(status)
            state["next"] += 1
            if status == -1:
                return

    handler = bunws.WebSocketHandler(open=pump, drain=pump)
    async with running(handler) as server:
        peer = await Peer.connect(server.port)
        try:
            frames = await peer.read_frames(total, 20)
        finally:
            peer.close()
    assert [struct.unpack("!I", p[:4])[0] for _, p in frames] == list(range(total))
    assert 0 not in state["statuses"] and -1 in state["statuses"]


async def test_close_on_backpressure_limit_through_publish() -> None:
    rec = Sockets(backpressure_limit=LIMIT, close_on_backpressure_limit=True)
    rec.handler.open = lambda ws: (rec.opened.append(ws), ws.subscribe("t"))
    async with running(rec.handler) as server:
        peer = await Peer.connect(server.port)
        try:
            ws = await rec.socket()
            statuses: list[int] = []
            for i in range(600):
                statuses.append(server.publish("t", numbered(i), compress=False))
                await asyncio.sleep(0)  # end of tick: queued publishes are flushed
                if statuses[-1] == 0:
                    break
            first_drop = statuses.index(0)
            assert -1 in statuses[:first_drop]
            await eventually(lambda: rec.closes == [(1006, "")], 3)
            assert ws.ready_state == 3
            assert server.subscriber_count("t") == 0
            assert server.publish("t", numbered(9999), compress=False) == 0
            frames = await peer.read_all(15)
        finally:
            peer.close()
    assert all(op == wire.BINARY for op, _ in frames), "no Close frame"
    seqs = [struct.unpack("!I", p[:4])[0] for _, p in frames]
    assert seqs == list(range(len(seqs))) and len(seqs) < first_drop
