"""What every path of one upload shares: the source, the store (a :class:`~mpupload.storage.Store`), the
aggregator, the cancel token, what the store checks (the probe), the journal's writes, and the end of an upload:
the completed snapshot, aborting a multipart upload, and an honest account of every upload left on the store."""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import os
import shlex
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
from ..storage import Boto3Store, Store, StoreConfig, classify
from ..storage.port import ABORT_ROUNDS
from .aggregator import Aggregator
from .cancel import CancelToken
from .counter import CancelFlag
from .executor import Executor, ThreadExecutor
from .pool import LocalProcessExecutor
from .probe import IntegrityPlan, StoreTraits, probe_store
from .verify import ObjectAccess, Verdict
from .worker import WorkerConfig

log = logging.getLogger("mpupload")

__all__ = ["Source", "UploadSession", "SHUTDOWN_JOIN_S", "JOURNAL_SAVE_S", "algorithm_or_none"]

SHUTDOWN_JOIN_S = 2.0
#: the journal is rewritten at most this often while parts finish (and always at the end)
JOURNAL_SAVE_S = 1.0


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
        store: StoreConfig | Store,
        options: UploadOptions,
        cancel: CancelToken,
        journal_path: Path | None = None,
        record_id: str | None = None,
    ) -> None:
        self.source = source
        self.bucket = bucket
        self.key = key
        self.plan = plan
        #: the store every S3 request of this upload goes through
        self.store: Store = Boto3Store(store) if isinstance(store, StoreConfig) else store
        #: the settings worker processes build their own store from (``None``: not a boto3 store)
        self.config: StoreConfig | None = self.store.config if isinstance(self.store, Boto3Store) else None
        self.options = options
        #: the sinks' aggregator, built once the set-up decided the final plan (given to ``run``)
        self.agg: Aggregator
        self.cancel = cancel
        self.warnings: list[str] = []
        self.upload_id: str | None = None
        self._flag = CancelFlag()
        # Ctrl+C sets the shared flag at once: parts in flight and the hashing of stored parts stop within a chunk
        cancel.link(self._flag)
        self.journal_path = journal_path
        #: the API server's record id, kept in the journal so that --resume continues the same record
        self.record_id = record_id
        self.journal: Journal | None = None
        self._fingerprint: journal_mod.SourceFingerprint | None = None
        self._journal_saved_at = 0.0
        self._journal_failed = False
        self.resumed_bytes = 0
        self.resumed_parts = 0
        #: multipart uploads of this run still on the store that nobody meant to keep: upload id -> why
        self.left: dict[str, str] = {}
        #: where parts run: worker processes for a multipart upload, a thread of this process for one PutObject
        self.executor: Executor | None = None
        self._executor_down = False

    # -- shared helpers -----------------------------------------------------------------------------------------
    def _err(self, exc: BaseException, part_number: int | None = None) -> E.MpuploadError:
        return classify(exc, bucket=self.bucket, key=self.key, upload_id=self.upload_id, part_number=part_number,
                        endpoint=self.store.endpoint_url)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)

    def _check_cancel(self) -> None:
        if self.cancel.cancelled:
            raise E.Cancelled(self.cancel.reason or "interrupted")

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

    def _algorithm(self) -> Algorithm | None:
        mode = self.options.checksum
        if mode in (ChecksumMode.NONE, ChecksumMode.MD5):
            return None
        if mode is ChecksumMode.AUTO:
            return Algorithm.CRC32C
        return Algorithm(mode.value)

    def _traits(self, algorithm: Algorithm | None) -> StoreTraits:
        """What the store checks (:mod:`.probe`): asked once per process, store, bucket and encryption."""
        args = self._object_args()
        encryption = (args.get("ServerSideEncryption"), args.get("SSEKMSKeyId"))
        traits, left = probe_store(
            self.store, bucket=self.bucket, key=self.key, create_args=args, algorithm=algorithm,
            # keyed by the settings (not the store, which would keep its client alive in the cache)
            cache_key=(self.config or self.store, self.bucket, encryption),
            abort=lambda upload_id: self._abort_id(upload_id, self.store.short_lived()),
            cancelled=lambda: self.cancel.cancelled, endpoint=self.store.endpoint_url)
        if left is not None:
            self.left[left] = "the store probe's throwaway upload: its abort failed"
            self._warn(f"could not abort the store probe's throwaway multipart upload {left}: remove it with: "
                       f"{self._cleanup_command(left)}")
        return traits

    def _started_extra(self, integrity: IntegrityPlan | None, algorithm: Algorithm | None = None,
                       md5: bool = False) -> dict[str, Any]:
        if integrity is not None:
            algorithm, md5 = integrity.algorithm, integrity.content_md5
        return {
            "part_size": self.plan.part_size if self.plan.multipart else self.source.size,
            "workers": self.plan.workers,
            "resumed_bytes": self.resumed_bytes,
            "resumed_parts": self.resumed_parts,
            "checksum_algorithm": algorithm.value if algorithm else ("md5" if md5 else None),
            "multipart": self.plan.multipart,
            "store_upload_id": self.upload_id,
        }

    def _access(self) -> ObjectAccess:
        return ObjectAccess(self.store, self.bucket, self.key, self.store.endpoint_url)

    @property
    def _read_back_path(self) -> str | None:
        return self.source.path if self.options.verify == "read-back" else None

    # -- the executor --------------------------------------------------------------------------------------------
    def _start_executor(self, *, multipart: bool) -> Executor:
        """The executor for this upload, started at once (its workers build their clients meanwhile)."""
        wanted = LocalProcessExecutor if multipart else ThreadExecutor
        if isinstance(self.executor, wanted) and not self._executor_down:
            return self.executor
        self._shutdown_executor()
        config = WorkerConfig(self.store)  # a Boto3Store crosses to the workers as its config
        if multipart:
            self.executor = LocalProcessExecutor(config, self.plan.workers, cancel=self._flag,
                                                 start_method=self.options.start_method)
        else:
            self.executor = ThreadExecutor(config, 1, cancel=self._flag)
        self._executor_down = False
        return self.executor

    def _shutdown_executor(self) -> None:
        """Stop the workers; their byte count stays readable."""
        if self.executor is not None and not self._executor_down:
            self._executor_down = True
            self.executor.shutdown(SHUTDOWN_JOIN_S)

    def _bytes_sent(self) -> int:
        return self.executor.bytes_sent() if self.executor is not None else 0

    # -- entry point ----------------------------------------------------------------------------------------------
    def fingerprint(self) -> journal_mod.SourceFingerprint:
        if self._fingerprint is None:
            self._fingerprint = journal_mod.fingerprint(self.source.path)
        return self._fingerprint

    # -- the journal: a failure to write it is a warning, never a failed upload ------------------------------------
    def _save_journal(self) -> None:
        if self.journal is None:
            return
        try:
            self.journal.save()
        except OSError as exc:
            if not self._journal_failed:
                self._journal_failed = True
                self._warn(f"cannot write the resume journal {self.journal.path} ({exc.strerror or exc}): the upload "
                           "goes on; if it is interrupted, --resume finds it on the store instead")

    def _remove_journal(self) -> None:
        if self.journal is not None:
            with contextlib.suppress(OSError):
                self.journal.remove()

    # -- end of an upload ---------------------------------------------------------------------------------------
    def _complete(self, verdict: Verdict, location: str, parts: int) -> UploadResult:
        for note in verdict.notes:
            self._warn(note)
        extra: dict[str, Any] = {"checksum": verdict.checksum, "etag": verdict.etag, "location": location,
                                 "verified": verdict.verified}
        if verdict.version_id:
            extra["version_id"] = verdict.version_id
        if self.resumed_bytes:
            extra.update(resumed_bytes=self.resumed_bytes, resumed_parts=self.resumed_parts)
        if self.upload_id:
            extra["store_upload_id"] = self.upload_id
        if self.left:
            extra["left_behind"] = self._left_behind()
        snap = self.agg.finish(Event.COMPLETED, Status.COMPLETED, extra, sent_bytes=self.source.size,
                               parts_done=parts)
        return UploadResult(
            bucket=self.bucket, key=self.key, size=self.source.size, etag=verdict.etag, checksum=verdict.checksum,
            verified=verdict.verified, location=location, upload_id=self.upload_id, parts_total=parts,
            elapsed_seconds=snap.elapsed_seconds, avg_speed_bps=snap.avg_speed_bps, warnings=tuple(self.warnings),
            resumed_bytes=self.resumed_bytes, resumed_parts=self.resumed_parts,
        )

    def _abort(self) -> bool:
        """Abort this run's multipart upload with a fresh, time-limited client and make sure nothing is left
        (bounded); False, with the upload recorded as left behind, when the store would not confirm it."""
        if self.upload_id is None:
            return True
        if self._abort_id(self.upload_id, self.store.short_lived()):
            self.left.pop(self.upload_id, None)
            self.cancel.left_behind = None
            return True
        self.left[self.upload_id] = "its abort failed"
        self._warn(f"could not abort the multipart upload {self.upload_id}: it is still on the store; remove it "
                   f"with: {self._cleanup_command(self.upload_id)}")
        return False

    def _abort_id(self, upload_id: str, store: Store) -> bool:
        """True once the store says the multipart upload ``upload_id`` is gone (aborted, or never there)."""
        try:
            return store.abort_and_confirm(self.bucket, self.key, upload_id, rounds=ABORT_ROUNDS).gone
        except Exception as exc:  # noqa: BLE001
            log.warning("aborting multipart upload %s failed: %s", upload_id, exc)
            return False

    def _cleanup_command(self, upload_id: str) -> str:
        template = self.options.cleanup_command
        if template:
            return template.replace("{upload_id}", shlex.quote(upload_id))
        words = ["aws", "s3api", "abort-multipart-upload", "--bucket", self.bucket, "--key", self.key,
                 "--upload-id", upload_id]
        if self.store.endpoint_url:
            words += ["--endpoint-url", self.store.endpoint_url]
        return shlex.join(words)

    def _left_behind(self) -> list[dict[str, Any]]:
        """Every multipart upload of this run still on the store, for the ``stopped``/``failed`` events."""
        return [{"bucket": self.bucket, "key": self.key, "upload_id": upload_id, "reason": reason,
                 "cleanup_command": self._cleanup_command(upload_id)} for upload_id, reason in self.left.items()]

    def _left_behind_text(self) -> str:
        if not self.left:
            return ""
        items = "; ".join(f"{upload_id} ({reason}): {self._cleanup_command(upload_id)}"
                          for upload_id, reason in self.left.items())
        return f"; left on the store: {items}"


def algorithm_or_none(name: str | None) -> Algorithm | None:
    try:
        return Algorithm(name) if name else None
    except ValueError:
        return None
