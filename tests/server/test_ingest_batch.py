"""Group commit of progress reports, on a real SQLite file and a real PostgreSQL database.

The writer itself (:mod:`mpupload.server.db.group_commit`): items that queue up together share a transaction,
one key's items keep their order, a bad item fails alone, ``close`` writes what is queued. Then the app:
concurrent reports for the same uploads, out of order, end with the newest one and one sample per accepted
report.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from mpupload.server.api.deps import ServerState
from mpupload.server.app import create_app
from mpupload.server.db.group_commit import AsyncGroupCommit, GroupCommit, ThreadedGroupCommit
from mpupload.server.db.models import Sample, Upload
from mpupload.server.settings import Settings

from .conftest import PASSWORD, Backend
from .support import cli, create_pg_database, drop_pg_database

pytestmark = pytest.mark.integration

META = MetaData()
ITEMS = Table("items", META, Column("id", Integer, primary_key=True), Column("key", String(20)),
              Column("n", Integer), Column("name", String(40), unique=True))

Item = tuple[str, int, str]  # key, n, unique name


def _row(item: Item) -> dict[str, Any]:
    return {"key": item[0], "n": item[1], "name": item[2]}


class Writers:
    """A group-commit writer of each kind on a real database, and what it executed, in order."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.executed: list[Item] = []
        if kind == "sqlite":
            self.url = f"sqlite:///{tmp / 'items.db'}"
        else:
            self.url = create_pg_database()
        self._admin(META.create_all)

    def _async_url(self) -> str:
        return self.url.replace("sqlite://", "sqlite+aiosqlite://").replace("postgresql://", "postgresql+asyncpg://")

    async def _admin_async(self, fn: Any) -> Any:
        engine = create_async_engine(self._async_url())
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    def _admin(self, fn: Any) -> Any:
        return asyncio.run(self._admin_async(fn))

    def writer(self, tasks: int = 2) -> GroupCommit[Item, int]:
        if self.kind == "sqlite":
            def write_sync(conn: Connection, item: Item) -> int:
                self.executed.append(item)
                return int(conn.execute(insert(ITEMS).values(**_row(item)).returning(ITEMS.c.id)).scalar_one())

            return ThreadedGroupCommit(create_engine(self.url), write_sync, key=lambda item: item[0])

        async def write(conn: AsyncConnection, item: Item) -> int:
            self.executed.append(item)
            return int((await conn.execute(insert(ITEMS).values(**_row(item)).returning(ITEMS.c.id))).scalar_one())

        engine = create_async_engine(self._async_url())
        return AsyncGroupCommit(engine, write, key=lambda item: item[0], writers=tasks)

    def names(self) -> list[str]:
        return sorted(self._admin(lambda conn: list(conn.execute(select(ITEMS.c.name)).scalars())))

    def close(self) -> None:
        if self.kind == "postgresql":
            drop_pg_database(self.url)


@pytest.fixture(params=["sqlite", "postgresql"])
def writers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Writers]:
    w = Writers(request.param, tmp_path)
    try:
        yield w
    finally:
        w.close()


def test_items_written_together_share_transactions_and_keep_their_order(writers: Writers) -> None:
    items = [(f"k{i % 7}", i, f"item-{i}") for i in range(300)]

    async def main() -> list[int]:
        writer = writers.writer(tasks=1)  # with several writer tasks, order holds within a batch only
        try:
            return await asyncio.gather(*(writer.write(item) for item in items))
        finally:
            await writer.close()

    ids = asyncio.run(main())
    assert len(set(ids)) == 300
    assert writers.names() == sorted(name for _, _, name in items)
    assert sorted(writers.executed) == sorted(items)
    for key in {key for key, _, _ in items}:  # one key's items in the order they came
        ns = [n for k, n, _ in writers.executed if k == key]
        assert ns == sorted(ns), key
    # 300 writes queued at once do not take 300 transactions: a key's run is contiguous within a batch
    runs = sum(1 for a, b in zip(writers.executed, writers.executed[1:], strict=False) if a[0] != b[0]) + 1
    assert runs < 300


def test_a_bad_item_fails_alone(writers: Writers) -> None:
    good = [(f"k{i % 3}", i, f"good-{i}") for i in range(40)]
    bad = ("k1", 999, "good-7")  # the same unique name as a good item

    async def main() -> list[Any]:
        writer = writers.writer()
        try:
            return await asyncio.gather(*(writer.write(item) for item in [*good[:20], bad, *good[20:]]),
                                        return_exceptions=True)
        finally:
            await writer.close()

    outcomes = asyncio.run(main())
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], IntegrityError), outcomes
    assert isinstance(outcomes[20], IntegrityError)
    assert writers.names() == sorted(name for _, _, name in good)


def test_close_writes_what_is_queued_then_refuses(writers: Writers) -> None:
    async def main() -> None:
        writer = writers.writer()
        pending = [asyncio.ensure_future(writer.write(("k", i, f"queued-{i}"))) for i in range(50)]
        await asyncio.sleep(0)  # let them queue (a scheduling point, not a wait for time)
        await writer.close()
        assert all(task.done() and not task.cancelled() and task.exception() is None for task in pending)
        with pytest.raises(RuntimeError, match="closed"):
            await writer.write(("k", 99, "late"))

    asyncio.run(main())
    assert len(writers.names()) == 50


async def _concurrent_reports(backend: Backend, user: str) -> None:
    app = create_app(Settings.from_env(database_url=backend.database_url, env={}))
    rng = random.Random(7)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
            token = (await client.post("/api/v1/auth/login", json={"username": user, "password": PASSWORD}
                                       )).json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            ids = []
            for n in range(10):
                created = await client.post("/api/v1/uploads", headers=headers, json={
                    "filename": f"f{n}", "bucket": "b", "key": f"k{n}", "total_bytes": 1000})
                assert created.status_code == 200, created.text
                ids.append(created.json()["id"])
            reports = [(upload_id, seq) for upload_id in ids for seq in range(1, 21)]
            rng.shuffle(reports)

            async def post(upload_id: str, seq: int) -> dict[str, Any]:
                answer = await client.post(f"/api/v1/uploads/{upload_id}/progress", headers=headers,
                                           json={"seq": seq, "status": "uploading", "bytes_done": seq * 10})
                assert answer.status_code == 200, answer.text
                body: dict[str, Any] = answer.json()
                return body

            answers = await asyncio.gather(*(post(upload_id, seq) for upload_id, seq in reports))
            state: ServerState = app.state.server
            accepted = {upload_id: 0 for upload_id in ids}
            for (upload_id, _), answer in zip(reports, answers, strict=True):
                accepted[upload_id] += not answer["ignored"]
            async with state.sessionmaker() as session:
                for upload_id in ids:
                    upload = await session.get(Upload, upload_id)
                    assert upload is not None
                    assert (upload.seq, upload.bytes_done) == (20, 200)  # the newest report wins
                    assert upload.version == 1 + accepted[upload_id]
                    samples = (await session.execute(select(func.count()).select_from(Sample).where(
                        Sample.upload_id == upload_id))).scalar_one()
                    assert samples == accepted[upload_id]  # one sample per accepted report (below the bound)


def test_concurrent_out_of_order_reports_end_with_the_newest(backend: Backend) -> None:
    user = "batch-ivan"  # a user of its own: other modules count the tokens of the shared ones
    done = cli("users", "add", user, "--password-stdin", "--database-url", backend.database_url,
               stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    try:
        asyncio.run(_concurrent_reports(backend, user))
    finally:
        removed = cli("users", "remove", user, "--database-url", backend.database_url)
        assert removed.returncode == 0, removed.stderr
