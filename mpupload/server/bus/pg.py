"""PostgreSQL LISTEN/NOTIFY bus (asyncpg).

* One dedicated listener connection per bus instance, with a termination listener and a periodic
  ``SELECT 1`` health check. When it dies, a supervisor task reconnects with exponential backoff and LISTENs
  again on every channel that still has subscribers. Notifications sent while disconnected are lost
  (at-most-once): after a reconnect every subscription receives :data:`~.local.RESYNC`, and consumers
  re-read state from the database (they also do after subscribing).
* Publishing uses its own connection (``SELECT pg_notify($1, $2)``), re-opened on the next publish after a
  failure. :meth:`PostgresBus.publish` never raises on a broker outage: it logs and drops.
* Channel strings (``user:42``) are mapped to safe identifiers: ``prefix`` + the first 40 hex digits of
  their SHA-256; the original string travels in the message envelope ``{"c": channel, "p": payload}`` and is
  checked on receipt.
* NOTIFY payloads are capped at 8000 bytes. An envelope over :data:`MAX_NOTIFY_BYTES` is replaced by the
  id-only form ``{"id": payload["id"], "refetch": True}``: receivers must re-read that record from the
  database. An oversize payload without an ``"id"`` is logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from typing import Any

import asyncpg

from mpupload.server.bus.local import DEFAULT_BUFFER_SIZE, BufferedSubscription, FanOut
from mpupload.server.bus.signing import Signer

log = logging.getLogger(__name__)

MAX_NOTIFY_BYTES = 7900
REFETCH_FLAG = "refetch"


def channel_ident(channel: str, prefix: str = "mpu_") -> str:
    """A lowercase identifier, safe for LISTEN and well under PostgreSQL's 63-byte limit."""
    return prefix + hashlib.sha256(channel.encode()).hexdigest()[:40]


def encode_notify(channel: str, payload: dict[str, Any], signer: Signer | None = None) -> str | None:
    """The NOTIFY text for ``payload`` (signed when a ``signer`` is given), or its id-only form when too big;
    None when it cannot be sent."""
    signed = payload if signer is None else signer.sign(channel, payload)
    text = json.dumps({"c": channel, "p": signed}, separators=(",", ":"), default=str)
    if len(text.encode()) <= MAX_NOTIFY_BYTES:
        return text
    if "id" not in payload:
        return None
    small: dict[str, Any] = {"id": payload["id"], REFETCH_FLAG: True}
    if signer is not None:
        small = signer.sign(channel, small)
    text = json.dumps({"c": channel, "p": small}, default=str)
    return text if len(text.encode()) <= MAX_NOTIFY_BYTES else None


class PostgresBus:
    def __init__(
        self,
        dsn: str,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        prefix: str = "mpu_",
        health_interval: float = 5.0,
        connect_timeout: float = 5.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.buffer_size = buffer_size
        self.prefix = prefix
        self.health_interval = health_interval
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.reconnects = 0
        self._fanout = FanOut()
        self._idents: dict[str, str] = {}  # identifier -> channel
        self._listen_conn: asyncpg.Connection | None = None
        self._listen_lock = asyncio.Lock()
        self._lost = asyncio.Event()
        self._pub_conn: asyncpg.Connection | None = None
        self._pub_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._signer: Signer | None = None

    def use_signer(self, signer: Signer) -> None:
        """Sign every published message and drop every received one without a valid signature."""
        self._signer = signer
        self._fanout.verify = signer.verify

    @property
    def connected(self) -> bool:
        """Whether the listener connection is up (False from a detected loss until the reconnect)."""
        conn = self._listen_conn
        return conn is not None and not conn.is_closed() and not self._lost.is_set()

    async def start(self) -> None:
        """Open the listener connection (raises when the database is unreachable) and start supervising it."""
        await self._connect_listener()
        self._task = asyncio.create_task(self._supervise(), name="pg-bus-supervisor")

    async def close(self) -> None:
        self._closing = True
        self._lost.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for conn in (self._listen_conn, self._pub_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2.0)
                if not conn.is_closed():
                    conn.terminate()
        self._listen_conn = self._pub_conn = None
        self._fanout.end_all()

    # -- publishing --

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        text = encode_notify(channel, payload, self._signer)
        if text is None:
            log.warning("bus: dropping an oversize payload without an id on %r", channel)
            return
        ident = channel_ident(channel, self.prefix)
        async with self._pub_lock:
            try:
                if self._pub_conn is None or self._pub_conn.is_closed():
                    self._pub_conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
                await self._pub_conn.execute("SELECT pg_notify($1, $2)", ident, text, timeout=self.connect_timeout)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    asyncpg.InternalClientError) as exc:
                # InternalClientError: a connection whose server died mid-operation ("cannot switch to state ...;
                # another operation is in progress"); the connection is dropped like any broken one
                log.warning("bus: publish on %r dropped: %s", channel, exc)
                conn, self._pub_conn = self._pub_conn, None
                if conn is not None:
                    conn.terminate()

    # -- subscribing --

    def subscribe(self, channel: str, key: str | None = None) -> BufferedSubscription:
        return BufferedSubscription(channel, self._attach, self._detach, self.buffer_size, key)

    async def _attach(self, sub: BufferedSubscription) -> None:
        if self._fanout.add(sub):
            ident = channel_ident(sub.channel, self.prefix)
            self._idents[ident] = sub.channel
            await self._listen(ident)

    async def _detach(self, sub: BufferedSubscription) -> None:
        if self._fanout.remove(sub):
            ident = channel_ident(sub.channel, self.prefix)
            self._idents.pop(ident, None)
            async with self._listen_lock:
                conn = self._listen_conn
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.remove_listener(ident, self._on_notify)

    async def _listen(self, ident: str) -> None:
        async with self._listen_lock:
            conn = self._listen_conn
            if conn is None or conn.is_closed():
                return  # the supervisor LISTENs on reconnect
            try:
                await conn.add_listener(ident, self._on_notify)
            except Exception as exc:
                log.warning("bus: LISTEN failed, will retry after reconnecting: %s", exc)
                self._lost.set()

    def _on_notify(self, conn: object, pid: int, ident: str, text: str) -> None:
        channel = self._idents.get(ident)
        if channel is None:
            return
        try:
            message = json.loads(text)
        except ValueError:
            log.warning("bus: undecodable notification on %r", channel)
            return
        if not isinstance(message, dict) or message.get("c") != channel or not isinstance(message.get("p"), dict):
            return
        self._fanout.deliver(channel, message["p"])

    def _on_terminate(self, conn: object) -> None:
        if conn is self._listen_conn:
            self._lost.set()

    # -- listener connection supervision --

    async def _connect_listener(self) -> None:
        conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
        async with self._listen_lock:
            self._listen_conn = conn
            self._lost.clear()
            conn.add_termination_listener(self._on_terminate)
            for ident in list(self._idents):
                await conn.add_listener(ident, self._on_notify)

    async def _drop_listener(self) -> None:
        async with self._listen_lock:
            conn, self._listen_conn = self._listen_conn, None
        if conn is not None:
            conn.terminate()

    async def _supervise(self) -> None:
        while not self._closing:
            # Healthy: wait for the termination listener, checking the connection now and then.
            try:
                await asyncio.wait_for(self._lost.wait(), self.health_interval)
            except TimeoutError:
                if await self._healthy():
                    continue
            if self._closing:
                return
            log.warning("bus: PostgreSQL listener connection lost; reconnecting")
            await self._drop_listener()
            delay = self.backoff_initial
            while not self._closing:
                try:
                    await self._connect_listener()
                except Exception as exc:
                    log.info("bus: reconnect failed (%s); retrying in %.1fs", exc, delay)
                    await self._drop_listener()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.backoff_max)
                else:
                    self.reconnects += 1
                    log.warning("bus: PostgreSQL listener reconnected")
                    self._fanout.resync()
                    break

    async def _healthy(self) -> bool:
        async with self._listen_lock:
            conn = self._listen_conn
            if conn is None or conn.is_closed():
                return False
            try:
                await conn.execute("SELECT 1", timeout=self.connect_timeout)
            except Exception:
                return False
        return True
