"""Plain progress lines for logs and CI, where a redrawn bar would be noise.

One line when the upload starts, one line every ``interval_s`` while it runs and one line at the end::

    upload: s3://b/k  1.2 GiB in 19 parts of 64.0 MiB, 4 workers
      37.5%  460.0 MiB / 1.2 GiB  112.3 MiB/s (avg 98.1 MiB/s)  ETA 0:07  parts 7/19
    done: s3://b/k  1.2 GiB in 0:12 (avg 98.1 MiB/s), verified crc32c

The line builders (:func:`started_line`, :func:`progress_line`, :func:`final_line`) are pure functions of a
snapshot; the terminal bar prints the same final line under the bar.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from ..units import format_bytes, format_duration, format_rate
from ..wire import Event, Snapshot
from .base import Sink

__all__ = ["PlainSink", "final_line", "progress_line", "started_line"]

PLAIN_INTERVAL_S = 5.0


def _target(snapshot: Snapshot) -> str:
    return f"s3://{snapshot.bucket}/{snapshot.key}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _position(snapshot: Snapshot) -> str:
    """``'37.5% (460.0 MiB of 1.2 GiB)'``: how far the upload got."""
    return (f"{snapshot.percent:.1f}% ({format_bytes(snapshot.bytes_done)} of "
            f"{format_bytes(snapshot.total_bytes)})")


def started_line(snapshot: Snapshot) -> str:
    """``'upload: s3://b/k  1.2 GiB in 19 parts of 64.0 MiB, 4 workers'`` (+ what a resume reuses)."""
    extra = snapshot.extra
    size = format_bytes(snapshot.total_bytes)
    if extra.get("multipart") is False:
        return f"upload: {_target(snapshot)}  {size} in a single PutObject"
    line = f"upload: {_target(snapshot)}  {size} in {_plural(snapshot.parts_total, 'part')}"
    part_size = extra.get("part_size")
    if part_size:
        line += f" of {format_bytes(part_size)}"
    workers = extra.get("workers")
    if workers:
        line += f", {_plural(int(workers), 'worker')}"
    resumed_bytes = int(extra.get("resumed_bytes") or 0)
    if resumed_bytes > 0:
        resumed_parts = int(extra.get("resumed_parts") or 0)
        line += (f", resuming: {format_bytes(resumed_bytes)} in {_plural(resumed_parts, 'part')}"
                 " already stored")
    return line


def progress_line(snapshot: Snapshot) -> str:
    """``'  37.5%  460.0 MiB / 1.2 GiB  112.3 MiB/s (avg 98.1 MiB/s)  ETA 0:07  parts 7/19'``."""
    return (
        f"{snapshot.percent:6.1f}%  {format_bytes(snapshot.bytes_done)}"
        f" / {format_bytes(snapshot.total_bytes)}"
        f"  {format_rate(snapshot.speed_bps)} (avg {format_rate(snapshot.avg_speed_bps)})"
        f"  ETA {format_duration(snapshot.eta_seconds)}  parts {snapshot.parts_done}/{snapshot.parts_total}"
    )


def final_line(snapshot: Snapshot) -> str:
    """The one-line outcome of a ``completed``, ``stopped`` or ``failed`` snapshot."""
    extra = snapshot.extra
    elapsed = format_duration(snapshot.elapsed_seconds)
    if snapshot.event is Event.COMPLETED:
        line = (f"done: {_target(snapshot)}  {format_bytes(snapshot.total_bytes)} in {elapsed}"
                f" (avg {format_rate(snapshot.avg_speed_bps)})")
        verified = extra.get("verified")
        if verified == "size-only":
            line += ", verified by size only"
        elif verified:
            line += f", verified {verified}"
        else:
            line += ", not verified"
        resumed = int(extra.get("resumed_bytes") or 0)
        if resumed > 0:
            line += (f"; resumed {format_bytes(resumed)} of {format_bytes(snapshot.total_bytes)}, "
                     f"{int(extra.get('resumed_parts') or 0)}/{snapshot.parts_total} parts")
        return line
    if snapshot.event is Event.STOPPED:
        line = f"stopped: {_target(snapshot)} at {_position(snapshot)} after {elapsed}"
        if extra.get("aborted"):
            return line + "; multipart upload aborted"
        if extra.get("object_completed"):
            return line + "; the object was completed but not read back"
        # the command that continues it, or removes what is left, is the CLI's own last line
        if extra.get("kept"):
            return line + "; multipart upload kept"
        if extra.get("left_behind"):
            return line + "; the multipart upload could NOT be aborted: it is still on the store"
        return line + "; nothing was left on the store"
    if snapshot.event is Event.FAILED:
        # the error itself is the CLI's one line on stderr, right after this one
        line = f"failed: {_target(snapshot)} at {_position(snapshot)} after {elapsed}"
        if extra.get("resume_command"):
            return line + "; multipart upload kept"
        if extra.get("left_behind"):
            return line + "; left on the store (see below)"
        return line
    return progress_line(snapshot)


class PlainSink(Sink):
    """Writes a start line, a progress line every ``interval_s`` seconds and a final line."""

    def __init__(self, stream: TextIO, interval_s: float = PLAIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._interval_s = interval_s
        self._clock = clock
        self._last_line_at: float | None = None

    def emit(self, snapshot: Snapshot) -> None:
        now = self._clock()
        if snapshot.event is Event.STARTED:
            line = started_line(snapshot)
        elif snapshot.event is Event.PROGRESS:
            if self._last_line_at is not None and now - self._last_line_at < self._interval_s:
                return
            line = progress_line(snapshot)
        elif snapshot.event is Event.FAILED and self._last_line_at is None:
            return  # failed before it started (bad input, no credentials): the error line says it all
        else:
            line = final_line(snapshot)
        self._last_line_at = now
        self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
