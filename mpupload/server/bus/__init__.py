"""Pub/sub between replicas: the port (:class:`Bus`), the in-process default and :func:`make_bus`."""

from __future__ import annotations

from ...errors import UsageError
from .base import Bus
from .local import LocalBus

__all__ = ["Bus", "LocalBus", "make_bus"]


def make_bus(broker_url: str | None) -> Bus:
    """The bus for a broker URL: none → in-process; ``redis://`` → Redis; ``postgresql://`` → LISTEN/NOTIFY."""
    if not broker_url or broker_url in ("local", "memory://"):
        return LocalBus()
    scheme = broker_url.partition("://")[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisBus

        return RedisBus(broker_url)
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        from .pg import PostgresBus

        return PostgresBus("postgresql://" + broker_url.partition("://")[2])
    raise UsageError(f"unsupported broker URL {broker_url!r}: use redis://HOST:PORT or postgresql://...")
