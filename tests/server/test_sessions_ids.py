"""Ids are never reused, on an upgraded database too.

* SQLite at revision 0002 with users, tokens, uploads and samples is upgraded (migration 0003 rebuilds the
  tables with ``AUTOINCREMENT``): every row and id is kept, the foreign keys still hold and still cascade,
  and removing the newest user then adding one gives a new id.
* On PostgreSQL (sequences) and on a fresh SQLite database, through the real ``mpupload users`` command:
  remove the newest user, add another, and the new id is higher.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from mpupload.server.db import make_engine, upgrade
from mpupload.server.settings import normalize_database_url

from .sessions_support import add_user, users
from .support import create_pg_database, drop_pg_database

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
_SCRIPTS = Path(__file__).resolve().parents[2] / "mpupload" / "server" / "db" / "migrations"


def _to(connection: Connection, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def _ids(url: str, sql: str) -> list[int]:
    engine = make_engine(normalize_database_url(url))
    try:
        async with engine.connect() as conn:
            return [int(r[0]) for r in await conn.execute(text(sql))]
    finally:
        await engine.dispose()


def test_sqlite_upgrade_keeps_rows_and_ids_and_stops_reuse(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"

    async def at_0002() -> None:
        engine = make_engine(normalize_database_url(url))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(lambda sync: _to(sync, "0002"))
                for uid in (1, 2, 3):
                    await conn.execute(text("INSERT INTO users (id, name, password_hash, created_at) "
                                            "VALUES (:id, :name, 'x', :now)"),
                                       {"id": uid, "name": f"u{uid}", "now": NOW})
                    await conn.execute(text(
                        "INSERT INTO tokens (id, token_hash, user_id, created_at, expires_at, revoked) "
                        "VALUES (:tid, :hash, :id, :now, :now, false)"),
                        {"tid": uid * 10, "id": uid, "hash": f"h{uid}", "now": NOW})
                    await conn.execute(text(
                        "INSERT INTO uploads (id, owner_id, filename, bucket, key, host, status, total_bytes,"
                        " bytes_done, part_size, parts_total, parts_done, speed_bps, avg_speed_bps, elapsed_seconds,"
                        " stop_requested, created_at, updated_at, version) VALUES (:up, :id, 'f', 'b', 'k', 'h',"
                        " 'uploading', 10, 5, 0, 0, 0, 0, 0, 0, false, :now, :now, 7)"),
                        {"up": f"up{uid}", "id": uid, "now": NOW})
                    await conn.execute(text("INSERT INTO samples (upload_id, at, bytes_done, speed_bps) "
                                            "VALUES (:up, :now, 5, 1.5)"), {"up": f"up{uid}", "now": NOW})
        finally:
            await engine.dispose()

    async def upgraded() -> None:
        engine = make_engine(normalize_database_url(url))
        try:
            await upgrade(engine)
            async with engine.begin() as conn:
                found = await conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
                tables = {str(name): str(sql) for name, sql in found}
                assert "AUTOINCREMENT" in tables["users"] and "AUTOINCREMENT" in tables["tokens"]
                assert not (await conn.execute(text("PRAGMA foreign_key_check"))).all()
                assert (await conn.execute(text("SELECT count(*) FROM samples"))).scalar() == 3
                assert (await conn.execute(text("SELECT version FROM uploads WHERE id = 'up2'"))).scalar() == 7
                await conn.execute(text("DELETE FROM users WHERE id = 1"))  # still cascades
                left = (await conn.execute(text("SELECT (SELECT count(*) FROM tokens), (SELECT count(*) FROM uploads),"
                                                " (SELECT count(*) FROM samples)"))).one()
                assert tuple(left) == (2, 2, 2)
        finally:
            await engine.dispose()

    asyncio.run(at_0002())
    asyncio.run(upgraded())
    assert asyncio.run(_ids(url, "SELECT id FROM users ORDER BY id")) == [2, 3]
    assert asyncio.run(_ids(url, "SELECT id FROM tokens ORDER BY id")) == [20, 30]
    users(url, "remove", "u3")
    add_user(url, "next")
    assert asyncio.run(_ids(url, "SELECT id FROM users WHERE name = 'next'")) == [4]  # not 3 again


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_newest_users_id_is_not_handed_out_again(kind: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}" if kind == "sqlite" else create_pg_database()
    try:
        add_user(url, "first")
        add_user(url, "newest")
        [gone] = asyncio.run(_ids(url, "SELECT id FROM users WHERE name = 'newest'"))
        users(url, "remove", "newest")
        add_user(url, "later")
        [later] = asyncio.run(_ids(url, "SELECT id FROM users WHERE name = 'later'"))
        assert later > gone
    finally:
        if kind == "postgresql":
            drop_pg_database(url)
