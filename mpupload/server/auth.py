"""Passwords, tokens and the login rate limit.

* Passwords are argon2 hashes; verification (~150 ms) runs in a worker thread so the event loop keeps
  serving progress reports.
* Tokens are opaque random strings (``secrets.token_urlsafe(32)``) handed out once; the database keeps only
  their SHA-256, an expiry and a revoked flag.
* :class:`LoginRateLimiter` counts *failed* logins per user name and per client address in a sliding window.
  It lives in the process: with several replicas each one counts on its own, so the effective limit is
  the configured one times the number of replicas.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
import time
from collections import deque
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .db.models import Token, User, as_utc, utcnow

__all__ = ["hash_password", "verify_password", "hash_token", "issue_token", "token_user", "token_session",
           "token_row_valid", "revoke_token", "revoke_user_tokens", "LoginRateLimiter"]

_HASHER = PasswordHasher()
#: verified against when the user does not exist, so an unknown name costs the same time as a wrong password
_DUMMY_HASH = _HASHER.hash("mpupload-no-such-user")


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return _HASHER.hash(password)


def _verify_sync(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(password_hash: str | None, password: str) -> bool:
    """Check ``password`` in a worker thread; ``None`` (no such user) burns the same time and fails."""
    ok = await asyncio.to_thread(_verify_sync, password_hash or _DUMMY_HASH, password)
    return ok and password_hash is not None


def hash_token(token: str) -> str:
    """The SHA-256 (hex) under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


async def issue_token(session: AsyncSession, user: User, ttl_s: float) -> tuple[str, dt.datetime]:
    """Create a token for ``user``; return the plain token (shown once) and its expiry."""
    token = secrets.token_urlsafe(32)
    expires_at = utcnow() + dt.timedelta(seconds=ttl_s)
    session.add(Token(token_hash=hash_token(token), user_id=user.id, expires_at=expires_at, revoked=False))
    await session.commit()
    return token, expires_at


async def token_user(session: AsyncSession, token: str) -> User | None:
    """The user a token belongs to, or ``None`` when it is unknown, expired or revoked."""
    found = await token_session(session, token)
    return None if found is None else found[0]


async def token_session(session: AsyncSession, token: str) -> tuple[User, int] | None:
    """The user a token belongs to and the token's row id, or ``None`` when it is unknown, expired or revoked.

    A long-lived connection keeps both and re-checks them with :func:`token_row_valid`: ids are never reused
    (migration 0003), so a removed user's connection can never act as a later one."""
    row = (await session.execute(
        select(Token, User).join(User, User.id == Token.user_id).where(Token.token_hash == hash_token(token))
    )).first()
    if row is None:
        return None
    tok, user = row
    if tok.revoked or as_utc(tok.expires_at) <= utcnow():
        return None
    return user, tok.id


async def token_row_valid(session: AsyncSession, token_id: int, user_id: int) -> bool:
    """Whether token row ``token_id`` still exists, belongs to ``user_id``, and is neither revoked nor expired."""
    row = (await session.execute(
        select(Token.user_id, Token.revoked, Token.expires_at).where(Token.id == token_id))).first()
    return row is not None and row[0] == user_id and not row[1] and as_utc(row[2]) > utcnow()


async def revoke_token(session: AsyncSession, token: str) -> int | None:
    """Revoke one token (logout); its row id (None when there is no such token)."""
    token_id = (await session.execute(select(Token.id).where(Token.token_hash == hash_token(token)))).scalar()
    await session.execute(update(Token).where(Token.token_hash == hash_token(token)).values(revoked=True))
    await session.commit()
    return token_id


async def revoke_user_tokens(session: AsyncSession, user_id: int) -> int:
    """Revoke every live token of a user; return how many were revoked."""
    result = await session.execute(
        update(Token).where(Token.user_id == user_id, Token.revoked.is_(False)).values(revoked=True))
    await session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


class LoginRateLimiter:
    """Sliding-window count of failed logins per key (``user:NAME``, ``addr:IP``), in this process only."""

    def __init__(self, max_per_user: int, max_per_address: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = {"user": max_per_user, "addr": max_per_address}
        self._window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        now = self._clock()
        entries = self._failures.setdefault(key, deque())
        while entries and now - entries[0] >= self._window_s:
            entries.popleft()
        return entries

    def retry_after(self, username: str, address: str) -> float | None:
        """Seconds until another attempt is allowed, or ``None`` when it is allowed now."""
        waits: list[float] = []
        for kind, value in (("user", username), ("addr", address)):
            entries = self._recent(f"{kind}:{value}")
            if len(entries) >= self._limits[kind]:
                waits.append(self._window_s - (self._clock() - entries[0]))
        return max(waits) if waits else None

    def failed(self, username: str, address: str) -> None:
        """Record one failed attempt for both keys."""
        now = self._clock()
        for key in (f"user:{username}", f"addr:{address}"):
            self._recent(key).append(now)

    def succeeded(self, username: str) -> None:
        """Forget the user's failures after a good login (the address keeps its count)."""
        self._failures.pop(f"user:{username}", None)
