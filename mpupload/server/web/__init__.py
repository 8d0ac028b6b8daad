"""The dashboard: a static page at ``/`` and its assets under ``/static`` (vendored, no CDN).

The page signs in through ``POST /api/v1/auth/login`` and then talks GraphQL at ``/graphql`` (queries over
HTTP, subscriptions over ``graphql-transport-ws``). The bundled JavaScript is rebuilt from ``web/`` at the
repository's root (see ``web/README.md``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "mount_dashboard"]

STATIC_DIR = Path(__file__).resolve().parent / "static"


def mount_dashboard(app: FastAPI) -> None:
    """Serve ``/`` (the page) and ``/static/*`` (its assets)."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
