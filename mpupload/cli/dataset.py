"""``mpupload upload DIR... s3://BUCKET/PREFIX/`` — a directory run: many files, one bar, one record.

The same order as a one-file upload: bad input first (exit 2), then the API token (exit 3), then the store; the
run is registered with the API server once the walk has counted its files and bytes. Exit 0 when every file is
on the store, 1 when some failed (the summary lists them), 130 on Ctrl+C.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING

from .. import errors as E
from ..engine.cancel import CancelToken
from ..wire import Status
from .errors import EXIT_OK
from .signals import cancel_on_signals
from .upload import build_options, cleanup_command, parse_s3_prefix, settle_heap, upload_store

if TYPE_CHECKING:
    from ..api import PreparedDataset
    from ..sinks import Sink
    from ..sinks.push import PushSink
    from ..storage import StoreConfig
    from ..storage.brokered import BrokeredStore
    from .reporting import Reporting

__all__ = ["run_dataset"]


def run_dataset(args: argparse.Namespace) -> int:
    from ..api import prepare_dataset
    from ..engine.dataset import DatasetOptions
    from ..engine.object_upload import checksum_algorithm
    from ..sinks import make_sinks
    from ..tree import FilterRule, Filters
    from .brokered import brokered_destination, is_brokered
    from .reporting import check_reporting, dataset_registration_body, start_reporting, warn_line

    sources: list[str] = list(args.source)
    brokered = is_brokered(args.destination)
    if args.no_overwrite:
        raise E.UsageError("--no-overwrite is for one file; a directory run has --skip-existing")
    store: StoreConfig | BrokeredStore
    if brokered:
        # the server holds the storage: one record for the run (its quota checked once the walk has counted the
        # bytes), the small files' URLs signed in batches through it, the large files multipart uploads in it
        broker, bucket, prefix, _ = brokered_destination(args, run=True)
        store, template = broker, None
        options = build_options(args)
    else:
        bucket, prefix = parse_s3_prefix(args.destination)
        options = build_options(args, bucket, prefix)
        template = cleanup_command(args, bucket, "{key}") if bucket else None
        store = upload_store(args)
    options = dataclasses.replace(options, cleanup_command=None)
    if args.put_threads < 1 or args.put_threads > 64:
        raise E.UsageError("--put-threads must be 1 to 64")
    dataset = DatasetOptions(
        filters=Filters([FilterRule(include, glob) for include, glob in (args.filters or [])]),
        follow_symlinks=not args.no_follow_symlinks, skip_existing=args.skip_existing, fail_fast=args.fail_fast,
        put_threads=args.put_threads, cleanup_template=template)
    token = CancelToken()
    push: PushSink | None = None
    prepared: PreparedDataset | None = None
    say = warn_line(args.quiet)
    try:
        with cancel_on_signals(token, quiet=args.quiet):
            reporting: list[Reporting | None] = []
            prepared = prepare_dataset(sources, bucket, prefix, store=store, options=options, dataset=dataset,
                                       cancel=token, before_store=lambda: reporting.append(check_reporting(args)),
                                       warn=say)
            registration = dataset_registration_body(prepared.sources, bucket, prefix, prepared.files_total,
                                                     prepared.bytes_total)
            run_id = None
            if brokered:
                run_id = broker.open_run(prefix, total_bytes=prepared.bytes_total, files_total=prepared.files_total,
                                         name=str(registration["filename"]), algorithm=checksum_algorithm(options),
                                         resume=options.resume)
            if reporting and reporting[0] is not None:
                push = start_reporting(args, reporting[0], bucket=bucket, key=prefix, source=None, plan=None,
                                       record_id=None, options=options, token=token, registration=registration,
                                       brokered=brokered, run_id=run_id)
            sinks: list[Sink] = make_sinks(args.progress, stdout=sys.stdout, stderr=sys.stderr, quiet=args.quiet)
            if push is not None:
                sinks.append(push)
            settle_heap()
            try:
                prepared.run(sinks, upload_id=push.record_id if push is not None else None)
            except BaseException as exc:
                if push is not None and not isinstance(exc, E.FilesFailed):
                    stopped = isinstance(exc, (E.Cancelled, KeyboardInterrupt))
                    push.fail(Status.STOPPED if stopped else Status.FAILED, None if stopped else str(exc))
                raise
    finally:
        if prepared is not None:
            prepared.close()
        if push is not None:
            push.finish()
        token.close()
    return EXIT_OK
