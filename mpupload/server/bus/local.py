"""In-process bus, and the bounded per-subscriber buffer and fan-out shared by every backend.

Each :class:`BufferedSubscription` holds at most ``maxsize`` pending payloads. While there is room, every
payload is queued in order. Once the buffer is full it never grows and never blocks the publisher: a payload
whose key (``payload["id"]``) is already pending replaces the pending one in place (latest wins); a payload
with a new key first collapses duplicates already pending, and if every pending payload has a distinct key
the oldest one is dropped (counted in :attr:`BufferedSubscription.dropped`). Payloads without an ``"id"``
are never merged.
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
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.channel = channel
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
    """Channel -> live subscriptions of one bus instance."""

    def __init__(self) -> None:
        self.subs: dict[str, set[BufferedSubscription]] = {}

    def add(self, sub: BufferedSubscription) -> bool:
        """Register ``sub``; True when it is the channel's first subscriber."""
        subs = self.subs.setdefault(sub.channel, set())
        subs.add(sub)
        return len(subs) == 1

    def remove(self, sub: BufferedSubscription) -> bool:
        """Unregister ``sub``; True when the channel has no subscriber left."""
        subs = self.subs.get(sub.channel)
        if subs is None:
            return False
        subs.discard(sub)
        if not subs:
            del self.subs[sub.channel]
            return True
        return False

    def deliver(self, channel: str, payload: dict[str, Any]) -> None:
        for sub in tuple(self.subs.get(channel, ())):
            sub.push(payload)

    def end_all(self) -> None:
        for subs in self.subs.values():
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
        for sub in tuple(self._fanout.subs.get(channel, ())):
            sub.push(dict(payload))

    def subscribe(self, channel: str) -> BufferedSubscription:
        return BufferedSubscription(channel, self._attach, self._detach, self.buffer_size)

    async def _attach(self, sub: BufferedSubscription) -> None:
        self._fanout.add(sub)

    async def _detach(self, sub: BufferedSubscription) -> None:
        self._fanout.remove(sub)
