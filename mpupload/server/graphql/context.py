"""The per-request (HTTP) or per-connection (WebSocket) GraphQL context: who the viewer is, and the
database reads every resolver needs, always scoped to the viewer.

Over HTTP the token comes in ``Authorization: Bearer TOKEN`` and a missing or bad one is a 401, as on the
REST routes. Over WebSocket it comes in the ``connection_init`` payload ``{"token": ...}``; the router's
``on_ws_connect`` calls :meth:`GraphQLContext.authenticate` and a bad token closes the socket with 4403.
A long-lived connection re-checks its token every ``token_recheck_s`` seconds (expiry, logout, revocation).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import HTTPException
from starlette.requests import HTTPConnection
from strawberry.fastapi import BaseContext

from .. import uploads as svc
from ..api.deps import ServerState
from ..auth import token_user
from ..db.models import User

__all__ = ["GraphQLContext", "get_context"]


class GraphQLContext(BaseContext):
    """Shared by every resolver of one HTTP request or one WebSocket connection."""

    def __init__(self, state: ServerState, connection: HTTPConnection) -> None:
        super().__init__()
        self.state = state
        self.connection = connection
        self.token: str | None = None
        self._user: User | None = None
        self._checked_at = 0.0

    @property
    def live_after_s(self) -> float:
        return self.state.settings.live_after_s

    @property
    def user(self) -> User:
        if self._user is None:
            raise PermissionError("not signed in")
        return self._user

    async def authenticate(self, token: str) -> bool:
        """Sign the context in with ``token``; False when it is unknown, expired or revoked."""
        async with self.state.sessionmaker() as session:
            user = await token_user(session, token)
        if user is None:
            return False
        self.token, self._user, self._checked_at = token, user, time.monotonic()
        return True

    async def token_still_valid(self) -> bool:
        """Re-check the token once ``token_recheck_s`` has passed since the last check."""
        if self.token is None:
            return False
        if time.monotonic() - self._checked_at < self.state.settings.token_recheck_s:
            return True
        return await self.authenticate(self.token)

    # -- reads, always the viewer's own --

    async def upload(self, upload_id: str) -> dict[str, Any] | None:
        async with self.state.sessionmaker() as session:
            try:
                upload = await svc.get_upload(session, self.user, upload_id)
            except svc.NotFound:
                return None
            return svc.upload_dict(upload, self.live_after_s)

    async def uploads(self) -> list[dict[str, Any]]:
        async with self.state.sessionmaker() as session:
            return [svc.upload_dict(u, self.live_after_s) for u in await svc.list_uploads(session, self.user)]

    async def history(self, upload_id: str) -> list[dict[str, Any]]:
        async with self.state.sessionmaker() as session:
            await svc.get_upload(session, self.user, upload_id)  # NotFound for anyone else's
            return await svc.history(session, upload_id, self.state.settings.history_limit)

    async def stop(self, upload_id: str) -> dict[str, Any]:
        async with self.state.sessionmaker() as session:
            upload, changed = await svc.stop_upload(session, self.user, upload_id)
            if changed:
                await svc.publish(self.state.bus, upload, self.live_after_s)
            return svc.upload_dict(upload, self.live_after_s)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def get_context(connection: HTTPConnection) -> GraphQLContext:
    """FastAPI dependency building the context; HTTP requests must carry a valid bearer token."""
    state: ServerState = connection.app.state.server
    context = GraphQLContext(state, connection)
    if connection.scope["type"] == "websocket":
        return context  # authenticated by on_ws_connect from the connection_init payload
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("missing bearer token: sign in with mpupload login")
    if not await context.authenticate(token.strip()):
        raise _unauthorized("invalid, expired or revoked token: sign in again with mpupload login")
    return context
