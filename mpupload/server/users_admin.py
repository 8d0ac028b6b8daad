"""Account administration on the database, for ``mpupload users`` (no HTTP, no prompts).

``passwd``, ``revoke`` and ``remove`` end the user's open WebSockets on every server: with a broker
(``MPUPLOAD_BROKER_URL``) they publish a signed revocation and each replica closes the sockets at once;
without one (or when the broker is down) each server notices within ``MPUPLOAD_TOKEN_RECHECK`` seconds, by
its periodic re-check of every socket's token in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TextIO

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import UsageError
from .auth import hash_password, revoke_user_tokens
from .bus import make_bus
from .bus.revocation import publish_revocation
from .bus.signing import attach_signer, load_signer
from .db.models import Token, User, as_utc, utcnow

log = logging.getLogger(__name__)
#: how long a command waits for the broker before leaving it to the servers' periodic re-check
ANNOUNCE_TIMEOUT_S = 5.0

__all__ = ["add_user", "set_password", "remove_user", "revoke_tokens", "list_users", "announce_revocation"]


async def _user(session: AsyncSession, name: str) -> User:
    user = (await session.execute(select(User).where(User.name == name))).scalar_one_or_none()
    if user is None:
        raise UsageError(f"no user {name!r}; see mpupload users list")
    return user


async def announce_revocation(session: AsyncSession, user_id: int) -> bool:
    """Publish a revocation of ``user_id``'s tokens on the configured broker; False when there is none or it
    cannot be reached (the servers' periodic re-check then ends the sockets)."""
    broker_url = os.environ.get("MPUPLOAD_BROKER_URL")
    if not broker_url:
        return False
    bus = make_bus(broker_url)
    try:
        async with asyncio.timeout(ANNOUNCE_TIMEOUT_S):
            start = getattr(bus, "start", None)
            if start is not None:
                await start()
            attach_signer(bus, await load_signer(session))
            await publish_revocation(bus, user_id)
    except Exception as exc:  # noqa: BLE001 - the database change is done; the re-check covers the rest
        log.warning("could not announce the revocation on the broker (%s): open sockets end at the servers' "
                    "next token re-check", exc)
        return False
    finally:
        close = getattr(bus, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
    return True


async def add_user(session: AsyncSession, name: str, password: str, quota_bytes: int | None = None) -> int:
    """Create a user (``quota_bytes``: the brokered-upload quota, ``None``: none); :class:`UsageError` when the name
    is taken."""
    if (await session.execute(select(User.id).where(User.name == name))).first() is not None:
        raise UsageError(f"user {name!r} already exists; use mpupload users passwd to change the password")
    session.add(User(name=name, password_hash=hash_password(password), created_at=utcnow(), quota_bytes=quota_bytes))
    await session.commit()
    return 0


async def set_password(session: AsyncSession, name: str, password: str) -> int:
    """Change a password and revoke the user's tokens."""
    user = await _user(session, name)
    user.password_hash = hash_password(password)
    await session.commit()
    await revoke_user_tokens(session, user.id)
    await announce_revocation(session, user.id)
    return 0


async def set_quota(session: AsyncSession, name: str, quota_bytes: int | None) -> int:
    """Set (``None``: remove) a user's quota of brokered bytes in flight and stored."""
    user = await _user(session, name)
    user.quota_bytes = quota_bytes
    await session.commit()
    return 0


async def remove_user(session: AsyncSession, name: str) -> int:
    """Delete a user; their tokens and uploads go with them."""
    user = await _user(session, name)
    user_id = user.id
    await session.execute(delete(User).where(User.id == user_id))
    await session.commit()
    await announce_revocation(session, user_id)
    return 0


async def revoke_tokens(session: AsyncSession, name: str) -> int:
    """Revoke every live token of a user; return how many."""
    user_id = (await _user(session, name)).id
    count = await revoke_user_tokens(session, user_id)
    await announce_revocation(session, user_id)
    return count


async def list_users(session: AsyncSession, out: TextIO) -> int:
    """Print ``NAME  created ...  tokens N`` per user (N: live tokens)."""
    now = utcnow()
    rows = (await session.execute(select(User).order_by(User.name))).scalars().all()
    tokens = (await session.execute(select(Token.user_id, Token.expires_at).where(Token.revoked.is_(False),
                                                                        Token.upload_id.is_(None)))).all()
    live: dict[int, int] = {}
    for user_id, expires_at in tokens:
        if as_utc(expires_at) > now:
            live[user_id] = live.get(user_id, 0) + 1
    for user in rows:
        created = as_utc(user.created_at).strftime("%Y-%m-%dT%H:%M:%SZ")
        quota = "" if user.quota_bytes is None else f"\tquota {user.quota_bytes}"
        print(f"{user.name}\tcreated {created}\ttokens {live.get(user.id, 0)}{quota}", file=out)

    return 0
