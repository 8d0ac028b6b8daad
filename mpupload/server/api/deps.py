"""Typed FastAPI dependencies: the app's state, a database session, the signed-in user.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in a thread pool, which costs more
than the work these do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..auth import LoginRateLimiter, token_signer, token_user
from ..broker import SignLimiter, UserLocks
from ..bus.base import Bus
from ..db.models import User
from ..settings import Settings
from ..uploads import ProgressWriter

if TYPE_CHECKING:
    from ...storage.port import Store

__all__ = ["ServerState", "server_state", "db_session", "bearer_token", "current_user", "StateDep", "SessionDep",
           "UserDep", "TokenDep", "unauthorized", "Signer", "SignerDep"]


@dataclass
class ServerState:
    """What the lifespan builds and every request shares (``app.state.server``)."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    limiter: LoginRateLimiter
    bus: Bus | None
    writer: ProgressWriter
    #: the server's storage for brokered uploads (``None``: none configured)
    store: Store | None = None
    sign_limiter: SignLimiter = field(default_factory=lambda: SignLimiter(20_000))
    #: a user's brokered creates, one at a time (the quota check and the record it allows)
    create_locks: UserLocks = field(default_factory=UserLocks)


async def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


StateDep = Annotated[ServerState, Depends(server_state)]


async def db_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async with state.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(db_session)]


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def bearer_token(request: Request) -> str:
    """The token of ``Authorization: Bearer TOKEN``; 401 when missing or malformed."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("missing bearer token: sign in with mpupload login")
    return token.strip()


TokenDep = Annotated[str, Depends(bearer_token)]


async def current_user(session: SessionDep, token: TokenDep) -> User:
    """The token's user; 401 when the token is unknown, expired or revoked."""
    user = await token_user(session, token)
    if user is None:
        raise unauthorized("invalid, expired or revoked token: sign in again with mpupload login")
    return user


UserDep = Annotated[User, Depends(current_user)]


@dataclass(frozen=True)
class Signer:
    """Who asks for signed URLs: a user's login token (``scope`` ``None``), or a worker token that signs for one
    brokered record (``scope``: its id; a run's, for the large files' uploads in it too)."""

    user: User
    scope: str | None = None


async def current_signer(session: SessionDep, token: TokenDep) -> Signer:
    """A login token's user, or a worker token's user and record; 401 otherwise."""
    found = await token_signer(session, token)
    if found is None:
        raise unauthorized("invalid, expired or revoked token (a worker token dies with its upload): sign in "
                           "again with mpupload login")
    return Signer(*found)


SignerDep = Annotated[Signer, Depends(current_signer)]
