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
``MPUPLOAD_TOKEN_RECHECK``         seconds between re-checks of every open WebSocket's token (default 2)
``MPUPLOAD_SUBSCRIBER_BUFFER``     events held for a subscriber that reads slowly (then latest wins)
``MPUPLOAD_WS_MAX_PER_USER``       GraphQL WebSockets one user may hold on one server (then 4429)
``MPUPLOAD_WS_MAX_OPERATIONS``     operations (subscriptions) running at once on one WebSocket
``MPUPLOAD_ALLOWED_HOSTS``         comma-separated ``Host`` names answered (``*``: any); default
                                   loopback and ``--host``
``MPUPLOAD_FORWARDED_ALLOW_IPS``   comma-separated proxies whose ``X-Forwarded-For`` is trusted;
                                   default none
``MPUPLOAD_LIMIT_CONCURRENCY``     open connections (WebSockets too) before new requests get 503
``MPUPLOAD_HEADER_TIMEOUT``        seconds a request's headers may take to arrive
``MPUPLOAD_BODY_TIMEOUT``          seconds a request's body may take to arrive (then 408)
``MPUPLOAD_MAX_UPLOADS_PER_USER``  upload records a user may have; one more is refused with 409
``MPUPLOAD_LOGIN_MAX_KEYS``        (address, user) pairs and addresses the login limiter remembers
``MPUPLOAD_STORAGE``               ``s3://BUCKET[/PREFIX]``: the server's storage for brokered uploads
``MPUPLOAD_STORAGE_ENDPOINT_URL``  its endpoint (default: AWS, or ``AWS_ENDPOINT_URL``)
``MPUPLOAD_STORAGE_REGION``        its region
``MPUPLOAD_STORAGE_CA_BUNDLE``     the CA bundle its TLS certificate is checked with
``MPUPLOAD_STORAGE_ADDRESSING_STYLE`` ``auto``, ``path`` or ``virtual``
``MPUPLOAD_STORAGE_CONTENT_MD5``   ``1``: every signed part also carries a signed Content-MD5 (stores
                                   that check Content-MD5 but not the ``x-amz-checksum-*`` headers,
                                   such as Ceph RGW 16)
``MPUPLOAD_SIGN_EXPIRES``          seconds a signed part URL stays valid (default 900)
``MPUPLOAD_SIGN_MAX_PER_MINUTE``   part URLs one user may have signed per minute (then 429)
``MPUPLOAD_STALE_AFTER``           a brokered upload idle this long is aborted on the storage by the
                                   server (``--stale-after``: ``24h``, ``90m``, seconds; default 24h)
=================================  ==========================================================

``debug`` (``serve --debug``) also turns GraphQL introspection on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError

__all__ = ["Settings", "default_database_url", "normalize_database_url"]

DEFAULT_TOKEN_TTL_S = 30 * 24 * 3600.0
DEFAULT_LIVE_AFTER_S = 30.0
DEFAULT_HISTORY_LIMIT = 600
DEFAULT_LIMIT_CONCURRENCY = 2048
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 10.0


def default_limit_concurrency() -> int:
    """2048 connections, or fewer when the open-file limit is lower: past the cap a request gets 503; past the
    file limit the server could not even open a database connection."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return DEFAULT_LIMIT_CONCURRENCY
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_LIMIT_CONCURRENCY
    return max(16, min(DEFAULT_LIMIT_CONCURRENCY, soft - 128))


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
    token_recheck_s: float = 2.0
    subscriber_buffer: int = 256
    ws_max_per_user: int = 32
    ws_max_operations: int = 4
    debug: bool = False
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
    forwarded_allow_ips: tuple[str, ...] = ()
    limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    max_uploads_per_user: int = 10_000
    login_max_keys: int = 10_000
    #: ``s3://BUCKET[/PREFIX]`` for brokered uploads (``None``: this server has no storage)
    storage: str | None = None
    storage_endpoint_url: str | None = None
    storage_region: str | None = None
    storage_ca_bundle: str | None = None
    storage_addressing_style: str | None = None
    storage_content_md5: bool = False
    sign_expires_s: int = 900
    sign_max_per_minute: int = 20_000
    #: a brokered upload idle this long is aborted by the reaper (:mod:`.reaper`)
    stale_after_s: float = 24 * 3600.0

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
        debug: bool = False,
        allowed_hosts: str | None = None,
        forwarded_allow_ips: str | None = None,
        limit_concurrency: int | None = None,
        storage: str | None = None,
        storage_endpoint_url: str | None = None,
        storage_region: str | None = None,
        storage_ca_bundle: str | None = None,
        storage_addressing_style: str | None = None,
        storage_content_md5: bool | None = None,
        stale_after: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Settings:
        """Build settings from explicit values, falling back to the environment, then to defaults."""
        from .edge import check_forwarded_allow_ips, default_allowed_hosts, host_name

        env = os.environ if env is None else env
        raw_db = database_url or env.get("MPUPLOAD_DATABASE_URL") or default_database_url(env)
        listen = host or "127.0.0.1"
        hosts = _names(allowed_hosts if allowed_hosts is not None else env.get("MPUPLOAD_ALLOWED_HOSTS"))
        proxies = _names(forwarded_allow_ips if forwarded_allow_ips is not None
                         else env.get("MPUPLOAD_FORWARDED_ALLOW_IPS"))
        try:
            proxies = check_forwarded_allow_ips(proxies)
        except ValueError as exc:
            raise UsageError(f"--forwarded-allow-ips: {exc}") from None
        return cls(
            database_url=normalize_database_url(raw_db),
            broker_url=broker_url or env.get("MPUPLOAD_BROKER_URL") or None,
            host=listen,
            port=8000 if port is None else port,
            token_ttl_s=token_ttl_s if token_ttl_s is not None else _number(env, "MPUPLOAD_TOKEN_TTL",
                                                                            DEFAULT_TOKEN_TTL_S),
            login_max_per_user=int(_number(env, "MPUPLOAD_LOGIN_MAX_PER_USER", 5)),
            login_max_per_address=int(_number(env, "MPUPLOAD_LOGIN_MAX_PER_ADDRESS", 20)),
            login_window_s=_number(env, "MPUPLOAD_LOGIN_WINDOW", 60.0),
            live_after_s=_number(env, "MPUPLOAD_LIVE_AFTER", DEFAULT_LIVE_AFTER_S),
            history_limit=int(_number(env, "MPUPLOAD_HISTORY_LIMIT", DEFAULT_HISTORY_LIMIT)),
            token_recheck_s=_number(env, "MPUPLOAD_TOKEN_RECHECK", 2.0),
            subscriber_buffer=int(_number(env, "MPUPLOAD_SUBSCRIBER_BUFFER", 256)),
            ws_max_per_user=int(_number(env, "MPUPLOAD_WS_MAX_PER_USER", 32)),
            ws_max_operations=int(_number(env, "MPUPLOAD_WS_MAX_OPERATIONS", 4)),
            debug=debug,
            allowed_hosts=tuple(host_name(h) for h in hosts) if hosts else default_allowed_hosts(listen),
            forwarded_allow_ips=proxies,
            limit_concurrency=limit_concurrency if limit_concurrency is not None else int(
                _number(env, "MPUPLOAD_LIMIT_CONCURRENCY", default_limit_concurrency())),
            header_timeout_s=_number(env, "MPUPLOAD_HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT_S),
            body_timeout_s=_number(env, "MPUPLOAD_BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT_S),
            max_uploads_per_user=int(_number(env, "MPUPLOAD_MAX_UPLOADS_PER_USER", 10_000)),
            login_max_keys=int(_number(env, "MPUPLOAD_LOGIN_MAX_KEYS", 10_000)),
            **_storage_settings(env, storage=storage, storage_endpoint_url=storage_endpoint_url,
                                storage_region=storage_region, storage_ca_bundle=storage_ca_bundle,
                                storage_addressing_style=storage_addressing_style,
                                storage_content_md5=storage_content_md5, stale_after=stale_after),
        )


def _names(raw: str | None) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    return tuple(part.strip() for part in (raw or "").split(",") if part.strip())


def _storage_settings(env: Mapping[str, str], *, storage: str | None, storage_endpoint_url: str | None,
                      storage_region: str | None, storage_ca_bundle: str | None,
                      storage_addressing_style: str | None, storage_content_md5: bool | None,
                      stale_after: str | None = None) -> dict[str, Any]:
    """The storage settings (a command-line value wins over the environment), checked."""
    from ..units import parse_duration
    from .broker import parse_storage

    url = storage or env.get("MPUPLOAD_STORAGE") or None
    if url is not None:
        try:
            parse_storage(url)
        except ValueError as exc:
            raise UsageError(f"--storage: {exc}") from None
    style = storage_addressing_style or env.get("MPUPLOAD_STORAGE_ADDRESSING_STYLE") or None
    if style is not None and style not in ("auto", "path", "virtual"):
        raise UsageError(f"--storage-addressing-style must be auto, path or virtual, got {style!r}")
    ca_bundle = storage_ca_bundle or env.get("MPUPLOAD_STORAGE_CA_BUNDLE") or None
    if ca_bundle is not None and not Path(ca_bundle).is_file():
        raise UsageError(f"--storage-ca-bundle {ca_bundle}: no such file")
    md5 = storage_content_md5 if storage_content_md5 is not None else (
        env.get("MPUPLOAD_STORAGE_CONTENT_MD5", "").strip().lower() in ("1", "true", "yes", "on"))
    expires = int(_number(env, "MPUPLOAD_SIGN_EXPIRES", 900))
    if expires > 7 * 24 * 3600:
        raise UsageError(f"MPUPLOAD_SIGN_EXPIRES is at most 604800 seconds (SigV4's limit), got {expires}")
    raw_stale = stale_after or env.get("MPUPLOAD_STALE_AFTER") or "24h"
    try:
        stale_after_s = parse_duration(raw_stale.strip())
    except ValueError:
        raise UsageError(f"--stale-after {raw_stale!r}: use a duration such as 24h, 90m or 3600") from None
    if stale_after_s < 1:
        raise UsageError(f"--stale-after must be at least 1 second, got {raw_stale!r}")
    return {
        "storage": url,
        "storage_endpoint_url": storage_endpoint_url or env.get("MPUPLOAD_STORAGE_ENDPOINT_URL") or None,
        "storage_region": storage_region or env.get("MPUPLOAD_STORAGE_REGION") or None,
        "storage_ca_bundle": ca_bundle,
        "storage_addressing_style": style,
        "storage_content_md5": md5,
        "sign_expires_s": expires,
        "sign_max_per_minute": int(_number(env, "MPUPLOAD_SIGN_MAX_PER_MINUTE", 20_000)),
        "stale_after_s": stale_after_s,
    }
