"""The library API: ``upload_file`` — what the CLI and the benchmarks call.

>>> from mpupload import upload_file, UploadOptions, StoreConfig
>>> result = upload_file("data.tar", "bucket", "datasets/data.tar",
...                      store=StoreConfig(endpoint_url="http://127.0.0.1:9000"),
...                      options=UploadOptions(workers=4))            # doctest: +SKIP
>>> result.verified                                                  # doctest: +SKIP
'crc32c'

Input problems raise :class:`~mpupload.errors.UsageError` before anything is created on the store.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import errors as E
from . import journal as journal_mod
from .engine.aggregator import Aggregator, Sink
from .engine.cancel import CancelToken
from .engine.dataset import DatasetOptions, DatasetResult, DatasetUpload
from .engine.executors import Executors
from .engine.object_upload import ObjectUpload
from .journal import JournalLock
from .options import UploadOptions, UploadResult
from .plan import DEFAULT_WORKERS, MAX_WORKERS, PlanError, UploadPlan, plan_upload
from .source import Source
from .source_check import FileSample
from .storage import Store, StoreConfig
from .storage.boto3_store import Boto3Store
from .storage.config import effective_endpoint

if TYPE_CHECKING:
    from .engine.dask_executor import ClusterSpec

__all__ = ["upload_file", "prepare_upload", "PreparedUpload", "check_source", "make_plan", "upload_directory",
           "prepare_dataset", "PreparedDataset"]

log = logging.getLogger("mpupload")


def check_source(path: str) -> Source:
    """The file's fingerprint, or a :class:`UsageError` that says what is wrong with it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise E.UsageError(f"no such file: {path}") from None
    except PermissionError:
        raise E.UsageError(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise E.UsageError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise E.UsageError(f"{path} is a directory: mpupload uploads one regular file (tar the directory first)")
    if not stat.S_ISREG(st.st_mode):
        raise E.UsageError(f"{path} is not a regular file: mpupload uploads regular files only")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except PermissionError:
        raise E.UsageError(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise E.UsageError(f"cannot read {path}: {exc.strerror}") from None
    return Source.from_path(path)


def check_options(options: UploadOptions) -> None:
    """Options that are wrong whatever the file: a :class:`UsageError` before anything else."""
    if options.max_bandwidth is not None:
        from .engine.throttle import check_rate

        try:
            check_rate(options.max_bandwidth)
        except ValueError as exc:
            raise E.UsageError(f"--max-bandwidth: {exc}") from None


def cluster_settings(options: UploadOptions, store: StoreConfig | Store) -> tuple[ClusterSpec | None, Store | None]:
    """A cluster run's :class:`~.engine.dask_executor.ClusterSpec` and the store its workers get: this process's
    settings with the endpoint and region resolved here (every worker must talk to the same store), and this
    process's credentials only with ``--cluster-pass-credentials``; a brokered store's workers get a store that
    signs with a worker token (:meth:`~.storage.brokered.BrokeredStore.for_cluster`). ``(None, None)``: not a
    cluster run."""
    if not options.cluster:
        if options.cluster_pass_credentials:
            raise E.UsageError("--cluster-pass-credentials goes with --cluster")
        return None, None
    from .engine.dask_executor import ClusterSpec

    for_cluster = getattr(store, "for_cluster", None)
    if for_cluster is not None:  # a brokered store: the workers sign with a worker token, never the user's
        if options.cluster_pass_credentials:
            raise E.UsageError("--cluster-pass-credentials: a brokered upload has no storage credentials to pass")
        return ClusterSpec(options.cluster, concurrency=options.workers), for_cluster()
    if isinstance(store, Boto3Store):
        store = store.config
    if not isinstance(store, StoreConfig):
        raise E.UsageError("--cluster needs an S3 store that the workers can reach (not an in-process store)")
    config = dataclasses.replace(store, endpoint_url=effective_endpoint(store.endpoint_url),
                                 region=store.resolved_region())
    if options.cluster_pass_credentials:
        credentials = config.resolved_credentials()
        if credentials is None:
            raise E.AuthError("--cluster-pass-credentials: this host has no AWS credentials to pass")
        config = dataclasses.replace(config, credentials=credentials)
    return ClusterSpec(options.cluster, concurrency=options.workers), Boto3Store(config)


def make_plan(size: int, options: UploadOptions) -> UploadPlan:
    import psutil

    try:
        return plan_upload(size, part_size=options.part_size, workers=options.workers,
                           available_memory=psutil.virtual_memory().available)
    except PlanError as exc:
        raise E.UsageError(str(exc)) from None


class _Prepared:
    """What a prepared run holds until it ends: its executors and the cancel token (closed when it owns it)."""

    def __init__(self, executors: Executors, token: CancelToken, owns_token: bool) -> None:
        self._executors = executors
        self._token = token
        self._owns_token = owns_token
        self._closed = False

    def _release(self) -> None:
        """What the run holds besides its executors and token (a journal's lock)."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executors.shutdown()
        self._release()
        if self._owns_token:
            self._token.close()


class PreparedUpload(_Prepared):
    """An upload whose set-up is done, once: its input checked, its plan made, its workers started, and its resume
    decision taken against the store (which may change the plan). What is left is to run it, with sinks fed by an
    aggregator built from the final plan; :meth:`close` releases it unrun.

    The CLI registers the upload with the API server between :func:`prepare_upload` and :meth:`run`, from
    :attr:`plan` and :attr:`record_id` (the API record an interrupted run kept in its journal).
    """

    def __init__(self, upload: ObjectUpload, executors: Executors, lock: JournalLock | None, token: CancelToken,
                 owns_token: bool) -> None:
        super().__init__(executors, token, owns_token)
        self._upload = upload
        self._lock = lock

    @property
    def source(self) -> Source:
        return self._upload.source

    @property
    def plan(self) -> UploadPlan:
        return self._upload.plan

    @property
    def record_id(self) -> str | None:
        return self._upload.record_id

    def run(self, sinks: Sequence[Sink] = (), *, upload_id: str | None = None) -> UploadResult:
        """Send, complete and verify; ``upload_id`` is the API server's record id when there is one."""
        c = self._upload
        agg = Aggregator(bucket=c.bucket, key=c.key, total_bytes=c.source.size, parts_total=c.plan.parts_total,
                         sinks=list(sinks))
        agg.upload_id = upload_id
        c.record_id = upload_id or c.record_id
        try:
            return c.run(agg)
        finally:
            agg.close()
            self.close()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()


def prepare_upload(
    path: str,
    bucket: str,
    key: str,
    *,
    store: StoreConfig | Store | None = None,
    options: UploadOptions | None = None,
    cancel: CancelToken | None = None,
    before_store: Callable[[Source, UploadPlan], None] | None = None,
) -> PreparedUpload:
    """Check the input and plan (a :class:`UsageError` before anything else), call ``before_store`` (the CLI checks
    its API token there: nothing may touch the store before), then start the workers and take the resume
    decision. The caller must :meth:`~PreparedUpload.run` or :meth:`~PreparedUpload.close` what it gets."""
    store = store or StoreConfig()
    options = options or UploadOptions()
    if not bucket or not key:
        raise E.UsageError("bucket and key are required: s3://BUCKET/KEY")
    check_options(options)
    source = check_source(path)
    # on a cluster, --workers is how many tasks run at once there, not worker processes here
    plan = make_plan(source.size, dataclasses.replace(options, workers=None) if options.cluster else options)
    if getattr(store, "always_multipart", False) and not plan.multipart:
        plan = dataclasses.replace(plan, multipart=True)  # one part: a brokered store has no PutObject
    if before_store is not None:
        before_store(source, plan)
    cluster, cluster_store = cluster_settings(options, store)  # (before the journal's lock is taken)
    token = cancel or CancelToken()
    journal_path = None
    lock: JournalLock | None = None
    if options.journal:
        try:
            journal_path = journal_mod.journal_path(source.path, effective_endpoint(store.endpoint_url), bucket,
                                                    key)
            lock = JournalLock(journal_path).acquire()  # a second run on the same journal: UsageError (exit 2)
        except OSError as exc:  # a state directory that cannot be written: the upload goes on without a lock
            log.warning("cannot use the state directory for the resume journal (%s): the upload goes on; if it is "
                        "interrupted, --resume finds it on the store instead", exc.strerror or exc)
    the_store: Store = Boto3Store(store) if isinstance(store, StoreConfig) else store
    executors = Executors(the_store, plan.workers, start_method=options.start_method, cluster=cluster,
                          cluster_store=cluster_store, max_bandwidth=options.max_bandwidth)
    # Ctrl+C sets the workers' shared flag at once: parts in flight, and the hashing of stored parts, stop within
    # a chunk
    token.link(executors.flag)
    upload = ObjectUpload(source, bucket, key, plan, store=the_store, options=options, cancel=token,
                          executors=executors, journal_path=journal_path)
    prepared = PreparedUpload(upload, executors, lock, token, owns_token=cancel is None)
    try:
        # a cluster's workers check the file first: one that sees another file stops the run before anything
        executors.check_source(FileSample(source.path))
        upload.prepare()
    except BaseException:
        prepared.close()
        raise
    return prepared


def upload_file(
    path: str,
    bucket: str,
    key: str,
    *,
    store: StoreConfig | Store | None = None,
    options: UploadOptions | None = None,
    sinks: Sequence[Sink] = (),
    cancel: CancelToken | None = None,
    upload_id: str | None = None,
) -> UploadResult:
    """Upload one regular file to ``s3://bucket/key`` and verify the stored object.

    ``store`` is where it goes: a :class:`StoreConfig` (boto3, the default one when omitted) or any
    :class:`~mpupload.storage.Store`. ``cancel`` lets a caller stop the upload (the CLI cancels it from its
    SIGINT/SIGTERM handlers);
    ``upload_id`` is the API server's record id when there is one (it becomes the events' ``upload_id``, and
    is kept in the resume journal so that ``--resume`` continues the same record).
    Raises a subclass of :class:`~mpupload.errors.MpuploadError`.
    """
    prepared = prepare_upload(path, bucket, key, store=store, options=options, cancel=cancel)
    return prepared.run(sinks, upload_id=upload_id)


class PreparedDataset(_Prepared):
    """A directory run whose set-up is done (walked, planned, the journal read, the skips decided, the workers
    started): :meth:`run` it with sinks, or :meth:`close` it unrun. The CLI registers the run with the API server
    in between, from :attr:`files_total` and :attr:`bytes_total`."""

    def __init__(self, upload: DatasetUpload, executors: Executors, token: CancelToken, owns_token: bool) -> None:
        super().__init__(executors, token, owns_token)
        self._upload = upload

    @property
    def files_total(self) -> int:
        return self._upload.files_total

    @property
    def bytes_total(self) -> int:
        return self._upload.bytes_total

    @property
    def sources(self) -> list[str]:
        return list(self._upload.sources)

    def run(self, sinks: Sequence[Sink] = (), *, upload_id: str | None = None) -> DatasetResult:
        d = self._upload
        agg = Aggregator(bucket=d.bucket, key=d.prefix, total_bytes=d.bytes_total, parts_total=d.files_total,
                         sinks=list(sinks))
        agg.upload_id = upload_id
        d.record_id = upload_id
        try:
            return d.run(agg)
        finally:
            agg.close()
            self.close()

    def _release(self) -> None:
        self._upload.close()


def prepare_dataset(
    sources: Sequence[str],
    bucket: str,
    prefix: str,
    *,
    store: StoreConfig | Store | None = None,
    options: UploadOptions | None = None,
    dataset: DatasetOptions | None = None,
    cancel: CancelToken | None = None,
    before_store: Callable[[], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> PreparedDataset:
    """Check the sources (a :class:`UsageError` before anything else), call ``before_store`` (the CLI checks its
    API token there), then start the workers, walk the sources and decide what is skipped."""
    from .dataset_journal import dataset_journal_path
    from .tree import check_sources

    options = options or UploadOptions()
    dataset = dataset or DatasetOptions()
    if not bucket:
        raise E.UsageError("a bucket is required: s3://BUCKET/PREFIX/")
    if prefix and not prefix.endswith("/"):
        raise E.UsageError(f"a directory (or several sources) goes under a prefix: end the destination with / "
                           f"(s3://{bucket}/{prefix}/)")
    if dataset.put_threads < 1 or dataset.put_threads > 64:
        raise E.UsageError("--put-threads must be 1 to 64")
    check_options(options)
    check_sources(sources)
    if isinstance(store, StoreConfig) or store is None:
        config = store or StoreConfig()
        # every PutObject thread of a worker has a connection of its own
        config = dataclasses.replace(config, max_pool_connections=max(config.max_pool_connections,
                                                                      dataset.put_threads + 2))
        store = config
    if before_store is not None:
        before_store()
    token = cancel or CancelToken()
    journal_path = None
    if options.journal:  # the journal holds its own lock (a second run on it: exit 2) once it is opened
        try:
            journal_path = dataset_journal_path(sources, effective_endpoint(store.endpoint_url), bucket, prefix)
        except OSError as exc:
            log.warning("cannot use the state directory for the run's journal (%s): the run goes on; --resume will "
                        "check every file against the store", exc.strerror or exc)
    the_store: Store = Boto3Store(store) if isinstance(store, StoreConfig) else store
    cluster, cluster_store = cluster_settings(options, store)
    workers = options.workers or DEFAULT_WORKERS
    if cluster is not None:  # what a large file's plan takes; the cluster's own concurrency is its threads
        workers = min(workers, MAX_WORKERS)
    executors = Executors(the_store, workers, start_method=options.start_method, put_threads=dataset.put_threads,
                          cluster=cluster, cluster_store=cluster_store, max_bandwidth=options.max_bandwidth)
    token.link(executors.flag)
    upload = DatasetUpload(sources, bucket, prefix, store=the_store, options=options, dataset=dataset, cancel=token,
                           executors=executors, journal_path=journal_path, warn=warn)
    prepared = PreparedDataset(upload, executors, token, owns_token=cancel is None)
    try:
        upload.prepare()
    except BaseException:
        prepared.close()
        raise
    return prepared


def upload_directory(
    sources: Sequence[str],
    bucket: str,
    prefix: str,
    *,
    store: StoreConfig | Store | None = None,
    options: UploadOptions | None = None,
    dataset: DatasetOptions | None = None,
    sinks: Sequence[Sink] = (),
    cancel: CancelToken | None = None,
) -> DatasetResult:
    """Upload directories (their contents, with their relative paths) and files under ``s3://bucket/prefix``.

    Raises :class:`~mpupload.errors.FilesFailed` when some files failed (the others are on the store), and the
    other :class:`~mpupload.errors.MpuploadError` subclasses as :func:`upload_file` does.
    """
    prepared = prepare_dataset(sources, bucket, prefix, store=store, options=options, dataset=dataset, cancel=cancel)
    return prepared.run(sinks)
