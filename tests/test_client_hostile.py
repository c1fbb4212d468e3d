"""The client against hostile raw-socket servers: every broken answer or frame
gets a precise exception (and close code on the wire), never a hang or a crash."""

from __future__ import annotations

import asyncio
import struct
import zlib

import pytest
from client_peers import answer, raw_server, read_request

import bunws
from bunws import connect
from bunws._frame import FrameParser, Opcode, encode_frame

pytestmark = pytest.mark.timeout(30)

FAST = {"ping_interval": None, "close_timeout": 0.5, "open_timeout": 3, "proxy": None}


def handshake_with(extra: str = "", accept: str | None = None):
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(await read_request(reader), accept=accept, extra=extra))
        await asyncio.sleep(3600)

    return script


@pytest.mark.parametrize(
    ("extra", "accept", "match"),
    [
        ("", "d3Jvbmc=", "Sec-WebSocket-Accept"),
        ("Sec-WebSocket-Extensions: x-unknown\r\n", None, "not offered"),
        ("Sec-WebSocket-Extensions: permessage-deflate; foo=1\r\n", None, "unknown parameter"),
        ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=7\r\n", None,
         "invalid client_max_window_bits"),
        ("Sec-WebSocket-Extensions: permessage-deflate, permessage-deflate\r\n", None, "twice"),
        ("Sec-WebSocket-Protocol: chat\r\n", None, "not offered"),
    ],
)
async def test_bad_handshake_answers(extra: str, accept: str | None, match: str) -> None:
    async with raw_server(handshake_with(extra, accept)) as port:
        with pytest.raises(bunws.InvalidHandshake, match=match):
            await connect(f"ws://127.0.0.1:{port}/", **FAST)


async def test_malformed_status_line_and_huge_head() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await asyncio.sleep(3600)

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 101 OK\r\n")
        for _ in range(100):
            writer.write(b"X-Filler: " + b"a" * 1000 + b"\r\n")
            await writer.drain()
        await asyncio.sleep(3600)

    for script, match in ((garbage, "status line"), (endless, "64 KiB")):
        async with raw_server(script) as port:
            with pytest.raises(bunws.InvalidHandshake, match=match):
                await connect(f"ws://127.0.0.1:{port}/", **FAST)


async def frames_after_handshake(frames: bytes, *, extra: str = "") -> tuple[Exception, bytes]:
    """Connect to a server that sends ``frames`` after a good handshake; returns
    what ``recv`` raised and the frames the client sent back (unmasked)."""
    received = bytearray()
    done = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(await read_request(reader), extra=extra) + frames)
        try:
            while chunk := await reader.read(65536):
                received.extend(chunk)
        finally:
            done.set()

    async with raw_server(script) as port:
        ws = await connect(f"ws://127.0.0.1:{port}/", **FAST)
        with pytest.raises(bunws.ConnectionClosed) as info:
            while True:
                await ws.recv()
        await asyncio.wait_for(done.wait(), 5)
    return info.value, bytes(received)


def close_code_sent(wire: bytes) -> int:
    events = FrameParser(server=True).feed(wire)
    opcode, payload = events[-1]
    assert opcode == Opcode.CLOSE
    return payload[0]


async def test_masked_server_frame_is_1002() -> None:
    error, wire = await frames_after_handshake(encode_frame(1, "hi", mask=b"abcd"))
    assert isinstance(error, bunws.ConnectionClosedError) and error.sent_code == 1002
    assert close_code_sent(wire) == 1002


async def test_4_gib_length_is_1009_without_allocating() -> None:
    header = b"\x82\x7f" + struct.pack("!Q", 4 << 30)
    error, wire = await frames_after_handshake(header + b"\x00" * 1000)
    assert error.sent_code == 1009 and close_code_sent(wire) == 1009


async def test_invalid_utf8_is_1007() -> None:
    error, wire = await frames_after_handshake(encode_frame(1, b"\xff\xfe"))
    assert error.sent_code == 1007 and close_code_sent(wire) == 1007


async def test_deflate_bomb_is_1009() -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(b"\x00" * (8 << 20)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 100_000
    frame = encode_frame(2, bomb[:-4], rsv1=True)
    error, wire = await frames_after_handshake(
        frame, extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"
    )
    assert error.sent_code == 1009 and close_code_sent(wire) == 1009


async def test_compressed_frame_without_deflate_is_1002() -> None:
    error, wire = await frames_after_handshake(encode_frame(2, b"zz", rsv1=True))
    assert error.sent_code == 1002


async def test_server_that_never_answers_the_close() -> None:
    async with raw_server(handshake_with()) as port:
        ws = await connect(f"ws://127.0.0.1:{port}/", **FAST)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(ws.close(), 5)
        assert loop.time() - start < 2
        assert ws.close_code == 1006 and ws.state == "CLOSED"


async def test_server_ping_is_answered_and_close_echoed() -> None:
    error, wire = await frames_after_handshake(
        encode_frame(9, b"p1") + encode_frame(8, struct.pack("!H", 1001) + b"bye")
    )
    assert isinstance(error, bunws.ConnectionClosedOK) and (error.code, error.reason) == (1001, "bye")
    events = FrameParser(server=True).feed(wire)
    assert events == [(Opcode.PONG, b"p1"), (Opcode.CLOSE, (1001, "bye"))]


async def test_tcp_reset_mid_message_is_1006() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(await read_request(reader)) + b"\x82\x7e\x10\x00" + b"a" * 100)
        await writer.drain()

    async with raw_server(cut) as port:
        ws = await connect(f"ws://127.0.0.1:{port}/", **FAST)
        with pytest.raises(bunws.ConnectionClosedError) as info:
            await ws.recv()
        assert info.value.code == 1006 and info.value.sent_code is None


async def test_refusal_body_is_bounded() -> None:
    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: 10000000\r\n\r\n")
        for _ in range(200):
            writer.write(b"e" * 4096)
            await writer.drain()
        await asyncio.sleep(3600)

    async with raw_server(big) as port:
        with pytest.raises(bunws.InvalidStatus) as info:
            await connect(f"ws://127.0.0.1:{port}/", **FAST)
    assert info.value.status == 500 and len(info.value.body) == 64 * 1024
