"""A raw-socket WebSocket client for tests: exact bytes in, exact frames out.

Used where the ``websockets`` client is too well-behaved: hostile input, byte-level
assertions on what the server wrote, clients that stop reading.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct

import wire

DEFAULT_TIMEOUT = 5.0


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.head = b""
        self.headers: dict[str, str] = {}

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str = "/",
        *,
        extra: list[tuple[str, str]] | None = None,
        key: str | None = None,
        version: str = "13",
        extensions: str | None = None,
        handshake: bool = True,
        trailing: bytes = b"",
        limit: int = 2**24,
    ) -> RawClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, limit=limit), DEFAULT_TIMEOUT
        )
        client = cls(reader, writer)
        if handshake:
            writer.write(client.handshake_request(path, extra, key, version, extensions) + trailing)
            await client.read_head()
        return client

    @staticmethod
    def handshake_request(
        path: str = "/",
        extra: list[tuple[str, str]] | None = None,
        key: str | None = None,
        version: str = "13",
        extensions: str | None = None,
    ) -> bytes:
        key = key or base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            f"Sec-WebSocket-Version: {version}",
        ]
        if extensions:
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        for name, value in extra or ():
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def read_head(self) -> int:
        self.head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), DEFAULT_TIMEOUT)
        lines = self.head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                self.headers[name.strip().lower()] = value.strip()
        return self.status

    async def read_body(self) -> bytes:
        length = int(self.headers.get("content-length", "0"))
        return await asyncio.wait_for(self.reader.readexactly(length), DEFAULT_TIMEOUT)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, opcode: int, payload: bytes | str = b"", **kw) -> None:
        self.writer.write(wire.client(opcode, payload, **kw))

    def send_text(self, text: str) -> None:
        self.send(wire.TEXT, text)

    def send_close(self, code: int | None = 1000, reason: str = "") -> None:
        self.send(wire.CLOSE, wire.close_payload(code, reason))

    async def recv_frame(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, bytes, bool, bool]:
        """``(opcode, payload, fin, rsv1)`` of the next server frame."""
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            if b1 & 0x80:
                raise AssertionError("server frames must not be masked")
            length = b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(length)
        return b0 & 0x0F, payload, bool(b0 & 0x80), bool(b0 & 0x40)

    async def recv_data(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, bytes]:
        """The next text/binary frame, skipping pings and pongs."""
        while True:
            opcode, payload, _, _ = await self.recv_frame(timeout)
            if opcode not in (wire.PING, wire.PONG):
                return opcode, payload

    async def recv_close(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[int | None, str]:
        """Skip to the server's Close frame; ``(code, reason)`` (code None if empty)."""
        while True:
            opcode, payload, _, _ = await self.recv_frame(timeout)
            if opcode == wire.CLOSE:
                if not payload:
                    return None, ""
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8")

    async def expect_eof(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Read until the server closes TCP; returns whatever was still received."""
        async with asyncio.timeout(timeout):
            return await self.reader.read()

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.transport.abort()
