"""The storage seam: everything that speaks S3.

* :mod:`.port` — :class:`Store`, the typed protocol of every S3 operation mpupload makes (create, upload_part,
  complete, abort-and-confirm, paginated ListParts and ListMultipartUploads, find the newest upload of a key,
  head/get/put/delete an object, head a bucket, its lifecycle rules), the dataclasses of its listings, and
  :class:`StoreBase`, where pagination, abort-and-confirm and "is this upload gone" are written once;
* :mod:`.boto3_store` — :class:`Boto3Store`, the boto3 adapter: the only module of mpupload that calls an S3
  operation. Built from the picklable :class:`StoreConfig` (:mod:`.config`), it builds its client lazily in the
  process that uses it and pickles as its config (clients never cross a process boundary);
* :mod:`.memory` — ``MemoryStore``, an in-memory store with S3's semantics and fault injection, for tests;
* :mod:`.errors` — the one place that reads a store's errors (botocore's or :class:`StoreError`), by code and
  HTTP status: ``GONE_CODES``/``is_gone``, ``is_retryable``, and ``classify`` into mpupload's error tree.

Callers hold a ``Store`` and never a client; a brokered adapter (presigned URLs from the API server) is another
implementation of the same port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import StoreConfig
from .errors import StoreError, classify, is_retryable

if TYPE_CHECKING:
    from .boto3_store import Boto3Store
    from .port import Store

__all__ = ["Store", "Boto3Store", "StoreConfig", "StoreError", "classify", "is_retryable"]


def __getattr__(name: str) -> Any:
    # the port and the adapter load checksums (awscrt) and more: only when asked for, so that parsing the CLI's
    # options (which needs StoreConfig) stays cheap
    if name == "Boto3Store":
        from .boto3_store import Boto3Store

        return Boto3Store
    if name == "Store":
        from .port import Store

        return Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
