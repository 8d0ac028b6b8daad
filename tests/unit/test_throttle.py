"""The bandwidth cap's pure logic (mpupload.engine.throttle) with a fake clock, and parsing a rate.

A fake sender asks the throttle before each chunk and counts the chunk when it goes, as the body reader does; the
fake clock advances only when the throttle sleeps (or when a test lets time pass). What is checked is the token
bucket's promise: the rate over a long run, never more than ``rate * t + burst`` in any interval, no credit banked
by idle time or by bytes taken back, a cancel honoured within a slice, and what a user may type.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpupload import errors as E
from mpupload.engine.counter import ByteCounter, CancelFlag
from mpupload.engine.reader import ThrottledPartReader
from mpupload.engine.throttle import MIN_RATE, SLICE_S, Throttle, burst_for, check_rate, chunk_for
from mpupload.units import KiB, MiB, parse_rate

RATE = 8 * MiB


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep: list[object] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds
        for hook in self.on_sleep:
            hook()  # type: ignore[operator]


def make(rate: int = RATE, slots: int = 1) -> tuple[Throttle, ByteCounter, Clock]:
    clock = Clock()
    counter = ByteCounter(slots)
    return Throttle(rate, [counter], clock=clock, sleep=clock.sleep), counter, clock


def send(throttle: Throttle, counter: ByteCounter, clock: Clock, total: int, *, slot: int = 0,
         log: list[tuple[float, int]] | None = None) -> None:
    """Send ``total`` bytes chunk by chunk, as the reader does: ask, then count."""
    left = total
    while left > 0:
        n = min(throttle.chunk, left)
        throttle.acquire(n)
        counter.add(slot, n)
        left -= n
        if log is not None:
            log.append((clock.now, counter.total()))


def worst_excess(log: list[tuple[float, int]], rate: int, start: tuple[float, int]) -> float:
    """The most any interval between two points of the log carried beyond ``rate * its length``."""
    points = [start, *log]
    worst = 0.0
    for i, (t0, b0) in enumerate(points):
        for t1, b1 in points[i + 1:]:
            worst = max(worst, (b1 - b0) - rate * (t1 - t0))
    return worst


def test_the_rate_holds_over_a_long_run_and_no_interval_exceeds_it_by_more_than_the_burst() -> None:
    throttle, counter, clock = make()
    t0 = clock.now
    log: list[tuple[float, int]] = []
    total = 20 * RATE  # twenty seconds' worth
    send(throttle, counter, clock, total, log=log)
    elapsed = clock.now - t0
    # the first burst goes at once, the rest at the rate
    assert elapsed == pytest.approx((total - throttle.burst) / RATE, rel=0.01)
    assert total / elapsed <= RATE * 1.02
    assert worst_excess(log[::4], RATE, (t0, 0)) <= throttle.burst + 1
    assert max(clock.sleeps) <= SLICE_S + 1e-9


def test_idle_time_banks_no_more_than_the_burst() -> None:
    throttle, counter, clock = make()
    send(throttle, counter, clock, 3 * RATE)
    clock.now += 60.0  # a minute with nothing to send (a directory run between files, a slow store)
    before_sleeps, t_idle_end, sent_before = len(clock.sleeps), clock.now, counter.total()
    log: list[tuple[float, int]] = []
    send(throttle, counter, clock, 5 * RATE, log=log)
    went_at_once = max(b for t, b in log if t == t_idle_end) - sent_before
    assert went_at_once <= throttle.burst, "idle time banked more credit than the burst"
    assert len(clock.sleeps) > before_sleeps
    assert clock.now - t_idle_end == pytest.approx((5 * RATE - throttle.burst) / RATE, rel=0.01)
    assert worst_excess(log[::4], RATE, (t_idle_end, sent_before)) <= throttle.burst + 1


def test_bytes_taken_back_are_metered_again_when_they_are_sent_again() -> None:
    throttle, counter, clock = make()
    send(throttle, counter, clock, 2 * RATE)
    counter.add(0, -2 * RATE)  # the part failed and is retried: its bytes are taken back
    t = clock.now
    send(throttle, counter, clock, 2 * RATE)
    assert clock.now - t == pytest.approx((2 * RATE - throttle.burst) / RATE, rel=0.01)


def test_several_senders_share_one_rate() -> None:
    """Four senders, each with its own counter slot, take turns: together they hold the rate."""
    throttle, counter, clock = make(slots=4)
    t0 = clock.now
    log: list[tuple[float, int]] = []
    for _ in range(int(10 * RATE / throttle.chunk / 4)):
        for slot in range(4):
            throttle.acquire(throttle.chunk)
            counter.add(slot, throttle.chunk)
            log.append((clock.now, counter.total()))
    total = counter.total()
    assert total / (clock.now - t0) <= RATE * 1.03
    assert worst_excess(log[::8], RATE, (t0, 0)) <= throttle.burst + 1


def test_every_counter_of_the_run_is_read() -> None:
    """The parts' counter and the PutObject thread's: bytes in either count against the one cap."""
    clock = Clock()
    parts, put = ByteCounter(2), ByteCounter(1)
    throttle = Throttle(RATE, [parts, put], clock=clock, sleep=clock.sleep)
    parts.add(1, 3 * MiB)
    put.add(0, 5 * MiB)
    assert throttle.sent() == 8 * MiB
    # eight MiB are already out, at once: the next chunk waits for about (8 MiB + chunk - burst) / rate
    assert throttle.delay(throttle.chunk) == pytest.approx((8 * MiB + throttle.chunk - throttle.burst) / RATE)


def test_a_cancel_stops_a_throttled_wait_within_a_slice() -> None:
    throttle, counter, clock = make(rate=MIN_RATE)
    counter.add(0, 100 * MIN_RATE)  # a hundred seconds ahead of the line
    flag = CancelFlag()
    clock.on_sleep.append(lambda: flag.set() if len(clock.sleeps) == 3 else None)
    with pytest.raises(E.Cancelled):
        throttle.acquire(throttle.chunk, flag)
    assert len(clock.sleeps) == 3 and all(s <= SLICE_S for s in clock.sleeps)


def test_a_request_larger_than_the_bucket_still_goes() -> None:
    throttle, counter, clock = make()
    throttle.acquire(10 * throttle.burst)  # would never fit: it waits for a full bucket instead
    counter.add(0, 10 * throttle.burst)
    t = clock.now
    throttle.acquire(throttle.chunk)
    assert clock.now - t == pytest.approx((10 * throttle.burst + throttle.chunk - throttle.burst) / RATE, rel=0.01)


def test_the_throttled_reader_waits_before_each_chunk_and_stops_on_cancel(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = os.urandom(3 * MiB)
    path.write_bytes(data)
    throttle, counter, clock = make(rate=1 * MiB)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = ThrottledPartReader(fd, 0, len(data), throttle=throttle, counter=counter)
        t = clock.now
        first = reader.read(8 * KiB)  # http.client's ask: it gets the throttle's chunk
        assert len(first) == throttle.chunk
        assert first + reader.read() == data  # read() returns all the rest
        assert counter.total() == len(data)
        assert clock.now - t == pytest.approx((len(data) - throttle.burst) / MiB, rel=0.02)
        reader.seek(0)  # botocore rewinds for a retry: the bytes are taken back
        assert counter.total() == 0
        flag = CancelFlag()
        reader = ThrottledPartReader(fd, 0, len(data), throttle=throttle, counter=counter, cancel=flag)
        reader.read(1)
        clock.on_sleep.append(flag.set)
        with pytest.raises(E.Cancelled):
            reader.read()
    finally:
        os.close(fd)


@pytest.mark.parametrize(("text", "expected"), [
    ("200MiB/s", 200 * MiB), ("50MB/s", 50_000_000), ("1.5GiB/s", 1536 * MiB), ("800KiB/s", 800 * KiB),
    ("800KiB", 800 * KiB), ("8 MiB / s", 8 * MiB), ("1048576", 1048576), ("2M/sec", 2_000_000),
    ("1.3KiB/s", 1331), ("64kib/S", 64 * KiB),
])
def test_parse_rate(text: str, expected: int) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("", "cannot read rate"), ("fast", "cannot read rate"), ("-5MiB/s", "cannot read rate"),
    ("10mbps", "unknown unit"), ("5MiB/min", "cannot read rate"), ("1e6", "cannot read rate"),
])
def test_parse_rate_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate(text)


def test_check_rate_bounds() -> None:
    assert check_rate(MIN_RATE) == MIN_RATE
    for bad in (0, -1, MIN_RATE - 1):
        with pytest.raises(ValueError, match="below the lowest cap"):
            check_rate(bad)
    with pytest.raises(ValueError):
        check_rate(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [MIN_RATE, 800 * KiB, 8 * MiB, 200 * MiB, 10 * 1024 * MiB])
def test_burst_and_chunk_fit_the_rate(rate: int) -> None:
    burst, chunk = burst_for(rate), chunk_for(rate)
    assert 1 * KiB <= chunk <= min(burst, 1 * MiB)
    assert burst <= max(64 * KiB, rate // 4)
    assert chunk <= max(1 * KiB, rate // 64)
