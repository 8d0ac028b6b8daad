"""``mpupload upload FILE KEY`` and ``mpupload upload DIR... PREFIX/``: a destination without ``s3://`` is a key (or
a PREFIX) in the API server's storage (issue 15).

The server holds the storage credentials; this process holds only the user's API token and reads no AWS
credentials. Before anything starts, the server is asked where the user's space is (``GET /api/v1/storage``):
no server configured, or a server without storage, is one line and exit 2; a token it rejects, exit 3. The
options that need the user's own access to the store (reading the object back, object options, another
endpoint, passing credentials to a cluster) are refused here, with what to do instead. On a cluster
(``--cluster``) the workers sign with a worker token the server makes for the upload or run, never with the
user's token (:meth:`~mpupload.storage.brokered.BrokeredStore.for_cluster`).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from .. import errors as E

if TYPE_CHECKING:
    from ..client import ApiTarget
    from ..storage.brokered import BrokeredStore

__all__ = ["is_brokered", "brokered_destination"]

#: options that need the user's own access to the store: ``(attribute, flag)``
S3_ONLY = (("endpoint_url", "--endpoint-url"), ("region", "--region"), ("profile", "--profile"),
           ("addressing_style", "--addressing-style"), ("content_type", "--content-type"),
           ("metadata", "--metadata"), ("storage_class", "--storage-class"), ("sse", "--sse"),
           ("sse_kms_key_id", "--sse-kms-key-id"), ("no_overwrite", "--no-overwrite"),
           ("cluster_pass_credentials", "--cluster-pass-credentials"))


def is_brokered(destination: str) -> bool:
    """A destination without ``s3://`` is a key in the API server's storage."""
    return not destination.startswith("s3://")


def brokered_destination(args: argparse.Namespace, *, run: bool = False
                         ) -> tuple[BrokeredStore, str, str, ApiTarget]:
    """The brokered store, the storage bucket and the full key (``PREFIX/<user>/KEY``; for a directory ``run``
    the full PREFIX, ending in ``/``), and the API server; every refusal is one line with the contract's exit
    code, before anything is sent."""
    from ..client import ApiAuthError, ApiError, ApiNotFound, ApiRefused, resolve_target
    from ..storage.brokered import BrokerConfig, BrokeredStore, fetch_storage

    destination = args.destination
    what = (f"{destination!r} has no s3://, so it is a key in the API server's storage (a brokered upload, the "
            "server holds the storage credentials)")
    for attribute, flag in S3_ONLY:
        if getattr(args, attribute, None):
            raise E.UsageError(f"{what}: {flag} is not possible there; give s3://BUCKET/KEY to upload with your "
                               "own credentials")
    if args.verify == "read-back":
        raise E.UsageError(f"{what}: --verify read-back needs to read the object, which only the server may; the "
                           "server verifies the object itself")
    if args.no_report:
        raise E.UsageError(f"{what}: it needs the API server, drop --no-report")
    target = resolve_target(args.api_url)
    if target is None:
        raise E.UsageError(f"{what}, and no API server is configured: run mpupload login URL (or set "
                           "MPUPLOAD_API_URL), or give s3://BUCKET/KEY")
    if not target.token:
        raise E.AuthError(f"not logged in to the API server at {target.api_url}: run mpupload login")
    try:
        storage = fetch_storage(target.api_url, target.token)
    except ApiAuthError:
        raise E.AuthError(f"the API server at {target.api_url} rejected the token: run mpupload login") from None
    except ApiNotFound:
        raise E.UsageError(f"the API server at {target.api_url} does not broker uploads (it has no storage route): "
                           "give s3://BUCKET/KEY") from None
    except ApiRefused as exc:
        raise E.UsageError(f"{exc.detail or exc}") from None
    except ApiError as exc:
        raise E.UsageError(f"{what}, and the API server does not answer: {exc}") from None
    key = destination
    if run:
        if key and not key.endswith("/"):
            raise E.UsageError(f"a directory, or several sources, go under a PREFIX: end the destination with / "
                               f"({key}/)")
        if key.startswith("/"):
            raise E.UsageError(f"{key!r} is absolute: a PREFIX in the API server's storage is relative to your "
                               "space (drop the leading /)")
    elif not key or key.endswith("/"):
        key += os.path.basename(str(args.source).rstrip("/")) or "upload"
    verify: bool | str | None = None
    if getattr(args, "no_verify_ssl", False):
        verify = False
    elif getattr(args, "ca_bundle", None):
        verify = args.ca_bundle
    config = BrokerConfig(target.api_url, target.token, bucket=str(storage["bucket"]),
                          space=str(storage["space"]), content_md5_required=bool(storage["content_md5_required"]),
                          max_sign_batch=max(1, int(storage.get("max_sign_batch") or 1)), verify=verify)
    return BrokeredStore(config), config.bucket, config.space + key, target
