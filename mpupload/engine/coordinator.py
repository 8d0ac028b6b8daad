"""The coordinator: one upload from start to verified object, in the parent's main thread.

Order of events for a multipart upload:

1. CreateMultipartUpload — and at that very moment the abort is registered as the cleanup of every
   failure that makes the upload impossible (credentials, access, missing bucket, changed source,
   corrupted data) and of a cancel without ``--keep-on-interrupt``;
2. find out whether the store really checks checksum headers (a probe part that is never completed);
   if it does not, every part's MD5 is also sent as Content-MD5 and compared with the part's ETag;
3. hand parts to the worker pool; sample the counter on a fixed tick; replace dead workers;
4. before CompleteMultipartUpload, make sure the source did not change;
5. after it, HeadObject: size, then the composite checksum or the multipart ETag.

A file that fits in one part goes up with one PutObject, sent from a thread of the parent so that the
main thread keeps ticking and handling signals.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from .. import errors as E
from .. import journal as journal_mod
from ..checksums import Algorithm, b64, boto_checksum_param, composite_checksum, multipart_etag, new_hasher
from ..events import Event, Status
from ..journal import Journal, PartRecord
from ..options import ChecksumMode, UploadOptions, UploadResult
from ..plan import UploadPlan
from ..storage import StoreConfig, classify
from ..storage.config import effective_endpoint
from ..storage.errors import error_code, is_retryable
from .aggregator import TICK_S, Aggregator
from .cancel import CancelToken
from .counter import ByteCounter, CancelFlag
from .pool import WorkerPool
from .reader import PartReader, digest_range
from .resume import AlreadyComplete, ResumeState, find_resume, verify_parts
from .worker import PartResult, WorkerSpec

__all__ = ["Source", "Coordinator"]

log = logging.getLogger("mpupload")

#: codes with which a store says "the checksum you sent does not match the bytes"
_CHECKSUM_REJECTED = {"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch"}
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


class Coordinator:
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
    def run(self) -> UploadResult:
        self.client = self.store.make_client()
        if self.options.no_overwrite:
            self._refuse_if_exists()
        state = self._prepare_journal()
        if isinstance(state, AlreadyComplete):
            return self._report_already_complete(state)
        if state is not None:
            return self._run_multipart(state)
        if self.plan.multipart:
            return self._run_multipart(None)
        self._check_bucket()
        return self._run_single()

    # -- resume ---------------------------------------------------------------------------------------------------
    def _prepare_journal(self) -> ResumeState | AlreadyComplete | None:
        """Load the journal; start over (aborting the old upload) or find what can be resumed."""
        if self.journal_path is None:
            return None
        try:
            existing = journal_mod.load(self.journal_path)
        except journal_mod.CorruptJournal as exc:
            aside = journal_mod.set_aside(self.journal_path)
            self._warn(f"the resume journal could not be trusted ({exc}); it was set aside as {aside}")
            existing = None
        if existing is not None and (existing.bucket, existing.key) != (self.bucket, self.key):
            self._warn(f"the resume journal {self.journal_path} describes another destination: set aside")
            journal_mod.set_aside(self.journal_path)
            existing = None
        if not self.options.resume:
            if existing is not None:
                log.warning("starting over: aborting the earlier unfinished upload %s of this file (use --resume "
                            "to continue it instead)", existing.upload_id)
                self._abort_id(existing.upload_id, self.store.short_lived().make_client())
                existing.remove()
            return None
        if existing is not None:
            changed = existing.source.differences(self.fingerprint())
            if changed:
                raise E.SourceChanged(
                    f"{self.source.path} changed since the interrupted upload ({', '.join(changed)} differ): its "
                    f"stored parts cannot be reused. Start over by running the same command without --resume "
                    f"(that aborts the old multipart upload {existing.upload_id})",
                    bucket=self.bucket, key=self.key, upload_id=existing.upload_id)
        try:
            state = find_resume(self.client, self.bucket, self.key, self.source.size, self.plan, existing)
        except E.MpuploadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._err(exc) from exc
        if state is None:
            log.warning("nothing to resume for s3://%s/%s: uploading from the start", self.bucket, self.key)
            if existing is not None:
                existing.remove()
            return None
        if isinstance(state, ResumeState):
            self.plan = state.plan
            verify_parts(state, self.source.path, trust_journal=existing is not None, etag_is_md5=self._etag_is_md5,
                         threads=self.plan.workers, cancel=self._flag)
        return state

    def fingerprint(self) -> journal_mod.SourceFingerprint:
        if self._fingerprint is None:
            self._fingerprint = journal_mod.fingerprint(self.source.path)
        return self._fingerprint

    def _report_already_complete(self, done: AlreadyComplete) -> UploadResult:
        """A crash during CompleteMultipartUpload: the object is there. Verify it, report done."""
        journal = done.journal
        self.upload_id = journal.upload_id
        self.resumed_bytes, self.resumed_parts = self.source.size, journal.parts_total
        self.agg.resumed_bytes = self.source.size
        self.agg.started(self._started_extra(_algorithm_or_none(journal.checksum_algorithm), journal.md5))
        head = self._head()
        self._check_size(head)
        etag = str(head.get("ETag") or "").strip('"')
        verified, checksum = "size-only", None
        if len(journal.parts) == journal.parts_total:
            if journal.md5 and all(p.md5 for p in journal.parts.values()):
                expected = multipart_etag(bytes.fromhex(journal.parts[n].md5 or "") for n in sorted(journal.parts))
                if etag.lower() == expected:
                    verified, checksum = "md5", f"md5:{expected}"
            algorithm = _algorithm_or_none(journal.checksum_algorithm)
            if algorithm is not None and all(p.checksum for p in journal.parts.values()):
                expected = composite_checksum(algorithm, (_unb64(journal.parts[n].checksum)
                                                          for n in sorted(journal.parts)))
                stored = head.get(boto_checksum_param(algorithm))
                if stored == expected:
                    verified, checksum = algorithm.value, f"{algorithm.value}:{stored}"
        if verified == "size-only":
            self._warn("the object was completed by the interrupted run; only its size could be checked")
        journal.remove()
        return self._complete(verified, etag, checksum, f"s3://{self.bucket}/{self.key}", parts=journal.parts_total)

    def _journal_start(self, algorithm: Algorithm | None, md5: bool, reused: dict[int, PartResult]) -> None:
        if self.journal_path is None or self.upload_id is None:
            return
        journal = Journal(self.journal_path, self.fingerprint(), effective_endpoint(self.store.endpoint_url),
                          self.bucket, self.key, self.upload_id, self.plan.part_size, self.plan.parts_total,
                          algorithm.value if algorithm else None, md5)
        for number, result in reused.items():
            journal.record(number, PartRecord(result.size, result.etag or "", result.checksum, result.md5))
        self.journal = journal
        journal.save()
        self._journal_saved_at = time.monotonic()

    def _journal_part(self, result: PartResult) -> None:
        if self.journal is None:
            return
        self.journal.record(result.number, PartRecord(result.size, result.etag or "", result.checksum, result.md5))
        now = time.monotonic()
        if now - self._journal_saved_at >= JOURNAL_SAVE_S:
            self.journal.save()
            self._journal_saved_at = now

    def _journal_end(self, *, keep: bool) -> None:
        if self.journal is None:
            return
        if keep:
            with contextlib.suppress(OSError):
                self.journal.save()
        else:
            self.journal.remove()

    def _check_bucket(self) -> None:
        """Fail before the start line on what a single PutObject would only reveal at its end: a missing
        bucket, no credentials, an unreachable store. 403 says nothing (no s3:ListBucket): go ahead."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001
            code = error_code(exc)
            if code in ("403", "AccessDenied", "Forbidden"):
                return
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise E.BucketNotFound(
                    f"bucket {self.bucket!r} does not exist: create it first or check the name",
                    bucket=self.bucket, key=self.key) from exc
            raise self._err(exc) from exc

    def _refuse_if_exists(self) -> None:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:  # noqa: BLE001
            code = error_code(exc)
            if code in ("404", "NoSuchKey", "NotFound"):
                return
            if code in ("403", "AccessDenied"):
                return  # cannot tell: the conditional write at the end still protects the object
            raise self._err(exc) from exc
        raise E.ObjectExists(
            f"s3://{self.bucket}/{self.key} already exists and --no-overwrite was given: choose another key",
            bucket=self.bucket, key=self.key,
        )

    # -- single PutObject ---------------------------------------------------------------------------------------
    def _run_single(self) -> UploadResult:
        algorithm = self._algorithm()
        md5 = self.options.checksum is not ChecksumMode.NONE
        counter = ByteCounter(1)
        outcome: dict[str, Any] = {}

        def put() -> None:
            try:
                outcome["response"] = self._put_with_retries(counter, algorithm, md5, outcome)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                outcome["error"] = exc

        # ``started`` waits for the first byte on the wire: botocore sends ``Expect: 100-continue``, so the
        # store has accepted the request (credentials, bucket, permissions) before the body moves. A PUT
        # refused outright then prints just the error line, as a refused CreateMultipartUpload does.
        started = False
        thread = threading.Thread(target=put, name="mpupload-put", daemon=True)
        thread.start()
        next_tick = time.monotonic() + TICK_S
        try:
            while thread.is_alive():
                wait([self.cancel.fileno()], max(0.0, next_tick - time.monotonic()))
                if self.cancel.cancelled:
                    self._flag.set()
                    thread.join(SHUTDOWN_JOIN_S + 3)
                    raise E.Cancelled(self.cancel.reason or "interrupted")
                if not started and counter.total() > 0:
                    self.agg.started(self._started_extra(algorithm, md5))
                    started = True
                if started and time.monotonic() >= next_tick:
                    self.agg.tick(counter.total(), 0)
                    next_tick = time.monotonic() + TICK_S
            thread.join()
            if not started and "error" not in outcome:
                self.agg.started(self._started_extra(algorithm, md5))
                started = True
            if "error" in outcome:
                exc = outcome["error"]
                if isinstance(exc, E.Cancelled):
                    raise E.Cancelled(self.cancel.reason or "interrupted")
                raise self._err(exc) from exc
            self.agg.set_status(Status.FINALIZING)
            self.agg.tick(self.source.size, 1)
            return self._verify_single(outcome, algorithm)
        except E.Cancelled:
            self.agg.finish(Event.STOPPED, Status.STOPPED, {"aborted": True, "reason": self.cancel.reason},
                            sent_bytes=counter.total())
            raise
        except E.MpuploadError as exc:
            self.agg.finish(Event.FAILED, Status.FAILED, {"error": str(exc), "error_type": type(exc).__name__},
                            sent_bytes=counter.total())
            raise

    def _put_with_retries(
        self, counter: ByteCounter, algorithm: Algorithm | None, md5: bool, outcome: dict[str, Any]
    ) -> Any:
        size = self.source.size
        fd = os.open(self.source.path, os.O_RDONLY)
        try:
            for attempt in range(1, SINGLE_PUT_ATTEMPTS + 1):
                algo_h = new_hasher(algorithm) if algorithm else None
                md5_h = new_hasher(Algorithm.MD5) if md5 else None
                hashers = [h for h in (algo_h, md5_h) if h is not None]
                digest_range(fd, 0, size, hashers, cancel=self._flag)
                params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key, "ContentLength": size,
                                          **self._object_args()}
                if algo_h is not None and algorithm is not None:
                    outcome["checksum"] = b64(algo_h.digest())
                    params[boto_checksum_param(algorithm)] = outcome["checksum"]
                if md5_h is not None:
                    raw = md5_h.digest()
                    outcome["md5"] = raw.hex()
                    params["ContentMD5"] = b64(raw)
                if self.options.no_overwrite:
                    params["IfNoneMatch"] = "*"
                reader = PartReader(fd, 0, size, counter=counter, slot=0, cancel=self._flag)
                params["Body"] = reader
                try:
                    response = self.client.put_object(**params)
                    etag = str(response.get("ETag", "")).strip('"').lower()
                    if md5 and self._etag_is_md5 and etag != outcome["md5"]:
                        raise E.UploadFailed(f"the store's ETag {etag} is not the MD5 {outcome['md5']} of the file")
                    if reader.counted != size:
                        counter.add(0, size - reader.counted)
                    return response
                except BaseException as exc:  # noqa: BLE001
                    reader.rollback()
                    if self._flag.is_set() or isinstance(exc, E.Cancelled):
                        raise E.Cancelled("cancelled") from exc
                    if isinstance(exc, E.SourceChanged) or not is_retryable(exc) or attempt == SINGLE_PUT_ATTEMPTS:
                        raise
                    delay = min(20.0, 0.5 * 2 ** (attempt - 1))
                    deadline = time.monotonic() + delay
                    while time.monotonic() < deadline and not self._flag.is_set():
                        time.sleep(0.05)
            raise AssertionError("unreachable")
        finally:
            os.close(fd)

    def _verify_single(self, outcome: dict[str, Any], algorithm: Algorithm | None) -> UploadResult:
        response = outcome["response"]
        head = self._head()
        self._check_size(head)
        etag = str(head.get("ETag") or response.get("ETag") or "").strip('"')
        verified = "size-only"
        checksum = None
        if "md5" in outcome and self._etag_is_md5 and etag.lower() == outcome["md5"]:
            verified = "md5"
        if algorithm is not None and "checksum" in outcome:
            stored = head.get(boto_checksum_param(algorithm)) or response.get(boto_checksum_param(algorithm))
            if stored is not None:
                if stored != outcome["checksum"]:
                    self._delete_corrupt()
                    raise E.IntegrityError(
                        f"the stored object's {algorithm.value} {stored} differs from the file's "
                        f"{outcome['checksum']}: the object was deleted; run the command again",
                        bucket=self.bucket, key=self.key)
                checksum = f"{algorithm.value}:{stored}"
                if verified == "size-only":
                    verified = algorithm.value
        if checksum is None and "md5" in outcome:
            checksum = f"md5:{outcome['md5']}"
        return self._complete(verified, etag, checksum, f"s3://{self.bucket}/{self.key}", parts=1)

    # -- multipart ------------------------------------------------------------------------------------------------
    def _run_multipart(self, resume: ResumeState | None) -> UploadResult:
        done: dict[int, PartResult] = {}
        if resume is not None:
            algorithm = resume.algorithm
            md5 = resume.journal.md5 if resume.journal is not None else self._etag_is_md5
            validated = False
            self.upload_id = resume.upload_id
            for number, listed in resume.reusable.items():
                record = resume.journal.parts.get(number) if resume.journal is not None else None
                done[number] = PartResult(
                    number, True, size=listed.size, etag=listed.etag,
                    checksum=(record.checksum if record is not None else None) or listed.checksum,
                    md5=(record.md5 if record is not None else None) or (listed.etag if self._etag_is_md5 else None))
            self.resumed_bytes, self.resumed_parts = resume.resumed_bytes, len(resume.reusable)
            self.agg.resumed_bytes = self.resumed_bytes
            self.agg.parts_total = self.plan.parts_total
        else:
            algorithm = self._algorithm()
            create: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key, **self._object_args()}
            if algorithm is not None:
                create["ChecksumAlgorithm"] = algorithm.value.upper()
            try:
                response = self.client.create_multipart_upload(**create)
            except Exception as exc:  # noqa: BLE001
                raise self._err(exc) from exc
            self.upload_id = str(response["UploadId"])
        self.agg.upload_id = self.agg.upload_id or self.upload_id
        self.cancel.left_behind = (
            f"multipart upload {self.upload_id} of s3://{self.bucket}/{self.key} may be left on the store: "
            f"remove it with: aws s3api abort-multipart-upload --bucket {self.bucket} --key {self.key} "
            f"--upload-id {self.upload_id}"
        )
        counter = ByteCounter(self.plan.workers)
        try:
            if resume is None:
                validated, md5 = self._decide_integrity(algorithm, create)
            self._journal_start(algorithm, md5, done)
            self.agg.started(self._started_extra(algorithm, md5))
            assert self.upload_id is not None
            spec = WorkerSpec(self.store, self.source.path, self.bucket, self.key, self.upload_id, algorithm, md5)
            self._upload_parts(spec, counter, done)
            self.source.check_unchanged()
            self.agg.set_status(Status.FINALIZING)
            self.agg.tick(counter.total(), len(done))
            if self.journal is not None:
                self.journal.save()  # every part is recorded before Complete: a crash now can still be verified
            result = self._complete_multipart(done, algorithm, md5, validated)
            self._journal_end(keep=False)
            return result
        except E.Cancelled:
            self._flag.set()
            aborted = not self.options.keep_on_interrupt
            if aborted:
                self._abort()
            self._journal_end(keep=not aborted)
            extra: dict[str, Any] = {"aborted": aborted, "reason": self.cancel.reason}
            if not aborted:
                extra["store_upload_id"] = self.upload_id
                if self.options.resume_command:
                    extra["resume_command"] = self.options.resume_command
            self.agg.finish(Event.STOPPED, Status.STOPPED, extra, sent_bytes=counter.total(),
                            parts_done=len(done))
            if not aborted and self.options.resume_command:
                raise E.Cancelled(f"{self.cancel.reason or 'interrupted'}; the multipart upload was kept: "
                                  f"continue it with {self.options.resume_command}", upload_id=self.upload_id) from None
            raise
        except BaseException as exc:
            self._flag.set()
            err = exc if isinstance(exc, E.MpuploadError) else self._err(exc)
            if not isinstance(exc, E.MpuploadError) and not isinstance(exc, Exception):
                err = E.Cancelled("interrupted")  # KeyboardInterrupt in a library caller without our handlers
            if err.abort_upload or isinstance(err, E.Cancelled):
                self._abort()
            else:
                self.cancel.left_behind = None
            kept = not (err.abort_upload or isinstance(err, E.Cancelled))
            self._journal_end(keep=kept)
            if kept and self.options.resume_command:
                advice = re.sub(r"(, then|:) run the same command again$", "", err.message)
                err.message = f"{advice}; the upload was kept: continue it with {self.options.resume_command}"
            if isinstance(err, E.Cancelled):
                self.agg.finish(Event.STOPPED, Status.STOPPED, {"aborted": True, "reason": "interrupted"},
                                sent_bytes=counter.total(), parts_done=len(done))
            else:
                extra = {"error": str(err), "error_type": type(err).__name__}
                if kept:
                    extra["store_upload_id"] = self.upload_id
                    if self.options.resume_command:
                        extra["resume_command"] = self.options.resume_command
                self.agg.finish(Event.FAILED, Status.FAILED, extra, sent_bytes=counter.total(),
                                parts_done=len(done))
            if err is exc:
                raise
            raise err from exc

    def _decide_integrity(self, algorithm: Algorithm | None, create: dict[str, Any]) -> tuple[bool, bool]:
        """(store validates the checksum header, send and compare MD5 too)."""
        if self.options.checksum is ChecksumMode.NONE:
            return False, False
        if algorithm is None:  # --checksum md5
            return False, True
        validated = self._probe_checksum_validation(algorithm, create)
        if validated:
            return True, False
        if self._etag_is_md5:
            return False, True
        self._warn(
            f"the store did not reject a wrong {algorithm.value} checksum and ETags are not MD5s under SSE-KMS: "
            "only the size of the object can be verified"
        )
        return False, False

    def _probe_checksum_validation(self, algorithm: Algorithm, create: dict[str, Any]) -> bool:
        """Does the store check the checksum header? Ask it with a deliberately wrong one.

        The probe runs in a throwaway multipart upload of the same key, aborted right away: a part left
        in the real upload would break CompleteMultipartUpload on stores that insist on every uploaded part
        being listed (Ceph RGW). A store that checks refuses the part (BadDigest); one that ignores the
        header stores it, and the abort removes it.
        """
        body = b"mpupload checksum probe"
        wrong = new_hasher(algorithm)
        wrong.update(b"not the body")
        try:
            probe_id = self.client.create_multipart_upload(**create)["UploadId"]
        except Exception as exc:  # noqa: BLE001
            raise self._err(exc) from exc
        try:
            self.client.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=probe_id, PartNumber=1,
                Body=body, ContentLength=len(body), **{boto_checksum_param(algorithm): b64(wrong.digest())},
            )
        except Exception as exc:  # noqa: BLE001
            code = error_code(exc) or ""
            message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", "")).lower()
            if code in _CHECKSUM_REJECTED or (code == "InvalidRequest" and "checksum" in message):
                return True
            err = self._err(exc)
            if isinstance(err, (E.AuthError, E.BucketNotFound, E.StoreUnreachable)):
                raise err from exc
            log.debug("checksum probe answered %s: treating checksums as unchecked", code)
            return False
        finally:
            self._abort_id(probe_id, self.store.short_lived().make_client())
        log.debug("the store accepted a wrong %s checksum: it does not check it", algorithm.value)
        return False

    def _upload_parts(self, spec: WorkerSpec, counter: ByteCounter, done: dict[int, PartResult]) -> None:
        plan = self.plan
        pending = deque(p for p in plan.parts() if p.number not in done)
        if not pending:
            return
        pool = WorkerPool(spec, plan.workers, counter, self._flag, start_method=self.options.start_method)
        deaths = 0
        max_deaths = max(3, 2 * plan.workers)
        try:
            next_tick = time.monotonic() + TICK_S
            while len(done) < plan.parts_total:
                for worker in pool.idle():
                    if not pending:
                        break
                    pool.send(worker, pending.popleft())
                ready = wait([*pool.waitables(), self.cancel.fileno()], max(0.0, next_tick - time.monotonic()))
                if self.cancel.cancelled:
                    raise E.Cancelled(self.cancel.reason or "interrupted")
                for worker in list(pool.workers):
                    alive = True
                    if worker.conn in ready:
                        alive = self._drain(worker, done)
                    if worker.process.sentinel in ready or not alive:
                        if worker.conn.poll(0):
                            self._drain(worker, done)
                        if worker.process.is_alive() and alive:
                            continue
                        deaths += 1
                        if worker.job is not None:
                            pending.appendleft(worker.job)
                        log.warning("worker %d (pid %s) died with exit code %s; replacing it", worker.slot,
                                    worker.process.pid, worker.process.exitcode)
                        if deaths > max_deaths:
                            raise E.WorkerCrashed(
                                f"worker processes died {deaths} times (last exit code {worker.process.exitcode}): "
                                "check memory limits and the system log, then run the command again",
                                bucket=self.bucket, key=self.key, upload_id=self.upload_id)
                        pool.replace(worker)
                now = time.monotonic()
                if now >= next_tick:
                    self.agg.tick(counter.total(), len(done))
                    next_tick = now + TICK_S
        finally:
            if len(done) < plan.parts_total:
                self._flag.set()
            pool.shutdown(SHUTDOWN_JOIN_S)

    def _drain(self, worker: Any, done: dict[int, PartResult]) -> bool:
        """Read every result waiting on a worker's pipe; False when the pipe is broken."""
        try:
            while worker.conn.poll(0):
                result: PartResult = worker.conn.recv()
                if result.number == 0 and not result.ok:  # the worker could not start
                    result.raise_error(self.upload_id)
                if result.ok:
                    done[result.number] = result
                    worker.completed_bytes += result.size
                    worker.job = None
                    self._journal_part(result)
                elif result.cancelled:
                    worker.job = None
                    raise E.Cancelled(self.cancel.reason or "interrupted")
                else:
                    if result.traceback:
                        log.debug("part %d failed:\n%s", result.number, result.traceback)
                    result.raise_error(self.upload_id)
        except (EOFError, OSError, ConnectionError):
            return False
        return True

    def _complete_multipart(
        self, done: dict[int, PartResult], algorithm: Algorithm | None, md5: bool, validated: bool
    ) -> UploadResult:
        parts = []
        for number in range(1, self.plan.parts_total + 1):
            result = done[number]
            entry: dict[str, Any] = {"PartNumber": number, "ETag": f'"{result.etag}"'}
            if algorithm is not None and result.checksum is not None:
                entry[boto_checksum_param(algorithm)] = result.checksum
            parts.append(entry)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key, "UploadId": self.upload_id,
                                  "MultipartUpload": {"Parts": parts}}
        if self.options.no_overwrite:
            params["IfNoneMatch"] = "*"
        try:
            response = self.client.complete_multipart_upload(**params)
        except Exception as exc:  # noqa: BLE001
            raise self._err(exc) from exc
        self.cancel.left_behind = None
        head = self._head()
        self._check_size(head)
        etag = str(head.get("ETag") or response.get("ETag") or "").strip('"')
        verified = "size-only"
        checksum: str | None = None
        if algorithm is not None:
            expected = composite_checksum(algorithm, (_unb64(done[n].checksum) for n in sorted(done)))
            stored = head.get(boto_checksum_param(algorithm)) or response.get(boto_checksum_param(algorithm))
            # We asked for a composite checksum ("<value>-<parts>"); a value of another shape is not one we can
            # check (seen: a store that reports a checksum of neither the object nor its parts): ignore it.
            if stored and not str(stored).endswith(f"-{self.plan.parts_total}"):
                log.debug("ignoring the store's object checksum %s: not a composite of %d parts", stored,
                          self.plan.parts_total)
                stored = None
            if stored:
                if stored != expected:
                    self._delete_corrupt()
                    raise E.IntegrityError(
                        f"the stored object's composite {algorithm.value} {stored} differs from {expected}: "
                        "the object was deleted; run the command again", bucket=self.bucket, key=self.key)
                verified = algorithm.value
            elif validated:
                verified = algorithm.value  # every part was checked by the store itself; the size matches
            checksum = f"{algorithm.value}:{stored or expected}"
        if md5:
            expected_etag = multipart_etag(bytes.fromhex(done[n].md5 or "") for n in sorted(done))
            if etag.lower() == expected_etag:
                verified = "md5" if verified == "size-only" else verified
                checksum = checksum or f"md5:{expected_etag}"
            elif self._etag_is_md5 and verified == "size-only":
                self._delete_corrupt()
                raise E.IntegrityError(
                    f"the stored object's ETag {etag} is not {expected_etag}, the MD5 of its parts: "
                    "the object was deleted; run the command again", bucket=self.bucket, key=self.key)
        if verified == "size-only":
            self._warn("the store offered no checksum to verify against: only the object's size was checked")
        location = str(response.get("Location") or f"s3://{self.bucket}/{self.key}")
        return self._complete(verified, etag, checksum, location, parts=self.plan.parts_total)

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


def _algorithm_or_none(name: str | None) -> Algorithm | None:
    try:
        return Algorithm(name) if name else None
    except ValueError:
        return None


def _unb64(value: str | None) -> bytes:
    import base64

    return base64.b64decode(value or "")
