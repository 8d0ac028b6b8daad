"""``/graphql`` over HTTP and WebSocket (``graphql-transport-ws``, and the legacy ``graphql-ws``).

No in-browser IDE is served (it would load scripts from a CDN). The WebSocket's ``connection_init``
payload must carry ``{"token": ...}``; a missing or bad token closes the socket with 4403.
"""

from __future__ import annotations

from typing import Any

from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.types.unset import UnsetType

from .context import GraphQLContext, get_context
from .schema import schema

__all__ = ["build_graphql_router"]


class _Router(GraphQLRouter[GraphQLContext, None]):
    async def on_ws_connect(self, context: GraphQLContext) -> UnsetType | dict[str, object] | None:
        params: Any = context.connection_params
        token = params.get("token") if isinstance(params, dict) else None
        if not isinstance(token, str) or not token or not await context.authenticate(token):
            raise ConnectionRejectionError({"message": "invalid, expired or revoked token: sign in again"})
        return {"username": context.user.name}


def build_graphql_router() -> GraphQLRouter[GraphQLContext, None]:
    return _Router(schema, context_getter=get_context, graphql_ide=None, keep_alive=True,
                   keep_alive_interval=15)
