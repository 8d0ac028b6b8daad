"""The schema at ``/graphql``: queries, the ``stopUpload`` mutation and the two subscriptions.

Every resolver acts as the viewer (:class:`.context.GraphQLContext`): someone else's upload is not found,
exactly like an id that does not exist.

Every document is bounded before any work is done on it (:func:`build_schema`): at most
:data:`MAX_QUERY_BYTES` of text, :data:`MAX_TOKENS` tokens (the parser stops there, so validation never
sees a big document), :data:`MAX_DEPTH` levels and :data:`MAX_ALIASES` aliases; introspection is refused
unless the server runs with ``--debug``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterator
from functools import partial
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    DisableIntrospection,
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext, Info

from ..db.engine import unavailable_reason
from ..uploads import NotFound
from .context import GraphQLContext
from .streams import follow
from .types import INT64_SCALAR, Int64, Upload

__all__ = ["schema", "build_schema", "MAX_QUERY_BYTES", "MAX_TOKENS", "MAX_DEPTH", "MAX_ALIASES"]

#: the longest GraphQL document accepted (the dashboard's biggest query is under 1 KiB)
MAX_QUERY_BYTES = 16 * 1024
#: tokens the parser reads before it gives up (the dashboard's biggest query has about 100)
MAX_TOKENS = 1000
#: nesting levels (``uploads { history { at } }`` is 2)
MAX_DEPTH = 8
#: aliased fields in one document
MAX_ALIASES = 20

Ctx = Info[GraphQLContext, None]
log = logging.getLogger(__name__)


def _not_found(upload_id: str) -> GraphQLError:
    return GraphQLError(f"no upload {upload_id!r}: check the id with mpupload list",
                        extensions={"code": "NOT_FOUND"})


@strawberry.type
class Query:
    @strawberry.field(description="The viewer's uploads, newest first.")
    async def uploads(self, info: Ctx) -> list[Upload]:
        return [Upload.from_record(r) for r in await info.context.uploads()]

    @strawberry.field(description="One of the viewer's uploads; null when there is none with this id.")
    async def upload(self, info: Ctx, id: strawberry.ID) -> Upload | None:
        record = await info.context.upload(str(id))
        return None if record is None else Upload.from_record(record)


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Ask the CLI running this upload to stop (the owner only). The answer to "
                                     "its next progress report carries the stop action.")
    async def stop_upload(self, info: Ctx, id: strawberry.ID) -> Upload:
        try:
            return Upload.from_record(await info.context.stop(str(id)))
        except NotFound:
            raise _not_found(str(id)) from None


@strawberry.type
class Subscription:
    @strawberry.subscription(description="The upload's current state, then every change.")
    async def upload_progress(self, info: Ctx, id: strawberry.ID) -> AsyncGenerator[Upload, None]:
        try:
            async for record in follow(info.context, str(id)):
                yield Upload.from_record(record)
        except NotFound:
            raise _not_found(str(id)) from None

    @strawberry.subscription(description="Every change of any of the viewer's uploads (the active ones first).")
    async def upload_events(self, info: Ctx) -> AsyncGenerator[Upload, None]:
        async for record in follow(info.context, None):
            yield Upload.from_record(record)


UNAVAILABLE_MESSAGE = "the database is unavailable right now: retry in a moment"


class _MaskUnexpected(MaskErrors):
    """Errors the resolvers raise on purpose (``GraphQLError``) and query errors go to the client as they are;
    anything else (a database error, a bug) would show SQL and parameters, so the client gets one line and a
    code instead — ``UNAVAILABLE`` while the database cannot be reached, ``INTERNAL`` otherwise — and the
    server log keeps the details."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=lambda error: error.original_error is not None
                         and not isinstance(error.original_error, GraphQLError))

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        original = error.original_error
        unavailable = original is not None and unavailable_reason(original) is not None
        return GraphQLError(
            UNAVAILABLE_MESSAGE if unavailable else "internal error: the server log has the details",
            nodes=error.nodes, source=error.source, positions=error.positions, path=error.path,
            extensions={"code": "UNAVAILABLE" if unavailable else "INTERNAL"})


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        """Log unexpected errors as strawberry does (with the traceback), a database outage as one line, and
        nothing for the answers we give on purpose (NOT_FOUND, a refused or invalid document): those are the
        client's business, and logging them would let any client write what it likes into the server log."""
        rest = []
        for error in errors:
            original = error.original_error
            if original is None or isinstance(original, GraphQLError):
                continue  # a query/validation error or one a resolver raised on purpose: answered, not logged
            reason = unavailable_reason(original)
            if reason is None:
                rest.append(error)
            else:
                log.warning("database unavailable (%s): GraphQL %s answered UNAVAILABLE", reason,
                            ".".join(str(p) for p in error.path or ()) or "operation")
        super().process_errors(rest, execution_context)


class _QuerySize(SchemaExtension):
    """Refuse a document over :data:`MAX_QUERY_BYTES` before it is parsed."""

    def on_parse(self) -> Iterator[None]:
        query = self.execution_context.query
        if query is not None and len(query) > MAX_QUERY_BYTES // 4 and len(query.encode()) > MAX_QUERY_BYTES:
            raise GraphQLError(f"the query is over {MAX_QUERY_BYTES} bytes", extensions={"code": "QUERY_TOO_LARGE"})
        yield


def build_schema(debug: bool = False) -> strawberry.Schema:
    """The schema with its limits; introspection only when ``debug``."""
    # factories: strawberry builds fresh extensions for every operation
    extensions: list[Any] = [
        _QuerySize, partial(MaxTokensLimiter, max_token_count=MAX_TOKENS),
        partial(QueryDepthLimiter, max_depth=MAX_DEPTH),
        partial(MaxAliasesLimiter, max_alias_count=MAX_ALIASES)]
    if not debug:
        extensions.append(DisableIntrospection)
    extensions.append(_MaskUnexpected)
    return _Schema(query=Query, mutation=Mutation, subscription=Subscription,
                   config=StrawberryConfig(scalar_map={Int64: INT64_SCALAR}), extensions=extensions)


schema = build_schema()
