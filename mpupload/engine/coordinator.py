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

import logging
import re
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Any

from .. import errors as E
from ..checksums import Algorithm, b64, boto_checksum_param, composite_checksum, multipart_etag, new_hasher, unb64
from ..events import Event, Status
from ..options import ChecksumMode, UploadResult
from ..storage.errors import error_code
from .aggregator import TICK_S
from .counter import ByteCounter
from .journaling import Journaling
from .pool import WorkerPool
from .resume import AlreadyComplete, ResumeState
from .session import CHECKSUM_REJECTED, SHUTDOWN_JOIN_S, Source
from .single import SinglePut
from .worker import PartResult, WorkerSpec

__all__ = ["Source", "Coordinator"]

log = logging.getLogger("mpupload")


class Coordinator(SinglePut, Journaling):
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
            if code in CHECKSUM_REJECTED or (code == "InvalidRequest" and "checksum" in message):
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
            expected = composite_checksum(algorithm, (unb64(done[n].checksum) for n in sorted(done)))
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

