"""The listening transport (aiofastnet's or asyncio's) and the compiled read path.

After the upgrade the session is the transport's protocol: every read goes
``get_buffer`` -> ``buffer_updated`` -> parser -> ``dispatch`` in C. These tests
pin that hand-over on both transports and both loops, over real sockets.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest
import wire
from conftest import TRANSPORTS, eventually, running
from rawclient import RawClient

import bunws
import bunws.fastnet
from bunws import InvalidArgument, InvalidType
from bunws.session import WebSocketSession


def echo_handler(**options: object) -> tuple[bunws.WebSocketHandler, list[bunws.ServerWebSocket]]:
    sockets: list[bunws.ServerWebSocket] = []
    handler = bunws.WebSocketHandler(
        open=sockets.append, message=lambda ws, msg: ws.send(msg), **options,  # type: ignore[arg-type]
    )
    return handler, sockets


def test_resolve_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bunws.fastnet, "fast_transport_available", lambda: True)
    assert bunws.fastnet.resolve(True) is True
    assert bunws.fastnet.resolve(False) is False
    assert bunws.fastnet.resolve(False, tls=True) is False
    with pytest.raises(InvalidArgument, match="TLS"):
        bunws.fastnet.resolve(True, tls=True)  # TLS keeps asyncio's transports
    monkeypatch.setattr(bunws.fastnet, "fast_transport_available", lambda: False)
    assert bunws.fastnet.resolve(False) is False
    with pytest.raises(InvalidArgument, match=r"bunws\[fast\]"):
        bunws.fastnet.resolve(True)
    for wrong in ("yes", 1, 0.0, None):
        with pytest.raises(InvalidType, match="fast_transport"):
            bunws.fastnet.resolve(wrong)  # type: ignore[arg-type]


async def test_serve_checks_fast_transport() -> None:
    fetch = lambda req, server: bunws.Response("x")  # noqa: E731
    with pytest.raises(InvalidType):
        await bunws.serve(fetch, port=0, fast_transport="on")  # type: ignore[arg-type]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with pytest.raises(InvalidArgument):
        await bunws.serve(fetch, port=0, ssl=context, fast_transport=True)


async def test_reads_go_to_the_session_on_the_chosen_transport(both_transports: str) -> None:
    handler, sockets = echo_handler()
    async with running(handler) as server:
        assert server.fast_transport is (both_transports == "fastnet")
        client = await RawClient.connect(server.port)
        client.send(wire.TEXT, "one")
        assert await client.recv_data() == (wire.TEXT, b"one")
        ws = sockets[0]
        transport = ws.transport
        assert type(transport).__module__.startswith("aiofastnet") is (both_transports == "fastnet")
        # The compiled read path is the transport's protocol from now on.
        assert isinstance(transport.get_protocol(), WebSocketSession)
        for i in range(50):
            client.send(wire.BINARY, bytes([i]) * (i * 97 % 3000))
        for i in range(50):
            assert await client.recv_data() == (wire.BINARY, bytes([i]) * (i * 97 % 3000))
        client.send_close(1000, "bye")
        assert await client.recv_close() == (1000, "bye")
        await client.expect_eof()
        client.close()


@pytest.mark.usefixtures("both_transports")
async def test_frames_sent_with_the_handshake_come_first_then_the_rest() -> None:
    handler, sockets = echo_handler()
    async with running(handler) as server:
        early = b"".join(wire.client(wire.TEXT, f"early {i}") for i in range(3))
        client = await RawClient.connect(server.port, trailing=early)
        for i in range(3, 6):
            client.send(wire.TEXT, f"late {i}")
        got = [await client.recv_data() for _ in range(6)]
        assert got == [(wire.TEXT, f"early {i}".encode()) for i in range(3)] + [
            (wire.TEXT, f"late {i}".encode()) for i in range(3, 6)
        ]
        assert isinstance(sockets[0].transport.get_protocol(), WebSocketSession)
        client.close()


@pytest.mark.usefixtures("both_transports")
async def test_paused_socket_holds_reads_on_the_direct_path() -> None:
    got: list[bytes] = []
    sockets: list[bunws.ServerWebSocket] = []
    handler = bunws.WebSocketHandler(open=sockets.append, message=lambda ws, msg: got.append(bytes(msg)))
    async with running(handler) as server:
        client = await RawClient.connect(server.port)
        client.send(wire.BINARY, b"a")
        await eventually(lambda: got == [b"a"])
        sockets[0].pause()
        client.send(wire.BINARY, b"b")
        client.send(wire.BINARY, b"c")
        await asyncio.sleep(0.05)
        assert got == [b"a"]  # held while paused
        sockets[0].resume()
        await eventually(lambda: got == [b"a", b"b", b"c"])
        client.send(wire.BINARY, b"d")
        await eventually(lambda: got == [b"a", b"b", b"c", b"d"])
        client.close()


@pytest.mark.usefixtures("both_transports")
async def test_protocol_error_and_peer_close_on_the_direct_path() -> None:
    closes: list[tuple[int, str]] = []
    handler = bunws.WebSocketHandler(close=lambda ws, code, reason: closes.append((code, reason)))
    async with running(handler) as server:
        client = await RawClient.connect(server.port)
        client.send_raw(bytes([0x81, 0x05]) + b"hello")  # unmasked client frame: 1002
        code, _ = await client.recv_close()
        assert code == 1002
        await eventually(lambda: len(closes) == 1)
        assert closes[0][0] == 1002
        client.close()


@pytest.mark.usefixtures("both_transports")
async def test_idle_timeout_still_counts_reads_on_the_direct_path() -> None:
    closes: list[tuple[int, str]] = []
    sockets: list[bunws.ServerWebSocket] = []
    handler = bunws.WebSocketHandler(
        idle_timeout=8, send_pings=False, open=sockets.append,
        close=lambda ws, code, reason: closes.append((code, reason)),
    )
    async with running(handler) as server:
        client = await RawClient.connect(server.port)
        await eventually(lambda: sockets)
        before = server.clock()
        client.send(wire.PING, b"x")
        assert await client.recv_frame() == (wire.PONG, b"x", True, False)
        after = server.clock()
        session = sockets[0].transport.get_protocol()
        assert isinstance(session, WebSocketSession)
        # The read restarted the idle clock, on the loop's own clock.
        assert before <= session.last_inbound <= after
        session.check_timers(before + 7.9)
        assert closes == []
        session.check_timers(after + 8.0)
        await eventually(lambda: closes == [(1006, "WebSocket timed out from inactivity")])
        client.close()
