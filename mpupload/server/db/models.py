"""SQLAlchemy 2 models: users, tokens (hashes only), uploads, their bounded speed history and, for a directory
run, its files (one row per file path, the newest state).

Byte counts are ``BigInteger`` (a 200 GiB upload does not fit 32 bits). Timestamps are stored in UTC;
SQLite hands them back naive, so read them through :func:`as_utc`.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ...wire import FileStatus, Status

__all__ = ["Base", "User", "Token", "Upload", "Sample", "BusKey", "UploadFile", "UploadStatus", "FileStatus",
           "PATH_TYPE", "utcnow", "as_utc"]


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """``value`` as an aware UTC datetime (SQLite drops the zone on the way back)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


#: lifecycle of an upload record: the wire's own :class:`~mpupload.wire.Status` (one enum, stored as its value)
UploadStatus = Status


#: a file's path: byte order on both databases (SQLite's BINARY; PostgreSQL's "C" rather than the locale's), so
#: a page of files is in the same order everywhere and ``path > cursor`` agrees with ``ORDER BY path``
PATH_TYPE = Text().with_variant(Text(collation="C"), "postgresql")


class Base(DeclarativeBase):
    """Declarative base of every server table."""


class User(Base):
    __tablename__ = "users"
    __table_args__ = {"sqlite_autoincrement": True}  # an id is never handed out twice (migration 0003)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(150), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    #: the most bytes of brokered uploads in flight and stored (migration 0006); null: no quota
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Token(Base):
    __tablename__ = "tokens"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    #: a worker token (migration 0008): it signs URLs for this brokered record only (a run: and its large files'
    #: uploads), and only while the record is active; null: a login token
    upload_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    #: the login token a worker token was made with (logging out revokes both)
    parent_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)


class Upload(Base):
    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    filename: Mapped[str] = mapped_column(Text, nullable=False)
    bucket: Mapped[str] = mapped_column(String(255), nullable=False)
    key: Mapped[str] = mapped_column(Text, nullable=False)
    host: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    status: Mapped[UploadStatus] = mapped_column(
        Enum(UploadStatus, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]),
        nullable=False, default=UploadStatus.PENDING)
    total_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    bytes_done: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    part_size: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    parts_total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    parts_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    speed_bps: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    avg_speed_bps: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    eta_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    elapsed_seconds: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    checksum: Mapped[str | None] = mapped_column(Text, nullable=True)
    etag: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    resume_command: Mapped[str | None] = mapped_column(Text, nullable=True)
    stop_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    #: rises by one on every accepted change (create, report, stop): what subscribers compare
    version: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    last_report_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: a directory run's file counts (migration 0005); null for a one-file upload
    files_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    files_done: Mapped[int | None] = mapped_column(Integer, nullable=True)
    files_failed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    files_skipped: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: a brokered upload (migration 0006): the server's storage holds it and the server signs its parts
    brokered: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default="0")
    store_upload_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    storage_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    checksum_algorithm: Mapped[str | None] = mapped_column(String(16), nullable=True)
    verified: Mapped[str | None] = mapped_column(String(32), nullable=True)
    last_activity_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: a large file of a brokered directory run: the run's record (migration 0007)
    parent_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)


class Sample(Base):
    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True,
                                           nullable=False)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    bytes_done: Mapped[int] = mapped_column(BigInteger, nullable=False)
    speed_bps: Mapped[float] = mapped_column(Float, nullable=False)


class BusKey(Base):
    """The key that signs bus messages (one row, created by migration 0004, shared by every replica)."""

    __tablename__ = "bus_keys"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class UploadFile(Base):
    """One file of a directory run as its CLI last sent it (migration 0005): one row per (upload, path)."""

    __tablename__ = "upload_files"
    __table_args__ = (
        PrimaryKeyConstraint("upload_id", "path", name="pk_upload_files"),
        # a page of one status, in path order
        Index("ix_upload_files_status_path", "upload_id", "status", "path"),
    )

    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), nullable=False)
    path: Mapped[str] = mapped_column(PATH_TYPE, nullable=False)
    key: Mapped[str] = mapped_column(Text, nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    bytes_done: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[FileStatus] = mapped_column(
        Enum(FileStatus, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]),
        nullable=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class BrokeredObject(Base):
    """An object a brokered directory run had signed, with its size (migration 0007): one row per (run, key)."""

    __tablename__ = "brokered_objects"
    __table_args__ = (PrimaryKeyConstraint("upload_id", "key", name="pk_brokered_objects"),)

    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), nullable=False)
    key: Mapped[str] = mapped_column(Text, nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
