"""Upload records: ``/uploads``, ``/uploads/{id}``, a directory run's ``/uploads/{id}/files`` (progress
ingestion is :mod:`.ingest`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from .. import broker
from .. import files as files_svc
from .. import uploads as svc
from . import broker as broker_api
from .deps import SessionDep, StateDep, TokenDep, UserDep

__all__ = ["router"]

router = APIRouter()
# Request bodies are the service layer's own frozen dataclasses (FastAPI validates them; extra snapshot
# fields such as ``event`` or ``percent`` are ignored): one definition per payload. Their limits (lengths, 64-
# and 32-bit ranges, no NUL) are checked in their ``__post_init__`` (:mod:`..limits`) and answered 422.


def _not_found(upload_id: str) -> HTTPException:
    return HTTPException(404, f"no upload {upload_id!r}: check the id with mpupload list")


_NEW_UPLOAD = TypeAdapter(svc.NewUpload)
_BROKERED = TypeAdapter(broker.BrokeredCreate)


@router.post("/uploads")
async def create(body: Annotated[dict[str, Any], Body()], user: UserDep, token: TokenDep, state: StateDep,
                 session: SessionDep) -> dict[str, Any]:
    """A record of an upload its client makes with its own credentials; with ``"brokered": true``, an upload to
    the server's storage that the server creates and signs (:mod:`.broker`)."""
    brokered = body.get("brokered", False)
    if brokered not in (True, False):
        raise HTTPException(422, "brokered must be true or false")
    try:
        if brokered:
            return await broker_api.create_brokered(_BROKERED.validate_python(body), user, state, session, token)
        new = _NEW_UPLOAD.validate_python({k: v for k, v in body.items() if k != "brokered"})
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(), body=None) from None
    return await _create(new, user, state, session)


async def _create(body: svc.NewUpload, user: UserDep, state: StateDep, session: SessionDep) -> dict[str, Any]:
    try:
        upload = await svc.create_upload(session, user, body, state.settings.max_uploads_per_user)
    except svc.ProgressError as exc:
        raise HTTPException(exc.status_code, str(exc)) from None
    await svc.publish(state.bus, upload, state.settings.live_after_s)
    return svc.upload_dict(upload, state.settings.live_after_s)


@router.get("/uploads")
async def list_all(user: UserDep, state: StateDep, session: SessionDep) -> list[dict[str, Any]]:
    live_after = state.settings.live_after_s
    return [{**svc.upload_dict(u, live_after), **(broker.broker_fields(u) if u.brokered else {})}
            for u in await svc.list_uploads(session, user)]


@router.get("/uploads/{upload_id}")
async def get_one(upload_id: str, user: UserDep, state: StateDep, session: SessionDep) -> dict[str, Any]:
    try:
        upload = await svc.get_upload(session, user, upload_id)
    except svc.NotFound:
        raise _not_found(upload_id) from None
    record = svc.upload_dict(upload, state.settings.live_after_s)
    if upload.brokered:
        record.update(broker.broker_fields(upload))
    record["history"] = await svc.history(session, upload.id, state.settings.history_limit)
    return record


@router.post("/uploads/{upload_id}/files")
async def post_files(upload_id: str, request: Request, user: UserDep, state: StateDep,
                     session: SessionDep) -> dict[str, Any]:
    """A directory run's files as they stand now: ``{"files": [entry, ...]}``, at most 1000 entries, upserted by
    path (the newest wins); see :mod:`..files`. Subscribers get the record with its new ``version``."""
    try:
        data = json.loads(await request.body())
    except ValueError:
        raise HTTPException(422, 'the body is not JSON: send {"files": [entry, ...]}') from None
    except RecursionError:
        raise HTTPException(400, "the body is nested too deeply") from None
    try:
        entries = files_svc.parse_batch(data)
        upload = await files_svc.record_files(session, user.id, upload_id, entries)
    except files_svc.BatchError as exc:
        raise HTTPException(exc.status_code, str(exc)) from None
    except svc.NotFound:
        raise _not_found(upload_id) from None
    await svc.publish(state.bus, upload, state.settings.live_after_s)
    return {"accepted": len(entries)}

# POST /uploads/{upload_id}/progress is answered in front of FastAPI: see .ingest (the hot path).
