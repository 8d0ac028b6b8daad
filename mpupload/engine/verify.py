"""One verification of a stored object against the file: after CompleteMultipartUpload, after a single
PutObject, and for an object an interrupted run may already have completed.

What the store can say about an object, and what each answer is worth:

* its **size** (HeadObject): a different size is corruption, always;
* its **checksum** (``x-amz-checksum-*`` on HeadObject or the upload's answer): on a multipart object the
  composite ``<checksum of the part checksums>-N``. Evidence only where the store validates checksums
  (:class:`~mpupload.engine.probe.StoreTraits`): a store that does not may report what the client sent, or
  compute it another way (moto reports a CRC32 under the CRC32C name). A composite of another shape is no
  evidence either way;
* its **ETag**: ``md5(part md5s)-N`` for a multipart object, the MD5 of the body for a single PUT, on stores
  whose ETags are MD5s. A match proves the object is made of these parts. A mismatch proves nothing: stores
  form multipart ETags in other ways (a format is not corruption), and SSE-KMS ETags are not MD5s;
* its **bytes**, read back (``--verify read-back``): compared part by part with the local checksums. The one
  check that needs nothing from the store but GetObject.

An object this run just wrote (:func:`verify_written`) is deleted only on evidence: a size mismatch, a
composite mismatch on a store that validates checksums, a read-back mismatch. The delete is guarded: only the
version or ETag that was verified is deleted (``VersionId``, else ``If-Match`` after a fresh HEAD), never an
object someone wrote since. An object found at the key of an interrupted upload (:func:`identify`) counts as
this file only when its checksum or ETag matches what the journal recorded for this file's parts, or its bytes
read back equal; otherwise it is not this file, and is never deleted (it may be the previous version).

HeadObject denied (write-only credentials): the upload's own answer (ETag, checksum) is used instead, and the
result says so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .. import errors as E
from ..checksums import Algorithm, boto_checksum_param, composite_checksum, multipart_etag, new_hasher, unb64
from ..storage import Store
from ..storage.errors import classify, error_code
from .counter import CancelFlag
from .reader import CHUNK, digest_range

__all__ = ["Expected", "Verdict", "Evidence", "ObjectAccess", "inspect", "verify_object",
           "read_back", "delete_if_unchanged", "HEAD_DENIED"]

log = logging.getLogger("mpupload")

#: codes with which HeadObject says "you may not read this" (write-only credentials)
HEAD_DENIED = frozenset({"403", "AccessDenied", "Forbidden"})


@dataclass(frozen=True)
class Expected:
    """The object the file makes, as far as this run (or the journal) knows its parts."""

    size: int
    part_size: int
    multipart: bool
    algorithm: Algorithm | None = None
    #: base64 checksum of every part in order (``algorithm``); ``None`` unless all are known
    part_checksums: tuple[str, ...] | None = None
    #: hex MD5 of every part in order; ``None`` unless all are known
    part_md5s: tuple[str, ...] | None = None

    @property
    def parts(self) -> int:
        if not self.multipart:
            return 1
        return max(1, -(-self.size // self.part_size))

    def ranges(self) -> list[tuple[int, int]]:
        if not self.multipart:
            return [(0, self.size)]
        return [(o, min(self.part_size, self.size - o)) for o in range(0, self.size, self.part_size)]

    def checksum(self) -> str | None:
        """The object checksum the store should report: the composite for a multipart object."""
        if self.algorithm is None or self.part_checksums is None:
            return None
        if not self.multipart:
            return self.part_checksums[0]
        return composite_checksum(self.algorithm, (unb64(c) for c in self.part_checksums))

    def etag(self) -> str | None:
        """The ETag an MD5-ETag store gives the object."""
        if self.part_md5s is None:
            return None
        if not self.multipart:
            return self.part_md5s[0]
        return multipart_etag(bytes.fromhex(m) for m in self.part_md5s)


@dataclass(frozen=True)
class Evidence:
    """What the store's answers say, compared with :class:`Expected` (pure: see :func:`inspect`)."""

    #: ``None``: the size was not seen (HeadObject denied)
    size_ok: bool | None
    #: ``match``, ``mismatch`` or ``absent`` (none reported, or of a shape that is not comparable)
    checksum: str
    etag: str
    stored_checksum: str | None
    stored_etag: str


def _stored_checksum(source: Mapping[str, Any], expected: Expected) -> str | None:
    if expected.algorithm is None:
        return None
    value = source.get(boto_checksum_param(expected.algorithm))
    if not value:
        return None
    value = str(value)
    # a multipart object's composite ends with "-N"; anything else is not a value we can compare (seen: a
    # store that reports a checksum of neither the object nor its parts)
    if expected.multipart and not value.endswith(f"-{expected.parts}"):
        log.debug("ignoring the store's object checksum %s: not a composite of %d parts", value, expected.parts)
        return None
    if not expected.multipart and "-" in value:
        return None
    return value


def inspect(head: Mapping[str, Any] | None, answer: Mapping[str, Any], expected: Expected) -> Evidence:
    """Compare the store's answers (HeadObject, else the upload's answer) with what the object should be."""
    source = head if head is not None else answer
    size_ok = None if head is None else int(head.get("ContentLength", -1)) == expected.size
    stored = _stored_checksum(source, expected) or (_stored_checksum(answer, expected) if head is not None else None)
    want = expected.checksum()
    checksum = "absent" if stored is None or want is None else ("match" if stored == want else "mismatch")
    stored_etag = str(source.get("ETag") or answer.get("ETag") or "").strip('"')
    want_etag = expected.etag()
    etag = "absent" if not stored_etag or want_etag is None else (
        "match" if stored_etag.lower() == want_etag else "mismatch")
    return Evidence(size_ok, checksum, etag, stored, stored_etag)


@dataclass
class Verdict:
    #: how the object was verified against the file: an algorithm's name, ``md5``, ``read-back``, ``size-only``
    verified: str
    checksum: str | None
    etag: str
    #: the object's version, when the store keeps versions
    version_id: str | None = None
    #: warnings for the user (one line each)
    notes: list[str] = field(default_factory=list)


class ObjectAccess:
    """The calls a verification makes, on one store: HEAD, a ranged GET, a guarded delete."""

    def __init__(self, store: Store, bucket: str, key: str, endpoint: str | None = None) -> None:
        self.store = store
        self.bucket = bucket
        self.key = key
        self.endpoint = endpoint

    def head(self, version_id: str | None = None) -> dict[str, Any] | None:
        """HeadObject; ``None`` when it is denied (write-only credentials)."""
        try:
            return self.store.head_object(self.bucket, self.key, version_id=version_id, checksum_mode=True)
        except Exception as exc:  # noqa: BLE001
            if (error_code(exc) or "") in HEAD_DENIED:
                return None
            raise classify(exc, bucket=self.bucket, key=self.key, endpoint=self.endpoint) from exc


def delete_if_unchanged(access: ObjectAccess, etag: str, version_id: str | None) -> str | None:
    """Delete the object we verified, and only it; ``None`` when deleted, else why it was left in place."""
    try:
        head = access.head(version_id)
    except E.MpuploadError as exc:
        return f"it could not be looked at again ({exc})"
    if head is None:
        return "HeadObject is denied"
    if str(head.get("ETag") or "").strip('"') != etag:
        return "the key holds another object now (someone wrote it since)"
    try:
        access.store.delete_object(access.bucket, access.key, version_id=version_id, if_match=etag or None)
    except Exception as exc:  # noqa: BLE001
        return f"the delete failed ({error_code(exc) or type(exc).__name__})"
    return None


def _corrupt(access: ObjectAccess, evidence: Evidence, version_id: str | None, what: str) -> E.IntegrityError:
    left = delete_if_unchanged(access, evidence.stored_etag, version_id)
    where = f"s3://{access.bucket}/{access.key}"
    outcome = ("the object was deleted" if left is None else
               f"the object was left in place because {left}: delete it with: aws s3 rm {where}")
    return E.IntegrityError(f"{what}: {outcome}; run the command again", bucket=access.bucket, key=access.key)


def read_back(
    access: ObjectAccess,
    expected: Expected,
    path: str,
    *,
    version_id: str | None = None,
    cancel: CancelFlag | None = None,
    threads: int = 4,
) -> list[int]:
    """Read the object back and compare it part by part with the file; returns the mismatching part numbers.

    Each range is hashed with what is known locally: the parts' checksums (``expected.algorithm``), else their
    MD5s, else CRC32C of the file's range, read again. Stops within a chunk on ``cancel``.
    """
    ranges = expected.ranges()

    def local_digest(index: int, algorithm: Algorithm) -> bytes:
        if algorithm is expected.algorithm and expected.part_checksums is not None:
            return unb64(expected.part_checksums[index])
        if algorithm is Algorithm.MD5 and expected.part_md5s is not None:
            return bytes.fromhex(expected.part_md5s[index])
        hasher = new_hasher(algorithm)
        fd = os.open(path, os.O_RDONLY)
        try:
            offset, length = ranges[index]
            digest_range(fd, offset, length, [hasher], cancel=cancel)
        finally:
            os.close(fd)
        return hasher.digest()

    if expected.algorithm is not None and expected.part_checksums is not None:
        algorithm = expected.algorithm
    elif expected.part_md5s is not None:
        algorithm = Algorithm.MD5
    else:
        algorithm = Algorithm.CRC32C

    def check(index: int) -> bool:
        offset, length = ranges[index]
        try:
            body = access.store.get_object(access.bucket, access.key, version_id=version_id,
                                           byte_range=(offset, offset + length - 1) if length else None)
        except Exception as exc:  # noqa: BLE001
            raise classify(exc, bucket=access.bucket, key=access.key, endpoint=access.endpoint) from exc
        hasher = new_hasher(algorithm)
        got = 0
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    raise E.Cancelled("read-back stopped")
                chunk = body.read(CHUNK)
                if not chunk:
                    break
                got += len(chunk)
                hasher.update(chunk)
        finally:
            body.close()
        return got == length and hasher.digest() == local_digest(index, algorithm)

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(ranges))),
                            thread_name_prefix="mpupload-readback") as pool:
        results = list(pool.map(check, range(len(ranges))))
    return [i + 1 for i, ok in enumerate(results) if not ok]


def verify_object(
    access: ObjectAccess,
    expected: Expected,
    *,
    answer: Mapping[str, Any] | None,
    parts_checked: str | None = None,
    validates_checksum: bool = False,
    read_back_path: str | None = None,
    cancel: CancelFlag | None = None,
    threads: int = 4,
    size_only_reason: str | None = None,
) -> Verdict | None:
    """The one verification of an object at the key against the file, for every way an upload ends.

    * ``answer`` given — the object this run just wrote (the store's answer to CompleteMultipartUpload or
      PutObject): a size or (on a store that validates checksums) checksum that differs is corruption, raised as
      :class:`~mpupload.errors.IntegrityError` (the object is deleted only when that is safe:
      :func:`delete_if_unchanged`); when nothing better is offered, the size alone is accepted with one note.
      ``parts_checked`` says what checked every part on arrival (:class:`~mpupload.engine.probe.IntegrityPlan`).
    * ``answer`` is ``None`` — an object found at the key (an interrupted run completed it, or Complete's answer
      was lost): ``None`` unless it is shown to be *this file* — its composite checksum or ETag equal to those of
      the parts recorded for it, or its bytes read back equal to the file's. A size proves nothing (the previous
      version of a file often has the same size), and nothing is ever deleted.

    ``read_back_path`` asks for ``--verify read-back``; ``size_only_reason`` says why the store offers nothing
    better (in the one note given when only the size could be checked).
    """
    written = answer is not None
    version_id = _version(answer) if answer is not None else None
    head = access.head(version_id)
    notes: list[str] = []
    if head is None:
        if not written:
            log.info("HeadObject is denied: the object at the key cannot be identified")
            return None
        notes.append("HeadObject is denied (write-only credentials?): the object was verified from the store's "
                     "answer to the upload")
    ev = inspect(head, answer or {}, expected)
    where = f"s3://{access.bucket}/{access.key}"
    if not written:
        if not ev.size_ok:
            return None
        assert head is not None
        version_id = _version(head)
    if ev.size_ok is False:
        size = int((head or {}).get("ContentLength", -1))
        raise _corrupt(access, ev, version_id, f"the stored object {where} is {size} bytes, the file {expected.size}")
    if written and ev.checksum == "mismatch":
        assert expected.algorithm is not None
        if validates_checksum:
            raise _corrupt(access, ev, version_id,
                           f"the stored object's {expected.algorithm.value} {ev.stored_checksum} differs from "
                           f"{expected.checksum()}, the file's")
        log.debug("the store's object checksum %s differs from %s; it does not validate checksums: no evidence",
                  ev.stored_checksum, expected.checksum())
    if written and ev.etag == "mismatch":
        log.debug("the object's ETag %s is not %s: another ETag format (not evidence)", ev.stored_etag,
                  expected.etag())
    verified = "size-only"
    if expected.algorithm is not None and (ev.checksum == "match" and (validates_checksum or not written)
                                           or written and parts_checked == expected.algorithm.value):
        verified = expected.algorithm.value
    elif ev.etag == "match" or (written and parts_checked == "md5"):
        verified = "md5"
    if read_back_path is not None and (written or verified == "size-only"):
        bad = read_back(access, expected, read_back_path, version_id=version_id, cancel=cancel, threads=threads)
        if bad and not written:
            return None
        if bad:
            raise _corrupt(access, ev, version_id,
                           f"reading {where} back: part(s) {', '.join(map(str, bad[:10]))} differ from the file")
        verified = "read-back"
    elif verified == "size-only":
        if not written:
            return None
        reason = size_only_reason or "the store offered no checksum to verify against"
        notes.append(f"{reason}: only the object's size was checked (--verify read-back reads the object back "
                     "and compares it with the file)")
    if not written:
        checksum = (f"{expected.algorithm.value}:{ev.stored_checksum}"
                    if ev.checksum == "match" and expected.algorithm
                    else (f"md5:{ev.stored_etag}" if ev.etag == "match" else None))
        return Verdict(verified, checksum, ev.stored_etag, version_id)
    checksum = None
    if expected.algorithm is not None:
        value = ev.stored_checksum if ev.checksum == "match" else expected.checksum()
        checksum = f"{expected.algorithm.value}:{value}" if value else None
    if checksum is None and expected.etag() is not None:
        checksum = f"md5:{expected.etag()}"
    return Verdict(verified, checksum, ev.stored_etag, version_id, notes)


def _version(answer: Mapping[str, Any]) -> str | None:
    """The object's version id; ``None`` when the bucket keeps no versions (some stores answer ``null``)."""
    value = str(answer.get("VersionId") or "")
    return None if value in ("", "null") else value
