"""Housekeeping: orphaned multipart uploads on the store, and resume journals on this machine.

An interrupted run leaves a multipart upload on the store (its parts are billed until someone aborts it)
and, when it can be resumed, a journal in the state directory (:mod:`mpupload.journal`). This module finds
both and decides what is stale; it prints nothing and parses no command line (``mpupload cleanup`` and
``mpupload resumable`` do that).

* :func:`find_orphans` lists the incomplete multipart uploads under a prefix (ListMultipartUploads) with
  their age, size and part count (ListParts). Both listings are paginated with a hard bound on the number
  of pages, so a store that always answers "truncated" cannot keep us looping: the bound raises
  :class:`ListingIncomplete`, which carries what was listed so far.
* :func:`abort` aborts one upload and confirms it is gone; an upload that is already gone counts as done.
* :func:`has_abort_lifecycle_rule` tells whether the bucket expires incomplete uploads by itself.
* :func:`stale_journals` picks the local journals whose upload no longer exists on the store, and
  :func:`remove_journal` removes one safely (not while a run holds it, not when it changed meanwhile).
* :func:`resumable_summary` and :func:`resume_command` describe a journal for people and scripts.

A note on age: an upload is *idle* since its newest part was uploaded (or since it was initiated when it has
no parts). ``cleanup`` decides on the idle time, so a long upload, or one resumed today, is never mistaken
for an orphan because it was initiated long ago. (moto 5.2.5 also reports every upload as initiated on
2010-11-10; the parts' times are real.)
"""

from __future__ import annotations

import datetime as _dt
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import errors as E
from .journal import CorruptJournal, Journal, JournalLock, load
from .storage import Store, classify
from .storage.errors import error_code
from .storage.port import ABORT_ROUNDS, AbortOutcome, ListedUpload, ListingStuck, as_utc

__all__ = [
    "MAX_UPLOAD_PAGES", "MAX_PART_PAGES", "Orphan", "ListingIncomplete", "find_orphans",
    "abort", "has_abort_lifecycle_rule", "stale_journals", "remove_journal", "resumable_summary",
    "resume_command", "same_endpoint", "format_age",
]

#: ListMultipartUploads pages of up to 1000 uploads each: a million uploads under one prefix is plenty
MAX_UPLOAD_PAGES = 1000
#: ListParts pages of up to 1000 parts each: S3 allows at most 10,000 parts per upload
MAX_PART_PAGES = 11


@dataclass(frozen=True)
class Orphan:
    """An incomplete multipart upload found on the store."""

    key: str
    upload_id: str
    initiated: _dt.datetime
    #: seconds since ``initiated`` (never negative, even when the store's clock is ahead)
    age_s: float
    #: bytes held in its parts; ``None`` when ListParts failed
    size: int | None
    #: number of parts; ``None`` when ListParts failed
    parts: int | None
    #: when its newest part was uploaded; ``None`` without parts or when ListParts failed
    last_part_at: _dt.datetime | None = None
    #: seconds since the last activity: the newest part, else the initiation
    idle_s: float = 0.0


class ListingIncomplete(E.UploadFailed):
    """The store kept answering "truncated" past the page bound; ``partial`` holds what was listed."""

    def __init__(self, message: str, *, bucket: str, partial: list[Orphan]) -> None:
        super().__init__(message, bucket=bucket)
        self.partial = partial


def _seconds_between(earlier: _dt.datetime, later: _dt.datetime) -> float:
    return max(0.0, (later - earlier).total_seconds())


@dataclass(frozen=True)
class _PartsSummary:
    size: int
    count: int
    last_part_at: _dt.datetime | None


def _parts_summary(store: Store, bucket: str, key: str, upload_id: str,
                   *, max_pages: int = MAX_PART_PAGES) -> _PartsSummary | None:
    """Total size, count and newest time of an upload's parts; ``None`` when ListParts fails or never ends."""
    try:
        listing = store.list_parts(bucket, key, upload_id, max_pages=max_pages)
    except Exception:  # noqa: BLE001 - any failure (a listing that does not end too) only means "size unknown"
        return None
    if listing is None:
        return None
    parts = listing.parts.values()
    stamps = [p.last_modified for p in parts if p.last_modified is not None]
    return _PartsSummary(sum(p.size for p in parts), len(parts), max(stamps) if stamps else None)


def _orphan(store: Store, bucket: str, upload: ListedUpload, now: _dt.datetime) -> Orphan:
    initiated = upload.initiated
    parts = _parts_summary(store, bucket, upload.key, upload.upload_id)
    last = parts.last_part_at if parts else None
    active = max(initiated, last) if last is not None else initiated
    return Orphan(
        key=upload.key,
        upload_id=upload.upload_id,
        initiated=initiated,
        age_s=_seconds_between(initiated, now),
        size=parts.size if parts else None,
        parts=parts.count if parts else None,
        last_part_at=last,
        idle_s=_seconds_between(active, now),
    )


def find_orphans(store: Store, bucket: str, prefix: str, now: _dt.datetime,
                 *, max_pages: int = MAX_UPLOAD_PAGES) -> list[Orphan]:
    """Every incomplete multipart upload whose key starts with ``prefix``, oldest first.

    Raises the classified store error (:class:`~mpupload.errors.BucketNotFound`,
    :class:`~mpupload.errors.AuthError`, ...) when ListMultipartUploads fails, and
    :class:`ListingIncomplete` when the listing does not end within ``max_pages`` pages.
    """
    found: list[Orphan] = []
    try:
        for upload in store.list_uploads(bucket, prefix, max_pages=max_pages):
            found.append(_orphan(store, bucket, upload, now))
    except ListingStuck as stuck:
        raise ListingIncomplete(
            f"the store's list of multipart uploads in s3://{bucket}/{prefix} did not end after {stuck.pages} "
            "page(s) (it keeps answering 'truncated'): narrow the prefix and run the command again",
            bucket=bucket, partial=sorted(found, key=lambda o: (o.initiated, o.key)),
        ) from None
    except Exception as exc:  # noqa: BLE001 - mapped to the error tree
        raise classify(exc, bucket=bucket, endpoint=store.endpoint_url) from exc
    return sorted(found, key=lambda o: (o.initiated, o.key))


def abort(store: Store, bucket: str, orphan: Orphan) -> bool:
    """Abort one upload and confirm it (:meth:`~mpupload.storage.Store.abort_and_confirm`): ``True`` when this
    call aborted it, ``False`` when it was already gone.

    Parts still listed after every abort (a run is still sending parts to the upload) raise
    :class:`~mpupload.errors.UploadFailed`; a check that cannot tell (ListParts denied) counts as aborted, since
    the store accepted the abort. Any other failure raises the classified store error.
    """
    try:
        outcome = store.abort_and_confirm(bucket, orphan.key, orphan.upload_id)
    except Exception as exc:  # noqa: BLE001 - mapped to the error tree
        raise classify(exc, bucket=bucket, key=orphan.key, upload_id=orphan.upload_id) from exc
    if outcome is AbortOutcome.PARTS_REMAIN:
        raise E.UploadFailed(
            f"the store still lists parts of the multipart upload {orphan.upload_id} after {ABORT_ROUNDS} aborts: "
            "a run is still sending parts to it; stop it, then run the same command again",
            bucket=bucket, key=orphan.key, upload_id=orphan.upload_id)
    return outcome is not AbortOutcome.ALREADY_GONE


def has_abort_lifecycle_rule(store: Store, bucket: str) -> bool | None:
    """Whether an enabled lifecycle rule aborts incomplete multipart uploads.

    ``False`` when the bucket has no lifecycle configuration (or none of its rules does it); ``None`` when the
    store does not support the question or does not allow us to ask it.
    """
    try:
        rules = store.lifecycle_rules(bucket)
    except Exception as exc:  # noqa: BLE001 - sorted below
        code = error_code(exc)
        if code == "NoSuchLifecycleConfiguration":
            return False
        if code == "NoSuchBucket":
            raise classify(exc, bucket=bucket) from exc
        if code is not None:  # NotImplemented, AccessDenied, MethodNotAllowed, ...: the store won't say
            return None
        raise classify(exc, bucket=bucket) from exc
    for rule in rules:
        if rule.get("Status") == "Enabled" and rule.get("AbortIncompleteMultipartUpload"):
            return True
    return False


def format_age(seconds: float | None) -> str:
    """``42`` -> ``'42s'``, ``750`` -> ``'12m'``, ``12000`` -> ``'3h 20m'``, ``190000`` -> ``'2d 4h'``."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m"
    if total < 86400:
        return f"{total // 3600}h {total % 3600 // 60}m"
    return f"{total // 86400}d {total % 86400 // 3600}h"


def _normal_endpoint(endpoint: str | None) -> str:
    if not endpoint:
        return ""
    parts = urlsplit(endpoint.strip())
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"


def same_endpoint(a: str | None, b: str | None) -> bool:
    """Whether two endpoint URLs name the same store (``None`` and ``""`` both mean AWS's default)."""
    return _normal_endpoint(a) == _normal_endpoint(b)


def stale_journals(journals: Iterable[Journal], bucket: str, prefix: str, endpoint: str | None,
                   live_upload_ids: Iterable[str]) -> list[Journal]:
    """The journals for this endpoint and bucket, with a key under ``prefix``, whose upload is not live.

    ``live_upload_ids`` must be every upload the store still holds under ``prefix``, listed *after* the
    journals were read (an upload created later cannot belong to a journal read earlier).
    """
    live = set(live_upload_ids)
    return [
        j for j in journals
        if j.bucket == bucket and j.key.startswith(prefix) and same_endpoint(j.endpoint, endpoint)
        and j.upload_id not in live
    ]


def remove_journal(journal: Journal) -> bool:
    """Remove a stale journal; ``False`` (and nothing removed) when a run holds it or it changed meanwhile."""
    try:
        lock = JournalLock(journal.path).acquire()
    except E.UsageError:
        return False
    try:
        try:
            current = load(journal.path)
        except CorruptJournal:
            return False
        if current is None:
            return True
        if current.upload_id != journal.upload_id:
            return False
        current.remove()
        return True
    finally:
        lock.release()  # the .lock file stays: unlinking it could let two later runs lock different files


def resume_command(journal: Journal) -> str:
    """The shell command that resumes the upload a journal describes."""
    argv = ["mpupload", "upload", journal.source.path, f"s3://{journal.bucket}/{journal.key}", "--resume"]
    if journal.endpoint:
        argv += ["--endpoint-url", journal.endpoint]
    return shlex.join(argv)


def resumable_summary(journal: Journal, now: _dt.datetime) -> dict[str, Any]:
    """A journal as plain data: where from and to, how far, how old, and how to resume it."""
    total = journal.source.size
    done = min(journal.bytes_done, total) if total else journal.bytes_done
    percent = 100.0 * done / total if total else (100.0 if len(journal.parts) >= journal.parts_total else 0.0)
    age_s: float | None
    try:
        age_s = _seconds_between(as_utc(journal.created_at), now)
    except ValueError:
        age_s = None
    return {
        "source": journal.source.path,
        "destination": f"s3://{journal.bucket}/{journal.key}",
        "endpoint": journal.endpoint,
        "upload_id": journal.upload_id,
        "bytes_done": done,
        "total_bytes": total,
        "percent": round(percent, 1),
        "parts_done": len(journal.parts),
        "parts_total": journal.parts_total,
        "created_at": journal.created_at,
        "updated_at": journal.updated_at,
        "age_seconds": age_s,
        "journal": str(journal.path),
        "resume_command": resume_command(journal),
    }
