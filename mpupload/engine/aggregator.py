"""The aggregator: turns the shared byte counter into snapshots and fans them out to sinks.

It runs in the coordinator's main thread, on a fixed tick: as often as the most demanding sink wants a snapshot
(its ``refresh_s``), between :data:`TICK_S` (the terminal bar) and :data:`MAX_TICK_S` (JSON lines, plain
lines, the API push: a snapshot a second is more than they write). A tick costs the coordinator CPU (sampling the
workers' counters, a snapshot, the sinks), so it is not paid for a redraw that nobody sees. It owns the
clock-dependent numbers: current speed (:class:`~mpupload.stats.SpeedMeter`), average speed, ETA, elapsed time.
Bytes counted by this run (``sent``) drive speed and ETA; ``bytes_done`` adds what a resumed upload already had.

:class:`Sink` is the port the aggregator feeds, defined here because the engine owns it: the engine never
imports an implementation (:mod:`mpupload.sinks` holds the terminal bar, plain lines, JSON lines and the API
push); the caller builds the sinks and hands them in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..stats import SpeedMeter, average_speed, eta_seconds
from ..wire import Event, FileCounts, Snapshot, Status

__all__ = ["MAX_TICK_S", "TICK_S", "Aggregator", "Sink", "tick_for"]

#: the shortest tick: the terminal bar's refresh
TICK_S = 0.25
#: the longest tick: what the sinks that write less often (JSON lines, plain lines, the API push) get, and what a
#: run with no sink gets; a directory run's per-file lines and its journal sync ride on it too
MAX_TICK_S = 1.0
#: what the speed shown averages over (the moving average's span), whatever the tick
SPEED_SPAN_S = 5.0
log = logging.getLogger("mpupload")


class Sink(Protocol):
    """Where snapshots go. Called from the parent's main thread, in order: one ``started`` snapshot, any
    number of ``progress`` snapshots, one final snapshot, then :meth:`close`. A sink that raises is logged
    and dropped; it never breaks the upload."""

    #: how often this sink wants a snapshot, in seconds (optional: a sink without it gets :data:`TICK_S`)
    refresh_s: float

    def emit(self, snapshot: Snapshot) -> None:
        """Take one snapshot. Called from the parent's main thread; must return quickly."""

    def close(self) -> None:
        """Flush and release the output (after the final snapshot)."""


def tick_for(sinks: list[Sink]) -> float:
    """The tick that serves every sink: the shortest ``refresh_s`` among them, kept within
    [:data:`TICK_S`, :data:`MAX_TICK_S`]."""
    wanted = [float(getattr(sink, "refresh_s", TICK_S)) for sink in sinks]
    return min(MAX_TICK_S, max(TICK_S, min(wanted, default=MAX_TICK_S)))


class Aggregator:
    def __init__(
        self,
        *,
        bucket: str,
        key: str,
        total_bytes: int,
        parts_total: int,
        sinks: list[Sink],
        resumed_bytes: int = 0,
        clock: Callable[[], float] = time.monotonic,
        speed_window: int | None = None,
    ) -> None:
        self.bucket = bucket
        self.key = key
        self.total_bytes = total_bytes
        self.parts_total = parts_total
        self.sinks = list(sinks)
        self.resumed_bytes = resumed_bytes
        self.clock = clock
        self.upload_id: str | None = None
        self.status = Status.PENDING
        #: how often the engine calls :meth:`tick` (see the module docstring)
        self.tick_s = tick_for(self.sinks)
        if speed_window is None:
            speed_window = max(2, round(SPEED_SPAN_S / self.tick_s))
        self._meter = SpeedMeter(window=speed_window)
        self._start = clock()
        self._sent = 0
        self._parts_done = 0
        #: a directory run's file counts (every snapshot carries them); ``None`` for one file
        self.files: FileCounts | None = None

    def elapsed(self) -> float:
        return max(0.0, self.clock() - self._start)

    def snapshot(self, event: Event, extra: dict[str, Any] | None = None, *, key: str | None = None) -> Snapshot:
        done = min(self.total_bytes, self.resumed_bytes + max(0, self._sent))
        speed = self._meter.speed
        elapsed = self.elapsed()
        return Snapshot(
            event=event,
            status=self.status,
            upload_id=self.upload_id,
            bucket=self.bucket,
            key=self.key if key is None else key,
            total_bytes=self.total_bytes,
            bytes_done=done,
            speed_bps=speed,
            avg_speed_bps=average_speed(max(0, done - self.resumed_bytes), elapsed),
            eta_seconds=eta_seconds(self.total_bytes, done, speed) if self.status is not Status.PENDING else None,
            elapsed_seconds=elapsed,
            parts_done=self._parts_done,
            parts_total=self.parts_total,
            extra=extra or {},
            files=self.files,
        )

    def started(self, extra: dict[str, Any]) -> None:
        self._start = self.clock()
        self._meter.sample(self._start, 0)
        self.status = Status.UPLOADING
        self._emit(self.snapshot(Event.STARTED, extra))

    def tick(self, sent_bytes: int, parts_done: int, extra: dict[str, Any] | None = None) -> None:
        """Sample the counter (bytes sent by this run) and feed a progress snapshot to every sink."""
        self._sent = sent_bytes
        self._parts_done = parts_done
        self._meter.sample(self.clock(), sent_bytes)
        self._emit(self.snapshot(Event.PROGRESS, extra))

    def count(self, sent_bytes: int) -> None:
        """Take the bytes sent by this run now, between ticks, for the snapshots that follow (a file event carries
        the bytes sent when it happens, not at the last tick, up to a second before)."""
        self._sent = sent_bytes

    def file_event(self, event: Event, key: str, extra: dict[str, Any]) -> None:
        """A directory run's per-file event (``file_completed``, ``file_failed``): the file's key, the run's
        totals as they are now."""
        self._emit(self.snapshot(event, extra, key=key))

    def set_status(self, status: Status) -> None:
        self.status = status

    def finish(self, event: Event, status: Status, extra: dict[str, Any], *, sent_bytes: int | None = None,
               parts_done: int | None = None) -> Snapshot:
        if sent_bytes is not None:
            self._sent = sent_bytes
        if parts_done is not None:
            self._parts_done = parts_done
        self.status = status
        snap = self.snapshot(event, extra)
        self._emit(snap)
        return snap

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - a sink never breaks the upload
                log.debug("closing sink %r failed", sink, exc_info=True)

    def _emit(self, snap: Snapshot) -> None:
        for sink in list(self.sinks):
            try:
                sink.emit(snap)
            except Exception:  # noqa: BLE001
                log.warning("progress output %s failed and was turned off", type(sink).__name__, exc_info=True)
                self.sinks.remove(sink)
