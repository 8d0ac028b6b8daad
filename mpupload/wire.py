"""The wire schema: every name and bound that crosses a process boundary, defined once.

The CLI, the API client, the progress sinks and the API server import this module; it is stdlib only, so
importing it loads nothing heavy. It holds six things, each documented here next to the code that builds it.

**1. :class:`Status`** — where an upload stands: ``pending uploading finalizing completed stopped failed``.
The events' ``status``, the progress report's ``status`` and the server's record (stored as the value) are this
one enum; GraphQL shows its names (``PENDING`` ...). :data:`ACTIVE_STATUSES` are the first three.

**2. The events** (:class:`Event`, :class:`Snapshot`): built by the engine's aggregator, written as JSON lines
(``--progress json``), drawn by the terminal and plain sinks, and posted by the push sink as progress reports.
Every event is a flat JSON object with :data:`SNAPSHOT_FIELDS`:

==================  ===========================  ===========================================================
field               unit                         meaning
==================  ===========================  ===========================================================
``event``           text                         ``started progress completed stopped failed``
``upload_id``       text or null                 the API record id when a server is in use, else the
                                                 store's multipart UploadId (null for a single PutObject)
``bucket`` ``key``  text                         where the object goes
``total_bytes``     bytes                        the file's size
``bytes_done``      bytes                        what the store holds (or is being sent) for this object:
                                                 falls when a part is retried, never exceeds
                                                 ``total_bytes``, ends at it
``percent``         0..100                       ``bytes_done / total_bytes`` (a finished empty file: 100)
``speed_bps``       bytes per second             current (windowed); 0 while unknown
``avg_speed_bps``   bytes per second             since the start of this run
``eta_seconds``     seconds or null              null while unknown
``elapsed_seconds`` seconds                      since the start of this run
``parts_done``      count                        parts the store holds
``parts_total``     count                        parts of the plan (1 for a single PutObject)
``status``          :class:`Status` value
``timestamp``       ISO-8601 UTC (``...Z``)      when the snapshot was taken
==================  ===========================  ===========================================================

Speeds and the ETA count only bytes sent by this run. Each event adds :data:`EVENT_FIELDS` (built by the
engine, in ``Snapshot.extra``):

* ``started``: ``part_size`` (bytes), ``workers`` (worker processes; on a cluster run, its Dask workers),
  ``hosts`` (the hosts they run on: 1 for a local run), ``resumed_bytes`` (bytes), ``resumed_parts`` (0 on a
  fresh upload), ``checksum_algorithm`` (or null), ``multipart`` (bool), ``store_upload_id``, and
  ``max_bandwidth_bps`` (bytes per second) only when the run is capped (``--max-bandwidth``);
* ``completed``: ``checksum``, ``etag``, ``location``, ``verified`` (an algorithm, ``md5``, ``read-back`` or
  ``size-only``), and when they apply ``version_id``, ``resumed_bytes``, ``resumed_parts``,
  ``store_upload_id``;
* ``stopped``: ``aborted`` (true only once the store confirmed it), ``kept``, ``reason`` and, while the
  multipart upload is still on the store, ``store_upload_id`` and ``resume_command``;
* ``failed``: ``error``, ``error_type`` and, when kept, ``store_upload_id`` and ``resume_command``;
* any of them adds ``left_behind`` (``[{"bucket", "key", "upload_id", "reason", "cleanup_command"}]``) when
  uploads of this run are still on the store that nobody meant to keep.

**A directory run** (``mpupload upload DIR... s3://BUCKET/PREFIX/``) is one upload: its snapshots describe the
whole run (``key`` is the PREFIX, ``total_bytes`` the bytes of every file taken, ``parts_done``/``parts_total``
count files) and every one of them adds :data:`FILES_FIELDS` (:class:`FileCounts`): ``files_total``,
``files_done`` (on the store as they should be: uploaded and verified, or skipped), ``files_failed`` and
``files_skipped``. Its events add :data:`DATASET_EVENT_FIELDS`: ``started`` the ``bytes_total``, the ``prefix``,
the ``sources`` and the ``put_threads``; ``progress`` the files ``in_flight`` (at most 16, the largest first:
``{"path", "key", "size", "bytes_done"}``); the final event ``failed_files`` (every failed file:
``{"path", "key", "size", "error"}``) and ``warnings``. Two per-file events come in between; their ``key`` is the file's
key (the run's PREFIX is in ``prefix``), the other snapshot fields are the run's:

* ``file_completed``: ``path`` (relative to its source), ``size``, ``verified``, ``etag``, ``checksum`` and
  ``skipped`` (``null``; ``"exists"`` with ``--skip-existing``; ``"resumed"`` when an
  interrupted run had finished it);
* ``file_failed``: ``path``, ``size``, ``error``, ``error_type``.

The final event of a directory run is ``completed`` when every file is done, ``failed`` when some failed
(``error`` says how many), ``stopped`` on Ctrl+C.

**3. The progress report** (:data:`REPORT_FIELDS`): the body of ``POST /api/v1/uploads/{id}/progress``. The
push sink sends a whole snapshot plus ``seq``; the server reads only these fields (others are ignored) and
refuses a report outside their bounds with 422:

====================  ========  =========  ================================================================
field                 type      required   bound
====================  ========  =========  ================================================================
``seq``               integer   yes        0 .. 2^63 - 1 (microseconds since the epoch, strictly rising)
``status``            text      yes        at most 64 bytes, then one of :class:`Status`
``bytes_done``        integer   yes        0 .. 2^63 - 1 bytes (and at most the record's ``total_bytes``)
``speed_bps``         number               finite, >= 0 (bytes per second)
``avg_speed_bps``     number               finite, >= 0 (bytes per second)
``eta_seconds``       number               finite, >= 0, or null (unknown)
``parts_done``        integer              0 .. 2^31 - 1 (and at most the record's ``parts_total``)
``elapsed_seconds``   number               finite, >= 0
``checksum``          text                 at most 1024 bytes (UTF-8)
``etag``              text                 at most 1024 bytes
``error``             text                 at most 64 KiB: room for a store's whole error answer
``resume_command``    text                 at most 8192 bytes
``files_total``       integer              0 .. 2^31 - 1 (a directory run; null while the walk counts)
``files_done``        integer              0 .. 2^31 - 1; ``files_done + files_failed <= files_total``
``files_failed``      integer              0 .. 2^31 - 1
``files_skipped``     integer              0 .. 2^31 - 1, at most ``files_done`` (skipped files are done)
====================  ========  =========  ================================================================

Every text is valid Unicode without NUL (PostgreSQL stores neither). The server also checks what does not
depend on the wire (the record's totals, legal transitions, a rising ``seq``): :mod:`mpupload.server.uploads`.

**4. The record** (:data:`RECORD_FIELDS`): what the server answers about an upload — the REST body
(snake_case), the bus payload, and, in camelCase (:func:`camel`), the GraphQL ``Upload`` type that the
dashboard and ``mpupload status --watch`` subscribe to (every record field but ``seq``, plus ``history``: a
list of :data:`SAMPLE_FIELDS`). Units are the snapshot's; ``percent`` is computed by the server;
``resumable`` (stopped or failed with a ``resume_command``), ``stop_requested`` (Stop pressed; the CLI stops
at its next report), ``live`` (active and reported recently), ``version`` (rises with every change) and the
``*_at`` times (ISO-8601 UTC) are the server's own.

A directory run's record adds :data:`FILES_FIELDS` (null for a one-file upload); for it ``parts_total`` follows
``files_total``.

**5. The registration** (:data:`REGISTRATION_FIELDS`): the body of ``POST /api/v1/uploads``, sent by the CLI
before the upload starts. A directory run adds :data:`REGISTRATION_DATASET_FIELDS`: ``files_total`` (0 ..
2^31 - 1; present makes the record a dataset's: ``part_size`` may be 0 and ``parts_total`` is ``files_total``).

**6. The files batch** (:data:`FILE_BATCH_FIELDS`): the body of ``POST /api/v1/uploads/{id}/files``,
``{"files": [entry, ...]}`` with at most :data:`FILES_BATCH_MAX` entries and :data:`FILES_BATCH_MAX_BYTES` of
JSON (more: 413), each entry a file of a
directory run as it stands now. The server keeps one row per (upload, ``path``); the newest entry wins.

================  ========  =========  ====================================================================
field             type      required   bound
================  ========  =========  ====================================================================
``path``          text      yes        at most 1024 bytes (it is a part of the key, which S3 bounds so)
``key``           text      yes        at most 1024 bytes
``size``          integer   yes        0 .. 2^63 - 1 bytes
``bytes_done``    integer   yes        0 .. ``size``
``status``        text      yes        one of :class:`FileStatus`
``error``         text                 at most 4096 bytes, or null
================  ========  =========  ====================================================================

The answer is ``{"accepted": n}``. GraphQL shows the list as ``Upload.files(status, first, after)``: pages of
at most :data:`FILES_PAGE_MAX` ``UploadFile`` (:data:`GRAPHQL_UPLOAD_FILE_FIELDS`) in path order, the cursor
opaque.
"""

from __future__ import annotations

import datetime as _dt
import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "Status", "FileStatus", "FileCounts", "FILES_FIELDS", "DATASET_EVENT_FIELDS", "FILE_ENTRY_FIELDS",
           "Snapshot", "utc_now_iso", "ACTIVE_STATUSES", "SNAPSHOT_FIELDS", "EVENT_FIELDS",
           "LEFT_BEHIND_FIELD", "ReportField", "REPORT_FIELDS", "REPORT_FIELD_NAMES", "INT64_MAX", "INT32_MAX",
           "RECORD_FIELDS", "SAMPLE_FIELDS", "GRAPHQL_UPLOAD_FIELDS", "REGISTRATION_FIELDS",
           "REGISTRATION_DATASET_FIELDS", "FILE_BATCH_FIELDS", "FILE_BATCH_FIELD_NAMES", "FILES_BATCH_MAX",
           "FILES_BATCH_MAX_BYTES",
           "FILES_PAGE_MAX", "FILES_PAGE_DEFAULT", "GRAPHQL_UPLOAD_FILE_FIELDS", "camel"]

#: the largest byte count or ``seq`` (a signed 64-bit ``BIGINT``)
INT64_MAX = 2**63 - 1
#: the largest part count (a signed 32-bit ``INTEGER``)
INT32_MAX = 2**31 - 1


class Event(enum.StrEnum):
    STARTED = "started"
    PROGRESS = "progress"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"
    #: a directory run: one file is on the store (uploaded and verified, or skipped because it is already there)
    FILE_COMPLETED = "file_completed"
    #: a directory run: one file failed; the others go on
    FILE_FAILED = "file_failed"


class Status(enum.StrEnum):
    PENDING = "pending"
    UPLOADING = "uploading"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"


#: an upload that has not ended yet
ACTIVE_STATUSES = frozenset({Status.PENDING, Status.UPLOADING, Status.FINALIZING})


class FileStatus(enum.StrEnum):
    """Where one file of a directory run stands (the per-file list of the server's record)."""

    UPLOADING = "uploading"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class FileCounts:
    """A directory run's file counts, carried by every snapshot of that run (``None`` for one file)."""

    #: every file the run takes (after the filters); ``None`` while the walk is still counting
    total: int | None
    #: on the store as they should be: uploaded and verified in this run, or skipped (``skipped`` of them)
    done: int
    failed: int
    skipped: int = 0


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
    #: a directory run's file counts (``None``: a one-file upload, whose events carry no ``files_*`` field)
    files: FileCounts | None = None

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
        if self.files is not None:
            data.update(files_total=self.files.total, files_done=self.files.done, files_failed=self.files.failed,
                        files_skipped=self.files.skipped)
        data.update(self.extra)
        return data


#: the keys of :meth:`Snapshot.to_dict` before the event's own (section 2 of the module docstring)
SNAPSHOT_FIELDS = ("event", "upload_id", "bucket", "key", "total_bytes", "bytes_done", "percent", "speed_bps",
                   "avg_speed_bps", "eta_seconds", "elapsed_seconds", "parts_done", "parts_total", "status",
                   "timestamp")
#: what every snapshot of a directory run adds after :data:`SNAPSHOT_FIELDS` (:class:`FileCounts`)
FILES_FIELDS = ("files_total", "files_done", "files_failed", "files_skipped")
#: what each event may add to :data:`SNAPSHOT_FIELDS` (``Snapshot.extra``, built by the engine)
EVENT_FIELDS: dict[Event, tuple[str, ...]] = {
    Event.STARTED: ("part_size", "workers", "hosts", "resumed_bytes", "resumed_parts", "checksum_algorithm",
                    "multipart", "store_upload_id", "max_bandwidth_bps"),
    Event.PROGRESS: (),
    Event.COMPLETED: ("checksum", "etag", "location", "verified", "version_id", "resumed_bytes", "resumed_parts",
                      "store_upload_id"),
    Event.STOPPED: ("aborted", "kept", "reason", "store_upload_id", "resume_command"),
    Event.FAILED: ("error", "error_type", "store_upload_id", "resume_command"),
    Event.FILE_COMPLETED: ("prefix", "path", "size", "verified", "etag", "checksum", "skipped"),
    Event.FILE_FAILED: ("prefix", "path", "size", "error", "error_type"),
}
#: what a directory run's events add to :data:`EVENT_FIELDS` (a one-file upload never carries them)
DATASET_EVENT_FIELDS: dict[Event, tuple[str, ...]] = {
    Event.STARTED: ("bytes_total", "prefix", "sources", "put_threads"),
    Event.PROGRESS: ("in_flight",),
    Event.COMPLETED: ("failed_files", "warnings"),
    Event.STOPPED: ("failed_files", "warnings"),
    Event.FAILED: ("failed_files", "warnings"),
}
#: one entry of ``in_flight`` (progress) and ``failed_files`` (the end): a file of a directory run
FILE_ENTRY_FIELDS = ("path", "key", "size", "bytes_done", "error")
#: any event may add it: uploads of this run still on the store that nobody meant to keep
LEFT_BEHIND_FIELD = "left_behind"


@dataclass(frozen=True)
class ReportField:
    """One field of a progress report (section 3 of the module docstring)."""

    name: str
    #: ``int``, ``float`` (a JSON integer is accepted too) or ``str``
    kind: type
    required: bool = False
    #: ``int``: the largest value (the smallest is 0); ``str``: the most UTF-8 bytes; ``float``: finite, >= 0
    maximum: int | None = None


#: what the server reads from a progress report, in the order it checks them
REPORT_FIELDS: tuple[ReportField, ...] = (
    ReportField("seq", int, required=True, maximum=INT64_MAX),
    ReportField("status", str, required=True, maximum=64),
    ReportField("bytes_done", int, required=True, maximum=INT64_MAX),
    ReportField("speed_bps", float),
    ReportField("avg_speed_bps", float),
    ReportField("eta_seconds", float),
    ReportField("parts_done", int, maximum=INT32_MAX),
    ReportField("elapsed_seconds", float),
    ReportField("checksum", str, maximum=1024),
    ReportField("etag", str, maximum=1024),
    ReportField("error", str, maximum=64 * 1024),
    ReportField("resume_command", str, maximum=8192),
    *(ReportField(name, int, maximum=INT32_MAX) for name in FILES_FIELDS),
)
REPORT_FIELD_NAMES = tuple(f.name for f in REPORT_FIELDS)

#: an upload record as the server answers it (REST, the bus; section 4 of the module docstring)
RECORD_FIELDS = ("id", "filename", "bucket", "key", "host", "status", "total_bytes", "bytes_done", "percent",
                 "speed_bps", "avg_speed_bps", "eta_seconds", "elapsed_seconds", "part_size", "parts_done",
                 "parts_total", "seq", "checksum", "etag", "error", "resume_command", "resumable", "stop_requested",
                 "live", "version", "created_at", "updated_at", "last_report_at", *FILES_FIELDS, "brokered")
#: one point of an upload's speed history (``history`` in REST and GraphQL)
SAMPLE_FIELDS = ("at", "bytes_done", "speed_bps")
#: the body of ``POST /api/v1/uploads`` (section 5 of the module docstring)
REGISTRATION_FIELDS = ("filename", "bucket", "key", "total_bytes", "part_size", "parts_total", "host")
#: what a directory run's registration adds (optional: present makes the record a dataset's)
REGISTRATION_DATASET_FIELDS = ("files_total",)

#: one entry of a files batch (section 6 of the module docstring), in the order the server checks them
FILE_BATCH_FIELDS: tuple[ReportField, ...] = (
    ReportField("path", str, required=True, maximum=1024),
    ReportField("key", str, required=True, maximum=1024),
    ReportField("size", int, required=True, maximum=INT64_MAX),
    ReportField("bytes_done", int, required=True, maximum=INT64_MAX),
    ReportField("status", str, required=True, maximum=64),
    ReportField("error", str, maximum=4096),
)
FILE_BATCH_FIELD_NAMES = tuple(f.name for f in FILE_BATCH_FIELDS)
#: the most entries one ``POST /api/v1/uploads/{id}/files`` may carry
FILES_BATCH_MAX = 1000
#: the most bytes its body may have (the sender splits a batch before it grows this big)
FILES_BATCH_MAX_BYTES = 2 * 1024 * 1024
#: the most files one page of GraphQL ``Upload.files`` may hold, and how many it holds when not told
FILES_PAGE_MAX = 500
FILES_PAGE_DEFAULT = 50


def camel(name: str) -> str:
    """A snake_case wire name as GraphQL spells it: ``bytes_done`` -> ``bytesDone``."""
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


#: the fields of the GraphQL ``Upload`` type, ``history`` aside: every record field but ``seq`` (the CLI's counter)
GRAPHQL_UPLOAD_FIELDS = tuple(camel(name) for name in RECORD_FIELDS if name != "seq")
#: the fields of the GraphQL ``UploadFile`` type: a files batch entry, and when the server took it
GRAPHQL_UPLOAD_FILE_FIELDS = (*(camel(name) for name in FILE_BATCH_FIELD_NAMES), "updatedAt")
