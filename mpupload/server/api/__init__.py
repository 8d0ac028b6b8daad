"""REST routers: ``/api/v1/auth``, ``/api/v1/me``, ``/api/v1/uploads`` and ``/healthz``."""

from __future__ import annotations

from fastapi import APIRouter

from . import accounts, broker, health, uploads

__all__ = ["build_router"]


def build_router() -> APIRouter:
    """Every REST route of the server."""
    router = APIRouter()
    router.include_router(uploads.router, prefix="/api/v1")  # first: progress reports are the hot path
    router.include_router(broker.router, prefix="/api/v1")
    router.include_router(accounts.router, prefix="/api/v1")
    router.include_router(health.router)
    return router
