"""The per-request (HTTP) or per-connection (WebSocket) GraphQL context: who the viewer is, and the
database reads every resolver needs, always scoped to the viewer.

Over HTTP the token comes in ``Authorization: Bearer TOKEN`` and a missing or bad one is a 401, as on the
REST routes. Over WebSocket it comes in the ``connection_init`` payload ``{"token": ...}``; the router's
``on_ws_connect`` calls :meth:`GraphQLContext.authenticate` and a bad token closes the socket with 4403.

A context is bound to the user *and* the token row that signed it in, never to the user id alone: every
query, subscription and ``stopUpload`` first re-checks, in the same database session, that this token row
still exists, belongs to this user, and is neither revoked nor expired (ids are never reused, so a removed
user's socket cannot act as a later user). An open socket is also ended by :class:`.sessions.Sessions`
within seconds of a revocation or expiry, while events flow.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException
from graphql import GraphQLError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketState
from strawberry.fastapi import BaseContext

from ...wire import FILES_PAGE_MAX, FileStatus
from .. import files as files_svc
from .. import uploads as svc
from ..api.deps import ServerState
from ..auth import token_row_valid, token_session
from ..db.models import User
from ..limits import InputError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .sessions import Sessions

__all__ = ["GraphQLContext", "get_context", "UNAUTHENTICATED_MESSAGE"]

UNAUTHENTICATED_MESSAGE = "token expired or revoked: sign in again"
#: a nested field (``history`` of each upload in a list) trusts a check of the token row this recent
_NESTED_FRESH_S = 1.0


class GraphQLContext(BaseContext):
    """Shared by every resolver of one HTTP request or one WebSocket connection."""

    def __init__(self, state: ServerState, connection: HTTPConnection, sessions: Sessions | None = None) -> None:
        super().__init__()
        self.state = state
        self.connection = connection
        self.sessions = sessions
        self._user: User | None = None
        self.token_id = 0
        self.user_id = 0
        #: the socket was closed by the server (token revoked or expired): no more reads
        self.ended = False
        self._checked_at = float("-inf")

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
            found = await token_session(session, token)
        if found is None:
            return False
        self._user, self.token_id = found
        self.user_id = self._user.id
        return True

    async def end(self, code: int, reason: str) -> None:
        """Close the WebSocket (once); nothing more is read for it."""
        if self.ended:
            return
        self.ended = True
        connection = self.connection
        if isinstance(connection, WebSocket) and connection.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError, OSError):  # the client went away meanwhile
                await connection.close(code, reason)

    async def _viewer(self, session: AsyncSession, fresh_s: float = 0.0) -> User:
        """The signed-in user, once the token row is checked again (the error ends the socket with 4403).

        ``fresh_s``: a nested field skips the check when the row was checked that recently (by the field
        above it in the same operation), so a list of uploads does not re-check once per upload."""
        user = self.user
        if not self.ended and fresh_s and time.monotonic() - self._checked_at < fresh_s:
            return user
        if self.ended or not await token_row_valid(session, self.token_id, user.id):
            from .sessions import TOKEN_REJECTED_CODE

            await self.end(TOKEN_REJECTED_CODE, UNAUTHENTICATED_MESSAGE)
            raise GraphQLError(UNAUTHENTICATED_MESSAGE, extensions={"code": "UNAUTHENTICATED"})
        self._checked_at = time.monotonic()
        return user

    # -- reads, always the viewer's own --

    async def upload(self, upload_id: str) -> dict[str, Any] | None:
        async with self.state.sessionmaker() as session:
            user = await self._viewer(session)
            try:
                upload = await svc.get_upload(session, user, upload_id)
            except svc.NotFound:
                return None
            return svc.upload_dict(upload, self.live_after_s)

    async def uploads(self) -> list[dict[str, Any]]:
        async with self.state.sessionmaker() as session:
            user = await self._viewer(session)
            return [svc.upload_dict(u, self.live_after_s) for u in await svc.list_uploads(session, user)]

    async def history(self, upload_id: str) -> list[dict[str, Any]]:
        async with self.state.sessionmaker() as session:
            user = await self._viewer(session, _NESTED_FRESH_S)
            await svc.get_upload(session, user, upload_id)  # NotFound for anyone else's
            return await svc.history(session, upload_id, self.state.settings.history_limit)

    async def files(self, upload_id: str, status: FileStatus | None, first: int, after: str | None
                    ) -> tuple[list[dict[str, Any]], str | None, bool]:
        """One page of a directory run's files (:func:`..files.list_files`): the files, the cursor after the
        last, and whether more follow. ``first`` is 0 .. :data:`~mpupload.wire.FILES_PAGE_MAX`."""
        if not 0 <= first <= FILES_PAGE_MAX:
            raise GraphQLError(f"first is 0 .. {FILES_PAGE_MAX}, got {first}", extensions={"code": "BAD_USER_INPUT"})
        async with self.state.sessionmaker() as session:
            user = await self._viewer(session, _NESTED_FRESH_S)
            await svc.get_upload(session, user, upload_id)  # NotFound for anyone else's
            try:
                rows, more = await files_svc.list_files(session, upload_id, status, first, after)
            except InputError as exc:
                raise GraphQLError(str(exc), extensions={"code": "BAD_USER_INPUT"}) from None
        items = [files_svc.file_dict(row) for row in rows]
        end = files_svc.encode_cursor(rows[-1].path) if rows else None
        return items, end, more

    async def stop(self, upload_id: str) -> dict[str, Any]:
        async with self.state.sessionmaker() as session:
            user = await self._viewer(session)
            upload, changed = await svc.stop_upload(session, user, upload_id)
            if changed:
                await svc.publish(self.state.bus, upload, self.live_after_s)
            if changed and upload.brokered and self.state.store is not None:
                # the server holds the storage: it aborts now, whether or not the CLI is still there to hear the
                # stop (a CLI that is stops at its next report; its next sign is refused)
                from ..api.broker import abort_on_store

                try:
                    await abort_on_store(session, self.state, upload)
                except HTTPException as exc:  # the reaper tries again later; the stop stays requested
                    log.warning("could not abort brokered upload %s on the storage: %s", upload_id, exc.detail)
            return svc.upload_dict(upload, self.live_after_s)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def get_context(connection: HTTPConnection) -> GraphQLContext:
    """FastAPI dependency building the context; HTTP requests must carry a valid bearer token."""
    state: ServerState = connection.app.state.server
    if connection.scope["type"] == "websocket":
        # authenticated by on_ws_connect from the connection_init payload, then watched by the sessions
        return GraphQLContext(state, connection, getattr(connection.app.state, "sessions", None))
    context = GraphQLContext(state, connection)
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("missing bearer token: sign in with mpupload login")
    if not await context.authenticate(token.strip()):
        raise _unauthorized("invalid, expired or revoked token: sign in again with mpupload login")
    return context
