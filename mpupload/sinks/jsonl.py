"""JSON lines: one compact snapshot object per line, for scripts (``--progress json``, on stdout).

Each line is :meth:`Snapshot.to_dict` (the schema in :mod:`mpupload.wire`), exactly as
``json.dumps(snapshot.to_dict(), separators=(",", ":"))`` writes it (:func:`encode_snapshot` builds the same
text about three times faster: a directory run writes a line per file, 100,000 of them and more).

``started`` and the final ``completed``/``stopped``/``failed`` line are always written at once; ``progress``
lines at most once per ``min_interval_s`` seconds since the previous line; every ``file_completed`` and
``file_failed`` line. Every line but a file event's is flushed as it is written; file events are flushed with
the next snapshot (the aggregator's tick, at most a second away, even a ``progress`` one that is not written),
so a reader sees each of them within a tick without a system call per file.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import TextIO

from ..wire import FILES_FIELDS, SNAPSHOT_FIELDS, Event, FileCounts, Snapshot, Status
from .base import Sink

__all__ = ["JsonLinesSink", "encode_snapshot"]

JSONL_MIN_INTERVAL_S = 1.0
#: a tick may come this much early against the sink's clock (each reads its own): a line is not skipped for it
TICK_JITTER_S = 0.05

_FILE_EVENTS = frozenset({Event.FILE_COMPLETED, Event.FILE_FAILED})
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_encode_str: Callable[[str], str] = json.encoder.encode_basestring_ascii
# json.dumps builds its C encoder on every call; the event's fields take one built once, with the same
# arguments as json.dumps(..., separators=(",", ":")) (no circular check: an event's fields are a JSON tree).
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODER = (None if _c_make_encoder is None
              else _c_make_encoder(None, _COMPACT.default, _encode_str, None, ":", ",", False, False, True))


def _encode_fields(fields: dict[str, object]) -> str:
    if _C_ENCODER is None:
        return _COMPACT.encode(fields)
    return "".join(_C_ENCODER(fields, 0))

#: an event's own field that has one of these names replaces the snapshot's value in place (``to_dict``)
_BASE_KEYS = frozenset(SNAPSHOT_FIELDS) | frozenset(FILES_FIELDS)


def _fast_path(snapshot: Snapshot) -> bool:
    """The snapshot's own fields have the types the schema gives them, and no event field overrides one."""
    speed, eta = snapshot.speed_bps, snapshot.eta_seconds
    return (type(snapshot.total_bytes) is int and type(snapshot.bytes_done) is int
            and type(snapshot.parts_done) is int and type(snapshot.parts_total) is int
            and type(snapshot.bucket) is str and type(snapshot.key) is str and type(snapshot.timestamp) is str
            and (snapshot.upload_id is None or type(snapshot.upload_id) is str)
            and type(snapshot.avg_speed_bps) is float and math.isfinite(snapshot.avg_speed_bps)
            and type(snapshot.elapsed_seconds) is float and math.isfinite(snapshot.elapsed_seconds)
            and (speed is None or (type(speed) is float and math.isfinite(speed)))
            and (eta is None or (type(eta) is float and math.isfinite(eta)))
            and (snapshot.files is None or _plain_counts(snapshot.files))
            and _BASE_KEYS.isdisjoint(snapshot.extra))


def _plain_counts(files: FileCounts) -> bool:
    return ((files.total is None or type(files.total) is int) and type(files.done) is int
            and type(files.failed) is int and type(files.skipped) is int)


def encode_snapshot(snapshot: Snapshot) -> str:
    """``json.dumps(snapshot.to_dict(), separators=(",", ":"))``: the same text, without building the dict.

    The snapshot's own fields are formatted here (they are ints, finite floats and strings; anything else takes
    ``json.dumps``); the event's fields go through the standard encoder, which writes them as ``json.dumps``
    would inside the whole object.
    """
    if not _fast_path(snapshot):
        return json.dumps(snapshot.to_dict(), separators=(",", ":"))
    speed, eta, files, extra = snapshot.speed_bps, snapshot.eta_seconds, snapshot.files, snapshot.extra
    upload_id = "null" if snapshot.upload_id is None else _encode_str(snapshot.upload_id)
    line = (f'{{"event":"{snapshot.event.value}","upload_id":{upload_id},"bucket":{_encode_str(snapshot.bucket)},'
            f'"key":{_encode_str(snapshot.key)},"total_bytes":{snapshot.total_bytes},'
            f'"bytes_done":{snapshot.bytes_done},"percent":{round(snapshot.percent, 3)!r},'
            f'"speed_bps":{0.0 if speed is None else round(speed, 1)!r},'
            f'"avg_speed_bps":{round(snapshot.avg_speed_bps, 1)!r},'
            f'"eta_seconds":{"null" if eta is None else repr(round(eta, 1))},'
            f'"elapsed_seconds":{round(snapshot.elapsed_seconds, 3)!r},"parts_done":{snapshot.parts_done},'
            f'"parts_total":{snapshot.parts_total},"status":"{snapshot.status.value}",'
            f'"timestamp":{_encode_str(snapshot.timestamp)}')
    if files is not None:
        line += (f',"files_total":{"null" if files.total is None else files.total},"files_done":{files.done},'
                 f'"files_failed":{files.failed},"files_skipped":{files.skipped}')
    if extra:
        return line + "," + _encode_fields(extra)[1:]
    return line + "}"


class JsonLinesSink(Sink):
    """Writes snapshots as JSON lines; throttles ``progress`` events only."""

    def __init__(self, stream: TextIO, min_interval_s: float = JSONL_MIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._min_interval_s = min_interval_s
        #: a snapshot per line it may write (the aggregator keeps its tick within 0.25-1 s)
        self.refresh_s = min_interval_s
        self._clock = clock
        self._last_line_at: float | None = None
        self._last_status: Status | None = None
        #: file event lines written since the last flush
        self._unflushed = False

    def emit(self, snapshot: Snapshot) -> None:
        if snapshot.event in _FILE_EVENTS:
            self._stream.write(encode_snapshot(snapshot) + "\n")
            self._unflushed = True
            return
        now = self._clock()
        if (snapshot.event is Event.PROGRESS and self._last_line_at is not None
                and now - self._last_line_at < self._min_interval_s - TICK_JITTER_S
                and snapshot.status is self._last_status):  # a status change (finalizing) always goes out
            if self._unflushed:
                self._unflushed = False
                self._stream.flush()
            return
        self._last_line_at = now
        self._last_status = snapshot.status
        self._stream.write(encode_snapshot(snapshot) + "\n")
        self._unflushed = False
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
