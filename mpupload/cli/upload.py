"""``mpupload upload SOURCE... s3://BUCKET/KEY`` — one regular file in parallel parts, or directories and files under
a PREFIX/ (their contents with their relative paths), verified."""

# The engine, the sinks and the API client are imported by run(), not by this module: parsing the arguments
# (and --help) stays cheap. This docstring is the command's --help description.

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import shlex
import sys
from typing import TYPE_CHECKING, Any

from .. import errors as E
from ..engine.cancel import CancelToken
from ..options import ChecksumMode, UploadOptions, VerifyMode
from ..plan import MAX_WORKERS
from ..sinks.push import REPORT_INTERVAL_S
from ..storage.config import effective_endpoint
from ..units import parse_rate, parse_size
from ..wire import Status
from .errors import EXIT_OK
from .options import add_store_arguments, build_store
from .signals import cancel_on_signals

if TYPE_CHECKING:
    from ..api import PreparedUpload
    from ..sinks import Sink
    from ..sinks.push import PushSink
    from ..storage import Store, StoreConfig
    from .reporting import Reporting

__all__ = ["add_parser", "parse_s3_url", "parse_s3_prefix", "run", "run_file", "is_dataset", "settle_heap"]


def settle_heap() -> None:
    """Called once the set-up is done (modules imported, store client and executors built, the cluster checked),
    just before the transfer: what exists now lives as long as the command, so it leaves the cyclic collector's
    generations (``gc.freeze``). Without it each full collection during the transfer walks every object the
    imports made (boto3, and Dask with ``--cluster``): 30-100 ms of the coordinator's CPU each time, the largest
    single cost of a cluster run's coordinator. Only the CLI does this: a library caller owns its process's
    collector."""
    gc.freeze()


def parse_s3_url(url: str, source: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); a missing key or one ending in ``/`` gets the file's name."""
    if not url.startswith("s3://"):
        raise E.UsageError(f"destination {url!r} is not an S3 URL: use s3://BUCKET/KEY")
    rest = url[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise E.UsageError(f"destination {url!r} has no bucket: use s3://BUCKET/KEY")
    if any(c.isspace() for c in bucket) or len(bucket) > 255:
        raise E.UsageError(f"{bucket!r} is not a valid bucket name")
    if not key or key.endswith("/"):
        key += os.path.basename(source.rstrip("/")) or "upload"
    if len(key.encode()) > 1024:
        raise E.UsageError("the object key is longer than S3's limit of 1024 bytes")
    return bucket, key


def _metadata(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise E.UsageError(f"--metadata {item!r}: use KEY=VALUE")
        out[name] = value
    return out


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (use 1 to {MAX_WORKERS})") from None
    return value


class _FilterAction(argparse.Action):
    """``--include``/``--exclude`` in command-line order, as ``(include, glob)`` (the last matching rule wins)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        rules = list(getattr(namespace, self.dest, None) or [])
        rules.append((option_string == "--include", str(values)))
        setattr(namespace, self.dest, rules)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("upload", help="upload a file, or directories, to S3", description=__doc__)
    p.add_argument("source", metavar="SOURCE", nargs="+",
                   help="a regular file, or a directory (its contents go under PREFIX/ with their relative paths)")
    p.add_argument("destination", metavar="s3://BUCKET/KEY",
                   help="KEY omitted or ending in / adds the file name; a directory or several sources need a "
                        "PREFIX ending in /; a KEY without s3:// goes to the API server's storage under your space "
                        "(a brokered upload: no AWS credentials needed)")
    add_store_arguments(p)
    t = p.add_argument_group("transfer")
    t.add_argument("--workers", type=_workers, help=f"worker processes (1-{MAX_WORKERS}; default: automatic)")
    t.add_argument("--part-size", help="part size, e.g. 64MiB (5MiB-5GiB; default: automatic)")
    t.add_argument("--checksum", choices=[m.value for m in ChecksumMode], default="auto",
                   help="per-part checksum (default auto: CRC32C where the store checks it, else MD5)")
    t.add_argument("--verify", choices=[m.value for m in VerifyMode], default="auto",
                   help="auto: the store's checksum or ETag (the size alone where it offers neither); read-back: "
                        "also read the object back and compare it with the file")
    stop = t.add_mutually_exclusive_group()
    stop.add_argument("--keep-on-interrupt", action="store_true",
                      help="on Ctrl+C keep the multipart upload (and its journal) instead of aborting it "
                           "(the default of a --resume run)")
    stop.add_argument("--abort-on-interrupt", action="store_true",
                      help="on Ctrl+C abort the multipart upload, even on a --resume run")
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted upload of this file to this key: only missing parts are sent; "
                        "Ctrl+C then keeps the upload (unless --abort-on-interrupt)")
    t.add_argument("--max-bandwidth", metavar="RATE",
                   help="cap the whole run (every worker together, on a cluster every host) at this rate, e.g. "
                        "200MiB/s, 50MB/s, 800KiB/s (/s optional; a plain number is bytes/s; at least 64KiB/s; "
                        "default: no cap)")
    t.add_argument("--cluster", metavar="tcp://HOST:PORT",
                   help="run the parts and files on this Dask cluster's workers (default: MPUPLOAD_CLUSTER; they "
                        "read SOURCE at the same path: a shared filesystem; needs mpupload[cluster])")
    t.add_argument("--cluster-pass-credentials", action="store_true",
                   help="send this host's AWS credentials to the cluster's workers with every task (default: the "
                        "workers use their own credential chain; see docs/cluster.md for the risk)")
    t.add_argument("--stall-timeout", type=float, default=None, metavar="SECONDS",
                   help="retry a request when no byte moves for this long (default: 10 s sending, 120 s for "
                        "the answer)")
    d = p.add_argument_group("directories")
    d.add_argument("--include", action=_FilterAction, dest="filters", metavar="GLOB",
                   help="take the files whose relative path matches (repeatable; the last matching rule wins; * stays "
                        "within a directory, ** crosses them; a pattern without / matches the file name)")
    d.add_argument("--exclude", action=_FilterAction, dest="filters", metavar="GLOB",
                   help="leave out the files whose relative path matches (repeatable; the last matching rule wins)")
    d.add_argument("--no-follow-symlinks", action="store_true",
                   help="skip symbolic links (default: follow them, loops detected)")
    d.add_argument("--skip-existing", action="store_true",
                   help="skip a file whose key holds an object of the same size and checksum")
    d.add_argument("--fail-fast", action="store_true", help="stop at the first file that fails")
    d.add_argument("--put-threads", type=int, default=8, metavar="N",
                   help="small files each worker sends at once (default 8)")
    o = p.add_argument_group("object")
    o.add_argument("--content-type", help="default: guessed from the file name")
    o.add_argument("--metadata", action="append", default=[], metavar="K=V", help="user metadata (repeatable)")
    o.add_argument("--storage-class")
    o.add_argument("--sse", choices=["AES256", "aws:kms", "aws:kms:dsse"], help="server-side encryption")
    o.add_argument("--sse-kms-key-id")
    o.add_argument("--no-overwrite", action="store_true", help="refuse if the key already exists")
    r = p.add_argument_group("output")
    r.add_argument("--progress", choices=["auto", "bar", "plain", "json", "none"], default="auto",
                   help="auto: a bar on a terminal, plain lines otherwise; json: events on stdout")
    r.add_argument("--api-url", metavar="URL",
                   help="report progress to this API server (default: MPUPLOAD_API_URL, else mpupload login's)")
    r.add_argument("--no-report", action="store_true", help="do not report progress to an API server")
    r.add_argument("--report-interval", type=float, default=REPORT_INTERVAL_S, metavar="SECONDS",
                   help=f"seconds between progress reports (default {REPORT_INTERVAL_S:g})")
    r.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    r.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    p.set_defaults(func=run)


def resume_command(args: argparse.Namespace, argv: list[str]) -> str:
    """The exact command that resumes this upload: the same arguments, absolute sources, ``--resume``."""
    words = list(argv)
    sources = args.source if isinstance(args.source, list) else [args.source]
    for source in sources:
        if source in words:
            words[words.index(source)] = os.path.abspath(source)
    if "--resume" not in words:
        words.append("--resume")
    return shlex.join(["mpupload", *words])


def cleanup_command(args: argparse.Namespace, bucket: str, key: str) -> str:
    """The command that aborts one multipart upload of this destination; ``{upload_id}`` stands for its id."""
    store: list[str] = []
    for flag, value in (("--endpoint-url", effective_endpoint(args.endpoint_url)), ("--region", args.region),
                        ("--profile", args.profile), ("--ca-bundle", args.ca_bundle),
                        ("--addressing-style", args.addressing_style)):
        if value:
            store += [flag, value]
    if args.no_verify_ssl:
        store.append("--no-verify-ssl")
    tail = f" {shlex.join(store)}" if store else ""
    return f"{shlex.join(['mpupload', 'cleanup', f's3://{bucket}/{key}'])} --upload-id {{upload_id}}{tail}"


def build_options(args: argparse.Namespace, bucket: str = "", key: str = "") -> UploadOptions:
    part_size = None
    if args.part_size is not None:
        try:
            part_size = parse_size(args.part_size)
        except ValueError as exc:
            raise E.UsageError(f"--part-size: {exc}") from None
    max_bandwidth = None
    if args.max_bandwidth is not None:
        try:
            max_bandwidth = parse_rate(args.max_bandwidth)
        except ValueError as exc:
            raise E.UsageError(f"--max-bandwidth: {exc}") from None
    if args.sse_kms_key_id and args.sse not in (None, "aws:kms", "aws:kms:dsse"):
        raise E.UsageError("--sse-kms-key-id needs --sse aws:kms (or no --sse)")
    return UploadOptions(
        part_size=part_size,
        workers=args.workers,
        max_bandwidth=max_bandwidth,
        checksum=ChecksumMode(args.checksum),
        keep_on_interrupt=args.keep_on_interrupt,
        abort_on_interrupt=args.abort_on_interrupt,
        verify=VerifyMode(args.verify),
        content_type=args.content_type,
        metadata=_metadata(args.metadata),
        storage_class=args.storage_class,
        sse=args.sse,
        sse_kms_key_id=args.sse_kms_key_id,
        no_overwrite=args.no_overwrite,
        resume=args.resume,
        resume_command=resume_command(args, sys.argv[1:]),
        cluster=args.cluster or os.environ.get("MPUPLOAD_CLUSTER") or None,
        cluster_pass_credentials=args.cluster_pass_credentials,
        cleanup_command=cleanup_command(args, bucket, key) if bucket else None,
    )


DATASET_FLAGS = (("filters", "--include/--exclude"), ("no_follow_symlinks", "--no-follow-symlinks"),
                 ("skip_existing", "--skip-existing"), ("fail_fast", "--fail-fast"))


def is_dataset(args: argparse.Namespace) -> bool:
    """A directory run: several sources, a directory, or a destination that is a PREFIX ending in /."""
    sources = args.source
    return len(sources) > 1 or os.path.isdir(sources[0]) or bool(
        args.destination.startswith("s3://") and args.destination.endswith("/") and any(
            getattr(args, flag, None) for flag, _ in DATASET_FLAGS))


def parse_s3_prefix(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` -> (bucket, prefix); the prefix is empty or ends in ``/``."""
    if not url.startswith("s3://"):
        raise E.UsageError(f"destination {url!r} is not an S3 URL: use s3://BUCKET/PREFIX/")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise E.UsageError(f"destination {url!r} has no bucket: use s3://BUCKET/PREFIX/")
    if any(c.isspace() for c in bucket) or len(bucket) > 255:
        raise E.UsageError(f"{bucket!r} is not a valid bucket name")
    if prefix and not prefix.endswith("/"):
        raise E.UsageError(f"a directory, or several sources, go under a PREFIX: end the destination with / "
                           f"(s3://{bucket}/{prefix}/)")
    return bucket, prefix


def upload_store(args: argparse.Namespace) -> StoreConfig:
    """The store's settings from the options, ``--stall-timeout`` applied."""
    store = build_store(args)
    if args.stall_timeout is not None:
        if args.stall_timeout <= 0:
            raise E.UsageError("--stall-timeout must be a positive number of seconds")
        # urllib3 bounds a body send by the connect timeout and the wait for the answer by the read timeout
        store = dataclasses.replace(store, read_timeout_s=args.stall_timeout,
                                    connect_timeout_s=min(store.connect_timeout_s, args.stall_timeout))
    return store


def run(args: argparse.Namespace) -> int:
    from .brokered import is_brokered

    if is_dataset(args) or (is_brokered(args.destination) and args.destination.endswith("/")
                            and any(getattr(args, flag, None) for flag, _ in DATASET_FLAGS)):
        from .dataset import run_dataset

        return run_dataset(args)
    for flag, name in DATASET_FLAGS:
        if getattr(args, flag, None):
            raise E.UsageError(f"{name} is for directory uploads (a directory or several sources to s3://BUCKET/"
                               "PREFIX/)")
    args.source = args.source[0]
    return run_file(args)


def run_file(args: argparse.Namespace) -> int:
    from ..api import prepare_upload
    from ..sinks import make_sinks
    from .brokered import brokered_destination, is_brokered
    from .reporting import check_reporting, start_reporting

    brokered = is_brokered(args.destination)
    store: StoreConfig | Store
    if brokered:
        store, bucket, key, _ = brokered_destination(args)
        options = build_options(args)  # no cleanup command: the server aborts what it brokered
    else:
        bucket, key = parse_s3_url(args.destination, args.source)
        options = build_options(args, bucket, key)
        store = upload_store(args)
    token = CancelToken()
    push: PushSink | None = None
    prepared: PreparedUpload | None = None
    try:
        with cancel_on_signals(token, quiet=args.quiet):
            # bad input first (exit 2), then the API token (exit 3), before the store sees anything
            reporting: list[Reporting | None] = []
            prepared = prepare_upload(args.source, bucket, key, store=store, options=options, cancel=token,
                                      before_store=lambda source, plan: reporting.append(check_reporting(args)))
            if reporting and reporting[0] is not None:  # registered from the final plan (see .reporting)
                push = start_reporting(args, reporting[0], bucket=bucket, key=key, source=prepared.source,
                                       plan=prepared.plan, record_id=prepared.record_id, options=options,
                                       token=token, brokered=brokered)
            sinks: list[Sink] = make_sinks(args.progress, stdout=sys.stdout, stderr=sys.stderr, quiet=args.quiet)
            if push is not None:
                sinks.append(push)
            settle_heap()
            try:
                prepared.run(sinks, upload_id=push.record_id if push is not None else None)
            except BaseException as exc:
                if push is not None:  # ended before a final snapshot (e.g. a missing bucket): say so
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
