"""A directory run: many files, one executor, one record — the scheduler over many object uploads.

::

    prepare(): the walk (:mod:`mpupload.tree`) -> a compact plan (arrays, not an object per file) -> what an
               earlier run finished (:mod:`mpupload.dataset_journal`) and, with --skip-existing or --resume, what
               is on the store already -> the store probe (once)
    run():     started -> large files, largest first, one at a time across every worker (an ObjectUpload each:
               multipart, resumable at part level) -> small files in batches (several PutObjects per job, a few
               at a time on each worker's threads) -> completed | failed (some files failed) | stopped

* **One executor for the run.** The worker processes start once; every part and every batch of the run goes to
  them. A large file uses every worker (as a one-file upload does), so "no giant file starts last"; the small
  files follow and fill every worker's threads.
* **A file fails alone.** An unreadable file, a file that changes or vanishes, a refused key: that file is listed
  (``file_failed``, the final ``failed_files``) and the run goes on; ``--fail-fast`` stops at the first.
  Ctrl+C stops everything: the multipart upload in flight is aborted (kept with ``--keep-on-interrupt``),
  what is complete stays, and the journal says what is.
* **Resume.** The run's journal is an append-only record per finished file (flushed to the kernel as each
  result comes back, so a kill -9 loses nothing that was recorded): ``--resume`` skips what it lists with the
  same fingerprint, uploads again what changed (and says so), and checks the files it does not list against the
  store before it sends them (a PUT whose answer was lost with a killed run is not sent twice). A large file
  left half-way resumes at part level through its own journal (:mod:`mpupload.journal`).
* **Memory** holds the plan as arrays and the in-flight batches only; finished files leave nothing behind but
  counts (and the failed ones' lines).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import errors as E
from .. import journal as journal_mod
from ..checksums import Algorithm, Hasher, b64, new_hasher
from ..dataset_journal import DatasetJournal, FinishedFile
from ..journal import JournalLock
from ..options import ChecksumMode, UploadOptions
from ..plan import DEFAULT_PART_SIZE, Part, PlanError, plan_upload
from ..source import Source
from ..source_check import ListingDigest, TreeListing
from ..storage.config import effective_endpoint
from ..storage.errors import error_code
from ..storage.port import Store
from ..tree import Filters, TreeFile, TreeProblem, walk
from ..wire import Event, FileCounts, Snapshot, Status
from .aggregator import Aggregator
from .cancel import CancelToken
from .executor import JobDone, WorkerBroken, WorkerLost
from .executors import Executors
from .object_upload import ObjectUpload, check_bucket, checksum_algorithm, object_args
from .probe import StoreTraits, integrity_plan, probe_store
from .reader import digest_range
from .verify import Expected, ObjectAccess, verify_object
from .worker import CHECKSUM_METADATA_PREFIX, BatchJob, BatchResult, PartJob, PartResult, PartTarget

__all__ = ["DatasetOptions", "DatasetUpload", "DatasetResult", "FailedFile", "PART_SIZE_METADATA"]

log = logging.getLogger("mpupload")

#: user metadata of a directory run's multipart object: the part size it was sent with (--skip-existing)
PART_SIZE_METADATA = "mpupload-part-size"
#: the failed files shown on a terminal (every one of them is in the final JSON event)
IN_FLIGHT_SHOWN = 16
#: how often the run's journal is fsynced (it is written to the kernel at every result)
JOURNAL_SYNC_S = 5.0


@dataclass(frozen=True)
class DatasetOptions:
    filters: Filters | None = None
    follow_symlinks: bool = True
    #: skip a file whose key holds an object of the same size and checksum
    skip_existing: bool = False
    #: stop at the first failed file
    fail_fast: bool = False
    #: PutObjects each worker process sends at once
    put_threads: int = 8
    #: a batch of small files is at most this many files and bytes (a larger file is a batch of one)
    batch_files: int = 32
    batch_bytes: int = 16 * 1024 * 1024
    #: the command that aborts one multipart upload of a key: ``{key}`` and ``{upload_id}`` stand for them
    cleanup_template: str | None = None


@dataclass(frozen=True)
class FailedFile:
    path: str
    key: str
    size: int
    error: str
    error_type: str = "UploadFailed"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "key": self.key, "size": self.size, "error": self.error}


@dataclass
class DatasetResult:
    bucket: str
    prefix: str
    files_total: int
    files_done: int
    files_failed: int
    files_skipped: int
    bytes_total: int
    elapsed_seconds: float
    avg_speed_bps: float
    failed: list[FailedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _Plan:
    """The files of the run as arrays: a relative path and its source's index, size, mtime and inode."""

    def __init__(self, roots: Sequence[str]) -> None:
        self.roots = list(roots)
        self.rels: list[str] = []
        self.root: array[int] = array("H")
        self.size: array[int] = array("q")
        self.mtime: array[int] = array("q")
        self.inode: array[int] = array("q")

    def add(self, root: int, f: TreeFile) -> int:
        self.rels.append(f.rel)
        self.root.append(root)
        self.size.append(f.size)
        self.mtime.append(f.mtime_ns)
        self.inode.append(f.inode)
        return len(self.rels) - 1

    def path(self, i: int) -> str:
        return os.path.join(self.roots[self.root[i]], self.rels[i])

    def __len__(self) -> int:
        return len(self.rels)


class _Bridge:
    """The sink of one large file's ObjectUpload inside a directory run: its bytes feed the run's in-flight
    line, its completion becomes a ``file_completed``."""

    def __init__(self, run: DatasetUpload, index: int) -> None:
        self.run = run
        self.index = index
        self.bytes_done = 0
        self.completed: Snapshot | None = None
        #: the file's snapshots drive the run's ticks: as often as the run's sinks want them
        self.refresh_s = run.agg.tick_s

    def emit(self, snapshot: Snapshot) -> None:
        if snapshot.event is Event.STARTED:
            self.run._resumed_large += int(snapshot.extra.get("resumed_bytes") or 0)
            self.run.agg.resumed_bytes = self.run._skipped_bytes + self.run._resumed_large
        self.bytes_done = snapshot.bytes_done
        if snapshot.event is Event.COMPLETED:
            self.completed = snapshot
        elif snapshot.event is Event.PROGRESS:
            self.run._tick()

    def close(self) -> None:
        pass


class DatasetUpload:
    def __init__(
        self,
        sources: Sequence[str],
        bucket: str,
        prefix: str,
        *,
        store: Store,
        options: UploadOptions,
        dataset: DatasetOptions,
        cancel: CancelToken,
        executors: Executors,
        journal_path: Path | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.sources = [os.path.abspath(s) for s in sources]
        self.bucket = bucket
        self.prefix = prefix
        self.store = store
        self.options = options
        self.dataset = dataset
        self.cancel = cancel
        self.executors = executors
        self.journal_path = journal_path
        self._say = warn
        self.warnings: list[str] = []
        self.failed: list[FailedFile] = []
        self.agg: Aggregator
        self.record_id: str | None = None
        self._roots: list[str] = []
        self.plan: _Plan
        #: indexes into the plan: large files (largest first), small files (walk order), skipped files
        self._large: list[int] = []
        self._small: array[int] = array("q")
        self._skipped: list[tuple[int, str, str | None]] = []  # (index, why, etag)
        self._skipped_bytes = 0
        self._resumed_large = 0
        self.files_total = 0
        self.bytes_total = 0
        self._done = 0
        self._failed_count = 0
        self._journal: DatasetJournal | None = None
        self._traits: StoreTraits | None = None
        self._sent_base = 0
        self._in_flight: list[tuple[str, str, int, Callable[[], int]]] = []
        self._next_tick = 0.0
        self._next_sync = 0.0
        self._prepared = False

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self._say is not None:
            self._say(message)
        else:
            log.warning(message)

    def key_of(self, i: int) -> str:
        return self.prefix + self.plan.rels[i]

    def _counts(self) -> FileCounts:
        return FileCounts(self.files_total, self._done, self._failed_count, len(self._skipped))

    @property
    def threshold(self) -> int:
        """A file larger than this goes up as a multipart upload (as a one-file upload of it would)."""
        return self.options.part_size or DEFAULT_PART_SIZE

    # -- the set-up ------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Walk, plan, read the journal, decide what is skipped; the workers start first (they build their
        clients while this process walks)."""
        if self._prepared:
            return
        self._prepared = True
        self.store.connect()
        self.executors.for_parts()
        check_bucket(self.store, self.bucket, prefix=self.prefix)
        roots: dict[str, int] = {}
        self.plan = _Plan([])
        problems: list[TreeProblem] = []
        listing = ListingDigest()  # what a cluster's workers must see too
        for entry in walk(self.sources, self.dataset.filters, follow_symlinks=self.dataset.follow_symlinks,
                          warn=self._warn):
            if self.cancel.cancelled:
                raise E.Cancelled(self.cancel.reason or "interrupted")
            if isinstance(entry, TreeProblem):
                listing.problem(entry.rel)
                problems.append(entry)
                continue
            listing.add(entry.rel, entry.size, entry.mtime_ns)
            root = entry.path[: len(entry.path) - len(entry.rel)].rstrip(os.sep) or os.sep
            if root not in roots:
                roots[root] = len(self.plan.roots)
                self.plan.roots.append(root)
            key = self.prefix + entry.rel
            if len(key.encode()) > 1024:
                problems.append(TreeProblem(entry.path, entry.rel, f"its key {key[:60]}... is longer than S3's "
                                                                   "limit of 1024 bytes"))
                continue
            self.plan.add(roots[root], entry)
        filters = self.dataset.filters
        self.executors.check_source(TreeListing(tuple(self.sources), tuple(
            (rule.include, rule.pattern) for rule in (filters.rules if filters is not None else ())),
            self.dataset.follow_symlinks), listing.hexdigest())
        self.files_total = len(self.plan) + len(problems)
        self.bytes_total = sum(self.plan.size)
        for problem in problems:
            self.failed.append(FailedFile(problem.rel, self.prefix + problem.rel, 0, problem.error, "SourceError"))
        self._failed_count = len(problems)
        self._open_journal()
        candidates = self._resume_decisions()
        if self.dataset.skip_existing or self.options.resume:
            candidates = self._skip_existing(candidates)
        threshold = self.threshold
        large = [i for i in candidates if self.plan.size[i] > threshold]
        large.sort(key=lambda i: -self.plan.size[i])
        self._large = large
        self._small = array("q", (i for i in candidates if self.plan.size[i] <= threshold))
        if self._small and self.options.checksum is not ChecksumMode.NONE:
            self._traits = self._probe(self.key_of(self._small[0]))

    def _open_journal(self) -> None:
        if self.journal_path is None:
            return
        identity = {"sources": self.sources, "endpoint": effective_endpoint(self.store.endpoint_url),
                    "bucket": self.bucket, "prefix": self.prefix}
        try:
            self._journal = DatasetJournal.open(self.journal_path, identity, resume=self.options.resume,
                                                warn=self._warn)
        except OSError as exc:  # (a second run on the same journal is a UsageError: exit 2)
            self._warn(f"cannot write the run's journal ({exc.strerror or exc}): the run goes on, but --resume "
                       "will have to check every file against the store")

    def _resume_decisions(self) -> list[int]:
        """The files to consider: every one, less what an earlier run finished (with the same fingerprint)."""
        j = self._journal
        if j is None or not self.options.resume or not j.earlier:
            return list(range(len(self.plan)))
        out: list[int] = []
        changed = 0
        p = self.plan
        for i in range(len(p)):
            if j.finished(p.rels[i], p.size[i], p.mtime[i], p.inode[i]):
                self._skip(i, "resumed", None)
            else:
                if j.known(p.rels[i]):
                    changed += 1
                    if changed <= 20:
                        self._warn(f"{p.rels[i]} changed since the interrupted run: uploading it again")
                out.append(i)
        if changed > 20:
            self._warn(f"... and {changed - 20} more files changed since the interrupted run: uploading them again")
        return out

    def _skip(self, i: int, why: str, etag: str | None) -> None:
        self._skipped.append((i, why, etag))
        self._skipped_bytes += self.plan.size[i]

    def _skip_existing(self, candidates: list[int]) -> list[int]:
        """Keep only the files whose key does not already hold an object of the same size and checksum: one LIST
        page per thousand keys, then the file's checksum (its MD5 against a plain ETag; else one HEAD for the
        checksum this tool stored in the object's metadata, or its multipart ETag from the part size it stored)."""
        if not candidates:
            return candidates
        listed = self._list_prefix({self.key_of(i) for i in candidates})
        out: list[int] = []
        for i in candidates:
            if self.cancel.cancelled:
                raise E.Cancelled(self.cancel.reason or "interrupted")
            found = listed.get(self.key_of(i))
            if found is None or found[0] != self.plan.size[i]:
                out.append(i)
                continue
            try:
                same = self._same_object(i, found[1])
            except OSError as exc:
                log.debug("cannot read %s to compare it: %s", self.plan.path(i), exc)
                same = False
            if same:
                self._skip(i, "exists", found[1])
            else:
                out.append(i)
        return out

    def _list_prefix(self, wanted: set[str]) -> dict[str, tuple[int, str]]:
        """``key -> (size, etag)`` of the objects under the prefix that this run would write."""
        out: dict[str, tuple[int, str]] = {}
        try:
            for obj in self.store.list_objects(self.bucket, self.prefix):
                if obj.key in wanted:
                    out[obj.key] = (obj.size, obj.etag.strip('"').lower())
        except Exception as exc:  # noqa: BLE001
            code = error_code(exc)
            if code in ("NoSuchBucket", "404"):
                raise E.BucketNotFound(f"bucket {self.bucket!r} does not exist: create it first or check the name",
                                       bucket=self.bucket) from exc
            self._warn(f"cannot list s3://{self.bucket}/{self.prefix} ({exc}): every file is uploaded")
            return {}
        return out

    def _same_object(self, i: int, etag: str) -> bool:
        path, size = self.plan.path(i), self.plan.size[i]
        if "-" not in etag and len(etag) == 32:
            md5 = _file_digests(path, size, [Algorithm.MD5], size or 1)[0]
            if md5 and md5[0].hex() == etag:
                return True
        head = self._head(self.key_of(i))
        if head is None:
            return False
        meta = {k.lower(): v for k, v in dict(head.get("Metadata") or {}).items()}
        for name, value in meta.items():
            if name.startswith(CHECKSUM_METADATA_PREFIX) and name != PART_SIZE_METADATA:
                try:
                    algorithm = Algorithm(name[len(CHECKSUM_METADATA_PREFIX):])
                except ValueError:
                    continue
                digest = _file_digests(path, size, [algorithm], size or 1)[0][0]
                return b64(digest) == str(value)
        part_size = meta.get(PART_SIZE_METADATA)
        if part_size and part_size.isdigit() and "-" in etag:
            digests = _file_digests(path, size, [Algorithm.MD5], int(part_size))[0]
            composite = hashlib.md5(b"".join(digests)).hexdigest() + f"-{len(digests)}"  # noqa: S324 - S3's ETag
            return composite == etag
        return False

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self.store.head_object(self.bucket, key))
        except Exception:  # noqa: BLE001 - no evidence: the file is uploaded
            return None

    def _probe(self, key: str) -> StoreTraits | None:
        from .leftovers import Leftovers

        known = getattr(self.store, "known_traits", None)
        if known is not None:  # the store says what it checks (brokered: its user cannot make the probe's upload)
            return StoreTraits(*known())

        leftovers = Leftovers(self.store, self.bucket, key, self.cancel, cleanup_template=None, warn=self._warn)
        args = object_args(self.options, key)
        encryption = (args.get("ServerSideEncryption"), args.get("SSEKMSKeyId"))
        traits, left = probe_store(
            self.store, bucket=self.bucket, key=key, create_args=args, algorithm=checksum_algorithm(self.options),
            cache_key=(getattr(self.store, "config", self.store), self.bucket, encryption),
            abort=leftovers.abort_quietly, cancelled=lambda: self.cancel.cancelled,
            endpoint=self.store.endpoint_url)
        if left is not None:
            self._warn(f"could not abort the store probe's throwaway multipart upload {left} of s3://{self.bucket}/"
                       f"{key}: remove it with mpupload cleanup s3://{self.bucket}/{key}")
        return traits

    # -- the run ---------------------------------------------------------------------------------------------------
    def run(self, agg: Aggregator) -> DatasetResult:
        self.agg = agg
        agg.files = self._counts()
        self.prepare()
        agg.total_bytes = self.bytes_total
        agg.parts_total = self.files_total
        agg.resumed_bytes = self._skipped_bytes
        executor = self.executors.for_parts()
        self._sent_base = executor.bytes_sent()
        agg.files = self._counts()
        started: dict[str, Any] = {"bytes_total": self.bytes_total, "prefix": self.prefix, "sources": self.sources,
                                   "put_threads": self.dataset.put_threads, "workers": self.executors.workers,
                                   "multipart": bool(self._large), "resumed_bytes": self._skipped_bytes,
                                   "resumed_parts": len(self._skipped), **self.executors.started_fields()}
        if self.executors.max_bandwidth is not None:
            started["max_bandwidth_bps"] = self.executors.max_bandwidth
        agg.started(started)
        self._next_sync = time.monotonic() + JOURNAL_SYNC_S
        try:
            for failed in self.failed:
                self._file_failed_event(failed)
            for i, why, etag in self._skipped:
                self._done += 1
                self._file_completed(i, verified="exists" if why == "exists" else "journal", etag=etag,
                                     checksum=None, skipped=why, record=False)
            for i in self._large:
                self._check_cancel()
                self._large_file(i)
            self._small_files()
        except BaseException as exc:
            self.executors.flag.set()
            self._sync_journal(close=True)
            if isinstance(exc, E.Cancelled) or not isinstance(exc, Exception):
                return self._end_stopped(exc)
            if isinstance(exc, _FailFast):
                return self._end(Status.FAILED)
            raise
        self._sync_journal(close=False)
        return self._end(Status.COMPLETED if not self._failed_count else Status.FAILED)

    def _check_cancel(self) -> None:
        if self.cancel.cancelled:
            raise E.Cancelled(self.cancel.reason or "interrupted")

    def _sent(self) -> int:
        return max(0, self.executors.for_parts().bytes_sent() - self._sent_base)

    def _tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_tick:
            return
        self._next_tick = now + self.agg.tick_s
        self.agg.files = self._counts()
        in_flight = [{"path": rel, "key": key, "size": size, "bytes_done": min(size, done())}
                     for rel, key, size, done in self._in_flight[:IN_FLIGHT_SHOWN]]
        self.agg.tick(self._sent(), self._done, {"in_flight": in_flight})
        if now >= self._next_sync:
            self._next_sync = now + JOURNAL_SYNC_S
            self._sync_journal(close=False)

    def _sync_journal(self, *, close: bool) -> None:
        if self._journal is None:
            return
        with contextlib.suppress(OSError):
            self._journal.sync()
        if close:
            with contextlib.suppress(OSError):
                self._journal.close()

    def close(self) -> None:
        """Release the run's journal (idempotent): the lock goes, the file stays for --resume."""
        self._sync_journal(close=True)
        self._journal = None

    # -- per-file outcomes -----------------------------------------------------------------------------------------
    def _file_completed(self, i: int, *, verified: str, etag: str | None, checksum: str | None,
                        skipped: str | None = None, record: bool = True) -> None:
        p = self.plan
        self.agg.files = self._counts()
        self.agg.file_event(Event.FILE_COMPLETED, self.key_of(i), {
            "prefix": self.prefix, "path": p.rels[i], "size": p.size[i], "verified": verified, "etag": etag,
            "checksum": checksum, "skipped": skipped})

    def _file_failed(self, i: int | None, failed: FailedFile) -> None:
        self.failed.append(failed)
        self._failed_count += 1
        self._file_failed_event(failed)
        if self.dataset.fail_fast:
            raise _FailFast(failed.error)

    def _file_failed_event(self, failed: FailedFile) -> None:
        self.agg.files = self._counts()
        self.agg.file_event(Event.FILE_FAILED, failed.key, {
            "prefix": self.prefix, "path": failed.path, "size": failed.size, "error": failed.error,
            "error_type": failed.error_type})

    def _record(self, entries: list[FinishedFile]) -> None:
        if self._journal is None or not entries:
            return
        try:
            self._journal.record(entries)
        except OSError as exc:
            self._warn(f"cannot write the run's journal ({exc.strerror or exc}): --resume will check these files "
                       "against the store instead")
            self._journal = None

    # -- large files -----------------------------------------------------------------------------------------------
    def _large_file(self, i: int) -> None:
        p = self.plan
        path, key, size = p.path(i), self.key_of(i), p.size[i]
        try:
            source = Source.from_path(path)
        except OSError as exc:
            err = E.source_error(path, exc, bucket=self.bucket, key=key)
            self._file_failed(i, FailedFile(p.rels[i], key, size, str(err), type(err).__name__))
            return
        if (source.size, source.mtime_ns, source.inode) != (size, p.mtime[i], p.inode[i]):
            self._file_failed(i, FailedFile(p.rels[i], key, size, f"{path} changed since the walk: upload it "
                                            "again once it is final", "SourceChanged"))
            return
        try:
            plan = plan_upload(size, part_size=self.options.part_size, workers=self.executors.workers)
        except PlanError as exc:
            self._file_failed(i, FailedFile(p.rels[i], key, size, str(exc), "UsageError"))
            return
        template = self.dataset.cleanup_template
        lock: JournalLock | None = None
        journal_path: Path | None = None
        if self.options.journal:
            try:
                journal_path = journal_mod.journal_path(path, effective_endpoint(self.store.endpoint_url),
                                                        self.bucket, key)
                lock = JournalLock(journal_path).acquire()
            except OSError:
                journal_path = None
        # --resume continues this file at part level when an interrupted run left its journal; a file it never
        # started goes up afresh (without listing the store's uploads for it)
        resume = self.options.resume and journal_path is not None and journal_path.exists()
        options = dataclasses.replace(
            self.options, metadata={**self.options.metadata, PART_SIZE_METADATA: str(plan.part_size)},
            cleanup_command=template.replace("{key}", key) if template else None, resume=resume)
        bridge = _Bridge(self, i)
        upload = ObjectUpload(source, self.bucket, key, plan, store=self.store, options=options, cancel=self.cancel,
                              executors=self.executors, journal_path=journal_path, object_id=i + 1)
        sub = Aggregator(bucket=self.bucket, key=key, total_bytes=size, parts_total=plan.parts_total,
                         sinks=[bridge])
        self._in_flight = [(p.rels[i], key, size, lambda: bridge.bytes_done)]
        try:
            if not self.cancel.cancelled:
                self.executors.flag.clear()  # an earlier file's failure set it
            result = upload.run(sub)
        except (E.Cancelled, E.ClusterUnavailable):
            raise
        except E.MpuploadError as exc:
            if not self.cancel.cancelled:
                self.executors.flag.clear()
            self._file_failed(i, FailedFile(p.rels[i], key, size, str(exc), type(exc).__name__))
            return
        finally:
            self._in_flight = []
            if lock is not None:
                lock.release()
        for note in result.warnings:
            self.warnings.append(f"{p.rels[i]}: {note}")
        self._done += 1
        self._record([FinishedFile(p.rels[i], key, size, p.mtime[i], p.inode[i], result.etag, result.checksum)])
        self.agg.count(self._sent())
        self._file_completed(i, verified=result.verified, etag=result.etag, checksum=result.checksum)
        self._tick(force=True)

    # -- small files -----------------------------------------------------------------------------------------------
    def _targets(self) -> Iterator[BatchJob]:
        """The small files as batches, in walk order."""
        opts, d = self.options, self.dataset
        algorithm = checksum_algorithm(opts)
        md5 = opts.checksum is not ChecksumMode.NONE
        etag_is_md5 = bool(md5 and self._traits is not None and self._traits.etag_is_md5)
        p = self.plan
        jobs: list[PartJob] = []
        size = 0
        batch_id = 0
        remote = self.executors.cluster is not None  # another host may number the same file's inode differently
        # a store that signs each object's URL in a group (a brokered run: the API server's record of it) takes no
        # object arguments: what is signed is the body's digests, and the server's storage decides the rest
        group = getattr(self.store, "run_id", None)
        # a batch's URLs are signed in one request: as many files as the server signs at once (its cost is per
        # request), still within the batch's bytes
        window = getattr(self.store, "sign_window", None)
        most = max(d.batch_files, int(window(1))) if group is not None and window is not None else d.batch_files
        for i in self._small:
            inode_here = -1 if remote else p.inode[i]
            args = tuple(object_args(opts, p.rels[i]).items()) if group is None else ()
            target = PartTarget(p.path(i), self.bucket, self.key_of(i), None, algorithm, md5, etag_is_md5=etag_is_md5,
                                object_args=args, object_id=i + 1,
                                checksum_metadata=algorithm is not None and group is None,
                                fingerprint=(p.size[i], p.mtime[i], inode_here), group=group)
            jobs.append(PartJob(target, Part(1, 0, p.size[i])))
            size += p.size[i]
            if len(jobs) >= most or size >= d.batch_bytes:
                batch_id += 1
                yield BatchJob(tuple(jobs), batch_id)
                jobs, size = [], 0
        if jobs:
            yield BatchJob(tuple(jobs), batch_id + 1)

    def _small_files(self) -> None:
        if not self._small:
            return
        executor = self.executors.for_parts()
        if not self.cancel.cancelled:
            self.executors.flag.clear()
        batches = self._targets()
        outstanding: dict[int, BatchJob] = {}
        depth = max(2, 2 * executor.workers)
        deaths = 0
        exhausted = False
        while True:
            while not exhausted and len(outstanding) < depth:
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                    break
                outstanding[batch.batch_id] = batch
                executor.submit(batch)
            if not outstanding:
                break
            self._show_in_flight(outstanding)
            events = executor.events(max(0.0, self._next_tick - time.monotonic()), wake=[self.cancel.fileno()])
            self._check_cancel()
            for event in events:
                if isinstance(event, WorkerBroken):
                    event.raise_error()
                elif isinstance(event, WorkerLost):
                    if isinstance(event.job, BatchJob) and event.job.batch_id in outstanding:
                        deaths += 1
                        log.warning("%s", event.describe())
                        if deaths > max(3, 2 * executor.workers):
                            raise E.WorkerCrashed(f"{event.too_many(deaths)}, then run the command again with "
                                                  "--resume")
                        executor.submit(event.job, first=True)
                elif isinstance(event, JobDone) and isinstance(event.result, BatchResult):
                    batch = outstanding.pop(event.result.batch_id, None)
                    if batch is not None:
                        self._batch_done(batch, event.result)
            self._show_in_flight(outstanding)  # the files just reported done are not in flight any more
            self._tick()
        self._in_flight = []

    def _show_in_flight(self, outstanding: dict[int, BatchJob]) -> None:
        """The small files a progress snapshot lists as in flight: those of the first two batches not done."""
        self._in_flight = [(job.target.key[len(self.prefix):], job.target.key, job.length, lambda: 0)
                           for b in list(outstanding.values())[:2] for job in b.jobs][:IN_FLIGHT_SHOWN]

    def _batch_done(self, batch: BatchJob, result: BatchResult) -> None:
        self.agg.count(self._sent())  # its file events say what is sent now
        finished: list[FinishedFile] = []
        completed: list[tuple[int, str, str | None, str | None]] = []
        p = self.plan
        try:
            for job, r in zip(batch.jobs, result.results, strict=True):
                i = job.target.object_id - 1
                if r.ok:
                    verdict = self._verified(job, r)
                    if verdict is None:
                        continue
                    verified, checksum = verdict
                    self._done += 1
                    finished.append(FinishedFile(p.rels[i], job.target.key, p.size[i], p.mtime[i], p.inode[i],
                                                 r.etag, checksum))
                    completed.append((i, verified, r.etag, checksum))
                elif r.cancelled:
                    self._check_cancel()
                    # cancelled by a fail-fast stop: not a failure of its own
                else:
                    self._file_failed(i, FailedFile(p.rels[i], job.target.key, p.size[i],
                                                    r.error or "the upload failed", r.error_type or "UploadFailed"))
        finally:
            self._record(finished)  # before the events: what is reported done is recorded
            for i, verified, etag, checksum in completed:
                self._file_completed(i, verified=verified, etag=etag, checksum=checksum)

    def _verified(self, job: PartJob, r: PartResult) -> tuple[str, str | None] | None:
        """How a small file's object was checked, from the PutObject's answer (no request) when it can be: its
        ETag is the MD5 of the file, or the store validated the checksum it echoed; else the one verification
        routine (a HEAD). ``None``: it failed (reported)."""
        target = job.target
        algorithm = target.algorithm
        checksum = f"{algorithm.value}:{r.checksum}" if algorithm is not None and r.checksum else None
        etag = (r.etag or "").strip('"').lower()
        if r.md5 is not None and etag == r.md5:
            return "md5", checksum or f"md5:{r.md5}"
        traits = self._traits
        if algorithm is not None and r.checksum_echoed and traits is not None and traits.validates_checksum:
            return algorithm.value, checksum
        integrity = integrity_plan(self.options.checksum, algorithm, traits)
        expected = Expected(job.length, max(1, job.length), multipart=False, algorithm=algorithm,
                            part_checksums=(r.checksum,) if r.checksum is not None else None,
                            part_md5s=(r.md5,) if r.md5 is not None else None)
        i = target.object_id - 1
        try:
            verdict = verify_object(ObjectAccess(self.store, self.bucket, target.key, self.store.endpoint_url),
                                    expected, answer=dict(r.answer or {}), parts_checked=integrity.parts_checked,
                                    validates_checksum=integrity.validates_checksum,
                                    size_only_reason=integrity.warning)
        except E.MpuploadError as exc:
            self._file_failed(i, FailedFile(self.plan.rels[i], target.key, job.length, str(exc), type(exc).__name__))
            return None
        if verdict is None:
            return "size-only", checksum
        return verdict.verified, verdict.checksum or checksum

    # -- the end ---------------------------------------------------------------------------------------------------
    def _end_extra(self) -> dict[str, Any]:
        return {"failed_files": [f.as_dict() for f in self.failed], "warnings": list(self.warnings),
                "in_flight": []}  # the run is over: a reader that shows the last list it got shows none

    def _result(self, snap: Snapshot) -> DatasetResult:
        return DatasetResult(self.bucket, self.prefix, self.files_total, self._done, self._failed_count,
                             len(self._skipped), self.bytes_total, snap.elapsed_seconds, snap.avg_speed_bps,
                             list(self.failed), list(self.warnings))

    def _end(self, status: Status) -> DatasetResult:
        self.agg.files = self._counts()
        extra = self._end_extra()
        if status is Status.COMPLETED:
            snap = self.agg.finish(Event.COMPLETED, Status.COMPLETED, extra, sent_bytes=self._sent(),
                                   parts_done=self._done)
            if self._journal is not None:
                with contextlib.suppress(OSError):
                    self._journal.remove()  # every file is done: nothing to resume
                self._journal = None
            return self._result(snap)
        total = self.files_total
        message = f"{self._failed_count} of {total} files failed"
        if self.dataset.fail_fast and self._failed_count:
            message += " (--fail-fast: the run stopped at the first)"
        extra.update(error=message, error_type="FilesFailed")
        snap = self.agg.finish(Event.FAILED, Status.FAILED, extra, sent_bytes=self._sent(), parts_done=self._done)
        self._result(snap)
        first = self.failed[0]
        raise E.FilesFailed(f"{message}; the first: {first.path}: {first.error}. The others are on the store: run "
                            "the same command with --resume to send only what is missing")

    def _end_stopped(self, exc: BaseException) -> DatasetResult:
        reason = self.cancel.reason or "interrupted"
        extra = self._end_extra()
        extra.update(reason=reason, aborted=not self.options.keeps_on_interrupt, kept=self.options.keeps_on_interrupt)
        if self.options.resume_command:
            extra["resume_command"] = self.options.resume_command
        self.agg.files = self._counts()
        self.agg.finish(Event.STOPPED, Status.STOPPED, extra, sent_bytes=self._sent(), parts_done=self._done)
        message = f"{reason}; {self._done} of {self.files_total} files are on the store"
        if self.options.resume_command:
            message += f": continue with {self.options.resume_command}"
        detail = str(exc) if isinstance(exc, E.Cancelled) and str(exc) and "multipart" in str(exc) else ""
        if detail:
            message += f" ({detail})"
        raise E.Cancelled(message) from None


class _FailFast(Exception):
    """--fail-fast: the first failed file stops the run."""


def _file_digests(path: str, size: int, algorithms: list[Algorithm], part_size: int) -> list[list[bytes]]:
    """Per algorithm, the digests of the file's parts of ``part_size`` (one part: the whole file)."""
    out: list[list[bytes]] = [[] for _ in algorithms]
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while True:
            length = min(part_size, size - offset)
            hashers: list[Hasher] = [new_hasher(a) for a in algorithms]
            digest_range(fd, offset, length, hashers)
            for n, h in enumerate(hashers):
                out[n].append(h.digest())
            offset += length
            if offset >= size:
                break
    finally:
        os.close(fd)
    return out
