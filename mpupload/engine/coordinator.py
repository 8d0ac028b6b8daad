"""The coordinator: one upload from start to verified object, in the parent's main thread.

Order of events for a multipart upload:

1. CreateMultipartUpload — and at that very moment the abort is registered as the cleanup of every
   failure that makes the upload impossible (credentials, access, missing bucket, changed source,
   corrupted data) and of a cancel (unless the upload is kept: ``--keep-on-interrupt``, or a ``--resume`` run
   without ``--abort-on-interrupt``). A cancel that comes before it creates nothing;
2. find out what the store really checks (:mod:`.probe`: once per process and store) and so what every part
   carries and how its answer is checked;
3. hand parts to the worker pool; sample the counter on a fixed tick; replace dead workers;
4. before CompleteMultipartUpload, make sure the source did not change;
5. CompleteMultipartUpload, which a cancel cannot stop (it finishes, and the object is verified and reported);
   an answer that is lost is recovered by asking the store whether the upload is gone and the object is this
   file;
6. verify the object (:mod:`.verify`): its size, then its checksum or ETag, or its bytes read back.

Every way out says what is left on the store: an abort that fails keeps the journal and reports the upload
(``left_behind`` in the ``stopped``/``failed`` event, with the command that removes it); an upload someone else
aborted is one clear error (nothing kept, nothing to resume).

A file that fits in one part goes up with one PutObject (:mod:`.single`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from typing import Any

from .. import errors as E
from ..checksums import Algorithm
from ..events import Event, Status
from ..options import ChecksumMode, UploadResult
from ..storage.errors import error_code, gone_error, http_status, is_gone
from ..storage.port import Checksum, CompletedPart
from .aggregator import TICK_S, Aggregator
from .executor import JobDone, WorkerBroken, WorkerLost
from .journaling import Journaling
from .probe import IntegrityPlan, StoreTraits, integrity_plan
from .resume import AlreadyComplete, ResumeState
from .session import Source
from .single import SinglePut
from .verify import Expected, Verdict, identify, verify_written
from .worker import PartJob, PartResult, PartTarget

__all__ = ["Source", "Coordinator"]

log = logging.getLogger("mpupload")

COMPLETING = ("the store is assembling the object (CompleteMultipartUpload), which cannot be stopped: it finishes "
              "first, then the object is verified")


class Coordinator(SinglePut, Journaling):
    #: set once CompleteMultipartUpload went through: there is no upload to abort or keep any more
    _completed = False

    #: what the set-up decided: resume this upload, report this object as already there, or start afresh
    _state: ResumeState | AlreadyComplete | None = None
    _prepared = False
    _cancelled_in_prepare = False

    def prepare(self) -> None:
        """The set-up, done once before anything is reported: the workers start (and build their clients) before
        this process asks the store what can be resumed; the plan may change (the interrupted run's part size).
        A cancel here is reported by :meth:`run` (as "stopped before the start")."""
        self._prepared = True
        try:
            # this process's client first: boto3 imported and its models loaded here are shared by the workers
            # forked next (a worker then builds its client in about 30 ms instead of importing boto3 itself)
            self.store.connect()
            self._start_executor(multipart=self.plan.multipart)
            self._check_cancel()
            if self.options.no_overwrite:
                self._refuse_if_exists()
            self._state = self._prepare_journal()
            self._check_cancel()
        except E.Cancelled:
            self._cancelled_in_prepare = True
        except BaseException:
            self.close()
            raise

    def run(self, aggregator: Aggregator) -> UploadResult:
        """Send, complete and verify, reporting through ``aggregator`` (built from the final plan)."""
        self.agg = aggregator
        try:
            if not self._prepared:
                self.prepare()
            if self._cancelled_in_prepare:
                raise self._stopped_before_start() from None
            state = self._state
            if isinstance(state, AlreadyComplete):
                return self._report_already_complete(state)
            if state is not None or self.plan.multipart:
                return self._run_multipart(state)
            self._check_bucket()
            return self._run_single()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        self._shutdown_executor()

    def _refuse_if_exists(self) -> None:
        try:
            self.store.head_object(self.bucket, self.key)
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

    def _stopped_before_start(self) -> E.Cancelled:
        """A cancel before any part went: nothing was created, or the upload being resumed is kept as it was."""
        reason = self.cancel.reason or "interrupted"
        if self.upload_id is not None and not self.options.keeps_on_interrupt:  # --resume --abort-on-interrupt
            aborted = self._abort()
            if aborted and self.journal_path is not None:
                with contextlib.suppress(OSError):
                    self.journal_path.unlink()
            extra: dict[str, Any] = {"aborted": aborted, "kept": False, "reason": reason}
            if not aborted:
                extra.update(store_upload_id=self.upload_id, left_behind=self._left_behind())
            self.agg.finish(Event.STOPPED, Status.STOPPED, extra, sent_bytes=0, parts_done=0)
            outcome = "the multipart upload was aborted" if aborted else (
                f"the multipart upload {self.upload_id} could NOT be aborted")
            return E.Cancelled(f"{reason}; {outcome}{self._left_behind_text()}", upload_id=self.upload_id)
        extra = {"aborted": False, "reason": reason, "kept": self.upload_id is not None}
        message = f"{reason}; nothing was sent to the store"
        if self.upload_id is not None:  # stopped while checking the parts of the upload being resumed
            extra["store_upload_id"] = self.upload_id
            if self.options.resume_command:
                extra["resume_command"] = self.options.resume_command
                message = (f"{reason}; the interrupted multipart upload {self.upload_id} is kept as it was: "
                           f"continue it with {self.options.resume_command}")
        if self.left:
            extra["left_behind"] = self._left_behind()
        self.agg.finish(Event.STOPPED, Status.STOPPED, extra, sent_bytes=0, parts_done=0)
        return E.Cancelled(message + self._left_behind_text(), upload_id=self.upload_id)

    # -- multipart ------------------------------------------------------------------------------------------------
    def _run_multipart(self, resume: ResumeState | None) -> UploadResult:
        done: dict[int, PartResult] = {}
        try:
            if resume is not None:
                integrity = self._resume(resume, done)
            else:
                integrity = self._create()
            self._journal_start(integrity.algorithm, integrity.content_md5, done)
            self.agg.started(self._started_extra(integrity))
            assert self.upload_id is not None
            target = PartTarget(self.source.path, self.bucket, self.key, self.upload_id, integrity.algorithm,
                                integrity.content_md5, integrity.etag_is_md5)
            self._upload_parts(target, done)
            self.source.check_unchanged()
            self._check_cancel()
            self.agg.set_status(Status.FINALIZING)
            self.agg.tick(self._bytes_sent(), len(done))
            self._save_journal()  # every part is recorded before Complete: a crash now can still be verified
            result = self._complete_multipart(done, integrity)
            self._journal_end(keep=False)
            return result
        except BaseException as exc:
            self._flag.set()
            if isinstance(exc, E.Cancelled) or not isinstance(exc, Exception):
                # (KeyboardInterrupt in a library caller without our signal handlers is a cancel too)
                raise self._stopped(done) from None
            err = exc if isinstance(exc, E.MpuploadError) else self._err(exc)
            raise self._failed(err, done) from (None if err is exc else exc)

    def _create(self) -> IntegrityPlan:
        algorithm = self._algorithm()
        self._check_cancel()
        try:
            self.upload_id = self.store.create_multipart_upload(self.bucket, self.key, algorithm=algorithm,
                                                                object_args=self._object_args())
        except Exception as exc:  # noqa: BLE001
            raise self._err(exc) from exc
        self.agg.upload_id = self.agg.upload_id or self.upload_id
        self._register_cleanup()
        self._check_cancel()
        traits = None if self.options.checksum is ChecksumMode.NONE else self._traits(algorithm)
        self._check_cancel()
        return self._integrity(algorithm, traits)

    def _resume(self, resume: ResumeState, done: dict[int, PartResult]) -> IntegrityPlan:
        self.upload_id = resume.upload_id
        self.agg.upload_id = self.agg.upload_id or self.upload_id
        self._register_cleanup()
        integrity = self._integrity(resume.algorithm, self.resume_traits)
        if resume.journal is not None and self.resume_traits is None:
            # --checksum none on this run: keep the interrupted run's MD5s (it compared them with the ETags)
            integrity = IntegrityPlan(resume.algorithm, resume.journal.md5, resume.journal.md5,
                                      "md5" if resume.journal.md5 else None, False)
        for number, listed in resume.reusable.items():
            record = resume.journal.parts.get(number) if resume.journal is not None else None
            done[number] = PartResult(
                number, True, size=listed.size, etag=listed.etag,
                checksum=(record.checksum if record is not None else None) or listed.checksum,
                md5=(record.md5 if record is not None else None) or (listed.etag if integrity.etag_is_md5 else None))
        self.resumed_bytes, self.resumed_parts = resume.resumed_bytes, len(resume.reusable)
        self.agg.resumed_bytes = self.resumed_bytes
        return integrity

    def _integrity(self, algorithm: Algorithm | None, traits: StoreTraits | None) -> IntegrityPlan:
        return integrity_plan(self.options.checksum, algorithm, traits)

    def _register_cleanup(self) -> None:
        """What a second Ctrl+C (an immediate exit) would leave behind, from the moment the upload exists."""
        self.cancel.left_behind = (
            f"multipart upload {self.upload_id} of s3://{self.bucket}/{self.key} may be left on the store: "
            f"remove it with: {self._cleanup_command(self.upload_id or '')}"
        )

    def _stopped(self, done: dict[int, PartResult]) -> E.Cancelled:
        """A cancel once the upload exists: abort it (or keep it) and say exactly what is left."""
        reason = self.cancel.reason or "interrupted"
        if self._completed:  # Ctrl+C during the read-back of a completed object: nothing to abort
            self.agg.finish(Event.STOPPED, Status.STOPPED,
                            {"aborted": False, "kept": False, "reason": reason, "object_completed": True},
                            sent_bytes=self._bytes_sent(), parts_done=len(done))
            return E.Cancelled(f"{reason}; s3://{self.bucket}/{self.key} was completed, but the read-back "
                               "verification was stopped: it is not verified", upload_id=self.upload_id)
        keep = self.options.keeps_on_interrupt and self.upload_id is not None
        aborted = False if keep else self._abort()
        # the journal goes only with the upload: one whose abort failed can still be resumed or cleaned up
        self._journal_end(keep=not aborted)
        extra: dict[str, Any] = {"aborted": aborted and self.upload_id is not None, "kept": keep, "reason": reason}
        if not aborted:
            extra["store_upload_id"] = self.upload_id
            if self.options.resume_command:
                extra["resume_command"] = self.options.resume_command
        if self.left:
            extra["left_behind"] = self._left_behind()
        self.agg.finish(Event.STOPPED, Status.STOPPED, extra, sent_bytes=self._bytes_sent(), parts_done=len(done))
        if keep:
            message = f"{reason}; the multipart upload was kept"
            if self.options.resume_command:
                message += f": continue it with {self.options.resume_command}"
        elif not aborted:
            message = f"{reason}; the multipart upload {self.upload_id} could NOT be aborted"
        elif self.upload_id is None:
            message = f"{reason}; nothing was sent to the store"
        else:
            message = f"{reason}; the multipart upload was aborted"
        return E.Cancelled(message + self._left_behind_text(), upload_id=self.upload_id)

    def _failed(self, err: E.MpuploadError, done: dict[int, PartResult]) -> E.MpuploadError:
        """A failure: abort what cannot succeed later, keep what can, and say exactly what is left."""
        if not err.upload_exists or self._completed:
            # gone (aborted by someone else, expired), or completed: nothing to abort, keep or resume
            if self.upload_id is not None:
                self.left.pop(self.upload_id, None)
            self.cancel.left_behind = None
            self._journal_end(keep=False)
            kept = False
        elif err.abort_upload:
            kept = not self._abort()  # an abort that failed leaves it (and its journal) for cleanup or --resume
            self._journal_end(keep=kept)
        else:
            kept = self.upload_id is not None
            self.cancel.left_behind = None
            self._journal_end(keep=kept)
        extra: dict[str, Any] = {"error": str(err), "error_type": type(err).__name__}
        resumable = kept and not err.abort_upload
        if kept:
            extra["store_upload_id"] = self.upload_id
            if resumable and self.options.resume_command:
                extra["resume_command"] = self.options.resume_command
        if self.left:
            extra["left_behind"] = self._left_behind()
        self.agg.finish(Event.FAILED, Status.FAILED, extra, sent_bytes=self._bytes_sent(), parts_done=len(done))
        if resumable and self.options.resume_command:
            advice = re.sub(r"(, then|:) run the same command again$", "", err.message)
            err.message = f"{advice}; the upload was kept: continue it with {self.options.resume_command}"
        elif self.left:
            err.message += self._left_behind_text()
        return err

    def _upload_parts(self, target: PartTarget, done: dict[int, PartResult]) -> None:
        plan = self.plan
        pending = [p for p in plan.parts() if p.number not in done]
        if not pending:
            return
        self._check_cancel()
        executor = self._start_executor(multipart=True)
        for part in pending:
            executor.submit(PartJob(target, part))
        deaths = 0
        max_deaths = max(3, 2 * plan.workers)
        try:
            next_tick = time.monotonic() + TICK_S
            while len(done) < plan.parts_total:
                events = executor.events(max(0.0, next_tick - time.monotonic()), wake=[self.cancel.fileno()])
                if self.cancel.cancelled:
                    raise E.Cancelled(self.cancel.reason or "interrupted")
                for event in events:
                    if isinstance(event, WorkerBroken):  # the worker could not start
                        event.raise_error(self.upload_id)
                    elif isinstance(event, WorkerLost):
                        deaths += 1
                        if event.job is not None:
                            executor.submit(event.job, first=True)
                        log.warning("worker %d (pid %s) died with exit code %s; replacing it", event.slot, event.pid,
                                    event.exitcode)
                        if deaths > max_deaths:
                            raise E.WorkerCrashed(
                                f"worker processes died {deaths} times (last exit code {event.exitcode}): "
                                "check memory limits and the system log, then run the command again",
                                bucket=self.bucket, key=self.key, upload_id=self.upload_id)
                    else:
                        self._part_done(event, done)
                now = time.monotonic()
                if now >= next_tick:
                    self.agg.tick(executor.bytes_sent(), len(done))
                    next_tick = now + TICK_S
        finally:
            if len(done) < plan.parts_total:
                executor.cancel()

    def _part_done(self, event: JobDone, done: dict[int, PartResult]) -> None:
        result = event.result
        if result.ok:
            done[result.number] = result
            self._journal_part(result)
        elif result.cancelled:
            raise E.Cancelled(self.cancel.reason or "interrupted")
        else:
            if result.traceback:
                log.debug("part %d failed:\n%s", result.number, result.traceback)
            result.raise_error(self.upload_id)

    def _expected(self, done: dict[int, PartResult], integrity: IntegrityPlan) -> Expected:
        ordered = [done[n] for n in range(1, self.plan.parts_total + 1)]
        checksums = tuple(r.checksum or "" for r in ordered) if all(r.checksum for r in ordered) else None
        md5s = tuple(r.md5 or "" for r in ordered) if all(r.md5 for r in ordered) else None
        return Expected(self.source.size, self.plan.part_size, multipart=True, algorithm=integrity.algorithm,
                        part_checksums=checksums if integrity.algorithm is not None else None, part_md5s=md5s)

    def _complete_multipart(self, done: dict[int, PartResult], integrity: IntegrityPlan) -> UploadResult:
        algorithm = integrity.algorithm
        parts = []
        for number in range(1, self.plan.parts_total + 1):
            result = done[number]
            checksum = Checksum(algorithm, result.checksum) if algorithm is not None and result.checksum is not None \
                else None
            parts.append(CompletedPart(number, str(result.etag), checksum))
        assert self.upload_id is not None
        expected = self._expected(done, integrity)
        self.cancel.uninterruptible = COMPLETING
        if self.cancel.cancelled:
            self.cancel.uninterruptible = None
            raise E.Cancelled(self.cancel.reason or "interrupted")
        self.cancel.left_behind = (
            f"CompleteMultipartUpload of upload {self.upload_id} was sent: s3://{self.bucket}/{self.key} may be "
            "complete; run the same command with --resume to find out")
        try:
            response = self.store.complete_multipart_upload(self.bucket, self.key, self.upload_id, parts,
                                                            if_none_match=self.options.no_overwrite)
        except Exception as exc:  # noqa: BLE001
            recovered = self._complete_answer_lost(exc, expected)
            if recovered is None:
                raise self._err(exc) from exc
            return recovered
        finally:
            self.cancel.uninterruptible = None
        self._completed = True
        self.cancel.left_behind = None
        if self.cancel.cancelled:
            self._warn("Ctrl+C came while the store completed the object: too late to stop it; it is complete")
        verdict = verify_written(
            self._access(), expected, response, parts_checked=integrity.parts_checked,
            validates_checksum=integrity.validates_checksum, read_back_path=self._read_back_path,
            cancel=self._flag, threads=self.plan.workers, size_only_reason=integrity.warning)
        location = str(response.get("Location") or f"s3://{self.bucket}/{self.key}")
        return self._complete(verdict, location, parts=self.plan.parts_total)

    def _complete_answer_lost(self, exc: Exception, expected: Expected) -> UploadResult | None:
        """CompleteMultipartUpload failed. If the upload is gone, either this Complete went through (its answer
        was lost: the object is there and is this file) or someone aborted it (:class:`UploadGone`). ``None``:
        the upload is still there, an ordinary failure."""
        if not (is_gone(exc) or http_status(exc) in (404, 500)):
            return None
        assert self.upload_id is not None
        if not self.store.upload_gone(self.bucket, self.key, self.upload_id):
            return None  # still there (or the store cannot tell): an ordinary failure
        verdict: Verdict | None = identify(self._access(), expected, read_back_path=self._read_back_path,
                                           cancel=self._flag, threads=self.plan.workers)
        if verdict is None:
            raise gone_error(bucket=self.bucket, key=self.key, upload_id=self.upload_id) from exc
        self._completed = True
        log.info("CompleteMultipartUpload's answer was lost, but the object is there and is this file")
        return self._complete(verdict, f"s3://{self.bucket}/{self.key}", parts=self.plan.parts_total)
