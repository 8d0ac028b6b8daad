"""Finding what an interrupted upload left, and deciding which parts can be reused.

The journal is a hint; the store decides. ``find_resume`` returns either

* ``None`` — nothing to resume (no journal and no unfinished upload for the key, or it is gone), or
* :class:`AlreadyComplete` — the upload is gone but an object of the expected size is at the key (perhaps a
  crash during CompleteMultipartUpload); the caller reports it done only once it is shown to be this file, or
* :class:`ResumeState` — the store's upload id, the part size, and the parts the store lists.

A listed part is reused only if its size is the planned size for its number and its ETag (the MD5 of the
part, on stores whose ETags are MD5s) or checksum matches the local bytes: the journal's record of them
when the source's fingerprint is unchanged, otherwise the file is read again (:func:`verify_parts`).

Without a journal the upload's checksum algorithm comes from the store (ListMultipartUploads and ListParts
report it; else the checksums its parts carry): new parts must carry it, and Complete must list it.

Listings are paginated until the store says they are complete. The only bounds are the ones S3 itself sets
(part numbers rise and end at 10,000; keys of uploads rise past the key looked for), so a store with small
pages is listed whole, and one whose marker does not advance cannot keep us looping.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from .. import errors as E
from ..checksums import Algorithm, b64, new_hasher
from ..journal import Journal
from ..plan import MAX_PARTS, UploadPlan, plan_upload
from ..storage import Store
from ..storage.port import ListedPart, ListingStuck
from .counter import CancelFlag
from .reader import digest_range
from .verify import Verdict

__all__ = ["ListedPart", "ResumeState", "AlreadyComplete", "list_parts", "find_resume", "verify_parts",
           "MAX_UPLOAD_PAGES"]

log = logging.getLogger("mpupload")
#: a sanity bound on ListMultipartUploads pages for one key (the listing also stops once it passes the key)
MAX_UPLOAD_PAGES = 10_000


@dataclass
class ResumeState:
    upload_id: str
    plan: UploadPlan
    algorithm: Algorithm | None
    listed: dict[int, ListedPart]
    journal: Journal | None
    #: parts accepted for reuse (number -> listed part); filled by ``verify_parts``
    reusable: dict[int, ListedPart] = field(default_factory=dict)

    @property
    def resumed_bytes(self) -> int:
        return sum(p.size for p in self.reusable.values())


@dataclass
class AlreadyComplete:
    journal: Journal
    #: set once the object is shown to be this file
    verdict: Verdict | None = None


def list_parts(store: Store, bucket: str, key: str, upload_id: str, algorithm: Algorithm | None = None) \
        -> dict[int, ListedPart] | None:
    """Every part the store holds for ``upload_id`` (paginated to the end); ``None`` if the upload is gone."""
    parts, _ = list_parts_and_algorithm(store, bucket, key, upload_id, algorithm)
    return parts


def list_parts_and_algorithm(store: Store, bucket: str, key: str, upload_id: str,
                             algorithm: Algorithm | None = None) -> tuple[dict[int, ListedPart] | None, str | None]:
    """The listed parts (``None``: the upload is gone) and the checksum algorithm the store names for it."""
    try:
        listing = store.list_parts(bucket, key, upload_id, algorithm=algorithm)
    except ListingStuck as exc:
        # a store whose marker does not advance (or that lists past S3's last part number) would loop forever
        raise E.UploadFailed(f"{exc}: it cannot be resumed; run without --resume to start over",
                             upload_id=upload_id) from None
    if listing is None:
        return None, None
    return listing.parts, listing.algorithm


def _newest_upload(store: Store, bucket: str, key: str) -> tuple[str, str | None] | None:
    """The newest unfinished upload of exactly ``key``: its id and the checksum algorithm the store names."""
    newest = store.find_upload(bucket, key, max_pages=MAX_UPLOAD_PAGES)
    return (newest.upload_id, newest.checksum_algorithm) if newest else None


def _algorithm_of(name: str | None) -> Algorithm | None:
    try:
        return Algorithm(name.lower()) if name else None
    except ValueError:
        return None


def find_resume(store: Store, bucket: str, key: str, size: int, plan: UploadPlan, journal: Journal | None) \
        -> ResumeState | AlreadyComplete | None:
    """What the store holds for an interrupted upload of ``size`` bytes to ``s3://bucket/key``."""
    if journal is not None:
        algorithm = _algorithm_of(journal.checksum_algorithm)
        listed = list_parts(store, bucket, key, journal.upload_id, algorithm)
        if listed is None:
            if _object_size(store, bucket, key) == size:
                return AlreadyComplete(journal)
            log.warning("the interrupted multipart upload %s no longer exists on the store", journal.upload_id)
            return None
        resumed_plan = plan_upload(size, part_size=journal.part_size, workers=plan.workers)
        return ResumeState(journal.upload_id, resumed_plan, algorithm, listed, journal)
    newest = _newest_upload(store, bucket, key)
    if newest is None:
        return None
    upload_id, named = newest
    listed, listed_named = list_parts_and_algorithm(store, bucket, key, upload_id, _algorithm_of(named))
    listed = listed or {}
    algorithm = _algorithm_of(named or listed_named)
    part_size = _infer_part_size(listed, size) or plan.part_size
    try:
        resumed_plan = plan_upload(size, part_size=part_size, workers=plan.workers)
    except ValueError:
        log.warning("the unfinished upload %s does not fit this file: it is not resumed", upload_id)
        return None
    return ResumeState(upload_id, resumed_plan, algorithm, listed, None)


def _infer_part_size(listed: dict[int, ListedPart], size: int) -> int | None:
    """The part size of an upload we have no journal for: every part but the file's last has it."""
    if not listed:
        return None
    biggest = max(p.size for p in listed.values())
    if biggest <= 0 or biggest * MAX_PARTS < size:
        return None
    return biggest


def _object_size(store: Store, bucket: str, key: str) -> int | None:
    try:
        return int(store.head_object(bucket, key)["ContentLength"])
    except Exception:  # noqa: BLE001 - absent or unreadable: not complete
        return None


def _md5_like(etag: str) -> bool:
    """An ETag that could be an MD5: 32 hex digits."""
    return len(etag) == 32 and all(c in "0123456789abcdefABCDEF" for c in etag)


def verify_parts(state: ResumeState, path: str, *, trust_journal: bool, etag_is_md5: bool, threads: int,
                 cancel: CancelFlag | None = None) -> None:
    """Fill ``state.reusable`` with the listed parts whose size and digest match the local bytes."""
    plan = state.plan
    candidates: list[ListedPart] = []
    for number, listed in sorted(state.listed.items()):
        if number > plan.parts_total or listed.size != plan.part(number).length:
            continue  # a part of another plan (or a probe part): not ours
        record = state.journal.parts.get(number) if state.journal is not None else None
        if trust_journal and record is not None and record.size == listed.size and (
                (record.etag and record.etag.lower() == listed.etag.lower())
                or (record.checksum is not None and record.checksum == listed.checksum)):
            state.reusable[number] = listed
        else:
            candidates.append(listed)
    if not candidates:
        return
    if not etag_is_md5 and not any(c.checksum or _md5_like(c.etag) for c in candidates):
        log.warning("%d stored parts cannot be checked against the file (no MD5 ETags, no checksums): "
                    "they are uploaded again", len(candidates))
        return

    def check(listed: ListedPart) -> ListedPart | None:
        part = plan.part(listed.number)
        md5 = new_hasher(Algorithm.MD5)
        algo = new_hasher(state.algorithm) if state.algorithm else None
        hashers = [h for h in (md5, algo) if h is not None]
        fd = os.open(path, os.O_RDONLY)
        try:
            digest_range(fd, part.offset, part.length, hashers, cancel=cancel)
        finally:
            os.close(fd)
        if algo is not None and listed.checksum is not None:
            return listed if b64(algo.digest()) == listed.checksum else None
        # an ETag that is the MD5 of the local bytes proves the part, even on a store not known to give MD5 ETags
        # (a brokered upload's: its client cannot probe the store); one that is not is sent again
        if not ((etag_is_md5 or _md5_like(listed.etag)) and md5.digest().hex() == listed.etag.lower()):
            return None
        # a store that lists no checksum for the part (moto keeps none for a bare header): the local one goes
        # with it, so that Complete lists it and the object's composite checksum can be known
        return replace(listed, checksum=b64(algo.digest())) if algo is not None else listed

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="mpupload-verify") as pool:
        for listed, ok in zip(candidates, pool.map(check, candidates)):
            if ok is not None:
                state.reusable[listed.number] = ok
            else:
                log.info("stored part %d does not match the file: it is uploaded again", listed.number)
