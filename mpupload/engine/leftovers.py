"""What one object's upload may leave on the store, and the honest account of it.

From the moment a multipart upload exists, its abort is the cleanup of every failure that makes it useless and of
a cancel (unless it is kept for ``--resume``): :meth:`Leftovers.created` registers it, so that even an immediate
exit (a second Ctrl+C) tells the user what is left and the command that removes it. An abort is done with a fresh,
time-limited store and confirmed with ListParts (:meth:`~mpupload.storage.port.Store.abort_and_confirm`); one that
cannot be confirmed is recorded, and every way out of the upload reports the records (``left_behind`` in the
``stopped``/``failed``/``completed`` events, and in the error's line).
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from typing import Any

from ..storage.port import Store
from .cancel import CancelToken

__all__ = ["Leftovers"]

log = logging.getLogger("mpupload")


class Leftovers:
    def __init__(self, store: Store, bucket: str, key: str, cancel: CancelToken, *,
                 cleanup_template: str | None, warn: Callable[[str], None]) -> None:
        self.store = store
        self.bucket = bucket
        self.key = key
        self.cancel = cancel
        self.cleanup_template = cleanup_template
        self.warn = warn
        #: multipart uploads still on the store that nobody meant to keep: upload id -> why
        self.left: dict[str, str] = {}

    # -- what an immediate exit would leave --------------------------------------------------------------------
    def created(self, upload_id: str) -> None:
        """The upload exists: from now on an immediate exit leaves it behind, and says how to remove it."""
        self.cancel.at_risk(self, f"multipart upload {upload_id} of s3://{self.bucket}/{self.key} may be left on "
                                  f"the store: remove it with: {self.command(upload_id)}")

    def completing(self, upload_id: str) -> None:
        """CompleteMultipartUpload was sent: an immediate exit now leaves an object that may be complete."""
        self.cancel.at_risk(self, f"CompleteMultipartUpload of upload {upload_id} was sent: s3://{self.bucket}/"
                                  f"{self.key} may be complete; run the same command with --resume to find out")

    def settled(self) -> None:
        """Nothing of this upload is at stake any more (gone, completed, kept on purpose)."""
        self.cancel.at_risk(self, None)

    # -- aborts ------------------------------------------------------------------------------------------------------
    def abort(self, upload_id: str) -> bool:
        """Abort with a fresh, time-limited store and make sure nothing is left (bounded); False, with the upload
        recorded as left behind and one warning, when the store would not confirm it."""
        if self.abort_quietly(upload_id):
            self.left.pop(upload_id, None)
            self.settled()
            return True
        self.record(upload_id, "its abort failed")
        self.warn(f"could not abort the multipart upload {upload_id}: it is still on the store; remove it "
                  f"with: {self.command(upload_id)}")
        return False

    def abort_quietly(self, upload_id: str) -> bool:
        """True once the store says the multipart upload is gone (aborted, or never there)."""
        try:
            return self.store.short_lived().abort_and_confirm(self.bucket, self.key, upload_id).gone
        except Exception as exc:  # noqa: BLE001
            log.warning("aborting multipart upload %s failed: %s", upload_id, exc)
            return False

    def record(self, upload_id: str, reason: str) -> None:
        self.left[upload_id] = reason

    def forget(self, upload_id: str) -> None:
        """The upload is gone (completed, or aborted by someone else): nothing to report about it."""
        self.left.pop(upload_id, None)
        self.settled()

    # -- the account -----------------------------------------------------------------------------------------------
    def command(self, upload_id: str) -> str:
        """The command that removes one upload: the CLI's template, else the AWS CLI's."""
        if self.cleanup_template:
            return self.cleanup_template.replace("{upload_id}", shlex.quote(upload_id))
        words = ["aws", "s3api", "abort-multipart-upload", "--bucket", self.bucket, "--key", self.key,
                 "--upload-id", upload_id]
        if self.store.endpoint_url:
            words += ["--endpoint-url", self.store.endpoint_url]
        return shlex.join(words)

    def as_list(self) -> list[dict[str, Any]]:
        """Every multipart upload of this run still on the store, for the ``stopped``/``failed`` events."""
        return [{"bucket": self.bucket, "key": self.key, "upload_id": upload_id, "reason": reason,
                 "cleanup_command": self.command(upload_id)} for upload_id, reason in self.left.items()]

    def text(self) -> str:
        """``"; left on the store: ..."`` for the error's line; empty when nothing is left."""
        if not self.left:
            return ""
        items = "; ".join(f"{upload_id} ({reason}): {self.command(upload_id)}"
                          for upload_id, reason in self.left.items())
        return f"; left on the store: {items}"
