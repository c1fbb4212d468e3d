"""The data-loss contract, as a hypothesis state machine over a real loopback socket.

README, "Send status": a send that returned ``> 0`` or ``-1`` reaches the kernel, or
exactly one ``close`` handler call follows; ``0`` means dropped. Each example starts
a server (small ``backpressure_limit``, small socket buffers so backpressure comes
quickly) and one raw client, then interleaves: numbered binary sends of random sizes
from outside any handler and inside ``ws.cork``; the client reading some, all or
nothing; waiting for ``drain``; ``ws.close()``; a client reset (RST); and
``server.stop()``. At the end the client reads whatever it still can.

Invariant: the messages the client received are exactly a prefix of the accepted
sends (status ``> 0`` or ``-1``), in order, without duplicates (so never a dropped
one); if that prefix is shorter than the accepted list, the close handler ran exactly
once (never more than once in any case), with the code of what ended the socket.

The machine drives a private event loop with ``run_until_complete`` per rule (every
wait bounded); it runs on the stock loop only and stays under ~30 s.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import bunws
from rawclient import RawClient

LIMIT = 64 * 1024
SIZES = st.sampled_from([4, 50, 100, 1000, 3000, 9000, 30000, 70000])
# Ending rules fire on one draw in RARE, so most examples send for a while first.
RARE = st.integers(0, 4)
STEP = 5.0  # bound of any single wait


class ContractMachine(RuleBasedStateMachine):
    loop: asyncio.AbstractEventLoop  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.server: bunws.Server | None = None
        self.ws: bunws.ServerWebSocket | None = None
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.received: list[int] = []
        self.client_close: tuple[int, bytes] | None = None
        self.eof = False
        self.reset = False
        self.stopped = False
        self.closed_by: set[int] = set()  # codes the server-side could legitimately report
        self.sends: list[tuple[int, int]] = []  # (number, status)
        self.closes: list[tuple[int, str]] = []
        self.drains = 0
        self.next_no = 0

    # ------------------------------------------------------------------ plumbing
    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, STEP))

    def _open(self, ws: bunws.ServerWebSocket) -> None:
        self.ws = ws
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)

    def _close(self, ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def _drain(self, ws: bunws.ServerWebSocket) -> None:
        self.drains += 1

    @initialize()
    def start(self) -> None:
        async def go() -> None:
            handler = bunws.WebSocketHandler(
                open=self._open, close=self._close, drain=self._drain,
                backpressure_limit=LIMIT, idle_timeout=0,
            )
            self.server = await bunws.serve(
                lambda req, srv: None if srv.upgrade(req) else bunws.Response("no", status=400),
                handler, port=0, close_timeout=0.4,
            )
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await self.loop.sock_connect(sock, ("127.0.0.1", self.server.port))
            self.sock = sock
            await self.loop.sock_sendall(sock, RawClient.handshake_request("/"))
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await self.loop.sock_recv(sock, 1)
                assert chunk, "EOF during the handshake"
                head += chunk
            assert head.startswith(b"HTTP/1.1 101 ")
            assert self.ws is not None

        self.run(go())

    def _payload(self, size: int) -> bytes:
        no = self.next_no
        self.next_no += 1
        return struct.pack("!I", no) + bytes(size - 4)

    def _record(self, payload: bytes, status: int) -> None:
        no = struct.unpack("!I", payload[:4])[0]
        assert status in (len(payload), -1, 0), status
        if self.closes:
            assert status == 0, "a send after the close handler was accepted"
        self.sends.append((no, status))

    async def _pull(self, max_bytes: int) -> None:
        """Read what is available now (up to max_bytes), parse whole frames."""
        sock = self.sock
        if sock is None or self.eof or self.reset:
            return
        await asyncio.sleep(0.002)  # let the server's transport write
        got = 0
        while got < max_bytes:
            try:
                chunk = sock.recv(min(65536, max_bytes - got))
            except BlockingIOError:
                break
            except ConnectionResetError:
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            got += len(chunk)
            self.buf += chunk
        self._parse()

    def _parse(self) -> None:
        buf = self.buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            assert not b1 & 0x80
            n, i = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, i = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, i = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < i + n:
                return
            opcode, payload = b0 & 0x0F, bytes(buf[i:i + n])
            del buf[:i + n]
            assert self.client_close is None, "a frame after Close"
            if opcode == 2:
                self.received.append(struct.unpack("!I", payload[:4])[0])
            elif opcode == 8:
                code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                self.client_close = (code, payload[2:])
            else:
                assert opcode in (9, 10), opcode

    @property
    def open(self) -> bool:
        return self.ws is not None and self.ws.ready_state == 1

    # ------------------------------------------------------------------ rules
    @rule(size=SIZES)
    def send(self, size: int) -> None:
        payload = self._payload(size)
        self._record(payload, self.ws.send(payload))

    @rule(sizes=st.lists(SIZES, min_size=1, max_size=5))
    def corked_sends(self, sizes: list[int]) -> None:
        payloads = [self._payload(size) for size in sizes]
        statuses = self.ws.cork(lambda ws: [ws.send(p) for p in payloads])
        for payload, status in zip(payloads, statuses):
            self._record(payload, status)

    @rule(max_bytes=st.sampled_from([1, 1000, 20000, 1 << 20]))
    def client_reads(self, max_bytes: int) -> None:
        self.run(self._pull(max_bytes))

    @rule()
    def spin(self) -> None:
        self.run(asyncio.sleep(0.005))

    @precondition(lambda self: self.open and not self.reset and not self.eof)
    @rule()
    def drain(self) -> None:
        """The client reads until the server's buffer is empty (drain fired)."""
        async def go() -> None:
            while self.open and self.ws.buffered_amount > 0 and not self.eof:
                await self._pull(1 << 20)
            await self._pull(1 << 20)

        self.run(go())
        if self.open:
            assert self.ws.buffered_amount == 0

    @precondition(lambda self: self.open)
    @rule(code=st.sampled_from([1000, 4000]), go=RARE)
    def ws_close(self, code: int, go: int) -> None:
        if go:
            return
        self.closed_by.add(code)
        self.ws.close(code)

    @precondition(lambda self: not self.reset and self.sock is not None)
    @rule(go=RARE)
    def client_reset(self, go: int) -> None:
        if go:
            return
        self.reset = True
        self.closed_by.add(1006)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
        self.sock = None

        async def gone() -> None:
            while self.open:
                await asyncio.sleep(0.005)

        self.run(gone())

    @precondition(lambda self: not self.stopped)
    @rule(close_active=st.booleans(), go=RARE)
    def stop(self, close_active: bool, go: int) -> None:
        if go:
            return
        self.stopped = True
        self.closed_by.update((1001, 1006))
        self.run(self.server.stop(close_active))
        assert not self.open

    # ------------------------------------------------------------------ checks
    @invariant()
    def prefix_of_accepted(self) -> None:
        accepted = [no for no, status in self.sends if status != 0]
        assert self.received == accepted[: len(self.received)], (self.received[-5:], accepted[:10])
        assert len(self.closes) <= 1, self.closes

    def teardown(self) -> None:
        try:
            if self.server is None:
                return

            async def finish() -> None:
                # The client reads everything it still can, answering nothing.
                deadline = self.loop.time() + STEP
                while self.sock is not None and not self.eof and self.loop.time() < deadline:
                    if self.open and self.ws.buffered_amount == 0 and len(self.received) == sum(
                            1 for _, s in self.sends if s != 0):
                        break
                    await self._pull(1 << 20)
                if self.open:
                    self.closed_by.add(1000)
                    self.ws.close(1000)
                while self.sock is not None and not self.eof and self.loop.time() < deadline:
                    await self._pull(1 << 20)
                    if self.client_close is not None:
                        break
                if not self.stopped:
                    self.closed_by.update((1001, 1006))
                    await self.server.stop(True)

            self.run(finish())
            accepted = [no for no, status in self.sends if status != 0]
            assert self.received == accepted[: len(self.received)]
            assert len(self.closes) == 1, self.closes  # every socket ended here
            if len(self.received) < len(accepted):
                code = self.closes[0][0]
                assert code in self.closed_by, (code, self.closed_by)
        finally:
            if self.sock is not None:
                self.sock.close()


@pytest.mark.timeout(60)
def test_data_loss_contract() -> None:
    loop = asyncio.new_event_loop()
    ContractMachine.loop = loop
    try:
        run = ContractMachine.TestCase
        run.settings = settings(
            max_examples=40, stateful_step_count=50, deadline=None, derandomize=True,
            database=None, suppress_health_check=list(HealthCheck),
        )
        run("runTest").runTest()
    finally:
        loop.close()
