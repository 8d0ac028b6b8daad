"""mpupload — parallel, interruptible, verified S3 multipart uploads with honest live progress.

The library surface is small: :func:`upload_file` with :class:`UploadOptions` and :class:`StoreConfig`
in, :class:`UploadResult` out, errors from :mod:`mpupload.errors`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import upload_file
from .engine.cancel import CancelToken
from .errors import (
    AuthError,
    BucketNotFound,
    Cancelled,
    IntegrityError,
    MpuploadError,
    ObjectExists,
    SourceChanged,
    StoreUnreachable,
    UploadFailed,
    UsageError,
    WorkerCrashed,
)
from .events import Event, Snapshot, Status
from .options import ChecksumMode, UploadOptions, UploadResult
from .storage import StoreConfig

__all__ = [
    "__version__", "upload_file", "UploadOptions", "UploadResult", "ChecksumMode", "StoreConfig",
    "CancelToken", "Event", "Status", "Snapshot",
    "MpuploadError", "UsageError", "BucketNotFound", "ObjectExists", "SourceChanged", "AuthError",
    "UploadFailed", "StoreUnreachable", "IntegrityError", "WorkerCrashed", "Cancelled",
]
