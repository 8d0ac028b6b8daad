"""The progress snapshot: one schema for JSON lines, the API push and GraphQL.

Every event is a flat JSON object::

    {"event": "started|progress|completed|stopped|failed", "upload_id", "bucket", "key",
     "total_bytes", "bytes_done", "percent", "speed_bps", "avg_speed_bps", "eta_seconds",
     "elapsed_seconds", "parts_done", "parts_total", "status", "timestamp"}

* ``started`` adds ``part_size``, ``workers``, ``resumed_bytes``, ``resumed_parts``;
* ``completed`` adds ``checksum``, ``etag``, ``location``, ``verified`` (an algorithm, ``md5``, ``read-back``
  or ``size-only``);
* ``stopped`` adds ``aborted`` (true only once the store confirmed it), ``kept`` and, while the multipart upload
  is still on the store, ``store_upload_id`` and ``resume_command``;
* ``failed`` adds ``error``;
* any of them adds ``left_behind`` (``[{"bucket", "key", "upload_id", "reason", "cleanup_command"}]``) when
  uploads of this run are still on the store that nobody meant to keep.

Units: bytes, bytes per second, seconds (floats), ``percent`` 0..100, ``timestamp`` ISO-8601 UTC.
``bytes_done`` counts bytes the store holds (or is being sent) for this object: it can fall when a part is
retried, never exceeds ``total_bytes`` and ends at it. ``eta_seconds`` is ``null`` when unknown. Speeds
count only bytes sent by this run.
"""

from __future__ import annotations

import datetime as _dt
import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "Status", "Snapshot", "utc_now_iso"]


class Event(enum.StrEnum):
    STARTED = "started"
    PROGRESS = "progress"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"


class Status(enum.StrEnum):
    PENDING = "pending"
    UPLOADING = "uploading"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Snapshot:
    event: Event
    status: Status
    upload_id: str | None
    bucket: str
    key: str
    total_bytes: int
    bytes_done: int
    speed_bps: float | None
    avg_speed_bps: float
    eta_seconds: float | None
    elapsed_seconds: float
    parts_done: int
    parts_total: int
    #: event-specific fields (see the module docstring)
    extra: dict[str, Any] = field(default_factory=dict)
    timestamp: str = field(default_factory=utc_now_iso)

    @property
    def percent(self) -> float:
        if self.total_bytes <= 0:
            return 100.0 if self.status is Status.COMPLETED else 0.0
        return min(100.0, 100.0 * self.bytes_done / self.total_bytes)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "event": self.event.value,
            "upload_id": self.upload_id,
            "bucket": self.bucket,
            "key": self.key,
            "total_bytes": self.total_bytes,
            "bytes_done": self.bytes_done,
            "percent": round(self.percent, 3),
            "speed_bps": 0.0 if self.speed_bps is None else round(self.speed_bps, 1),
            "avg_speed_bps": round(self.avg_speed_bps, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "parts_done": self.parts_done,
            "parts_total": self.parts_total,
            "status": self.status.value,
            "timestamp": self.timestamp,
        }
        data.update(self.extra)
        return data
