"""GraphQL against a real ``mpupload serve`` process (SQLite and PostgreSQL): queries, ``stopUpload`` and
the ``graphql-transport-ws`` subscriptions, with a real WebSocket client.

What the database decides (64-bit columns, history rows, the ``live`` timestamps, an end-to-end subscription) runs
on both databases; the protocol, authentication of the handshake and isolation on the bus do not depend on the
database and run on SQLite only (:data:`ONE_DB`): their SQL counterparts run on both in ``test_rest`` and
``test_functional``."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from .conftest import Backend, login, token_for
from .gqlws import UPLOAD_FIELDS, GqlWs, connect_rejected, gql_http
from .support import ServerProcess, start_server

pytestmark = pytest.mark.integration

T = TypeVar("T")
GiB = 1024**3

#: a test whose behaviour does not depend on the database: SQLite only
ONE_DB = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

PROGRESS = f"subscription($id: ID!) {{ uploadProgress(id: $id) {{ {UPLOAD_FIELDS} }} }}"
EVENTS = f"subscription {{ uploadEvents {{ {UPLOAD_FIELDS} }} }}"
STOP = "mutation($id: ID!) { stopUpload(id: $id) { id status stopRequested version } }"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def token(base_url: str, user: str) -> str:
    return token_for(base_url, user)["Authorization"].split()[1]


def create(server: ServerProcess, headers: dict[str, str], total: int = 100 * 1024**2, name: str = "data.bin",
           ) -> dict[str, Any]:
    body = {"filename": name, "bucket": "b", "key": f"k/{name}", "total_bytes": total, "part_size": 8 * 1024**2,
            "parts_total": 13, "host": "box"}
    response = httpx.post(f"{server.base_url}/api/v1/uploads", json=body, headers=headers)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


async def areport(client: httpx.AsyncClient, headers: dict[str, str], upload_id: str, seq: int, status: str,
                  done: int, **extra: Any) -> dict[str, Any]:
    body = {"seq": seq, "status": status, "bytes_done": done, "speed_bps": 2e6, "avg_speed_bps": 1e6,
            "eta_seconds": 4.0, "parts_done": 1, "elapsed_seconds": 1.5, **extra}
    response = await client.post(f"/api/v1/uploads/{upload_id}/progress", json=body, headers=headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_queries_round_trip_64_bit_bytes_and_history(server: ServerProcess) -> None:
    headers = token_for(server.base_url, "alice")
    total = 200 * GiB
    record = create(server, headers, total=total, name="huge.bin")

    async def body() -> None:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            await areport(client, headers, record["id"], 1, "uploading", 3 * GiB + 7)
            await areport(client, headers, record["id"], 2, "uploading", total - 1)
    run(body())
    query = f"query($id: ID!) {{ upload(id: $id) {{ {UPLOAD_FIELDS} history {{ at bytesDone speedBps }} }} }}"
    answer = gql_http(server.base_url, query, {"id": record["id"]}, headers)
    assert answer.status_code == 200 and "errors" not in answer.json(), answer.text
    upload = answer.json()["data"]["upload"]
    assert upload["totalBytes"] == total and upload["bytesDone"] == total - 1
    assert upload["status"] == "UPLOADING" and upload["live"] is True and upload["etaSeconds"] == 4.0
    assert upload["percent"] == pytest.approx(100.0 * (total - 1) / total)
    assert [h["bytesDone"] for h in upload["history"]] == [3 * GiB + 7, total - 1]
    listed = gql_http(server.base_url, "{ uploads { id totalBytes } }", headers=headers).json()["data"]["uploads"]
    assert {"id": record["id"], "totalBytes": total} in listed
    # the REST view agrees, byte for byte
    rest = httpx.get(f"{server.base_url}/api/v1/uploads/{record['id']}", headers=headers).json()
    assert rest["total_bytes"] == total and rest["bytes_done"] == total - 1


def test_int64_arguments_are_checked() -> None:
    from mpupload.server.graphql.types import _parse_int64

    assert _parse_int64(200 * GiB) == 200 * GiB and _parse_int64("5") == 5
    for bad in (2**63, -(2**63) - 1, 1.5, "x", True, None):
        with pytest.raises(ValueError):
            _parse_int64(bad)


@ONE_DB  # header checks; the token lookup itself runs on both in test_rest
@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic YWxpY2U6eA=="])
def test_graphql_over_http_needs_a_valid_token(server: ServerProcess, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    answer = gql_http(server.base_url, "{ uploads { id } }", headers=headers)
    assert answer.status_code == 401


@ONE_DB  # what is served at /graphql
def test_no_ide_is_served(server: ServerProcess) -> None:
    answer = httpx.get(f"{server.base_url}/graphql", headers={"Accept": "text/html"})
    assert answer.status_code != 200 or "cdn" not in answer.text.lower()


@ONE_DB  # the graphql-transport-ws handshake
@pytest.mark.parametrize(("payload", "code"), [
    ({"token": "nope"}, 4403), ({}, 4403), ({"token": 5}, 4403), ({"token": ""}, 4403),
    ({"token": "\ud800"}, 4403),  # a lone surrogate (sent as a JSON escape): refused, not a server error
    (None, 4400), ("junk", 4400),  # not an object: a protocol error before any token check
])
def test_websocket_with_a_bad_token_is_closed(server: ServerProcess, payload: Any, code: int) -> None:
    closed = run(connect_rejected(server.base_url, payload))
    assert closed.code == code


@ONE_DB  # the handshake; revocation itself runs on both in test_rest
def test_revoked_token_cannot_connect(server: ServerProcess) -> None:
    tok = token(server.base_url, "alice")
    assert httpx.post(f"{server.base_url}/api/v1/auth/logout",
                      headers={"Authorization": f"Bearer {tok}"}).status_code == 200
    assert run(connect_rejected(server.base_url, {"token": tok})).code == 4403


def test_upload_progress_sends_state_first_then_every_change(server: ServerProcess) -> None:
    tok = token(server.base_url, "alice")
    headers = {"Authorization": f"Bearer {tok}"}
    record = create(server, headers, total=300 * GiB)

    async def body() -> None:
        async with GqlWs(server.base_url, tok) as ws, httpx.AsyncClient(base_url=server.base_url) as client:
            assert ws.ack == {"username": "alice"}
            await areport(client, headers, record["id"], 1, "uploading", GiB)  # before subscribing
            op = await ws.subscribe(PROGRESS, {"id": record["id"]})
            first = (await ws.next(op))["uploadProgress"]
            assert first["status"] == "UPLOADING" and first["bytesDone"] == GiB and first["totalBytes"] == 300 * GiB
            seen = [first["bytesDone"]]
            for seq, done in ((2, 2 * GiB), (3, 250 * GiB)):
                await areport(client, headers, record["id"], seq, "uploading", done)
                seen.append((await ws.next(op))["uploadProgress"]["bytesDone"])
            assert seen == [GiB, 2 * GiB, 250 * GiB]
            stale = await areport(client, headers, record["id"], 2, "uploading", 5)
            assert stale["ignored"] is True
            assert await ws.silent(op, 0.5)  # a stale report changes nothing and sends nothing
            await areport(client, headers, record["id"], 4, "finalizing", 300 * GiB)
            final = await areport(client, headers, record["id"], 5, "completed", 300 * GiB, checksum="abc==",
                                  etag='"e-1"')
            assert final["ignored"] is False
            finalizing = (await ws.next(op))["uploadProgress"]
            done = (await ws.next(op))["uploadProgress"]
            assert finalizing["status"] == "FINALIZING"
            assert done["status"] == "COMPLETED" and done["checksum"] == "abc==" and done["live"] is False
            assert done["version"] > finalizing["version"] > first["version"]
    run(body())


@ONE_DB  # the bus and resolvers; owner filtering in SQL runs on both in test_rest
def test_subscriptions_never_cross_users(server: ServerProcess) -> None:
    alice_tok, bob_tok = token(server.base_url, "alice"), token(server.base_url, "bob")
    alice, bob = {"Authorization": f"Bearer {alice_tok}"}, {"Authorization": f"Bearer {bob_tok}"}
    bobs = create(server, bob, name="bob.bin")

    async def body() -> None:
        async with GqlWs(server.base_url, alice_tok) as ws, httpx.AsyncClient(base_url=server.base_url) as client:
            # uploadProgress on bob's upload, or on none at all: the same "not found"
            for upload_id in (bobs["id"], "does-not-exist"):
                op = await ws.subscribe(PROGRESS, {"id": upload_id})
                message = await ws.message(op)
                assert message["type"] in ("error", "next"), message
                errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
                assert "no upload" in errors[0]["message"] and bobs["filename"] not in str(message)
            events = await ws.subscribe(EVENTS)
            await areport(client, bob, bobs["id"], 1, "uploading", 10)
            mine = create(server, alice, name="alice.bin")
            got = (await ws.next(events))["uploadEvents"]
            while got["id"] != mine["id"]:  # alice's earlier active uploads come first
                assert got["id"] != bobs["id"]
                got = (await ws.next(events))["uploadEvents"]
            # bob's report came before alice's new upload, and never reached alice
            await areport(client, bob, bobs["id"], 2, "uploading", 20)
            await areport(client, alice, mine["id"], 1, "uploading", 30)
            got = (await ws.next(events))["uploadEvents"]
            assert got["id"] == mine["id"] and got["bytesDone"] == 30
            # queries and the mutation: bob's upload does not exist for alice
            for query, variables in (("query($id: ID!) { upload(id: $id) { id } }", {"id": bobs["id"]}),):
                answer = gql_http(server.base_url, query, variables, alice).json()
                assert answer["data"]["upload"] is None
            listed = gql_http(server.base_url, "{ uploads { id } }", headers=alice).json()["data"]["uploads"]
            assert bobs["id"] not in {u["id"] for u in listed}
            stop = gql_http(server.base_url, STOP, {"id": bobs["id"]}, alice).json()
            assert stop["data"] is None and "no upload" in stop["errors"][0]["message"]
            assert stop["errors"][0]["extensions"]["code"] == "NOT_FOUND"
            check = httpx.get(f"{server.base_url}/api/v1/uploads/{bobs['id']}", headers=bob).json()
            assert check["stop_requested"] is False
    run(body())


@ONE_DB  # the mutation and its stream; the stop action in SQL runs on both in test_functional
def test_stop_upload_sets_the_stop_action_and_is_streamed(server: ServerProcess) -> None:
    tok = token(server.base_url, "carol")
    headers = {"Authorization": f"Bearer {tok}"}
    record = create(server, headers)

    async def body() -> None:
        async with GqlWs(server.base_url, tok) as ws, httpx.AsyncClient(base_url=server.base_url) as client:
            await areport(client, headers, record["id"], 1, "uploading", 10)
            events = await ws.subscribe(EVENTS)
            first = (await ws.next(events))["uploadEvents"]  # the active uploads' current state comes first
            while first["id"] != record["id"]:
                first = (await ws.next(events))["uploadEvents"]
            assert first["stopRequested"] is False
            answer = gql_http(server.base_url, STOP, {"id": record["id"]}, headers).json()
            assert answer["data"]["stopUpload"]["stopRequested"] is True, answer
            streamed = (await ws.next(events))["uploadEvents"]
            assert streamed["stopRequested"] is True and streamed["version"] == answer["data"]["stopUpload"]["version"]
            assert (await areport(client, headers, record["id"], 2, "uploading", 20))["action"] == "stop"
            after = await areport(client, headers, record["id"], 3, "stopped", 20)
            assert "action" not in after
            stopped = (await ws.next(events))["uploadEvents"]
            while stopped["status"] != "STOPPED":
                stopped = (await ws.next(events))["uploadEvents"]
            assert stopped["stopRequested"] is False and stopped["live"] is False
            again = gql_http(server.base_url, STOP, {"id": record["id"]}, headers).json()["data"]["stopUpload"]
            assert again["status"] == "STOPPED" and again["stopRequested"] is False  # nothing left to stop
    run(body())


@pytest.fixture(scope="module")
def quick_server(backend: Backend) -> Any:
    """A server where uploads go quiet after 1 s and WebSocket tokens are re-checked every 0.3 s."""
    proc = start_server(backend.database_url, backend.tmp,
                        env={"MPUPLOAD_LIVE_AFTER": "1", "MPUPLOAD_TOKEN_RECHECK": "0.3"})
    try:
        yield proc
    finally:
        proc.stop()


def test_live_turns_false_when_reports_stop(quick_server: ServerProcess) -> None:
    tok = token(quick_server.base_url, "grace")
    headers = {"Authorization": f"Bearer {tok}"}
    record = create(quick_server, headers)

    async def body() -> None:
        async with GqlWs(quick_server.base_url, tok) as ws, httpx.AsyncClient(base_url=quick_server.base_url) as c:
            progress = await ws.subscribe(PROGRESS, {"id": record["id"]})
            events = await ws.subscribe(EVENTS)
            assert (await ws.next(progress))["uploadProgress"]["live"] is True  # just created
            await areport(c, headers, record["id"], 1, "uploading", 10)
            for op, field in ((progress, "uploadProgress"), (events, "uploadEvents")):
                got = (await ws.next(op))[field]
                while got["version"] < 2:
                    got = (await ws.next(op))[field]
                assert got["live"] is True and got["bytesDone"] == 10
            # no more reports: both streams say so on their own, without any new report
            for op, field in ((progress, "uploadProgress"), (events, "uploadEvents")):
                quiet = (await ws.next(op, timeout=10))[field]
                assert quiet["live"] is False and quiet["status"] == "UPLOADING" and quiet["bytesDone"] == 10
            assert await ws.silent(progress, 1.5)  # said once
            await areport(c, headers, record["id"], 2, "uploading", 20)
            back = (await ws.next(progress))["uploadProgress"]
            assert back["live"] is True and back["bytesDone"] == 20
    run(body())
    rest = httpx.get(f"{quick_server.base_url}/api/v1/uploads/{record['id']}", headers=headers).json()
    assert rest["live"] in (True, False)  # the REST view computes it too


@ONE_DB  # the re-check timer of an open WebSocket
def test_a_revoked_token_ends_the_websocket(quick_server: ServerProcess) -> None:
    response = login(quick_server.base_url, "grace")
    tok = response.json()["token"]

    async def body() -> None:
        async with GqlWs(quick_server.base_url, tok) as ws:
            await ws.subscribe(EVENTS)
            assert httpx.post(f"{quick_server.base_url}/api/v1/auth/logout",
                              headers={"Authorization": f"Bearer {tok}"}).status_code == 200
            closed = await ws.closed(timeout=10)
            assert closed.code == 4403
    run(body())


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the bound is the server's: checked once
def test_a_subscriber_that_stops_reading_costs_bounded_memory(server: ServerProcess, backend: Backend) -> None:
    """A subscriber that stops reading (its TCP window fills up) must not make the server queue every event:
    the server keeps at most the bus buffer per subscription, latest state per upload, and once the client
    reads again the last state it gets is the newest one."""
    tok = token(server.base_url, "carol")
    headers = {"Authorization": f"Bearer {tok}"}
    record = create(server, headers, total=10**12)
    big = secrets.token_urlsafe(48_000)  # every event carries 64 kB (an error's limit) that do not compress
    reports = 600  # 38 MB of events if the server queued them all; it holds 16 (MPUPLOAD_SUBSCRIBER_BUFFER)

    async def body() -> None:
        from websockets.asyncio.client import connect

        url = server.base_url.replace("http://", "ws://") + "/graphql"
        async with connect(url, subprotocols=["graphql-transport-ws"], max_queue=1,  # type: ignore[list-item]
                           max_size=None, open_timeout=15) as ws, \
                httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            import json

            await ws.send(json.dumps({"type": "connection_init", "payload": {"token": tok}}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "connection_ack"
            query = "subscription($id: ID!) { uploadProgress(id: $id) { bytesDone error version } }"
            await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                      "payload": {"query": query, "variables": {"id": record["id"]}}}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 15))["payload"]["data"]["uploadProgress"]
            before = _rss_bytes(server.proc.pid)
            for seq in range(1, reports + 1):  # the client reads nothing meanwhile
                await areport(client, headers, record["id"], seq, "uploading", seq, error=big)
            grown = _rss_bytes(server.proc.pid) - before
            last: dict[str, Any] = {}
            received = 0
            while last.get("bytesDone") != reports:
                message = json.loads(await asyncio.wait_for(ws.recv(), 15))
                if message.get("type") == "ping":
                    continue
                last = message["payload"]["data"]["uploadProgress"]
                received += 1
            assert grown < 20 * 1024**2, f"server grew {grown / 1024**2:.0f} MiB for a paused subscriber"
            assert received < reports, "every event was queued for the paused subscriber"
            print(f"paused subscriber: server grew {grown / 1024**2:.1f} MiB, got {received} of {reports} events")
    run(body())


@ONE_DB  # what the server log says about the answers it gives on purpose
def test_expected_errors_are_answered_not_logged(server: ServerProcess) -> None:
    tok = token(server.base_url, "alice")
    before = server.log.read_text(errors="replace")
    marker = "no-such-upload-" + secrets.token_hex(4)
    answer = gql_http(server.base_url, "mutation($id: ID!) { stopUpload(id: $id) { id } }", {"id": marker},
                      headers={"Authorization": f"Bearer {tok}"})
    assert answer.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    bad = gql_http(server.base_url, "{ nosuchfield }", headers={"Authorization": f"Bearer {tok}"})
    assert bad.json()["errors"]
    healthy = httpx.get(f"{server.base_url}/healthz")  # the log is written before the next answer
    assert healthy.status_code == 200
    added = server.log.read_text(errors="replace")[len(before):]
    assert marker not in added and "Traceback" not in added and "nosuchfield" not in added, added
