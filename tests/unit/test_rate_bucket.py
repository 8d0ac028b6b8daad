"""A cluster worker process's share of a run's cap (mpupload.engine.throttle.RateBucket, and
mpupload.engine.dask_worker.RunShare) with a fake clock.

The bucket meters the threads of one process at a rate that changes while they send; the share says that rate:
the coordinator's figure per task in flight (the newest by sequence number) times the run's tasks running in the
process. What is checked: the rate holds over a long run and in any interval (``rate * t + burst``), a new rate
takes effect at once without banking credit, idle time banks at most one burst, a cancel is honoured within a
slice, and an old figure never replaces a newer one.
"""

from __future__ import annotations

import pytest

from mpupload import errors as E
from mpupload.engine.counter import CancelFlag
from mpupload.engine.dask_worker import RunShare
from mpupload.engine.throttle import SLICE_S, RateBucket, burst_for
from mpupload.units import KiB, MiB
from tests.unit.test_throttle import Clock


def make(rate: float) -> tuple[RateBucket, Clock]:
    clock = Clock()
    return RateBucket(rate, clock=clock, sleep=clock.sleep), clock


def send(bucket: RateBucket, clock: Clock, total: int, log: list[tuple[float, int]] | None = None) -> int:
    sent = 0
    while sent < total:
        n = min(bucket.chunk, total - sent)
        bucket.acquire(n)
        sent += n
        if log is not None:
            log.append((clock.now, sent))
    return sent


def worst_excess(log: list[tuple[float, int]], rate: float, start: tuple[float, int]) -> float:
    points = [start, *log]
    return max((b1 - b0) - rate * (t1 - t0) for i, (t0, b0) in enumerate(points) for t1, b1 in points[i + 1:])


def test_the_rate_holds_over_a_long_run_and_in_every_interval() -> None:
    rate = 8 * MiB
    bucket, clock = make(rate)
    t0 = clock.now
    log: list[tuple[float, int]] = []
    send(bucket, clock, 20 * rate, log)
    elapsed = clock.now - t0
    assert 20 * rate - burst_for(rate) <= rate * elapsed <= 20 * rate
    assert worst_excess(log, rate, (t0, 0)) <= burst_for(rate) + bucket.chunk


def test_a_lower_rate_takes_effect_at_once_and_a_higher_one_banks_nothing() -> None:
    bucket, clock = make(8 * MiB)
    send(bucket, clock, 16 * MiB)  # the bucket is empty now
    bucket.set_rate(2 * MiB)
    assert bucket.rate == 2 * MiB and bucket.burst == burst_for(2 * MiB)
    t = clock.now
    send(bucket, clock, 4 * MiB)
    assert clock.now - t >= (4 * MiB - burst_for(2 * MiB)) / (2 * MiB) - 1e-9
    bucket.set_rate(16 * MiB)  # a faster rate starts from what is in the bucket, not from a full one
    t = clock.now
    send(bucket, clock, 16 * MiB)
    assert clock.now - t >= (16 * MiB - burst_for(16 * MiB)) / (16 * MiB) - 1e-9


def test_idle_time_banks_one_burst_at_most() -> None:
    rate = 4 * MiB
    bucket, clock = make(rate)
    send(bucket, clock, 8 * MiB)
    clock.now += 60.0  # a minute without sending
    t = clock.now
    sent = 0
    while clock.now == t:  # what goes without waiting
        bucket.acquire(bucket.chunk)
        sent += bucket.chunk
    assert sent - bucket.chunk <= burst_for(rate)


def test_a_request_larger_than_the_bucket_waits_for_a_full_one_and_leaves_a_debt() -> None:
    rate = 256 * KiB
    bucket, clock = make(rate)
    bucket.acquire(burst_for(rate))  # empty
    t = clock.now
    bucket.acquire(4 * burst_for(rate))  # waits for a full bucket, then owes the rest
    assert clock.now - t == pytest.approx(burst_for(rate) / rate, rel=0.05)
    t = clock.now
    bucket.acquire(1 * KiB)
    assert clock.now - t >= 3 * burst_for(rate) / rate - 1e-9


def test_a_cancel_stops_a_wait_within_a_slice() -> None:
    bucket, clock = make(64 * KiB)
    bucket.acquire(bucket.burst)
    flag = CancelFlag()
    clock.on_sleep.append(flag.set)
    with pytest.raises(E.Cancelled):
        bucket.acquire(bucket.burst, flag)
    assert clock.sleeps and max(clock.sleeps) <= SLICE_S


def test_a_share_is_the_newest_figure_times_the_tasks_running_here() -> None:
    share = RunShare(1, 2 * MiB)
    share.apply(3)
    assert share.bucket.rate == 6 * MiB
    assert not share.offer(1, 9 * MiB)  # the same sequence number: not newer
    assert share.offer(3, 4 * MiB)
    assert not share.offer(2, 1 * MiB)  # a task submitted earlier carries an older figure: ignored
    share.apply(1)
    assert share.bucket.rate == 4 * MiB
    share.apply(0)  # no task of the run here: the bucket is left as it is (nobody meters through it)
    assert share.bucket.rate == 4 * MiB


def test_a_tiny_share_still_sends_in_small_chunks() -> None:
    """A low cap split among many tasks can go below the lowest cap a user may ask for: the bucket takes it."""
    share = RunShare(1, 5 * KiB)
    assert 1 * KiB <= share.bucket.chunk <= 5 * KiB
    assert share.bucket.rate == 5 * KiB
