"""One object's upload, from the set-up to a verified object: a state machine you can have N of in a process.

::

    NEW --prepare()--> PREPARED --run()--> CREATED --> SENDING --> COMPLETING --> COMPLETED --> VERIFIED
                          |                   |           |             |              |
                          +-------------------+-----------+-------------+--------------+--> STOPPED / FAILED

* :meth:`ObjectUpload.prepare` is the set-up, done once before anything is reported: this process's store client
  (the workers, forked next, share what it loaded), the executors started, ``--no-overwrite``'s check, and the
  resume decision (:mod:`.resume`: the journal is a hint, the store decides), which may change the plan;
* :meth:`ObjectUpload.run` reports through the aggregator it is given (built from the final plan) and goes:

  1. CreateMultipartUpload (or the upload being resumed) — and at that very moment its abort is registered
     (:class:`~.leftovers.Leftovers`) as the cleanup of every failure that makes the upload useless and of a
     cancel (unless it is kept: ``--keep-on-interrupt``, or a ``--resume`` run without ``--abort-on-interrupt``).
     A cancel that comes before it creates nothing;
  2. what the store really checks (:mod:`.probe`, once per process and store) and so what each part carries;
  3. the parts, as jobs (:class:`~.worker.PartJob`) of an :class:`~.executor.Executor`; bytes count as they are
     sent; a dead worker's job is sent again, a bounded number of times;
  4. before CompleteMultipartUpload, the source must not have changed;
  5. CompleteMultipartUpload, which a cancel cannot stop; an answer that is lost is recovered by asking whether
     the upload is gone and the object is this file;
  6. the one verification routine (:func:`~.verify.verify_object`).

  A file that fits in one part goes up with one PutObject, through the same part function and retry policy, run by
  a thread of this process (:class:`~.executor.ThreadExecutor`).

Every way out says what is left on the store (``left_behind``), whether the upload was ``kept`` and the command that
continues it (a structured field of the event and of the error, never text edited afterwards).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import mimetypes
import time
from pathlib import Path
from typing import Any

from .. import errors as E
from ..checksums import Algorithm
from ..options import ChecksumMode, UploadOptions, UploadResult
from ..plan import Part, UploadPlan
from ..source import Source
from ..storage.config import effective_endpoint
from ..storage.errors import classify, error_code, gone_error, http_status, is_gone
from ..storage.port import Checksum, CompletedPart, Store
from ..wire import Event, Status
from .aggregator import Aggregator
from .cancel import CancelToken
from .counter import CancelFlag
from .executor import Executor, JobDone, PartDone, WorkerBroken, WorkerLost
from .executors import Executors
from .journaling import JournalKeeper
from .leftovers import Leftovers
from .probe import IntegrityPlan, StoreTraits, etag_is_md5_answer, integrity_plan, probe_store
from .resume import AlreadyComplete, ResumeState, find_resume, verify_parts
from .verify import Expected, ObjectAccess, Verdict, verify_object
from .worker import BatchJob, BatchResult, PartJob, PartResult, PartTarget

__all__ = ["ObjectUpload", "Phase", "COMPLETING", "object_args", "checksum_algorithm", "check_bucket"]

log = logging.getLogger("mpupload")

COMPLETING = ("the store is assembling the object (CompleteMultipartUpload), which cannot be stopped: it finishes "
              "first, then the object is verified")
#: how long a cancelled PutObject is waited for (it may have gone through: then the object is verified)
PUT_CANCEL_WAIT_S = 5.0
#: the most parts one job carries on an executor that batches them (:func:`batch_size`)
MAX_PARTS_PER_JOB = 8


def batch_size(left: int, slots: int, most: int = MAX_PARTS_PER_JOB) -> int:
    """How many of the ``left`` parts the next job takes on an executor whose jobs cost (a cluster's tasks), when
    ``slots`` jobs run at once: guided self-scheduling. What is left divided by the slots, at least one part, at
    most :data:`MAX_PARTS_PER_JOB`. Asked each time a slot is free, with the slots there are then (workers join
    and leave), so the first jobs are large and the last ones single parts: fewer jobs, and a slot that ends early
    still finds small jobs to take, so the tail is no longer than with one part per job. Fewer parts than twice
    the slots go one to a job. ``most``: another cap (a store that signs a run of parts at once: its window)."""
    return max(1, min(most, left // max(1, slots)))


class Phase(enum.Enum):
    NEW = "new"
    PREPARED = "prepared"
    #: the multipart upload exists (created, or the one being resumed): its abort is registered
    CREATED = "created"
    SENDING = "sending"
    #: CompleteMultipartUpload was sent: a cancel cannot stop it
    COMPLETING = "completing"
    #: the object is there: nothing to abort or keep any more
    COMPLETED = "completed"
    VERIFIED = "verified"
    STOPPED = "stopped"
    FAILED = "failed"


def algorithm_or_none(name: str | None) -> Algorithm | None:
    try:
        return Algorithm(name) if name else None
    except ValueError:
        return None


def object_args(o: UploadOptions, path: str) -> dict[str, Any]:
    """The object's arguments (CreateMultipartUpload, PutObject) from the options and the file's name."""
    args: dict[str, Any] = {}
    content_type = o.content_type or mimetypes.guess_type(path)[0]
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


#: error codes that mean the request's credentials are wrong, whatever the caller may do (not a missing permission)
BAD_CREDENTIAL_CODES = frozenset({"SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken",
                                  "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidClientTokenId"})


def check_bucket(store: Store, bucket: str, key: str | None = None, *, prefix: str | None = None) -> None:
    """Fail before the start on what the first request would only reveal later: a missing bucket, no credentials,
    an unreachable store.

    A 403 to HeadBucket has no body, so it cannot say why: wrong credentials, or credentials without
    s3:ListBucket (which may still write). One ListObjectsV2 (of ``prefix``, else of the key) then reads the
    error code: wrong credentials end the run here with exit 3; AccessDenied, or any other answer, goes ahead."""
    try:
        store.head_bucket(bucket)
    except Exception as exc:  # noqa: BLE001
        code = error_code(exc)
        if code in ("403", "AccessDenied", "Forbidden"):
            _why_forbidden(store, bucket, key, key if prefix is None else prefix)
            return
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise E.BucketNotFound(f"bucket {bucket!r} does not exist: create it first or check the name",
                                   bucket=bucket, key=key) from exc
        raise classify(exc, bucket=bucket, key=key, endpoint=store.endpoint_url) from exc


def _why_forbidden(store: Store, bucket: str, key: str | None, prefix: str | None) -> None:
    """Raise :class:`~mpupload.errors.AuthError` if the store says the credentials are wrong; else return."""
    try:
        store.list_objects_page(bucket, prefix or "")
    except Exception as exc:  # noqa: BLE001 - only a credentials verdict ends the run; anything else goes ahead
        if error_code(exc) in BAD_CREDENTIAL_CODES:
            raise classify(exc, bucket=bucket, key=key, endpoint=store.endpoint_url) from exc


def checksum_algorithm(options: UploadOptions) -> Algorithm | None:
    """The checksum header every part carries (``--checksum``; auto: CRC32C)."""
    mode = options.checksum
    if mode in (ChecksumMode.NONE, ChecksumMode.MD5):
        return None
    if mode is ChecksumMode.AUTO:
        return Algorithm.CRC32C
    return Algorithm(mode.value)


class ObjectUpload:
    def __init__(
        self,
        source: Source,
        bucket: str,
        key: str,
        plan: UploadPlan,
        *,
        store: Store,
        options: UploadOptions,
        cancel: CancelToken,
        executors: Executors,
        journal_path: Path | None = None,
        record_id: str | None = None,
        object_id: int = 0,
    ) -> None:
        self.source = source
        self.bucket = bucket
        self.key = key
        self.plan = plan
        self.store = store
        self.options = options
        self.cancel = cancel
        self.executors = executors
        #: the API server's record id, kept in the journal so that --resume continues the same record
        self.record_id = record_id
        self.phase = Phase.NEW
        #: this object's name in the run's jobs: an executor shared by several objects may hand back results of
        #: another one's jobs (cancelled parts of an object that failed before it), which are not this object's
        self.object_id = object_id
        self.warnings: list[str] = []
        self.upload_id: str | None = None
        self.resumed_bytes = 0
        self.resumed_parts = 0
        #: the sinks' aggregator, built once the set-up decided the final plan (given to :meth:`run`)
        self.agg: Aggregator
        self.flag: CancelFlag = executors.flag
        self.leftovers = Leftovers(store, bucket, key, cancel, cleanup_template=options.cleanup_command,
                                   warn=self._warn)
        self.journal = JournalKeeper(journal_path, source.path, effective_endpoint(store.endpoint_url), bucket, key,
                                     warn=self._warn)
        #: what the set-up decided: resume this upload, report this object as already there, or start afresh
        self._decision: ResumeState | AlreadyComplete | None = None
        #: what the store checks, learned while preparing a resume (the stored parts are checked with it)
        self._resume_traits: StoreTraits | None = None
        self._cancelled_early = False
        self._executor: Executor | None = None
        #: the executor's byte count when this object's sending began (an executor can serve several objects)
        self._sent_base = 0

    # -- helpers -----------------------------------------------------------------------------------------------------
    def _err(self, exc: BaseException, part_number: int | None = None) -> E.MpuploadError:
        return classify(exc, bucket=self.bucket, key=self.key, upload_id=self.upload_id, part_number=part_number,
                        endpoint=self.store.endpoint_url)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)

    def _check_cancel(self) -> None:
        if self.cancel.cancelled:
            raise E.Cancelled(self.cancel.reason or "interrupted")

    def _sent(self) -> int:
        return max(0, self._executor.bytes_sent() - self._sent_base) if self._executor is not None else 0

    def _object_args(self) -> dict[str, Any]:
        return object_args(self.options, self.source.path)

    def _algorithm(self) -> Algorithm | None:
        return checksum_algorithm(self.options)

    def _traits(self, algorithm: Algorithm | None) -> StoreTraits:
        """What the store checks (:mod:`.probe`): asked once per process, store, bucket and encryption; a store
        that says it itself (the brokered one: its user cannot make the probe's throwaway upload) is not asked."""
        known = getattr(self.store, "known_traits", None)
        if known is not None:
            return StoreTraits(*known())
        args = self._object_args()
        encryption = (args.get("ServerSideEncryption"), args.get("SSEKMSKeyId"))
        traits, left = probe_store(
            self.store, bucket=self.bucket, key=self.key, create_args=args, algorithm=algorithm,
            # keyed by the settings (a boto3 store's config: the store itself would keep its client in the cache)
            cache_key=(getattr(self.store, "config", self.store), self.bucket, encryption),
            abort=self.leftovers.abort_quietly,
            cancelled=lambda: self.cancel.cancelled, endpoint=self.store.endpoint_url)
        if left is not None:
            self.leftovers.record(left, "the store probe's throwaway upload: its abort failed")
            self._warn(f"could not abort the store probe's throwaway multipart upload {left}: remove it with: "
                       f"{self.leftovers.command(left)}")
        return traits

    def _started_extra(self, integrity: IntegrityPlan | None, algorithm: Algorithm | None = None,
                       md5: bool = False) -> dict[str, Any]:
        if integrity is not None:
            algorithm, md5 = integrity.algorithm, integrity.content_md5
        extra: dict[str, Any] = {
            "part_size": self.plan.part_size if self.plan.multipart else self.source.size,
            "workers": self.plan.workers,
            "resumed_bytes": self.resumed_bytes,
            "resumed_parts": self.resumed_parts,
            "checksum_algorithm": algorithm.value if algorithm else ("md5" if md5 else None),
            "multipart": self.plan.multipart,
            "store_upload_id": self.upload_id,
            **self.executors.started_fields(),
        }
        if self.executors.max_bandwidth is not None:
            extra["max_bandwidth_bps"] = self.executors.max_bandwidth
        return extra

    def _access(self) -> ObjectAccess:
        return ObjectAccess(self.store, self.bucket, self.key, self.store.endpoint_url)

    @property
    def _read_back_path(self) -> str | None:
        return self.source.path if self.options.verify == "read-back" else None

    def _verify(self, expected: Expected, answer: dict[str, Any] | None, *, parts_checked: str | None = None,
                validates_checksum: bool = False, size_only_reason: str | None = None) -> Verdict | None:
        return verify_object(self._access(), expected, answer=answer, parts_checked=parts_checked,
                             validates_checksum=validates_checksum, read_back_path=self._read_back_path,
                             cancel=self.flag, threads=self.plan.workers, size_only_reason=size_only_reason)

    # -- the set-up ------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """The set-up, done once before anything is reported: the workers start (and build their clients) before
        this process asks the store what can be resumed; the plan may change (the interrupted run's part size).
        A cancel here is reported by :meth:`run` (as "stopped before the start")."""
        if self.phase is not Phase.NEW:
            return
        self.phase = Phase.PREPARED
        try:
            # this process's client first: boto3 imported and its models loaded here are shared by the workers
            # forked next (a worker then builds its client in about 30 ms instead of importing boto3 itself)
            self.store.connect()
            self.executors.start(multipart=self.plan.multipart)
            self._check_cancel()
            if self.options.no_overwrite:
                self._refuse_if_exists()
            self._decision = self._decide()
            self._check_cancel()
        except E.Cancelled:
            self._cancelled_early = True

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

    def _decide(self) -> ResumeState | AlreadyComplete | None:
        """Load the journal; start over (aborting the old upload) or find what can be resumed.

        An object found at the key of an interrupted upload that is gone counts as done only when it is *this file*
        (its checksum or ETag equals what the journal recorded for this file's parts, or its bytes read back equal
        the file's): the previous version of a file often has the same size. Otherwise the run uploads afresh.
        """
        if self.journal.path is None:
            return None
        existing = self.journal.load()
        if not self.options.resume:
            if existing is not None:
                log.warning("starting over: aborting the earlier unfinished upload %s of this file (use --resume "
                            "to continue it instead)", existing.upload_id)
                if not self.leftovers.abort_quietly(existing.upload_id):
                    self._warn(f"could not abort the earlier unfinished upload {existing.upload_id} of this file: "
                               f"remove it with: {self.leftovers.command(existing.upload_id)}")
                with contextlib.suppress(OSError):
                    existing.remove()
            return None
        if existing is not None:
            # a run without reporting keeps the record of the interrupted run for a later one
            self.record_id = self.record_id or existing.record_id
            changed = existing.source.differences(self.journal.fingerprint())
            if changed:
                raise E.SourceChanged(
                    f"{self.source.path} changed since the interrupted upload ({', '.join(changed)} differ): its "
                    f"stored parts cannot be reused. Start over by running the same command without --resume "
                    f"(that aborts the old multipart upload {existing.upload_id})",
                    bucket=self.bucket, key=self.key, upload_id=existing.upload_id)
        try:
            state = find_resume(self.store, self.bucket, self.key, self.source.size, self.plan, existing)
        except E.MpuploadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._err(exc) from exc
        if isinstance(state, AlreadyComplete):
            verdict = self._verify(self._expected_from_journal(state.journal), None)
            if verdict is not None:
                state.verdict = verdict
                return state
            self._warn(f"the interrupted multipart upload {state.journal.upload_id} no longer exists (aborted, or "
                       f"expired), and the object at s3://{self.bucket}/{self.key} cannot be shown to be this file "
                       "(its checksum and ETag do not match the parts recorded for it): uploading from the start")
            state = None
        if state is None:
            log.warning("nothing to resume for s3://%s/%s: uploading from the start", self.bucket, self.key)
            if existing is not None:
                with contextlib.suppress(OSError):
                    existing.remove()
            return None
        self.plan = state.plan
        self.upload_id = state.upload_id  # from here on a stop keeps it (it is the upload being resumed)
        traits = None
        if self.options.checksum is not ChecksumMode.NONE:
            traits = self._traits(state.algorithm)
        self._resume_traits = traits
        self._check_cancel()
        # the store's ETags are MD5s (the probe), or the journal says its parts' MD5s were compared with them
        etag_is_md5 = bool(traits and traits.etag_is_md5) or bool(existing is not None and existing.md5
                                                                   and traits is None)
        verify_parts(state, self.source.path, trust_journal=existing is not None, etag_is_md5=etag_is_md5,
                     threads=self.plan.workers, cancel=self.flag)
        return state

    def _expected_from_journal(self, journal: Any) -> Expected:
        complete = len(journal.parts) == journal.parts_total
        ordered = [journal.parts[n] for n in sorted(journal.parts)] if complete else []
        algorithm = algorithm_or_none(journal.checksum_algorithm)
        checksums = tuple(p.checksum or "" for p in ordered) if ordered and all(p.checksum for p in ordered) else None
        md5s = tuple(p.md5 or "" for p in ordered) if ordered and all(p.md5 for p in ordered) else None
        return Expected(self.source.size, journal.part_size, multipart=True, algorithm=algorithm,
                        part_checksums=checksums if algorithm is not None else None, part_md5s=md5s)

    # -- the run ---------------------------------------------------------------------------------------------------
    def run(self, aggregator: Aggregator) -> UploadResult:
        """Send, complete and verify, reporting through ``aggregator`` (built from the final plan)."""
        self.agg = aggregator
        self.prepare()
        if self._cancelled_early:
            self.phase = Phase.STOPPED
            raise self._stopped_before_start() from None
        decision = self._decision
        if isinstance(decision, AlreadyComplete):
            return self._already_complete(decision)
        if decision is not None or self.plan.multipart:
            return self._multipart(decision)
        self._check_bucket()
        return self._single()

    def _stopped_before_start(self) -> E.Cancelled:
        """A cancel before any part went: nothing was created, or the upload being resumed is kept as it was."""
        reason = self.cancel.reason or "interrupted"
        lo = self.leftovers
        if self.upload_id is not None and not self.options.keeps_on_interrupt:  # --resume --abort-on-interrupt
            aborted = lo.abort(self.upload_id)
            if aborted:
                self.journal.remove_file()
            extra: dict[str, Any] = {"aborted": aborted, "kept": False, "reason": reason}
            if not aborted:
                extra.update(store_upload_id=self.upload_id, left_behind=lo.as_list())
            self.agg.finish(Event.STOPPED, Status.STOPPED, extra, sent_bytes=0, parts_done=0)
            outcome = "the multipart upload was aborted" if aborted else (
                f"the multipart upload {self.upload_id} could NOT be aborted")
            return E.Cancelled(f"{reason}; {outcome}{lo.text()}", upload_id=self.upload_id)
        extra = {"aborted": False, "reason": reason, "kept": self.upload_id is not None}
        message = f"{reason}; nothing was sent to the store"
        if self.upload_id is not None:  # stopped while checking the parts of the upload being resumed
            extra["store_upload_id"] = self.upload_id
            if self.options.resume_command:
                extra["resume_command"] = self.options.resume_command
                message = (f"{reason}; the interrupted multipart upload {self.upload_id} is kept as it was: "
                           f"continue it with {self.options.resume_command}")
        if lo.left:
            extra["left_behind"] = lo.as_list()
        self.agg.finish(Event.STOPPED, Status.STOPPED, extra, sent_bytes=0, parts_done=0)
        return E.Cancelled(message + lo.text(), upload_id=self.upload_id)

    def _already_complete(self, done: AlreadyComplete) -> UploadResult:
        """A crash during CompleteMultipartUpload: the object is there, and it is this file. Report done."""
        journal = done.journal
        assert done.verdict is not None
        self.upload_id = journal.upload_id
        self.resumed_bytes, self.resumed_parts = self.source.size, journal.parts_total
        self.agg.resumed_bytes = self.source.size
        self.agg.started(self._started_extra(None, algorithm_or_none(journal.checksum_algorithm), journal.md5))
        with contextlib.suppress(OSError):
            journal.remove()
        self.phase = Phase.COMPLETED
        return self._completed(done.verdict, f"s3://{self.bucket}/{self.key}", parts=journal.parts_total)

    # -- multipart ---------------------------------------------------------------------------------------------------
    def _multipart(self, resume: ResumeState | None) -> UploadResult:
        done: dict[int, PartResult] = {}
        try:
            integrity = self._resume(resume, done) if resume is not None else self._create()
            self.journal.start(str(self.upload_id), self.plan, integrity.algorithm, integrity.content_md5, done,
                               self.record_id)
            self.agg.started(self._started_extra(integrity))
            assert self.upload_id is not None
            target = PartTarget(self.source.path, self.bucket, self.key, self.upload_id, integrity.algorithm,
                                integrity.content_md5, integrity.etag_is_md5, object_id=self.object_id)
            self._send_parts(target, done)
            self.source.check_unchanged()
            self._check_cancel()
            self.agg.set_status(Status.FINALIZING)
            self.agg.tick(self._sent(), len(done))
            self.journal.save()  # every part is recorded before Complete: a crash now can still be verified
            result = self._complete(done, integrity)
            self.journal.end(keep=False)
            return result
        except BaseException as exc:
            self.flag.set()
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
                                                                object_args=self._object_args(),
                                                                size=self.source.size, part_size=self.plan.part_size)
        except Exception as exc:  # noqa: BLE001
            raise self._err(exc) from exc
        self.phase = Phase.CREATED
        self.agg.upload_id = self.agg.upload_id or self.upload_id
        self.leftovers.created(self.upload_id)
        self._check_cancel()
        traits = None if self.options.checksum is ChecksumMode.NONE else self._traits(algorithm)
        self._check_cancel()
        return integrity_plan(self.options.checksum, algorithm, traits)

    def _resume(self, resume: ResumeState, done: dict[int, PartResult]) -> IntegrityPlan:
        self.upload_id = resume.upload_id
        self.phase = Phase.CREATED
        self.agg.upload_id = self.agg.upload_id or self.upload_id
        self.leftovers.created(self.upload_id)
        integrity = integrity_plan(self.options.checksum, resume.algorithm, self._resume_traits)
        if resume.journal is not None and self._resume_traits is None:
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

    def _send_parts(self, target: PartTarget, done: dict[int, PartResult]) -> None:
        plan = self.plan
        pending = [p for p in plan.parts() if p.number not in done]
        if not pending:
            return
        self._check_cancel()
        self.phase = Phase.SENDING
        executor = self._executor = self.executors.for_parts()
        self._sent_base = executor.bytes_sent()
        # an executor whose jobs cost gets the parts a job per free slot, several to a job while many are left
        # (batch_size); so does a store that signs each part's URL (brokered), up to the parts it signs at once;
        # the others get them all now, one to a job
        window = self._sign_window()
        batching = bool(getattr(executor, "batches_parts", False)) or window > 1
        most = window if window > 1 else MAX_PARTS_PER_JOB
        queue = collections.deque(pending)
        in_flight = jobs = 0

        def feed() -> None:
            nonlocal in_flight, jobs
            while queue and (not batching or in_flight < max(1, executor.workers)):
                k = batch_size(len(queue), executor.workers, most) if batching else 1
                parts = tuple(PartJob(target, queue.popleft()) for _ in range(min(k, len(queue))))
                executor.submit(parts[0] if len(parts) == 1 else BatchJob(parts))
                in_flight += 1
                jobs += 1

        feed()
        deaths = 0
        max_deaths = max(3, 2 * plan.workers)
        try:
            next_tick = time.monotonic() + self.agg.tick_s
            while len(done) < plan.parts_total:
                events = executor.events(max(0.0, next_tick - time.monotonic()), wake=[self.cancel.fileno()])
                if self.cancel.cancelled:
                    raise E.Cancelled(self.cancel.reason or "interrupted")
                for event in events:
                    if isinstance(event, WorkerBroken):  # the worker could not start
                        event.raise_error(self.upload_id)
                    elif isinstance(event, WorkerLost):
                        deaths += 1
                        if isinstance(event.job, BatchJob) and self._mine(event.job):
                            left = tuple(job for job in event.job.jobs if job.number not in done)
                            if left:  # its parts not reported done go again, first (still one job in flight)
                                executor.submit(left[0] if len(left) == 1 else BatchJob(left), first=True)
                            else:
                                in_flight -= 1
                        elif self._mine(event.job):
                            assert event.job is not None
                            executor.submit(event.job, first=True)
                        log.warning("%s", event.describe())
                        if deaths > max_deaths:
                            raise E.WorkerCrashed(
                                f"{event.too_many(deaths)}, then run the command again",
                                bucket=self.bucket, key=self.key, upload_id=self.upload_id)
                    elif isinstance(event, PartDone):  # a part of a batch still running: journaled at once
                        if self._mine(event.job) and event.result.ok:
                            self._part_done(event.result, done)
                    elif self._mine(event.job):
                        in_flight -= 1
                        if isinstance(event.result, BatchResult):
                            for result in event.result.results:
                                if not (result.ok and result.number in done):  # (said already by a PartDone)
                                    self._part_done(result, done)
                        else:
                            assert isinstance(event.result, PartResult)
                            self._part_done(event.result, done)
                feed()
                now = time.monotonic()
                if now >= next_tick:
                    self.agg.tick(self._sent(), len(done))
                    next_tick = now + self.agg.tick_s
        finally:
            if len(done) < plan.parts_total:
                executor.cancel()
        if batching:
            log.debug("%d parts went in %d jobs", len(pending), jobs)

    def _sign_window(self) -> int:
        """How many parts a worker hashes and has signed at once: a store that signs each part's URL for its body
        (brokered) says; 1 for the others."""
        window = getattr(self.store, "sign_window", None)
        return max(1, int(window(self.plan.part_size))) if window is not None else 1

    def _mine(self, job: object) -> bool:
        if isinstance(job, BatchJob):
            return bool(job.jobs) and job.of_parts and job.jobs[0].target.object_id == self.object_id
        return isinstance(job, PartJob) and job.target.object_id == self.object_id

    def _part_done(self, result: PartResult, done: dict[int, PartResult]) -> None:
        if result.ok:
            done[result.number] = result
            self.journal.part(result)
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

    def _complete(self, done: dict[int, PartResult], integrity: IntegrityPlan) -> UploadResult:
        algorithm = integrity.algorithm
        parts = []
        for number in range(1, self.plan.parts_total + 1):
            result = done[number]
            checksum = Checksum(algorithm, result.checksum) if algorithm is not None and result.checksum is not None \
                else None
            parts.append(CompletedPart(number, str(result.etag), checksum))
        assert self.upload_id is not None
        expected = self._expected(done, integrity)
        self.cancel.busy(self, COMPLETING)
        if self.cancel.cancelled:
            self.cancel.busy(self, None)
            raise E.Cancelled(self.cancel.reason or "interrupted")
        self.phase = Phase.COMPLETING
        self.leftovers.completing(self.upload_id)
        try:
            answer = self.store.complete_multipart_upload(self.bucket, self.key, self.upload_id, parts,
                                                          if_none_match=self.options.no_overwrite)
        except Exception as exc:  # noqa: BLE001
            recovered = self._complete_answer_lost(exc, expected)
            if recovered is None:
                raise self._err(exc) from exc
            return recovered
        finally:
            self.cancel.busy(self, None)
        self.phase = Phase.COMPLETED
        self.leftovers.settled()
        if self.cancel.cancelled:
            self._warn("Ctrl+C came while the store completed the object: too late to stop it; it is complete")
        verdict = self._verify(expected, answer, parts_checked=integrity.parts_checked,
                               validates_checksum=integrity.validates_checksum, size_only_reason=integrity.warning)
        assert verdict is not None
        location = str(answer.get("Location") or f"s3://{self.bucket}/{self.key}")
        return self._completed(verdict, location, parts=self.plan.parts_total)

    def _complete_answer_lost(self, exc: Exception, expected: Expected) -> UploadResult | None:
        """CompleteMultipartUpload failed. If the upload is gone, either this Complete went through (its answer
        was lost: the object is there and is this file) or someone aborted it (:class:`UploadGone`). ``None``:
        the upload is still there, an ordinary failure."""
        if not (is_gone(exc) or http_status(exc) in (404, 500)):
            return None
        assert self.upload_id is not None
        if not self.store.upload_gone(self.bucket, self.key, self.upload_id):
            return None  # still there (or the store cannot tell): an ordinary failure
        verdict = self._verify(expected, None)
        if verdict is None:
            raise gone_error(bucket=self.bucket, key=self.key, upload_id=self.upload_id) from exc
        self.phase = Phase.COMPLETED
        log.info("CompleteMultipartUpload's answer was lost, but the object is there and is this file")
        return self._completed(verdict, f"s3://{self.bucket}/{self.key}", parts=self.plan.parts_total)

    # -- single PutObject ------------------------------------------------------------------------------------------
    def _check_bucket(self) -> None:
        check_bucket(self.store, self.bucket, self.key)

    def _single(self) -> UploadResult:
        """The body carries its checksum and ``Content-MD5``. The answer's ETag is compared with the MD5 when it can
        be one: not under SSE-KMS or SSE-C (the answer says so), and when an unexplained ETag comes back the store
        is asked once (:mod:`.probe`) whether its ETags are MD5s at all. Only then is a different ETag a damaged
        body, sent again. Once the PUT succeeded a Ctrl+C no longer stops it: the object is verified and reported.
        """
        algorithm = self._algorithm()
        md5 = self.options.checksum is not ChecksumMode.NONE
        started = False
        traits: StoreTraits | None = None
        try:
            self._check_cancel()
            result: PartResult | None = None
            for _ in range(2):  # a second PUT only when the probe shows the first ETag was a damaged body's
                result = self._put(algorithm, md5, traits, started)
                started = True
                answer = result.answer or {}
                etag = str(answer.get("ETag", "")).strip('"').lower()
                if not md5 or etag == result.md5 or etag_is_md5_answer(answer) is False or traits is not None:
                    break
                traits = self._traits(algorithm)
                if not traits.etag_is_md5:
                    break
                log.warning("the store's ETag %s is not the MD5 %s of the file: sending it again", etag, result.md5)
            assert result is not None
            self.phase = Phase.COMPLETED
            self.agg.set_status(Status.FINALIZING)
            self.agg.tick(self.source.size, 1)
            return self._verify_single(result, algorithm, traits)
        except E.Cancelled:
            self.phase = Phase.STOPPED
            self.agg.finish(Event.STOPPED, Status.STOPPED,
                            {"aborted": False, "reason": self.cancel.reason, "left_behind": self.leftovers.as_list()},
                            sent_bytes=self._sent())
            raise E.Cancelled(f"{self.cancel.reason or 'interrupted'}; the object was not written"
                              f"{self.leftovers.text()}") from None
        except E.MpuploadError as exc:
            self.phase = Phase.FAILED
            extra: dict[str, Any] = {"error": str(exc), "error_type": type(exc).__name__}
            if self.leftovers.left:
                extra["left_behind"] = self.leftovers.as_list()
            self.agg.finish(Event.FAILED, Status.FAILED, extra, sent_bytes=self._sent())
            raise

    def _put(self, algorithm: Algorithm | None, md5: bool, traits: StoreTraits | None, started: bool) -> PartResult:
        """One PutObject (with the part's retries) run by the executor; this thread ticks and watches for a cancel.

        ``started`` waits for the first byte on the wire: botocore sends ``Expect: 100-continue``, so the store
        has accepted the request (credentials, bucket, permissions) before the body moves. A PUT refused outright
        then prints just the error line, as a refused CreateMultipartUpload does.
        """
        executor = self._executor = self.executors.for_put()
        target = PartTarget(self.source.path, self.bucket, self.key, None, algorithm, md5,
                            etag_is_md5=bool(md5 and traits is not None and traits.etag_is_md5),
                            object_args=tuple(self._object_args().items()), if_none_match=self.options.no_overwrite,
                            object_id=self.object_id)
        self.phase = Phase.SENDING
        self._sent_base = executor.bytes_sent()  # a PUT sent again counts from zero again
        executor.submit(PartJob(target, Part(1, 0, self.source.size)))
        result: PartResult | None = None
        next_tick = time.monotonic() + self.agg.tick_s
        while result is None:
            for event in executor.events(max(0.0, next_tick - time.monotonic()), wake=[self.cancel.fileno()]):
                if isinstance(event, WorkerBroken):
                    event.raise_error()
                if isinstance(event, JobDone) and self._mine(event.job) and isinstance(event.result, PartResult):
                    result = event.result
            if result is None and self.cancel.cancelled:
                executor.cancel()
                deadline = time.monotonic() + PUT_CANCEL_WAIT_S
                while result is None and time.monotonic() < deadline:
                    for event in executor.events(0.1):
                        if isinstance(event, JobDone) and self._mine(event.job) \
                                and isinstance(event.result, PartResult):
                            result = event.result
                if result is None or not result.ok:
                    raise E.Cancelled(self.cancel.reason or "interrupted")
                break  # the object is there: too late to stop; it is verified and reported
            if not started and self._sent() > 0:
                self.agg.started(self._started_extra(None, algorithm, md5))
                started = True
            if started and time.monotonic() >= next_tick:
                self.agg.tick(self._sent(), 0)
                next_tick = time.monotonic() + self.agg.tick_s
        if not result.ok:
            if result.cancelled:
                raise E.Cancelled(self.cancel.reason or "interrupted")
            if result.traceback:
                log.debug("the PutObject failed:\n%s", result.traceback)
            result.raise_error(part=False)
        if not started:
            self.agg.started(self._started_extra(None, algorithm, md5))
        return result

    def _verify_single(self, result: PartResult, algorithm: Algorithm | None,
                       traits: StoreTraits | None) -> UploadResult:
        answer = dict(result.answer or {})
        etag = str(answer.get("ETag", "")).strip('"').lower()
        md5 = result.md5
        reason: str | None = None
        if md5 is not None and etag == md5:
            parts_checked: str | None = "md5"  # the store's own MD5 of what it got is the file's
        elif self.options.checksum is ChecksumMode.NONE:
            parts_checked = None
        else:
            traits = traits or self._traits(algorithm)
            integrity = integrity_plan(self.options.checksum, algorithm, traits)
            parts_checked, reason = integrity.parts_checked, integrity.warning
        expected = Expected(
            self.source.size, max(1, self.source.size), multipart=False, algorithm=algorithm,
            part_checksums=(result.checksum,) if result.checksum is not None else None,
            part_md5s=(md5,) if md5 is not None and (traits is None or traits.etag_is_md5 is not False) else None)
        verdict = self._verify(expected, answer, parts_checked=parts_checked,
                               validates_checksum=bool(traits and traits.validates_checksum), size_only_reason=reason)
        assert verdict is not None
        return self._completed(verdict, f"s3://{self.bucket}/{self.key}", parts=1)

    # -- the ways out ------------------------------------------------------------------------------------------------
    def _completed(self, verdict: Verdict, location: str, parts: int) -> UploadResult:
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
        if self.leftovers.left:
            extra["left_behind"] = self.leftovers.as_list()
        snap = self.agg.finish(Event.COMPLETED, Status.COMPLETED, extra, sent_bytes=self.source.size,
                               parts_done=parts)
        self.phase = Phase.VERIFIED
        return UploadResult(
            bucket=self.bucket, key=self.key, size=self.source.size, etag=verdict.etag, checksum=verdict.checksum,
            verified=verdict.verified, location=location, upload_id=self.upload_id, parts_total=parts,
            elapsed_seconds=snap.elapsed_seconds, avg_speed_bps=snap.avg_speed_bps, warnings=tuple(self.warnings),
            resumed_bytes=self.resumed_bytes, resumed_parts=self.resumed_parts,
        )

    def _stopped(self, done: dict[int, PartResult]) -> E.Cancelled:
        """A cancel once the upload exists: abort it (or keep it) and say exactly what is left."""
        reason = self.cancel.reason or "interrupted"
        lo = self.leftovers
        completed = self.phase in (Phase.COMPLETED, Phase.VERIFIED)
        self.phase = Phase.STOPPED
        if completed:  # Ctrl+C during the read-back of a completed object: nothing to abort
            self.agg.finish(Event.STOPPED, Status.STOPPED,
                            {"aborted": False, "kept": False, "reason": reason, "object_completed": True},
                            sent_bytes=self._sent(), parts_done=len(done))
            return E.Cancelled(f"{reason}; s3://{self.bucket}/{self.key} was completed, but the read-back "
                               "verification was stopped: it is not verified", upload_id=self.upload_id)
        keep = self.options.keeps_on_interrupt and self.upload_id is not None
        aborted = False if keep or self.upload_id is None else lo.abort(self.upload_id)
        if self.upload_id is None:
            aborted = True
        # the journal goes only with the upload: one whose abort failed can still be resumed or cleaned up
        self.journal.end(keep=not aborted)
        extra: dict[str, Any] = {"aborted": aborted and self.upload_id is not None, "kept": keep, "reason": reason}
        if not aborted:
            extra["store_upload_id"] = self.upload_id
            if self.options.resume_command:
                extra["resume_command"] = self.options.resume_command
        if lo.left:
            extra["left_behind"] = lo.as_list()
        self.agg.finish(Event.STOPPED, Status.STOPPED, extra, sent_bytes=self._sent(), parts_done=len(done))
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
        return E.Cancelled(message + lo.text(), upload_id=self.upload_id)

    def _failed(self, err: E.MpuploadError, done: dict[int, PartResult]) -> E.MpuploadError:
        """A failure: abort what cannot succeed later, keep what can, and say exactly what is left."""
        lo = self.leftovers
        completed = self.phase in (Phase.COMPLETED, Phase.VERIFIED)
        self.phase = Phase.FAILED
        if not err.upload_exists or completed:
            # gone (aborted by someone else, expired), or completed: nothing to abort, keep or resume
            if self.upload_id is not None:
                lo.forget(self.upload_id)
            lo.settled()
            self.journal.end(keep=False)
            kept = False
        elif err.abort_upload:
            # an abort that failed leaves it (and its journal) for cleanup or --resume
            kept = self.upload_id is not None and not lo.abort(self.upload_id)
            self.journal.end(keep=kept)
        else:
            kept = self.upload_id is not None
            lo.settled()
            self.journal.end(keep=kept)
        extra: dict[str, Any] = {"error": str(err), "error_type": type(err).__name__}
        resumable = kept and not err.abort_upload
        if kept:
            extra["store_upload_id"] = self.upload_id
            if resumable and self.options.resume_command:
                extra["resume_command"] = self.options.resume_command
        if lo.left:
            extra["left_behind"] = lo.as_list()
        self.agg.finish(Event.FAILED, Status.FAILED, extra, sent_bytes=self._sent(), parts_done=len(done))
        if resumable and self.options.resume_command:
            err.resume_command = self.options.resume_command
        elif lo.left:
            err.left_behind = lo.text()
        return err
