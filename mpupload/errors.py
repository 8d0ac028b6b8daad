"""The one exception tree of mpupload, and the exit code each branch maps to.

::

    MpuploadError                     base; ``exit_code`` and a message that ends with what to do
    ├── UsageError              (2)   bad command line or bad input: missing/unreadable file, bad URL,
    │   │                             part size or worker count out of range, file over 5 TiB
    │   ├── BucketNotFound      (2)   the bucket does not exist
    │   ├── ObjectExists        (2)   --no-overwrite and the key already exists
    │   ├── SourceChanged       (2)   the file changed, or vanished, while it was uploaded
    │   ├── SourceUnreadable    (2)   the file cannot be opened or read (permissions, I/O error)
    │   └── SourceMismatch      (2)   a cluster worker sees a different source at the same path
    ├── AuthError               (3)   the store rejected the credentials or denied access
    ├── UploadFailed            (1)   the store is unreachable, retries ran out, the store refused data
    │   ├── StoreUnreachable    (1)   a network fault (retried)
    │   ├── PartCorrupted       (1)   the store's answer shows a part arrived damaged (retried)
    │   ├── UploadGone          (1)   the multipart upload no longer exists (aborted by someone else,
    │   │                             expired): nothing is kept, nothing can be resumed
    │   ├── IntegrityError      (1)   the stored object does not equal the file
    │   ├── WorkerCrashed       (1)   worker processes kept dying
    │   ├── ClusterUnavailable  (1)   the Dask scheduler cannot be reached, or was lost mid-run (kept)
    │   └── FilesFailed         (1)   a directory run ended with some files failed (the others are stored)
    └── Cancelled             (130)   Ctrl+C, SIGTERM, or a stop request

What happens to the multipart upload when an error ends it is decided here too: ``abort_upload`` (abort it:
retrying cannot help, or the user stopped it), ``upload_exists`` (False: there is nothing to abort or keep).
Only ``retryable`` errors are tried again (:func:`mpupload.storage.errors.is_retryable`).

Errors carry structured context (``bucket``, ``key``, ``upload_id``, ``part_number``) so that sinks and the
API push can report them; ``str(error)`` is the one line the CLI prints. That line is built from parts, never
edited: ``message`` (what happened), ``advice`` (what to do, e.g. ", then run the same command again"), and what
the engine adds when the error ends an upload: ``resume_command`` (the upload was kept: the advice becomes "continue
it with ...") and ``left_behind`` (uploads still on the store, with the commands that remove them).

A user cancel (:class:`Cancelled`) and an internal failure (:class:`UploadFailed`) are different types on
purpose: the first exits 130 and is not an error; the second exits 1.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time (the CLI's --help loads this module)
if TYPE_CHECKING:
    from typing import ClassVar

__all__ = [
    "MpuploadError", "UsageError", "BucketNotFound", "ObjectExists", "SourceChanged", "SourceUnreadable", "AuthError",
    "UploadFailed", "StoreUnreachable", "PartCorrupted", "UploadGone", "IntegrityError", "WorkerCrashed",
    "FilesFailed", "Cancelled", "SourceMismatch", "ClusterUnavailable",
]


class MpuploadError(Exception):
    exit_code: ClassVar[int] = 1
    #: whether the multipart upload must be aborted when this error ends an upload
    abort_upload: ClassVar[bool] = True
    #: False when the error means the multipart upload is gone: nothing to abort, keep or resume
    upload_exists: ClassVar[bool] = True
    #: whether sending the same request again may succeed
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        bucket: str | None = None,
        key: str | None = None,
        upload_id: str | None = None,
        part_number: int | None = None,
        advice: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.advice = advice
        self.bucket = bucket
        self.key = key
        self.upload_id = upload_id
        self.part_number = part_number
        #: set when the upload this error ended was kept for ``--resume``: the command that continues it
        self.resume_command: str | None = None
        #: set when uploads of this run are still on the store: "; left on the store: ..." with their commands
        self.left_behind: str = ""

    def __str__(self) -> str:
        if self.resume_command:
            return f"{self.message}; the upload was kept: continue it with {self.resume_command}{self.left_behind}"
        return f"{self.message}{self.advice}{self.left_behind}"


class UsageError(MpuploadError):
    exit_code = 2


class BucketNotFound(UsageError):
    pass


class ObjectExists(UsageError):
    pass


class SourceChanged(UsageError):
    pass


class SourceUnreadable(UsageError):
    """The source file exists but cannot be read: no permission, or the disk returned an error."""


class SourceMismatch(UsageError):
    """A cluster worker (``--cluster``) sees another file, or another tree, at the source's path than this process
    does (no shared filesystem, a stale mount): nothing was sent. The message names the worker."""


def source_error(path: object, exc: OSError, *, bucket: str | None = None, key: str | None = None,
                 upload_id: str | None = None, part_number: int | None = None) -> UsageError:
    """The error for a source file that could not be opened: gone (:class:`SourceChanged`) or unreadable."""
    reason = exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError):
        return SourceChanged(f"the source file {path} disappeared ({reason})", bucket=bucket, key=key,
                             upload_id=upload_id, part_number=part_number)
    return SourceUnreadable(f"cannot read the source file {path} ({reason})", bucket=bucket, key=key,
                            upload_id=upload_id, part_number=part_number)


class AuthError(MpuploadError):
    exit_code = 3


class UploadFailed(MpuploadError):
    """Retrying later may succeed: the multipart upload is kept so that it can be resumed."""

    exit_code = 1
    abort_upload = False


class StoreUnreachable(UploadFailed):
    retryable = True


class PartCorrupted(UploadFailed):
    """The store's answer for a part (its ETag or checksum) shows the bytes it got are not the bytes sent."""

    retryable = True


class UploadGone(UploadFailed):
    """The multipart upload no longer exists on the store: someone aborted it (``mpupload cleanup``, a
    lifecycle rule, a colleague) or it expired. Its parts are gone with it: nothing is kept or resumable."""

    upload_exists = False


class IntegrityError(UploadFailed):
    """The store holds something other than the file; nothing about it is worth keeping."""

    abort_upload = True


class WorkerCrashed(UploadFailed):
    pass


class ClusterUnavailable(UploadFailed):
    """The Dask scheduler of ``--cluster`` cannot be reached, has no workers, or was lost during the run: the
    multipart upload is kept, so ``--resume`` continues it once the cluster is back."""


class FilesFailed(UploadFailed):
    """A directory run ended with some of its files failed (the others are on the store): exit 1. The run's
    summary lists them; ``--resume`` sends only what is missing."""


class Cancelled(MpuploadError):
    exit_code = 130
