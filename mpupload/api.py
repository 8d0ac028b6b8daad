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

import logging
import os
import stat
from collections.abc import Sequence

from . import errors as E
from . import journal as journal_mod
from .engine.aggregator import Aggregator
from .engine.cancel import CancelToken
from .engine.coordinator import Coordinator, Source
from .journal import JournalLock
from .options import UploadOptions, UploadResult
from .plan import PlanError, UploadPlan, plan_upload
from .sinks import Sink
from .storage import Store, StoreConfig
from .storage.config import effective_endpoint

__all__ = ["upload_file", "check_source", "make_plan"]

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


def make_plan(size: int, options: UploadOptions) -> UploadPlan:
    import psutil

    try:
        return plan_upload(size, part_size=options.part_size, workers=options.workers,
                           available_memory=psutil.virtual_memory().available)
    except PlanError as exc:
        raise E.UsageError(str(exc)) from None


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
    store = store or StoreConfig()
    options = options or UploadOptions()
    if not bucket or not key:
        raise E.UsageError("bucket and key are required: s3://BUCKET/KEY")
    source = check_source(path)
    plan = make_plan(source.size, options)
    token = cancel or CancelToken()
    agg = Aggregator(bucket=bucket, key=key, total_bytes=source.size, parts_total=plan.parts_total, sinks=list(sinks))
    agg.upload_id = upload_id
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
    try:
        return Coordinator(source, bucket, key, plan, store=store, options=options, aggregator=agg,
                           cancel=token, journal_path=journal_path, record_id=upload_id).run()
    finally:
        if lock is not None:
            lock.release()
        agg.close()
        if cancel is None:
            token.close()
