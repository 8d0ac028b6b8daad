"""Plain progress lines for logs and CI, where a redrawn bar would be noise.

One line when the upload starts, one line every ``interval_s`` while it runs and one line at the end::

    upload: s3://b/k  1.2 GiB in 19 parts of 64.0 MiB, 4 workers
      37.5%  460.0 MiB / 1.2 GiB  112.3 MiB/s (avg 98.1 MiB/s)  ETA 0:07  parts 7/19
    done: s3://b/k  1.2 GiB in 0:12 (avg 98.1 MiB/s), verified crc32c

The line builders (:func:`started_line`, :func:`progress_line`, :func:`final_line`) are pure functions of a
snapshot; the terminal bar prints the same final line under the bar.

A directory run (snapshots with ``files``) prints the same three kinds of line with the file counts, one line
per failed file as it fails (the first :data:`MAX_LISTED`, then a count at the end), and a summary that lists
the failed files (:func:`dataset_summary`, also printed by the bar)::

    upload: data/ -> s3://b/sets/  2005 files, 1.2 GiB, 4 workers, 8 put threads
      37.5%  460.0 MiB / 1.2 GiB  112.3 MiB/s (avg 98.1 MiB/s)  ETA 0:07  files 120/2005 done, 1 failed
    failed: train/0007.jpg: permission denied
    2004 files (1.2 GiB) uploaded to s3://b/sets/ in 0:12 (avg 98.1 MiB/s); 1 failed:
      train/0007.jpg: permission denied

``file_completed`` prints nothing: a run can have 100,000 of them, and each costs a few attribute reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from ..units import format_bytes, format_duration, format_rate
from ..wire import Event, FileCounts, Snapshot
from .base import Sink

__all__ = ["MAX_LISTED", "DatasetTally", "PlainSink", "dataset_progress_line", "dataset_started_line",
           "dataset_summary", "file_counts_text", "final_line", "progress_line", "started_line"]

PLAIN_INTERVAL_S = 5.0
#: failed files printed while a directory run goes, and listed in its summary (all of them: ``--progress json``)
MAX_LISTED = 20
#: an error message longer than this is cut in the middle (a store's whole XML answer helps nobody here)
MAX_ERROR_CHARS = 300


def _target(snapshot: Snapshot) -> str:
    return f"s3://{snapshot.bucket}/{snapshot.key}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _position(snapshot: Snapshot) -> str:
    """``'37.5% (460.0 MiB of 1.2 GiB)'``: how far the upload got."""
    return (f"{snapshot.percent:.1f}% ({format_bytes(snapshot.bytes_done)} of "
            f"{format_bytes(snapshot.total_bytes)})")


def _on_hosts(extra: dict[str, Any]) -> str:
    """`` on 3 hosts`` for a run from several hosts (a cluster run); nothing for one."""
    hosts = int(extra.get("hosts") or 1)
    return f" on {hosts} hosts" if hosts > 1 else ""


def started_line(snapshot: Snapshot) -> str:
    """``'upload: s3://b/k  1.2 GiB in 19 parts of 64.0 MiB, 4 workers'`` (+ what a resume reuses)."""
    extra = snapshot.extra
    size = format_bytes(snapshot.total_bytes)
    if extra.get("multipart") is False:
        return f"upload: {_target(snapshot)}  {size} in a single PutObject{_cap(extra)}"
    line = f"upload: {_target(snapshot)}  {size} in {_plural(snapshot.parts_total, 'part')}"
    part_size = extra.get("part_size")
    if part_size:
        line += f" of {format_bytes(part_size)}"
    workers = extra.get("workers")
    if workers:
        line += f", {_plural(int(workers), 'worker')}{_on_hosts(extra)}"
    resumed_bytes = int(extra.get("resumed_bytes") or 0)
    if resumed_bytes > 0:
        resumed_parts = int(extra.get("resumed_parts") or 0)
        line += (f", resuming: {format_bytes(resumed_bytes)} in {_plural(resumed_parts, 'part')}"
                 " already stored")
    return line + _cap(extra)


def _cap(extra: dict[str, Any]) -> str:
    """``', capped at 8.0 MiB/s'`` when the run has a bandwidth cap (``--max-bandwidth``), else nothing."""
    cap = extra.get("max_bandwidth_bps")
    return f", capped at {format_rate(float(cap))}" if cap else ""


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


# --- a directory run ------------------------------------------------------------------------------------

def _count(n: int | None) -> str:
    return "?" if n is None else str(n)


def _one_line(text: object, limit: int = MAX_ERROR_CHARS) -> str:
    """An error as one line: whitespace runs (newlines too) become one space; cut in the middle past ``limit``."""
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    head = (limit - 1) // 2
    return flat[:head] + "…" + flat[len(flat) - (limit - 1 - head):]


def file_counts_text(files: FileCounts) -> str:
    """``'120/2005 done, 1 failed, 3 skipped'`` (failed and skipped only when there are any)."""
    text = f"{files.done}/{_count(files.total)} done"
    if files.failed:
        text += f", {files.failed} failed"
    if files.skipped:
        text += f", {files.skipped} skipped"
    return text


def dataset_started_line(snapshot: Snapshot) -> str:
    """``'upload: data/ -> s3://b/sets/  2005 files, 1.2 GiB, 4 workers, 8 put threads'``."""
    extra = snapshot.extra
    sources = [str(s) for s in extra.get("sources") or []]
    origin = ", ".join(sources) if len(sources) <= 3 else f"{', '.join(sources[:2])} and {len(sources) - 2} more"
    line = f"upload: {origin + ' -> ' if origin else ''}{_target(snapshot)}  "
    total = snapshot.files.total if snapshot.files is not None else None
    line += "counting files" if total is None else _plural(total, "file")
    line += f", {format_bytes(int(extra.get('bytes_total') or snapshot.total_bytes))}"
    if extra.get("workers"):
        line += f", {_plural(int(extra['workers']), 'worker')}{_on_hosts(extra)}"
    if extra.get("put_threads"):
        line += f", {_plural(int(extra['put_threads']), 'put thread')}"
    return line + _cap(extra)


def dataset_progress_line(snapshot: Snapshot) -> str:
    """:func:`progress_line` with the file counts instead of the parts."""
    assert snapshot.files is not None
    return (
        f"{snapshot.percent:6.1f}%  {format_bytes(snapshot.bytes_done)}"
        f" / {format_bytes(snapshot.total_bytes)}"
        f"  {format_rate(snapshot.speed_bps)} (avg {format_rate(snapshot.avg_speed_bps)})"
        f"  ETA {format_duration(snapshot.eta_seconds)}  files {file_counts_text(snapshot.files)}"
    )


def file_failed_line(snapshot: Snapshot) -> str:
    """``'failed: train/0007.jpg: permission denied'`` for a ``file_failed`` event."""
    extra = snapshot.extra
    return f"failed: {extra.get('path') or snapshot.key}: {_one_line(extra.get('error') or 'unknown error')}"


def more_failures_line(n: int) -> str:
    return f"… and {n} more {'failure' if n == 1 else 'failures'} (see the summary)"


def dataset_summary(snapshot: Snapshot, uploaded_bytes: int | None = None) -> list[str]:
    """The outcome of a directory run (its final snapshot), then the failed files (the first :data:`MAX_LISTED`).

    ``uploaded_bytes`` is what the files uploaded by this run hold (skipped ones aside), counted from the
    ``file_completed`` events; ``None``: the snapshot's ``bytes_done``.
    """
    files = snapshot.files or FileCounts(total=None, done=snapshot.parts_done, failed=0)
    extra = snapshot.extra
    failed_files: list[dict[str, object]] = list(extra.get("failed_files") or [])
    uploaded = max(0, files.done - files.skipped)
    size = format_bytes(snapshot.bytes_done if uploaded_bytes is None else uploaded_bytes)
    elapsed = format_duration(snapshot.elapsed_seconds)
    everything = snapshot.event is Event.COMPLETED or (
        snapshot.event is Event.FAILED and files.failed > 0 and uploaded + files.skipped + files.failed
        == files.total)
    count = (_plural(uploaded, "file") if everything
             else f"{uploaded} of {_count(files.total)} {'file' if files.total == 1 else 'files'}")
    line = (f"{count} ({size}) uploaded to {_target(snapshot)} in {elapsed}"
            f" (avg {format_rate(snapshot.avg_speed_bps)})")
    if snapshot.event is Event.STOPPED:
        line = "stopped: " + line
    elif snapshot.event is Event.FAILED and not everything:
        line = "failed: " + line  # the run itself failed: the CLI's own line gives the error
    if files.skipped:
        line += f"; {files.skipped} skipped"
    failed = max(files.failed, len(failed_files))
    if failed:
        line += f"; {failed} failed" + (":" if failed_files else "")
    lines = [line]
    for entry in failed_files[:MAX_LISTED]:
        lines.append(f"  {entry.get('path') or entry.get('key')}: {_one_line(entry.get('error') or 'unknown error')}")
    if len(failed_files) > MAX_LISTED:
        lines.append(f"  … and {len(failed_files) - MAX_LISTED} more (all of them with --progress json)")
    warnings = len(extra.get("warnings") or [])
    if warnings:  # each was printed when it came (the final JSON event lists them all)
        lines.append(f"{warnings} warning{'s' if warnings != 1 else ''} above")
    return lines


class DatasetTally:
    """What a local sink keeps of a directory run's per-file events: O(1) per event, nothing per file.

    :meth:`take` answers the line to print for an event (a failed file among the first :data:`MAX_LISTED`),
    else ``None``; :meth:`more_line` the count of the failures not printed, at the end.
    """

    __slots__ = ("uploaded_bytes", "completed", "failures")

    def __init__(self) -> None:
        #: bytes of the files uploaded (not skipped) by this run
        self.uploaded_bytes = 0
        self.completed = 0
        self.failures = 0

    def take(self, snapshot: Snapshot) -> str | None:
        extra = snapshot.extra
        if snapshot.event is Event.FILE_COMPLETED:
            self.completed += 1
            if extra.get("skipped") is None:
                self.uploaded_bytes += int(extra.get("size") or 0)
            return None
        self.failures += 1
        return file_failed_line(snapshot) if self.failures <= MAX_LISTED else None

    def more_line(self) -> str | None:
        return more_failures_line(self.failures - MAX_LISTED) if self.failures > MAX_LISTED else None

    def summary(self, snapshot: Snapshot) -> list[str]:
        return dataset_summary(snapshot, self.uploaded_bytes if self.completed else None)


FILE_EVENTS = frozenset({Event.FILE_COMPLETED, Event.FILE_FAILED})


class PlainSink(Sink):
    """Writes a start line, a progress line every ``interval_s`` seconds and a final line.

    A directory run adds the file counts to each line, a line per failed file and the summary at the end.
    """

    def __init__(self, stream: TextIO, interval_s: float = PLAIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._interval_s = interval_s
        #: a snapshot per line it may write (the aggregator keeps its tick within 0.25-1 s)
        self.refresh_s = interval_s
        self._clock = clock
        self._last_line_at: float | None = None
        self._tally = DatasetTally()

    def emit(self, snapshot: Snapshot) -> None:
        event = snapshot.event
        if event in FILE_EVENTS:
            line = self._tally.take(snapshot)
            if line is not None:
                self._stream.write(line + "\n")
                self._stream.flush()
            return
        now = self._clock()
        dataset = snapshot.files is not None
        if event is Event.STARTED:
            line = dataset_started_line(snapshot) if dataset else started_line(snapshot)
        elif event is Event.PROGRESS:
            if self._last_line_at is not None and now - self._last_line_at < self._interval_s:
                return
            line = dataset_progress_line(snapshot) if dataset else progress_line(snapshot)
        elif event is Event.FAILED and self._last_line_at is None:
            return  # failed before it started (bad input, no credentials): the error line says it all
        elif dataset:
            more = self._tally.more_line()
            line = "\n".join(([more] if more else []) + self._tally.summary(snapshot))
        else:
            line = final_line(snapshot)
        self._last_line_at = now
        self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
