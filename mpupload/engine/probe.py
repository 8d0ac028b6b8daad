"""What a store really checks, asked once: the probe, and the integrity plan it leads to.

Stores differ from AWS (``docs/stores.md``): Ceph RGW and moto accept a wrong ``x-amz-checksum-*`` header; moto
also accepts a wrong ``Content-MD5``; under SSE-KMS (asked for, or the bucket's default) and on some
S3-compatible stores an ETag is not the MD5 of the data; some stores check nothing at all and answer ETags that
are random. Guessing any of this from the options (``--sse``) is wrong in both directions, so the store is
asked, in a throwaway multipart upload of the same key with the same object options, aborted right away (a
part left in the real upload would break CompleteMultipartUpload on stores that insist on every uploaded
part being listed, as Ceph RGW does):

1. with a checksum algorithm: a tiny part with a deliberately **wrong** checksum. Refused: the store checks
   checksums (AWS). Accepted: it does not, and the answer's ETag says whether ETags are MD5s;
2. when that did not tell (refused, or ``--checksum md5``) and it matters: the same part, correct, to read
   its ETag;
3. when ETags are not MD5s and checksums are not checked: a part with a wrong ``Content-MD5``. Refused: the
   store checks Content-MD5, which is then sent with every part.

The answer (:class:`StoreTraits`) is kept for the process, per store, bucket and object options, so a run
asks once. :func:`integrity_plan` turns it into what every part carries and how each part is checked.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import errors as E
from ..checksums import Algorithm, b64, new_hasher
from ..options import ChecksumMode
from ..storage import Store
from ..storage.errors import CHECKSUM_REJECTED, classify, error_code, error_message
from ..storage.port import Checksum

__all__ = ["StoreTraits", "IntegrityPlan", "probe_store", "integrity_plan", "PROBE_BODY", "clear_cache"]

log = logging.getLogger("mpupload")

PROBE_BODY = b"mpupload store probe: what does this store check?"
_KMS = ("aws:kms", "aws:kms:dsse")


@dataclass(frozen=True)
class StoreTraits:
    #: the store refuses a part whose ``x-amz-checksum-<algorithm>`` does not match its bytes
    validates_checksum: bool
    #: part ETags are the hex MD5 of the bytes the store got (``None``: not asked, it did not matter)
    etag_is_md5: bool | None
    #: the store refuses a part whose ``Content-MD5`` does not match (``None``: not asked)
    validates_content_md5: bool | None
    #: the ``x-amz-server-side-encryption`` the store answered, if any
    encryption: str | None = None


@dataclass(frozen=True)
class IntegrityPlan:
    """What each part carries and how the store's answer for it is checked."""

    #: the checksum header sent with every part (``None``: none)
    algorithm: Algorithm | None
    #: compute each part's MD5 and send it as ``Content-MD5``
    content_md5: bool
    #: compare each part's ETag with its MD5 (the store's ETags are MD5s)
    etag_is_md5: bool
    #: what checked every part on arrival: the algorithm's name (the store validated it), ``"md5"`` (the store
    #: validated Content-MD5, or its ETag is the MD5 we computed), or ``None`` (nothing did)
    parts_checked: str | None
    #: the store validates checksum headers: its object checksum is evidence, a mismatch is corruption
    validates_checksum: bool
    #: why the store offers nothing to check an object against (``None``: it does); said once, at the end
    warning: str | None = None


_CACHE: dict[Any, StoreTraits] = {}


def clear_cache() -> None:
    _CACHE.clear()


def _rejected(exc: BaseException, what: str) -> bool:
    code = error_code(exc) or ""
    message = error_message(exc).lower()
    return code in CHECKSUM_REJECTED or (code == "InvalidRequest" and what in message)


def _etag(answer: dict[str, Any]) -> str:
    return str(answer.get("ETag") or "").strip('"').lower()


def probe_store(
    store: Store,
    *,
    bucket: str,
    key: str,
    create_args: dict[str, Any],
    algorithm: Algorithm | None,
    cache_key: Any,
    abort: Callable[[str], bool],
    cancelled: Callable[[], bool],
    endpoint: str | None = None,
) -> tuple[StoreTraits, str | None]:
    """Ask the store (or the cache); returns the traits and the probe's upload id if its abort failed.

    ``create_args`` are the object's CreateMultipartUpload arguments (encryption included: it changes ETags);
    ``abort`` aborts an upload id and confirms it is gone; a cancel between steps ends the probe early, with
    what was learned so far (the caller then stops).
    """
    key_ = (cache_key, algorithm)
    if key_ in _CACHE:
        return _CACHE[key_], None
    try:
        probe_id = store.create_multipart_upload(bucket, key, algorithm=algorithm, object_args=create_args)
    except Exception as exc:  # noqa: BLE001
        raise classify(exc, bucket=bucket, key=key, endpoint=endpoint) from exc
    body = PROBE_BODY
    md5 = hashlib.md5(body)  # noqa: S324 - S3's Content-MD5, not security
    right = new_hasher(algorithm) if algorithm is not None else None
    if right is not None:
        right.update(body)
    validates: bool = False
    etag_is_md5: bool | None = None
    content_md5: bool | None = None
    encryption: str | None = None

    def send(number: int, checksum: Checksum | None = None, content_md5: str | None = None) -> dict[str, Any] | None:
        """The part's answer; ``None`` when the store refused it as a bad digest."""
        nonlocal encryption
        try:
            answer = store.upload_part(bucket, key, probe_id, number, body, content_length=len(body),
                                       checksum=checksum, content_md5=content_md5)
        except Exception as exc:  # noqa: BLE001
            if _rejected(exc, "checksum") or _rejected(exc, "md5") or _rejected(exc, "digest"):
                return None
            err = classify(exc, bucket=bucket, key=key, upload_id=probe_id, endpoint=endpoint)
            if isinstance(err, (E.AuthError, E.BucketNotFound, E.StoreUnreachable, E.UsageError)):
                raise err from exc
            log.debug("the store probe's part %d was answered %s: taken as accepted", number, error_code(exc))
            return {}
        encryption = encryption or answer.get("ServerSideEncryption")
        return answer

    left: str | None = None
    # part numbers from the top of S3's range: nothing a fault injected into "part 1" or "part 2" of an upload
    # (tests do that) or a store's per-number quirk can confuse with the upload's own parts
    numbers = iter(range(10_000, 9_990, -1))
    try:
        if algorithm is not None and right is not None:
            wrong = new_hasher(algorithm)
            wrong.update(b"not the body")
            answer = send(next(numbers), checksum=Checksum(algorithm, b64(wrong.digest())))
            validates = answer is None
            if answer:
                etag_is_md5 = _etag(answer) == md5.hexdigest()
        tries = 0
        while not etag_is_md5 and not validates and tries < 2 and not cancelled():
            # an ETag that is not the MD5 is asked twice: a body damaged in transit must not pass for a store
            # whose ETags are not MD5s
            tries += 1
            checksum = Checksum(algorithm, b64(right.digest())) if algorithm is not None and right is not None \
                else None
            answer = send(next(numbers), checksum=checksum, content_md5=b64(md5.digest()))
            etag_is_md5 = bool(answer) and _etag(answer or {}) == md5.hexdigest()
        if etag_is_md5 is False and not validates and not cancelled():
            checksum = Checksum(algorithm, b64(right.digest())) if algorithm is not None and right is not None \
                else None
            wrong_md5 = b64(hashlib.md5(b"not the body").digest())  # noqa: S324
            content_md5 = send(next(numbers), checksum=checksum, content_md5=wrong_md5) is None
    finally:
        if not abort(probe_id):
            left = probe_id
    traits = StoreTraits(validates, etag_is_md5, content_md5, encryption)
    log.debug("store probe of s3://%s: %s", bucket, traits)
    if not cancelled():
        _CACHE[key_] = traits
    return traits, left


def integrity_plan(mode: ChecksumMode, algorithm: Algorithm | None, traits: StoreTraits | None) -> IntegrityPlan:
    """What every part carries and what checks it, from the ``--checksum`` mode and the store's traits."""
    if mode is ChecksumMode.NONE or traits is None:
        return IntegrityPlan(None, False, False, None, False)
    if algorithm is not None and traits.validates_checksum:
        return IntegrityPlan(algorithm, False, False, algorithm.value, True)
    if traits.etag_is_md5:
        return IntegrityPlan(algorithm, True, True, "md5", False)
    if traits.validates_content_md5:
        return IntegrityPlan(algorithm, True, False, "md5", False)
    what = "neither checksums nor Content-MD5" if algorithm is not None else "no Content-MD5"
    return IntegrityPlan(algorithm, False, False, None, False,
                         warning=f"this store checks {what}, and its ETags are not MD5s")


def etag_is_md5_answer(answer: dict[str, Any]) -> bool | None:
    """What an answer's own headers say about its ETag: ``False`` under SSE-KMS or SSE-C (never an MD5),
    ``None`` when they do not tell."""
    if str(answer.get("ServerSideEncryption") or "") in _KMS or answer.get("SSECustomerAlgorithm"):
        return False
    return None
