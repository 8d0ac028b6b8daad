"""The subscriptions' streams: subscribe first, then read the state, then forward only what is newer.

The bus is at-most-once and the ``connection_ack`` comes before a subscription is registered, so a stream
never trusts the bus alone:

1. it subscribes to the owner's channel (narrowed to one upload for ``uploadProgress``),
2. then reads the current state from the database and sends it,
3. then forwards bus payloads, dropping any whose ``version`` is not above what it already sent.

Anything the bus lost is re-read from the database: after a broker reconnect (:data:`..bus.local.RESYNC`),
for a payload too big for the broker (``refetch``), and when a live upload's reports stop: once
``live_after_s`` has passed since its last report the record is re-read and sent again with ``live`` false
(or newer, if a report was missed). While the database is unavailable the stream stays open: a read that
fails is replaced by a re-read of everything a second later, until one succeeds (the first read, too). A
slow subscriber never holds an unbounded queue: the bus buffer keeps the latest state per upload. A token
that expires or is revoked ends the connection (4403): :class:`.sessions.Sessions` closes the socket within
seconds, whether or not events flow, and the stream stops forwarding as soon as it is closed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..db.engine import UNAVAILABLE, unavailable_reason
from ..uploads import ACTIVE, NotFound
from .context import GraphQLContext
from .sessions import TOKEN_REJECTED_CODE

__all__ = ["Follower", "follow", "TOKEN_REJECTED_CODE"]

log = logging.getLogger(__name__)

#: after a read failed because the database was unavailable, re-read everything this much later
_REREAD_UNAVAILABLE_S = 1.0
#: re-read a record this long after its ``live`` deadline, so that the server agrees it is no longer live
_LIVE_GRACE_S = 0.05
_RETRY_S = 0.25
_ACTIVE = frozenset(status.value for status in ACTIVE)


def _epoch(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


class Follower:
    """What one stream has sent (per upload: version and ``live``) and when each live upload goes quiet."""

    def __init__(self, live_after_s: float, clock: Callable[[], float] = time.time) -> None:
        self.live_after_s = live_after_s
        self.clock = clock
        self._sent: dict[str, tuple[int, bool]] = {}
        self._quiet_at: dict[str, float] = {}

    def remember(self, record: dict[str, Any]) -> None:
        """Note a record as sent without sending it (the state a client already has)."""
        self._sent[record["id"]] = (int(record["version"]), bool(record["live"]))
        self._schedule(record)

    def offer(self, record: dict[str, Any]) -> bool:
        """True when ``record`` must be sent: a newer version, or the same one that is no longer live."""
        key, version, live = record["id"], int(record["version"]), bool(record["live"])
        sent = self._sent.get(key)
        if sent is not None and (version < sent[0] or (version == sent[0] and (live or not sent[1]))):
            if live and key not in self._quiet_at:  # re-read a little too early: try again shortly
                self._quiet_at[key] = self.clock() + _RETRY_S
            return False
        self._sent[key] = (version, live)
        self._schedule(record)
        return True

    def _schedule(self, record: dict[str, Any]) -> None:
        key = record["id"]
        if record["live"] and record["status"] in _ACTIVE:
            last = record.get("last_report_at") or record["created_at"]
            self._quiet_at[key] = max(_epoch(last) + self.live_after_s + _LIVE_GRACE_S, self.clock() + _LIVE_GRACE_S)
        else:
            self._quiet_at.pop(key, None)

    def next_in(self) -> float | None:
        """Seconds until the next live upload goes quiet, or None when none is live."""
        if not self._quiet_at:
            return None
        return max(0.0, min(self._quiet_at.values()) - self.clock())

    def due(self) -> list[str]:
        """The uploads that have gone quiet since they were last sent (to be re-read)."""
        now = self.clock()
        keys = [k for k, at in self._quiet_at.items() if at <= now]
        for key in keys:
            del self._quiet_at[key]
        return keys


async def follow(context: GraphQLContext, upload_id: str | None) -> AsyncIterator[dict[str, Any]]:
    """Records of one upload (``upload_id``), or of all the viewer's uploads (None), as they change.

    For one upload the current state comes first (:class:`..uploads.NotFound` when it is not the
    viewer's). For all uploads, the active ones come first; the others are known but not re-sent.
    """
    bus = context.state.bus
    if bus is None:
        raise RuntimeError("the server has no bus")
    follower = Follower(context.live_after_s)

    async def current() -> list[dict[str, Any]]:
        if upload_id is None:
            return await context.uploads()
        record = await context.upload(upload_id)
        if record is None:
            raise NotFound(upload_id)
        return [record]

    async with bus.subscribe(str(context.user_id), upload_id) as subscription:
        while True:  # the first read waits for the database, like every later one
            try:
                first = await current()
                break
            except UNAVAILABLE as exc:
                reason = unavailable_reason(exc)
                if reason is None:
                    raise
                log.warning("database unavailable (%s): a new subscription reads again in %.0f s", reason,
                            _REREAD_UNAVAILABLE_S)
                await asyncio.sleep(_REREAD_UNAVAILABLE_S)
        for record in first:
            if upload_id is None and record["status"] not in _ACTIVE:
                follower.remember(record)
            elif follower.offer(record):
                yield record
        loop = asyncio.get_running_loop()
        reread_at: float | None = None  # a read failed (database unavailable): re-read everything then
        while not context.ended:
            timeout = follower.next_in()  # None: wait for the bus (the sessions watcher ends a revoked socket)
            if reread_at is not None:
                until_reread = max(0.0, reread_at - loop.time())
                timeout = until_reread if timeout is None else min(timeout, until_reread)
            try:
                payload: dict[str, Any] | None = await asyncio.wait_for(anext(subscription), timeout)
            except TimeoutError:
                payload = None
            except StopAsyncIteration:
                return
            try:
                if payload is None and reread_at is not None and loop.time() >= reread_at:
                    records = await current()  # whatever was missed while the database was away
                    reread_at = None
                elif payload is None:
                    records = [r for r in [await context.upload(k) for k in follower.due()] if r is not None]
                elif payload.get("resync"):
                    records = await current()
                elif payload.get("refetch"):
                    refetched = await context.upload(str(payload.get("id")))
                    records = [] if refetched is None else [refetched]
                else:
                    records = [payload]
            except UNAVAILABLE as exc:
                reason = unavailable_reason(exc)
                if reason is None:
                    raise
                if reread_at is None:
                    log.warning("database unavailable (%s): a subscription re-reads in %.0f s", reason,
                                _REREAD_UNAVAILABLE_S)
                reread_at = loop.time() + _REREAD_UNAVAILABLE_S  # the stream stays open meanwhile
                records = []
            for record in records:
                if context.ended:
                    return
                if follower.offer(record):
                    yield record
