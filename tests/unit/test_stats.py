"""Speed and ETA (mpupload.stats): an rclone-style ETA table, and a SpeedMeter on a fake clock."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from mpupload.stats import MAX_ETA_S, SpeedMeter, average_speed, eta_seconds
from mpupload.units import GiB, MiB, TiB

TICK_S = 0.5
BOUND = int(MAX_ETA_S)  # 8,640,000 s: 100 days


def test_max_eta_is_100_days() -> None:
    assert MAX_ETA_S == 100 * 86400


@pytest.mark.parametrize(
    ("total", "done", "speed", "expected"),
    [
        # unknown speed -> unknown ETA
        (100, 0, 0.0, None),
        (100, 0, 0, None),
        (100, 0, None, None),
        (100, 0, -1.0, None),
        (100, 50, -1e9, None),
        (100, 0, math.nan, None),
        (100, 0, math.inf, None),
        (100, 0, -math.inf, None),
        # done is done, whatever the speed says
        (100, 100, None, 0.0),
        (100, 100, 0.0, 0.0),
        (100, 100, math.nan, 0.0),
        (100, 150, 10.0, 0.0),
        (0, 0, None, 0.0),
        (0, 0, 10.0, 0.0),
        # absurdly far away -> unknown
        (5 * TiB, 0, 1.0, None),
        (BOUND + 1, 0, 1.0, None),
        (100, 0, 1e-300, None),
        (100, 0, 5e-324, None),  # 100 / 5e-324 overflows to inf
        # exactly at the bound is still a number
        (BOUND, 0, 1.0, MAX_ETA_S),
        (2 * BOUND, 0, 2.0, MAX_ETA_S),
        (BOUND + 10, 10, 1.0, MAX_ETA_S),
        # ordinary cases, exact
        (100, 0, 10.0, 10.0),
        (100, 50, 10.0, 5.0),
        (100, 0, 0.5, 200.0),
        (1000, 1, 3.0, 333.0),
        (100, 99, 1e9, 1e-9),
        (5 * TiB, 0, float(GiB), 5120.0),
        (10 * GiB, 2 * GiB, 100.0 * MiB, 81.92),
        (5 * TiB, 5 * TiB - 1, 1.0, 1.0),
    ],
)
def test_eta_table(total: int, done: int, speed: float | None, expected: float | None) -> None:
    result = eta_seconds(total, done, speed)
    if expected is None:
        assert result is None
    else:
        assert result is not None
        assert result == pytest.approx(expected, rel=1e-12, abs=0.0)
        assert isinstance(result, float)
        assert result >= 0.0


@pytest.mark.parametrize(
    ("sent", "elapsed", "expected"),
    [
        (0, 0.0, 0.0),
        (100, 0.0, 0.0),  # no time has passed: 0, not a division error or inf
        (100, -1.0, 0.0),  # a clock that went backwards
        (0, 10.0, 0.0),
        (-100, 10.0, 0.0),  # never negative
        (100, 4.0, 25.0),
        (1, 1e-9, 1e9),
        (5 * TiB, 1024.0, 5 * GiB),
        (100, math.inf, 0.0),
    ],
)
def test_average_speed(sent: int, elapsed: float, expected: float) -> None:
    result = average_speed(sent, elapsed)
    assert result == pytest.approx(expected, rel=1e-12, abs=0.0)
    assert math.isfinite(result) and result >= 0.0


def feed(
    meter: SpeedMeter, start_t: float, start_bytes: int, rate_bps: float, ticks: int
) -> Iterator[float | None]:
    """Feed ``ticks`` samples at a constant rate after (start_t, start_bytes); yield each returned speed."""
    for i in range(1, ticks + 1):
        yield meter.sample(start_t + i * TICK_S, start_bytes + int(rate_bps * TICK_S * i))


def test_first_sample_is_unknown() -> None:
    meter = SpeedMeter()
    assert meter.speed is None
    assert meter.sample(100.0, 12345) is None
    assert meter.speed is None
    assert eta_seconds(GiB, 12345, meter.speed) is None


def test_soft_start_second_sample_is_the_instant_rate() -> None:
    meter = SpeedMeter()
    meter.sample(0.0, 0)
    assert meter.sample(0.5, 1000) == 2000.0
    assert meter.speed == 2000.0
    # third sample: weight 2 / (2 + 1), not the full-window weight
    assert meter.sample(1.0, 1500) == pytest.approx(2000.0 + (1000.0 - 2000.0) * 2 / 3)


def test_soft_start_reaches_full_window_weight() -> None:
    window = 10
    meter = SpeedMeter(window=window)
    meter.sample(0.0, 0)
    t, done = 0.0, 0
    for _ in range(3 * window):
        t += TICK_S
        done += 1000
        meter.sample(t, done)
    before = meter.speed
    assert before == pytest.approx(2000.0)
    t += TICK_S
    done += 3000  # instant 6000 B/s
    after = meter.sample(t, done)
    assert after == pytest.approx(before + (6000.0 - before) * 2 / (window + 1))


def test_steady_rate_converges() -> None:
    rate = 10.0 * MiB
    meter = SpeedMeter()
    meter.sample(0.0, 0)
    speeds = list(feed(meter, 0.0, 0, rate, 50))
    assert all(s is not None and s == pytest.approx(rate, rel=1e-6) for s in speeds)


def test_jittery_rate_converges_near_the_mean() -> None:
    meter = SpeedMeter()
    meter.sample(0.0, 0)
    t, done = 0.0, 0
    for i in range(200):
        t += TICK_S
        done += int((8 if i % 2 else 12) * MiB * TICK_S)
        meter.sample(t, done)
    assert meter.speed == pytest.approx(10 * MiB, rel=0.15)


@pytest.mark.parametrize(("old", "new"), [(10 * MiB, 20 * MiB), (20 * MiB, 10 * MiB), (10 * MiB, 100 * MiB)])
def test_step_change_responds_within_the_window(old: float, new: float) -> None:
    window = 10
    meter = SpeedMeter(window=window)
    meter.sample(0.0, 0)
    list(feed(meter, 0.0, 0, old, 3 * window))
    t0, b0 = 3 * window * TICK_S, int(old * TICK_S * 3 * window)
    speeds = [s for s in feed(meter, t0, b0, new, 3 * window) if s is not None]
    # it moves toward the new rate monotonically, most of the way within one window, all of it within three
    direction = 1 if new > old else -1
    assert all(direction * (b - a) >= 0 for a, b in zip(speeds, speeds[1:]))
    assert abs(speeds[window - 1] - new) <= 0.15 * abs(new - old)
    assert speeds[-1] == pytest.approx(new, rel=0.01)


def test_bytes_going_backwards_never_give_a_negative_speed() -> None:
    meter = SpeedMeter()
    samples = [
        (0.0, 0), (0.5, 10 * MiB), (1.0, 20 * MiB), (1.5, 4 * MiB), (2.0, 0), (2.5, 5 * MiB), (3.0, 1 * MiB),
    ]
    speeds = [meter.sample(t, b) for t, b in samples]
    assert speeds[0] is None
    assert all(s is not None and s >= 0.0 for s in speeds[1:])
    # the drop itself counts as no progress: the speed decays rather than going negative
    assert speeds[3] is not None and speeds[2] is not None and 0.0 < speeds[3] < speeds[2]
    # bytes sent again after the drop count again (measured from the lowered mark)
    fresh = SpeedMeter(window=1)  # window 1: speed is the latest instant rate
    fresh.sample(0.0, 10 * MiB)
    assert fresh.sample(1.0, 2 * MiB) == 0.0
    assert fresh.sample(2.0, 6 * MiB) == 4.0 * MiB


def test_non_increasing_time_is_ignored() -> None:
    meter = SpeedMeter(window=1)
    meter.sample(0.0, 0)
    assert meter.sample(1.0, 100) == 100.0
    assert meter.sample(1.0, 10_000) == 100.0  # same time: ignored
    assert meter.sample(0.5, 50_000) == 100.0  # time went backwards: ignored
    # the ignored samples did not move the reference point: 100 more bytes over 1 s since t=1.0
    assert meter.sample(2.0, 200) == 100.0


def test_same_time_before_any_speed_stays_unknown() -> None:
    meter = SpeedMeter()
    meter.sample(5.0, 0)
    assert meter.sample(5.0, 1000) is None


def test_stall_decays_toward_zero_and_eta_becomes_unknown() -> None:
    total = 10 * GiB
    meter = SpeedMeter()
    meter.sample(0.0, 0)
    list(feed(meter, 0.0, 0, 100 * MiB, 20))
    t, done = 20 * TICK_S, int(100 * MiB * TICK_S * 20)
    before = meter.speed
    assert before is not None and eta_seconds(total, done, before) is not None
    speeds: list[float] = []
    etas: list[float | None] = []
    for _ in range(400):  # 200 s stalled
        t += TICK_S
        s = meter.sample(t, done)
        assert s is not None
        speeds.append(s)
        etas.append(eta_seconds(total, done, s))
    assert all(s >= 0.0 for s in speeds)
    assert all(b < a for a, b in zip([before, *speeds], speeds) if a > 0)  # strictly decaying while positive
    assert speeds[19] < 0.05 * before  # after two windows of nothing, under 5% of what it was
    assert etas[-1] is None
    first_unknown = etas.index(None)
    assert all(e is None for e in etas[first_unknown:])  # once unknown, it stays unknown during the stall


def test_no_progress_from_the_start_is_zero_and_eta_unknown() -> None:
    meter = SpeedMeter()
    meter.sample(0.0, 0)
    assert meter.sample(0.5, 0) == 0.0
    assert eta_seconds(GiB, 0, meter.speed) is None
