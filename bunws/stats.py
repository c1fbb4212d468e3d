"""What ``Server.stats()`` reports: the counters kept outside the compiled core.

Per-message counts (messages, bytes, send statuses, deliveries, drains) live in
C integers in :class:`bunws._wscore.Counters`. What happens once per connection,
request or publish is counted here in plain Python: it is not the hot path.
:func:`combine` sums the snapshots of several workers (``run(workers=N)``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ._wscore import Counters

__all__ = ["StatsRecorder", "CloseCodeCounts", "combine", "MAX_CLOSE_CODES"]

# Distinct close codes counted one by one; past that a new code counts in its
# range, so a peer choosing random application codes cannot grow the dict.
MAX_CLOSE_CODES = 64

# How many tick drifts loop_lag_ms is the maximum of (the tick is 0.5 s: ~4 s).
LAG_WINDOW = 8

# Snapshot keys that are gauges of one moment; the rest are counters.
GAUGES = ("connections_open", "topics", "subscriptions", "buffered_bytes", "loop_lag_ms")


def close_code_range(code: int) -> str:
    """The bucket a close code folds into once the distinct codes are used up."""
    if 1000 <= code <= 2999:
        return "1000-2999"
    if 3000 <= code <= 3999:
        return "3000-3999"
    if 4000 <= code <= 4999:
        return "4000-4999"
    return "other"


class CloseCodeCounts:
    """Closed WebSockets by the code their ``close`` handler received (bounded)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, code: int) -> None:
        """Count one closed socket under ``code`` (or its range, once full)."""
        key = str(code) if 0 <= code <= 0xFFFF else "other"
        counts = self.counts
        if key not in counts and len(counts) >= MAX_CLOSE_CODES:
            key = close_code_range(code)
        counts[key] = counts.get(key, 0) + 1


class StatsRecorder:
    """One server's counters: the compiled :class:`Counters` plus the rare events."""

    __slots__ = ("counters", "connections_total", "http_requests", "publishes",
                 "handshakes_rejected", "close_codes", "lags")

    def __init__(self) -> None:
        self.counters = Counters()
        self.connections_total = 0
        self.http_requests = 0
        self.publishes = 0
        self.handshakes_rejected: dict[str, int] = {}
        self.close_codes = CloseCodeCounts()
        self.lags: deque[float] = deque(maxlen=LAG_WINDOW)

    def rejected(self, status: int) -> None:
        """A handshake or connection refused with HTTP ``status``."""
        key = str(status)
        self.handshakes_rejected[key] = self.handshakes_rejected.get(key, 0) + 1

    def tick_drift(self, seconds: float) -> None:
        """How late the periodic tick ran (the loop was busy meanwhile)."""
        self.lags.append(max(0.0, seconds))

    @property
    def loop_lag_ms(self) -> float:
        """The largest recent tick drift, in milliseconds."""
        return round(max(self.lags, default=0.0) * 1000.0, 3)

    def snapshot(self) -> dict[str, Any]:
        """The counters as JSON-ready values (gauges are added by the server)."""
        core = self.counters
        return {
            "connections_total": self.connections_total,
            "handshakes_rejected": dict(self.handshakes_rejected),
            "http_requests": self.http_requests,
            "messages_received": core.messages_received,
            "messages_sent": core.messages_sent,
            "bytes_received": core.bytes_received,
            "bytes_sent": core.bytes_sent,
            "sends_backpressured": core.sends_backpressured,
            "sends_dropped": core.sends_dropped,
            "drains": core.drains,
            "publishes": self.publishes,
            "deliveries": core.deliveries,
            "close_codes": dict(self.close_codes.counts),
            "loop_lag_ms": self.loop_lag_ms,
        }


def combine(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot for several workers: counters and gauges summed, dicts summed
    by key, ``loop_lag_ms`` the worst, the backplane ``connected`` only if all are."""
    total: dict[str, Any] = {}
    for snap in snapshots:
        for key, value in snap.items():
            if key == "worker":
                continue
            if key == "loop_lag_ms":
                total[key] = max(total.get(key, 0.0), value)
            elif key == "backplane":
                merged = total.setdefault("backplane", {"connected": True})
                for name, count in value.items():
                    if name == "connected":
                        merged["connected"] = merged["connected"] and bool(count)
                    else:
                        merged[name] = merged.get(name, 0) + count
            elif isinstance(value, dict):
                merged = total.setdefault(key, {})
                for name, count in value.items():
                    merged[name] = merged.get(name, 0) + count
            else:
                total[key] = total.get(key, 0) + value
    total["workers"] = len(snapshots)
    return total
