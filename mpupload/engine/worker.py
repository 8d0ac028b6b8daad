"""The worker process: takes one part at a time from its pipe, uploads it, answers with a result.

Only plain data crosses the pipe (:class:`PartJob` in, :class:`PartResult` out; ``None`` is the
sentinel that ends the worker). Every request goes through the :class:`~mpupload.storage.port.Store` of the
:class:`WorkerConfig`; a :class:`~mpupload.storage.boto3_store.Boto3Store` builds its boto3 client here, inside the
child, from its picklable config, as soon as the worker starts.

Retries: botocore retries throttling and connection errors itself (rewinding the body, which takes back
the bytes it counted), except on the lean PutObject of small whole objects (:mod:`mpupload.storage.lean`),
which has no retries of its own; on top of that a part is retried here with exponential backoff and jitter up
to ``WorkerConfig.part_attempts`` times: every retryable failure of the lean path, and what botocore does not
retry (a store that rejected the checksum of bytes corrupted in transit, an ETag that does not match the local
MD5). Only what a retry can fix is
retried (:func:`~mpupload.storage.errors.is_retryable`: by error code and HTTP status). An upload that is gone
fails the part at once with :class:`~mpupload.errors.UploadGone`: said by the store (NoSuchUpload), or found out
with one ListParts when a store answers a part of an aborted upload with a bare 5xx (moto does).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from .. import errors as E
from ..checksums import Algorithm, Hasher, b64, boto_checksum_param, new_hasher
from ..plan import Part
from ..storage import classify, is_retryable
from ..storage.errors import gone_error, http_status, is_gone
from ..storage.port import Checksum, Store
from .counter import ByteCounter, CancelFlag
from .probe import etag_is_md5_answer
from .reader import PartReader, ThrottledPartReader, digest_range
from .throttle import Meter

__all__ = ["WorkerConfig", "PartTarget", "PartJob", "PartResult", "BatchJob", "BatchResult", "PartSent", "Job",
           "JobResult",
           "worker_main", "run_job", "run_batch", "upload_one_part", "part_digests", "sign_ahead", "sign_puts_ahead",
           "Digests",
           "die_with_parent", "OpenFiles",
           "CHECKSUM_METADATA_PREFIX"]

#: user metadata a directory run writes with a whole-object PutObject: ``mpupload-<algorithm>`` = the file's checksum
#: (``--skip-existing`` compares it with the local file's)
CHECKSUM_METADATA_PREFIX = "mpupload-"

_PR_SET_PDEATHSIG = 1
PARENT_POLL_S = 0.25


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker of an executor shares, whatever object it is sending: the store and the retry policy."""

    #: the store every part goes to: a Boto3Store crosses to a worker process as its config and builds its client
    #: there; an in-process store (MemoryStore) only works with threads (:class:`~.executor.ThreadExecutor`)
    store: Store
    part_attempts: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    #: PutObjects a worker process sends at once for a :class:`BatchJob` (its threads share its client)
    put_threads: int = 1
    #: the run's bandwidth cap (``--max-bandwidth``), shared by every sender; ``None``: no cap, no check
    throttle: Meter | None = None


@dataclass(frozen=True)
class PartTarget:
    """The object a job belongs to: a job names it, so one long-lived executor serves many objects."""

    path: str
    bucket: str
    key: str
    #: the multipart upload the part goes to; ``None``: the whole file goes up with one PutObject
    upload_id: str | None
    #: the checksum header sent with each part (None: no checksum header)
    algorithm: Algorithm | None
    #: compute the part's MD5 too and send it as Content-MD5
    md5: bool
    #: the store's part ETags are MD5s of the bytes it got: compare them with the local MD5 (needs ``md5``)
    etag_is_md5: bool = True
    #: PutObject only: the object's arguments (ContentType, Metadata, encryption ...)
    object_args: tuple[tuple[str, Any], ...] = ()
    #: PutObject only: write only if no object is at the key (``--no-overwrite``)
    if_none_match: bool = False
    #: which of the run's objects this is (the scheduler's own name for it)
    object_id: int = 0
    #: PutObject only: also store the file's checksum as user metadata (``mpupload-<algorithm>``)
    checksum_metadata: bool = False
    #: PutObject only: the file's (size, mtime_ns, inode) when it was planned; a file that differs after the PUT
    #: fails the job with SourceChanged (it changed while it was read). An inode of -1 is not compared: a cluster
    #: worker reads the file on another host, where a shared filesystem may number inodes differently
    fingerprint: tuple[int, int, int] | None = None
    #: PutObject only: the store's group the object is written in (a brokered directory run's record id: the API
    #: server signs the object's URL in it); ``None`` for a store that has none
    group: str | None = None


@dataclass(frozen=True)
class PartJob:
    """One part of one object (plain frozen data: it crosses the pipe)."""

    target: PartTarget
    part: Part

    @property
    def number(self) -> int:
        return self.part.number

    @property
    def offset(self) -> int:
        return self.part.offset

    @property
    def length(self) -> int:
        return self.part.length


@dataclass(frozen=True)
class PartResult:
    number: int
    ok: bool
    size: int = 0
    etag: str | None = None
    #: base64 checksum of the part (``PartTarget.algorithm``), as sent and confirmed
    checksum: str | None = None
    #: hex MD5 of the part when ``PartTarget.md5``
    md5: str | None = None
    #: whether the store echoed the checksum it was sent
    checksum_echoed: bool = False
    attempts: int = 1
    cancelled: bool = False
    #: on failure: the mpupload error class name and its message
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None
    #: the object the part belongs to (``PartTarget.object_id``)
    object_id: int = 0
    #: a PutObject's whole answer (headers the verification reads); ``None`` for a part
    answer: dict[str, Any] | None = None

    def raise_error(self, upload_id: str | None = None, *, part: bool = True) -> None:
        """Raise the error this result names (``part=False``: a whole object's PutObject, not a part)."""
        cls = getattr(E, self.error_type or "UploadFailed", E.UploadFailed)
        if not (isinstance(cls, type) and issubclass(cls, E.MpuploadError)):
            cls = E.UploadFailed
        raise cls(self.error or ("part upload failed" if part else "the upload failed"),
                  part_number=self.number if part else None, upload_id=upload_id)


@dataclass(frozen=True)
class BatchJob:
    """Several whole small objects (PutObject jobs), sent back to back by one worker, a few at a time on its
    connections: a directory run's small files. Or several parts of one multipart upload, sent one after the
    other on one connection (:attr:`of_parts`): a cluster's task costs its coordinator a few milliseconds whatever
    it carries. Plain frozen data: it crosses the pipe."""

    jobs: tuple[PartJob, ...]
    #: the scheduler's name for the batch
    batch_id: int = 0

    @property
    def length(self) -> int:
        return sum(job.length for job in self.jobs)

    @property
    def of_parts(self) -> bool:
        """Parts of a multipart upload (sent one at a time), not whole objects."""
        return any(job.target.upload_id is not None for job in self.jobs)


@dataclass(frozen=True)
class BatchResult:
    """What happened to each object of a :class:`BatchJob`, in the batch's order. The batch itself always
    "succeeds" (``ok``): its files fail one by one."""

    batch_id: int
    results: tuple[PartResult, ...]
    #: never 0 (a worker answers 0 only when it could not start)
    number: int = -1
    ok: bool = True

    @property
    def size(self) -> int:
        """The bytes of the objects that were written (what the worker's counter slot keeps)."""
        return sum(r.size for r in self.results if r.ok)


@dataclass(frozen=True)
class PartSent:
    """A part of a batch of parts that is on the store, said by the worker before its batch ends (so that the
    coordinator journals it at once: a run killed mid-batch resumes from it). The batch's own result follows,
    with every part."""

    result: PartResult


Job = PartJob | BatchJob
JobResult = PartResult | BatchResult


class _LockedCounter:
    """The worker's counter slot shared by the threads of a batch: each adds under one lock."""

    def __init__(self, counter: ByteCounter) -> None:
        self._counter = counter
        self._lock = threading.Lock()

    def add(self, slot: int, n: int) -> None:
        with self._lock:
            self._counter.add(slot, n)


def die_with_parent(coordinator_pid: int) -> None:
    """Exit when the coordinator dies, even by SIGKILL.

    The kernel's PDEATHSIG covers the direct parent (the coordinator under fork and spawn, the forkserver
    process under forkserver, which itself exits when the coordinator dies); a watchdog thread covers the
    rest: a changed parent (re-parenting) or a coordinator that no longer exists.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    original_parent = os.getppid()

    def coordinator_gone() -> bool:
        if os.getppid() != original_parent:
            return True
        try:
            os.kill(coordinator_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False

    def watch() -> None:
        while not coordinator_gone():
            time.sleep(PARENT_POLL_S)
        os._exit(70)

    if coordinator_gone():
        os._exit(70)
    threading.Thread(target=watch, name="coordinator-watchdog", daemon=True).start()


class OpenFiles:
    """The worker's open source files, by path: a few stay open, so a job for the same file reads at once."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._fds: dict[str, int] = {}

    def get(self, path: str) -> int:
        fd = self._fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            while len(self._fds) >= self.keep:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[path] = fd  # (re)inserted last: the least recently used goes first
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def worker_main(
    slot: int,
    config: WorkerConfig,
    conn: Connection,
    counter: ByteCounter,
    cancel: CancelFlag,
    parent_pid: int,
) -> None:
    """Entry point of a worker process: the client is built at once, before the first job arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(parent_pid)
    try:
        store = config.store
        store.connect()
    except BaseException as exc:  # noqa: BLE001 - reported, not raised
        err = classify(exc, endpoint=config.store.endpoint_url)
        with contextlib.suppress(Exception):
            conn.send(PartResult(0, False, error_type=type(err).__name__, error=str(err)))
        return
    files = OpenFiles()
    threads: ThreadPoolExecutor | None = None
    try:
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):
                return
            if job is None:
                return
            if isinstance(job, BatchJob) and threads is None and config.put_threads > 1:
                threads = ThreadPoolExecutor(config.put_threads, thread_name_prefix="mpupload-put")
            conn.send(run_job(store, files, config, job, counter, slot, cancel, threads=threads,
                              on_part=lambda result: conn.send(PartSent(result))))
    finally:
        files.close()
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)


def run_job(store: Store, files: OpenFiles, config: WorkerConfig, job: Job, counter: ByteCounter, slot: int,
            cancel: CancelFlag, *, threads: ThreadPoolExecutor | None = None,
            on_part: Callable[[PartResult], None] | None = None) -> JobResult:
    """Run one job: a part (or one whole object) through ``files``, or a batch of whole objects or of parts
    (``on_part`` is told of each part of a batch of parts that is sent, before the batch ends)."""
    if isinstance(job, BatchJob):
        return run_batch(store, config, job, counter, slot, cancel, threads=None if job.of_parts else threads,
                         on_part=on_part if job.of_parts else None)
    return _run_part(store, files, config, job, counter, slot, cancel)


def run_batch(store: Store, config: WorkerConfig, batch: BatchJob, counter: ByteCounter, slot: int,
              cancel: CancelFlag, *, threads: ThreadPoolExecutor | None = None,
              on_part: Callable[[PartResult], None] | None = None) -> BatchResult:
    """Send every object of the batch with one PutObject each, ``threads`` at a time (in order without them); or
    the parts of a batch of parts one after the other (their URLs signed ahead, in one request, by a store that
    signs them: :func:`sign_ahead`), each part ``on_part`` as soon as it is sent.

    Each file is opened for its own PUT and closed after it: a batch of small files reads each once. A file that
    cannot be read, changes while it is read, or is refused fails that file only; a cancel stops what has not
    started (those files come back cancelled)."""
    shared = _LockedCounter(counter) if threads is not None else counter
    known = sign_ahead(store, batch.jobs, cancel) if batch.of_parts else sign_puts_ahead(store, batch.jobs, cancel)

    def one(job: PartJob) -> PartResult:
        if cancel.is_set():
            return PartResult(job.number, False, cancelled=True, error_type="Cancelled", error="cancelled",
                              object_id=job.target.object_id)
        try:
            fd = os.open(job.target.path, os.O_RDONLY)
        except OSError as exc:
            return _unreadable(job, exc)
        try:
            result = upload_one_part(store, fd, config, job, shared, slot, cancel,  # type: ignore[arg-type]
                                     known=known.get(job.number if batch.of_parts else job.target.object_id))
        finally:
            os.close(fd)
        if on_part is not None and result.ok:
            with contextlib.suppress(Exception):  # a pipe gone: the batch's result says it all (or the worker dies)
                on_part(result)
        return result

    if threads is None:
        results = tuple(one(job) for job in batch.jobs)
    else:
        results = tuple(threads.map(one, batch.jobs))
    return BatchResult(batch.batch_id, results)


def _unreadable(job: PartJob, exc: OSError) -> PartResult:
    err = E.source_error(job.target.path, exc, bucket=job.target.bucket, key=job.target.key,
                         upload_id=job.target.upload_id,
                         part_number=job.number if job.target.upload_id is not None else None)
    return PartResult(job.number, False, error_type=type(err).__name__, error=str(err),
                      object_id=job.target.object_id)


def _run_part(store: Store, files: OpenFiles, config: WorkerConfig, job: PartJob, counter: ByteCounter, slot: int,
              cancel: CancelFlag) -> PartResult:
    """Open the job's file (or reuse it) and send the part; a file that cannot be read fails this job."""
    try:
        fd = files.get(job.target.path)
    except OSError as exc:
        return _unreadable(job, exc)
    return upload_one_part(store, fd, config, job, counter, slot, cancel)


def _sleep_unless_cancelled(seconds: float, cancel: CancelFlag) -> None:
    deadline = time.monotonic() + seconds
    while not cancel.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.05, left))


#: a part's digests: its checksum (base64, ``None`` without an algorithm) and its raw MD5 (``None`` unless wanted)
Digests = tuple[str | None, bytes | None]


def part_digests(fd: int, job: PartJob, cancel: CancelFlag) -> Digests:
    """Read the part once and compute what its target wants: the checksum of its algorithm, and its MD5."""
    target = job.target
    algo_hasher = new_hasher(target.algorithm) if target.algorithm is not None else None
    md5_hasher = new_hasher(Algorithm.MD5) if target.md5 else None
    hashers: list[Hasher] = [h for h in (algo_hasher, md5_hasher) if h is not None]
    if hashers:
        digest_range(fd, job.offset, job.length, hashers, cancel=cancel)
    return (b64(algo_hasher.digest()) if algo_hasher is not None else None,
            md5_hasher.digest() if md5_hasher is not None else None)


def sign_ahead(store: Store, jobs: tuple[PartJob, ...], cancel: CancelFlag) -> dict[int, Digests]:
    """For a store that signs each part's URL for its body (brokered: the API server signs), hash a run of parts of
    one multipart upload first and have their URLs signed in one request; the digests by part number (the parts'
    first attempts use them). Nothing when the store does not sign ahead, for a single part, or when anything
    goes wrong: each part then hashes itself, and has its URL signed, as it is sent (and fails with its own
    error)."""
    sign = getattr(store, "sign_ahead", None)
    target = jobs[0].target if jobs else None
    if sign is None or target is None or target.upload_id is None or len(jobs) < 2 \
            or any((job.target.upload_id, job.target.path) != (target.upload_id, target.path) for job in jobs):
        return {}
    digests: dict[int, Digests] = {}
    try:
        fd = os.open(target.path, os.O_RDONLY)
    except OSError:
        return {}
    try:
        for job in jobs:
            digests[job.number] = part_digests(fd, job, cancel)
        sign(target.upload_id, [(job.number, job.length,
                                 Checksum(target.algorithm, digests[job.number][0])  # type: ignore[arg-type]
                                 if target.algorithm is not None and digests[job.number][0] is not None else None,
                                 b64(md5) if (md5 := digests[job.number][1]) is not None else None)
                                for job in jobs])
    except Exception:  # noqa: BLE001 - a cancel, an unreadable file, a refused sign: each part finds out itself
        return {}
    finally:
        os.close(fd)
    return digests


def sign_puts_ahead(store: Store, jobs: tuple[PartJob, ...], cancel: CancelFlag) -> dict[int, Digests]:
    """For a store that signs each object's URL for its body (a brokered directory run), hash a batch's small files
    first and have their PutObject URLs signed in one request; the digests by object id (each file's first
    attempt uses them). Nothing for another store, or when anything goes wrong: each file then hashes itself,
    and has its URL signed, as it is sent (and fails with its own error)."""
    sign = getattr(store, "sign_puts", None)
    group = jobs[0].target.group if jobs else None
    if sign is None or group is None or any(job.target.group != group for job in jobs):
        return {}
    digests: dict[int, Digests] = {}
    objects = []
    try:
        for job in jobs:
            target = job.target
            try:
                fd = os.open(target.path, os.O_RDONLY)
            except OSError:
                continue  # the file's own attempt reports it
            try:
                found = digests[target.object_id] = part_digests(fd, job, cancel)
            finally:
                os.close(fd)
            objects.append((target.key, job.length,
                            Checksum(target.algorithm, found[0]) if target.algorithm is not None
                            and found[0] is not None else None,
                            b64(found[1]) if found[1] is not None else None))
        if objects:
            sign(group, objects)
    except Exception:  # noqa: BLE001 - a cancel, a refused sign: each file finds out itself
        return {}
    return digests


def upload_one_part(
    store: Store,
    fd: int,
    config: WorkerConfig,
    job: PartJob,
    counter: ByteCounter,
    slot: int,
    cancel: CancelFlag,
    *,
    known: Digests | None = None,
) -> PartResult:
    """Checksum the part, upload it with retries; never raises (the result says what happened).

    A part of a multipart upload goes up with UploadPart; a target without an upload id is a whole object
    sent with one PutObject, through the same checks and the same retry policy. ``known``: the part's digests
    computed just before (by :func:`sign_ahead`), used by the first attempt; a retry hashes the part again.
    """
    target = job.target
    put = target.upload_id is None
    attempt = 0
    while True:
        attempt += 1
        reader: PartReader | None = None
        try:
            # the first attempt may use the digests the batch computed ahead (to sign the part's URL with others)
            checksum, raw = known if known is not None and attempt == 1 else part_digests(fd, job, cancel)
            md5_hex = content_md5 = None
            sent: Checksum | None = None
            checksum_param = boto_checksum_param(target.algorithm) if target.algorithm is not None else None
            if checksum is not None and target.algorithm is not None:
                sent = Checksum(target.algorithm, checksum)
            if raw is not None:
                md5_hex = raw.hex()
                content_md5 = b64(raw)
            if config.throttle is None:
                reader = PartReader(fd, job.offset, job.length, counter=counter, slot=slot, cancel=cancel)
            else:
                reader = ThrottledPartReader(fd, job.offset, job.length, throttle=config.throttle, counter=counter,
                                             slot=slot, cancel=cancel)
            if put:
                object_args = dict(target.object_args)
                if target.checksum_metadata and checksum is not None and target.algorithm is not None:
                    object_args["Metadata"] = {**dict(object_args.get("Metadata") or {}),
                                               f"{CHECKSUM_METADATA_PREFIX}{target.algorithm.value}": checksum}
                response = store.put_object(target.bucket, target.key, reader, content_length=job.length,
                                            checksum=sent, content_md5=content_md5,
                                            if_none_match=target.if_none_match, object_args=object_args)
            else:
                assert target.upload_id is not None
                response = store.upload_part(target.bucket, target.key, target.upload_id, job.number, reader,
                                             content_length=job.length, checksum=sent, content_md5=content_md5)
            etag = str(response.get("ETag", "")).strip('"')
            echoed = None
            if checksum_param is not None:
                echoed = response.get(checksum_param)
                if echoed is not None and echoed != checksum:
                    raise E.PartCorrupted(
                        f"part {job.number}: the store computed checksum {echoed}, expected {checksum}"
                    )
            # only when the store is known to give MD5 ETags (and this answer does not say otherwise: SSE-KMS)
            # is a different ETag a damaged body
            if md5_hex is not None and target.etag_is_md5 and etag.lower() != md5_hex \
                    and etag_is_md5_answer(response) is not False:
                raise E.PartCorrupted(
                    f"part {job.number}: the store's ETag {etag} is not the MD5 {md5_hex} of the bytes sent"
                )
            if target.fingerprint is not None:
                _check_unchanged(fd, target)
            # what was counted must be exactly the part, whatever botocore did with the stream
            if reader.counted != job.length:
                counter.add(slot, job.length - reader.counted)
            return PartResult(
                job.number, True, size=job.length, etag=etag, checksum=checksum, md5=md5_hex,
                checksum_echoed=echoed is not None, attempts=attempt, object_id=target.object_id,
                answer=_plain(response) if put else None,
            )
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a result
            if reader is not None:
                reader.rollback()
            if cancel.is_set() or isinstance(exc, E.Cancelled) or isinstance(exc.__context__, E.Cancelled):
                return PartResult(job.number, False, cancelled=True, attempts=attempt, error_type="Cancelled",
                                  error="cancelled", object_id=target.object_id)
            err = classify(exc, bucket=target.bucket, key=target.key, upload_id=target.upload_id,
                           part_number=None if put else job.number, endpoint=store.endpoint_url)
            retryable = is_retryable(exc) and not isinstance(exc, E.SourceChanged)
            if not put and (is_gone(exc) or (http_status(exc) in (404, 500)
                                             and store.upload_gone(target.bucket, target.key, str(target.upload_id)))):
                err = gone_error(bucket=target.bucket, key=target.key, upload_id=target.upload_id,
                                 part_number=job.number)
                retryable = False
            if not retryable or attempt >= config.part_attempts:
                message = str(err)
                if retryable:
                    what = "the upload" if put else f"part {job.number}"
                    message = f"{what} failed {attempt} times; last error: {err}"
                return PartResult(job.number, False, attempts=attempt, error_type=type(err).__name__,
                                  error=message, traceback=traceback.format_exc(), object_id=target.object_id)
            delay = min(config.backoff_max_s, config.backoff_base_s * (2 ** (attempt - 1)))
            _sleep_unless_cancelled(random.uniform(delay / 2, delay), cancel)


def _check_unchanged(fd: int, target: PartTarget) -> None:
    """A whole object's file must be what was planned once it is sent (it may have changed while it was read)."""
    st = os.fstat(fd)
    try:
        now = os.stat(target.path)
    except OSError as exc:
        raise E.SourceChanged(f"{target.path} disappeared while it was uploaded ({exc.strerror or exc})") from None
    assert target.fingerprint is not None
    size, mtime_ns, inode = target.fingerprint
    if (st.st_size, st.st_mtime_ns) != (size, mtime_ns) or (inode >= 0 and st.st_ino != inode) \
            or now.st_ino != st.st_ino:
        raise E.SourceChanged(f"{target.path} changed while it was uploaded: the object at s3://{target.bucket}/"
                              f"{target.key} may hold a mix of versions; upload it again once the file is final")


def _plain(response: Any) -> dict[str, Any]:
    """A PutObject answer as plain data (it crosses the pipe): everything but the streaming body."""
    return {k: v for k, v in dict(response).items() if k != "Body"}
