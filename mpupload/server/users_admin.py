"""Account administration on the database, for ``mpupload users`` (no HTTP, no prompts)."""

from __future__ import annotations

from typing import TextIO

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import UsageError
from .auth import hash_password, revoke_user_tokens
from .db.models import Token, User, as_utc, utcnow

__all__ = ["add_user", "set_password", "remove_user", "revoke_tokens", "list_users"]


async def _user(session: AsyncSession, name: str) -> User:
    user = (await session.execute(select(User).where(User.name == name))).scalar_one_or_none()
    if user is None:
        raise UsageError(f"no user {name!r}; see mpupload users list")
    return user


async def add_user(session: AsyncSession, name: str, password: str) -> int:
    """Create a user; :class:`UsageError` when the name is taken."""
    if (await session.execute(select(User.id).where(User.name == name))).first() is not None:
        raise UsageError(f"user {name!r} already exists; use mpupload users passwd to change the password")
    session.add(User(name=name, password_hash=hash_password(password), created_at=utcnow()))
    await session.commit()
    return 0


async def set_password(session: AsyncSession, name: str, password: str) -> int:
    """Change a password and revoke the user's tokens."""
    user = await _user(session, name)
    user.password_hash = hash_password(password)
    await session.commit()
    await revoke_user_tokens(session, user.id)
    return 0


async def remove_user(session: AsyncSession, name: str) -> int:
    """Delete a user; their tokens and uploads go with them."""
    user = await _user(session, name)
    await session.execute(delete(User).where(User.id == user.id))
    await session.commit()
    return 0


async def revoke_tokens(session: AsyncSession, name: str) -> int:
    """Revoke every live token of a user; return how many."""
    return await revoke_user_tokens(session, (await _user(session, name)).id)


async def list_users(session: AsyncSession, out: TextIO) -> int:
    """Print ``NAME  created ...  tokens N`` per user (N: live tokens)."""
    now = utcnow()
    rows = (await session.execute(select(User).order_by(User.name))).scalars().all()
    tokens = (await session.execute(select(Token.user_id, Token.expires_at).where(Token.revoked.is_(False)))).all()
    live: dict[int, int] = {}
    for user_id, expires_at in tokens:
        if as_utc(expires_at) > now:
            live[user_id] = live.get(user_id, 0) + 1
    for user in rows:
        created = as_utc(user.created_at).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{user.name}\tcreated {created}\ttokens {live.get(user.id, 0)}", file=out)

    return 0
