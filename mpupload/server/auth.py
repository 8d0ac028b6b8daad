"""Passwords, tokens and the login rate limit.

* Passwords are argon2 hashes; verification (~150 ms) runs in a worker thread so the event loop keeps
  serving progress reports.
* Tokens are opaque random strings (``secrets.token_urlsafe(32)``) handed out once; the database keeps only
  their SHA-256, an expiry and a revoked flag.
* A **worker token** (:func:`issue_worker_token`) is made from a login token for one brokered upload or run, for
  a cluster's workers: it signs that record's URLs and nothing else (:func:`token_signer`), it is dead once the
  record is no longer active, it expires with the login token, and logging out revokes it. Every other way in
  (:func:`token_session`, and so every REST route, GraphQL and its subscriptions, the progress reports) knows
  only login tokens: a worker token is refused there as an unknown one.
* :class:`LoginRateLimiter` counts *failed* logins per (client address, user name) and per client address in
  a sliding window, in bounded memory. It lives in the process: with several replicas each one counts on its
  own, so the effective limit is the configured one times the number of replicas.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..wire import ACTIVE_STATUSES
from .db.models import Token, Upload, User, as_utc, utcnow

__all__ = ["hash_password", "verify_password", "prepare_dummy_hash", "hash_token", "issue_token", "token_user",
           "token_session", "token_row_valid", "revoke_token", "revoke_user_tokens", "issue_worker_token",
           "token_signer", "LoginRateLimiter"]

_HASHER = PasswordHasher()
#: verified against when the user does not exist, so an unknown name costs the same time as a wrong password;
#: hashed on first need (a hash costs as much as a verification), not at import: see :func:`_dummy_hash`
_dummy: str | None = None
_dummy_lock = threading.Lock()


def prepare_dummy_hash() -> None:
    """Compute the dummy hash now (blocking, ~150 ms), so that even the first login of an unknown user takes
    no longer than a wrong password: the server's start-up runs it in a worker thread."""
    _dummy_hash()


def _dummy_hash() -> str:
    """The dummy hash, computed once, by the first thread that needs it (the others wait for it)."""
    global _dummy
    if _dummy is None:
        with _dummy_lock:
            if _dummy is None:
                _dummy = _HASHER.hash("mpupload-no-such-user")
    return _dummy


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return _HASHER.hash(password)


def _verify_sync(password_hash: str | None, password: str) -> bool:
    try:  # in the worker thread: the first unknown user also pays for the dummy hash there, off the event loop
        return _HASHER.verify(password_hash or _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(password_hash: str | None, password: str) -> bool:
    """Check ``password`` in a worker thread; ``None`` (no such user) burns the same time and fails."""
    ok = await asyncio.to_thread(_verify_sync, password_hash, password)
    return ok and password_hash is not None


def hash_token(token: str) -> str:
    """The SHA-256 (hex) under which a token is stored."""
    # surrogatepass: a token sent with a lone surrogate (not valid UTF-8) hashes to something no token has,
    # so it is refused like any unknown token instead of failing the request
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


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
    """The user a login token belongs to and the token's row id, or ``None`` when it is unknown, expired or
    revoked, or a worker token.

    A long-lived connection keeps both and re-checks them with :func:`token_row_valid`: ids are never reused
    (migration 0003), so a removed user's connection can never act as a later one."""
    row = (await session.execute(
        select(Token, User).join(User, User.id == Token.user_id)
        .where(Token.token_hash == hash_token(token), Token.upload_id.is_(None))
    )).first()
    if row is None:
        return None
    tok, user = row
    if tok.revoked or as_utc(tok.expires_at) <= utcnow():
        return None
    return user, tok.id


async def issue_worker_token(session: AsyncSession, user_id: int, login_token: str, upload: Upload, *,
                             commit: bool = True) -> tuple[str, dt.datetime]:
    """A worker token for ``upload`` (the caller checked it is the user's and brokered), made with the login
    token ``login_token``: it expires when that does. The plain token (shown once) and its expiry."""
    parent = (await session.execute(select(Token.id, Token.expires_at).where(
        Token.token_hash == hash_token(login_token), Token.upload_id.is_(None)))).one()
    token = secrets.token_urlsafe(32)
    expires_at = as_utc(parent.expires_at)
    session.add(Token(token_hash=hash_token(token), user_id=user_id, expires_at=expires_at, revoked=False,
                      upload_id=upload.id, parent_id=parent.id))
    if commit:
        await session.commit()
    return token, expires_at


async def token_signer(session: AsyncSession, token: str) -> tuple[User, str | None] | None:
    """Who may sign brokered URLs with ``token``: a login token's user (and ``None``), a **worker** token's user
    and the record it signs for; ``None`` when the token is unknown, expired or revoked, or a worker token's
    record is no longer active. One query: the sign routes are the hot path of a brokered upload."""
    row = (await session.execute(
        select(Token, User, Upload.status).join(User, User.id == Token.user_id)
        .outerjoin(Upload, and_(Upload.id == Token.upload_id, Upload.owner_id == Token.user_id))
        .where(Token.token_hash == hash_token(token))
    )).first()
    if row is None:
        return None
    tok, user, status = row
    if tok.revoked or as_utc(tok.expires_at) <= utcnow():
        return None
    if tok.upload_id is None:
        return user, None
    return (user, tok.upload_id) if status in ACTIVE_STATUSES else None


async def token_row_valid(session: AsyncSession, token_id: int, user_id: int) -> bool:
    """Whether token row ``token_id`` still exists, belongs to ``user_id``, and is neither revoked nor expired."""
    row = (await session.execute(
        select(Token.user_id, Token.revoked, Token.expires_at).where(Token.id == token_id))).first()
    return row is not None and row[0] == user_id and not row[1] and as_utc(row[2]) > utcnow()


async def revoke_token(session: AsyncSession, token: str) -> int | None:
    """Revoke one token (logout), and the worker tokens made with it; its row id (None when there is no such
    token)."""
    token_id = (await session.execute(select(Token.id).where(Token.token_hash == hash_token(token)))).scalar()
    if token_id is None:
        return None
    await session.execute(update(Token).where(or_(Token.id == token_id, Token.parent_id == token_id))
                          .values(revoked=True))
    await session.commit()
    return token_id


async def revoke_user_tokens(session: AsyncSession, user_id: int) -> int:
    """Revoke every live token of a user; return how many were revoked."""
    result = await session.execute(
        update(Token).where(Token.user_id == user_id, Token.revoked.is_(False)).values(revoked=True))
    await session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


class LoginRateLimiter:
    """Sliding-window count of *failed* logins, in this process only, in bounded memory.

    Two counts: per (client address, user name) pair, limited to ``max_per_user`` (so a stranger's wrong
    passwords lock the name only from the stranger's address, never the owner out from theirs), and per
    client address, limited to ``max_per_address`` (a coarse cap on guessing many names from one place).
    A correct password is not counted and clears its pair (the address keeps its count). Asking whether an
    attempt is allowed stores nothing. Each map holds at most ``max_keys`` keys: a key is forgotten once its
    newest failure is older than the window, and when the map is full the least recently failed key goes.
    Each key keeps at most its limit of timestamps, and user names are length-checked before they get here
    (:data:`..limits.MAX_USERNAME_BYTES`), so the limiter's memory is bounded whatever clients send.
    """

    def __init__(self, max_per_user: int, max_per_address: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self._max_per_pair = max(1, max_per_user)
        self._max_per_address = max(1, max_per_address)
        self._window_s = window_s
        self._clock = clock
        self._max_keys = max(1, max_keys)
        #: key -> its newest failures, oldest first; the map is ordered by the newest failure, oldest first
        self._pairs: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._addresses: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        """How many keys are remembered (both maps)."""
        return len(self._pairs) + len(self._addresses)

    def _expire(self, failures: OrderedDict[Any, deque[float]], now: float) -> None:
        while failures:
            _, entries = next(iter(failures.items()))
            if now - entries[-1] < self._window_s:
                break
            failures.popitem(last=False)

    def _wait(self, entries: deque[float] | None, limit: int, now: float) -> float | None:
        if entries is None:
            return None
        recent = [t for t in entries if now - t < self._window_s]
        if len(recent) < limit:
            return None
        return self._window_s - (now - recent[-limit])

    def retry_after(self, username: str, address: str) -> float | None:
        """Seconds until another attempt is allowed, or ``None`` when it is allowed now (stores nothing)."""
        now = self._clock()
        waits = [wait for wait in (self._wait(self._pairs.get((address, username)), self._max_per_pair, now),
                                   self._wait(self._addresses.get(address), self._max_per_address, now))
                 if wait is not None]
        return max(waits) if waits else None

    def _record(self, failures: OrderedDict[Any, deque[float]], key: Any, limit: int, now: float) -> None:
        self._expire(failures, now)
        entries = failures.pop(key, None)
        if entries is None:
            entries = deque(maxlen=limit)
        entries.append(now)
        failures[key] = entries  # now the newest
        while len(failures) > self._max_keys:
            failures.popitem(last=False)

    def failed(self, username: str, address: str) -> None:
        """Record one failed attempt for the (address, user) pair and for the address."""
        now = self._clock()
        self._record(self._pairs, (address, username), self._max_per_pair, now)
        self._record(self._addresses, address, self._max_per_address, now)

    def succeeded(self, username: str, address: str) -> None:
        """Forget the pair's failures after a good login (the address keeps its count)."""
        self._pairs.pop((address, username), None)
