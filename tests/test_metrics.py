"""``bunws.metrics.PrometheusCollector``: the Prometheus text of ``Server.stats()``,
parsed back with prometheus_client's own parser, for one server and for a real
``run(workers=2)`` server whose every worker one scrape must see."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import pytest
from conftest import eventually, running
from rawclient import RawClient
from redis_server import free_port
from supervised import http_get, wait_until_serving

from websockets.asyncio.client import connect

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import bunws  # noqa: E402
from bunws.metrics import COUNTERS, GAUGES, PrometheusCollector  # noqa: E402

NODE = os.path.join(os.path.dirname(__file__), "metrics_node.py")
ASYNCIO_ONLY = pytest.mark.asyncio(loop_factories=["asyncio"])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) -> value`` of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def scrape(server: bunws.Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = prometheus_client.CollectorRegistry()
    registry.register(PrometheusCollector(server))
    return samples(prometheus_client.generate_latest(registry).decode())


async def test_exposition_of_one_server() -> None:
    closed = asyncio.Event()
    handler = bunws.WebSocketHandler(
        open=lambda ws: ws.subscribe("room"),
        message=lambda ws, msg: ws.send(msg),
        close=lambda ws, code, reason: closed.set(),
    )
    async with running(handler) as server:
        client = await RawClient.connect(server.port)
        refused = await RawClient.connect(server.port, version="12")
        assert refused.status == 426
        await eventually(lambda: server.subscriber_count("room") == 1)
        open_scrape = scrape(server)
        assert open_scrape[("bunws_connections_open", ())] == 1
        assert open_scrape[("bunws_subscriptions", ())] == 1
        assert open_scrape[("bunws_topics", ())] == 1
        client.send_text("ping?")
        assert await client.recv_data() == (1, b"ping?")
        server.publish("room", "all")
        assert await client.recv_data() == (1, b"all")
        client.send_close(4321, "done")
        await client.recv_close()
        await asyncio.wait_for(closed.wait(), 5)
        got = scrape(server)
        snap = server.stats()
        assert got[("bunws_connections_open", ())] == 0
        assert got[("bunws_connections_total", ())] == 1
        assert got[("bunws_messages_received_total", ())] == 1
        assert got[("bunws_messages_sent_total", ())] == 2
        assert got[("bunws_publishes_total", ())] == 1 and got[("bunws_deliveries_total", ())] == 1
        assert got[("bunws_close_codes_total", (("code", "4321"),))] == 1
        assert got[("bunws_handshakes_rejected_total", (("status", "426"),))] == 1
        assert got[("bunws_bytes_sent_total", ())] == snap["bytes_sent"]
        assert got[("bunws_loop_lag_seconds", ())] == pytest.approx(snap["loop_lag_ms"] / 1000)
        for name, _ in COUNTERS.values():
            assert (name + "_total", ()) in got, name
        for name, _, _ in GAUGES.values():
            assert (name, ()) in got, name
        # Every label is a status or a code: never a topic.
        assert {label for _, labels in got for label, _ in labels} == {"code", "status"}
        refused.close()
        client.close()


async def test_exposition_of_a_backplane() -> None:
    from test_stats import FakeBackplane

    async with running(backplane=FakeBackplane()) as server:
        got = scrape(server)
        assert got[("bunws_backplane_published_total", ())] == 3
        assert got[("bunws_backplane_dropped_total", ())] == 1
        assert got[("bunws_backplane_connected", ())] == 1


@ASYNCIO_ONLY
async def test_one_scrape_sees_every_worker() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, NODE, env=dict(os.environ, WORKERS="2", PORT=str(port))
    )
    clients: list[Any] = []
    try:
        await wait_until_serving(proc, port, "/pid")
        pids: list[int] = []
        for _ in range(60):  # until both workers keep clients after two close (the kernel chooses)
            ws = await asyncio.wait_for(connect(f"ws://127.0.0.1:{port}/ws"), 5)
            pids.append(int((await asyncio.wait_for(ws.recv(), 5)).split()[1]))
            clients.append(ws)
            if len(set(pids[2:])) == 2:
                break
        assert len(set(pids[2:])) == 2
        await clients[0].send("close 4100")
        await asyncio.wait_for(clients[0].wait_closed(), 5)
        await clients[1].send("close 4100")
        await asyncio.wait_for(clients[1].wait_closed(), 5)
        want_open = len(clients) - 2

        # Another worker's part is at most STATS_INTERVAL old: poll until it shows.
        async with asyncio.timeout(10):
            while True:
                got = samples(await http_get(port, "/metrics"))
                if (
                    got.get(("bunws_connections_open", ())) == want_open
                    and got.get(("bunws_close_codes_total", (("code", "4100"),))) == 2
                ):
                    break
                await asyncio.sleep(0.1)
        assert got[("bunws_workers", ())] == 2
        assert got[("bunws_connections_total", ())] == len(clients)
        local = json.loads(await http_get(port, "/local"))
        assert local["connections_open"] < want_open  # one worker alone sees its own part
    finally:
        for ws in clients:
            await ws.close()
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0
