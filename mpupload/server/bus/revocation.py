"""Revocations on the bus: logout, ``users revoke``, ``users passwd`` and ``users remove`` publish one, and
every replica re-checks, at once, the tokens of the WebSockets it holds for that user or token (the
database decides; the message only says "look now").

Payload: ``{"user_id": N}`` (every token of the user) or ``{"user_id": N, "token_id": M}`` (one token).
"""

from __future__ import annotations

from typing import Any

from .base import Bus

__all__ = ["REVOCATION_CHANNEL", "publish_revocation"]

#: not a number, so it never meets an owner's channel (``str(user_id)``)
REVOCATION_CHANNEL = "revocations"


async def publish_revocation(bus: Bus | None, user_id: int, token_id: int | None = None) -> None:
    if bus is None:
        return
    payload: dict[str, Any] = {"user_id": user_id}
    if token_id is not None:
        payload["token_id"] = token_id
    await bus.publish(REVOCATION_CHANNEL, payload)
