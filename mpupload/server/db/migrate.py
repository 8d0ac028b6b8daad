"""Run the alembic migrations programmatically, safely when several replicas start at once.

PostgreSQL: the upgrade runs in one transaction that first takes a transaction-scoped advisory lock, so a
second replica waits and then finds the schema already at head (PostgreSQL DDL is transactional). SQLite:
an exclusive ``fcntl`` lock on ``<database>.lock`` next to the database file serializes the upgrade.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["upgrade", "MIGRATION_LOCK_KEY"]

#: the PostgreSQL advisory lock key the upgrade holds ("mpupload" as a 63-bit number)
MIGRATION_LOCK_KEY = 0x6D7075706C6F6164

_SCRIPTS = Path(__file__).resolve().parent / "migrations"


def _config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade_sync(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    command.upgrade(_config(connection), "head")


@contextlib.contextmanager
def _sqlite_file_lock(database_url: str) -> Iterator[None]:
    database = make_url(database_url).database
    if not database or database == ":memory:":
        yield
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (a no-op when it already is)."""
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name == "sqlite":
        with _sqlite_file_lock(url):
            async with engine.begin() as conn:
                await conn.run_sync(_upgrade_sync)
        return
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_sync)
