"""Two ``mpupload serve`` processes that share only the database and the broker, for each broker backend:
a report posted to replica A reaches a GraphQL subscriber on replica B; the broker is killed (-9) and
restarted, reports keep being accepted meanwhile, the subscriber catches up with what it missed (a re-read
after the reconnect), and events flow again. The broker is a private instance on a free port; the
database is a fresh database on the machine's PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .brokers import PrivatePostgres, PrivateRedis
from .conftest import PASSWORD
from .gqlws import UPLOAD_FIELDS, GqlWs
from .support import ServerProcess, cli, create_pg_database, drop_pg_database, start_server

pytestmark = pytest.mark.integration

PROGRESS = f"subscription($id: ID!) {{ uploadProgress(id: $id) {{ {UPLOAD_FIELDS} }} }}"
EVENTS = f"subscription {{ uploadEvents {{ {UPLOAD_FIELDS} }} }}"
DEADLINE_S = 30.0
#: a report reaches the subscriber on the other replica within this (milliseconds when all is well)
EVENT_S = 5.0


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    url = create_pg_database()
    try:
        done = cli("users", "add", "ann", "--password-stdin", "--database-url", url, stdin=PASSWORD + "\n")
        assert done.returncode == 0, done.stderr
        yield url
    finally:
        drop_pg_database(url)


@pytest.mark.parametrize("kind", ["redis", "postgresql"])
def test_report_on_a_reaches_subscriber_on_b_across_a_broker_restart(kind: str, database: str,
                                                                      tmp_path: Path) -> None:
    broker: PrivateRedis | PrivatePostgres = PrivateRedis() if kind == "redis" else PrivatePostgres()
    broker_url = broker.url if isinstance(broker, PrivateRedis) else broker.dsn
    replicas: list[ServerProcess] = []
    try:
        replicas = [start_server(database, tmp_path, "--broker-url", broker_url) for _ in range(2)]
        a, b = replicas
        login = httpx.post(f"{a.base_url}/api/v1/auth/login", json={"username": "ann", "password": PASSWORD})
        token = login.json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        record = httpx.post(f"{a.base_url}/api/v1/uploads", headers=headers, json={
            "filename": "f.bin", "bucket": "b", "key": "k", "total_bytes": 10**12}).json()
        seq = iter(range(1, 10**6))

        async def report(client: httpx.AsyncClient, done: int) -> None:
            answer = await client.post(f"/api/v1/uploads/{record['id']}/progress", headers=headers,
                                       json={"seq": next(seq), "status": "uploading", "bytes_done": done})
            assert answer.status_code == 200, answer.text  # a broker outage never fails ingestion

        async def until(ws: GqlWs, op: str, field: str, done: int, deadline: float = DEADLINE_S) -> dict[str, Any]:
            end = time.monotonic() + deadline
            while True:
                got: dict[str, Any] = (await ws.next(op, timeout=max(0.1, end - time.monotonic())))[field]
                if got["bytesDone"] == done:
                    return got

        async def body() -> None:
            async with GqlWs(b.base_url, token) as ws, httpx.AsyncClient(base_url=a.base_url) as client:
                progress = await ws.subscribe(PROGRESS, {"id": record["id"]})
                events = await ws.subscribe(EVENTS)
                assert (await ws.next(progress))["uploadProgress"]["bytesDone"] == 0  # the state first
                await report(client, 1000)
                await until(ws, progress, "uploadProgress", 1000)
                await until(ws, events, "uploadEvents", 1000)

                await asyncio.to_thread(broker.kill)
                await report(client, 2000)  # published into the void: lost by the broker
                await asyncio.to_thread(broker.start)
                t0 = time.monotonic()
                # the reconnect makes replica B re-read the record: the lost report shows up by itself
                caught_up = await until(ws, progress, "uploadProgress", 2000)
                await until(ws, events, "uploadEvents", 2000)
                took = time.monotonic() - t0
                assert caught_up["live"] is True
                # and events flow again: a report is an event on B at once, not a re-read when it goes quiet
                # (MPUPLOAD_LIVE_AFTER, 30 s, would deliver its bytes too: that must not count here)
                # (the first publish after a restart may meet a pooled connection to the old broker: retried)
                await report(client, 3000)
                flowing = await until(ws, progress, "uploadProgress", 3000, EVENT_S)
                assert flowing["live"] is True
                await until(ws, events, "uploadEvents", 3000, EVENT_S)
                print(f"{kind}: subscriber on B caught up {took:.2f}s after the broker restarted")

        asyncio.run(body())
    finally:
        for replica in replicas:
            replica.stop()
        broker.stop()
    for replica in replicas:
        assert "Traceback" not in replica.log.read_text(), replica.log.read_text()[-3000:]
