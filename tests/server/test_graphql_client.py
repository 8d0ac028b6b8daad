"""The GraphQL WebSocket protocol, driven by a client library written elsewhere (gql, graphql-transport-ws)
rather than by our own test client: against a real server, a subscription gets the state first then every
change, queries and ``stopUpload`` run on the same connection, an operation over the per-socket cap is
refused with an error, and a logout ends the connection with 4403 within 5 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportConnectionFailed, TransportError, TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from websockets.exceptions import ConnectionClosed

from .gqlws import UPLOAD_FIELDS
from .sessions_support import CLOSE_WITHIN_S, add_user, create_upload, sign_in
from .support import ServerProcess, start_server

pytestmark = pytest.mark.integration

PROGRESS = f"subscription($id: ID!) {{ uploadProgress(id: $id) {{ {UPLOAD_FIELDS} }} }}"
EVENTS = "subscription { uploadEvents { id bytesDone } }"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("gql-client")
    url = f"sqlite:///{tmp / 'server.db'}"
    add_user(url, "ann")
    server = start_server(url, tmp)
    try:
        yield server
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text(), server.log.read_text()[-3000:]


def _client(server: ServerProcess, token: str) -> Client:
    transport = WebsocketsTransport(url=server.base_url.replace("http://", "ws://") + "/graphql",
                                    init_payload={"token": token},
                                    subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL])
    return Client(transport=transport, fetch_schema_from_transport=False, execute_timeout=10)


async def _report(server: ServerProcess, token: str, upload_id: str, seq: int, done: int) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        answer = await client.post(f"/api/v1/uploads/{upload_id}/progress",
                                   headers={"Authorization": f"Bearer {token}"},
                                   json={"seq": seq, "status": "uploading", "bytes_done": done})
        assert answer.status_code == 200, answer.text


def test_subscription_query_and_mutation_through_gql(served: ServerProcess) -> None:
    token = sign_in(served.base_url, "ann")
    record = create_upload(served.base_url, token)

    async def body() -> None:
        async with _client(served, token) as session:
            stream = session.subscribe(GraphQLRequest(PROGRESS, variable_values={"id": record["id"]}))
            first: dict[str, Any] = await asyncio.wait_for(anext(stream), 10)
            assert first["uploadProgress"]["bytesDone"] == 0 and first["uploadProgress"]["id"] == record["id"]
            await _report(served, token, record["id"], 1, 4096)
            changed = await asyncio.wait_for(anext(stream), 10)
            assert changed["uploadProgress"]["bytesDone"] == 4096
            listed = await session.execute(GraphQLRequest("{ uploads { id bytesDone } }"))
            assert {"id": record["id"], "bytesDone": 4096} in listed["uploads"]
            stop = "mutation($id: ID!) { stopUpload(id: $id) { stopRequested } }"
            stopped = await session.execute(GraphQLRequest(stop, variable_values={"id": record["id"]}))
            assert stopped["stopUpload"]["stopRequested"] is True
            streamed = await asyncio.wait_for(anext(stream), 10)
            assert streamed["uploadProgress"]["stopRequested"] is True

    asyncio.run(body())


def test_the_fifth_operation_on_a_connection_is_refused(served: ServerProcess) -> None:
    token = sign_in(served.base_url, "ann")
    create_upload(served.base_url, token)

    async def body() -> None:
        async with _client(served, token) as session:
            streams = [session.subscribe(GraphQLRequest(EVENTS)) for _ in range(4)]
            for stream in streams:
                await asyncio.wait_for(anext(stream), 10)
            with pytest.raises(TransportQueryError) as refused:
                await asyncio.wait_for(anext(session.subscribe(GraphQLRequest(EVENTS))), 10)
            assert "limit" in str(refused.value).lower()
            for stream in streams:
                await stream.aclose()

    asyncio.run(body())


def _close_code(error: BaseException) -> int | None:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ConnectionClosed) and seen.rcvd is not None:
            return seen.rcvd.code
        seen = seen.__cause__ or seen.__context__
    return None


def test_logout_ends_the_gql_connection_with_4403(served: ServerProcess) -> None:
    token = sign_in(served.base_url, "ann")
    create_upload(served.base_url, token)

    async def body() -> None:
        session_client = _client(served, token)
        async with session_client as session:
            stream = session.subscribe(GraphQLRequest(EVENTS))
            await asyncio.wait_for(anext(stream), 10)
            answer = await asyncio.to_thread(httpx.post, f"{served.base_url}/api/v1/auth/logout",
                                             headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200
            t0 = time.monotonic()
            with pytest.raises(TransportError) as ended:
                while True:
                    await asyncio.wait_for(anext(stream), CLOSE_WITHIN_S)
            assert time.monotonic() - t0 < CLOSE_WITHIN_S
            assert isinstance(ended.value, TransportConnectionFailed), repr(ended.value)
            assert _close_code(ended.value) == 4403, repr(ended.value)

    asyncio.run(body())
