"""A minimal ``graphql-transport-ws`` client for the tests (real WebSocket, the websockets library), and a
GraphQL-over-HTTP helper. Every wait has a deadline."""

from __future__ import annotations

import asyncio
import json
from itertools import count
from types import TracebackType
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

UPLOAD_FIELDS = """id filename bucket key host status totalBytes bytesDone percent speedBps avgSpeedBps etaSeconds
partsDone partsTotal partSize elapsedSeconds createdAt updatedAt lastReportAt error checksum etag resumable
resumeCommand stopRequested live version"""
WAIT_S = 15.0


def gql_http(base_url: str, query: str, variables: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{base_url}/graphql", json={"query": query, "variables": variables or {}},
                      headers=headers or {}, timeout=30)


class Closed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code}: {reason}")
        self.code = code
        self.reason = reason


class GqlWs:
    """One ``graphql-transport-ws`` connection: ``async with GqlWs(url, token) as ws``."""

    def __init__(self, base_url: str, token: str | None, *, payload: Any = None) -> None:
        self.url = base_url.replace("http://", "ws://") + "/graphql"
        self.init_payload = {"token": token} if payload is None else payload
        self.ws: ClientConnection | None = None
        self.ack: dict[str, Any] | None = None
        self._ids = count(1)
        self._pending: dict[str, list[dict[str, Any]]] = {}

    async def __aenter__(self) -> GqlWs:
        self.ws = await connect(self.url, subprotocols=["graphql-transport-ws"], open_timeout=WAIT_S)  # type: ignore[list-item]
        await self.ws.send(json.dumps({"type": "connection_init", "payload": self.init_payload}))
        message = await self._recv(WAIT_S)
        if message.get("type") != "connection_ack":
            raise AssertionError(f"expected connection_ack, got {message}")
        self.ack = message.get("payload")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def _recv(self, timeout: float) -> dict[str, Any]:
        assert self.ws is not None
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            raise Closed(None if rcvd is None else rcvd.code, "" if rcvd is None else rcvd.reason) from None
        message: dict[str, Any] = json.loads(raw)
        if message.get("type") == "ping":
            await self.ws.send(json.dumps({"type": "pong"}))
            return await self._recv(timeout)
        return message

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None) -> str:
        assert self.ws is not None
        op_id = str(next(self._ids))
        self._pending[op_id] = []
        await self.ws.send(json.dumps({"id": op_id, "type": "subscribe",
                                       "payload": {"query": query, "variables": variables or {}}}))
        return op_id

    async def message(self, op_id: str, timeout: float = WAIT_S) -> dict[str, Any]:
        """The next message (``next``, ``error`` or ``complete``) of the operation ``op_id``."""
        queue = self._pending[op_id]
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not queue:
            remaining = end - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no message for operation {op_id} within {timeout} s")
            message = await self._recv(remaining)
            self._pending.setdefault(str(message.get("id")), []).append(message)
        return queue.pop(0)

    async def next(self, op_id: str, timeout: float = WAIT_S) -> dict[str, Any]:
        """The next ``data`` of the operation; fails on an error or completion."""
        message = await self.message(op_id, timeout)
        assert message["type"] == "next", message
        assert not message["payload"].get("errors"), message
        data: dict[str, Any] = message["payload"]["data"]
        return data

    async def silent(self, op_id: str, seconds: float) -> bool:
        """True when nothing arrives for ``op_id`` within ``seconds``."""
        try:
            await self.message(op_id, seconds)
        except TimeoutError:
            return True
        return False

    async def closed(self, timeout: float = WAIT_S) -> Closed:
        """Wait for the server to close the connection; the close code and reason."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            try:
                await self._recv(max(0.01, end - loop.time()))
            except Closed as closed:
                return closed
            if loop.time() > end:
                raise TimeoutError("the server kept the connection open")


async def connect_rejected(base_url: str, payload: Any) -> Closed:
    """Open a connection with ``payload`` as ``connection_init`` payload; the close it ends with."""
    url = base_url.replace("http://", "ws://") + "/graphql"
    async with connect(url, subprotocols=["graphql-transport-ws"], open_timeout=WAIT_S) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        try:
            message = await asyncio.wait_for(ws.recv(), WAIT_S)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return Closed(None if rcvd is None else rcvd.code, "" if rcvd is None else rcvd.reason)
        raise AssertionError(f"connection accepted: {message!r}")
