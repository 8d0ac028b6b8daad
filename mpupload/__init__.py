"""mpupload — parallel, interruptible, verified S3 multipart uploads with honest live progress.

The library surface is small: :func:`upload_file` (one file) and :func:`upload_directory` (directories and
files under a prefix, :class:`DatasetOptions`) with :class:`UploadOptions` and :class:`StoreConfig` in,
:class:`UploadResult` / :class:`DatasetResult` out, errors from :mod:`mpupload.errors`.

The public names are loaded on first use (PEP 562): ``import mpupload`` alone loads no engine, no boto3,
no terminal UI, so ``mpupload --version``, the API server and the light modules stay cheap to start.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing is not imported at run time: importing mpupload stays cheap
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

__all__ = [
    "__version__", "upload_file", "upload_directory", "DatasetOptions", "DatasetResult", "UploadOptions",
    "UploadResult", "ChecksumMode", "StoreConfig",
    "CancelToken", "Event", "Status", "Snapshot",
    "MpuploadError", "UsageError", "BucketNotFound", "ObjectExists", "SourceChanged", "SourceUnreadable", "AuthError",
    "UploadFailed", "StoreUnreachable", "IntegrityError", "WorkerCrashed", "FilesFailed", "Cancelled",
]

#: public name -> the module (relative to this package) that defines it
_LAZY = {
    "upload_file": ".api",
    "upload_directory": ".api",
    **dict.fromkeys(("DatasetOptions", "DatasetResult"), ".engine.dataset"),
    "CancelToken": ".engine.cancel",
    **dict.fromkeys(("AuthError", "BucketNotFound", "Cancelled", "IntegrityError", "MpuploadError", "ObjectExists",
                     "SourceChanged", "SourceUnreadable", "StoreUnreachable", "UploadFailed", "UsageError",
                     "WorkerCrashed", "FilesFailed"),
                    ".errors"),
    **dict.fromkeys(("Event", "Snapshot", "Status"), ".wire"),
    **dict.fromkeys(("ChecksumMode", "UploadOptions", "UploadResult"), ".options"),
    "StoreConfig": ".storage",
}

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time :func:`__getattr__` loads these
    from .api import upload_directory, upload_file
    from .engine.cancel import CancelToken
    from .engine.dataset import DatasetOptions, DatasetResult
    from .errors import (
        AuthError,
        BucketNotFound,
        Cancelled,
        FilesFailed,
        IntegrityError,
        MpuploadError,
        ObjectExists,
        SourceChanged,
        SourceUnreadable,
        StoreUnreachable,
        UploadFailed,
        UsageError,
        WorkerCrashed,
    )
    from .options import ChecksumMode, UploadOptions, UploadResult
    from .storage import StoreConfig
    from .wire import Event, Snapshot, Status


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first access, then keep it in the package's namespace."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
