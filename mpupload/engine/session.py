"""What every path of one upload shares: the source, the store client, the aggregator, the cancel token,
and the end of an upload (HeadObject checks, the completed snapshot, aborting a multipart upload)."""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import errors as E
from .. import journal as journal_mod
from ..checksums import Algorithm
from ..events import Event, Status
from ..journal import Journal
from ..options import ChecksumMode, UploadOptions, UploadResult
from ..plan import UploadPlan
from ..storage import StoreConfig, classify
from ..storage.errors import error_code
from .aggregator import Aggregator
from .cancel import CancelToken
from .counter import CancelFlag

log = logging.getLogger("mpupload")

__all__ = ["Source", "UploadSession", "SHUTDOWN_JOIN_S", "JOURNAL_SAVE_S", "SINGLE_PUT_ATTEMPTS", "CHECKSUM_REJECTED",
           "algorithm_or_none"]

#: codes with which a store says "the checksum you sent does not match the bytes"
CHECKSUM_REJECTED = {"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch"}
SHUTDOWN_JOIN_S = 2.0
#: the journal is rewritten at most this often while parts finish (and always at the end)
JOURNAL_SAVE_S = 1.0
SINGLE_PUT_ATTEMPTS = 5


@dataclass(frozen=True)
class Source:
    """The file being uploaded and the fingerprint that tells whether it changed."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def from_path(cls, path: str) -> Source:
        st = os.stat(path)
        return cls(os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)

    def check_unchanged(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise E.SourceChanged(f"the source file {self.path} disappeared during the upload ({exc.strerror})") \
                from exc
        if (st.st_size, st.st_mtime_ns, st.st_ino) != (self.size, self.mtime_ns, self.inode):
            raise E.SourceChanged(
                f"the source file {self.path} changed during the upload (size or modification time differ): "
                "the upload was aborted; run the command again once the file is final"
            )


class UploadSession:
    def __init__(
        self,
        source: Source,
        bucket: str,
        key: str,
        plan: UploadPlan,
        *,
        store: StoreConfig,
        options: UploadOptions,
        aggregator: Aggregator,
        cancel: CancelToken,
        journal_path: Path | None = None,
        record_id: str | None = None,
    ) -> None:
        self.source = source
        self.bucket = bucket
        self.key = key
        self.plan = plan
        self.store = store
        self.options = options
        self.agg = aggregator
        self.cancel = cancel
        self.warnings: list[str] = []
        self.client: Any = None
        self.upload_id: str | None = None
        self._flag = CancelFlag()
        self.journal_path = journal_path
        #: the API server's record id, kept in the journal so that --resume continues the same record
        self.record_id = record_id
        self.journal: Journal | None = None
        self._fingerprint: journal_mod.SourceFingerprint | None = None
        self._journal_saved_at = 0.0
        self.resumed_bytes = 0
        self.resumed_parts = 0

    # -- shared helpers -----------------------------------------------------------------------------------------
    def _err(self, exc: BaseException, part_number: int | None = None) -> E.MpuploadError:
        return classify(exc, bucket=self.bucket, key=self.key, upload_id=self.upload_id, part_number=part_number,
                        endpoint=self.store.endpoint_url)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)

    def _object_args(self) -> dict[str, Any]:
        o = self.options
        args: dict[str, Any] = {}
        content_type = o.content_type or mimetypes.guess_type(self.source.path)[0]
        if content_type:
            args["ContentType"] = content_type
        if o.metadata:
            args["Metadata"] = dict(o.metadata)
        if o.storage_class:
            args["StorageClass"] = o.storage_class
        if o.sse:
            args["ServerSideEncryption"] = o.sse
        if o.sse_kms_key_id:
            args["SSEKMSKeyId"] = o.sse_kms_key_id
            args.setdefault("ServerSideEncryption", "aws:kms")
        return args

    @property
    def _etag_is_md5(self) -> bool:
        """Under SSE-KMS (and SSE-C) the ETag is not the MD5 of the data."""
        sse = self.options.sse or ("aws:kms" if self.options.sse_kms_key_id else None)
        return not (sse and sse.startswith("aws:kms"))

    def _algorithm(self) -> Algorithm | None:
        mode = self.options.checksum
        if mode in (ChecksumMode.NONE, ChecksumMode.MD5):
            return None
        if mode is ChecksumMode.AUTO:
            return Algorithm.CRC32C
        return Algorithm(mode.value)

    def _started_extra(self, algorithm: Algorithm | None, md5: bool) -> dict[str, Any]:
        return {
            "part_size": self.plan.part_size if self.plan.multipart else self.source.size,
            "workers": self.plan.workers,
            "resumed_bytes": self.resumed_bytes,
            "resumed_parts": self.resumed_parts,
            "checksum_algorithm": algorithm.value if algorithm else ("md5" if md5 else None),
            "multipart": self.plan.multipart,
            "store_upload_id": self.upload_id,
        }

    # -- entry point ----------------------------------------------------------------------------------------------
    def fingerprint(self) -> journal_mod.SourceFingerprint:
        if self._fingerprint is None:
            self._fingerprint = journal_mod.fingerprint(self.source.path)
        return self._fingerprint

    # -- end of an upload ---------------------------------------------------------------------------------------
    def _head(self) -> dict[str, Any]:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self.key, ChecksumMode="ENABLED"))
        except Exception as exc:  # noqa: BLE001
            raise self._err(exc) from exc

    def _check_size(self, head: dict[str, Any]) -> None:
        size = int(head.get("ContentLength", -1))
        if size != self.source.size:
            self._delete_corrupt()
            raise E.IntegrityError(
                f"the stored object is {size} bytes, the file {self.source.size}: the object was deleted; "
                "run the command again", bucket=self.bucket, key=self.key)

    def _delete_corrupt(self) -> None:
        with contextlib.suppress(Exception):
            self.store.short_lived().make_client().delete_object(Bucket=self.bucket, Key=self.key)

    def _complete(self, verified: str, etag: str, checksum: str | None, location: str, parts: int) -> UploadResult:
        extra: dict[str, Any] = {"checksum": checksum, "etag": etag, "location": location, "verified": verified}
        if self.resumed_bytes:
            extra.update(resumed_bytes=self.resumed_bytes, resumed_parts=self.resumed_parts)
        if self.upload_id:
            extra["store_upload_id"] = self.upload_id
        snap = self.agg.finish(Event.COMPLETED, Status.COMPLETED, extra, sent_bytes=self.source.size,
                               parts_done=parts)
        return UploadResult(
            bucket=self.bucket, key=self.key, size=self.source.size, etag=etag, checksum=checksum,
            verified=verified, location=location, upload_id=self.upload_id, parts_total=parts,
            elapsed_seconds=snap.elapsed_seconds, avg_speed_bps=snap.avg_speed_bps, warnings=tuple(self.warnings),
            resumed_bytes=self.resumed_bytes, resumed_parts=self.resumed_parts,
        )

    def _abort(self) -> None:
        """Abort the upload with a fresh, time-limited client, then make sure nothing is left (bounded)."""
        if self.upload_id is None:
            return
        if self._abort_id(self.upload_id, self.store.short_lived().make_client()):
            self.cancel.left_behind = None
        else:
            self._warn(f"could not abort the multipart upload: {self.cancel.left_behind}")

    def _abort_id(self, upload_id: str, client: Any) -> bool:
        """True once the store says the multipart upload ``upload_id`` is gone."""
        gone = ("NoSuchUpload", "NoSuchKey", "404")  # Ceph answers ListParts of an aborted upload with NoSuchKey
        for _ in range(3):
            try:
                client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
            except Exception as exc:  # noqa: BLE001
                if error_code(exc) in gone:
                    return True
                log.warning("aborting multipart upload %s failed: %s", upload_id, exc)
                return False
            try:
                listed = client.list_parts(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
            except Exception as exc:  # noqa: BLE001
                return error_code(exc) in gone
            if not listed.get("Parts"):
                return True
        return False




def algorithm_or_none(name: str | None) -> Algorithm | None:
    try:
        return Algorithm(name) if name else None
    except ValueError:
        return None


