"""Upload records as a service: create, ingest progress, stop, and serialize — no HTTP in here.

Rules of a progress report:

* ``seq`` must rise: a report whose ``seq`` is not above the last accepted one is ignored (not an error),
  so late or duplicated reports never move a record backwards.
* ``bytes_done`` is between 0 and ``total_bytes``; ``status`` is one of :class:`UploadStatus`.
* Transitions follow :data:`ALLOWED`; a resumed upload may go from stopped or failed back to uploading.
* Every accepted report appends a sample; only the newest ``history_limit`` samples are kept.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from .bus.base import Bus
from .db.models import Sample, Upload, UploadStatus, User, as_utc, utcnow

__all__ = ["ACTIVE", "ALLOWED", "ProgressError", "NotFound", "ProgressReport", "NewUpload", "create_upload",
           "get_upload", "list_uploads", "apply_progress", "stop_upload", "upload_dict", "history", "publish"]

S = UploadStatus
ACTIVE = frozenset({S.PENDING, S.UPLOADING, S.FINALIZING})
#: status -> the statuses a report may move it to
ALLOWED: dict[UploadStatus, frozenset[UploadStatus]] = {
    S.PENDING: frozenset(S),
    S.UPLOADING: frozenset({S.UPLOADING, S.FINALIZING, S.COMPLETED, S.STOPPED, S.FAILED}),
    S.FINALIZING: frozenset({S.FINALIZING, S.COMPLETED, S.STOPPED, S.FAILED}),
    S.COMPLETED: frozenset({S.COMPLETED}),
    S.STOPPED: frozenset({S.STOPPED, S.PENDING, S.UPLOADING, S.FINALIZING, S.FAILED}),
    S.FAILED: frozenset({S.FAILED, S.PENDING, S.UPLOADING, S.FINALIZING, S.STOPPED}),
}


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


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else as_utc(value).isoformat().replace("+00:00", "Z")


def is_live(upload: Upload, live_after_s: float, now: dt.datetime | None = None) -> bool:
    """Active and reported within the last ``live_after_s`` seconds."""
    if upload.status not in ACTIVE:
        return False
    last = as_utc(upload.last_report_at or upload.created_at)
    return ((now or utcnow()) - last).total_seconds() < live_after_s


def upload_dict(upload: Upload, live_after_s: float) -> dict[str, Any]:
    """The record as JSON-able snake_case data (the REST body and the bus payload)."""
    total = upload.total_bytes
    return {
        "id": upload.id, "filename": upload.filename, "bucket": upload.bucket, "key": upload.key,
        "host": upload.host, "status": upload.status.value, "total_bytes": total, "bytes_done": upload.bytes_done,
        "percent": 100.0 if total == 0 else 100.0 * upload.bytes_done / total,
        "speed_bps": upload.speed_bps, "avg_speed_bps": upload.avg_speed_bps, "eta_seconds": upload.eta_seconds,
        "elapsed_seconds": upload.elapsed_seconds, "part_size": upload.part_size,
        "parts_done": upload.parts_done, "parts_total": upload.parts_total, "seq": upload.seq,
        "checksum": upload.checksum, "etag": upload.etag, "error": upload.error,
        "resume_command": upload.resume_command,
        "resumable": upload.status in (S.STOPPED, S.FAILED) and bool(upload.resume_command),
        "stop_requested": upload.stop_requested, "live": is_live(upload, live_after_s), "version": upload.version,
        "created_at": _iso(upload.created_at), "updated_at": _iso(upload.updated_at),
        "last_report_at": _iso(upload.last_report_at),
    }


async def create_upload(session: AsyncSession, user: User, new: NewUpload) -> Upload:
    """Store a new pending record owned by ``user``."""
    if new.total_bytes < 0 or new.part_size < 0 or new.parts_total < 0:
        raise ProgressError("total_bytes, part_size and parts_total must not be negative")
    now = utcnow()
    upload = Upload(
        id=secrets.token_urlsafe(12), owner_id=user.id, filename=new.filename, bucket=new.bucket, key=new.key,
        host=new.host, status=S.PENDING, total_bytes=new.total_bytes, bytes_done=0, part_size=new.part_size,
        parts_total=new.parts_total, parts_done=0, speed_bps=0.0, avg_speed_bps=0.0, eta_seconds=None,
        elapsed_seconds=0.0, seq=None, stop_requested=False, version=1, created_at=now, updated_at=now)
    session.add(upload)
    await session.commit()
    return upload


async def get_upload(session: AsyncSession, user: User, upload_id: str, *, for_update: bool = False) -> Upload:
    """The user's upload, or :class:`NotFound` (also for someone else's)."""
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


async def history(session: AsyncSession, upload_id: str) -> list[dict[str, Any]]:
    """The kept samples of one upload, oldest first."""
    rows = await session.execute(select(Sample).where(Sample.upload_id == upload_id).order_by(Sample.id))
    return [{"at": _iso(s.at), "bytes_done": s.bytes_done, "speed_bps": s.speed_bps} for s in rows.scalars()]


def _validate(upload: Upload, report: ProgressReport) -> UploadStatus:
    try:
        status = UploadStatus(report.status)
    except ValueError:
        names = ", ".join(s.value for s in UploadStatus)
        raise ProgressError(f"unknown status {report.status!r}; expected one of: {names}") from None
    if report.seq < 0:
        raise ProgressError(f"seq must not be negative, got {report.seq}")
    if report.bytes_done < 0:
        raise ProgressError(f"bytes_done must not be negative, got {report.bytes_done}")
    if report.bytes_done > upload.total_bytes:
        raise ProgressError(f"bytes_done {report.bytes_done} exceeds total_bytes {upload.total_bytes}")
    for name in ("speed_bps", "avg_speed_bps", "eta_seconds", "parts_done", "elapsed_seconds"):
        value = getattr(report, name)
        if value is not None and value < 0:
            raise ProgressError(f"{name} must not be negative, got {value}")
    if report.parts_done is not None and report.parts_done > upload.parts_total > 0:
        raise ProgressError(f"parts_done {report.parts_done} exceeds parts_total {upload.parts_total}")
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
    for name in ("speed_bps", "avg_speed_bps", "parts_done", "elapsed_seconds", "checksum", "etag", "error",
                 "resume_command"):
        value = getattr(report, name)
        if value is not None:
            setattr(upload, name, value)
    upload.eta_seconds = report.eta_seconds
    upload.version += 1
    upload.updated_at = upload.last_report_at = now
    session.add(Sample(upload_id=upload.id, at=now, bytes_done=upload.bytes_done, speed_bps=upload.speed_bps))
    await session.flush()
    cutoff = (await session.execute(
        select(Sample.id).where(Sample.upload_id == upload.id).order_by(Sample.id.desc())
        .offset(history_limit).limit(1))).scalar_one_or_none()
    if cutoff is not None:
        await session.execute(delete(Sample).where(Sample.upload_id == upload.id, Sample.id <= cutoff))
    await session.commit()
    return upload, True


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
