"""Migrations at start: two replicas starting at once on one fresh database both come up healthy; an
older schema with data in it is upgraded in place."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from mpupload.server.db import make_engine, migrate
from mpupload.server.settings import normalize_database_url

from .support import create_pg_database, drop_pg_database, start_server

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrate.__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


HEAD = ScriptDirectory.from_config(_config()).get_current_head()


async def _versions(url: str) -> list[str]:
    engine = make_engine(normalize_database_url(url))
    try:
        async with engine.connect() as conn:
            return [row[0] for row in await conn.execute(text("SELECT version_num FROM alembic_version"))]
    finally:
        await engine.dispose()


def test_two_replicas_start_at_once(fresh_url: str, tmp_path: Path) -> None:
    replicas = [start_server(fresh_url, tmp_path, wait=False) for _ in range(2)]
    try:
        for replica in replicas:
            replica.wait_healthy()
    finally:
        for replica in replicas:
            replica.stop()
    assert asyncio.run(_versions(fresh_url)) == [HEAD]
    # a restart on an up-to-date schema is a no-op
    again = start_server(fresh_url, tmp_path)
    again.stop()


NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_an_older_schema_with_data_is_upgraded(fresh_url: str, tmp_path: Path) -> None:
    async def at_0001() -> None:
        engine = make_engine(normalize_database_url(fresh_url))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(lambda sync: command.upgrade(_config(sync), "0001"))
                await conn.execute(text(
                    "INSERT INTO users (id, name, password_hash, created_at) VALUES (1, 'old', 'x', :now)"),
                    {"now": NOW})
                await conn.execute(text(
                    "INSERT INTO uploads (id, owner_id, filename, bucket, key, host, status, total_bytes, bytes_done,"
                    " part_size, parts_total, parts_done, speed_bps, avg_speed_bps, elapsed_seconds, stop_requested,"
                    " created_at, updated_at) VALUES ('u1', 1, 'f', 'b', 'k', 'h', 'completed', :big, :big, 0, 0, 0,"
                    " 0, 0, 0, false, :now, :now)"), {"big": 200 * 1024**3, "now": NOW})
        finally:
            await engine.dispose()

    async def row() -> tuple[int, int]:
        engine = make_engine(normalize_database_url(fresh_url))
        try:
            async with engine.connect() as conn:
                found = (await conn.execute(text("SELECT total_bytes, version FROM uploads WHERE id = 'u1'"))).one()
                return int(found[0]), int(found[1])
        finally:
            await engine.dispose()

    asyncio.run(at_0001())
    assert asyncio.run(_versions(fresh_url)) == ["0001"]
    server = start_server(fresh_url, tmp_path)
    server.stop()
    assert asyncio.run(_versions(fresh_url)) == [HEAD] and HEAD != "0001"
    assert asyncio.run(row()) == (200 * 1024**3, 0)


def test_migration_0005_up_and_down_keeps_the_records(fresh_url: str) -> None:
    """0005 adds the files_* columns and upload_files; its downgrade drops them and nothing else (on SQLite a
    table rebuild would have deleted the samples through their foreign key)."""

    async def step(revision: str, down: bool = False) -> None:
        engine = make_engine(normalize_database_url(fresh_url))
        try:
            async with engine.begin() as conn:
                move = command.downgrade if down else command.upgrade
                await conn.run_sync(lambda sync: move(_config(sync), revision))
        finally:
            await engine.dispose()

    async def sql(statement: str, **params: object) -> list[tuple[object, ...]]:
        engine = make_engine(normalize_database_url(fresh_url))
        try:
            async with engine.begin() as conn:
                result = await conn.execute(text(statement), params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            await engine.dispose()

    async def columns() -> set[str]:
        engine = make_engine(normalize_database_url(fresh_url))
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda sync: [c["name"] for c in inspect(sync).get_columns("uploads")]))
        finally:
            await engine.dispose()

    async def tables() -> set[str]:
        engine = make_engine(normalize_database_url(fresh_url))
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
        finally:
            await engine.dispose()

    files_columns = {"files_total", "files_done", "files_failed", "files_skipped"}
    asyncio.run(step("0005"))
    assert files_columns <= asyncio.run(columns()) and "upload_files" in asyncio.run(tables())
    asyncio.run(sql("INSERT INTO users (id, name, password_hash, created_at) VALUES (1, 'old', 'x', :now)", now=NOW))
    asyncio.run(sql(
        "INSERT INTO uploads (id, owner_id, filename, bucket, key, host, status, total_bytes, bytes_done, part_size,"
        " parts_total, parts_done, speed_bps, avg_speed_bps, elapsed_seconds, stop_requested, created_at, updated_at,"
        " version, files_total, files_done, files_failed, files_skipped) VALUES ('u1', 1, 'data', 'b', 'p/', 'h',"
        " 'uploading', 10, 5, 0, 3, 1, 0, 0, 0, false, :now, :now, 1, 3, 1, 1, 0)", now=NOW))
    asyncio.run(sql("INSERT INTO samples (upload_id, at, bytes_done, speed_bps) VALUES ('u1', :now, 5, 1.0)", now=NOW))
    asyncio.run(sql("INSERT INTO upload_files (upload_id, path, key, size, bytes_done, status, error, updated_at)"
                    " VALUES ('u1', 'a/b', 'p/a/b', 5, 5, 'completed', NULL, :now)", now=NOW))
    # one row per (upload, path)
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        asyncio.run(sql("INSERT INTO upload_files (upload_id, path, key, size, bytes_done, status, error, updated_at)"
                        " VALUES ('u1', 'a/b', 'p/a/b', 5, 5, 'failed', 'e', :now)", now=NOW))

    asyncio.run(step("0004", down=True))
    assert asyncio.run(_versions(fresh_url)) == ["0004"]
    assert not files_columns & asyncio.run(columns()) and "upload_files" not in asyncio.run(tables())
    assert asyncio.run(sql("SELECT id, total_bytes, version FROM uploads")) == [("u1", 10, 1)]
    assert asyncio.run(sql("SELECT count(*) FROM samples")) == [(1,)]

    asyncio.run(step("head"))
    assert asyncio.run(_versions(fresh_url)) == [HEAD]
    assert asyncio.run(sql("SELECT files_total, files_done FROM uploads WHERE id = 'u1'")) == [(None, None)]
    assert asyncio.run(sql("SELECT count(*) FROM upload_files")) == [(0,)]
    # the files go with their upload
    asyncio.run(sql("INSERT INTO upload_files (upload_id, path, key, size, bytes_done, status, error, updated_at)"
                    " VALUES ('u1', 'c', 'p/c', 1, 0, 'uploading', NULL, :now)", now=NOW))
    asyncio.run(sql("DELETE FROM uploads WHERE id = 'u1'"))
    assert asyncio.run(sql("SELECT count(*) FROM upload_files")) == [(0,)]
