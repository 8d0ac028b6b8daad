"""The app in-process (ASGI transport) on the same databases: the stop action and the publish hook."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from mpupload.server import uploads as svc
from mpupload.server.api.deps import ServerState
from mpupload.server.app import create_app
from mpupload.server.auth import token_user
from mpupload.server.settings import Settings

from .conftest import PASSWORD, Backend

pytestmark = pytest.mark.integration


class RecordingBus:
    """A bus that remembers what was published."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        self.published.append((channel, payload))


async def _stop_flow(backend: Backend) -> None:
    bus = RecordingBus()
    app = create_app(Settings.from_env(database_url=backend.database_url, env={}), bus=bus)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
            token = (await client.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}
                                       )).json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            record = (await client.post("/api/v1/uploads", headers=headers, json={
                "filename": "f", "bucket": "b", "key": "k", "total_bytes": 100})).json()
            upload_id = record["id"]

            async def report(seq: int, status: str, done: int) -> dict[str, Any]:
                answer = await client.post(f"/api/v1/uploads/{upload_id}/progress", headers=headers,
                                           json={"seq": seq, "status": status, "bytes_done": done})
                assert answer.status_code == 200, answer.text
                body: dict[str, Any] = answer.json()
                return body

            assert "action" not in await report(1, "uploading", 10)
            state: ServerState = app.state.server
            async with state.sessionmaker() as session:

                me = await token_user(session, token)
                assert me is not None
                stopped, changed = await svc.stop_upload(session, me, upload_id)
                assert stopped.stop_requested is True and changed
                assert (await svc.stop_upload(session, me, upload_id))[1] is False  # already marked
                bob = await token_user(session, (await client.post("/api/v1/auth/login", json={
                    "username": "bob", "password": PASSWORD})).json()["token"])
                assert bob is not None
                try:
                    await svc.stop_upload(session, bob, upload_id)
                except svc.NotFound:
                    pass
                else:
                    raise AssertionError("bob stopped alice's upload")
            assert (await report(2, "uploading", 20))["action"] == "stop"
            assert (await report(2, "uploading", 20))["action"] == "stop"  # also on an ignored report
            after = await report(3, "stopped", 20)
            assert "action" not in after and after["upload"]["stop_requested"] is False
            assert "action" not in await report(4, "uploading", 30)  # the resume is not stopped again
    channels = {channel for channel, _ in bus.published}
    assert channels == {str(me.id)}
    assert [p["bytes_done"] for _, p in bus.published] == [0, 10, 20, 20, 30]
    assert bus.published[-1][1]["status"] == "uploading"


def test_stop_action_and_publish_hook(backend: Backend) -> None:
    asyncio.run(_stop_flow(backend))
