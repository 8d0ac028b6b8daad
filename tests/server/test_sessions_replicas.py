"""Revocation across replicas, and forged broker messages, on the Redis and the PostgreSQL buses.

Two ``mpupload serve`` processes share a PostgreSQL database and a private broker. Their periodic token
re-check is set to a minute, so only the bus can end a socket within 5 s:

* a logout on replica A closes the subscriber's socket on replica B with 4403 within 5 s, while a producer
  keeps reporting on A;
* ``mpupload users revoke`` (another process, ``MPUPLOAD_BROKER_URL`` set) does the same for every token;
* a message published straight on the broker (Redis ``PUBLISH``, PostgreSQL ``NOTIFY``), shaped exactly like
  a genuine upload event but without the signature only replicas can make, reaches no subscriber (and is
  logged), while a genuine report right after it does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from mpupload.server.bus.pg import channel_ident

from .brokers import PrivatePostgres, PrivateRedis
from .gqlws import GqlWs
from .sessions_support import (
    CLOSE_WITHIN_S,
    EVENTS,
    Producer,
    add_user,
    closed_within,
    create_upload,
    events_flow,
    producing,
    sign_in,
    users,
)
from .support import ServerProcess, create_pg_database, drop_pg_database, start_server

pytestmark = pytest.mark.integration

#: long enough that only a bus message can close a socket within CLOSE_WITHIN_S
SLOW_RECHECK = {"MPUPLOAD_TOKEN_RECHECK": "60"}


@dataclass
class Cluster:
    kind: str
    database: str
    broker_url: str
    a: ServerProcess
    b: ServerProcess


@pytest.fixture(scope="module", params=["redis", "postgresql"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp(f"replicas-{request.param}")
    database = create_pg_database()
    broker: PrivateRedis | PrivatePostgres = PrivateRedis() if request.param == "redis" else PrivatePostgres()
    broker_url = broker.url if isinstance(broker, PrivateRedis) else broker.dsn
    replicas: list[ServerProcess] = []
    try:
        add_user(database, "seed")
        replicas = [start_server(database, tmp, "--broker-url", broker_url, env=SLOW_RECHECK) for _ in range(2)]
        yield Cluster(request.param, database, broker_url, *replicas)
    finally:
        for replica in replicas:
            replica.stop()
        broker.stop()
        drop_pg_database(database)
    for replica in replicas:
        assert "Traceback" not in replica.log.read_text(), replica.log.read_text()[-3000:]


@pytest.mark.parametrize("how", ["logout", "revoke"])
def test_revocation_on_one_replica_closes_the_socket_on_the_other(cluster: Cluster, how: str) -> None:
    name = add_user(cluster.database)
    watched = sign_in(cluster.a.base_url, name)
    producer = Producer(cluster.a.base_url, name, create_upload(cluster.a.base_url, watched)["id"],
                        sign_in(cluster.a.base_url, name))

    async def body() -> None:
        async with GqlWs(cluster.b.base_url, watched) as ws, producing(producer):
            op = await ws.subscribe(EVENTS)
            await events_flow(ws, op)  # reports on A reach the subscriber on B
            if how == "logout":
                answer = await asyncio.to_thread(httpx.post, f"{cluster.a.base_url}/api/v1/auth/logout",
                                                 headers={"Authorization": f"Bearer {watched}"})
                assert answer.status_code == 200
            else:
                await asyncio.to_thread(users, cluster.database, "revoke", name,
                                        env={"MPUPLOAD_BROKER_URL": cluster.broker_url})
            done = time.monotonic()
            closed, took = await closed_within(ws, CLOSE_WITHIN_S)
            assert closed.code == 4403, closed
            print(f"{cluster.kind} {how}: the socket on B closed {took:.2f} s later")
            await asyncio.sleep(0.3)
            assert producer.accepted_after(done) > 0  # events kept flowing

    asyncio.run(body())


async def _forge(cluster: Cluster, user_id: int, payload: dict[str, Any]) -> None:
    if cluster.kind == "redis":
        client = Redis.from_url(cluster.broker_url)
        try:
            assert await client.publish(f"mpupload:{user_id}", json.dumps(payload)) >= 2  # both replicas listen
        finally:
            await client.aclose()
    else:
        conn = await asyncpg.connect(cluster.broker_url)
        try:
            await conn.execute("SELECT pg_notify($1, $2)", channel_ident(str(user_id)),
                               json.dumps({"c": str(user_id), "p": payload}))
        finally:
            await conn.close()


def test_a_forged_broker_message_reaches_no_subscriber(cluster: Cluster) -> None:
    name = add_user(cluster.database)
    token = sign_in(cluster.a.base_url, name)
    headers = {"Authorization": f"Bearer {token}"}
    user_id = httpx.get(f"{cluster.a.base_url}/api/v1/me", headers=headers).json()["id"]
    record = create_upload(cluster.a.base_url, token)

    async def body() -> None:
        async with GqlWs(cluster.b.base_url, token) as ws, httpx.AsyncClient(base_url=cluster.a.base_url) as client:
            op = await ws.subscribe(EVENTS)
            assert (await ws.next(op))["uploadEvents"]["id"] == record["id"]  # the state first
            forged = {**record, "filename": "forged.bin", "bytes_done": 12345, "version": record["version"] + 1000}
            await _forge(cluster, user_id, forged)
            assert await ws.silent(op, 2.0)  # nothing: the forged row never shows
            answer = await client.post(f"/api/v1/uploads/{record['id']}/progress", headers=headers,
                                       json={"seq": 1, "status": "uploading", "bytes_done": 777})
            assert answer.status_code == 200, answer.text
            genuine = (await ws.next(op, timeout=5))["uploadEvents"]
            assert genuine["bytesDone"] == 777 and genuine["filename"] == record["filename"]

    asyncio.run(body())
    deadline = time.monotonic() + 5
    while "signature" not in cluster.b.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "missing or bad signature" in cluster.b.log.read_text()


def test_replicas_share_one_signing_key(cluster: Cluster, tmp_path: Path) -> None:
    """A third replica started later signs with the same key: its events reach a subscriber on A."""
    name = add_user(cluster.database)
    token = sign_in(cluster.a.base_url, name)
    record = create_upload(cluster.a.base_url, token)
    late = start_server(cluster.database, tmp_path, "--broker-url", cluster.broker_url, env=SLOW_RECHECK)
    try:
        async def body() -> None:
            async with GqlWs(cluster.a.base_url, token) as ws, producing(
                    Producer(late.base_url, name, record["id"], token)):
                await events_flow(ws, await ws.subscribe(EVENTS))

        asyncio.run(body())
    finally:
        late.stop()
