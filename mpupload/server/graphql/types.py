"""The GraphQL types: ``Upload``, ``Sample``, ``UploadStatus``, a directory run's ``UploadFile`` pages
(``FileStatus``, ``UploadFilePage``) and the 64-bit ``Int64`` byte scalar.

GraphQL's ``Int`` is 32-bit and breaks at 2 GiB, so every byte count is an ``Int64``: a JSON number on the
wire (exact up to 2^53 in JavaScript, which is 8 PiB), validated on input to fit a signed 64-bit integer.
An ``Upload`` is built from the service layer's record dictionary (:func:`..uploads.upload_dict`), the same
data the REST API returns and the bus carries; ``history`` is read from the database only when asked for.
The fields are the wire schema's record in camelCase (:data:`mpupload.wire.GRAPHQL_UPLOAD_FIELDS`, checked by
``tests/unit/test_wire.py``), and ``UploadStatus`` is :class:`mpupload.wire.Status` itself. ``files`` is read
from the database only when asked for, a page at a time (:func:`..files.list_files`); an ``UploadFile`` is a
files batch entry (:data:`mpupload.wire.GRAPHQL_UPLOAD_FILE_FIELDS`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, NewType

import strawberry
from strawberry.types import Info

from ...wire import FILES_PAGE_DEFAULT, INT64_MAX, FileStatus, Status
from .context import GraphQLContext

__all__ = ["Int64", "INT64_SCALAR", "UploadStatus", "Sample", "Upload", "UploadFile", "UploadFilePage",
           "FileStatusEnum"]

Int64 = NewType("Int64", int)


def _parse_int64(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"Int64 cannot represent {value!r}")
    number = int(value)
    if number != value and str(number) != value:
        raise ValueError(f"Int64 cannot represent a non-integer {value!r}")
    if not -INT64_MAX - 1 <= number <= INT64_MAX:
        raise ValueError(f"Int64 cannot represent {value!r}: out of the signed 64-bit range")
    return number


INT64_SCALAR = strawberry.scalar(
    name="Int64",
    description="A signed 64-bit integer (byte counts), serialized as a JSON number.",
    serialize=int,
    parse_value=_parse_int64,
)

#: the wire's :class:`~mpupload.wire.Status` (strawberry annotates that class; no second enum)
UploadStatus = strawberry.enum(Status, name="UploadStatus", description="Where an upload stands.")


#: the wire's :class:`~mpupload.wire.FileStatus`
FileStatusEnum = strawberry.enum(FileStatus, name="FileStatus", description="Where one file of a directory run stands.")


def _time(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


@strawberry.type(description="One point of an upload's speed-over-time chart.")
class Sample:
    at: dt.datetime
    bytes_done: Int64
    speed_bps: float


@strawberry.type(description="One file of a directory run, as its CLI last sent it.")
class UploadFile:
    path: str = strawberry.field(description="Relative to its source, with / between names.")
    key: str
    size: Int64
    bytes_done: Int64
    status: FileStatusEnum  # type: ignore[valid-type]
    error: str | None
    updated_at: dt.datetime = strawberry.field(description="When the server took this state.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UploadFile:
        """The GraphQL view of :func:`..files.file_dict`."""
        return cls(path=data["path"], key=data["key"], size=Int64(data["size"]),
                   bytes_done=Int64(data["bytes_done"]), status=FileStatus(data["status"]), error=data["error"],
                   updated_at=dt.datetime.fromisoformat(data["updated_at"]))


@strawberry.type(description="A page of an upload's files, in path order.")
class UploadFilePage:
    items: list[UploadFile]
    end_cursor: str | None = strawberry.field(description="Pass it as `after` for the next page; null when the "
                                                          "page is empty.")
    has_next_page: bool


@strawberry.type(description="An upload the viewer owns, as its CLI last reported it.")
class Upload:
    id: strawberry.ID
    filename: str
    bucket: str
    key: str
    host: str
    status: UploadStatus  # type: ignore[valid-type]
    total_bytes: Int64
    bytes_done: Int64
    percent: float
    speed_bps: float
    avg_speed_bps: float
    eta_seconds: float | None = strawberry.field(description="Null while the remaining time is unknown.")
    parts_done: int
    parts_total: int
    part_size: Int64
    elapsed_seconds: float
    created_at: dt.datetime
    updated_at: dt.datetime
    last_report_at: dt.datetime | None
    error: str | None
    checksum: str | None
    etag: str | None
    resumable: bool = strawberry.field(description="Stopped or failed with the upload kept: it can be resumed.")
    resume_command: str | None
    stop_requested: bool = strawberry.field(description="Stop was pressed; the CLI stops at its next report.")
    live: bool = strawberry.field(description="Active and reported recently; false once reports have stopped.")
    version: Int64 = strawberry.field(description="Rises with every change of the record.")
    files_total: int | None = strawberry.field(description="A directory run's files; null for one file, or "
                                                            "while the walk is still counting.")
    files_done: int | None = strawberry.field(description="Files on the store (uploaded and verified, or "
                                                           "skipped); null for one file.")
    files_failed: int | None
    files_skipped: int | None = strawberry.field(description="Files already on the store (among filesDone).")
    brokered: bool = strawberry.field(description="The server holds the storage credentials: it signs the "
                                                  "parts, completes and aborts (and its reaper aborts the upload "
                                                  "when it is left idle).")

    @strawberry.field(description="A directory run's files in path order, a page at a time (at most 500).")
    async def files(self, info: Info[GraphQLContext, None], status: FileStatusEnum | None = None,  # type: ignore[valid-type]
                    first: int | None = FILES_PAGE_DEFAULT, after: str | None = None) -> UploadFilePage:
        rows, end_cursor, more = await info.context.files(
            str(self.id), status, FILES_PAGE_DEFAULT if first is None else first, after)
        return UploadFilePage(items=[UploadFile.from_dict(r) for r in rows], end_cursor=end_cursor,
                              has_next_page=more)

    @strawberry.field(description="The newest samples, oldest first (bounded by the server).")
    async def history(self, info: Info[GraphQLContext, None]) -> list[Sample]:
        rows = await info.context.history(str(self.id))
        return [Sample(at=dt.datetime.fromisoformat(r["at"]), bytes_done=Int64(r["bytes_done"]),
                       speed_bps=r["speed_bps"]) for r in rows]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Upload:
        """The GraphQL view of a record dictionary (:func:`..uploads.upload_dict`)."""
        created = _time(record["created_at"])
        updated = _time(record["updated_at"])
        assert created is not None and updated is not None
        return cls(
            id=strawberry.ID(record["id"]), filename=record["filename"], bucket=record["bucket"], key=record["key"],
            host=record["host"], status=Status(record["status"]), total_bytes=Int64(record["total_bytes"]),
            bytes_done=Int64(record["bytes_done"]), percent=record["percent"], speed_bps=record["speed_bps"],
            avg_speed_bps=record["avg_speed_bps"], eta_seconds=record["eta_seconds"],
            parts_done=record["parts_done"], parts_total=record["parts_total"],
            part_size=Int64(record["part_size"]), elapsed_seconds=record["elapsed_seconds"], created_at=created,
            updated_at=updated, last_report_at=_time(record.get("last_report_at")), error=record["error"],
            checksum=record["checksum"], etag=record["etag"], resumable=record["resumable"],
            resume_command=record["resume_command"], stop_requested=record["stop_requested"],
            live=record["live"], version=Int64(record["version"]), files_total=record.get("files_total"),
            files_done=record.get("files_done"), files_failed=record.get("files_failed"),
            files_skipped=record.get("files_skipped"), brokered=bool(record.get("brokered")))
