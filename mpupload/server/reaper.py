"""The reaper: brokered uploads left idle are aborted on the store by the server itself.

A brokered upload's parts sit in the server's bucket, billed to the platform, until someone completes or aborts
the upload. A CLI that was killed, or whose host went away, does neither; the reaper does. An upload is idle when
nothing has touched it for ``--stale-after`` (default 24 h): no create, sign, complete or abort (its
``last_activity_at``) and no progress report (its ``updated_at``). Every replica runs a reaper; two that pick the
same upload both abort it, which the store answers as already gone, and the record is stopped once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import TYPE_CHECKING

from fastapi import HTTPException
from sqlalchemy import select

from .db.models import Upload, as_utc, utcnow
from .uploads import ACTIVE

if TYPE_CHECKING:
    from .api.deps import ServerState

__all__ = ["DEFAULT_STALE_AFTER_S", "reap_once", "run_reaper", "reap_every"]

log = logging.getLogger(__name__)

DEFAULT_STALE_AFTER_S = 24 * 3600.0
#: the reaper looks at most this seldom (and a quarter of ``--stale-after`` when that is shorter)
MAX_REAP_EVERY_S = 300.0
#: the uploads one pass aborts at most (the next pass takes the rest)
BATCH = 100


def reap_every(stale_after_s: float) -> float:
    return max(0.25, min(MAX_REAP_EVERY_S, stale_after_s / 4))


def _reason(stale_after_s: float) -> str:
    hours = stale_after_s / 3600
    span = f"{hours:g} h" if hours >= 1 else f"{stale_after_s:g} s"
    return f"idle for more than {span} (--stale-after): the server aborted it on the storage"


async def reap_once(state: ServerState, *, now: dt.datetime | None = None) -> int:
    """Abort the brokered uploads idle for longer than ``--stale-after``; how many were aborted."""
    from .api.broker import abort_on_store

    stale_after = state.settings.stale_after_s
    cutoff = (now or utcnow()) - dt.timedelta(seconds=stale_after)
    async with state.sessionmaker() as session:
        rows = await session.execute(
            select(Upload.id).where(Upload.brokered.is_(True), Upload.status.in_(list(ACTIVE)),
                                    Upload.updated_at < cutoff).order_by(Upload.updated_at).limit(BATCH))
        ids = list(rows.scalars())
    aborted = 0
    for upload_id in ids:
        async with state.sessionmaker() as session:
            upload = (await session.execute(
                select(Upload).where(Upload.id == upload_id).with_for_update())).scalar_one_or_none()
            if upload is None or upload.status not in ACTIVE:
                continue  # finished meanwhile (or another replica reaped it)
            touched = max(as_utc(upload.updated_at), as_utc(upload.last_activity_at or upload.created_at))
            if touched >= cutoff:
                continue  # a sign or a report came meanwhile
            try:
                outcome = await abort_on_store(session, state, upload, reason=_reason(stale_after))
            except HTTPException as exc:  # the store refused or is down: the next pass tries again
                log.warning("the reaper could not abort upload %s: %s", upload_id, exc.detail)
                continue
            aborted += 1
            log.info("the reaper aborted upload %s (%s), idle since %s: %s", upload_id, upload.storage_key,
                     touched.isoformat(), outcome)
    return aborted


async def run_reaper(state: ServerState) -> None:
    """Reap every :func:`reap_every` seconds until cancelled; a failed pass is logged, never fatal."""
    every = reap_every(state.settings.stale_after_s)
    while True:
        await asyncio.sleep(every)
        try:
            await reap_once(state)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the database is away for a moment: the next pass
            log.warning("a reaper pass failed", exc_info=True)
