"""GraphQL at ``/graphql``: the schema (:mod:`.schema`), its types (:mod:`.types`), the viewer's context
(:mod:`.context`) and the gap-free subscription streams (:mod:`.streams`)."""

from __future__ import annotations

from .router import build_graphql_router
from .schema import schema

__all__ = ["build_graphql_router", "schema"]
