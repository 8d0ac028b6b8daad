"""Pub/sub between replicas: the port (:class:`Bus`), the in-process default and :func:`make_bus`."""

from __future__ import annotations

from ...errors import UsageError
from .base import Bus
from .local import DEFAULT_BUFFER_SIZE, LocalBus

__all__ = ["Bus", "LocalBus", "make_bus"]


def make_bus(broker_url: str | None, buffer_size: int = DEFAULT_BUFFER_SIZE) -> Bus:
    """The bus for a broker URL: none → in-process; ``redis://`` → Redis; ``postgresql://`` → LISTEN/NOTIFY.

    ``buffer_size`` bounds what each subscription holds for a slow reader (then the latest state wins).
    """
    if not broker_url or broker_url in ("local", "memory://"):
        return LocalBus(buffer_size)
    scheme = broker_url.partition("://")[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisBus

        return RedisBus(broker_url, buffer_size=buffer_size)
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        from .pg import PostgresBus

        return PostgresBus("postgresql://" + broker_url.partition("://")[2], buffer_size=buffer_size)
    raise UsageError(f"unsupported broker URL {broker_url!r}: use redis://HOST:PORT or postgresql://...")
