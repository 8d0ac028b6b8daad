"""Helpers of the session tests: users made with the real ``mpupload users`` command, a producer that
keeps reporting progress (signing in again when its token is revoked or expires), and a subscriber socket
watched until the server closes it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed

from .conftest import PASSWORD
from .gqlws import UPLOAD_FIELDS, Closed, GqlWs
from .support import cli

EVENTS = f"subscription {{ uploadEvents {{ {UPLOAD_FIELDS} }} }}"
#: a revoked or expired token's socket is closed within this
CLOSE_WITHIN_S = 5.0


def add_user(database_url: str, name: str | None = None, env: dict[str, str] | None = None) -> str:
    name = name or f"u{secrets.token_hex(4)}"
    done = cli("users", "add", name, "--password-stdin", "--database-url", database_url, stdin=PASSWORD + "\n",
               env=env)
    assert done.returncode == 0, done.stderr
    return name


def users(database_url: str, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> None:
    done = cli("users", *args, "--database-url", database_url, env=env, stdin=stdin)
    assert done.returncode == 0, done.stderr


def sign_in(base_url: str, name: str) -> str:
    answer = httpx.post(f"{base_url}/api/v1/auth/login", json={"username": name, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def create_upload(base_url: str, token: str, name: str = "f.bin") -> dict[str, Any]:
    answer = httpx.post(f"{base_url}/api/v1/uploads", headers={"Authorization": f"Bearer {token}"},
                        json={"filename": name, "bucket": "b", "key": "k", "total_bytes": 10**12})
    assert answer.status_code in (200, 201), answer.text
    record: dict[str, Any] = answer.json()
    return record


@dataclass
class Producer:
    """Reports progress on one upload every ``every_s`` while running; signs in again on a 401 (a revoked or
    expired token) unless ``relogin`` is False, then keeps trying (the user may be gone)."""

    base_url: str
    name: str
    upload_id: str
    token: str
    relogin: bool = True
    every_s: float = 0.05
    accepted: int = 0
    refused: int = 0
    accepted_at: list[float] = field(default_factory=list)
    _seq: int = 0

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as client:
            while True:
                self._seq += 1
                answer = await client.post(f"/api/v1/uploads/{self.upload_id}/progress",
                                           headers={"Authorization": f"Bearer {self.token}"},
                                           json={"seq": self._seq, "status": "uploading", "bytes_done": self._seq})
                if answer.status_code == 200:
                    self.accepted += 1
                    self.accepted_at.append(time.monotonic())
                else:
                    self.refused += 1
                    if answer.status_code == 401 and self.relogin:
                        login = await client.post("/api/v1/auth/login",
                                                  json={"username": self.name, "password": PASSWORD})
                        if login.status_code == 200:
                            self.token = login.json()["token"]
                await asyncio.sleep(self.every_s)

    def accepted_after(self, moment: float) -> int:
        return sum(1 for at in self.accepted_at if at > moment)


@contextlib.asynccontextmanager
async def producing(producer: Producer):  # type: ignore[no-untyped-def]
    task = asyncio.create_task(producer.run())
    try:
        yield producer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def events_flow(ws: GqlWs, op: str, count: int = 3) -> int:
    """Wait until ``count`` events with rising bytes arrived on ``op``; the last bytes seen."""
    last = -1
    seen = 0
    while seen < count:
        got = (await ws.next(op))["uploadEvents"]
        if got["bytesDone"] > last:
            last, seen = got["bytesDone"], seen + 1
    return last


async def closed_within(ws: GqlWs, seconds: float) -> tuple[Closed, float]:
    """Read (and drop) whatever arrives until the server closes the socket; the close and how long it took."""
    t0 = time.monotonic()
    closed = await ws.closed(timeout=seconds)
    return closed, time.monotonic() - t0


async def everything_until_closed(ws: GqlWs, seconds: float) -> tuple[list[dict[str, Any]], Closed]:
    """Every message of every operation until the server closes the socket, and the close."""
    assert ws.ws is not None
    received: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    while True:
        try:
            raw = await asyncio.wait_for(ws.ws.recv(), max(0.01, end - time.monotonic()))
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return received, Closed(None if rcvd is None else rcvd.code, "" if rcvd is None else rcvd.reason)
        received.append(json.loads(raw))
