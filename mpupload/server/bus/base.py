"""The pub/sub port every backend implements (:mod:`.local`, :mod:`.pg`, :mod:`.redis`).

The server publishes, after every accepted change, the upload's record on the channel named after the
owner's user id (``str(user_id)``). Backends may also have ``async start()`` and ``async close()``; the
app's lifespan calls them when present.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .local import BufferedSubscription

__all__ = ["Bus"]


class Bus(Protocol):
    """Publish a JSON-able payload on a channel (never raises because a broker is down); subscribe to one.

    ``subscribe(channel, key)`` returns an async context manager and iterator of payloads, bounded and
    latest-wins (:class:`~.local.BufferedSubscription`); ``key`` narrows it to the payloads whose ``"id"``
    is ``key``. After a broker reconnect it yields :data:`~.local.RESYNC`.
    """

    async def publish(self, channel: str, payload: dict[str, Any]) -> None: ...

    def subscribe(self, channel: str, key: str | None = None) -> BufferedSubscription: ...
