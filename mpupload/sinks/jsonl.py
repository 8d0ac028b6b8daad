"""JSON lines: one compact snapshot object per line, for scripts (``--progress json``, on stdout).

Each line is :meth:`Snapshot.to_dict` (the schema in :mod:`mpupload.wire`). ``started`` and the final
``completed``/``stopped``/``failed`` line are always written at once; ``progress`` lines at most once per
``min_interval_s`` seconds since the previous line. Every line is flushed, so a reader sees it as it happens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TextIO

from ..wire import Event, Snapshot, Status
from .base import Sink

__all__ = ["JsonLinesSink"]

JSONL_MIN_INTERVAL_S = 1.0


class JsonLinesSink(Sink):
    """Writes snapshots as JSON lines; throttles ``progress`` events only."""

    def __init__(self, stream: TextIO, min_interval_s: float = JSONL_MIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._last_line_at: float | None = None
        self._last_status: Status | None = None

    def emit(self, snapshot: Snapshot) -> None:
        now = self._clock()
        if (snapshot.event is Event.PROGRESS and self._last_line_at is not None
                and now - self._last_line_at < self._min_interval_s
                and snapshot.status is self._last_status):  # a status change (finalizing) always goes out
            return
        self._last_line_at = now
        self._last_status = snapshot.status
        self._stream.write(json.dumps(snapshot.to_dict(), separators=(",", ":")) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
