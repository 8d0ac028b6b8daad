"""In-process bus, and the bounded per-subscriber buffer and fan-out shared by every backend.

Each :class:`BufferedSubscription` holds at most ``maxsize`` pending payloads. While there is room, every
payload is queued in order. Once the buffer is full it never grows and never blocks the publisher: a payload
whose key (``payload["id"]``) is already pending replaces the pending one in place (latest wins); a payload
with a new key first collapses duplicates already pending, and if every pending payload has a distinct key
the oldest one is dropped (counted in :attr:`BufferedSubscription.dropped`). Payloads without an ``"id"``
are never merged.

A subscription may be narrowed to one record with ``key``: it then receives only the channel's payloads
whose ``"id"`` is that key (the fan-out finds them by key, so a hundred such subscribers on one channel cost
nothing per unrelated payload). When a backend reconnects to its broker, whatever was published meanwhile is
lost: it pushes :data:`RESYNC` to every subscription, and consumers re-read the state they follow.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_BUFFER_SIZE = 256
#: the payload a subscription receives after its bus reconnected: re-read the state from the database
RESYNC: dict[str, Any] = {"resync": True}


class _Entry:
    __slots__ = ("key", "payload")

    def __init__(self, key: object, payload: dict[str, Any]) -> None:
        self.key = key
        self.payload = payload


class BufferedSubscription:
    """A subscriber's bounded, latest-wins buffer; async context manager and async iterator of payloads."""

    def __init__(
        self,
        channel: str,
        attach: Callable[[BufferedSubscription], Awaitable[None]],
        detach: Callable[[BufferedSubscription], Awaitable[None]],
        maxsize: int = DEFAULT_BUFFER_SIZE,
        key: str | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.channel = channel
        self.key = key
        self.maxsize = maxsize
        self.dropped = 0
        self._attach = attach
        self._detach = detach
        self._queue: deque[_Entry] = deque()
        self._latest: dict[object, _Entry] = {}
        self._dupes = 0
        self._wakeup = asyncio.Event()
        self._closed = False
        self._attached = False

    # -- producer side (called synchronously by the bus, never blocks) --

    def push(self, payload: dict[str, Any]) -> None:
        if self._closed:
            return
        key: object = payload.get("id", object())
        if key is None:
            key = object()
        try:
            hash(key)
        except TypeError:
            key = object()
        if len(self._queue) < self.maxsize:
            entry = _Entry(key, payload)
            if key in self._latest:
                self._dupes += 1
            self._latest[key] = entry
            self._queue.append(entry)
        else:
            pending = self._latest.get(key)
            if pending is not None:
                pending.payload = payload
            else:
                if self._dupes:
                    self._compact()
                if len(self._queue) >= self.maxsize:
                    oldest = self._queue.popleft()
                    self.dropped += 1
                    if self._latest.get(oldest.key) is oldest:
                        del self._latest[oldest.key]
                entry = _Entry(key, payload)
                self._latest[key] = entry
                self._queue.append(entry)
        self._wakeup.set()

    def _compact(self) -> None:
        kept = deque(e for e in self._queue if self._latest.get(e.key) is e)
        self.dropped += len(self._queue) - len(kept)
        self._queue = kept
        self._dupes = 0

    def end(self) -> None:
        """The bus is closing: pending payloads can still be read, then iteration stops."""
        self._closed = True
        self._wakeup.set()

    # -- consumer side --

    def drain(self) -> list[dict[str, Any]]:
        """Every pending payload, without waiting."""
        out = []
        while self._queue:
            out.append(self._pop())
        return out

    def _pop(self) -> dict[str, Any]:
        entry = self._queue.popleft()
        if self._latest.get(entry.key) is entry:
            del self._latest[entry.key]
        elif self._dupes:
            self._dupes -= 1
        return entry.payload

    def __len__(self) -> int:
        return len(self._queue)

    def __aiter__(self) -> BufferedSubscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._pop()

    async def __aenter__(self) -> BufferedSubscription:
        await self._attach(self)
        self._attached = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        if self._attached:
            self._attached = False
            await self._detach(self)


class FanOut:
    """Channel -> key (``None``: every payload) -> live subscriptions of one bus instance."""

    def __init__(self) -> None:
        self.subs: dict[str, dict[str | None, set[BufferedSubscription]]] = {}
        #: checks a payload from the broker (``None``: drop it); set by :func:`..signing.attach_signer`
        self.verify: Callable[[str, dict[str, Any]], dict[str, Any] | None] | None = None

    def add(self, sub: BufferedSubscription) -> bool:
        """Register ``sub``; True when it is the channel's first subscriber."""
        first = sub.channel not in self.subs
        self.subs.setdefault(sub.channel, {}).setdefault(sub.key, set()).add(sub)
        return first

    def remove(self, sub: BufferedSubscription) -> bool:
        """Unregister ``sub``; True when the channel has no subscriber left."""
        by_key = self.subs.get(sub.channel)
        if by_key is None:
            return False
        subs = by_key.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del by_key[sub.key]
        if not by_key:
            del self.subs[sub.channel]
            return True
        return False

    def targets(self, channel: str, payload: dict[str, Any]) -> list[BufferedSubscription]:
        """The subscriptions ``payload`` goes to: the channel's unkeyed ones and those keyed by its id."""
        by_key = self.subs.get(channel)
        if not by_key:
            return []
        out = list(by_key.get(None, ()))
        key = payload.get("id")
        if isinstance(key, str) and key in by_key:
            out.extend(by_key[key])
        return out

    def deliver(self, channel: str, payload: dict[str, Any]) -> None:
        if channel not in self.subs:
            return
        if self.verify is not None:
            checked = self.verify(channel, payload)
            if checked is None:
                return
            payload = checked
        for sub in self.targets(channel, payload):
            sub.push(payload)

    def resync(self) -> None:
        """Tell every subscription that payloads may have been lost (after a reconnect)."""
        for by_key in self.subs.values():
            for subs in by_key.values():
                for sub in subs:
                    sub.push(dict(RESYNC))

    def end_all(self) -> None:
        for by_key in self.subs.values():
            for subs in by_key.values():
                for sub in subs:
                    sub.end()
        self.subs.clear()


class LocalBus:
    """In-process fan-out for the embedded single-process server. Each subscriber gets its own copy."""

    def __init__(self, buffer_size: int = DEFAULT_BUFFER_SIZE) -> None:
        self.buffer_size = buffer_size
        self._fanout = FanOut()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._fanout.end_all()

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        for sub in self._fanout.targets(channel, payload):
            sub.push(dict(payload))

    def subscribe(self, channel: str, key: str | None = None) -> BufferedSubscription:
        return BufferedSubscription(channel, self._attach, self._detach, self.buffer_size, key)

    async def _attach(self, sub: BufferedSubscription) -> None:
        self._fanout.add(sub)

    async def _detach(self, sub: BufferedSubscription) -> None:
        self._fanout.remove(sub)
