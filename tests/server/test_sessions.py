"""Revoked means revoked, while events flow (one real server, SQLite, no broker):

* logout, ``mpupload users revoke``, ``users passwd``, ``users remove`` and expiry each close the open
  WebSocket of that token with 4403 within 5 s, while a producer keeps reporting progress on the user's
  upload (signing in again with a fresh token when its own is revoked), so the stream never goes quiet;
* ids are never reused: a socket opened by a user who is then removed sees nothing of the next user created
  (who, on SQLite without AUTOINCREMENT, got the same id), and is closed.

The ``users`` commands run in another process, with no broker: the server notices through its periodic
re-check of every socket's token row (``MPUPLOAD_TOKEN_RECHECK``, 2 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from .conftest import PASSWORD
from .gqlws import GqlWs
from .sessions_support import (
    CLOSE_WITHIN_S,
    EVENTS,
    Producer,
    add_user,
    closed_within,
    create_upload,
    events_flow,
    everything_until_closed,
    producing,
    sign_in,
    users,
)
from .support import ServerProcess, start_server

pytestmark = pytest.mark.integration

TTL_S = 4.0


@pytest.fixture(scope="module")
def sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """A real server on a fresh SQLite database, default settings (no broker, re-check every 2 s)."""
    tmp = tmp_path_factory.mktemp("sessions")
    url = f"sqlite:///{tmp / 'server.db'}"
    add_user(url, "seed")
    server = start_server(url, tmp)
    try:
        yield server, url
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text(), server.log.read_text()[-3000:]


@pytest.mark.parametrize("how", ["logout", "revoke", "passwd", "remove"])
def test_revocation_closes_the_socket_while_events_flow(sqlite: tuple[ServerProcess, str], how: str) -> None:
    server, url = sqlite
    name = add_user(url)
    watched = sign_in(server.base_url, name)
    producer = Producer(server.base_url, name, create_upload(server.base_url, watched)["id"],
                        sign_in(server.base_url, name), relogin=how != "remove")

    async def body() -> None:
        async with GqlWs(server.base_url, watched) as ws, producing(producer):
            op = await ws.subscribe(EVENTS)
            await events_flow(ws, op)
            if how == "logout":
                answer = await asyncio.to_thread(httpx.post, f"{server.base_url}/api/v1/auth/logout",
                                                 headers={"Authorization": f"Bearer {watched}"})
                assert answer.status_code == 200
            elif how == "passwd":
                await asyncio.to_thread(users, url, "passwd", name, "--password-stdin", stdin=PASSWORD + "\n")
            else:
                await asyncio.to_thread(users, url, how, name)
            done = time.monotonic()
            closed, took = await closed_within(ws, CLOSE_WITHIN_S)
            assert closed.code == 4403, closed
            print(f"{how}: closed {took:.2f} s after the command returned")
            if how != "remove":  # events kept flowing: the producer's reports were accepted all along
                await asyncio.sleep(0.3)
                assert producer.accepted_after(done) > 0

    asyncio.run(body())


@pytest.fixture(scope="module")
def short_ttl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    tmp = tmp_path_factory.mktemp("sessions-ttl")
    url = f"sqlite:///{tmp / 'server.db'}"
    add_user(url, "seed")
    server = start_server(url, tmp, env={"MPUPLOAD_TOKEN_TTL": str(TTL_S)})
    try:
        yield server, url
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text(), server.log.read_text()[-3000:]


def test_expiry_closes_the_socket_while_events_flow(short_ttl: tuple[ServerProcess, str]) -> None:
    server, url = short_ttl
    name = add_user(url)
    watched = sign_in(server.base_url, name)
    expires = time.monotonic() + TTL_S
    producer = Producer(server.base_url, name, create_upload(server.base_url, watched)["id"],
                        sign_in(server.base_url, name))  # signs in again whenever its own token expires

    async def body() -> None:
        async with GqlWs(server.base_url, watched) as ws, producing(producer):
            op = await ws.subscribe(EVENTS)
            await events_flow(ws, op)
            closed = await ws.closed(timeout=max(0.1, expires + CLOSE_WITHIN_S - time.monotonic()))
            assert closed.code == 4403, closed
            assert time.monotonic() >= expires - 0.5  # not before its time
            await asyncio.sleep(0.3)
            assert producer.accepted_after(expires) > 0  # events were flowing past the expiry

    asyncio.run(body())


def test_a_removed_users_socket_never_sees_the_next_user(tmp_path: Path) -> None:
    """On a database whose newest user is removed, the next user created gets a new id, and the removed
    user's open socket sees nothing of them: not their uploads in a query, not their events."""
    url = f"sqlite:///{tmp_path / 'server.db'}"
    add_user(url, "old")  # the only user: the highest id, which SQLite without AUTOINCREMENT hands out again
    server = start_server(url, tmp_path)
    try:
        old = sign_in(server.base_url, "old")
        old_id = httpx.get(f"{server.base_url}/api/v1/me", headers={"Authorization": f"Bearer {old}"}).json()["id"]

        async def body() -> None:
            async with GqlWs(server.base_url, old) as ws:
                op = await ws.subscribe(EVENTS)
                assert await ws.silent(op, 0.5)  # no uploads yet
                await asyncio.to_thread(users, url, "remove", "old")
                await asyncio.to_thread(add_user, url, "new")
                new = await asyncio.to_thread(sign_in, server.base_url, "new")
                me = httpx.get(f"{server.base_url}/api/v1/me", headers={"Authorization": f"Bearer {new}"}).json()
                assert me["id"] != old_id  # never reused
                record = await asyncio.to_thread(create_upload, server.base_url, new, "secret-of-new.bin")
                async with producing(Producer(server.base_url, "new", record["id"], new)):
                    with contextlib.suppress(ConnectionClosed):  # unless the socket is closed already
                        await ws.subscribe("{ uploads { id filename } }")
                    received, closed = await everything_until_closed(ws, CLOSE_WITHIN_S)
                assert closed.code == 4403, closed
                text = json.dumps(received)
                assert "secret-of-new" not in text and record["id"] not in text, received

        asyncio.run(body())
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text(), server.log.read_text()[-3000:]
