"""Lifecycle over real loopback sockets: idle timeout and pings, handshake timeout
(slowloris), graceful stop, TLS, connection cap, option validation.

Reference: docs/bun-behaviour.md §1 (options), §6.2 (close paths), §8 (idle/pings),
§14 (slowloris, graceful shutdown); issue 3 "Tests".
The long timing tests run several scenarios concurrently in one test and only on the
stock asyncio loop (the timers are the server's own tick, not the loop's).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
import websockets
import wire
from conftest import eventually, running, ws_url
from rawclient import RawClient

import bunws

pytestmark = pytest.mark.usefixtures("both_transports")

ASYNCIO_ONLY = pytest.mark.asyncio(loop_factories=["asyncio"])
TIMEOUT_REASON = "WebSocket timed out from inactivity"


def now() -> float:
    return asyncio.get_running_loop().time()


class Closes:
    """A handler that echoes messages and records every close with its time."""

    def __init__(self, **options: Any) -> None:
        self.opened: list[bunws.ServerWebSocket] = []
        self.closes: list[tuple[Any, int, str, float]] = []
        self.handler = bunws.WebSocketHandler(
            open=self._open, message=self._message, close=self._close, **options
        )

    def _open(self, ws: bunws.ServerWebSocket) -> None:
        self.opened.append(ws)

    def _message(self, ws: bunws.ServerWebSocket, msg: Any) -> None:
        ws.send(msg)

    def _close(self, ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
        self.closes.append((ws.data, code, reason, now()))

    def by_path(self, path: str) -> list[tuple[int, str, float]]:
        return [(c, r, t) for p, c, r, t in self.closes if p == path]


async def read_eof(client: RawClient, timeout: float) -> bytes:
    """Everything until the server ends TCP (a reset counts as the end too)."""
    out = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await client.reader.read(65536)
            except (ConnectionResetError, BrokenPipeError):
                return out
            if not chunk:
                return out
            out += chunk


async def http_status(port: int, raw: bytes, timeout: float = 5.0) -> int:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(raw)
        line = await asyncio.wait_for(reader.readline(), timeout)
        return int(line.split()[1])
    finally:
        writer.close()


# ================================================================ idle timeout / pings
@ASYNCIO_ONLY
async def test_idle_timeout_pings_reaping_and_liveness() -> None:
    """idle_timeout=8: every scenario of docs/bun-behaviour.md §8 in one ~11 s window.

    * silent raw client, send_pings=True: empty Ping at ~4 s, TCP closed at ~8 s, no Close;
    * client answering pings (websockets' automatic pongs) stays open past 8 s;
    * server keeps sending to a silent client: still reaped (inbound-only liveness);
    * send_pings=False: silent client closed at ~8 s without any ping;
    * idle_timeout=0: nothing happens at all.
    """
    pinging = Closes(idle_timeout=8, send_pings=True)
    quiet = Closes(idle_timeout=8, send_pings=False)
    never = Closes(idle_timeout=0)
    async with running(pinging.handler) as s1, running(quiet.handler) as s2, running(never.handler) as s3:
        start = now()

        async def silent_with_pings() -> None:
            client = await RawClient.connect(s1.port, "/silent")
            frame = await client.recv_frame(timeout=7)
            t_ping = now() - start
            assert frame == (wire.PING, b"", True, False)
            rest = await read_eof(client, 7)
            t_eof = now() - start
            assert rest == b"", "no Close frame (nor anything else) on an idle timeout"
            assert 3.0 <= t_ping <= 6.0, t_ping
            assert 7.0 <= t_eof <= 10.0, t_eof

        async def answering() -> None:
            async with websockets.connect(ws_url(s1, "/answer"), ping_interval=None) as client:
                await asyncio.sleep(11.0 - (now() - start))
                await asyncio.wait_for(client.send("still here"), 2)
                assert await asyncio.wait_for(client.recv(), 2) == "still here"

        async def server_keeps_sending() -> None:
            client = await RawClient.connect(s1.port, "/sendy")
            await eventually(lambda: any(ws.data == "/sendy" for ws in pinging.opened))
            ws = next(ws for ws in pinging.opened if ws.data == "/sendy")

            async def sender() -> None:
                for i in range(40):
                    if ws.ready_state != 1:
                        return
                    ws.send(f"tick {i}")
                    await asyncio.sleep(0.25)

            task = asyncio.create_task(sender())
            try:
                data = await read_eof(client, 11)  # reads everything, never writes
            finally:
                task.cancel()
            t_eof = now() - start
            assert b"tick 0" in data
            assert 7.0 <= t_eof <= 10.0, t_eof

        async def silent_no_pings() -> None:
            client = await RawClient.connect(s2.port, "/quiet")
            rest = await read_eof(client, 11)
            t_eof = now() - start
            assert rest == b"", "send_pings=False: no ping, no Close frame"
            assert 7.0 <= t_eof <= 10.0, t_eof

        async def never_times_out() -> None:
            client = await RawClient.connect(s3.port, "/never")
            with pytest.raises(TimeoutError):
                await client.recv_frame(timeout=11.0 - (now() - start))
            client.send_text("alive")
            assert await client.recv_data() == (wire.TEXT, b"alive")
            client.close()

        await asyncio.wait_for(
            asyncio.gather(
                silent_with_pings(), answering(), server_keeps_sending(), silent_no_pings(), never_times_out()
            ),
            15,
        )
        await eventually(lambda: len(pinging.closes) == 3 and len(quiet.closes) == 1, 3)

    for path in ("/silent", "/sendy"):
        [(code, reason, t)] = pinging.by_path(path)
        assert (code, reason) == (1006, TIMEOUT_REASON), path
        assert 7.0 <= t - start <= 10.0, (path, t - start)
    assert [(c, r) for c, r, _ in pinging.by_path("/answer")] == [(1000, "")]
    [(code, reason, t)] = quiet.by_path("/quiet")
    assert (code, reason) == (1006, TIMEOUT_REASON)
    assert [c for _, c, _, _ in never.closes] in ([], [1000], [1006])


@pytest.mark.parametrize(
    "given, expected",
    [(0, 0), (1, 8), (3, 8), (7, 8), (8, 8), (9, 9), (960, 960), (-1, 0), (-100, 0)],
)
def test_idle_timeout_clamping(given: int, expected: int) -> None:
    assert bunws.WebSocketHandler(idle_timeout=given).idle_timeout == expected


@pytest.mark.parametrize(
    "options, error",
    [
        ({"idle_timeout": 961}, bunws.InvalidArgument),
        ({"idle_timeout": "8"}, bunws.InvalidType),
        ({"idle_timeout": 8.0}, bunws.InvalidType),
        ({"idle_timeout": True}, bunws.InvalidType),
        ({"max_payload_length": "1"}, bunws.InvalidType),
        ({"max_payload_length": 1.5}, bunws.InvalidType),
        ({"backpressure_limit": None}, bunws.InvalidType),
        ({"close_on_backpressure_limit": 1}, bunws.InvalidType),
        ({"send_pings": "yes"}, bunws.InvalidType),
        ({"publish_to_self": 0}, bunws.InvalidType),
        ({"message": "not callable"}, bunws.InvalidType),
        ({"close": 42}, bunws.InvalidType),
        ({"max_fragments": 0}, bunws.InvalidArgument),
        ({"per_message_deflate": "shared"}, bunws.InvalidType),
    ],
)
def test_handler_option_validation(options: dict, error: type) -> None:
    with pytest.raises(error):
        bunws.WebSocketHandler(**options)
    # The Python-facing errors are also the builtin kinds.
    assert issubclass(bunws.InvalidType, TypeError) and issubclass(bunws.InvalidArgument, ValueError)


def test_numeric_option_clamping() -> None:
    h = bunws.WebSocketHandler(max_payload_length=-5, backpressure_limit=-1)
    assert (h.max_payload_length, h.backpressure_limit) == (0, 0)
    assert bunws.WebSocketHandler(max_payload_length=2**40).max_payload_length == 2**32 - 1
    h = bunws.WebSocketHandler()
    assert (h.max_payload_length, h.backpressure_limit, h.idle_timeout) == (2**24, 2**24, 120)
    assert (h.send_pings, h.publish_to_self, h.close_on_backpressure_limit) == (True, False, False)
    assert h.max_fragments == max(1024, 2**24 // 256)


@pytest.mark.parametrize(
    "options",
    [
        {"handshake_timeout": 0},
        {"close_timeout": -1},
        {"handshake_timeout": "1"},
        {"max_head_size": 0},
        {"max_headers": 1.5},
        {"max_connections": 0},
        {"max_pending_handshakes": True},
        {"port": 70000},
    ],
)
async def test_serve_option_validation(options: dict) -> None:
    with pytest.raises((bunws.InvalidArgument, bunws.InvalidType)):
        await bunws.serve(lambda req, server: None, bunws.WebSocketHandler(), hostname="127.0.0.1", **options)


# ================================================================ handshake timeout
@ASYNCIO_ONLY
async def test_handshake_timeout_closes_slowloris_and_idle_keepalive() -> None:
    rec = Closes()

    def fetch(req: bunws.Request, server: bunws.Server) -> Any:
        if req.path == "/http":
            return bunws.Response("ok")
        return None if server.upgrade(req, data=req.path) else bunws.Response("no", status=400)

    async with running(rec.handler, fetch=fetch, handshake_timeout=1.0) as server:
        request = RawClient.handshake_request("/slow")
        start = now()

        async def slowloris() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                for i in range(40):  # 12 s of dribbling at most
                    try:
                        writer.write(request[i : i + 1])
                    except (ConnectionError, RuntimeError):
                        break
                    try:
                        data = await asyncio.wait_for(reader.read(1024), 0.3)
                    except asyncio.TimeoutError:
                        continue
                    except ConnectionError:
                        break
                    assert data == b"", "a slowloris request gets no answer, just a closed socket"
                    break
                return now() - start
            finally:
                writer.close()

        async def keep_alive_then_idle() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(b"GET /http HTTP/1.1\r\nHost: h\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
                assert head.startswith(b"HTTP/1.1 200")
                t0 = now()
                body = await asyncio.wait_for(reader.read(), 4)
                assert body == b"ok"
                return now() - t0
            finally:
                writer.close()

        async def normal_client() -> float:
            await asyncio.sleep(0.5)  # while the slowloris sockets are active
            t0 = now()
            async with websockets.connect(ws_url(server, "/normal"), open_timeout=2) as client:
                elapsed = now() - t0
                await client.send("hi")
                assert await asyncio.wait_for(client.recv(), 2) == "hi"
            return elapsed

        results = await asyncio.wait_for(
            asyncio.gather(*[slowloris() for _ in range(5)], keep_alive_then_idle(), normal_client()), 15
        )
    *slow, idle_http, connect_time = results
    assert all(0.4 <= t <= 2.0 for t in slow), slow
    assert 0.4 <= idle_http <= 2.0, idle_http
    assert connect_time < 0.5, connect_time
    assert rec.opened and rec.opened[0].data == "/normal" and len(rec.opened) == 1


@ASYNCIO_ONLY
async def test_handshake_timeout_never_fires_early() -> None:
    """A request completed 0.7 s after connect must be served with handshake_timeout=1.0.

    Sockets are opened at staggered offsets so that some land late in a clock tick.
    """
    async with running(handshake_timeout=1.0) as server:

        async def one(offset: float) -> int:
            await asyncio.sleep(offset)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                await asyncio.sleep(0.7)
                try:
                    writer.write(RawClient.handshake_request("/late"))
                    line = await asyncio.wait_for(reader.readline(), 2)
                except ConnectionError:
                    return 0  # closed before the request arrived
                return int(line.split()[1]) if line else 0
            finally:
                writer.close()

        statuses = await asyncio.wait_for(asyncio.gather(*[one(i * 0.05) for i in range(10)]), 5)
    assert statuses == [101] * 10


# ================================================================ graceful stop
async def _mute_client(port: int, path: str) -> RawClient:
    """A raw client that completes the handshake and then never answers anything."""
    return await RawClient.connect(port, path)


@ASYNCIO_ONLY
async def test_graceful_stop_sends_1001_waits_close_timeout_and_refuses() -> None:
    rec = Closes()
    server = await bunws.serve(
        lambda req, s: None if s.upgrade(req, data=req.path) else bunws.Response("x", status=400),
        rec.handler,
        hostname="127.0.0.1",
        port=0,
        close_timeout=1.0,
    )
    port = server.port
    clients = []
    try:
        clients = await asyncio.wait_for(
            asyncio.gather(*[websockets.connect(ws_url(server, f"/c{i}")) for i in range(20)]), 10
        )
        mutes = [await _mute_client(port, f"/mute{i}") for i in range(2)]
        await eventually(lambda: server.pending_websockets == 22)
        t0 = now()
        await asyncio.wait_for(server.stop(), 5)
        elapsed = now() - t0
    finally:
        if not server._stopped.is_set():
            await asyncio.wait_for(server.stop(True), 5)
    assert elapsed <= 1.0 + 1.0, elapsed
    assert elapsed >= 0.5, "stop() should have waited for the mute clients"
    for client in clients:
        await asyncio.wait_for(client.wait_closed(), 3)
        assert client.close_code == 1001
        assert client.close_reason == "Server shutting down"
    for mute in mutes:
        assert await mute.recv_close() == (1001, "Server shutting down")
        assert await read_eof(mute, 3) == b""
    paths = sorted(p for p, _, _, _ in rec.closes)
    assert paths == sorted([f"/c{i}" for i in range(20)] + ["/mute0", "/mute1"]), "exactly once each"
    assert {(c, r) for _, c, r, _ in rec.closes} == {(1001, "Server shutting down")}
    assert server.pending_websockets == 0
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)


async def test_stop_true_returns_promptly_but_sends_1001_first() -> None:
    rec = Closes()
    server = await bunws.serve(
        lambda req, s: None if s.upgrade(req, data=req.path) else None,
        rec.handler,
        hostname="127.0.0.1",
        port=0,
        close_timeout=5.0,
    )
    try:
        client = await asyncio.wait_for(websockets.connect(ws_url(server, "/ws")), 5)
        mutes = [await _mute_client(server.port, f"/m{i}") for i in range(3)]
        await eventually(lambda: server.pending_websockets == 4)
        t0 = now()
        await asyncio.wait_for(server.stop(True), 5)
        elapsed = now() - t0
    finally:
        await asyncio.wait_for(server.stop(True), 5)
    assert elapsed < 0.5, elapsed
    for mute in mutes:
        assert await mute.recv_close() == (1001, "Server shutting down")
    await asyncio.wait_for(client.wait_closed(), 3)
    assert client.close_code == 1001
    assert sorted(p for p, _, _, _ in rec.closes) == ["/m0", "/m1", "/m2", "/ws"]
    assert {c for _, c, _, _ in rec.closes} == {1001}


async def test_handshake_in_flight_during_stop_gets_503() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    results: list[bool] = []

    async def fetch(req: bunws.Request, server: bunws.Server) -> Any:
        entered.set()
        await asyncio.wait_for(release.wait(), 5)
        ok = server.upgrade(req)
        results.append(ok)
        return None if ok else bunws.Response("fetch's own answer", status=400)

    rec = Closes()
    server = await bunws.serve(fetch, rec.handler, hostname="127.0.0.1", port=0, close_timeout=2.0)
    try:
        client = await RawClient.connect(server.port, "/", handshake=False)
        client.send_raw(RawClient.handshake_request("/late"))
        await asyncio.wait_for(entered.wait(), 5)
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.05)
        release.set()
        assert await client.read_head() == 503
        await asyncio.wait_for(stopping, 5)
    finally:
        await asyncio.wait_for(server.stop(True), 5)
    assert results == [False]
    assert rec.opened == [] and rec.closes == []


# ================================================================ TLS
async def test_tls_echo_round_trip() -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_ctx)

    rec = Closes()
    async with running(rec.handler, ssl=server_ctx) as server:
        assert server.url.startswith("https://")
        async with websockets.connect(f"wss://127.0.0.1:{server.port}/tls", ssl=client_ctx) as client:
            for msg in ("hello", b"\x00\x01" * 40000, "é" * 1000):
                await asyncio.wait_for(client.send(msg), 5)
                assert await asyncio.wait_for(client.recv(), 5) == msg
        await eventually(lambda: len(rec.closes) == 1)
    assert rec.closes[0][:3] == ("/tls", 1000, "")


# ================================================================ connection cap
async def test_max_connections_answers_503_beyond_the_cap() -> None:
    rec = Closes()
    async with running(rec.handler, max_connections=5) as server:
        clients = [await asyncio.wait_for(websockets.connect(ws_url(server, f"/{i}")), 5) for i in range(5)]
        try:
            assert await http_status(server.port, RawClient.handshake_request("/6th")) == 503
            # (Raw clients only: the 503 is written before the request is read, which the
            # websockets client on uvloop trips over with an internal AssertionError.)
            assert await http_status(server.port, RawClient.handshake_request("/7th")) == 503
            # A slot frees up once a client leaves.
            await asyncio.wait_for(clients.pop().close(), 5)
            await eventually(lambda: len(server._connections) == 4)
            async with websockets.connect(ws_url(server, "/again")) as again:
                await again.send("x")
                assert await asyncio.wait_for(again.recv(), 2) == "x"
        finally:
            for c in clients:
                await asyncio.wait_for(c.close(), 5)
    assert len(rec.opened) == 6


async def test_stop_close_handler_sees_closed_state_and_runs_once() -> None:
    """stop() after some clients already left: every close handler exactly once."""
    calls: dict[int, int] = {}

    def close(ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
        assert ws.ready_state == 3
        calls[id(ws)] = calls.get(id(ws), 0) + 1

    handler = bunws.WebSocketHandler(close=close)
    server = await bunws.serve(
        lambda req, s: None if s.upgrade(req) else None, handler, hostname="127.0.0.1", port=0, close_timeout=1.0
    )
    try:
        clients = [await RawClient.connect(server.port) for _ in range(6)]
        clients[0].send_close(1000)
        clients[1].abort()
        clients[2].send_raw(wire.frame(wire.TEXT, b"unmasked", mask=None))
        await eventually(lambda: len(calls) == 3)
        await asyncio.wait_for(server.stop(), 5)
    finally:
        await asyncio.wait_for(server.stop(True), 5)
    assert len(calls) == 6 and set(calls.values()) == {1}


# ================================================================ more timeouts
@ASYNCIO_ONLY
async def test_tls_handshake_timeout_covers_silent_tcp_and_silent_tls() -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_ctx)
    rec = Closes()
    async with running(rec.handler, ssl=server_ctx, handshake_timeout=1.0) as server:

        async def closed_after(reader: asyncio.StreamReader, t0: float) -> float:
            try:
                data = await asyncio.wait_for(reader.read(), 5)
                assert data == b""
            except (ConnectionError, ssl.SSLError):
                pass
            return now() - t0

        async def silent_tcp() -> float:
            t0 = now()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                return await closed_after(reader, t0)
            finally:
                writer.close()

        async def silent_after_tls() -> float:
            t0 = now()
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", server.port, ssl=client_ctx, server_hostname="127.0.0.1"), 3
            )
            try:
                return await closed_after(reader, t0)
            finally:
                writer.close()

        async def normal() -> None:
            await asyncio.sleep(0.3)
            async with websockets.connect(f"wss://127.0.0.1:{server.port}/ok", ssl=client_ctx) as client:
                await client.send("x")
                assert await asyncio.wait_for(client.recv(), 2) == "x"
                await asyncio.sleep(1.5)  # past the handshake timeout: upgraded sockets are exempt
                await client.send("y")
                assert await asyncio.wait_for(client.recv(), 2) == "y"

        t_tcp, t_tls, _ = await asyncio.wait_for(asyncio.gather(silent_tcp(), silent_after_tls(), normal()), 10)
    assert 0.4 <= t_tcp <= 2.5, t_tcp
    assert 0.4 <= t_tls <= 2.5, t_tls


@ASYNCIO_ONLY
async def test_close_timeout_aborts_a_peer_that_never_answers_close() -> None:
    rec = Closes()
    rec.handler.message = lambda ws, msg: ws.close(1000, "bye")
    async with running(rec.handler, close_timeout=1.0) as server:
        client = await RawClient.connect(server.port, "/mute")
        client.send_text("close me")
        t0 = now()
        assert await client.recv_close() == (1000, "bye")
        assert await read_eof(client, 3) == b"", "FIN right after the Close frame"
        assert rec.closes and rec.closes[0][1:3] == (1000, "bye")
        assert len(server._connections) == 1, "half-closed, waiting for the peer's Close"
        await eventually(lambda: not server._connections, 3)  # observation point: TCP gone
        elapsed = now() - t0
    assert 0.5 <= elapsed <= 2.0, elapsed
    assert len(rec.closes) == 1


@ASYNCIO_ONLY
async def test_idle_timeout_never_reaps_a_client_active_within_the_timeout() -> None:
    """idle_timeout=8, send_pings=False: a client that sends every 7.7 s is alive.

    Ten clients staggered over one clock tick, so that some send late in a tick.
    """
    rec = Closes(idle_timeout=8, send_pings=False)
    async with running(rec.handler) as server:

        async def client(offset: float) -> bool:
            await asyncio.sleep(offset)
            c = await RawClient.connect(server.port, f"/{offset}")
            try:
                c.send_text("first")
                assert await c.recv_data() == (wire.TEXT, b"first")
                await asyncio.sleep(7.7)
                c.send_text("second")
                try:
                    return await c.recv_data(timeout=1) == (wire.TEXT, b"second")
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    return False
            finally:
                c.close()

        alive = await asyncio.wait_for(asyncio.gather(*[client(i * 0.05) for i in range(10)]), 12)
    assert alive == [True] * 10
    # The clients end with a bare TCP close (1006, ""), never with a timeout.
    assert [r for _, _, r, _ in rec.closes if "inactivity" in r] == []
