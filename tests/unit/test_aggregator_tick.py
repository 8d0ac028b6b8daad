"""The aggregator's tick follows the sinks: the bar's four redraws a second, one snapshot a second for the sinks
that write less often; the speed shown averages over the same span of time whatever the tick."""

from __future__ import annotations

import io
from typing import Any

import pytest

from mpupload.engine.aggregator import MAX_TICK_S, TICK_S, Aggregator, tick_for
from mpupload.sinks import JsonLinesSink, PlainSink, TerminalSink
from mpupload.units import MiB
from mpupload.wire import Event, Snapshot


class Wants:
    def __init__(self, refresh_s: float | None = None) -> None:
        if refresh_s is not None:
            self.refresh_s = refresh_s
        self.snapshots: list[Snapshot] = []

    def emit(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)

    def close(self) -> None:
        pass


def test_each_sink_says_how_often_it_wants_a_snapshot() -> None:
    assert TerminalSink.refresh_s == TICK_S
    assert JsonLinesSink(io.StringIO()).refresh_s == 1.0
    assert PlainSink(io.StringIO()).refresh_s > MAX_TICK_S


@pytest.mark.parametrize(("wanted", "tick"), [
    ([], MAX_TICK_S),                       # nothing to feed: the journal and the executor still get a second
    ([1.0], 1.0),                           # JSON lines
    ([5.0], MAX_TICK_S),                    # plain lines every 5 s: never slower than a second
    ([0.5], 0.5),                           # the API push every 2 s
    ([1.0, 0.25], 0.25),                    # JSON lines and the bar: the bar's rate
    ([0.01], TICK_S),                       # never faster than the bar
    ([None], TICK_S),                       # a sink that does not say: the bar's rate, as before
])
def test_the_tick_serves_the_most_demanding_sink(wanted: list[float | None], tick: float) -> None:
    sinks: list[Any] = [Wants(w) for w in wanted]
    assert tick_for(sinks) == tick
    assert Aggregator(bucket="b", key="k", total_bytes=1, parts_total=1, sinks=sinks).tick_s == tick


def _speeds(tick_s: float) -> list[tuple[float, float]]:
    """(time, speed shown) for 20 s at 10 MiB/s, then 20 MiB/s, sampled every ``tick_s``."""
    clock = [0.0]
    agg = Aggregator(bucket="b", key="k", total_bytes=10**12, parts_total=1, sinks=[Wants(tick_s)],
                     clock=lambda: clock[0])
    assert agg.tick_s == tick_s
    agg.started({})
    sent, out = 0.0, []
    while clock[0] < 40.0:
        clock[0] += tick_s
        sent += (10 if clock[0] <= 20.0 else 20) * MiB * tick_s
        agg.tick(int(sent), 0)
        out.append((round(clock[0], 2), agg.snapshot(Event.PROGRESS).speed_bps or 0.0))
    return out


def test_the_speed_follows_a_change_of_rate_as_fast_at_any_tick() -> None:
    fast, slow = _speeds(TICK_S), _speeds(MAX_TICK_S)
    at = {round(t, 2): s for t, s in fast}
    for t, s in slow:
        if t in (20.0, 22.0, 25.0, 30.0, 40.0):
            assert s == pytest.approx(at[t], rel=0.12), (t, s, at[t])
    # and it does follow: most of the way to the new rate within 5 s, all of it within 20
    assert dict(slow)[25.0] > 17 * MiB
    assert dict(slow)[40.0] == pytest.approx(20 * MiB, rel=0.01)


def test_a_file_event_between_ticks_carries_the_bytes_sent_when_it_happens() -> None:
    clock = [0.0]
    sink = Wants(1.0)
    agg = Aggregator(bucket="b", key="k", total_bytes=10**9, parts_total=1, sinks=[sink], clock=lambda: clock[0])
    agg.started({})
    clock[0] = 1.0
    agg.tick(10 * MiB, 0)
    clock[0] = 1.9  # a tick a second: the last one is 0.9 s old
    agg.count(19 * MiB)
    agg.file_event(Event.FILE_COMPLETED, "k/f", {})
    assert sink.snapshots[-1].event is Event.FILE_COMPLETED and sink.snapshots[-1].bytes_done == 19 * MiB
