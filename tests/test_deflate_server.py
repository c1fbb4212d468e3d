"""permessage-deflate over real loopback sockets (issue 4).

Round trips against the ``websockets`` client with compression on (context takeover
on and off, window bits 9-15) for Bun's shared and dedicated modes; byte-level
checks with :class:`RawClient` inflated by Python's ``zlib`` (RSV1 only where asked
for); fragmented compressed input; protocol errors; a deflate bomb over the wire; and
compressed publishes to a mix of receivers.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import re
import socket
import struct
import time
import zlib
from typing import Any

import pytest
import websockets
import wire
from conftest import eventually, running, ws_url
from rawclient import RawClient
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

import bunws
import bunws.extensions

TAIL = b"\x00\x00\xff\xff"
MiB = 1 << 20
PMD = "permessage-deflate"

MODES: dict[str, Any] = {
    "shared": True,
    "dedicated": {"compress": "dedicated", "decompress": "dedicated"},
    "3KB": {"compress": "3KB"},  # decompress off: inbound is still inflated, as in Bun
    "16KB": {"compress": "16KB", "decompress": "dedicated"},
    "256KB": {"compress": "256KB", "decompress": "shared"},
}
DEDICATED_MODES = ["dedicated", "3KB", "16KB", "256KB"]


def _text_like(n: int, seed: int) -> str:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta", "eta", "θήτα", "iota", "kappa"]
    out: list[str] = []
    size = 0
    while size < n:
        w = rng.choice(words) + rng.choice(" ,.\n") + str(rng.randrange(1000))
        out.append(w)
        size += len(w)
    return "".join(out)[:n]


SMALL_TEXT = "hello, compressed world " * 4
BIG_TEXT = _text_like(MiB, 1)
BIG_BINARY = BIG_TEXT.encode()[: MiB // 2] + os.urandom(MiB // 2)  # half compressible
MID_TEXT = _text_like(64 * 1024, 2)


class Echo:
    """Echo handler: every message goes back with ``send(msg, compress=...)``."""

    def __init__(self, compress: bool = True, **options: Any) -> None:
        self.sockets: list[bunws.ServerWebSocket] = []
        self.closes: list[tuple[int, str]] = []
        self.compress = compress
        self.on_message: Any = None
        self.handler = bunws.WebSocketHandler(
            open=self.sockets.append,
            message=self._message,
            close=lambda ws, code, reason: self.closes.append((code, reason)),
            **options,
        )

    def _message(self, ws: bunws.ServerWebSocket, msg: Any) -> None:
        if self.on_message is not None:
            self.on_message(ws, msg)
            return
        if not isinstance(msg, str):
            msg = bytes(msg)
        ws.send(msg, compress=self.compress)


class ServerInflater:
    """Client-side oracle for server frames, from the negotiated answer."""

    def __init__(self, answer: str) -> None:
        assert answer.startswith(PMD), answer
        m = re.search(r"server_max_window_bits=(\d+)", answer)
        self.wbits = int(m.group(1)) if m else 15
        self.takeover = "server_no_context_takeover" not in answer
        self.d = zlib.decompressobj(-max(self.wbits, 9))

    def inflate(self, payload: bytes) -> bytes:
        if not self.takeover:
            self.d = zlib.decompressobj(-max(self.wbits, 9))
        return self.d.decompress(payload + TAIL)


def client_compress(data: bytes, wbits: int = 15) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def compressed_fragments(opcode: int, compressed: bytes, n: int) -> bytes:
    """One compressed message as ``n`` frames, RSV1 on the first only (RFC 7692 §6.1)."""
    step = -(-len(compressed) // n)
    parts = [compressed[i : i + step] for i in range(0, len(compressed), step)]
    parts += [b""] * (n - len(parts))
    out = bytearray()
    for i, part in enumerate(parts):
        out += wire.client(
            opcode if i == 0 else wire.CONT, part, fin=i == n - 1, rsv1=i == 0
        )
    return bytes(out)


def negotiated(client: Any) -> list[Any]:
    return list(client.protocol.extensions)


async def round_trip(client: Any, messages: list[str | bytes]) -> None:
    for msg in messages:
        await asyncio.wait_for(client.send(msg), 10)
        assert await asyncio.wait_for(client.recv(), 10) == msg


# ---------------------------------------------------------------- websockets client
OFFERS: dict[str, dict[str, Any]] = {
    "default": {},
    "client_no_context_takeover": {"client_no_context_takeover": True},
    "server_no_context_takeover": {"server_no_context_takeover": True},
    "both_no_context_takeover": {"client_no_context_takeover": True, "server_no_context_takeover": True},
}


@pytest.mark.parametrize("offer", list(OFFERS))
@pytest.mark.parametrize("mode", list(MODES))
async def test_websockets_client_round_trip(mode: str, offer: str) -> None:
    echo = Echo(per_message_deflate=MODES[mode])
    factory = ClientPerMessageDeflateFactory(**OFFERS[offer])
    async with running(echo.handler) as server:
        async with websockets.connect(
            ws_url(server), compression=None, extensions=[factory], max_size=4 * MiB
        ) as client:
            assert negotiated(client), "permessage-deflate was not negotiated"
            # Several messages so a context-takeover compressor carries state over.
            await round_trip(
                client,
                [SMALL_TEXT, SMALL_TEXT.encode(), "x", b"\x00", SMALL_TEXT, BIG_TEXT, BIG_BINARY, SMALL_TEXT],
            )
    assert echo.sockets[0].extensions == client.response.headers["Sec-WebSocket-Extensions"]


@pytest.mark.parametrize("wbits", range(9, 16))
@pytest.mark.parametrize("mode", DEDICATED_MODES)
async def test_websockets_client_window_bits(mode: str, wbits: int) -> None:
    echo = Echo(per_message_deflate=MODES[mode])
    factory = ClientPerMessageDeflateFactory(server_max_window_bits=wbits, client_max_window_bits=wbits)
    async with running(echo.handler) as server:
        async with websockets.connect(
            ws_url(server), compression=None, extensions=[factory], max_size=4 * MiB
        ) as client:
            (ext,) = negotiated(client)
            assert ext.remote_max_window_bits <= wbits  # the server's window, as answered
            await round_trip(client, [MID_TEXT, MID_TEXT[::-1], MID_TEXT.encode(), SMALL_TEXT])


@pytest.mark.parametrize("wbits", [9, 12, 15])
async def test_websockets_client_window_bits_shared(wbits: int) -> None:
    """Shared mode accepts any client window (the client's window is its own
    business) but, like Bun, declines a server window below its fixed 15 bits."""
    echo = Echo(per_message_deflate=True)
    offer = ClientPerMessageDeflateFactory(client_max_window_bits=wbits)
    declined = ClientPerMessageDeflateFactory(server_max_window_bits=wbits - 1)
    async with running(echo.handler) as server:
        async with websockets.connect(ws_url(server), compression=None, extensions=[offer]) as client:
            assert negotiated(client)
            await round_trip(client, [MID_TEXT, MID_TEXT.encode()])
        async with websockets.connect(ws_url(server), compression=None, extensions=[declined]) as client:
            assert not negotiated(client)
            await round_trip(client, [MID_TEXT])


SHARED_15 = f"{PMD}; client_no_context_takeover; server_no_context_takeover; server_max_window_bits=15"
OFFERS_15: dict[str, dict[str, Any]] = {
    "window_15": {"server_max_window_bits": 15},
    "window_15_server_no_context_takeover": {"server_max_window_bits": 15, "server_no_context_takeover": True},
    "window_15_client_window_9": {"server_max_window_bits": 15, "client_max_window_bits": 9},
    "autobahn_13_6": {
        "server_max_window_bits": 15,
        "server_no_context_takeover": True,
        "client_no_context_takeover": True,
    },
}


@pytest.mark.parametrize("offer", list(OFFERS_15))
async def test_shared_mode_accepts_server_max_window_bits_15(offer: str) -> None:
    """Issue 13, item 18: the shared (15-bit, stateless) compressor meets a
    ``server_max_window_bits=15`` request, so the extension is negotiated as in Bun."""
    echo = Echo(per_message_deflate=True)
    factory = ClientPerMessageDeflateFactory(**OFFERS_15[offer])
    async with running(echo.handler) as server:
        async with websockets.connect(
            ws_url(server), compression=None, extensions=[factory], max_size=4 * MiB
        ) as client:
            assert client.response.headers["Sec-WebSocket-Extensions"] == SHARED_15
            (ext,) = negotiated(client)
            assert (ext.remote_max_window_bits, ext.remote_no_context_takeover) == (15, True)
            assert ext.local_no_context_takeover
            await round_trip(client, [SMALL_TEXT, SMALL_TEXT.encode(), "x", MID_TEXT, BIG_TEXT, BIG_BINARY])
    assert echo.sockets[0].extensions == SHARED_15


async def test_shared_mode_compresses_after_server_max_window_bits_15() -> None:
    """The frames on the wire for Autobahn 13.4's offer: RSV1 both ways, each server
    message a standalone raw deflate stream of at most 15 window bits."""
    echo = Echo(per_message_deflate=True)
    offer = f"{PMD}; client_no_context_takeover; client_max_window_bits; server_max_window_bits=15"
    async with running(echo.handler) as server:
        client = await RawClient.connect(server.port, extensions=offer)
        assert client.headers["sec-websocket-extensions"] == SHARED_15
        for msg in [SMALL_TEXT, MID_TEXT, SMALL_TEXT]:
            client.send_raw(wire.client(wire.TEXT, client_compress(msg.encode()), rsv1=True))
            opcode, payload, fin, rsv1 = await client.recv_frame(timeout=10)
            assert (opcode, fin, rsv1) == (wire.TEXT, True, True)
            assert len(payload) < len(msg) // 2
            assert zlib.decompressobj(-15).decompress(payload + TAIL) == msg.encode()
        client.close()


# ---------------------------------------------------------------- what is on the wire
@pytest.mark.parametrize("mode", list(MODES))
async def test_send_compress_sets_rsv1_and_plain_send_does_not(mode: str) -> None:
    echo = Echo(per_message_deflate=MODES[mode])
    statuses: list[int] = []
    big = BIG_TEXT.encode()

    def on_message(ws: bunws.ServerWebSocket, msg: Any) -> None:
        statuses.extend(
            [
                ws.send(SMALL_TEXT, compress=True),
                ws.send(SMALL_TEXT.encode(), compress=True),
                ws.send("y", compress=True),  # no size threshold: 1 byte is compressed
                ws.send(SMALL_TEXT),  # compress defaults to False
                ws.send("", compress=True),  # empty payload: never compressed
                ws.send_text(SMALL_TEXT, True),
                ws.send_binary(big, True),
                ws.send(SMALL_TEXT, compress=True),
            ]
        )

    echo.on_message = on_message
    async with running(echo.handler) as server:
        client = await RawClient.connect(server.port, extensions=PMD)
        answer = client.headers["sec-websocket-extensions"]
        oracle = ServerInflater(answer)
        client.send_text("go")
        frames = [await client.recv_frame(timeout=10) for _ in range(8)]
        client.close()
    expected = [
        (wire.TEXT, SMALL_TEXT.encode(), True),
        (wire.BINARY, SMALL_TEXT.encode(), True),
        (wire.TEXT, b"y", True),
        (wire.TEXT, SMALL_TEXT.encode(), False),
        (wire.TEXT, b"", False),
        (wire.TEXT, SMALL_TEXT.encode(), True),
        (wire.BINARY, big, True),
        (wire.TEXT, SMALL_TEXT.encode(), True),
    ]
    got = []
    for opcode, payload, fin, rsv1 in frames:
        assert fin
        got.append((opcode, oracle.inflate(payload) if rsv1 else payload, rsv1))
    assert got == expected
    # Compression happened: the frames are much smaller than the payload.
    assert len(frames[0][1]) < len(SMALL_TEXT) // 2
    assert len(frames[6][1]) < len(big) * 0.8
    assert statuses == [len(SMALL_TEXT), len(SMALL_TEXT), 1, len(SMALL_TEXT), 0, len(SMALL_TEXT), len(big), len(SMALL_TEXT)]


async def test_compress_true_without_negotiation_sends_plain_frames() -> None:
    echo = Echo(per_message_deflate=True)
    async with running(echo.handler) as server:
        client = await RawClient.connect(server.port)  # no offer
        assert "sec-websocket-extensions" not in client.headers
        client.send_text(SMALL_TEXT)
        assert await client.recv_frame() == (wire.TEXT, SMALL_TEXT.encode(), True, False)
        client.close()


async def test_compress_disabled_negotiates_but_never_compresses() -> None:
    echo = Echo(per_message_deflate={"compress": False, "decompress": True})
    echo.on_message = lambda ws, msg: (
        ws.subscribe("t"),
        ws.send(msg, compress=True),
        ws.publish("t", "pub", compress=True),
    )
    async with running(echo.handler) as server:
        client = await RawClient.connect(server.port, extensions=PMD)
        other = await RawClient.connect(server.port, extensions=PMD)
        answer = client.headers["sec-websocket-extensions"]
        assert answer == f"{PMD}; client_no_context_takeover; server_no_context_takeover"
        # Inbound compressed frames are still inflated.
        client.send_raw(wire.client(wire.TEXT, client_compress(SMALL_TEXT.encode()), rsv1=True))
        assert await client.recv_frame() == (wire.TEXT, SMALL_TEXT.encode(), True, False)
        other.send_text("join")
        assert await other.recv_frame() == (wire.TEXT, b"join", True, False)
        assert server.publish("t", SMALL_TEXT) == len(SMALL_TEXT)  # compress=True default
        for c in (client, other):
            frames = [await c.recv_frame() for _ in range(2 if c is client else 1)]
            assert all(not rsv1 for _, _, _, rsv1 in frames)
        client.close()
        other.close()


@pytest.mark.parametrize("mode", ["shared", "dedicated", "3KB"])
@pytest.mark.parametrize("size", ["small", "1MiB"])
@pytest.mark.parametrize("nfrag", [2, 50, 1000])
async def test_fragmented_compressed_message_is_echoed(mode: str, size: str, nfrag: int) -> None:
    echo = Echo(compress=False, per_message_deflate=MODES[mode])
    text = SMALL_TEXT * 40 if size == "small" else BIG_TEXT
    async with running(echo.handler) as server:
        client = await RawClient.connect(server.port, extensions=PMD)
        assert client.headers["sec-websocket-extensions"].startswith(PMD)
        data = client_compress(text.encode())
        assert len(data) >= nfrag or size == "small"
        client.send_raw(compressed_fragments(wire.TEXT, data, nfrag))
        client.send_raw(compressed_fragments(wire.BINARY, client_compress(b"\x01\x02" * 300), 3))
        assert await client.recv_data(timeout=10) == (wire.TEXT, text.encode())
        assert await client.recv_data() == (wire.BINARY, b"\x01\x02" * 300)
        client.close()
    assert all(code not in (1002, 1007, 1009) for code, _ in echo.closes)  # only the shutdown


async def test_client_context_takeover_is_accepted_by_a_dedicated_decompressor() -> None:
    echo = Echo(compress=False, per_message_deflate=MODES["dedicated"])
    async with running(echo.handler) as server:
        client = await RawClient.connect(server.port, extensions=PMD)
        assert client.headers["sec-websocket-extensions"] == PMD  # takeover both ways
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        messages = [SMALL_TEXT, SMALL_TEXT, SMALL_TEXT + "!", MID_TEXT, MID_TEXT]
        for m in messages:
            data = c.compress(m.encode()) + c.flush(zlib.Z_SYNC_FLUSH)
            client.send_raw(wire.client(wire.TEXT, data[:-4], rsv1=True))
        for m in messages:
            assert await client.recv_data() == (wire.TEXT, m.encode())
        client.close()


async def test_complete_stream_with_bfinal_block_is_accepted() -> None:
    echo = Echo(compress=False, per_message_deflate=True)
    async with running(echo.handler) as server:
        client = await RawClient.connect(server.port, extensions=PMD)
        for n in (4097, 20_000):
            payload = _text_like(n, n).encode()
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            client.send_raw(wire.client(wire.BINARY, c.compress(payload) + c.flush(), rsv1=True))
            assert await client.recv_data() == (wire.BINARY, payload)
        client.close()


# ---------------------------------------------------------------- protocol errors
@pytest.mark.parametrize(
    "deflate, offer, raw",
    [
        (False, None, wire.client(wire.TEXT, client_compress(b"hi"), rsv1=True)),
        (True, None, wire.client(wire.TEXT, client_compress(b"hi"), rsv1=True)),  # not offered
        (True, PMD, wire.client(wire.TEXT, b"a", fin=False) + wire.client(wire.CONT, b"b", rsv1=True)),
        (True, PMD, wire.client(wire.PING, b"p", rsv1=True)),
    ],
    ids=["deflate-off", "not-negotiated", "rsv1-on-continuation", "rsv1-on-ping"],
)
async def test_unexpected_rsv1_is_1002(deflate: bool, offer: str | None, raw: bytes) -> None:
    echo = Echo(per_message_deflate=deflate)
    async with running(echo.handler) as server:
        client = await RawClient.connect(server.port, extensions=offer)
        client.send_raw(raw)
        assert await client.recv_close() == (1002, "Received unexpected RSV1 bit")
        await client.expect_eof()
    assert echo.closes == [(1002, "Received unexpected RSV1 bit")]


@pytest.mark.parametrize("mode", ["shared", "dedicated"])
@pytest.mark.parametrize(
    "payload",
    [b"\xff\xff\xff\xff", b"\x07" + b"\x00" * 10, client_compress(b"valid start " * 50)[:-3] + b"\xff\xff\xff"],
    ids=["reserved-btype", "bad-stored-len", "corrupt-tail"],
)
async def test_undecodable_compressed_data_is_1007(mode: str, payload: bytes) -> None:
    echo = Echo(per_message_deflate=MODES[mode])
    async with running(echo.handler) as server:
        client = await RawClient.connect(server.port, extensions=PMD)
        client.send_raw(wire.client(wire.BINARY, payload, rsv1=True))
        assert await client.recv_close() == (1007, "Received invalid compressed data")
        await client.expect_eof()
    assert echo.closes == [(1007, "Received invalid compressed data")]


# ---------------------------------------------------------------- deflate bomb
def _bomb() -> bytes:
    """≈1 MiB of raw deflate that inflates to 1 GiB of zeros.

    A full flush resets the dictionary, so one 16 MiB block compressed once can be
    repeated 64 times and still be a valid stream; the 4-byte tail is stripped.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = c.compress(bytes(16 * MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    assert chunk.endswith(TAIL)
    return (chunk * 64)[:-4]


_BOMB: list[bytes] = []


def bomb() -> bytes:
    if not _BOMB:
        _BOMB.append(_bomb())
    return _BOMB[0]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak() -> int:
    with open("/proc/self/status") as f:
        m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
    assert m
    return int(m.group(1)) * 1024


def test_bomb_really_is_one() -> None:
    data = bomb()
    assert 900 * 1024 < len(data) < 1200 * 1024
    d = zlib.decompressobj(-15)
    total = 0
    buf = data + TAIL
    while buf:
        out = d.decompress(buf, 64 * MiB)
        total += len(out)
        buf = d.unconsumed_tail
    assert total == 1 << 30


async def send_bomb(port: int, raw: bytes) -> tuple[int | None, str]:
    """Upgrade with deflate, send ``raw`` and return the server's Close ``(code, reason)``.

    A plain socket rather than :class:`RawClient`: the server closes while most of the
    bomb is still unread, so the kernel answers with RST, and asyncio's StreamReader
    raises ECONNRESET even though the Close frame is already in its buffer. The kernel
    still hands out data received before the RST, so ``sock_recv`` sees the frame.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5)
        await asyncio.wait_for(loop.sock_sendall(sock, RawClient.handshake_request(extensions=PMD)), 5)
        buf = b""
        async with asyncio.timeout(5):
            while b"\r\n\r\n" not in buf:
                chunk = await loop.sock_recv(sock, 4096)
                assert chunk, "EOF during handshake"
                buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101") and PMD.encode() in head

        async def send() -> None:
            try:
                await loop.sock_sendall(sock, raw)
            except OSError:  # reset by the server once it gave up: expected
                pass

        sender = asyncio.ensure_future(send())
        try:
            async with asyncio.timeout(10):
                while True:
                    if len(buf) >= 2:
                        n = buf[1] & 0x7F
                        assert n < 126 and buf[0] == 0x88, buf[:8]
                        if len(buf) >= 2 + n:
                            payload = buf[2 : 2 + n]
                            return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
                    try:
                        chunk = await loop.sock_recv(sock, 65536)
                    except ConnectionResetError:
                        chunk = b""
                    if not chunk:
                        return None, "connection ended without a Close frame"
                    buf += chunk
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    finally:
        sock.close()


@pytest.mark.parametrize("mode", ["shared", "dedicated"])
@pytest.mark.parametrize("nfrag", [1, 1000])
async def test_deflate_bomb_is_closed_with_1009_and_memory_stays_bounded(mode: str, nfrag: int) -> None:
    limit = 16 * MiB
    echo = Echo(per_message_deflate=MODES[mode], max_payload_length=limit)
    raw = compressed_fragments(wire.BINARY, bomb(), nfrag)
    async with running(echo.handler) as server:
        gc.collect()
        base = _rss()
        peak_ok = _reset_peak()
        base_peak = _peak()
        t0 = time.monotonic()
        assert await send_bomb(server.port, raw) == (1009, "Received too big message")
        elapsed = time.monotonic() - t0
        await eventually(lambda: len(echo.closes) == 1)
        after = _rss()
        peak = _peak() - base_peak if peak_ok else after - base
    print(f"\nbomb {mode}/{nfrag}: rejected in {elapsed * 1e3:.0f} ms, RSS delta "
          f"{(after - base) / MiB:.1f} MiB, peak delta {peak / MiB:.1f} MiB (peak measured: {peak_ok})")
    assert echo.closes == [(1009, "Received too big message")]
    assert elapsed < 3.0, f"bomb took {elapsed:.2f}s to be rejected"
    slack = 16 * MiB
    assert after - base < 2 * limit + slack, f"RSS grew by {(after - base) / MiB:.1f} MiB"
    assert peak < 2 * limit + slack, f"peak RSS grew by {peak / MiB:.1f} MiB"


# ---------------------------------------------------------------- publish with compress
async def test_publish_to_mixed_receivers_shared_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shared mode: receivers with deflate get the same RSV1 frame (compressed once per
    publish), one without deflate gets the plain frame, a websockets client decodes."""
    real = bunws.extensions.shared_deflater()

    class Counting:
        calls = 0

        def compress(self, data: Any) -> bytes:
            Counting.calls += 1
            return real.compress(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    # The shared compressor is looked up per connection at upgrade time.
    counting = Counting()
    monkeypatch.setattr(bunws.extensions, "shared_deflater", lambda *a, **k: counting)
    echo = _resubscribing(Echo(per_message_deflate=True))
    async with running(echo.handler) as server:
        d1 = await RawClient.connect(server.port, extensions=PMD)
        d2 = await RawClient.connect(server.port, extensions=PMD)
        d3 = await RawClient.connect(server.port, extensions=f"{PMD}; client_max_window_bits")
        plain = await RawClient.connect(server.port)
        async with websockets.connect(ws_url(server), compression="deflate", max_size=4 * MiB) as wsc:
            await eventually(lambda: server.subscriber_count("t") == 5)
            Counting.calls = 0
            for msg in (SMALL_TEXT, BIG_TEXT, SMALL_TEXT.encode()):
                assert server.publish("t", msg) == len(msg if isinstance(msg, bytes) else msg.encode())
            assert Counting.calls == 3  # once per publish, not once per receiver
            assert server.publish("t", "no", compress=False) == 2
            assert Counting.calls == 3
            wires = []
            for c in (d1, d2, d3):
                frames = [await c.recv_frame(timeout=10) for _ in range(4)]
                assert [(op, rsv1) for op, _, _, rsv1 in frames] == [(1, True), (1, True), (2, True), (1, False)]
                oracle = ServerInflater(c.headers["sec-websocket-extensions"])
                assert [oracle.inflate(p) if r else p for _, p, _, r in frames] == [
                    SMALL_TEXT.encode(), BIG_TEXT.encode(), SMALL_TEXT.encode(), b"no"
                ]
                wires.append([p for _, p, _, _ in frames])
            assert wires[0] == wires[1] == wires[2]  # byte-identical for every shared receiver
            frames = [await plain.recv_frame() for _ in range(4)]
            assert frames == [
                (1, SMALL_TEXT.encode(), True, False),
                (1, BIG_TEXT.encode(), True, False),
                (2, SMALL_TEXT.encode(), True, False),
                (1, b"no", True, False),
            ]
            got = [await asyncio.wait_for(wsc.recv(), 10) for _ in range(4)]
            assert got == [SMALL_TEXT, BIG_TEXT, SMALL_TEXT.encode(), "no"]
        for c in (d1, d2, d3, plain):
            c.close()


def _resubscribing(echo: Echo) -> Echo:
    """Rebuild the handler so ``open`` subscribes to "t" (handlers are read at serve())."""
    sockets = echo.sockets

    def open_(ws: bunws.ServerWebSocket) -> None:
        sockets.append(ws)
        ws.subscribe("t")

    opts = {
        name: getattr(echo.handler, name)
        for name in ("max_payload_length", "backpressure_limit", "per_message_deflate", "publish_to_self")
    }
    echo.handler = bunws.WebSocketHandler(open=open_, message=echo._message, **opts)
    return echo


@pytest.mark.parametrize("mode", ["dedicated", "16KB"])
async def test_publish_to_mixed_receivers_dedicated_mode(mode: str) -> None:
    """Dedicated compressors: a receiver with context takeover, one with
    server_no_context_takeover, one without deflate and a websockets client; several
    compressed publishes interleaved with direct compressed sends."""
    echo = _resubscribing(Echo(per_message_deflate=MODES[mode]))
    async with running(echo.handler) as server:
        takeover = await RawClient.connect(server.port, extensions=PMD)
        fresh = await RawClient.connect(server.port, extensions=f"{PMD}; server_no_context_takeover")
        plain = await RawClient.connect(server.port)
        assert "server_no_context_takeover" not in takeover.headers["sec-websocket-extensions"]
        assert "server_no_context_takeover" in fresh.headers["sec-websocket-extensions"]
        async with websockets.connect(ws_url(server), compression="deflate", max_size=4 * MiB) as wsc:
            await eventually(lambda: server.subscriber_count("t") == 4)
            sockets = list(echo.sockets)
            sent: list[str | bytes] = []
            for i, msg in enumerate([SMALL_TEXT, SMALL_TEXT, MID_TEXT, BIG_BINARY, SMALL_TEXT]):
                assert server.publish("t", msg) == len(msg if isinstance(msg, bytes) else msg.encode())
                sent.append(msg)
                if i == 1:  # a direct compressed send in between shares the context
                    for ws in sockets:
                        ws.send("direct", compress=True)
                    sent.append("direct")
            expected = [m.encode() if isinstance(m, str) else m for m in sent]
            for c, compressed in ((takeover, True), (fresh, True), (plain, False)):
                oracle = ServerInflater(c.headers["sec-websocket-extensions"]) if compressed else None
                frames = [await c.recv_frame(timeout=10) for _ in expected]
                assert all(rsv1 == compressed for _, _, _, rsv1 in frames)
                payloads = [oracle.inflate(p) if oracle else p for _, p, _, _ in frames]
                assert payloads == expected
                assert [op for op, _, _, _ in frames] == [1 if isinstance(m, str) else 2 for m in sent]
            got = [await asyncio.wait_for(wsc.recv(), 10) for _ in sent]
            assert got == sent
        for c in (takeover, fresh, plain):
            c.close()


# ---------------------------------------------------------------- inbound edge cases
@pytest.mark.parametrize("mode", ["shared", "dedicated"])
async def test_inflated_size_limit_is_exact(mode: str) -> None:
    """max_payload_length applies to the inflated message: == limit passes, +1 is 1009,
    also when the compressed frames are tiny and fragmented."""
    limit = 1000
    echo = Echo(compress=False, per_message_deflate=MODES[mode], max_payload_length=limit)
    async with running(echo.handler) as server:
        client = await RawClient.connect(server.port, extensions=PMD)
        client.send_raw(wire.client(wire.BINARY, client_compress(b"a" * limit), rsv1=True))
        assert await client.recv_data() == (wire.BINARY, b"a" * limit)
        client.send_raw(compressed_fragments(wire.BINARY, client_compress(b"b" * limit), 4))
        assert await client.recv_data() == (wire.BINARY, b"b" * limit)
        data = client_compress(b"c" * (limit + 1))
        assert len(data) < 100  # the frames themselves are far under the limit
        client.send_raw(compressed_fragments(wire.BINARY, data, 4))
        assert await client.recv_close() == (1009, "Received too big message")
        await client.expect_eof()
    assert echo.closes == [(1009, "Received too big message")]


@pytest.mark.parametrize("mode", ["shared", "dedicated"])
async def test_empty_and_tiny_compressed_messages(mode: str) -> None:
    echo = Echo(compress=True, per_message_deflate=MODES[mode])
    async with running(echo.handler) as server:
        client = await RawClient.connect(server.port, extensions=PMD)
        oracle = ServerInflater(client.headers["sec-websocket-extensions"])
        # RFC 7692 §7.2.3.6: an empty message compresses to a single 0x00 (an empty
        # stored block minus the tail); an empty fixed block works as well.
        assert client_compress(b"") == b"\x00"
        if mode == "shared":
            # An empty RSV1 payload (no deflate data at all) in a stateless inflater;
            # the context-takeover case is test_empty_rsv1_payload_keeps_context_in_sync.
            client.send_raw(wire.client(wire.TEXT, b"", rsv1=True))
        client.send_raw(wire.client(wire.TEXT, b"\x00", rsv1=True))
        client.send_raw(wire.client(wire.BINARY, b"\x02\x00", rsv1=True))  # empty fixed block
        client.send_raw(wire.client(wire.TEXT, client_compress(b"z"), rsv1=True))
        n = 4 if mode == "shared" else 3
        got = [await client.recv_frame() for _ in range(n)]
        # Empty payloads are echoed plain (nothing to compress), "z" compressed.
        assert [(op, p, rsv1) for op, p, _, rsv1 in got[:-1]] == [(wire.TEXT, b"", False)] * (n - 2) + [
            (wire.BINARY, b"", False)
        ]
        assert got[-1][3] and oracle.inflate(got[-1][1]) == b"z"
        client.close()


async def test_empty_rsv1_payload_keeps_context_in_sync() -> None:
    """Dedicated decompressor (client context takeover): a binary message whose
    compressed payload is empty, then an empty stored block (0x00), then "z".
    Acceptable: the three messages b"", b"", b"z" -- or a 1007 at the first one.
    Never: a later message delivered with different bytes."""
    received: list[bytes] = []
    echo = Echo(per_message_deflate=MODES["dedicated"])
    echo.on_message = lambda ws, msg: received.append(bytes(msg))
    async with running(echo.handler) as server:
        client = await RawClient.connect(server.port, extensions=PMD)
        assert client.headers["sec-websocket-extensions"] == PMD  # context takeover
        client.send_raw(wire.client(wire.BINARY, b"", rsv1=True))
        client.send_raw(wire.client(wire.BINARY, b"\x00", rsv1=True))
        client.send_raw(wire.client(wire.BINARY, client_compress(b"z"), rsv1=True))
        await eventually(lambda: len(received) == 3 or bool(echo.closes))
        client.close()
    if echo.closes and echo.closes[0][0] == 1007:
        assert received == []
    else:
        assert received == [b"", b"", b"z"]


async def test_invalid_utf8_after_inflating_is_1007() -> None:
    echo = Echo(compress=False, per_message_deflate=True)
    async with running(echo.handler) as server:
        client = await RawClient.connect(server.port, extensions=PMD)
        # A code point split across fragments of the inflated text is fine...
        data = client_compress("ünïcödé ".encode() * 100)
        client.send_raw(compressed_fragments(wire.TEXT, data, 7))
        assert (await client.recv_data())[1] == "ünïcödé ".encode() * 100
        # ...but invalid UTF-8 in the inflated text is not.
        client.send_raw(wire.client(wire.TEXT, client_compress(b"ok \xc0\xaf"), rsv1=True))
        assert await client.recv_close() == (1007, "Received invalid UTF-8")
        await client.expect_eof()


async def test_ping_between_compressed_fragments() -> None:
    echo = Echo(compress=False, per_message_deflate=True)
    async with running(echo.handler) as server:
        client = await RawClient.connect(server.port, extensions=PMD)
        data = client_compress(SMALL_TEXT.encode())
        half = len(data) // 2
        client.send_raw(
            wire.client(wire.TEXT, data[:half], fin=False, rsv1=True)
            + wire.client(wire.PING, b"p")
            + wire.client(wire.CONT, data[half:])
        )
        assert await client.recv_frame() == (wire.PONG, b"p", True, False)
        assert await client.recv_data() == (wire.TEXT, SMALL_TEXT.encode())
        client.close()


@pytest.mark.parametrize(
    "mode, offer",
    [
        ("dedicated", f"{PMD}; server_no_context_takeover"),
        ("16KB", f"{PMD}; server_no_context_takeover"),
        ("dedicated", f"{PMD}; server_no_context_takeover; server_max_window_bits=10"),
    ],
    ids=["dedicated", "16KB", "dedicated-window10"],
)
async def test_no_context_takeover_receivers_share_one_compression(
    mode: str, offer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 4: "a publish compresses once for every receiver that negotiated no
    server context takeover, and per receiver only where a dedicated compressor
    needs it". Three receivers that made the same offer with
    server_no_context_takeover get identical bytes, so one compression serves them
    all. Counted by wrapping both the shared compressor and the Deflater class the
    negotiation builds per connection (the only internals this file touches)."""
    real_cls = bunws.extensions.Deflater
    calls: list[int] = []

    class Counting:
        def __init__(self, real: Any) -> None:
            self._real = real

        def compress(self, data: Any) -> bytes:
            calls.append(len(data))
            return self._real.compress(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._real, name)

    # Every compressor the negotiation hands out, shared or per connection, is
    # wrapped (one wrapper per shared compressor, so sharing stays visible).
    real_shared = bunws.extensions.shared_deflater
    wrapped: dict[int, Counting] = {}

    def counting_shared(*a: Any, **k: Any) -> Counting:
        real = real_shared(*a, **k)
        return wrapped.setdefault(id(real), Counting(real))

    monkeypatch.setattr(bunws.extensions, "shared_deflater", counting_shared)
    monkeypatch.setattr(bunws.extensions, "Deflater", lambda *a, **k: Counting(real_cls(*a, **k)))
    echo = _resubscribing(Echo(per_message_deflate=MODES[mode]))
    async with running(echo.handler) as server:
        clients = [
            await RawClient.connect(server.port, extensions=offer)
            for _ in range(3)
        ]
        await eventually(lambda: server.subscriber_count("t") == 3)
        assert all(isinstance(ws.deflater, Counting) for ws in echo.sockets)
        assert server.publish("t", SMALL_TEXT) == len(SMALL_TEXT)
        frames = [await c.recv_frame() for c in clients]
        assert frames[0] == frames[1] == frames[2] and frames[0][3]
        oracle = ServerInflater(clients[0].headers["sec-websocket-extensions"])
        assert oracle.inflate(frames[0][1]) == SMALL_TEXT.encode()
        for c in clients:
            c.close()
    assert len(calls) == 1, f"compressed {len(calls)} times for 3 identical receivers"
