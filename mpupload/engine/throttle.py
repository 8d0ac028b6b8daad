"""The run's bandwidth cap (``--max-bandwidth RATE``): a token bucket that every sender checks, with no lock.

**What it caps.** The bytes the whole run hands to the network, in bytes per second: every worker process, every
thread of a worker's batch of small files and the coordinator's PutObject thread together, multipart parts
(botocore) and the lean PutObject alike. The body reader (:class:`~.reader.ThrottledPartReader`) asks
:meth:`Throttle.acquire` before it reads each chunk; what it counts is what the cap meters.

**How, without a lock.** The pool shares no lock between processes (a worker killed while holding one would freeze
its siblings), so the bucket keeps no shared "tokens left" that senders would have to update together. What every
sender can already read is the run's byte counters (:class:`~.counter.ByteCounter`: one slot per worker, the
bytes sent by the whole run, what the progress shows). The bucket is a line in time: ``n`` more bytes may go at
``now`` when::

    sent + n <= rate * (now - floor) + burst

``sent`` is the sum of every counter slot, ``floor`` a CLOCK_MONOTONIC time (the same clock in every process of one
host) in shared memory, first the moment the executors were made. Idle time must not bank credit: before each
check a sender raises ``floor`` to ``now - sent / rate`` when that is later (the run is behind the line: the bucket
is full, ``burst`` bytes and no more). Raising ``floor`` is the only write; it is a read and a store of one aligned
double, without a lock: two senders raising it at once may leave the lower of two correct values (the bucket a
little fuller than it should be, once), never a wrong one. A sender that must wait sleeps in slices of at most
:data:`SLICE_S` and checks the cancel flag between them: Ctrl+C stops a throttled part within a slice.

Bytes taken back (a retried part, a dead worker's part in flight) lower ``sent``; the next check raises ``floor``
to match, so the bytes sent again are metered again: a retry does not get them for free.

**Accuracy.** Over any interval of ``t`` seconds the run sends at most ``rate * t + burst + (senders - 1) * chunk``
bytes: senders that check at the same instant see the same ``sent`` and may each take one chunk. ``burst`` is
:data:`BURST_S` of the rate (at least :data:`MIN_BURST`), ``chunk`` about 1/64 of a second of the rate (1 KiB to
1 MiB), so 64 chunks a second run-wide at most up to 64 MiB/s (the cost of a check: summing the counter slots and
reading the clock). Over a long run the average is the rate, as long as the store and the senders can go faster:
the cap is an upper bound, a slower store or a busy machine gives less. What is metered is the bytes handed to the
socket; the kernel's send buffer smooths them on the wire.

**Its limits.** A low cap shared by many senders leaves each connection idle between its chunks (``senders /
64`` seconds): keep ``--workers`` and ``--put-threads`` small under a cap of a few hundred KiB/s, or a store may
close connections it finds idle. Below :data:`MIN_RATE` the cap is refused. The line reads this host's counters.

**A cluster run** (``--cluster``) has no counters that every sender can read: its senders are threads of Dask worker
processes on many hosts. The coordinator splits the cap among the run's *tasks in flight* (the parts and batches it
has submitted and not seen end): each gets ``rate / in_flight``, a figure the coordinator sends with every task and
publishes whenever it changes (see :mod:`.dask_executor`). Each worker process meters its own senders with a
:class:`RateBucket` at that share times the run's tasks running there, so the run-wide sum is at most the cap, and a
run's last few tasks get the whole cap between them rather than their first share.

Without a cap there is no throttle at all: the plain :class:`~.reader.PartReader` checks nothing per chunk.
"""

from __future__ import annotations

import ctypes
import multiprocessing.sharedctypes
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..errors import Cancelled
from ..units import KiB, MiB, format_rate
from .counter import ByteCounter, CancelFlag

__all__ = ["Meter", "Throttle", "RateBucket", "check_rate", "burst_for", "chunk_for", "MIN_RATE", "BURST_S",
           "MIN_BURST", "SLICE_S"]

#: the lowest cap accepted (bytes per second): below it a store's idle timeouts would end requests
MIN_RATE = 64 * KiB
#: the bucket's depth, in seconds of the rate: what may go at once after an idle moment
BURST_S = 0.25
MIN_BURST = 64 * KiB
#: the chunk a throttled reader reads at a time: about 1/64 s of the rate, within these bounds
MIN_CHUNK = 1 * KiB
MAX_CHUNK = 1 * MiB
CHUNKS_PER_S = 64
#: the longest a throttled sender sleeps before it checks the cancel flag (and the line) again
SLICE_S = 0.05


class Meter(Protocol):
    """What a throttled body reader asks before each chunk: :class:`Throttle` (a local run) or :class:`RateBucket`
    (a cluster worker process)."""

    @property
    def chunk(self) -> int: ...

    def acquire(self, n: int, cancel: CancelFlag | None = None) -> None: ...


def _wait_until_free(delay: Callable[[int], float], sleep: Callable[[float], None], n: int,
                     cancel: CancelFlag | None) -> None:
    """Ask ``delay(n)`` until it says 0, sleeping in slices of at most :data:`SLICE_S` and checking ``cancel``."""
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled("upload cancelled")
        wait = delay(n)
        if wait <= 0:
            return
        sleep(min(wait, SLICE_S))


def check_rate(rate: int) -> int:
    """``rate`` (bytes per second) if a cap can hold it; ``ValueError`` with a message fit for a user."""
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise ValueError(f"the bandwidth cap must be a whole number of bytes per second, not {rate!r}")
    if rate < MIN_RATE:
        raise ValueError(f"{format_rate(rate) if rate > 0 else str(rate) + ' B/s'} is below the lowest cap, "
                         f"{format_rate(MIN_RATE)}: use e.g. 64KiB/s or more")
    return rate


def burst_for(rate: int) -> int:
    """The bucket's depth for ``rate``: :data:`BURST_S` of it, at least :data:`MIN_BURST`."""
    return max(MIN_BURST, int(rate * BURST_S))


def chunk_for(rate: int) -> int:
    """The most a throttled reader takes at a time for ``rate`` (never more than the burst)."""
    return min(burst_for(rate), max(MIN_CHUNK, min(MAX_CHUNK, rate // CHUNKS_PER_S)))


class Throttle:
    """The run's token bucket (see the module docstring). ``counters`` are every counter of the run's senders;
    ``clock`` and ``sleep`` are injectable for tests (the real ones cross to worker processes by name)."""

    def __init__(self, rate: int, counters: Sequence[ByteCounter], *, start: float | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 floor: Any = None) -> None:
        self.rate = check_rate(rate)
        self.burst = burst_for(rate)
        self.chunk = chunk_for(rate)
        self._counters = tuple(counters)
        self._clock = clock
        self._sleep = sleep
        self._floor = floor if floor is not None else multiprocessing.sharedctypes.RawValue(
            ctypes.c_double, clock() if start is None else start)

    def __getstate__(self) -> dict[str, Any]:
        # the shared floor and counters pickle only while a worker process is being started, as ByteCounter does
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def floor(self) -> float:
        return float(self._floor.value)

    def sent(self) -> int:
        """The bytes the run's senders have sent (and not taken back)."""
        return sum(counter.total() for counter in self._counters)

    def delay(self, n: int) -> float:
        """Seconds until ``n`` more bytes may go (0: now); raises the floor when the run is behind the line."""
        n = min(n, self.burst)  # a request larger than the bucket would never fit: it waits for a full bucket
        now = self._clock()
        sent = self.sent()
        floor = self._floor.value
        behind = now - sent / self.rate
        if behind > floor:
            self._floor.value = floor = behind
        excess = sent + n - (self.rate * (now - floor) + self.burst)
        return excess / self.rate if excess > 0 else 0.0

    def acquire(self, n: int, cancel: CancelFlag | None = None) -> None:
        """Return once ``n`` bytes may go; :class:`~mpupload.errors.Cancelled` if ``cancel`` is set meanwhile."""
        _wait_until_free(self.delay, self._sleep, n, cancel)


class RateBucket:
    """A token bucket for the threads of one process whose rate can change while they send: a cluster worker
    process's share of a run's cap (see the module docstring). Its depth is :func:`burst_for` of the current rate;
    a request larger than that waits for a full bucket and leaves it in debt, so the average still holds.
    ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(self, rate: float, *, chunk: int | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self._rate = max(1.0, float(rate))
        self._tokens = float(burst_for(int(self._rate)))
        self._last = clock()
        #: the most a throttled reader takes at a time (fixed for the bucket's life: readers read it once)
        self.chunk = chunk if chunk is not None else chunk_for(int(self._rate))

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> int:
        return burst_for(int(self._rate))

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self._rate)
            self._last = now

    def set_rate(self, rate: float) -> None:
        """From now on, ``rate`` bytes per second (what was earned at the old rate is kept, up to the new depth)."""
        with self._lock:
            self._refill(self._clock())
            self._rate = max(1.0, float(rate))
            self._tokens = min(self._tokens, float(self.burst))

    def delay(self, n: int) -> float:
        """Take ``n`` bytes now and return 0, or return the seconds to wait before asking again."""
        with self._lock:
            self._refill(self._clock())
            want = min(float(n), float(self.burst))
            if self._tokens >= want:
                self._tokens -= n
                return 0.0
            return (want - self._tokens) / self._rate

    def acquire(self, n: int, cancel: CancelFlag | None = None) -> None:
        """Return once ``n`` bytes may go; :class:`~mpupload.errors.Cancelled` if ``cancel`` is set meanwhile."""
        _wait_until_free(self.delay, self._sleep, n, cancel)
