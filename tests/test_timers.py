"""``bunws.timers.TimerWheel``: filing, refiling and popping, against a plain
oracle; then the server's tick over real sockets looks only at what is due."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bunws
from bunws.session import WebSocketSession
from bunws.timers import TimerWheel


def test_an_item_is_popped_by_the_first_tick_at_or_after_its_time() -> None:
    wheel = TimerWheel(0.5)
    wheel.schedule("a", 10.2)  # tick 21 (10.5)
    wheel.schedule("b", 10.5)  # tick 21 exactly
    wheel.schedule("c", 10.6)  # tick 22
    assert wheel.due_at("a") == 10.5 and wheel.due_at("c") == 11.0
    assert wheel.pop_due(10.4) == []
    assert wheel.pop_due(10.5) == ["a", "b"]
    assert "a" not in wheel and len(wheel) == 1
    assert wheel.pop_due(11.0) == ["c"]
    assert len(wheel) == 0


def test_refiling_moves_an_item_and_none_or_cancel_unfiles_it() -> None:
    wheel = TimerWheel(1.0)
    wheel.schedule("a", 5.0)
    wheel.schedule("a", 2.0)  # a deadline moved earlier
    assert wheel.due_at("a") == 2.0 and len(wheel) == 1
    wheel.schedule("b", 3.0)
    wheel.schedule("b", None)
    wheel.cancel("missing")  # no-op
    assert "b" not in wheel
    assert wheel.pop_due(10.0) == ["a"]


def test_a_time_already_past_goes_to_the_next_tick() -> None:
    wheel = TimerWheel(0.5)
    wheel.schedule("x", 100.0)
    assert wheel.pop_due(100.0) == ["x"]
    wheel.schedule("late", 99.0)  # its tick has run
    wheel.soon("soon")
    assert wheel.due_at("late") == wheel.due_at("soon") == 100.5
    assert wheel.pop_due(100.2) == []
    assert wheel.pop_due(100.5) == ["late", "soon"]


def test_a_long_absence_pops_everything_due_in_tick_order() -> None:
    wheel = TimerWheel(0.5)
    wheel.pop_due(0.0)
    wheel.schedule("far", 1e6)
    wheel.schedule("near", 3.0)
    wheel.schedule("mid", 5e5)
    assert wheel.pop_due(2e6) == ["near", "mid", "far"]


def test_tick_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tick"):
        TimerWheel(0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.one_of(st.none(), st.floats(0, 60))), max_size=60),
       st.lists(st.floats(0, 80), min_size=1, max_size=8))
def test_the_wheel_matches_an_oracle(ops: list[tuple[int, float | None]], pops: list[float]) -> None:
    """Schedules interleaved with pops: an item pops at the first pop whose tick
    covers its time, never before its time's tick, each item at most once."""
    tick = 0.5
    wheel = TimerWheel(tick)
    filed: dict[int, int] = {}  # item -> tick index (the oracle)
    popped_to = -1
    chunks = [ops[i::len(pops)] for i in range(len(pops))]
    for now, chunk in zip(sorted(pops), chunks):
        for item, when in chunk:
            wheel.schedule(item, when)
            if when is None:
                filed.pop(item, None)
            else:
                filed[item] = max(math.ceil(when / tick), popped_to + 1)
        last = math.floor(now / tick)
        expected = sorted((i for i, k in filed.items() if k <= last), key=lambda i: filed[i])
        got = wheel.pop_due(now)
        assert sorted(got) == sorted(expected)
        assert [filed[i] for i in got] == sorted(filed[i] for i in got)  # tick by tick
        for item in got:
            del filed[item]
        popped_to = max(popped_to, last)
        assert len(wheel) == len(filed)


# ------------------------------------------------------------------------ the server's tick
async def test_idle_sockets_are_looked_at_by_their_deadline_not_every_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """20 idle sockets with a 60 s idle timeout: after the upgrade's one look each,
    three ticks look at none of them (the tick used to look at all, every time)."""
    looks: list[WebSocketSession] = []
    original = WebSocketSession.check_timers

    def counting(self: WebSocketSession, now: float) -> float | None:
        looks.append(self)
        return original(self, now)

    monkeypatch.setattr(WebSocketSession, "check_timers", counting)
    monkeypatch.setattr(bunws.server, "TICK_SECONDS", 0.05)
    handler = bunws.WebSocketHandler(message=lambda ws, m: ws.send(m), idle_timeout=60)
    server = await bunws.serve(lambda req, srv: None if srv.upgrade(req) else bunws.Response("no"),
                               handler, hostname="127.0.0.1", port=0)
    clients = []
    try:
        for _ in range(20):
            clients.append(await bunws.connect(f"ws://127.0.0.1:{server.port}/", ping_interval=None))
        async with asyncio.timeout(5):
            while len(looks) < 20:  # the first tick after each upgrade
                await asyncio.sleep(0.01)
        first = len(looks)
        await asyncio.sleep(0.2)  # about four ticks
        assert len(looks) == first == 20
        assert len(server.timers) == 20  # each filed under its ping deadline, ~56 s away
    finally:
        for c in clients:
            await c.close()
        await server.stop()
