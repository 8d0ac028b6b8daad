"""Picklable store settings and the client factory.

The client is tuned for bulk uploads:

* ``payload_signing_enabled=False``: botocore would otherwise SHA-256 every body on plain-HTTP endpoints
  (about 5.5 CPU-s/GiB); integrity comes from the per-part checksum header instead;
* ``request_checksum_calculation="when_required"``: we compute checksums ourselves, once, in the worker;
  botocore's default CRC32 on every request costs CPU and confuses some compatible stores;
* path-style addressing for custom endpoints (MinIO, Ceph RGW, moto), virtual-hosted for AWS.

Standard AWS configuration keeps working: environment credentials, ``--profile``, ``AWS_ENDPOINT_URL``
/ ``AWS_ENDPOINT_URL_S3``, ``AWS_CA_BUNDLE``, proxies (``HTTPS_PROXY``), the shared config files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

__all__ = ["StoreConfig", "effective_endpoint"]


def effective_endpoint(endpoint_url: str | None) -> str | None:
    """The endpoint botocore will use: the argument, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``."""
    if endpoint_url:
        return endpoint_url
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


#: one boto3 session per profile and process. A session caches the parsed service model and the resolved
#: credentials: a second client from it costs ~6 ms of CPU instead of ~100 ms, and worker processes started
#: by fork inherit the parent's warm session. Clients are made from the main thread only.
_SESSIONS: dict[str | None, Any] = {}


def _session(profile: str | None) -> Any:
    import boto3

    session = _SESSIONS.get(profile)
    if session is None:
        session = boto3.session.Session(profile_name=profile) if profile else boto3.session.Session()
        _SESSIONS[profile] = session
    return session


def _retries_configured() -> bool:
    return bool(os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE"))


@dataclass(frozen=True)
class StoreConfig:
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    #: ``None``: botocore's default (``AWS_CA_BUNDLE`` or the system store); a path: that CA bundle;
    #: ``False``: do not verify TLS certificates
    verify: bool | str | None = None
    addressing_style: str | None = None  # auto | path | virtual; None: path for custom endpoints
    max_attempts: int = 4
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0
    max_pool_connections: int = 4
    #: explicit credentials ``(access key id, secret access key, session token or None)``, used instead of the
    #: credential chain: only a cluster run with ``--cluster-pass-credentials`` sets them (they then travel to the
    #: workers); never shown by ``repr`` and not part of equality
    credentials: tuple[str, str, str | None] | None = field(default=None, repr=False, compare=False)

    def resolved_region(self) -> str | None:
        """The region this process's configuration gives (``--region``, ``AWS_REGION``, the profile), if any."""
        return self.region or _session(self.profile).region_name

    def resolved_credentials(self) -> tuple[str, str, str | None] | None:
        """The credentials this process's credential chain finds (``None``: none), to hand to cluster workers."""
        if self.credentials is not None:
            return self.credentials
        found = _session(self.profile).get_credentials()
        if found is None:
            return None
        frozen = found.get_frozen_credentials()
        return (frozen.access_key, frozen.secret_key, frozen.token)

    def short_lived(self) -> StoreConfig:
        """Settings for cleanup calls (abort) that must finish quickly even when the store is unwell."""
        return replace(self, max_attempts=2, connect_timeout_s=3.0, read_timeout_s=5.0)

    def resolved_addressing_style(self) -> str:
        if self.addressing_style:
            return self.addressing_style
        endpoint = effective_endpoint(self.endpoint_url)
        if endpoint:
            host = urlsplit(endpoint).hostname or ""
            if not host.endswith(".amazonaws.com"):
                return "path"
        return "auto"

    def make_client(self, *, signature_version: str | None = None) -> Any:
        """The boto3 client; ``signature_version="s3v4"`` for one that presigns URLs (boto3 may otherwise presign
        with SigV2)."""
        from botocore.config import Config

        session = _session(self.profile)
        config = Config(
            region_name=self.region,
            s3={"addressing_style": self.resolved_addressing_style(), "payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # AWS_MAX_ATTEMPTS / AWS_RETRY_MODE in the environment win, as for the AWS CLI
            retries=None if _retries_configured() else {"mode": "standard", "total_max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            max_pool_connections=self.max_pool_connections,
            tcp_keepalive=True,
            user_agent_extra="mpupload",
            **({"signature_version": signature_version} if signature_version else {}),
        )
        kwargs: dict[str, Any] = {"config": config}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        if self.verify is not None:
            kwargs["verify"] = self.verify
        if self.credentials is not None:
            kwargs.update(aws_access_key_id=self.credentials[0], aws_secret_access_key=self.credentials[1],
                          aws_session_token=self.credentials[2])
        return session.client("s3", **kwargs)
