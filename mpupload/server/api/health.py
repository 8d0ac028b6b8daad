"""``GET /healthz``: 200 once the database answers, 503 otherwise."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from .deps import SessionDep

__all__ = ["router"]

router = APIRouter()


@router.get("/healthz")
async def healthz(session: SessionDep) -> Any:
    try:
        await session.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any database failure means "not healthy"
        return JSONResponse({"status": "unavailable", "detail": type(exc).__name__}, status_code=503)
    return {"status": "ok"}
