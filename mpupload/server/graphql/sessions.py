"""The WebSockets this replica holds, by user and by token row, and the watcher that ends them.

A socket is bound to a user *and* a token row (:class:`.context.GraphQLContext`). It ends, closed with
:data:`TOKEN_REJECTED_CODE` (4403), as soon as that row is gone, revoked, expired or no longer the user's:

* at once on a revocation published on the bus (:mod:`..bus.revocation`: logout, ``users revoke``,
  ``users passwd``, ``users remove``; with a broker, on every replica), which makes the watcher re-check
  the affected sockets in the database (a message only says "look now": the database decides);
* otherwise within ``token_recheck_s`` (``MPUPLOAD_TOKEN_RECHECK``): the watcher re-checks every socket's
  token row that often, whether or not events flow. That covers expiry, and the ``users`` commands run
  without a broker (another process: the in-process bus cannot carry their message).

A user holds at most ``max_per_user`` sockets on one replica; one more is closed with
:data:`TOO_MANY_CODE` (4429). While the database is unavailable the sockets stay open (the re-check is
retried; they end at the first re-check that can read the database).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..bus.base import Bus
from ..bus.revocation import REVOCATION_CHANNEL
from ..db.engine import unavailable_reason
from ..db.models import Token, as_utc, utcnow

if TYPE_CHECKING:
    from .context import GraphQLContext

__all__ = ["Sessions", "TOKEN_REJECTED_CODE", "TOO_MANY_CODE"]

log = logging.getLogger(__name__)

TOKEN_REJECTED_CODE = 4403
TOO_MANY_CODE = 4429
TOKEN_REJECTED_REASON = "token expired or revoked: sign in again"
_CHUNK = 500
_RETRY_S = 1.0


class Sessions:
    """Open GraphQL WebSockets of this process, and the watcher task (:meth:`run`) that ends revoked ones."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], recheck_s: float,
                 max_per_user: int) -> None:
        self.sessionmaker = sessionmaker
        self.recheck_s = recheck_s
        self.max_per_user = max_per_user
        self._by_user: dict[int, set[GraphQLContext]] = {}

    def add(self, context: GraphQLContext) -> bool:
        """Register a signed-in socket; False (not registered) when its user already holds the maximum."""
        held = self._by_user.setdefault(context.user_id, set())
        if len(held) >= self.max_per_user:
            if not held:
                del self._by_user[context.user_id]
            return False
        held.add(context)
        return True

    def discard(self, context: GraphQLContext) -> None:
        held = self._by_user.get(context.user_id)
        if held is not None:
            held.discard(context)
            if not held:
                del self._by_user[context.user_id]

    def of_user(self, user_id: int) -> list[GraphQLContext]:
        return list(self._by_user.get(user_id, ()))

    def all(self) -> list[GraphQLContext]:
        return [context for held in self._by_user.values() for context in held]

    async def recheck(self, contexts: Iterable[GraphQLContext]) -> int:
        """Re-read the token rows of ``contexts``; close those no longer valid (4403). How many were closed."""
        pending = [c for c in contexts if not c.ended]
        if not pending:
            return 0
        rows: dict[int, tuple[int, bool, Any]] = {}
        ids = sorted({c.token_id for c in pending})
        async with self.sessionmaker() as session:
            for start in range(0, len(ids), _CHUNK):
                found = await session.execute(select(Token.id, Token.user_id, Token.revoked, Token.expires_at)
                                              .where(Token.id.in_(ids[start:start + _CHUNK])))
                rows.update((r[0], (r[1], r[2], r[3])) for r in found)
        now = utcnow()
        closed = 0
        for context in pending:
            row = rows.get(context.token_id)
            if row is not None and row[0] == context.user_id and not row[1] and as_utc(row[2]) > now:
                continue
            why = "gone" if row is None else "revoked" if row[1] else "expired" if row[0] == context.user_id \
                else "not the user's"
            log.info("WebSocket of user %d closed with %d: token %d %s", context.user_id, TOKEN_REJECTED_CODE,
                     context.token_id, why)
            await context.end(TOKEN_REJECTED_CODE, TOKEN_REJECTED_REASON)
            closed += 1
        return closed

    def _affected(self, payload: dict[str, Any]) -> list[GraphQLContext]:
        user_id, token_id = payload.get("user_id"), payload.get("token_id")
        if isinstance(user_id, int):
            held = self.of_user(user_id)
            return held if token_id is None else [c for c in held if c.token_id == token_id]
        return self.all()  # not understood: re-check everything (the database decides)

    async def run(self, bus: Bus | None) -> None:
        """The watcher: every ``recheck_s``, and at once on a revocation, re-check the sockets' tokens."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                if bus is None:
                    while True:
                        await asyncio.sleep(self.recheck_s)
                        await self.recheck(self.all())
                async with bus.subscribe(REVOCATION_CHANNEL) as revocations:
                    next_check = loop.time() + self.recheck_s
                    while True:
                        try:
                            payload: dict[str, Any] | None = await asyncio.wait_for(
                                anext(revocations), max(0.0, next_check - loop.time()))
                        except TimeoutError:
                            payload = None
                        except StopAsyncIteration:
                            return  # the bus is closing
                        if payload is None or payload.get("resync"):
                            await self.recheck(self.all())  # after a reconnect: revocations may be lost
                            next_check = loop.time() + self.recheck_s
                        else:
                            await self.recheck(self._affected(payload))
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one failure
                reason = unavailable_reason(exc)
                if reason is None:
                    log.exception("token re-check failed; retrying in %.0f s", _RETRY_S)
                else:
                    log.warning("database unavailable (%s): token re-check retried in %.0f s", reason, _RETRY_S)
                await asyncio.sleep(_RETRY_S)
