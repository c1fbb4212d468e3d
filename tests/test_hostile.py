"""Hostile clients over loopback (issue 7 item 4): every attack gets its precise close
code (or HTTP status) and process memory stays bounded.

Memory is the RSS of this process (/proc/self/statm): the server and the attacking
client share it, so every bound below is generous but still far below what an
unbounded server would use (each attack moves 6 MB to 100 MB).
Oversized heads (431) are covered in tests/test_http.py.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import resource
import socket
import struct
from typing import Any

import pytest
import websockets
import wire
from conftest import eventually, running, ws_url
from rawclient import RawClient
from test_backpressure import Peer

import bunws

ASYNCIO_ONLY = pytest.mark.asyncio(loop_factories=["asyncio"])
MiB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Recorder:
    def __init__(self, **options: Any) -> None:
        self.opened: list[bunws.ServerWebSocket] = []
        self.closes: list[tuple[int, str]] = []
        self.messages: list[tuple[int, str]] = []  # (length, sha256) - never the payload
        self.handler = bunws.WebSocketHandler(
            open=self.opened.append,
            message=self._message,
            close=lambda ws, code, reason: self.closes.append((code, reason)),
            **options,
        )

    def _message(self, ws: bunws.ServerWebSocket, msg: Any) -> None:
        raw = msg.encode() if isinstance(msg, str) else bytes(msg)
        self.messages.append((len(raw), hashlib.sha256(raw).hexdigest()))


async def write_paced(writer: asyncio.StreamWriter, data: bytes, step: int) -> None:
    """Write ``data`` in ``step``-byte pieces, letting the server read in between."""
    for pos in range(0, len(data), step):
        writer.write(data[pos : pos + step])
        await asyncio.wait_for(writer.drain(), 10)


# ================================================================ fragments
async def test_a_million_empty_continuations_get_1008() -> None:
    rec = Recorder()
    assert rec.handler.max_fragments == max(1024, rec.handler.max_payload_length // 256) == 65536
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        gc.collect()
        base = rss()
        empty = wire.client(wire.CONT, b"", fin=False)
        chunk = empty * 10_000

        async def attack() -> int:
            client.send(wire.TEXT, b"a", fin=False)
            for sent in range(100):  # 10^6 frames at most
                try:
                    client.send_raw(chunk)
                    await asyncio.wait_for(client.writer.drain(), 10)
                except (ConnectionError, RuntimeError):
                    return sent
                if client.reader.at_eof() or client.reader._buffer:
                    return sent
                await asyncio.sleep(0)
            return 100

        sent, close = await asyncio.wait_for(asyncio.gather(attack(), client.recv_close(timeout=20)), 30)
        grown = rss() - base
        client.abort()
        await eventually(lambda: bool(rec.closes))
    assert close == (1008, "Received too many fragments")
    assert rec.closes == [(1008, "Received too many fragments")]
    assert rec.messages == []
    assert grown < 16 * MiB, grown


@ASYNCIO_ONLY
async def test_a_million_empty_fragments_within_the_limit_use_no_memory() -> None:
    rec = Recorder(max_fragments=2_000_000)
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        gc.collect()
        base = rss()
        peak = 0
        client.send(wire.TEXT, b"a", fin=False)
        chunk = wire.client(wire.CONT, b"", fin=False) * 10_000
        for _ in range(100):
            client.send_raw(chunk)
            await asyncio.wait_for(client.writer.drain(), 10)
            peak = max(peak, rss() - base)
        client.send(wire.CONT, b"z", fin=True)
        await eventually(lambda: bool(rec.messages), 20)
        client.send_close(1000)
        assert await client.recv_close() == (1000, "")
    assert rec.messages == [(2, hashlib.sha256(b"az").hexdigest())]
    assert peak < 16 * MiB, peak


# ================================================================ big dribbled frame
@ASYNCIO_ONLY
async def test_16_mib_frame_dribbled_is_received_intact_in_bounded_memory() -> None:
    size = 16 * MiB
    rec = Recorder(max_payload_length=size)
    payload = (hashlib.sha256(b"seed").digest() * (size // 32 + 1))[:size]
    digest = hashlib.sha256(payload).hexdigest()
    frame = wire.header(wire.BINARY, size, mask=b"\x00\x00\x00\x00") + payload  # zero mask: valid
    async with running(rec.handler) as server:
        client = await RawClient.connect(server.port)
        gc.collect()
        base = rss()
        peak = 0
        # One byte per write for the header and the first 16 KiB, then 4 KiB writes.
        await write_paced(client.writer, frame[: 16 * 1024], 1)
        writer = client.writer
        for pos in range(16 * 1024, len(frame), 4096):
            writer.write(frame[pos : pos + 4096])
            await asyncio.wait_for(writer.drain(), 10)
            if pos % (256 * 4096) == 0:
                peak = max(peak, rss() - base)
        await eventually(lambda: bool(rec.messages), 20)
        peak = max(peak, rss() - base)
        client.send_close(1000)
        assert await client.recv_close() == (1000, "")
    assert rec.messages == [(size, digest)]
    assert rec.closes == [(1000, "")]
    assert peak <= 2 * size, peak


# ================================================================ declared lengths
@pytest.mark.parametrize(
    "max_payload, declared, code",
    [
        (16 * MiB, 2**63, 1002),  # the most significant bit must be 0 (RFC 6455 §5.2)
        (16 * MiB, 2**64 - 1, 1002),
        (16 * MiB, 2**63 - 1, 1009),
        (1000, 1001, 1009),
        (1000, 70000, 1009),
    ],
)
async def test_declared_length_is_judged_from_the_header_alone(max_payload: int, declared: int, code: int) -> None:
    rec = Recorder(max_payload_length=max_payload)
    async with running(rec.handler) as server:
        gc.collect()
        base = rss()
        client = await RawClient.connect(server.port)
        # Only the header: no payload byte is ever sent.
        client.send_raw(wire.header(wire.BINARY, declared, mask=wire.DEFAULT_MASK, length_size=8))
        got, reason = await client.recv_close()
        assert await client.expect_eof() == b""
        await eventually(lambda: bool(rec.closes))
        grown = rss() - base
    assert got == code
    if code == 1009:
        assert reason == "Received too big message"
    assert rec.closes == [(code, reason)]
    assert grown < 8 * MiB


# ================================================================ slowloris
@ASYNCIO_ONLY
async def test_2000_slowloris_sockets_closed_by_timeout_while_a_client_connects() -> None:
    count = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * count + 512
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    loop = asyncio.get_running_loop()
    rec = Recorder()
    socks: list[socket.socket] = []
    # Long enough that all 2000 are still pending once the last one opened, even on
    # a loaded machine (opening them takes 0.5-3 s there).
    timeout = 4.0
    try:
        async with running(
            rec.handler, handshake_timeout=timeout, max_pending_handshakes=4096, backlog=4096
        ) as server:
            gc.collect()
            base = rss()

            async def slow() -> socket.socket:
                s = socket.socket()
                s.setblocking(False)
                socks.append(s)
                await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", server.port)), 10)
                await asyncio.wait_for(loop.sock_sendall(s, b"GET / HT"), 5)
                return s

            t0 = loop.time()
            for i in range(0, count, 250):
                await asyncio.wait_for(asyncio.gather(*[slow() for _ in range(250)]), 20)
            opened = loop.time()
            await eventually(lambda: server.pending_requests >= count, 5)
            # One more byte each (they are dribbling), then a normal client.
            for s in socks:
                try:
                    s.send(b"T")
                except OSError:
                    pass
            c0 = loop.time()
            async with websockets.connect(ws_url(server, "/normal"), open_timeout=2) as client:
                connect_time = loop.time() - c0
                await client.send("hi")
                await eventually(lambda: bool(rec.messages), 2)
            grown = rss() - base

            async def closed(s: socket.socket) -> bytes:
                try:
                    return await asyncio.wait_for(loop.sock_recv(s, 100), 10)
                except ConnectionResetError:
                    return b""

            answers = await asyncio.wait_for(asyncio.gather(*[closed(s) for s in socks]), 15)
            all_closed = loop.time()
            await eventually(lambda: server.pending_requests == 0, 3)
    finally:
        for s in socks:
            s.close()
    assert answers == [b""] * count, "closed without an answer"
    assert connect_time < 1.0, connect_time
    # Every slowloris socket is gone by the timeout (+ one tick + slack) after it opened.
    assert all_closed - t0 <= (opened - t0) + timeout + 1.5, (all_closed - t0, opened - t0)
    assert grown < 64 * MiB, grown


async def test_pending_handshake_cap_answers_503() -> None:
    async with running(handshake_timeout=1.0, max_pending_handshakes=10) as server:
        socks = [await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), 5) for _ in range(10)]
        for _, w in socks:
            w.write(b"GET / HTTP/1.1\r\n")
        await eventually(lambda: server.pending_requests == 10)
        extra = await RawClient.connect(server.port, handshake=False)
        assert await extra.read_head() == 503
        # Once the timeout has reaped the slowloris sockets, clients get in again.
        for r, _ in socks:
            assert await asyncio.wait_for(r.read(), 4) == b""
        async with websockets.connect(ws_url(server)) as ok:
            await ok.send("x")
        for _, w in socks:
            w.close()


# ================================================================ publish to a non-reader
@ASYNCIO_ONLY
async def test_publishing_100_mb_to_a_non_reader_is_bounded_by_the_limit() -> None:
    limit = MiB
    rec = Recorder(backpressure_limit=limit)
    rec.handler.open = lambda ws: (rec.opened.append(ws), ws.subscribe("t"))
    msg = 64 * 1024
    total = 1600  # 100 MiB
    async with running(rec.handler) as server:
        stalled = await Peer.connect(server.port, "/stalled")
        fast = await RawClient.connect(server.port, "/fast")
        await eventually(lambda: server.subscriber_count("t") == 2)
        ws_stalled = next(ws for ws in rec.opened if ws.data == "/stalled")
        received = 0

        async def read_fast() -> None:
            nonlocal received
            expected = total * (msg + 10)
            while received < expected:
                chunk = await asyncio.wait_for(fast.reader.read(1 << 20), 10)
                if not chunk:
                    return
                received += len(chunk)

        reader_task = asyncio.create_task(read_fast())
        gc.collect()
        base = rss()
        peak_rss = 0
        peak_buffered = 0
        statuses = []
        payload = b"p" * msg
        for i in range(total):
            statuses.append(server.publish("t", payload, compress=False))
            peak_buffered = max(peak_buffered, ws_stalled.buffered_amount)
            await asyncio.sleep(0)  # end of tick: the queued publishes are flushed
            if i % 100 == 0:
                peak_rss = max(peak_rss, rss() - base)
                await asyncio.sleep(0.005)  # let the fast reader keep up
        await asyncio.wait_for(reader_task, 30)
        assert ws_stalled.ready_state == 1, "dropping is not closing"
        stalled.close()
    assert received == total * (msg + 10), "the reading subscriber got everything"
    assert peak_buffered <= limit + msg + 10, peak_buffered
    assert 0 in statuses and statuses[0] == msg
    assert peak_rss < 48 * MiB, peak_rss


# ================================================================ ping flood
@ASYNCIO_ONLY
async def test_ping_flood_from_a_non_reader_is_bounded() -> None:
    rec = Recorder(backpressure_limit=0)
    async with running(rec.handler) as server:
        peer = await Peer.connect(server.port)
        try:
            await eventually(lambda: bool(rec.opened))
            ws = rec.opened[0]
            while ws.send(b"f" * 65536) != -1:  # fill the pipe first (bounded by the kernel)
                assert ws.buffered_amount == 0
            before = ws.buffered_amount
            gc.collect()
            base = rss()
            pings = wire.client(wire.PING, b"") * 100_000
            peak = before
            for _ in range(10):  # 10^6 pings, 6 MB
                await peer.sendall(pings, timeout=20)
                peak = max(peak, ws.buffered_amount)
            ws.send(b"end")  # queued behind the flood's processing
            grown = rss() - base
            await peer.sendall(wire.client(wire.CLOSE, wire.close_payload(1000)))
            frames = await peer.read_all(20)
        finally:
            peer.close()
    # While the peer does not read, at most one pong waits in user space (RFC 6455
    # lets us answer only the latest ping). The kernel may take more pongs whenever
    # it frees room (Linux compacts a receive queue of tiny frames), so the count
    # that reaches the peer is bounded by the kernel, not by bunws.
    assert peak <= before + 2 + 2, (before, peak)
    assert (wire.BINARY, b"end") in frames
    assert frames[-1] == (wire.CLOSE, struct.pack("!H", 1000))
    assert rec.closes == [(1000, "")]
    assert grown < 16 * MiB, grown


# ================================================================ abrupt resets
def rst(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_abrupt_resets_mid_frame_and_mid_handshake(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda lp, ctx: loop_errors.append(ctx))
    rec = Recorder()
    big = b"B" * (4 * MiB)
    rec.handler.message = lambda ws, msg: ws.send(big) if msg == "big" else None
    try:
        with caplog.at_level(logging.DEBUG):
            caplog.clear()
            async with running(rec.handler) as server:
                # Mid-frame: half a 1000-byte frame, then RST.
                c1 = await RawClient.connect(server.port, "/mid-frame")
                c1.send_raw(wire.client(wire.BINARY, b"x" * 1000)[:500])
                await asyncio.sleep(0.05)
                rst(c1.writer)
                # Mid-frame header (one byte of it).
                c2 = await RawClient.connect(server.port, "/mid-header")
                c2.send_raw(b"\x82")
                await asyncio.sleep(0.05)
                rst(c2.writer)
                # While the server is writing 4 MiB to it.
                c3 = await RawClient.connect(server.port, "/mid-write")
                c3.send_text("big")
                await asyncio.wait_for(c3.reader.readexactly(1000), 5)
                rst(c3.writer)
                # Mid-handshake: half a request line, then a full request without reading.
                r4, w4 = await asyncio.open_connection("127.0.0.1", server.port)
                w4.write(RawClient.handshake_request("/hs")[:30])
                await asyncio.sleep(0.05)
                rst(w4)
                r5, w5 = await asyncio.open_connection("127.0.0.1", server.port)
                w5.write(RawClient.handshake_request("/hs-full"))
                await asyncio.wait_for(r5.readuntil(b"\r\n\r\n"), 5)
                rst(w5)
                await eventually(lambda: len(rec.closes) == 4)
                await eventually(lambda: len(server._connections) == 0 and server.pending_requests == 0)
                assert server.pending_websockets == 0
                # The server is fine afterwards.
                async with websockets.connect(ws_url(server, "/after")) as ok:
                    await ok.send("hi")
                    await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(previous)
    assert sorted(rec.closes) == [(1000, "")] + [(1006, "")] * 4
    assert loop_errors == []
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]


# ================================================================ garbage instead of HTTP
@pytest.mark.parametrize(
    "garbage",
    [
        bytes(range(256)) * 4,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # a TLS ClientHello
        b"\x00" * 64 + b"\r\n\r\n",
        wire.client(wire.TEXT, "frames before any handshake"),
    ],
    ids=["all-bytes", "tls-hello", "nuls", "ws-frame"],
)
async def test_garbage_instead_of_http_gets_400(garbage: bytes) -> None:
    async with running() as server:
        client = await RawClient.connect(server.port, handshake=False)
        client.send_raw(garbage)
        assert await client.read_head() == 400
        await client.read_body()
        assert await client.expect_eof() == b""
        async with websockets.connect(ws_url(server)) as ok:
            await ok.send("still serving")
        await eventually(lambda: server.pending_requests == 0)
