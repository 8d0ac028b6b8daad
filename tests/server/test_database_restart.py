"""The server's PostgreSQL is killed (``kill -9``) and restarted under a running server.

While the database is down a progress report (and any other request that needs the database) gets a 503
with ``Retry-After`` that says to retry (the CLI's sender retries), not a 500 with a traceback; the server
stays up; once the database is back the next report is accepted, on a pool that reconnected by itself, and
nothing accepted before the outage is lost. A GraphQL subscription open across the outage stays open and
carries the reports made after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mpupload.server.graphql.schema import UNAVAILABLE_MESSAGE

from .brokers import PrivatePostgres
from .conftest import PASSWORD
from .gqlws import UPLOAD_FIELDS, Closed, GqlWs
from .support import ServerProcess, cli, start_server

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres(durable=True)  # what was committed survives the kill -9
    try:
        yield pg
    finally:
        pg.stop()


@dataclass
class Served:
    """A server on the private database, signed in as ``dora``, with one upload record."""

    server: ServerProcess
    token: str
    record: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def report(self, seq: int) -> httpx.Response:
        return httpx.post(f"{self.server.base_url}/api/v1/uploads/{self.record['id']}/progress",
                          headers=self.headers, timeout=15,
                          json={"seq": seq, "status": "uploading", "bytes_done": seq * 1000})


@contextlib.contextmanager
def serving(pg: PrivatePostgres, tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[Served]:
    done = cli("users", "add", "dora", "--password-stdin", "--database-url", pg.dsn, stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    server = start_server(pg.dsn, tmp_path, env=env)
    try:
        base = server.base_url
        token = httpx.post(f"{base}/api/v1/auth/login", json={"username": "dora", "password": PASSWORD}).json()["token"]
        record = httpx.post(f"{base}/api/v1/uploads", headers={"Authorization": f"Bearer {token}"}, json={
            "filename": "f.bin", "bucket": "b", "key": "k", "total_bytes": 10**9}).json()
        yield Served(server, token, record)
    finally:
        server.stop()


def test_reports_through_a_database_restart(private_pg: PrivatePostgres, tmp_path: Path) -> None:
    with serving(private_pg, tmp_path) as served:
        server, base, headers, record, report = (served.server, served.server.base_url, served.headers,
                                                 served.record, served.report)
        assert report(1).status_code == 200

        private_pg.kill()
        for seq in (2, 3):  # a pooled connection that died, then no database to connect to
            down = report(seq)
            assert down.status_code == 503, down.text
            assert "retry" in down.json()["detail"]
            assert down.headers.get("retry-after")
        for path, body in (("/api/v1/uploads", {"filename": "g", "bucket": "b", "key": "g", "total_bytes": 1}),
                           ("/api/v1/auth/login", {"username": "dora", "password": PASSWORD}),
                           ("/graphql", {"query": "{ uploads { id bytesDone } }"})):
            other = httpx.post(f"{base}{path}", headers=headers, json=body, timeout=15)  # the other routes too
            assert other.status_code == 503 and other.headers.get("retry-after"), (path, other.text)
        assert server.proc.poll() is None  # the server is still up

        private_pg.start()
        end = time.monotonic() + DEADLINE_S
        seq = 4
        while (answer := report(seq)).status_code != 200:
            assert answer.status_code == 503, answer.text
            assert time.monotonic() < end, "reports still refused after the database came back"
            seq += 1
            time.sleep(0.1)
        assert answer.json()["ignored"] is False
        assert report(seq + 1).status_code == 200  # and the next one at once: the pool is healthy again
        now = httpx.get(f"{base}/api/v1/uploads/{record['id']}", headers=headers).json()
        assert (now["seq"], now["bytes_done"]) == (seq + 1, (seq + 1) * 1000)
        assert now["status"] == "uploading"
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "database unavailable" in log  # one line per refused report says why


PROGRESS = f"subscription($id: ID!) {{ uploadProgress(id: $id) {{ {UPLOAD_FIELDS} }} }}"
EVENTS = f"subscription {{ uploadEvents {{ {UPLOAD_FIELDS} }} }}"


def test_subscriptions_stay_open_through_a_database_restart(private_pg: PrivatePostgres, tmp_path: Path) -> None:
    # the streams re-check the token every 0.3 s: during the outage each of them meets the dead database
    with serving(private_pg, tmp_path, env={"MPUPLOAD_TOKEN_RECHECK": "0.3"}) as served:
        server, base, token, record = served.server, served.server.base_url, served.token, served.record

        def report(seq: int) -> int:
            return served.report(seq).status_code

        async def until(ws: GqlWs, op: str, field: str, done: int) -> dict[str, Any]:
            end = time.monotonic() + DEADLINE_S
            while True:  # ws.next fails on an error or a completion: the subscription must stay open
                got: dict[str, Any] = (await ws.next(op, timeout=max(0.1, end - time.monotonic())))[field]
                if got["bytesDone"] == done:
                    return got

        async def body() -> None:
            assert report(1) == 200
            async with GqlWs(base, token) as ws:
                one = await ws.subscribe(PROGRESS, {"id": record["id"]})
                every = await ws.subscribe(EVENTS)
                await until(ws, one, "uploadProgress", 1000)
                await until(ws, every, "uploadEvents", 1000)

                await asyncio.to_thread(private_pg.kill)
                end = time.monotonic() + DEADLINE_S
                # the open streams met the outage: a stream's read, or its token re-check, found the database gone
                # (which one comes first depends on the bus and the load: the re-check runs every 0.3 s here)
                while not any(line in server.log.read_text() for line in ("a subscription re-reads",
                                                                          "token re-check retried")):
                    assert time.monotonic() < end, "no stream noticed the database outage"
                    await asyncio.sleep(0.1)
                late_one = await ws.subscribe(PROGRESS, {"id": record["id"]})  # subscribed while it is down
                query = await ws.subscribe("{ uploads { id bytesDone } }")  # a query on the open connection
                answer = await ws.message(query)
                assert UNAVAILABLE_MESSAGE in str(answer) and "UNAVAILABLE" in str(answer), answer
                assert "SQL" not in str(answer) and "token" not in str(answer), answer  # no SQL, no parameters
                with pytest.raises(Closed) as late:  # a connection made while it is down: "try again later"
                    async with GqlWs(base, token):
                        pass
                assert late.value.code == 1013, late.value
                await asyncio.to_thread(private_pg.start)

                seq = 2
                while (status := await asyncio.to_thread(report, seq)) != 200:
                    assert status == 503 and time.monotonic() < end + DEADLINE_S, status
                    seq += 1
                    await asyncio.sleep(0.1)
                got = await until(ws, one, "uploadProgress", seq * 1000)
                assert got["live"] is True and got["status"] == "UPLOADING"
                await until(ws, every, "uploadEvents", seq * 1000)
                await until(ws, late_one, "uploadProgress", seq * 1000)  # its first state came once it was back

        asyncio.run(body())
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
