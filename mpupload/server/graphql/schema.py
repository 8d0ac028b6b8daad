"""The schema at ``/graphql``: queries, the ``stopUpload`` mutation and the two subscriptions.

Every resolver acts as the viewer (:class:`.context.GraphQLContext`): someone else's upload is not found,
exactly like an id that does not exist.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry
from graphql import GraphQLError
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info

from ..uploads import NotFound
from .context import GraphQLContext
from .streams import follow
from .types import INT64_SCALAR, Int64, Upload

__all__ = ["schema"]

Ctx = Info[GraphQLContext, None]


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


schema = strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription,
                           config=StrawberryConfig(scalar_map={Int64: INT64_SCALAR}))
