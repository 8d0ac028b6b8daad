"""Redis pub/sub bus (redis.asyncio).

* Every bus instance PSUBSCRIBEs once to ``<prefix>*`` on a dedicated pub/sub connection and fans messages
  out locally to the channels it has subscribers for. One pattern means there is nothing to track or
  re-issue per channel: after a reconnect a single PSUBSCRIBE restores everything. The cost is that each
  replica receives every message under the prefix, which is fine at this scale.
* A supervisor task reads the connection; any error (or a failed health-check PING: the client sends one
  when the connection has been idle for ``health_interval`` seconds) closes it and reconnects with
  exponential backoff. Messages published while disconnected are lost (at-most-once); after a reconnect
  every subscription receives :data:`~.local.RESYNC` so that consumers re-read state from the database.
* :meth:`RedisBus.publish` never raises on a broker outage: it logs and drops. A connection lost since the last
  publish (the broker restarted) is retried once on a fresh connection, so the first event after a
  restart is not lost.
* ``prefix`` namespaces the Redis channels so that tests or deployments sharing a Redis do not collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from mpupload.server.bus.local import DEFAULT_BUFFER_SIZE, BufferedSubscription, FanOut
from mpupload.server.bus.signing import Signer

log = logging.getLogger(__name__)


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\^" else ch for ch in text)


class RedisBus:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "mpupload:",
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        health_interval: float = 5.0,
        timeout: float = 5.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.buffer_size = buffer_size
        self.health_interval = health_interval
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.reconnects = 0
        self._fanout = FanOut()
        self._pattern = _glob_escape(prefix) + "*"
        self._client: Redis | None = None
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._signer: Signer | None = None

    def use_signer(self, signer: Signer) -> None:
        """Sign every published message and drop every received one without a valid signature."""
        self._signer = signer
        self._fanout.verify = signer.verify

    def _new_client(self) -> Redis:
        return Redis.from_url(
            self.url,
            socket_connect_timeout=self.timeout,
            health_check_interval=self.health_interval,
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
        )

    @property
    def connected(self) -> bool:
        """Whether the pub/sub connection is up (False from a detected loss until the resubscribe)."""
        return self._pubsub is not None

    async def start(self) -> None:
        """Subscribe (raises when Redis is unreachable) and start the reader/supervisor task."""
        self._client = self._new_client()
        self._pubsub = await self._subscribe()
        self._task = asyncio.create_task(self._supervise(), name="redis-bus-supervisor")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_pubsub()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None
        self._fanout.end_all()

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        if self._client is None:
            log.warning("bus: publish on %r before start(); dropped", channel)
            return
        if self._signer is not None:
            payload = self._signer.sign(channel, payload)
        text = json.dumps(payload, separators=(",", ":"), default=str)
        # A pooled connection can still point at a broker that restarted: the first command on it fails
        # ("Connection closed by server") and the pool drops it. One more attempt takes a fresh connection.
        # Should the first PUBLISH have reached Redis after all, the event arrives twice; streams drop a
        # version they have already sent, so that is harmless, and a lost event is not.
        for attempt in (1, 2):
            try:
                await asyncio.wait_for(self._client.publish(self.prefix + channel, text), self.timeout)
                return
            except (RedisConnectionError, ConnectionError) as exc:
                if attempt == 2:
                    log.warning("bus: publish on %r dropped: %s", channel, exc)
            except (TimeoutError, OSError, RedisError) as exc:
                log.warning("bus: publish on %r dropped: %s", channel, exc)
                return

    def subscribe(self, channel: str, key: str | None = None) -> BufferedSubscription:
        return BufferedSubscription(channel, self._attach, self._detach, self.buffer_size, key)

    async def _attach(self, sub: BufferedSubscription) -> None:
        self._fanout.add(sub)

    async def _detach(self, sub: BufferedSubscription) -> None:
        self._fanout.remove(sub)

    async def _subscribe(self) -> PubSub:
        assert self._client is not None
        pubsub = self._client.pubsub()
        try:
            await asyncio.wait_for(pubsub.psubscribe(self._pattern), self.timeout)
            # Wait for the confirmation so that messages published after start() are received.
            async with asyncio.timeout(self.timeout):
                while True:
                    msg = await pubsub.get_message(timeout=self.timeout)
                    if msg is not None and msg.get("type") == "psubscribe":
                        break
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            raise
        return pubsub

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), 2.0)  # type: ignore[no-untyped-call,unused-ignore]

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if msg.get("type") != "pmessage":
            return
        raw_channel = msg["channel"]
        if isinstance(raw_channel, bytes):
            raw_channel = raw_channel.decode()
        if not raw_channel.startswith(self.prefix):
            return
        channel = raw_channel[len(self.prefix) :]
        if channel not in self._fanout.subs:
            return
        try:
            payload = json.loads(msg["data"])
        except ValueError:
            log.warning("bus: undecodable message on %r", channel)
            return
        if isinstance(payload, dict):
            self._fanout.deliver(channel, payload)

    async def _supervise(self) -> None:
        while not self._closing:
            pubsub = self._pubsub
            try:
                if pubsub is None:
                    raise ConnectionError("not subscribed")
                loop = asyncio.get_running_loop()
                last_seen = pinged = loop.time()
                while True:
                    msg = await pubsub.get_message(timeout=self.health_interval)
                    now = loop.time()
                    if msg is not None:
                        last_seen = now
                        self._dispatch(msg)
                    elif now - last_seen > 2 * self.health_interval + self.timeout:
                        raise ConnectionError("no answer to PING")
                    if now - max(last_seen, pinged) >= self.health_interval:
                        # Answered with a "pong" message; silence means a dead (half-open) connection.
                        pinged = now
                        await asyncio.wait_for(pubsub.ping(), self.timeout)
            except (TimeoutError, OSError, RedisError) as exc:
                if self._closing:
                    return
                log.warning("bus: Redis pub/sub connection lost (%s); reconnecting", exc)
            await self._close_pubsub()
            delay = self.backoff_initial
            while not self._closing:
                try:
                    self._pubsub = await self._subscribe()
                except (TimeoutError, OSError, RedisError) as exc:
                    log.info("bus: reconnect failed (%s); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.backoff_max)
                else:
                    self.reconnects += 1
                    log.warning("bus: Redis pub/sub reconnected")
                    self._fanout.resync()
                    break
