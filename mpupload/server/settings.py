"""Server settings: one frozen dataclass built from command-line values and the environment.

Environment variables (a command-line value wins):

=================================  ==========================================================
``MPUPLOAD_DATABASE_URL``          ``sqlite:///PATH`` or ``postgresql://...`` (driver added)
``MPUPLOAD_BROKER_URL``            pub/sub backend; unset means in-process
``MPUPLOAD_TOKEN_TTL``             token lifetime in seconds
``MPUPLOAD_LOGIN_MAX_PER_USER``    failed logins per user from one address per window before 429
``MPUPLOAD_LOGIN_MAX_PER_ADDRESS`` failed logins per client address per window before 429
``MPUPLOAD_LOGIN_WINDOW``          the rate-limit window in seconds
``MPUPLOAD_LIVE_AFTER``            an upload is no longer ``live`` after this many silent seconds
``MPUPLOAD_HISTORY_LIMIT``         samples kept per upload for the chart
``MPUPLOAD_TOKEN_RECHECK``         seconds between token re-checks on a long-lived WebSocket
``MPUPLOAD_SUBSCRIBER_BUFFER``     events held for a subscriber that reads slowly (then latest wins)
``MPUPLOAD_MAX_UPLOADS_PER_USER``  upload records a user may have; one more is refused with 409
``MPUPLOAD_LOGIN_MAX_KEYS``        (address, user) pairs and addresses the login limiter remembers
=================================  ==========================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

__all__ = ["Settings", "default_database_url", "normalize_database_url"]

DEFAULT_TOKEN_TTL_S = 30 * 24 * 3600.0
DEFAULT_LIVE_AFTER_S = 30.0
DEFAULT_HISTORY_LIMIT = 600


def default_database_url(env: Mapping[str, str] | None = None) -> str:
    """SQLite in the user's data directory (``$XDG_DATA_HOME/mpupload/server.db``)."""
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite+aiosqlite:///{Path(base) / 'mpupload' / 'server.db'}"


def normalize_database_url(url: str) -> str:
    """Map a plain URL to the async driver this server uses; raise :class:`UsageError` for anything else."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise UsageError(f"bad database URL {url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")
    scheme = scheme.lower()
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        return f"sqlite+aiosqlite://{rest}"
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        return f"postgresql+asyncpg://{rest}"
    raise UsageError(f"unsupported database URL scheme {scheme!r}: use sqlite:///PATH or postgresql://...")


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise UsageError(f"{name} must be positive, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to know; no module-level globals."""

    database_url: str
    broker_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token_ttl_s: float = DEFAULT_TOKEN_TTL_S
    login_max_per_user: int = 5
    login_max_per_address: int = 20
    login_window_s: float = 60.0
    live_after_s: float = DEFAULT_LIVE_AFTER_S
    history_limit: int = DEFAULT_HISTORY_LIMIT
    token_recheck_s: float = 30.0
    subscriber_buffer: int = 256
    max_uploads_per_user: int = 10_000
    login_max_keys: int = 10_000

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(
        cls,
        *,
        database_url: str | None = None,
        broker_url: str | None = None,
        host: str | None = None,
        port: int | None = None,
        token_ttl_s: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Settings:
        """Build settings from explicit values, falling back to the environment, then to defaults."""
        env = os.environ if env is None else env
        raw_db = database_url or env.get("MPUPLOAD_DATABASE_URL") or default_database_url(env)
        return cls(
            database_url=normalize_database_url(raw_db),
            broker_url=broker_url or env.get("MPUPLOAD_BROKER_URL") or None,
            host=host or "127.0.0.1",
            port=8000 if port is None else port,
            token_ttl_s=token_ttl_s if token_ttl_s is not None else _number(env, "MPUPLOAD_TOKEN_TTL",
                                                                            DEFAULT_TOKEN_TTL_S),
            login_max_per_user=int(_number(env, "MPUPLOAD_LOGIN_MAX_PER_USER", 5)),
            login_max_per_address=int(_number(env, "MPUPLOAD_LOGIN_MAX_PER_ADDRESS", 20)),
            login_window_s=_number(env, "MPUPLOAD_LOGIN_WINDOW", 60.0),
            live_after_s=_number(env, "MPUPLOAD_LIVE_AFTER", DEFAULT_LIVE_AFTER_S),
            history_limit=int(_number(env, "MPUPLOAD_HISTORY_LIMIT", DEFAULT_HISTORY_LIMIT)),
            token_recheck_s=_number(env, "MPUPLOAD_TOKEN_RECHECK", 30.0),
            subscriber_buffer=int(_number(env, "MPUPLOAD_SUBSCRIBER_BUFFER", 256)),
            max_uploads_per_user=int(_number(env, "MPUPLOAD_MAX_UPLOADS_PER_USER", 10_000)),
            login_max_keys=int(_number(env, "MPUPLOAD_LOGIN_MAX_KEYS", 10_000)),
        )
