"""``mpupload cleanup s3://BUCKET[/PREFIX]`` — abort orphaned multipart uploads and drop stale journals.

Lists the incomplete multipart uploads whose key starts with PREFIX, aborts those idle for at least
``--older-than`` (default 24h, so nobody's live upload is touched by accident), removes this machine's resume
journals whose upload no longer exists, and warns when the bucket has no lifecycle rule that aborts
incomplete uploads by itself. ``--dry-run`` only shows what would happen.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import enum
import json
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any

from .. import errors as E
from .. import housekeeping as hk
from ..journal import Journal, list_journals
from ..storage import Boto3Store, Store, StoreConfig, classify
from ..storage.config import effective_endpoint
from ..units import format_bytes
from .errors import EXIT_OK
from .options import add_store_arguments, build_store, parse_duration

__all__ = ["add_parser", "parse_bucket_url", "run", "lifecycle_command"]

#: days after which the suggested lifecycle rule aborts an incomplete upload
LIFECYCLE_DAYS = 7


class Action(enum.Enum):
    ABORT = "abort"
    WOULD_ABORT = "would abort"
    KEEP = "keep"


@dataclass
class _Row:
    orphan: hk.Orphan
    action: Action
    reason: str = ""
    #: "aborted", "already gone", "failed: ..." once acted on
    result: str | None = None

    @property
    def action_text(self) -> str:
        return f"{self.action.value} ({self.reason})" if self.reason else self.action.value


@dataclass
class _Report:
    """Everything the command found and did: printed as text, or as one JSON document."""

    bucket: str
    prefix: str
    older_than_s: float
    dry_run: bool
    rows: list[_Row] = field(default_factory=list)
    listing_complete: bool = True
    journals_stale: list[Journal] = field(default_factory=list)
    journals_removed: list[Journal] = field(default_factory=list)
    journals_in_use: list[Journal] = field(default_factory=list)
    lifecycle_rule: bool | None = None
    failures: list[tuple[_Row, E.MpuploadError]] = field(default_factory=list)


def parse_bucket_url(url: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` -> (bucket, prefix); the prefix may be empty."""
    if not url.startswith("s3://"):
        raise E.UsageError(f"{url!r} is not an S3 URL: use s3://BUCKET or s3://BUCKET/PREFIX")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise E.UsageError(f"{url!r} has no bucket: use s3://BUCKET or s3://BUCKET/PREFIX")
    if any(c.isspace() for c in bucket) or len(bucket) > 255:
        raise E.UsageError(f"{bucket!r} is not a valid bucket name: use s3://BUCKET or s3://BUCKET/PREFIX")
    if len(prefix.encode()) > 1024:
        raise E.UsageError("the prefix is longer than S3's key limit of 1024 bytes")
    return bucket, prefix


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cleanup", help="abort orphaned multipart uploads and remove stale resume journals",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="s3://BUCKET[/PREFIX]", help="where to look (a plain key prefix)")
    p.add_argument("--older-than", default="24h", metavar="DURATION",
                   help="abort uploads idle for at least this long, e.g. 0s, 30m, 24h, 7d (default: 24h)")
    p.add_argument("--dry-run", action="store_true", help="show what would be done; change nothing")
    p.add_argument("--upload-id", metavar="ID",
                   help="abort exactly this multipart upload of the key s3://BUCKET/KEY, whatever its age (what "
                        "mpupload upload prints when it could not abort one)")
    add_store_arguments(p)
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    o.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    o.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    p.set_defaults(func=run)


# -- deciding and acting ----------------------------------------------------------------------------------------
def _decide(orphan: hk.Orphan, older_than_s: float, older_than_text: str, dry_run: bool) -> _Row:
    if orphan.idle_s >= older_than_s:
        return _Row(orphan, Action.WOULD_ABORT if dry_run else Action.ABORT)
    if orphan.age_s < older_than_s:
        return _Row(orphan, Action.KEEP, f"younger than {older_than_text}")
    return _Row(orphan, Action.KEEP, f"a part was uploaded within {older_than_text}")


def _abort_all(store: Store, report: _Report) -> None:
    for row in report.rows:
        if row.action is not Action.ABORT:
            continue
        try:
            row.result = "aborted" if hk.abort(store, report.bucket, row.orphan) else "already gone"
        except E.MpuploadError as exc:
            row.result = f"failed: {exc}"
            report.failures.append((row, exc))


def _live_upload_ids(report: _Report) -> set[str]:
    """The uploads still on the store once this run is done (in a dry run: as if it had aborted them)."""
    gone = {Action.WOULD_ABORT} if report.dry_run else set()
    return {row.orphan.upload_id for row in report.rows
            if row.action not in gone and row.result not in ("aborted", "already gone")}


def _handle_journals(report: _Report, journals: list[Journal], endpoint: str | None) -> None:
    if not report.listing_complete:
        return  # an upload missing from a partial listing may well be alive
    report.journals_stale = hk.stale_journals(journals, report.bucket, report.prefix, endpoint,
                                              _live_upload_ids(report))
    if report.dry_run:
        return
    for journal in report.journals_stale:
        (report.journals_removed if hk.remove_journal(journal) else report.journals_in_use).append(journal)


def _read_journals() -> list[Journal]:
    return [entry for entry in list_journals() if isinstance(entry, Journal)]


def _open_store(config: StoreConfig, bucket: str, endpoint: str | None) -> Store:
    """The store, its client built at once: a bad profile or configuration is reported before anything else."""
    store = Boto3Store(config)
    try:
        store.connect()
    except Exception as exc:  # noqa: BLE001 - mapped to the error tree
        raise classify(exc, bucket=bucket, endpoint=endpoint) from exc
    return store


def run(args: argparse.Namespace) -> int:
    bucket, prefix = parse_bucket_url(args.target)
    older_than_s = parse_duration(args.older_than)
    config = build_store(args)
    endpoint = effective_endpoint(config.endpoint_url)
    store = _open_store(config, bucket, endpoint)
    journals = _read_journals()  # before listing: an upload created after the listing has no journal here yet
    report = _Report(bucket, prefix, older_than_s, args.dry_run)
    now = _dt.datetime.now(_dt.UTC)
    incomplete: hk.ListingIncomplete | None = None
    try:
        orphans = hk.find_orphans(store, bucket, prefix, now)
    except hk.ListingIncomplete as exc:
        incomplete, orphans, report.listing_complete = exc, exc.partial, False
    if args.upload_id:  # exactly one upload of exactly this key, whatever its age
        orphans = [o for o in orphans if o.key == prefix and o.upload_id == args.upload_id]
        older_than_s, args.older_than = 0.0, "0s"
        if not orphans and not args.quiet:
            print(f"multipart upload {args.upload_id} of s3://{bucket}/{prefix} is not on the store (already gone)")
    report.rows = [_decide(o, older_than_s, args.older_than.strip(), args.dry_run) for o in orphans]
    text = not args.json and not args.quiet
    if text:
        _print_table(report)
    _abort_all(store, report)
    _handle_journals(report, journals, endpoint)
    report.lifecycle_rule = hk.has_abort_lifecycle_rule(store, bucket)
    if args.json:
        print(json.dumps(_as_json(report), indent=2))
    elif text:
        _print_summary(report)
    if not args.quiet:
        _print_lifecycle(report, endpoint)
    _raise_for_failures(report, incomplete)
    return EXIT_OK


def _raise_for_failures(report: _Report, incomplete: hk.ListingIncomplete | None) -> None:
    if report.failures:
        asked = sum(1 for row in report.rows if row.action is Action.ABORT)
        first_row, first = report.failures[0]
        message = (f"could not abort {len(report.failures)} of {asked} multipart uploads (first: "
                   f"s3://{report.bucket}/{first_row.orphan.key}: {first})")
        if all(isinstance(exc, E.AuthError) for _, exc in report.failures):
            raise E.AuthError(message + "; check that the credentials may abort multipart uploads",
                              bucket=report.bucket)
        raise E.UploadFailed(message + "; run the same command again", bucket=report.bucket)
    if incomplete is not None:
        raise incomplete


# -- output -----------------------------------------------------------------------------------------------------
def _short_id(upload_id: str) -> str:
    return upload_id if len(upload_id) <= 16 else f"{upload_id[:8]}...{upload_id[-4:]}"


def _when(stamp: _dt.datetime) -> str:
    return stamp.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _where(report: _Report) -> str:
    return f"s3://{report.bucket}/{report.prefix}"


def _print_table(report: _Report) -> None:
    if not report.rows:
        print(f"no incomplete multipart uploads in {_where(report)}")
        return
    header = ("KEY", "UPLOAD ID", "INITIATED", "AGE", "SIZE", "PARTS", "ACTION")
    lines = [header] + [
        (r.orphan.key, _short_id(r.orphan.upload_id), _when(r.orphan.initiated), hk.format_age(r.orphan.age_s),
         "-" if r.orphan.size is None else format_bytes(r.orphan.size),
         "-" if r.orphan.parts is None else str(r.orphan.parts), r.action_text)
        for r in report.rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    print(f"incomplete multipart uploads in {_where(report)}:")
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _print_summary(report: _Report) -> None:
    acted = [r for r in report.rows if r.action in (Action.ABORT, Action.WOULD_ABORT)]
    kept = len(report.rows) - len(acted)
    size = sum(r.orphan.size or 0 for r in acted)
    if report.dry_run:
        print(f"dry run: would abort {_plural(len(acted), 'upload')} ({format_bytes(size)}), "
              f"keep {kept}; nothing was changed")
    elif report.rows:
        done = sum(1 for r in acted if r.result in ("aborted", "already gone"))
        print(f"aborted {done} of {_plural(len(acted), 'upload')} ({format_bytes(size)}), kept {kept}")
    for row, exc in report.failures:
        print(f"mpupload: error: could not abort s3://{report.bucket}/{row.orphan.key} "
              f"(upload {row.orphan.upload_id}): {exc}", file=sys.stderr)
    _print_journals(report)


def _print_journals(report: _Report) -> None:
    if not report.listing_complete:
        print("local journals left alone: the store's listing was incomplete")
    elif report.dry_run:
        print(f"would remove {_plural(len(report.journals_stale), 'stale local journal')}"
              + (":" if report.journals_stale else ""))
        for j in report.journals_stale:
            print(f"  {j.path} (s3://{j.bucket}/{j.key}, upload {j.upload_id})")
    else:
        print(f"removed {_plural(len(report.journals_removed), 'stale local journal')}")
        for j in report.journals_in_use:
            print(f"  kept {j.path}: a run is using it or it changed meanwhile")


def lifecycle_command(bucket: str, endpoint: str | None) -> str:
    """The AWS CLI command that adds a rule aborting incomplete uploads after :data:`LIFECYCLE_DAYS` days."""
    rule = {"Rules": [{"ID": "abort-incomplete-multipart-uploads", "Status": "Enabled", "Filter": {},
                       "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": LIFECYCLE_DAYS}}]}
    argv = ["aws", "s3api", "put-bucket-lifecycle-configuration", "--bucket", bucket,
            "--lifecycle-configuration", json.dumps(rule, separators=(",", ":"))]
    if endpoint:
        argv += ["--endpoint-url", endpoint]
    return shlex.join(argv)


def _print_lifecycle(report: _Report, endpoint: str | None) -> None:
    if report.lifecycle_rule is False:
        print(f"mpupload: warning: bucket {report.bucket} has no lifecycle rule that aborts incomplete multipart "
              "uploads, so orphaned parts are billed until someone aborts them; add one (this replaces the "
              f"bucket's lifecycle rules: merge it into any it has): {lifecycle_command(report.bucket, endpoint)}",
              file=sys.stderr)
    elif report.lifecycle_rule is None:
        print(f"mpupload: note: could not read the lifecycle rules of bucket {report.bucket} (the store does not "
              "support it or denies access): run mpupload cleanup regularly, or ask the store's operator to expire "
              "incomplete multipart uploads", file=sys.stderr)


def _iso(stamp: _dt.datetime | None) -> str | None:
    return None if stamp is None else stamp.astimezone(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _journal_json(j: Journal) -> dict[str, Any]:
    return {"path": str(j.path), "destination": f"s3://{j.bucket}/{j.key}", "upload_id": j.upload_id}


def _as_json(report: _Report) -> dict[str, Any]:
    return {
        "bucket": report.bucket,
        "prefix": report.prefix,
        "older_than_seconds": report.older_than_s,
        "dry_run": report.dry_run,
        "listing_complete": report.listing_complete,
        "uploads": [
            {"key": r.orphan.key, "upload_id": r.orphan.upload_id, "initiated": _iso(r.orphan.initiated),
             "age_seconds": r.orphan.age_s, "idle_seconds": r.orphan.idle_s,
             "last_part_at": _iso(r.orphan.last_part_at), "size": r.orphan.size, "parts": r.orphan.parts,
             "action": r.action.value, "reason": r.reason or None, "result": r.result}
            for r in report.rows
        ],
        "journals": {
            "stale": [_journal_json(j) for j in report.journals_stale],
            "removed": [_journal_json(j) for j in report.journals_removed],
            "in_use": [_journal_json(j) for j in report.journals_in_use],
        },
        "lifecycle_abort_rule": report.lifecycle_rule,
    }
