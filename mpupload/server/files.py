"""A directory run's files: the batches the CLI sends, and the pages GraphQL reads — no HTTP in here.

* :func:`parse_batch` reads ``{"files": [entry, ...]}`` (:data:`mpupload.wire.FILE_BATCH_FIELDS`): at most
  :data:`~mpupload.wire.FILES_BATCH_MAX` entries (more: :class:`BatchError` 413), each entry's JSON types, its
  bounds and its status checked as a report's are (422 naming the entry and the field).
* :func:`record_files` upserts a batch into ``upload_files`` by (upload, path), the newest entry winning (the
  last one of a batch, the later of two batches), after one ``UPDATE`` of the record that checks the owner (a
  stranger's upload is :class:`~.uploads.NotFound`) and raises its ``version``, so that subscribers re-read
  the list. The ``UPDATE`` comes first: on SQLite the transaction starts as the writer it has to be.
* :func:`list_files` reads one page in path order after an opaque cursor (:func:`encode_cursor`: the last
  path of the page before, so a page never skips or repeats a file while others change).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from ..wire import FILE_BATCH_FIELDS, FILES_BATCH_MAX, FileStatus
from .db.models import Upload, UploadFile, as_utc, utcnow
from .limits import InputError, check_int, check_text, valid_upload_id
from .uploads import NotFound

__all__ = ["BatchError", "FileEntry", "parse_batch", "record_files", "list_files", "file_dict", "encode_cursor",
           "decode_cursor"]

#: the statuses, as the error message lists them
_STATUS_NAMES = ", ".join(s.value for s in FileStatus)


class BatchError(ValueError):
    """A files batch the server does not take; ``status_code`` is the HTTP status to answer with."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class FileEntry:
    path: str
    key: str
    size: int
    bytes_done: int
    status: FileStatus
    error: str | None = None


def _entry(index: int, data: object) -> FileEntry:
    where = f"files[{index}]"
    if not isinstance(data, dict):
        raise BatchError(f"{where} must be an object with {', '.join(f.name for f in FILE_BATCH_FIELDS)}")
    values: dict[str, Any] = {}
    for spec in FILE_BATCH_FIELDS:
        value = data.get(spec.name)
        name = f"{where}.{spec.name}"
        if value is None:
            if spec.required:
                raise BatchError(f"{name} is missing")
            continue
        expected = "an integer" if spec.kind is int else "a string"
        if not isinstance(value, spec.kind) or isinstance(value, bool):
            raise BatchError(f"{name} must be {expected}")
        try:
            if isinstance(value, int):
                assert spec.maximum is not None
                check_int(name, value, spec.maximum)
            elif isinstance(value, str):
                check_text(name, value, max_bytes=spec.maximum)
        except InputError as exc:
            raise BatchError(str(exc)) from None
        values[spec.name] = value
    try:
        values["status"] = FileStatus(values["status"])
    except ValueError:
        raise BatchError(f"{where}.status must be one of: {_STATUS_NAMES}") from None
    if values["bytes_done"] > values["size"]:
        raise BatchError(f"{where}.bytes_done {values['bytes_done']} exceeds its size {values['size']}")
    return FileEntry(**values)


def parse_batch(data: object) -> list[FileEntry]:
    """The entries of a decoded files batch; :class:`BatchError` names the first thing that is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise BatchError('a files batch is a JSON object {"files": [entry, ...]}')
    files: list[object] = data["files"]
    if len(files) > FILES_BATCH_MAX:
        raise BatchError(f"a files batch has at most {FILES_BATCH_MAX} entries, got {len(files)}: send them in "
                         "several batches", status_code=413)
    return [_entry(i, item) for i, item in enumerate(files)]


async def record_files(session: AsyncSession, owner_id: int, upload_id: str, entries: list[FileEntry]) -> Upload:
    """Store ``entries`` for the owner's upload (newest wins per path) and raise the record's version.

    Returns the record as it now is; :class:`NotFound` for an upload that is not the owner's.
    """
    if not valid_upload_id(upload_id):
        raise NotFound(upload_id)
    now = utcnow()
    found = (await session.execute(
        update(Upload).where(Upload.id == upload_id, Upload.owner_id == owner_id)
        .values(version=Upload.version + 1, updated_at=now).returning(Upload))).scalar_one_or_none()
    if found is None:
        await session.rollback()
        raise NotFound(upload_id)
    newest = {entry.path: entry for entry in entries}  # one row may be written once per statement
    if newest:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(UploadFile)
        stmt = stmt.on_conflict_do_update(
            index_elements=[UploadFile.upload_id, UploadFile.path],
            set_={name: stmt.excluded[name] for name in ("key", "size", "bytes_done", "status", "error",
                                                          "updated_at")})
        await session.execute(stmt, [
            {"upload_id": upload_id, "path": e.path, "key": e.key, "size": e.size, "bytes_done": e.bytes_done,
             "status": e.status, "error": e.error, "updated_at": now} for e in newest.values()])
    await session.commit()
    return found


def encode_cursor(path: str) -> str:
    """An opaque cursor after ``path``."""
    return base64.urlsafe_b64encode(b"p:" + path.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The path a cursor points after; :class:`InputError` for anything :func:`encode_cursor` did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if not raw.startswith(b"p:"):
            raise ValueError
        return raw[2:].decode("utf-8")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InputError("after is not a cursor this server gave out: pass a page's endCursor") from None


async def list_files(session: AsyncSession, upload_id: str, status: FileStatus | None, first: int,
                     after: str | None) -> tuple[list[UploadFile], bool]:
    """One page of an upload's files in path order (the caller checks the owner): the rows, and whether more
    follow."""
    query = select(UploadFile).where(UploadFile.upload_id == upload_id)
    if status is not None:
        query = query.where(UploadFile.status == status)
    if after is not None:
        query = query.where(UploadFile.path > decode_cursor(after))
    rows = list((await session.execute(query.order_by(UploadFile.path).limit(first + 1))).scalars())
    return rows[:first], len(rows) > first


def file_dict(row: UploadFile) -> dict[str, Any]:
    """One file as JSON-able snake_case data."""
    at: dt.datetime = as_utc(row.updated_at)
    return {"path": row.path, "key": row.key, "size": row.size, "bytes_done": row.bytes_done,
            "status": row.status.value, "error": row.error,
            "updated_at": at.isoformat().replace("+00:00", "Z")}

