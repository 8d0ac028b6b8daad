"""The one exception tree of mpupload, and the exit code each branch maps to.

::

    MpuploadError                     base; ``exit_code`` and a message that ends with what to do
    ├── UsageError              (2)   bad command line or bad input: missing/unreadable file, bad URL,
    │   │                             part size or worker count out of range, file over 5 TiB
    │   ├── BucketNotFound      (2)   the bucket does not exist
    │   ├── ObjectExists        (2)   --no-overwrite and the key already exists
    │   └── SourceChanged       (2)   the file changed while it was uploaded
    ├── AuthError               (3)   the store rejected the credentials or denied access
    ├── UploadFailed            (1)   the store is unreachable, retries ran out, the store refused data
    │   ├── StoreUnreachable    (1)
    │   ├── IntegrityError      (1)   the stored object does not equal the file
    │   └── WorkerCrashed       (1)   worker processes kept dying
    └── Cancelled             (130)   Ctrl+C, SIGTERM, or a stop request

Errors carry structured context (``bucket``, ``key``, ``upload_id``, ``part_number``) so that sinks and the
API push can report them; ``str(error)`` is the one line the CLI prints.

A user cancel (:class:`Cancelled`) and an internal failure (:class:`UploadFailed`) are different types on
purpose: the first exits 130 and is not an error; the second exits 1.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "MpuploadError", "UsageError", "BucketNotFound", "ObjectExists", "SourceChanged", "AuthError",
    "UploadFailed", "StoreUnreachable", "IntegrityError", "WorkerCrashed", "Cancelled",
]


class MpuploadError(Exception):
    exit_code: ClassVar[int] = 1
    #: whether the multipart upload must be aborted when this error ends an upload
    abort_upload: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        bucket: str | None = None,
        key: str | None = None,
        upload_id: str | None = None,
        part_number: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.bucket = bucket
        self.key = key
        self.upload_id = upload_id
        self.part_number = part_number

    def __str__(self) -> str:
        return self.message


class UsageError(MpuploadError):
    exit_code = 2


class BucketNotFound(UsageError):
    pass


class ObjectExists(UsageError):
    pass


class SourceChanged(UsageError):
    pass


class AuthError(MpuploadError):
    exit_code = 3


class UploadFailed(MpuploadError):
    """Retrying later may succeed: the multipart upload is kept so that it can be resumed."""

    exit_code = 1
    abort_upload = False


class StoreUnreachable(UploadFailed):
    pass


class IntegrityError(UploadFailed):
    """The store holds something other than the file; nothing about it is worth keeping."""

    abort_upload = True


class WorkerCrashed(UploadFailed):
    pass


class Cancelled(MpuploadError):
    exit_code = 130
