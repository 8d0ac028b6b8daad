"""Upload records: ``/uploads``, ``/uploads/{id}`` (progress ingestion is :mod:`.ingest`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from .. import uploads as svc
from .deps import SessionDep, StateDep, UserDep

__all__ = ["router"]

router = APIRouter()
# Request bodies are the service layer's own frozen dataclasses (FastAPI validates them; extra snapshot
# fields such as ``event`` or ``percent`` are ignored): one definition per payload. Their limits (lengths, 64-
# and 32-bit ranges, no NUL) are checked in their ``__post_init__`` (:mod:`..limits`) and answered 422.


def _not_found(upload_id: str) -> HTTPException:
    return HTTPException(404, f"no upload {upload_id!r}: check the id with mpupload list")


@router.post("/uploads")
async def create(body: svc.NewUpload, user: UserDep, state: StateDep, session: SessionDep) -> dict[str, Any]:
    try:
        upload = await svc.create_upload(session, user, body, state.settings.max_uploads_per_user)
    except svc.ProgressError as exc:
        raise HTTPException(exc.status_code, str(exc)) from None
    await svc.publish(state.bus, upload, state.settings.live_after_s)
    return svc.upload_dict(upload, state.settings.live_after_s)


@router.get("/uploads")
async def list_all(user: UserDep, state: StateDep, session: SessionDep) -> list[dict[str, Any]]:
    return [svc.upload_dict(u, state.settings.live_after_s) for u in await svc.list_uploads(session, user)]


@router.get("/uploads/{upload_id}")
async def get_one(upload_id: str, user: UserDep, state: StateDep, session: SessionDep) -> dict[str, Any]:
    try:
        upload = await svc.get_upload(session, user, upload_id)
    except svc.NotFound:
        raise _not_found(upload_id) from None
    record = svc.upload_dict(upload, state.settings.live_after_s)
    record["history"] = await svc.history(session, upload.id, state.settings.history_limit)
    return record

# POST /uploads/{upload_id}/progress is answered in front of FastAPI: see .ingest (the hot path).
