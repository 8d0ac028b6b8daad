"""Signed bus messages: a broker is a transport, not an authority.

Anyone who can ``PUBLISH`` on the Redis server or ``NOTIFY`` on the PostgreSQL database could otherwise put a
forged upload on a dashboard, or a forged revocation on every replica. Every message a replica or the
``mpupload users`` command publishes on Redis or PostgreSQL carries ``"_sig"``: an HMAC-SHA256 of the channel
and the payload (canonical JSON), keyed with the secret in the ``bus_keys`` table (created once by a
migration, read by every replica from the shared database). A message without a valid signature is dropped
before it reaches any subscriber, and logged (at most once per :data:`LOG_EVERY_S`, with a count). The
in-process bus carries no signature: nothing outside the process can write to it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import BusKey

__all__ = ["SIG_FIELD", "Signer", "load_signer", "attach_signer"]

log = logging.getLogger(__name__)

SIG_FIELD = "_sig"
LOG_EVERY_S = 10.0


def _canonical(channel: str, payload: dict[str, Any]) -> bytes:
    body = {k: v for k, v in payload.items() if k != SIG_FIELD}
    return (channel + "\n" + json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)).encode()


class Signer:
    """Signs outgoing payloads and checks incoming ones with one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.rejected = 0
        self._logged_at = float("-inf")
        self._unlogged = 0

    def _mac(self, channel: str, payload: dict[str, Any]) -> str:
        return hmac.new(self._key, _canonical(channel, payload), hashlib.sha256).hexdigest()

    def sign(self, channel: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``payload`` with its signature added."""
        return {**payload, SIG_FIELD: self._mac(channel, payload)}

    def verify(self, channel: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The payload without its signature, or None (logged) when the signature is missing or wrong."""
        sig = payload.get(SIG_FIELD)
        if isinstance(sig, str) and hmac.compare_digest(sig, self._mac(channel, payload)):
            return {k: v for k, v in payload.items() if k != SIG_FIELD}
        self.rejected += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            log.warning("bus: dropped %d message(s) on %r with a missing or bad signature (someone else can "
                        "write to the broker, or a replica runs on another database)", self._unlogged, channel)
            self._logged_at, self._unlogged = now, 0
        return None


async def load_signer(session: AsyncSession) -> Signer:
    """The signer keyed with the database's bus key (migration 0004 created it)."""
    key = (await session.execute(select(BusKey.key).order_by(BusKey.id).limit(1))).scalar_one()
    return Signer(bytes.fromhex(key))


def attach_signer(bus: object, signer: Signer) -> None:
    """Make a broker-backed bus sign what it publishes and check what it receives (no-op for the local bus)."""
    use = getattr(bus, "use_signer", None)
    if use is not None:
        use(signer)
