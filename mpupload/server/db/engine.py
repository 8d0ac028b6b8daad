"""The async engine and session factory; SQLite gets its pragmas on every new connection.

Every engine hides statement parameters from its errors (``hide_parameters``): an error that reaches a log
line must never carry a token hash or a password hash.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

__all__ = ["make_engine", "make_sessionmaker", "make_sqlite_writer_engine", "SQLITE_BUSY_TIMEOUT_MS", "UNAVAILABLE",
           "unavailable_reason"]

SQLITE_BUSY_TIMEOUT_MS = 10_000

log = logging.getLogger(__name__)


def _private_sqlite_file(database_url: str) -> None:
    """Create the SQLite file 0600 in a 0700 directory before SQLite opens it (it holds password hashes).

    SQLite gives its ``-wal`` and ``-shm`` files the database file's mode, so they are 0600 too. A file
    created earlier with wider permissions is narrowed to 0600, with a warning.
    """
    database = make_url(database_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            log.warning("%s was readable by others (mode %04o): narrowed to 0600", path, mode)
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for extra in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if stat.S_IMODE(extra.stat().st_mode) & 0o077:
                extra.chmod(0o600)
        except FileNotFoundError:
            pass


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


#: errors that can mean "the database cannot be reached right now" (down, restarting, busy, pool exhausted)
UNAVAILABLE: tuple[type[Exception], ...] = (sa_exc.DBAPIError, sa_exc.TimeoutError, sa_exc.DisconnectionError,
                                            ConnectionError, TimeoutError)


def unavailable_reason(exc: BaseException) -> str | None:
    """One line on why the database is unavailable, or None when ``exc`` is not that kind of error (a bug)."""
    cause: BaseException
    if isinstance(exc, sa_exc.DBAPIError):
        if not (isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or exc.connection_invalidated):
            return None  # an integrity or programming error
        cause = exc.orig if isinstance(exc.orig, BaseException) else exc
    elif isinstance(exc, UNAVAILABLE):
        cause = exc
    else:
        return None
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


def make_engine(database_url: str) -> AsyncEngine:
    """An async engine for a driver URL (see :func:`mpupload.server.settings.normalize_database_url`)."""
    if database_url.startswith("sqlite"):
        _private_sqlite_file(database_url)
        engine = create_async_engine(database_url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
                                     hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping: it costs a round trip per request. A connection that died with a database restart fails
    # one request and the pool is invalidated (SQLAlchemy does that on a disconnect error); the CLI retries.
    return create_async_engine(database_url, pool_size=10, max_overflow=20, hide_parameters=True)


def make_sqlite_writer_engine(engine: AsyncEngine) -> Engine:
    """A synchronous engine on the same SQLite file, for a writer thread of its own (see ``group_commit``)."""
    url = engine.url.set(drivername="sqlite+pysqlite")
    sync = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, hide_parameters=True)
    event.listen(sync, "connect", _sqlite_pragmas)
    return sync


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep attribute values after commit (no lazy reload in async code)."""
    return async_sessionmaker(engine, expire_on_commit=False)
