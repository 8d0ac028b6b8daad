"""Sign in and out, and who am I: ``/auth/login``, ``/auth/logout``, ``/me``."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy import select

from ..auth import issue_token, revoke_token, verify_password
from ..bus.revocation import publish_revocation
from ..db.models import User, as_utc
from ..edge import client_address
from ..limits import MAX_PASSWORD_BYTES, MAX_USERNAME_BYTES, InputError, check_text
from .deps import SessionDep, StateDep, TokenDep, UserDep

__all__ = ["router"]

router = APIRouter()


class LoginIn(BaseModel):
    username: str
    password: str


@router.post("/auth/login")
async def login(body: LoginIn, request: Request, state: StateDep, session: SessionDep) -> dict[str, Any]:
    try:  # before argon2 and the limiter; a plain message, so the password is not echoed back
        check_text("username", body.username, max_bytes=MAX_USERNAME_BYTES)
        check_text("password", body.password, max_bytes=MAX_PASSWORD_BYTES)
    except InputError as exc:
        raise HTTPException(422, str(exc)) from None
    address = client_address(request)
    wait = state.limiter.retry_after(body.username, address)
    if wait is not None:
        raise HTTPException(429, f"too many failed logins; try again in {math.ceil(wait)} s",
                            headers={"Retry-After": str(math.ceil(wait))})
    user = (await session.execute(select(User).where(User.name == body.username))).scalar_one_or_none()
    if not await verify_password(user.password_hash if user else None, body.password) or user is None:
        state.limiter.failed(body.username, address)
        raise HTTPException(401, "wrong user name or password", headers={"WWW-Authenticate": "Bearer"})
    state.limiter.succeeded(body.username, address)
    token, expires_at = await issue_token(session, user, state.settings.token_ttl_s)
    return {"token": token, "expires_at": expires_at.isoformat().replace("+00:00", "Z")}


@router.post("/auth/logout")
async def logout(user: UserDep, token: TokenDep, session: SessionDep, state: StateDep) -> dict[str, Any]:
    token_id = await revoke_token(session, token)
    if token_id is not None:  # every replica closes this token's WebSockets (4403)
        await publish_revocation(state.bus, user.id, token_id)
    return {"ok": True}


@router.get("/me")
async def me(user: UserDep) -> dict[str, Any]:
    return {"id": user.id, "username": user.name,
            "created_at": as_utc(user.created_at).isoformat().replace("+00:00", "Z")}
