"""``bunws.Server``: option validation, the engine interface (admit/release,
create_task, deliver_local), ``subscriber_count``, ``stop()``, the timer tick, ``url``.

Connections are driven by hand on test_protocol's stub transport; only the tick and
``url`` tests listen on a real socket.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import ssl
import time
import weakref
from typing import Any

import pytest
import wire
from rawclient import RawClient
from test_protocol import (  # noqa: F401  (no_transport_misuse: the autouse check)
    KEY,
    connect,
    feed,
    live,
    make_server,
    no_transport_misuse,
    raw_frames,
    responses,
    spin,
)

import bunws
import bunws.server
from bunws import InvalidArgument, InvalidType

pytestmark = pytest.mark.usefixtures("both_transports")

SHUTDOWN = ("close", 1001, "Server shutting down")


# ------------------------------------------------------------------------ options
@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"fetch": 42}, InvalidType, "fetch must be callable"),
        ({"websocket": 42}, InvalidType, "websocket must be a WebSocketHandler or a dict of its options"),
        ({"websocket": {"idle_timeout": "1"}}, InvalidType, "idle_timeout must be an int, got str"),
        ({"websocket": {"nope": 1}}, TypeError, "nope"),
        ({"ssl": "context"}, InvalidType, "ssl must be an ssl.SSLContext"),
        ({"max_head_size": 0}, InvalidArgument, "max_head_size must be a positive int, got 0"),
        ({"max_headers": True}, InvalidArgument, "max_headers must be a positive int, got True"),
        ({"max_body_size": 1.5}, InvalidArgument, "max_body_size must be a positive int, got 1.5"),
        ({"max_pending_handshakes": -1}, InvalidArgument, "max_pending_handshakes must be a positive int, got -1"),
        ({"backlog": "8"}, InvalidArgument, "backlog must be a positive int, got '8'"),
        ({"max_connections": 0}, InvalidArgument, "max_connections must be None or a positive int, got 0"),
        ({"port": 65536}, InvalidArgument, "port must be in 0..65535, got 65536"),
        ({"port": -1}, InvalidArgument, "port must be in 0..65535, got -1"),
        ({"port": True}, InvalidArgument, "port must be in 0..65535, got True"),
        ({"port": "80"}, InvalidArgument, "port must be in 0..65535, got '80'"),
        ({"handshake_timeout": 0}, InvalidArgument, "handshake_timeout must be a positive number, got 0"),
        ({"handshake_timeout": "1"}, InvalidArgument, "handshake_timeout must be a positive number, got '1'"),
        ({"close_timeout": True}, InvalidArgument, "close_timeout must be a positive number, got True"),
        ({"close_timeout": -0.5}, InvalidArgument, "close_timeout must be a positive number, got -0.5"),
        ({"allowed_origins": 42}, InvalidType, "allowed_origins must be None, 'same-origin' or an iterable of str"),
        ({"allowed_origins": [1]}, InvalidType, "allowed_origins must be None, 'same-origin' or an iterable of str"),
    ],
)
async def test_bad_option_raises_before_listening(options: dict, error: type, message: str) -> None:
    options = dict(options)  # the same dict serves both loops
    fetch = options.pop("fetch", lambda req, server: bunws.Response("ok"))
    websocket = options.pop("websocket", None)
    with pytest.raises(error) as info:
        await bunws.serve(fetch, websocket, hostname="127.0.0.1", port=options.pop("port", 0), **options)
    assert message in str(info.value)


@pytest.mark.parametrize("name", ["handshake_timeout", "close_timeout"])
async def test_nan_timeouts_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match=f"{name} must be a positive number"):
        await bunws.serve(lambda req, server: None, hostname="127.0.0.1", port=0, **{name: float("nan")})


async def test_good_options_are_kept() -> None:
    server = make_server(
        websocket={"idle_timeout": 30, "backpressure_limit": 5}, handshake_timeout=2,
        close_timeout=3, allowed_origins=["HTTP://A.example/"],
    )
    handler = server.websocket_handler
    assert isinstance(handler, bunws.WebSocketHandler)
    assert handler.idle_timeout == 30 and handler.backpressure_limit == 5
    assert server.handshake_timeout == 2.0 and isinstance(server.handshake_timeout, float)
    assert server.close_timeout == 3.0
    assert server.allowed_origins == frozenset({"http://a.example"})


# ------------------------------------------------------------------------ admit / release
class FakeConn:
    """What the server's set of connections needs: timers, shutdown, abort."""

    def __init__(self, server: bunws.Server, fails: bool = False) -> None:
        self.server = server
        self.fails = fails
        self.checks = 0

    def check_timers(self, now: float) -> float:
        self.checks += 1
        if self.fails:
            raise RuntimeError("timer check bug")
        return now  # look again at the next tick

    def shutdown(self, close_active: bool) -> None:
        self.server.release(self, in_http=True)

    def abort(self) -> None:
        self.server.release(self, in_http=True)


async def test_admit_counts_and_max_connections_refuses_beyond_the_cap() -> None:
    server = make_server(max_connections=2)
    a, b, c, d = (FakeConn(server) for _ in range(4))
    assert server.admit(a) and server.admit(b)
    assert not server.admit(c)  # the third live connection
    assert server.pending_requests == 2 and live(server) == 3
    server.release(c, in_http=False)  # a refused one was never counted as HTTP
    server.release(a, in_http=True)
    server.release(a, in_http=True)  # idempotent
    assert server.pending_requests == 1 and live(server) == 1
    assert server.admit(d)
    assert server.pending_requests == 2


async def test_max_pending_handshakes_counts_only_the_http_phase() -> None:
    server = make_server(max_pending_handshakes=1)
    a, b, c = (FakeConn(server) for _ in range(3))
    assert server.admit(a)
    assert not server.admit(b)
    server.release(b, in_http=False)
    server.http_phase_ended()  # a was upgraded
    assert server.admit(c)


async def test_refused_connection_gets_503_and_the_books_return_to_zero() -> None:
    server = make_server(max_connections=1)
    first, t1 = connect(server)
    second, t2 = connect(server)
    assert responses(t2.sent)[0][0][0] == 503
    assert not t2.closing  # closed one loop step later (the transport's start-up first)
    await asyncio.sleep(0)
    assert t2.closing and t1.sent == b"" and not t1.closing
    await spin()
    assert t2.lost and live(server) == 1
    first.connection_lost(None)
    assert live(server) == 0 and server.pending_requests == 0
    third, t3 = connect(server)
    assert not t3.closing  # room again
    feed(third, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert responses(t3.sent)[0][0][0] == 200


async def test_a_stopping_server_admits_nobody() -> None:
    server = make_server()
    await server.stop()
    assert server.stopping
    conn, t = connect(server)
    await asyncio.sleep(0)
    assert responses(t.sent)[0][0][0] == 503 and t.closing
    tls_server = make_server(ssl=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    await tls_server.stop()
    conn, t = connect(tls_server)
    await asyncio.sleep(0)
    assert t.aborted and t.written == b""  # no plaintext answer before TLS
    await spin()
    assert live(server) == 0 and live(tls_server) == 0


# ------------------------------------------------------------------------ create_task
async def test_create_task_keeps_the_task_until_it_is_done() -> None:
    server = make_server()
    loop = asyncio.get_running_loop()
    done: list[str] = []
    futures: list[weakref.ref] = []

    async def job() -> None:
        fut = loop.create_future()  # reachable only through this coroutine
        futures.append(weakref.ref(fut))
        await fut
        done.append("yes")

    task_ref = weakref.ref(server.create_task(job()))
    await spin()
    gc.collect()  # the loop holds tasks weakly: only the server keeps this one alive
    fut = futures[0]()
    assert fut is not None and task_ref() is not None
    fut.set_result(None)
    del fut
    await spin()
    assert done == ["yes"]
    gc.collect()
    assert task_ref() is None  # and lets go of it once done


# ------------------------------------------------------------------------ pub/sub
class Sockets:
    def __init__(self) -> None:
        self.open: list[bunws.ServerWebSocket] = []
        self.closes: list[tuple[Any, ...]] = []

    def handler(self) -> bunws.WebSocketHandler:
        def open_(ws: bunws.ServerWebSocket) -> None:
            self.open.append(ws)
            if ws.data:
                ws.subscribe(ws.data)

        def close(ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
            self.closes.append(("close", code, reason))

        return bunws.WebSocketHandler(open=open_, close=close)


def fetch(req: bunws.Request, server: bunws.Server) -> Any:
    if req.path.startswith("/ws"):
        assert server.upgrade(req, data=req.query.get("topic"))
        return None
    if req.path == "/slow":
        async def slow() -> bunws.Response:
            await server.gate.wait()  # type: ignore[attr-defined]
            return bunws.Response("slow")
        return slow()
    return bunws.Response("ok")


def ws_client(server: bunws.Server, topic: str | None = None) -> tuple[Any, Any]:
    conn, t = connect(server)
    feed(conn, RawClient.handshake_request(f"/ws?topic={topic}" if topic else "/ws", key=KEY))
    got, rest = responses(t.sent)
    assert got[0][0] == 101
    t.sent = bytearray(rest)
    return conn, t


class Backplane:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def publish(self, topic: str, opcode: int, payload: bytes, compress: bool) -> None:
        self.calls.append(("publish", topic, opcode, payload, compress))

    def subscribe(self, topic: str) -> None:
        self.calls.append(("subscribe", topic))

    def unsubscribe(self, topic: str) -> None:
        self.calls.append(("unsubscribe", topic))


async def test_deliver_local_reaches_local_subscribers_only_and_not_the_backplane() -> None:
    socks = Sockets()
    server = make_server(fetch, socks.handler())
    backplane = Backplane()
    server.pubsub.backplane = backplane
    (_, ta), (_, tb), (_, tc) = ws_client(server, "room"), ws_client(server, "room"), ws_client(server, "other")
    assert backplane.calls == [("subscribe", "room"), ("subscribe", "other")]
    assert server.deliver_local("room", wire.TEXT, b"hi", False) == 2
    assert ta.sent == b""  # written at the end of the loop iteration
    await spin()
    assert raw_frames(bytes(ta.sent)) == raw_frames(bytes(tb.sent)) == [(wire.TEXT, b"hi")]
    assert tc.sent == b""
    assert server.deliver_local("room", wire.BINARY, b"\x00", False, exclude=socks.open[0]) == 1
    await spin()
    assert raw_frames(bytes(ta.sent)) == [(wire.TEXT, b"hi")]
    assert raw_frames(bytes(tb.sent))[-1] == (wire.BINARY, b"\x00")
    assert server.deliver_local("nobody", wire.TEXT, b"x", False) == 0
    assert backplane.calls == [("subscribe", "room"), ("subscribe", "other")]  # no echo loop
    assert server.publish("room", "up") == 2  # a local publish does go out
    assert backplane.calls[-1] == ("publish", "room", wire.TEXT, b"up", True)


async def test_subscriber_count_checks_its_type_and_is_live() -> None:
    socks = Sockets()
    server = make_server(fetch, socks.handler())
    for bad in (1, None, b"room"):
        with pytest.raises(InvalidType, match="topic must be a str, got"):
            server.subscriber_count(bad)  # type: ignore[arg-type]
    assert server.subscriber_count("room") == 0
    (ca, _), _ = ws_client(server, "room"), ws_client(server, "room")
    assert server.subscriber_count("room") == 2
    socks.open[1].unsubscribe("room")
    assert server.subscriber_count("room") == 1
    ca.connection_lost(None)
    assert server.subscriber_count("room") == 0
    assert server.subscriber_count("") == 0


# ------------------------------------------------------------------------ stop
async def test_stop_closes_everything_with_1001_within_close_timeout() -> None:
    socks = Sockets()
    server = make_server(fetch, socks.handler(), close_timeout=0.3)
    server.gate = asyncio.Event()  # type: ignore[attr-defined]
    (ca, ta), (cb, tb) = ws_client(server), ws_client(server)
    idle, t_idle = connect(server)
    busy, t_busy = connect(server)
    feed(busy, b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
    assert server.pending_websockets == 2 and server.pending_requests == 2
    start = time.monotonic()
    stopping = asyncio.ensure_future(server.stop())
    await spin()
    for t in (ta, tb):
        assert raw_frames(bytes(t.sent)) == [(wire.CLOSE, b"\x03\xe9Server shutting down")]
        assert t.eof  # half-closed, waiting for the answer
    assert socks.closes == [SHUTDOWN, SHUTDOWN]
    assert t_idle.closing  # nothing owed: closed at once
    assert not t_busy.closing  # owed an answer
    feed(ca, wire.client(wire.CLOSE, wire.close_payload(1001)))  # a peer that answers
    server.gate.set()  # type: ignore[attr-defined]
    await spin()
    got = responses(t_busy.sent)[0]
    assert [s for s, _, _ in got] == [200] and got[0][1]["connection"] == "close"
    assert not stopping.done()  # b never answers
    await asyncio.wait_for(stopping, 2)
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 1.5, elapsed
    assert tb.aborted and not ta.aborted
    assert socks.closes == [SHUTDOWN, SHUTDOWN]
    assert server.pending_websockets == 0 and server.pending_requests == 0 and live(server) == 0


async def test_stop_close_active_does_not_wait_for_answers() -> None:
    socks = Sockets()
    server = make_server(fetch, socks.handler(), close_timeout=5)
    _, t = ws_client(server)
    start = time.monotonic()
    await asyncio.wait_for(server.stop(close_active=True), 2)
    assert time.monotonic() - start < 1
    assert raw_frames(bytes(t.sent)) == [(wire.CLOSE, b"\x03\xe9Server shutting down")]  # 1001 first
    assert t.closing and t.lost
    assert socks.closes == [SHUTDOWN]
    await asyncio.wait_for(server.stop(), 1)  # a second stop returns too


async def test_stop_lets_a_busy_answer_finish_with_connection_close() -> None:
    server = make_server(fetch, bunws.WebSocketHandler(), close_timeout=0.5)
    server.gate = asyncio.Event()  # type: ignore[attr-defined]
    conn, t = connect(server)
    feed(conn, b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n" + RawClient.handshake_request("/ws", key=KEY))
    await spin()
    stopping = asyncio.ensure_future(server.stop())
    await spin()
    assert not t.closing
    server.gate.set()  # type: ignore[attr-defined]
    await asyncio.wait_for(stopping, 2)
    got = responses(t.sent)[0]
    # The in-flight answer says close; what was pipelined after it is not served
    # (the client retries it elsewhere), and nothing is upgraded.
    assert [(s, h["connection"]) for s, h, _ in got] == [(200, "close")]
    assert t.lost and server.pending_websockets == 0 and live(server) == 0


async def test_stop_answers_503_to_a_request_queued_behind_unread_answers() -> None:
    big = bunws.Response(b"x" * (100 * 1024))
    server = make_server(lambda req, srv: big, close_timeout=1.0)
    conn, t = connect(server, client_reads=False)
    feed(conn, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    stopping = asyncio.ensure_future(server.stop())
    await spin()
    assert not t.closing  # answers are owed
    t.client_reads = True
    t.drain()
    await asyncio.wait_for(stopping, 2)
    assert [s for s, _, _ in responses(t.sent)[0]] == [200, 503]
    assert t.lost and live(server) == 0


# ------------------------------------------------------------------------ tick
@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_tick_goes_on_past_a_failing_check_and_stops_with_the_server(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bunws.server, "TICK_SECONDS", 0.01)  # read when the tick is scheduled
    server = await bunws.serve(lambda req, srv: bunws.Response("ok"), hostname="127.0.0.1", port=0)
    fakes = [FakeConn(server, fails=True) for _ in range(3)] + [FakeConn(server)]
    for fake in fakes:
        assert server.admit(fake)
    with caplog.at_level(logging.ERROR, logger="bunws"):
        async with asyncio.timeout(3):
            while min(f.checks for f in fakes) < 3:
                await asyncio.sleep(0.01)
    assert any("timer check failed" in r.getMessage() for r in caplog.records)
    await server.stop()
    checks = [f.checks for f in fakes]
    await asyncio.sleep(0.05)
    assert [f.checks for f in fakes] == checks  # no tick after stop()


# ------------------------------------------------------------------------ url
@pytest.mark.parametrize(
    ("hostname", "tls", "url"),
    [
        ("127.0.0.1", False, "http://127.0.0.1:8080/"),
        ("::1", False, "http://[::1]:8080/"),
        ("fe80::1%eth0", False, "http://[fe80::1%eth0]:8080/"),
        ("localhost", True, "https://localhost:8080/"),
    ],
)
async def test_url_formatting(hostname: str, tls: bool, url: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) if tls else None
    server = make_server(hostname=hostname, port=8080, ssl=context)
    assert server.url == url


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_url_carries_the_bound_port() -> None:
    server = await bunws.serve(lambda req, srv: bunws.Response("ok"), hostname="127.0.0.1", port=0)
    try:
        assert server.port != 0
        assert server.url == f"http://127.0.0.1:{server.port}/"
    finally:
        await server.stop()
    if not _has_ipv6_loopback():
        return
    server = await bunws.serve(lambda req, srv: bunws.Response("ok"), hostname="::1", port=0)
    try:
        assert server.url == f"http://[::1]:{server.port}/"
    finally:
        await server.stop()
