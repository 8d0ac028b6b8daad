"""``/graphql`` over HTTP and WebSocket (``graphql-transport-ws``, and the legacy ``graphql-ws``).

No in-browser IDE is served (it would load scripts from a CDN). The WebSocket's ``connection_init``
payload must carry ``{"token": ...}``; a missing or bad token closes the socket with 4403. A signed-in
socket is registered with the replica's :class:`.sessions.Sessions` (which closes it with 4403 when its
token is revoked or expires); a user's socket beyond ``ws_max_per_user`` on this server is closed with
4429, and an operation beyond ``ws_max_operations`` running at once on one socket is refused with an error.
A ``graphql-transport-ws`` socket that does not sign in within :data:`CONNECTION_INIT_TIMEOUT_S` is closed
with 4408. Request bodies are bounded before they reach this router (``mpupload/server/edge.py``: 64 KiB, 413),
WebSocket messages by ``serve`` (:data:`MAX_WS_MESSAGE_BYTES`, 1009).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from starlette.websockets import WebSocketState
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.http.typevars import RootValue
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage as LegacyInitMessage
from strawberry.types.unset import UNSET, UnsetType

from ..settings import Settings
from .context import GraphQLContext, get_context
from .schema import build_schema
from .sessions import TOO_MANY_CODE

__all__ = ["build_graphql_router", "MAX_WS_MESSAGE_BYTES"]

log = logging.getLogger(__name__)

#: a ``graphql-transport-ws`` socket that has not sent ``connection_init`` by then is closed with 4408
CONNECTION_INIT_TIMEOUT_S = 5.0
#: one WebSocket message (``serve`` hands it to uvicorn as ``ws_max_size``; a bigger one closes with 1009)
MAX_WS_MESSAGE_BYTES = 64 * 1024


class _TooManySockets(Exception):
    pass


_TOO_MANY_REASON = "too many open connections for this user: close another dashboard or CLI watch"


def _closed_by_server(websocket: Any) -> bool:
    """Whether this process already sent the socket's close (``websocket``: strawberry's adapter of it)."""
    return getattr(getattr(websocket, "ws", None), "application_state", None) == WebSocketState.DISCONNECTED


async def _send_unless_closed(send: Any, websocket: Any, message: Any) -> None:
    """``send(message)``, dropped when this process has closed the socket meanwhile: the server closes a socket (a
    revocation, too many sockets) while an operation may still have a message on its way, and Starlette then raises
    a RuntimeError that the base handler logs as a traceback. Nobody could read that message."""
    try:
        await send(message)
    except RuntimeError:
        if not _closed_by_server(websocket):
            raise


class _TransportWS(BaseGraphQLTransportWSHandler[GraphQLContext, None]):
    async def send_message(self, message: Any) -> None:
        await _send_unless_closed(super().send_message, self.websocket, message)

    def forget_id(self, id: str) -> None:  # noqa: A002 - the base class's name
        # An operation can end (its stream finishes and it sends "complete") after the socket's clean-up has
        # already dropped it, when the server closes a socket (a revocation) while events flow; the base class
        # then raises KeyError in a worker task and logs a traceback. Forgetting twice is not an error.
        self.operations.pop(id, None)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        try:
            await super().handle_connection_init(message)
        except _TooManySockets:
            await self.websocket.close(code=TOO_MANY_CODE, reason=_TOO_MANY_REASON)


class _LegacyWS(BaseGraphQLWSHandler[GraphQLContext, None]):
    async def send_message(self, message: Any) -> None:
        await _send_unless_closed(super().send_message, self.websocket, message)

    async def handle_connection_init(self, message: LegacyInitMessage) -> None:
        try:
            await super().handle_connection_init(message)
        except _TooManySockets:
            await self.websocket.close(code=TOO_MANY_CODE, reason=_TOO_MANY_REASON)


class _Router(GraphQLRouter[GraphQLContext, None]):
    graphql_transport_ws_handler_class = _TransportWS
    graphql_ws_handler_class = _LegacyWS

    async def on_ws_connect(self, context: GraphQLContext) -> UnsetType | dict[str, object] | None:
        params: Any = context.connection_params
        token = params.get("token") if isinstance(params, dict) else None
        if not isinstance(token, str) or not token or not await context.authenticate(token):
            raise ConnectionRejectionError({"message": "invalid, expired or revoked token: sign in again"})
        if context.sessions is not None and not context.sessions.add(context):
            log.warning("WebSocket of user %d closed with %d: already %d open on this server", context.user_id,
                        TOO_MANY_CODE, context.sessions.max_per_user)
            raise _TooManySockets
        return {"username": context.user.name}

    async def run(self, request: Any, context: GraphQLContext | UnsetType = UNSET,
                  root_value: RootValue | UnsetType = UNSET) -> Any:
        try:
            view: Any = super()
            return await view.run(request, context=context, root_value=root_value)
        finally:
            if isinstance(context, GraphQLContext) and context.sessions is not None:
                context.sessions.discard(context)


def build_graphql_router(settings: Settings | None = None) -> GraphQLRouter[GraphQLContext, None]:
    settings = settings or Settings(database_url="sqlite+aiosqlite://")
    return _Router(build_schema(settings.debug), context_getter=get_context, graphql_ide=None, keep_alive=True,
                   keep_alive_interval=15, max_subscriptions_per_connection=settings.ws_max_operations,
                   connection_init_wait_timeout=timedelta(seconds=CONNECTION_INIT_TIMEOUT_S))
