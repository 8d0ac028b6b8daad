"""Upload records as a service: create, ingest progress, stop, and serialize — no HTTP in here.

Rules of a progress report:

* ``seq`` must rise: a report whose ``seq`` is not above the last accepted one is ignored (not an error),
  so late or duplicated reports never move a record backwards.
* ``bytes_done`` is between 0 and ``total_bytes``; ``status`` is one of :class:`mpupload.wire.Status`.
* A directory run's counts: ``files_done + files_failed`` is at most ``files_total`` (the report's, else the
  record's), and ``files_skipped`` at most ``files_done``. A dataset record's ``parts_total`` follows the
  ``files_total`` its reports carry (the walk may still be counting at registration), and its ``parts_done``
  is bounded by that check instead of the one on parts.
* The report's fields, JSON types and bounds are :data:`mpupload.wire.REPORT_FIELDS`; other fields of the
  snapshot are ignored. The record sent back is :data:`mpupload.wire.RECORD_FIELDS` (:func:`upload_dict`).
* Transitions follow :data:`ALLOWED`; a resumed upload may go from stopped or failed back to uploading.
* Every accepted report appends a sample; only the newest ``history_limit`` samples are shown, and older
  ones are deleted every :data:`PRUNE_EVERY` changes (so at most ``history_limit + PRUNE_EVERY`` are stored).

The hot path, :func:`ingest`, is one ``UPDATE ... RETURNING`` whose ``WHERE`` holds every rule at once — the
token (live, not revoked), the owner, a rising ``seq``, a legal transition, bytes within the total — then
one ``INSERT`` of the sample and the commit. Only a report that the ``UPDATE`` refuses takes the slow path
(:func:`apply_progress`), which finds out why and says so: 401, 404, ignored (stale ``seq``), 409 or 422.
"""

from __future__ import annotations

import datetime as dt
import math
import reprlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    Table,
    and_,
    bindparam,
    case,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from ..wire import ACTIVE_STATUSES, REPORT_FIELDS, ReportField
from .auth import hash_token, token_user
from .bus.base import Bus
from .db.engine import make_sqlite_writer_engine
from .db.group_commit import AsyncGroupCommit, GroupCommit, ThreadedGroupCommit
from .db.models import Sample, Token, Upload, UploadStatus, User, as_utc, utcnow
from .limits import (
    INT32_MAX,
    INT64_MAX,
    MAX_BUCKET_CHARS,
    MAX_FILENAME_BYTES,
    MAX_HOST_CHARS,
    MAX_KEY_BYTES,
    InputError,
    check_float,
    check_int,
    check_text,
    valid_upload_id,
)

__all__ = ["ACTIVE", "ALLOWED", "ProgressError", "NotFound", "ProgressReport", "NewUpload", "create_upload",
           "new_upload_id", "get_upload", "list_uploads", "apply_progress", "ingest", "Unauthorized", "PRUNE_EVERY",
           "stop_upload", "parse_report", "upload_dict", "history", "publish", "ProgressWriter",
           "progress_writer"]

S = UploadStatus
ACTIVE = ACTIVE_STATUSES
#: status -> the statuses a report may move it to
ALLOWED: dict[UploadStatus, frozenset[UploadStatus]] = {
    S.PENDING: frozenset(S),
    S.UPLOADING: frozenset({S.UPLOADING, S.FINALIZING, S.COMPLETED, S.STOPPED, S.FAILED}),
    S.FINALIZING: frozenset({S.FINALIZING, S.COMPLETED, S.STOPPED, S.FAILED}),
    S.COMPLETED: frozenset({S.COMPLETED}),
    S.STOPPED: frozenset({S.STOPPED, S.PENDING, S.UPLOADING, S.FINALIZING, S.FAILED}),
    S.FAILED: frozenset({S.FAILED, S.PENDING, S.UPLOADING, S.FINALIZING, S.STOPPED}),
}


#: status -> the statuses a report of it may come from
_SOURCES: dict[UploadStatus, list[UploadStatus]] = {
    new: [old for old, targets in ALLOWED.items() if new in targets] for new in UploadStatus}

#: delete samples beyond the history limit every this many changes of a record
PRUNE_EVERY = 16
#: the report's fields a report without them leaves as they were; ``eta_seconds`` is always set (null: unknown)
_REPORTED = tuple(f.name for f in REPORT_FIELDS if not f.required and f.name != "eta_seconds")


class Unauthorized(PermissionError):
    """The token is unknown, expired or revoked."""


class NotFound(LookupError):
    """No such upload for this user (someone else's upload is not found either)."""


class ProgressError(ValueError):
    """A report with impossible values; ``status_code`` is the HTTP status to answer with."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class NewUpload:
    filename: str
    bucket: str
    key: str
    total_bytes: int
    part_size: int = 0
    parts_total: int = 0
    host: str = ""
    #: a directory run (:data:`mpupload.wire.REGISTRATION_DATASET_FIELDS`): present makes the record a dataset's
    files_total: int | None = None

    def __post_init__(self) -> None:
        """The limits of :mod:`.limits` (:class:`~.limits.InputError`, answered 422)."""
        check_text("filename", self.filename, max_bytes=MAX_FILENAME_BYTES)
        check_text("key", self.key, max_bytes=MAX_KEY_BYTES)
        check_text("bucket", self.bucket, max_chars=MAX_BUCKET_CHARS)
        check_text("host", self.host, max_chars=MAX_HOST_CHARS)
        for name in ("total_bytes", "part_size"):
            check_int(name, getattr(self, name))
        check_int("parts_total", self.parts_total, INT32_MAX)
        if self.files_total is not None:
            check_int("files_total", self.files_total, INT32_MAX)
            if self.parts_total not in (0, self.files_total):
                raise InputError(f"parts_total of a directory run is its files_total ({self.files_total}), got "
                                 f"{self.parts_total}")


@dataclass(frozen=True)
class ProgressReport:
    seq: int
    status: str
    bytes_done: int
    speed_bps: float | None = None
    avg_speed_bps: float | None = None
    eta_seconds: float | None = None
    parts_done: int | None = None
    elapsed_seconds: float | None = None
    checksum: str | None = None
    etag: str | None = None
    error: str | None = None
    resume_command: str | None = None
    files_total: int | None = None
    files_done: int | None = None
    files_failed: int | None = None
    files_skipped: int | None = None

    def __post_init__(self) -> None:
        """The bounds of :data:`mpupload.wire.REPORT_FIELDS`: 64-bit counts, 32-bit part counts, finite numbers,
        bounded text (:mod:`.limits` checks them)."""
        for name, check in _CHECKS:
            value = getattr(self, name)
            if value is not None:
                check(name, value)


def _check(spec: ReportField) -> Callable[[str, Any], object]:
    """The :mod:`.limits` check of one report field, bound to its maximum."""
    if spec.kind is str:
        return partial(check_text, max_bytes=spec.maximum)
    if spec.kind is int:
        return partial(check_int, maximum=INT64_MAX if spec.maximum is None else spec.maximum)
    return check_float


#: (name, its check), built once: a report is checked 500 times a second on a busy server
_CHECKS = tuple((spec.name, _check(spec)) for spec in REPORT_FIELDS)


_REQUIRED = [f.name for f in REPORT_FIELDS if f.required]
#: "seq, status and bytes_done"
_REQUIRED_TEXT = ", ".join(_REQUIRED[:-1]) + " and " + _REQUIRED[-1]
#: (name, required, the JSON types accepted, what the error says is expected), the required fields first
_PARSE: list[tuple[str, bool, tuple[type, ...], str]] = [
    (f.name, f.required, (int, float) if f.kind is float else (f.kind,),  # JSON: 2 is as good a number as 2.0
     ("an integer" if f.kind is int else "a string") if f.required else ("a string" if f.kind is str else "a number"))
    for f in sorted(REPORT_FIELDS, key=lambda f: not f.required)]


def _shown(value: object) -> str:
    """A short ``repr`` for an error message (the value may be megabytes long)."""
    text = reprlib.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_report(data: object) -> ProgressReport:
    """A report from decoded JSON; :class:`ProgressError` (422) names the first field that is wrong.

    Other fields of the snapshot (``event``, ``percent``, ...) are ignored.
    """
    if not isinstance(data, dict):
        raise ProgressError(f"a progress report is a JSON object with {_REQUIRED_TEXT}")
    values: dict[str, Any] = {}
    for name, required, kinds, expected in _PARSE:
        value = data.get(name)
        if value is None:
            if required:
                raise ProgressError(f"missing field {name!r}: a report needs {_REQUIRED_TEXT}")
            continue
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise ProgressError(f"{name} must be {expected}, got {_shown(value)}")
        if float in kinds and isinstance(value, int):
            value = float(value) if abs(value) <= INT64_MAX else math.inf  # 10**400 is a number JSON allows
        values[name] = value
    try:
        return ProgressReport(**values)
    except InputError as exc:
        raise ProgressError(str(exc)) from None


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else as_utc(value).isoformat().replace("+00:00", "Z")


def is_live(upload: Upload, live_after_s: float, now: dt.datetime | None = None) -> bool:
    """Active and reported within the last ``live_after_s`` seconds."""
    if upload.status not in ACTIVE:
        return False
    last = as_utc(upload.last_report_at or upload.created_at)
    return ((now or utcnow()) - last).total_seconds() < live_after_s


def _finite(value: float | None, unknown: float | None = 0.0) -> float | None:
    """``value``, or ``unknown`` for a NaN or an infinity stored before reports were checked (one such sample
    must not break the JSON answer or null out a whole GraphQL list)."""
    return value if value is None or math.isfinite(value) else unknown


def upload_dict(upload: Upload, live_after_s: float) -> dict[str, Any]:
    """The record as JSON-able snake_case data (the REST body and the bus payload).

    A non-finite number stored before reports were checked is shown as 0 (``eta_seconds``: null).
    """
    total = upload.total_bytes
    return {
        "id": upload.id, "filename": upload.filename, "bucket": upload.bucket, "key": upload.key,
        "host": upload.host, "status": upload.status.value, "total_bytes": total, "bytes_done": upload.bytes_done,
        "percent": 100.0 if total == 0 else 100.0 * upload.bytes_done / total,
        "speed_bps": _finite(upload.speed_bps), "avg_speed_bps": _finite(upload.avg_speed_bps),
        "eta_seconds": _finite(upload.eta_seconds, None), "elapsed_seconds": _finite(upload.elapsed_seconds),
        "part_size": upload.part_size,
        "parts_done": upload.parts_done, "parts_total": upload.parts_total, "seq": upload.seq,
        "checksum": upload.checksum, "etag": upload.etag, "error": upload.error,
        "resume_command": upload.resume_command,
        "resumable": upload.status in (S.STOPPED, S.FAILED) and bool(upload.resume_command),
        "stop_requested": upload.stop_requested, "live": is_live(upload, live_after_s), "version": upload.version,
        "created_at": _iso(upload.created_at), "updated_at": _iso(upload.updated_at),
        "last_report_at": _iso(upload.last_report_at),
        "files_total": upload.files_total, "files_done": upload.files_done, "files_failed": upload.files_failed,
        "files_skipped": upload.files_skipped, "brokered": bool(upload.brokered),
    }


def new_upload_id() -> str:
    """A random record id (72 bits, URL-safe) that never begins with ``-`` or ``_``: users paste it after a
    command (``mpupload status ID``), where a leading ``-`` reads as an option."""
    while True:
        candidate = secrets.token_urlsafe(12)
        if candidate[0] not in "-_":
            return candidate


async def create_upload(session: AsyncSession, user: User, new: NewUpload, max_uploads: int | None = None, *,
                        commit: bool = True) -> Upload:
    """Store a new pending record owned by ``user``; :class:`ProgressError` (409) once the user already has
    ``max_uploads`` records. ``commit=False``: added to the session only (the caller sets more and commits it
    whole: a brokered record must never be seen without its brokered fields)."""
    if new.total_bytes < 0 or new.part_size < 0 or new.parts_total < 0:
        raise ProgressError("total_bytes, part_size and parts_total must not be negative")
    if max_uploads is not None:
        count = (await session.execute(select(func.count()).select_from(Upload)
                                       .where(Upload.owner_id == user.id))).scalar_one()
        if count >= max_uploads:
            raise ProgressError(f"you already have {count} upload records, the most this server keeps per user "
                                f"(MPUPLOAD_MAX_UPLOADS_PER_USER={max_uploads}): no new record was created",
                                status_code=409)
    now = utcnow()
    dataset = new.files_total is not None
    counts = 0 if dataset else None
    upload = Upload(
        id=new_upload_id(), owner_id=user.id, filename=new.filename, bucket=new.bucket, key=new.key,
        host=new.host, status=S.PENDING, total_bytes=new.total_bytes, bytes_done=0, part_size=new.part_size,
        parts_total=new.files_total if dataset else new.parts_total, parts_done=0, speed_bps=0.0,
        avg_speed_bps=0.0, eta_seconds=None, elapsed_seconds=0.0, seq=None, stop_requested=False, version=1,
        created_at=now, updated_at=now, files_total=new.files_total, files_done=counts, files_failed=counts,
        files_skipped=counts)
    session.add(upload)
    if commit:
        await session.commit()
    return upload


async def get_upload(session: AsyncSession, user: User, upload_id: str, *, for_update: bool = False) -> Upload:
    """The user's upload, or :class:`NotFound` (also for someone else's, and for an id that cannot exist)."""
    if not valid_upload_id(upload_id):
        raise NotFound(upload_id)
    query = select(Upload).where(Upload.id == upload_id, Upload.owner_id == user.id)
    if for_update:
        query = query.with_for_update()
    upload = (await session.execute(query)).scalar_one_or_none()
    if upload is None:
        raise NotFound(upload_id)
    return upload


async def list_uploads(session: AsyncSession, user: User) -> list[Upload]:
    """The user's uploads, newest first."""
    rows = await session.execute(
        select(Upload).where(Upload.owner_id == user.id).order_by(Upload.created_at.desc(), Upload.id))
    return list(rows.scalars())


async def history(session: AsyncSession, upload_id: str, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` samples of one upload, oldest first."""
    rows = await session.execute(
        select(Sample).where(Sample.upload_id == upload_id).order_by(Sample.id.desc()).limit(limit))
    samples = list(rows.scalars())[::-1]
    return [{"at": _iso(s.at), "bytes_done": s.bytes_done, "speed_bps": _finite(s.speed_bps)} for s in samples]


def _status(report: ProgressReport) -> UploadStatus:
    try:
        return UploadStatus(report.status)
    except ValueError:
        names = ", ".join(s.value for s in UploadStatus)
        raise ProgressError(f"unknown status {report.status!r}; expected one of: {names}") from None


def _validate_values(report: ProgressReport) -> None:
    """The rules that do not depend on the record."""
    if report.seq < 0:
        raise ProgressError(f"seq must not be negative, got {report.seq}")
    if report.bytes_done < 0:
        raise ProgressError(f"bytes_done must not be negative, got {report.bytes_done}")
    for name in ("speed_bps", "avg_speed_bps", "eta_seconds", "parts_done", "elapsed_seconds"):
        value = getattr(report, name)
        if value is not None and value < 0:
            raise ProgressError(f"{name} must not be negative, got {value}")
    if report.files_total is not None:
        _check_files_sum(report, report.files_total, "files_total")
    if report.files_skipped is not None and report.files_skipped > (report.files_done or 0):
        raise ProgressError(f"files_skipped {report.files_skipped} exceeds files_done {report.files_done or 0}: "
                            "skipped files are counted among the done ones")


def _files_sum(report: ProgressReport) -> int | None:
    """``files_done + files_failed`` of a report that carries either, else ``None``."""
    if report.files_done is None and report.files_failed is None:
        return None
    return (report.files_done or 0) + (report.files_failed or 0)


def _check_files_sum(report: ProgressReport, total: int, what: str) -> None:
    done = _files_sum(report)
    if done is not None and done > total:
        raise ProgressError(f"files_done + files_failed ({done}) exceeds {what} ({total})")


def _validate(upload: Upload, report: ProgressReport) -> UploadStatus:
    status = _status(report)
    _validate_values(report)
    if report.bytes_done > upload.total_bytes:
        raise ProgressError(f"bytes_done {report.bytes_done} exceeds total_bytes {upload.total_bytes}")
    if upload.files_total is None:
        if report.parts_done is not None and report.parts_done > upload.parts_total > 0:
            raise ProgressError(f"parts_done {report.parts_done} exceeds parts_total {upload.parts_total}")
    elif report.files_total is None:
        _check_files_sum(report, upload.files_total, "the record's files_total")
    return status


async def apply_progress(session: AsyncSession, user: User, upload_id: str, report: ProgressReport,
                         history_limit: int) -> tuple[Upload, bool]:
    """Apply one report; return the record and whether the report was accepted (``False``: stale seq)."""
    upload = await get_upload(session, user, upload_id, for_update=True)
    status = _validate(upload, report)
    if upload.seq is not None and report.seq <= upload.seq:
        await session.commit()  # nothing changed; ends the transaction (and the row lock) without expiring
        return upload, False
    if status not in ALLOWED[upload.status]:
        raise ProgressError(f"illegal transition {upload.status.value} -> {status.value}", status_code=409)
    now = utcnow()
    if status is S.STOPPED or (upload.status in (S.STOPPED, S.FAILED) and status in ACTIVE):
        upload.stop_requested = False  # the stop happened, or this is a fresh resume
    upload.status, upload.seq, upload.bytes_done = status, report.seq, report.bytes_done
    for name in _REPORTED:
        value = getattr(report, name)
        if value is not None:
            setattr(upload, name, value)
    upload.eta_seconds = report.eta_seconds
    if upload.files_total is not None and report.files_total is not None:
        upload.parts_total = report.files_total  # a dataset's parts are its files
    upload.version += 1
    upload.updated_at = upload.last_report_at = now
    await session.flush()
    await _add_sample(session, upload, now, history_limit)
    await session.commit()
    return upload, True


async def _add_sample(session: AsyncSession, upload: Upload, now: dt.datetime, history_limit: int) -> None:
    session.add(Sample(upload_id=upload.id, at=now, bytes_done=upload.bytes_done, speed_bps=upload.speed_bps))
    if upload.version % PRUNE_EVERY == 0:
        await session.flush()
        await _prune(session, upload.id, history_limit)


async def _prune(session: AsyncSession, upload_id: str, history_limit: int) -> None:
    await session.execute(_PRUNE, {"upload_id": upload_id, "keep": history_limit})


def _ingest_statements() -> tuple[Any, Any, Any]:
    """The hot path's statements, built once (a statement built per call costs more than running it)."""
    t, samples, tokens = (cast(Table, model.__table__) for model in (Upload, Sample, Token))
    # (a login token: a worker token only signs URLs)
    owner = (select(tokens.c.user_id).where(tokens.c.token_hash == bindparam("token_hash"),
                                           tokens.c.revoked.is_(False), tokens.c.expires_at > bindparam("now"),
                                           tokens.c.upload_id.is_(None))
             .scalar_subquery())
    keep = {name: func.coalesce(bindparam(f"r_{name}", type_=t.c[name].type), t.c[name]) for name in _REPORTED}
    resume = and_(t.c.status.in_((S.STOPPED, S.FAILED)), bindparam("r_active", type_=Boolean()))
    r_files_total = bindparam("r_files_total", type_=Integer())
    r_files_sum = bindparam("r_files_sum", type_=Integer())
    update_stmt = (
        update(t)
        .where(t.c.id == bindparam("upload_id"), t.c.owner_id == owner,
               or_(t.c.seq.is_(None), t.c.seq < bindparam("r_seq")),
               t.c.status.in_(bindparam("sources", expanding=True)),
               t.c.total_bytes >= bindparam("r_bytes_done"),
               or_(bindparam("r_parts_done", type_=Integer()).is_(None), t.c.parts_total == 0,
                   t.c.files_total.is_not(None),  # a dataset's parts are its files: checked below
                   t.c.parts_total >= bindparam("r_parts_done", type_=Integer())),
               # a directory run's counts within the record's total when the report carries none
               or_(r_files_total.is_not(None), r_files_sum.is_(None), t.c.files_total.is_(None),
                   t.c.files_total >= r_files_sum))
        .values(status=bindparam("r_status", type_=t.c.status.type), seq=bindparam("r_seq"),
                bytes_done=bindparam("r_bytes_done"), eta_seconds=bindparam("r_eta_seconds", type_=Float()),
                version=t.c.version + 1, updated_at=bindparam("now"), last_report_at=bindparam("now"),
                # the stop happened, or this is a fresh resume (see apply_progress)
                stop_requested=case((or_(bindparam("r_stopped", type_=Boolean()), resume), false()),
                                    else_=t.c.stop_requested),
                # a dataset's parts are its files (see apply_progress)
                parts_total=case((and_(t.c.files_total.is_not(None), r_files_total.is_not(None)), r_files_total),
                                 else_=t.c.parts_total),
                **keep)
        .returning(*t.c))
    insert_stmt = insert(samples).values(upload_id=bindparam("upload_id"), at=bindparam("now"),
                                         bytes_done=bindparam("s_bytes_done"), speed_bps=bindparam("s_speed_bps"))
    # samples beyond the newest ``keep`` (an empty subquery is NULL, and ``id <= NULL`` deletes nothing)
    cutoff = (select(samples.c.id).where(samples.c.upload_id == bindparam("upload_id"))
              .order_by(samples.c.id.desc()).offset(bindparam("keep", type_=Integer())).limit(1).scalar_subquery())
    prune_stmt = delete(samples).where(samples.c.upload_id == bindparam("upload_id"), samples.c.id <= cutoff)
    return update_stmt, insert_stmt, prune_stmt


_UPDATE, _INSERT_SAMPLE, _PRUNE = _ingest_statements()


def _sample_params(params: dict[str, Any], row: Any) -> dict[str, Any]:
    return {"upload_id": params["upload_id"], "now": params["now"], "s_bytes_done": row.bytes_done,
            "s_speed_bps": row.speed_bps}


def _write_report_sync(conn: Connection, params: dict[str, Any]) -> Any:
    """One report on a synchronous connection (the SQLite writer thread): the row, or ``None`` if refused."""
    row = conn.execute(_UPDATE, params).first()
    if row is not None:
        conn.execute(_INSERT_SAMPLE, _sample_params(params, row))
        if row.version % PRUNE_EVERY == 0:
            conn.execute(_PRUNE, params)
    return row


async def _write_report(conn: AsyncConnection, params: dict[str, Any]) -> Any:
    """One report on an async connection; the same statements as :func:`_write_report_sync`."""
    row = (await conn.execute(_UPDATE, params)).first()
    if row is not None:
        await conn.execute(_INSERT_SAMPLE, _sample_params(params, row))
        if row.version % PRUNE_EVERY == 0:
            await conn.execute(_PRUNE, params)
    return row


def _upload_key(params: dict[str, Any]) -> str:
    return str(params["upload_id"])


#: writes progress reports in batches (see :mod:`.db.group_commit`); ``write(params)`` -> the row or ``None``
ProgressWriter = GroupCommit[dict[str, Any], Any]


def progress_writer(engine: AsyncEngine) -> ProgressWriter:
    """The group-commit writer for ``engine``'s database: a thread of its own on a SQLite file, tasks otherwise."""
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        return ThreadedGroupCommit(make_sqlite_writer_engine(engine), _write_report_sync, _upload_key,
                                   name="mpupload-progress-writer")
    return AsyncGroupCommit(engine, _write_report, _upload_key)


async def ingest(sessions: async_sessionmaker[AsyncSession], writer: ProgressWriter, token: str, upload_id: str,
                 report: ProgressReport, history_limit: int) -> tuple[Any, bool]:
    """Apply one report sent with ``token`` (the hot path; see the module docstring).

    ``writer`` (:func:`progress_writer`) writes it together with the reports that arrive at the same time.
    Returns the record (a row with the record's attributes, or the :class:`Upload`) and whether the report
    was accepted. Raises :class:`Unauthorized`, :class:`NotFound` or :class:`ProgressError`.
    """
    try:
        if not valid_upload_id(upload_id):
            raise NotFound(upload_id)
        status = _status(report)
        _validate_values(report)
    except (ProgressError, NotFound):
        async with sessions() as session:  # a bad token is a 401 whatever the report says
            if await token_user(session, token) is None:
                raise Unauthorized("invalid, expired or revoked token") from None
        raise
    params: dict[str, Any] = {
        "token_hash": hash_token(token), "now": utcnow(), "upload_id": upload_id, "r_seq": report.seq,
        "sources": _SOURCES[status], "r_status": status, "keep": history_limit,
        "r_bytes_done": report.bytes_done, "r_parts_done": report.parts_done, "r_eta_seconds": report.eta_seconds,
        "r_stopped": status is S.STOPPED, "r_active": status in ACTIVE, "r_files_sum": _files_sum(report),
        **{f"r_{name}": getattr(report, name) for name in _REPORTED},
    }
    row = await writer.write(params)
    if row is not None:
        return row, True
    async with sessions() as session:  # refused: find out why, on the slow path
        user = await token_user(session, token)
        if user is None:
            raise Unauthorized("invalid, expired or revoked token")
        return await apply_progress(session, user, upload_id, report, history_limit)


async def stop_upload(session: AsyncSession, user: User, upload_id: str) -> tuple[Upload, bool]:
    """Mark the user's upload for stopping; its next progress answer carries ``{"action": "stop"}``.

    Returns the record and whether it changed (``False`` on an upload that is already completed, stopped
    or failed, or already marked). Raises :class:`NotFound`.
    """
    upload = await get_upload(session, user, upload_id, for_update=True)
    changed = upload.status in ACTIVE and not upload.stop_requested
    if changed:
        upload.stop_requested = True
        upload.version += 1
        upload.updated_at = utcnow()
    await session.commit()
    return upload, changed


async def publish(bus: Bus | None, upload: Upload, live_after_s: float) -> None:
    """Tell subscribers about an accepted change (channel: the owner's user id)."""
    if bus is not None:
        await bus.publish(str(upload.owner_id), upload_dict(upload, live_after_s))
