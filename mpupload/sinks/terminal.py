"""The live terminal bar (enlighten), drawn only by the parent process.

What it looks like on a 100-column terminal::

    s3://bucke…/train.bin  37.5% |█████    | 456.0 MiB / 1.2 GiB  112.3 MiB/s  ETA 0:07  parts 7/19
    upload id u-1  workers 4  part 64.0 MiB  avg 98.1 MiB/s  elapsed 0:04

and, once the upload is over, the bar stays with the outcome printed under it (the same line as
:func:`mpupload.sinks.plain.final_line`).

A directory run (snapshots with ``files``) draws one total bar, the status line and one line per file in
flight (the :data:`MAX_FILE_LINES` largest of the progress snapshot's ``in_flight``)::

    failed: train/0007.jpg: permission denied
    s3://b/sets/   37.5% |████      | 456.0 MiB / 1.2 GiB  files 120/2005, 1 failed  112.3 MiB/s  ETA 0:07
    upload id u-1  workers 4  put threads 8  avg 98.1 MiB/s  elapsed 0:04
      big/shard-0001.bin   62.5% |███████████          |  25.0 MiB /  40.0 MiB
      train/0123.jpg        0.0% |                     |     0 B /  64.0 KiB

The file lines are counters made when more files are in flight than lines are drawn, and closed (from the
bottom) when fewer are; between the two, each tick rewrites them. ``file_failed`` lines are printed above the
bars with the next redraw (the first :data:`~mpupload.sinks.plain.MAX_LISTED`, then a count at the end);
``file_completed`` costs a few attribute reads and draws nothing. At the end the file lines and the status line
give way to the summary (:func:`mpupload.sinks.plain.dataset_summary`) under the total bar.

Pitfalls this module is built around (see ``NOTES.md``):

* enlighten's ``{rate}`` and ``{eta}`` are averages since start; the bar shows *our* windowed speed and ETA
  through custom fields (:func:`render_fields`, a pure function).
* Totals and counts are ``float``: a byte-prefix format over an ``int`` total raises ``ValueError`` on a
  real TTY only. Counts are *set* (``counter.count = ...``), never incremented: they fall back on a retry.
* The aggregator's tick is the refresh rate, so every emit redraws with ``force=True``; the last redraw
  before ``manager.stop()`` would otherwise be dropped.
* The manager installs a SIGWINCH handler: it is created in ``__init__`` and stopped in ``close()`` (or on
  the final snapshot), both from the parent's main thread.
* On a stream that is not a TTY enlighten draws nothing; the final line is still printed.
* Every counter's redraw asks the terminal for the cursor position (a round trip) when enlighten keeps a
  scroll area: a tick of a directory run writes all its lines under the manager's ``refresh_lock`` and lets
  the total bar, drawn last, set the scroll area and flush once.
"""

from __future__ import annotations

import os
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, TextIO

# blessed (under enlighten) asks the terminal about itself and waits up to 5 s per question for answers
# that a pty without a terminal emulator (script(1), CI runners with a tty) never sends: the upload would
# stall for seconds before its first byte. Real emulators answer in milliseconds. Set before the import.
os.environ.setdefault("BLESSED_QUERY_TIMEOUT_SECONDS", "0.2")

import enlighten  # noqa: E402

from ..units import format_bytes, format_duration, format_rate
from ..wire import Event, Snapshot
from .base import TERMINAL_LOCK, Sink
from .plain import FILE_EVENTS, DatasetTally, final_line

__all__ = ["BAR_FORMAT", "DATASET_BAR_FORMAT", "FILE_BAR_FORMAT", "MAX_FILE_LINES", "TerminalSink",
           "dataset_render_fields", "file_lines", "render_fields", "shorten", "shorten_columns", "status_text"]

#: the main bar; every field but ``desc``, ``desc_pad`` and ``bar`` comes from :func:`render_fields`
BAR_FORMAT = ("{desc}{desc_pad}{percent:>6} |{bar}| {done:>9} / {size}  {speed:>11}"
              "  ETA {remaining}  parts {parts}")
#: a directory run's total bar (:func:`dataset_render_fields`)
DATASET_BAR_FORMAT = ("{desc}{desc_pad}{percent:>6} |{bar}| {done:>9} / {size}  files {files}  {speed:>11}"
                      "  ETA {remaining}")
#: one file in flight (:func:`file_lines`); ``desc`` is its path, padded so that the bars line up
FILE_BAR_FORMAT = "  {desc}{desc_pad}{percent:>6} |{bar}| {done:>9} / {size:>9}"
#: the most files in flight drawn, the largest first
MAX_FILE_LINES = 6
MIN_BAR_COLUMNS = 10
#: how long the final snapshot waits for a redraw in progress
RENDER_JOIN_S = 3.0
MIN_DESC_COLUMNS = 12

ManagerFactory = Callable[[TextIO], Any]


def render_fields(snapshot: Snapshot) -> dict[str, str]:
    """The custom bar fields for one snapshot: all strings, unknowns shown as ``-``."""
    return {
        "percent": f"{snapshot.percent:.1f}%",
        "done": format_bytes(snapshot.bytes_done),
        "size": format_bytes(snapshot.total_bytes),
        "speed": format_rate(snapshot.speed_bps),
        "remaining": format_duration(snapshot.eta_seconds),
        "parts": f"{snapshot.parts_done}/{snapshot.parts_total}",
    }


def dataset_render_fields(snapshot: Snapshot) -> dict[str, str]:
    """The total bar's fields for a directory run: :func:`render_fields` with ``files`` for ``parts``."""
    fields = render_fields(snapshot)
    del fields["parts"]
    files = snapshot.files
    if files is None:
        fields["files"] = f"{snapshot.parts_done}/{snapshot.parts_total}"
    else:
        fields["files"] = f"{files.done}/{'?' if files.total is None else files.total}"
        if files.failed:
            fields["files"] += f", {files.failed} failed"
    return fields


def _columns(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def shorten_columns(text: str, width: int) -> str:
    """:func:`shorten` by terminal columns: a CJK character takes two, a combining mark none."""
    widths = [_columns(c) for c in text]
    if sum(widths) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    head_room = (width - 1) // 2
    tail_room = width - 1 - head_room
    head = used = 0
    while head < len(text) and used + widths[head] <= head_room:
        used += widths[head]
        head += 1
    tail = len(text)
    used = 0
    while tail > head and used + widths[tail - 1] <= tail_room:
        used += widths[tail - 1]
        tail -= 1
    return text[:head] + "…" + text[tail:]


def columns(text: str) -> int:
    return sum(_columns(c) for c in text)


def file_lines(in_flight: Sequence[dict[str, Any]], width: int,
               limit: int = MAX_FILE_LINES) -> list[tuple[str, float, float, dict[str, str]]]:
    """The lines for the files in flight: ``(desc, total, count, fields)`` for the ``limit`` largest, largest
    first; descriptions are paths cut to fit ``width`` and padded to one width so that the bars line up."""
    entries = sorted(in_flight, key=lambda e: -int(e.get("size") or 0))[:limit]
    fixed = len(FILE_BAR_FORMAT.format_map({"desc": "", "desc_pad": " ", "bar": "", "percent": "100.0%",
                                            "done": "", "size": ""}))
    room = max(MIN_DESC_COLUMNS, width - fixed - 1 - MIN_BAR_COLUMNS)
    descs = [shorten_columns(str(e.get("path") or e.get("key") or "?"), room) for e in entries]
    pad = max((columns(d) for d in descs), default=0)
    lines = []
    for entry, desc in zip(entries, descs):
        size = max(0, int(entry.get("size") or 0))
        done = max(0, min(int(entry.get("bytes_done") or 0), size))
        percent = 100.0 * done / size if size else 0.0
        total = float(size) if size > 0 else 1.0
        fields = {"percent": f"{percent:.1f}%", "done": format_bytes(done), "size": format_bytes(size)}
        lines.append((desc + " " * (pad - columns(desc)), total, float(done) if size else 0.0, fields))
    return lines


def shorten(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` columns with an ellipsis in the middle (keeps bucket and file name ends)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    head = (width - 1) // 2
    tail = width - 1 - head
    return text[:head] + "…" + (text[-tail:] if tail else "")


def status_text(snapshot: Snapshot, started: dict[str, Any]) -> str:
    """The status line under the bar: upload id, workers, part size, checksum, average speed, elapsed."""
    items = [f"upload id {snapshot.upload_id or '-'}"]
    if started.get("workers"):
        items.append(f"workers {started['workers']}")
    if int(started.get("hosts") or 1) > 1:
        items.append(f"hosts {started['hosts']}")
    if started.get("part_size"):
        items.append(f"part {format_bytes(started['part_size'])}")
    if started.get("checksum"):
        items.append(f"checksum {started['checksum']}")
    if started.get("put_threads"):
        items.append(f"put threads {started['put_threads']}")
    if int(started.get("resumed_bytes") or 0) > 0:
        items.append(f"resumed {format_bytes(started['resumed_bytes'])}")
    if started.get("max_bandwidth_bps"):
        items.append(f"cap {format_rate(started['max_bandwidth_bps'])}")
    items.append(f"avg {format_rate(snapshot.avg_speed_bps)}")
    items.append(f"elapsed {format_duration(snapshot.elapsed_seconds)}")
    return "  ".join(items)


def _default_manager(stream: TextIO) -> Any:
    # threaded: the bar is drawn from the renderer thread, so a resize is handled at its next redraw, never
    # from the signal handler in the middle of one
    manager = enlighten.get_manager(stream=stream, threaded=True)
    # enlighten asks the terminal for the cursor position on every redraw when it keeps a scroll area, and
    # waits up to 1 s for the answer: a pty without an emulator never answers. Draw without a scroll area
    # there (asked once, here, with a short timeout).
    if getattr(manager, "enabled", False) and manager.term.get_location(timeout=0.3) == (-1, -1):
        manager.set_scroll = False
    return manager


class TerminalSink(Sink):
    """An enlighten progress bar plus a status line; the outcome is printed under the bar at the end.

    A directory run adds a line per file in flight and prints its failed files above the bars.
    """

    render_fields = staticmethod(render_fields)
    #: the bar redraws on every snapshot: four a second
    refresh_s = 0.25

    def __init__(self, stream: TextIO, manager_factory: ManagerFactory | None = None) -> None:
        self._stream = stream
        self._manager: Any = (manager_factory or _default_manager)(stream)
        self._bar: Any = None
        self._status: Any = None
        self._started: dict[str, Any] = {}
        self._closed = False
        # Redraws happen in a renderer thread so that a slow terminal (SSH, a pty nobody reads) never
        # stalls the caller, which is the coordinator's main loop. Latest snapshot wins.
        self._cond = threading.Condition()
        self._pending: Snapshot | None = None
        self._stopping = False
        self._rendering = False
        self._renderer: threading.Thread | None = None
        # a directory run: its file lines (counters, the largest file first), what the file events left
        self._dataset = False
        self._slots: list[Any] = []
        self._tally = DatasetTally()
        self._lines: list[str] = []  # failed files to print above the bars (guarded by _cond)

    @property
    def manager(self) -> Any:
        return self._manager

    @property
    def bar(self) -> Any:
        """The enlighten counter (``None`` before the first snapshot)."""
        return self._bar

    @property
    def file_bars(self) -> list[Any]:
        """The counters of the file lines of a directory run (the largest file first)."""
        return list(self._slots)

    def _create(self, snapshot: Snapshot) -> None:
        self._dataset = snapshot.files is not None
        fields, desc = self._layout(snapshot)
        self._bar = self._manager.counter(
            total=self._bar_total(snapshot), count=0.0, desc=desc, unit="B",
            bar_format=DATASET_BAR_FORMAT if self._dataset else BAR_FORMAT, fields=fields, leave=True,
        )
        self._status = self._manager.status_bar(status_text(snapshot, self._started), leave=False)

    @staticmethod
    def _target(snapshot: Snapshot) -> str:
        return f"s3://{snapshot.bucket}/{snapshot.key}"

    @staticmethod
    def _bar_total(snapshot: Snapshot) -> float:
        # enlighten shows 100% for a zero total; keep an empty file's bar empty until it completes
        return float(snapshot.total_bytes) if snapshot.total_bytes > 0 else 1.0

    def _layout(self, snapshot: Snapshot) -> tuple[dict[str, str], str]:
        """The bar fields and the description, shortened so the bar keeps some room.

        The room is measured on the widest values of this upload (all parts done, an ETA in hours), so the
        description does not change from one tick to the next; the bar absorbs the difference.
        """
        width = int(self._manager.width)
        if self._dataset:
            fields = dataset_render_fields(snapshot)
            total = snapshot.files.total if snapshot.files is not None else None
            most = f"{total}/{total}" if total is not None else fields["files"]
            widest = {**fields, "files": max(fields["files"], most, key=len),
                      "remaining": max(fields["remaining"], "0:00:00", key=len)}
            fmt = DATASET_BAR_FORMAT
        else:
            fields = render_fields(snapshot)
            widest = {**fields, "parts": f"{snapshot.parts_total}/{snapshot.parts_total}",
                      "remaining": max(fields["remaining"], "0:00:00", key=len)}
            fmt = BAR_FORMAT
        fixed = len(fmt.format_map({**widest, "desc": "", "desc_pad": "", "bar": ""}))
        room = max(MIN_DESC_COLUMNS, width - fixed - 1 - MIN_BAR_COLUMNS)
        return fields, shorten(self._target(snapshot), room)

    def _draw(self, snapshot: Snapshot) -> None:
        bar = self._bar
        fields, desc = self._layout(snapshot)
        bar.total = self._bar_total(snapshot)
        if snapshot.total_bytes > 0:
            bar.count = max(0.0, min(float(snapshot.bytes_done), bar.total))
        else:
            bar.count = bar.total if snapshot.percent >= 100.0 else 0.0
        bar.fields.clear()
        bar.fields.update(fields)
        bar.desc = desc
        bar.update(0.0, force=True)

    def emit(self, snapshot: Snapshot) -> None:
        if self._closed:
            return
        if snapshot.event in FILE_EVENTS:  # O(1), no redraw: a run can have 100,000 of them
            line = self._tally.take(snapshot)
            if line is not None:
                with self._cond:
                    self._lines.append(line)  # printed with the next redraw
            return
        if snapshot.event is Event.STARTED:
            self._started = dict(snapshot.extra)
        if self._bar is None:
            if snapshot.event is Event.FAILED:
                return  # failed before it started: the CLI's error line says it all
            self._create(snapshot)
        if snapshot.event in (Event.STARTED, Event.PROGRESS):
            with self._cond:
                self._pending = snapshot
                self._cond.notify()
            if self._renderer is None:
                self._renderer = threading.Thread(target=self._render_loop, name="mpupload-bar", daemon=True)
                self._renderer.start()
            return
        # Final snapshot: the bar keeps its last state, the status line gives way to the outcome.
        self._join_renderer()
        if self._dataset:
            self._finish_dataset(snapshot)
            return
        with TERMINAL_LOCK:
            self._draw(snapshot)
            self._status.close(clear=True)
            self._stop()
            self._stream.write(final_line(snapshot) + "\n")
            self._stream.flush()

    def _finish_dataset(self, snapshot: Snapshot) -> None:
        with self._cond:
            lines, self._lines = self._lines, []
        more = self._tally.more_line()
        if more:
            lines.append(more)
        with TERMINAL_LOCK:
            while self._slots:
                self._slots.pop().close(clear=True)
            self._print_above(lines)
            self._draw(snapshot)
            self._status.close(clear=True)
            self._stop()
            self._stream.write("\n".join(self._tally.summary(snapshot)) + "\n")
            self._stream.flush()

    def _render_loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                snapshot, self._pending = self._pending, None
                self._rendering = True
            assert snapshot is not None
            try:
                self._render(snapshot)
            except Exception:  # noqa: BLE001 - a broken terminal must not break the upload
                return
            finally:
                with self._cond:
                    self._rendering = False
                    self._cond.notify_all()

    def sync(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until the latest snapshot is on the screen."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._pending is not None or self._rendering) and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def _render(self, snapshot: Snapshot) -> None:
        if self._dataset:
            self._render_dataset(snapshot)
            return
        with TERMINAL_LOCK:
            self._draw(snapshot)
            width = int(self._manager.width)
            self._status.update(shorten(status_text(snapshot, self._started), max(1, width - 1)), force=True)

    def _render_dataset(self, snapshot: Snapshot) -> None:
        with self._cond:
            lines, self._lines = self._lines, []
        manager = self._manager
        width = int(manager.width)
        in_flight = snapshot.extra.get("in_flight") if snapshot.event is Event.PROGRESS else None
        files = file_lines(in_flight or [], width)
        with TERMINAL_LOCK:
            self._print_above(lines)
            # as many file lines as files shown: made when more are needed, closed from the bottom when fewer
            while len(self._slots) > len(files):
                self._slots.pop().close(clear=True)
            while len(self._slots) < len(files):
                self._slots.append(manager.counter(total=1.0, count=0.0, desc="", unit="B",
                                                   bar_format=FILE_BAR_FORMAT, leave=False,
                                                   fields={"percent": "", "done": "", "size": ""}))
            manager.refresh_lock = True  # one scroll-area reset and one flush for the whole tick
            try:
                for slot, (desc, total, count, fields) in zip(self._slots, files):
                    slot.total = total
                    slot.count = count
                    slot.desc = desc
                    slot.fields.clear()
                    slot.fields.update(fields)
                    slot.update(0.0, force=True)
                self._status.update(shorten(status_text(snapshot, self._started), max(1, width - 1)), force=True)
            finally:
                manager.refresh_lock = False
            self._draw(snapshot)

    def _print_above(self, lines: list[str]) -> None:
        """Print lines above the bars (under TERMINAL_LOCK); the caller redraws the bars afterwards."""
        if not lines:
            return
        manager = self._manager
        if not getattr(manager, "enabled", False):
            self._stream.write("".join(line + "\n" for line in lines))
            self._stream.flush()
            return
        term = manager.term
        width = max(1, int(manager.width) - 1)
        lines = [shorten_columns(line, width) for line in lines]
        if manager.set_scroll:
            # the cursor rests on the last line of the scroll area, right above the bars: a line feed there
            # scrolls only that area
            text = "".join("\r" + term.clear_eol + line + "\n" for line in lines)
        else:
            # no scroll area: scroll the whole screen by the number of lines (the bars move up with it), write
            # the lines right above where the bars belong, and let the redraw put the bars back at the bottom
            height = int(manager.height)
            rows = max(manager.counters.values(), default=0)
            top = max(0, height - rows - len(lines))
            text = term.move(height - 1, 0) + "\n" * len(lines)
            for i, line in enumerate(lines[-(height - rows):] if height > rows else []):
                text += term.move(top + i, 0) + term.clear_eol + line
        self._stream.write(text)
        self._stream.flush()

    def _join_renderer(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._renderer is not None:
            self._renderer.join(RENDER_JOIN_S)

    def _stop(self) -> None:
        if not self._closed:
            self._join_renderer()
            self._closed = True
            self._manager.stop()

    def close(self) -> None:
        self._stop()
        self._stream.flush()
