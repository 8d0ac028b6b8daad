"""The live terminal bar (enlighten), drawn only by the parent process.

What it looks like on a 100-column terminal::

    s3://bucke…/train.bin  37.5% |█████    | 456.0 MiB / 1.2 GiB  112.3 MiB/s  ETA 0:07  parts 7/19
    upload id u-1  workers 4  part 64.0 MiB  avg 98.1 MiB/s  elapsed 0:04

and, once the upload is over, the bar stays with the outcome printed under it (the same line as
:func:`mpupload.sinks.plain.final_line`).

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
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

# blessed (under enlighten) asks the terminal about itself and waits up to 5 s per question for answers
# that a pty without a terminal emulator (script(1), CI runners with a tty) never sends: the upload would
# stall for seconds before its first byte. Real emulators answer in milliseconds. Set before the import.
os.environ.setdefault("BLESSED_QUERY_TIMEOUT_SECONDS", "0.2")

import enlighten  # noqa: E402

from ..units import format_bytes, format_duration, format_rate
from ..wire import Event, Snapshot
from .base import TERMINAL_LOCK, Sink
from .plain import final_line

__all__ = ["BAR_FORMAT", "TerminalSink", "render_fields", "shorten", "status_text"]

#: the main bar; every field but ``desc``, ``desc_pad`` and ``bar`` comes from :func:`render_fields`
BAR_FORMAT = ("{desc}{desc_pad}{percent:>6} |{bar}| {done:>9} / {size}  {speed:>11}"
              "  ETA {remaining}  parts {parts}")
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
    if started.get("part_size"):
        items.append(f"part {format_bytes(started['part_size'])}")
    if started.get("checksum"):
        items.append(f"checksum {started['checksum']}")
    if int(started.get("resumed_bytes") or 0) > 0:
        items.append(f"resumed {format_bytes(started['resumed_bytes'])}")
    items.append(f"avg {format_rate(snapshot.avg_speed_bps)}")
    items.append(f"elapsed {format_duration(snapshot.elapsed_seconds)}")
    return "  ".join(items)


def _default_manager(stream: TextIO) -> Any:
    manager = enlighten.get_manager(stream=stream)
    # enlighten asks the terminal for the cursor position on every redraw when it keeps a scroll area, and
    # waits up to 1 s for the answer: a pty without an emulator never answers. Draw without a scroll area
    # there (asked once, here, with a short timeout).
    if getattr(manager, "enabled", False) and manager.term.get_location(timeout=0.3) == (-1, -1):
        manager.set_scroll = False
    return manager


class TerminalSink(Sink):
    """An enlighten progress bar plus a status line; the outcome is printed under the bar at the end."""

    render_fields = staticmethod(render_fields)

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

    @property
    def manager(self) -> Any:
        return self._manager

    @property
    def bar(self) -> Any:
        """The enlighten counter (``None`` before the first snapshot)."""
        return self._bar

    def _create(self, snapshot: Snapshot) -> None:
        fields, desc = self._layout(snapshot)
        self._bar = self._manager.counter(
            total=self._bar_total(snapshot), count=0.0, desc=desc, unit="B",
            bar_format=BAR_FORMAT, fields=fields, leave=True,
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
        fields = render_fields(snapshot)
        width = int(self._manager.width)
        widest = {**fields, "parts": f"{snapshot.parts_total}/{snapshot.parts_total}",
                  "remaining": max(fields["remaining"], "0:00:00", key=len)}
        fixed = len(BAR_FORMAT.format_map({**widest, "desc": "", "desc_pad": "", "bar": ""}))
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
        with TERMINAL_LOCK:
            self._draw(snapshot)
            self._status.close(clear=True)
            self._stop()
            self._stream.write(final_line(snapshot) + "\n")
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
        with TERMINAL_LOCK:
            self._draw(snapshot)
            width = int(self._manager.width)
            self._status.update(shorten(status_text(snapshot, self._started), max(1, width - 1)), force=True)

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
