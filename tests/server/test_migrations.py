"""Migrations at start: two replicas starting at once on one fresh database both come up healthy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from mpupload.server.db import make_engine
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
    assert asyncio.run(_versions(fresh_url)) == ["0001"]
    # a restart on an up-to-date schema is a no-op
    again = start_server(fresh_url, tmp_path)
    again.stop()
