"""``Server.stats()``: counters and gauges after scripted exchanges over real sockets,
and the compiled counters checked directly."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from conftest import eventually, running
from rawclient import RawClient
from test_backpressure import Peer, Sockets

import bunws
from bunws._wscore import Counters, WebSocketCore
from bunws.stats import MAX_CLOSE_CODES, CloseCodeCounts, combine

TEXT, BINARY = 1, 2


def echo_handler(closes: list[tuple[int, str]]) -> bunws.WebSocketHandler:
    return bunws.WebSocketHandler(
        open=lambda ws: ws.subscribe("room"),
        message=lambda ws, msg: ws.send(msg),
        close=lambda ws, code, reason: closes.append((code, reason)),
    )


async def test_counts_after_an_exchange_and_gauges_back_to_zero() -> None:
    closes: list[tuple[int, str]] = []
    async with running(echo_handler(closes)) as server:
        a = await RawClient.connect(server.port)
        b = await RawClient.connect(server.port)
        await eventually(lambda: server.subscriber_count("room") == 2)
        before = server.stats()
        assert before["connections_open"] == 2 and before["connections_total"] == 2
        assert before["topics"] == 1 and before["subscriptions"] == 2
        assert before["http_requests"] == 2

        a.send_text("hello")  # masked: 2 + 4 + 5 bytes in; echo 2 + 5 out
        assert await a.recv_data() == (TEXT, b"hello")
        a.send(BINARY, b"\x01\x02")  # 8 in, 4 out
        assert await a.recv_data() == (BINARY, b"\x01\x02")
        mid = server.stats()
        assert mid["messages_received"] - before["messages_received"] == 2
        assert mid["bytes_received"] - before["bytes_received"] == 11 + 8
        assert mid["bytes_sent"] - before["bytes_sent"] == 7 + 4
        assert mid["messages_sent"] - before["messages_sent"] == 2

        assert server.publish("room", "x") == 1
        assert await a.recv_data() == (TEXT, b"x")
        assert await b.recv_data() == (TEXT, b"x")
        after_publish = server.stats()
        assert after_publish["publishes"] == 1 and after_publish["deliveries"] == 2
        assert after_publish["messages_sent"] - mid["messages_sent"] == 2
        assert after_publish["bytes_sent"] - mid["bytes_sent"] == 2 * 3

        a.send_close(4001, "bye")
        await a.recv_close()
        b.send_close(1000)
        await b.recv_close()
        await eventually(lambda: len(closes) == 2)
        final = server.stats()
        assert final["close_codes"] == {"4001": 1, "1000": 1}
        assert final["connections_open"] == 0 and final["connections_total"] == 2
        assert final["topics"] == 0 and final["subscriptions"] == 0
        assert final["buffered_bytes"] == 0
        assert final["messages_received"] == 2 and final["sends_dropped"] == 0
        assert "backplane" not in final
        assert json.loads(json.dumps(final)) == final  # JSON-ready as it is
        a.close()
        b.close()


async def test_backpressure_drops_and_drains_are_counted() -> None:
    sockets = Sockets()
    async with running(sockets.handler) as server:
        peer = await Peer.connect(server.port, rcvbuf=4096)
        ws = await sockets.socket()
        statuses = [ws.send(b"x" * 65536) for _ in range(64)]
        assert -1 in statuses
        snap = server.stats()
        assert snap["sends_backpressured"] == statuses.count(-1)
        assert snap["buffered_bytes"] > 0  # the gauge sees the waiting bytes
        await peer.read_frames(64, timeout=10)
        await eventually(lambda: sockets.drains)
        assert server.stats()["drains"] == 1
        ws.close(1000)
        assert ws.send("late") == 0
        assert ws.send("late") == 0
        snap = server.stats()
        assert snap["sends_dropped"] == 2 and snap["buffered_bytes"] == 0
        peer.close()


async def test_drops_over_the_backpressure_limit_are_counted() -> None:
    sockets = Sockets(backpressure_limit=100_000)
    async with running(sockets.handler) as server:
        peer = await Peer.connect(server.port, rcvbuf=4096)
        ws = await sockets.socket()
        statuses = [ws.send(b"y" * 65536) for _ in range(256)]
        assert statuses.count(0) > 0
        assert server.stats()["sends_dropped"] == statuses.count(0)
        peer.close()


async def test_handshakes_rejected_by_status() -> None:
    async with running(allowed_origins=["http://good.example"]) as server:
        async def refused(**kw: Any) -> int:
            client = await RawClient.connect(server.port, handshake=False)
            client.send_raw(RawClient.handshake_request(**kw))
            status = await client.read_head()
            client.close()
            return status

        assert await refused(version="12") == 426
        assert await refused(extra=[("Origin", "http://evil.example")]) == 403
        assert await refused(key="too-short") == 400  # fetch answers the 400 itself
        assert await refused(version="8") == 426
        assert server.stats()["handshakes_rejected"] == {"426": 2, "403": 1, "400": 1}
        assert server.stats()["connections_total"] == 0


async def test_refused_admission_is_counted_as_503() -> None:
    async with running(max_connections=1) as server:
        first = await RawClient.connect(server.port)
        second = await RawClient.connect(server.port, handshake=False)
        assert await second.read_head() == 503
        assert server.stats()["handshakes_rejected"] == {"503": 1}
        first.close()
        second.close()


@pytest.mark.asyncio(loop_factories=["asyncio"])  # the tick is the server's, not the loop's
async def test_loop_lag_reports_a_blocked_loop() -> None:
    async with running() as server:
        assert server.stats()["loop_lag_ms"] < 400
        time.sleep(0.55)  # blocks the loop past its next tick (due within 0.5 s)
        await eventually(lambda: server.stats()["loop_lag_ms"] >= 40, timeout=3)


class FakeBackplane:
    """Just the surface a backplane offers (tests/test_backplane.py covers a real one)."""

    def __init__(self) -> None:
        self.stats = {"published": 3, "received": 2, "dropped": 1, "reconnects": 0}
        self.connected = True

    async def start(self, server: bunws.Server) -> None:
        pass

    async def close(self) -> None:
        pass

    def publish(self, *args: Any) -> None:
        self.stats["published"] += 1

    def subscribe(self, topic: str) -> None:
        pass

    def unsubscribe(self, topic: str) -> None:
        pass


async def test_backplane_sub_dict() -> None:
    async with running(backplane=FakeBackplane()) as server:
        server.publish("t", "m")
        info = server.stats()["backplane"]
        assert info == {"published": 4, "received": 2, "dropped": 1, "reconnects": 0, "connected": True}
        assert server.stats()["publishes"] == 1


def test_close_codes_fold_into_ranges_past_the_bound() -> None:
    counts = CloseCodeCounts()
    for code in range(4000, 4000 + MAX_CLOSE_CODES):
        counts.add(code)
    assert len(counts.counts) == MAX_CLOSE_CODES
    counts.add(4000)  # known: still counted one by one
    counts.add(4999)
    counts.add(3500)
    counts.add(1000)
    counts.add(70000)
    counts.add(-1)
    for i in range(10_000):
        counts.add(3000 + i % 1000)  # a peer cycling through application codes
    assert len(counts.counts) == MAX_CLOSE_CODES + 4  # plus the four ranges, no more
    assert counts.counts["4000"] == 2
    assert counts.counts["4000-4999"] == 1 and counts.counts["1000-2999"] == 1
    assert counts.counts["3000-3999"] == 10_001 and counts.counts["other"] == 2
    assert sum(counts.counts.values()) == MAX_CLOSE_CODES + 6 + 10_000


def test_combine_sums_workers() -> None:
    one = {"messages_sent": 2, "loop_lag_ms": 3.0, "close_codes": {"1000": 1},
           "backplane": {"published": 1, "connected": True}, "worker": 0}
    two = {"messages_sent": 5, "loop_lag_ms": 9.0, "close_codes": {"1000": 2, "1001": 1},
           "backplane": {"published": 2, "connected": False}, "worker": 1}
    assert combine([one, two]) == {
        "messages_sent": 7, "loop_lag_ms": 9.0, "close_codes": {"1000": 3, "1001": 1},
        "backplane": {"published": 3, "connected": False}, "workers": 2,
    }


class Sink:
    """A transport that takes everything (for the compiled core on its own)."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.written += sum(len(c) for c in chunks)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> None:
        return None

    def is_closing(self) -> bool:
        return False


def test_compiled_counters_count_sends_and_fan_out() -> None:
    counters = Counters()
    sockets = []
    loop = asyncio.new_event_loop()
    try:
        for _ in range(3):
            ws = WebSocketCore()
            ws.attach(Sink(), loop, 0, False, lambda ws: None, counters=counters)
            sockets.append(ws)
        assert sockets[0].counters is counters
        assert sockets[0].send("abc") == 3
        assert sockets[0].ping(b"") == 0  # a control frame is not a message
        from bunws._wscore import fan_out, flush_queued

        pending: list[Any] = []
        assert fan_out({ws: None for ws in sockets}, TEXT, b"hi", False, sockets[0], pending) == 2
        flush_queued(pending)
        sockets[1].mark_closed()
        assert sockets[1].send("gone") == 0
        snap = counters.snapshot()
        assert snap["messages_sent"] == 3 and snap["deliveries"] == 2
        assert snap["sends_dropped"] == 1 and snap["sends_backpressured"] == 0
        assert snap["bytes_sent"] == 5 + 2 + 2 * 4 == sum(ws.transport.written for ws in sockets)
        counters.bytes_received += 7  # writable from Python (protocol.py counts HTTP bytes)
        assert counters.bytes_received == 7
    finally:
        loop.close()


async def test_demo_serves_stats_json() -> None:
    import websockets
    from test_demo import demo_server, http, url

    async with demo_server() as server:
        async with websockets.connect(url(server, "/echo"), compression=None) as ws:
            for msg in ("one", "two"):
                await ws.send(msg)
                assert await asyncio.wait_for(ws.recv(), 5) == msg
            status, headers, body = await http(server.port, "GET", "/stats")
            assert status == 200 and headers["content-type"].startswith("application/json")
            live = json.loads(body)
            assert live["connections_open"] == 1 and live["messages_received"] == 2
            assert live["messages_sent"] == 2 and live["http_requests"] == 2
        await eventually(lambda: server.stats()["connections_open"] == 0)
        status, _, body = await http(server.port, "GET", "/stats")
        assert json.loads(body)["close_codes"] == {"1000": 1}


async def test_cluster_stats_sums_the_other_workers_files(tmp_path: Any, monkeypatch: Any) -> None:
    from bunws.workers import STATS_DIR_ENV, cluster_stats

    async with running() as server:
        assert cluster_stats(server) == server.stats()  # not under run(workers=N)
        monkeypatch.setenv(STATS_DIR_ENV, str(tmp_path))
        monkeypatch.setenv("BUNWS_WORKER_ID", "0")
        (tmp_path / "0.json").write_text(json.dumps({"http_requests": 1000}))  # our own: stale, skipped
        (tmp_path / "1.json").write_text(json.dumps({"http_requests": 5, "close_codes": {"1000": 2}}))
        (tmp_path / "2.json").write_text('{"http_requests": "many"}')  # not summable: skipped
        (tmp_path / "3.json").write_text('{"http_req')  # half written: skipped
        total = cluster_stats(server)
        assert total["workers"] == 2 and total["http_requests"] == 5
        assert total["close_codes"] == {"1000": 2}
