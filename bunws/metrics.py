"""Prometheus metrics: :class:`PrometheusCollector` exposes ``Server.stats()``.

Needs ``prometheus_client`` (``pip install bunws[metrics]``)::

    from prometheus_client import REGISTRY
    from bunws.metrics import PrometheusCollector

    REGISTRY.register(PrometheusCollector(server))

Every scrape takes one snapshot. Under ``run(workers=N)`` it is the sum over every
worker (:func:`bunws.workers.cluster_stats`), so whichever worker the scrape lands
on answers for all of them. No metric has a per-topic label: topics are unbounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .workers import cluster_stats

__all__ = ["PrometheusCollector", "COUNTERS", "GAUGES"]

# snapshot key -> (metric name without the _total suffix, help)
COUNTERS = {
    "connections_total": ("bunws_connections", "WebSocket connections opened"),
    "http_requests": ("bunws_http_requests", "HTTP requests handed to fetch"),
    "messages_received": ("bunws_messages_received", "Data messages received"),
    "messages_sent": ("bunws_messages_sent", "Data messages queued to sockets, publish deliveries included"),
    "bytes_received": ("bunws_bytes_received", "Wire bytes read"),
    "bytes_sent": ("bunws_bytes_sent", "Wire bytes written"),
    "sends_backpressured": ("bunws_sends_backpressured", "Sends that returned -1 (queued behind buffered bytes)"),
    "sends_dropped": ("bunws_sends_dropped", "Sends dropped (socket closed or over backpressure_limit)"),
    "drains": ("bunws_drains", "Socket write buffers that emptied again"),
    "publishes": ("bunws_publishes", "Publish calls"),
    "deliveries": ("bunws_deliveries", "Frames queued to receivers by publishes"),
}
# snapshot key -> (metric name, help, scale)
GAUGES = {
    "connections_open": ("bunws_connections_open", "Open WebSocket connections", 1),
    "topics": ("bunws_topics", "Topics with at least one subscriber", 1),
    "subscriptions": ("bunws_subscriptions", "Socket-topic subscriptions", 1),
    "buffered_bytes": ("bunws_buffered_bytes", "Bytes waiting to be written, over all sockets", 1),
    "loop_lag_ms": ("bunws_loop_lag_seconds", "Recent maximum lateness of the server's periodic tick", 0.001),
}
# dict-valued snapshot key -> (metric name without _total, help, label)
LABELLED = {
    "handshakes_rejected": ("bunws_handshakes_rejected", "Handshakes and connections refused, by HTTP status", "status"),
    "close_codes": ("bunws_close_codes", "Closed WebSockets by the code the close handler received", "code"),
}
BACKPLANE_COUNTERS = {
    "published": "Messages the backplane sent to the other processes",
    "received": "Messages the backplane received from the other processes",
    "delivered": "Remote messages handed to local subscribers",
    "dropped": "Publishes the backplane dropped (disconnected and over its bounds)",
    "reconnects": "Backplane reconnections",
}


class PrometheusCollector:
    """A ``prometheus_client`` collector for one server (register it on a registry).

    ``stats`` may replace the snapshot source (a callable returning a
    ``Server.stats()``-shaped dict); by default :func:`bunws.workers.cluster_stats`.
    """

    def __init__(self, server: Any, stats: Any = None) -> None:
        # Imported here so bunws.metrics itself imports without the extra.
        from prometheus_client import core

        self._core = core
        self.server = server
        self._stats = stats if stats is not None else (lambda: cluster_stats(server))

    def describe(self) -> list[Any]:
        """Nothing up front: the registry then learns the names from a first collect."""
        return []

    def collect(self) -> Iterator[Any]:
        """One snapshot, as metric families."""
        core = self._core
        snap = self._stats()
        for key, (name, text) in COUNTERS.items():
            if key in snap:
                yield core.CounterMetricFamily(name, text, value=snap[key])
        for key, (name, text, scale) in GAUGES.items():
            if key in snap:
                yield core.GaugeMetricFamily(name, text, value=snap[key] * scale)
        for key, (name, text, label) in LABELLED.items():
            family = core.CounterMetricFamily(name, text, labels=[label])
            for value, count in sorted(snap.get(key, {}).items()):
                family.add_metric([str(value)], count)
            yield family
        if "workers" in snap:
            yield core.GaugeMetricFamily("bunws_workers", "Worker processes in this snapshot", value=snap["workers"])
        backplane = snap.get("backplane")
        if backplane:
            for field, text in BACKPLANE_COUNTERS.items():
                if field in backplane:
                    yield core.CounterMetricFamily(f"bunws_backplane_{field}", text, value=backplane[field])
            yield core.GaugeMetricFamily(
                "bunws_backplane_connected", "1 while the backplane is connected (every worker's)",
                value=1 if backplane.get("connected") else 0)
