"""Brokered uploads (issue 15): the server holds the storage credentials; users hold only their login.

The server creates the multipart upload (or plans one PutObject), signs each part's URL just in time with the
part's checksum (and, on stores that check only that, its Content-MD5) signed in, lists the parts for a resume,
completes and verifies, and aborts. The bytes go from the client straight to the store.

The server loads neither the engine's modules nor the storage adapters at import (``tests/unit/test_wire.py``):
:mod:`mpupload.plan` is imported when a plan is made, and the store by :mod:`.api.broker` when it is used.

The pure parts live here: where a user may write (:func:`confine_key`), the request bodies and their checks, the
plan, the per-user signing limiter. The routes are :mod:`.api.broker`. Every store call goes through a
:class:`~mpupload.storage.port.Store` and is blocking: the routes run them in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .db.models import Upload
from .limits import (
    INT32_MAX,
    INT64_MAX,
    MAX_FILENAME_BYTES,
    MAX_HOST_CHARS,
    MAX_KEY_BYTES,
    InputError,
    check_int,
    check_text,
)

if TYPE_CHECKING:
    from ..plan import UploadPlan

__all__ = ["parse_storage", "confine_key", "BrokeredCreate", "PartToSign", "SignRequest", "PartDone",
           "CompleteRequest", "ObjectToSign", "ObjectsSignRequest", "check_object", "confine_prefix", "under",
           "plan_brokered", "part_size_of", "SignLimiter", "UserLocks", "MAX_SIGN_BATCH",
           "broker_fields",
           "CHECKSUM_ALGORITHMS", "DIGEST_BYTES"]

#: the most parts one ``parts/sign`` request may ask for
MAX_SIGN_BATCH = 100
#: the checksum algorithms a brokered upload may sign into its parts (``none``: no checksum)
CHECKSUM_ALGORITHMS = ("crc32c", "crc32", "sha256", "none")
#: bytes of each algorithm's digest (by :class:`mpupload.checksums.Algorithm` value)
DIGEST_BYTES = {"crc32c": 4, "crc32": 4, "sha256": 32, "md5": 16}
#: S3's limits (as :mod:`mpupload.plan` has them; not imported here)
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * 1024**2
MAX_PART_SIZE = 5 * 1024**3
_BUCKET_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-")


def parse_storage(url: str) -> tuple[str, str]:
    """``s3://BUCKET[/PREFIX]`` as ``(bucket, prefix)``; the prefix has no leading or trailing ``/`` (``""``:
    none). :class:`ValueError` with the reason otherwise."""
    scheme, sep, rest = url.partition("://")
    if scheme != "s3" or not sep:
        raise ValueError(f"{url!r} is not s3://BUCKET[/PREFIX]")
    bucket, _, prefix = rest.partition("/")
    if not 3 <= len(bucket) <= 63 or not set(bucket) <= _BUCKET_CHARS:
        raise ValueError(f"{bucket!r} is not a bucket name (3-63 lowercase letters, digits, dots and hyphens)")
    prefix = prefix.strip("/")
    if prefix:
        check_key_segments(prefix, what="the storage prefix")
    return bucket, prefix


#: C0 and C1 control characters, and DEL
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_key_segments(key: str, *, what: str = "key") -> None:
    """Refuse what could escape a user's space or confuse a store: :class:`InputError` naming the first reason."""
    if not key:
        raise InputError(f"{what} is empty")
    if key.startswith("/"):
        raise InputError(f"{what} must be relative to your space, not absolute (it starts with '/')")
    if "\\" in key:
        raise InputError(f"{what} must not contain a backslash: use '/' between folders")
    control = _CONTROL.search(key)
    if control is not None:
        raise InputError(f"{what} must not contain control characters (found U+{ord(control.group()):04X})")
    segments = key.split("/")
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            raise InputError(f"{what} must not contain a '{segment}' segment")
        if segment == "" and index != len(segments) - 1:
            raise InputError(f"{what} must not contain an empty segment ('//')")
    if key.endswith("/"):
        raise InputError(f"{what} must name an object, not end with '/'")


def confine_key(prefix: str, username: str, key: str) -> str:
    """The full storage key of ``key`` in ``username``'s space: ``PREFIX/<username>/KEY``.

    Raises :class:`InputError` (answered 422) with one clear reason for ``..`` or ``.`` segments, absolute keys,
    empty segments, backslashes, control characters, invalid Unicode, or a full key over S3's 1024 bytes.
    """
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("key is not valid Unicode (a lone surrogate)") from None
    if "/" in username or username in (".", "..") or not username.strip():
        raise InputError(f"the user name {username[:40]!r} cannot be a folder of the storage: ask the server's "
                         "operator for an account without '/'")
    check_key_segments(username, what="the user name")
    check_key_segments(key)
    full = "/".join(part for part in (prefix, username, key) if part)
    size = len(full.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        raise InputError(f"key is too long: under your space it is {size} bytes (UTF-8), S3 allows {MAX_KEY_BYTES}")
    return full


def _digest(name: str, value: str, algorithm: str) -> str:
    """``value`` when it is the base64 of a digest of ``algorithm``'s length, else :class:`InputError`."""
    check_text(name, value, max_bytes=64)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{name} is not base64") from None
    if len(raw) != DIGEST_BYTES[algorithm]:
        raise InputError(f"{name} is not a {algorithm} value ({DIGEST_BYTES[algorithm]} bytes in base64)")
    return value


@dataclass(frozen=True)
class BrokeredCreate:
    """``POST /api/v1/uploads`` with ``"brokered": true``."""

    key: str
    total_bytes: int
    brokered: bool = True
    part_size: int = 0
    checksum_algorithm: str = "crc32c"
    filename: str = ""
    host: str = ""
    #: a multipart upload even when the object fits in one part (the CLI asks for it: its workers then need only
    #: the upload's id, whatever the size)
    multipart: bool = False
    #: a directory run: ``key`` is the PREFIX its objects go under (``""`` or ending in ``/``), ``total_bytes``
    #: the bytes of every file (what the quota is checked against), ``files_total`` the files; no store upload
    dataset: bool = False
    files_total: int | None = None
    #: a large file of the brokered directory run with this record id: its key is under the run's PREFIX, its
    #: bytes are the run's (not checked against the quota again)
    parent_id: str | None = None
    #: a directory run that continues the user's earlier runs to the same PREFIX (``--resume``): they end, and
    #: their large files' uploads (resumed at part level) become this run's
    resume: bool = False
    #: the answer carries a worker token for the new record (a cluster's workers sign with it, not the login)
    worker_token: bool = False

    def __post_init__(self) -> None:
        check_text("key", self.key, max_bytes=MAX_KEY_BYTES)
        if self.worker_token and self.parent_id is not None:
            raise InputError("a large file of a run has no worker token of its own: its run's signs for it")
        if self.dataset:
            if self.key and not self.key.endswith("/"):
                raise InputError("a directory run's key is a PREFIX: empty, or ending in '/'")
            if self.files_total is None:
                raise InputError("a directory run needs files_total")
            if self.parent_id is not None:
                raise InputError("a directory run has no parent_id")
        if self.files_total is not None:
            check_int("files_total", self.files_total, INT32_MAX)
        if self.parent_id is not None:
            check_text("parent_id", self.parent_id, max_chars=32)
        check_text("filename", self.filename, max_bytes=MAX_FILENAME_BYTES)
        check_text("host", self.host, max_chars=MAX_HOST_CHARS)
        check_int("total_bytes", self.total_bytes, INT64_MAX)
        check_int("part_size", self.part_size, INT64_MAX)
        if self.checksum_algorithm not in CHECKSUM_ALGORITHMS:
            raise InputError(f"checksum_algorithm must be one of {', '.join(CHECKSUM_ALGORITHMS)}, got "
                             f"{self.checksum_algorithm[:20]!r}")


@dataclass(frozen=True)
class PartToSign:
    number: int
    size: int
    checksum: str | None = None
    content_md5: str | None = None

    def __post_init__(self) -> None:
        check_int("number", self.number, MAX_PARTS)
        check_int("size", self.size, MAX_PART_SIZE)
        _check_digests(self.checksum, self.content_md5)


def _check_digests(checksum: str | None, content_md5: str | None) -> None:
    """A part's or an object's digests as sent: a checksum of at most 64 bytes (its algorithm's length is checked
    against the upload's), an MD5 in base64."""
    if checksum is not None:
        check_text("checksum", checksum, max_bytes=64)
    if content_md5 is not None:
        _digest("content_md5", content_md5, "md5")


@dataclass(frozen=True)
class SignRequest:
    """``POST /api/v1/uploads/{id}/parts/sign``."""

    parts: list[PartToSign] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.parts:
            raise InputError("parts is empty: ask for 1 to 100 parts")
        if len(self.parts) > MAX_SIGN_BATCH:
            raise InputError(f"parts asks for {len(self.parts)} URLs; at most {MAX_SIGN_BATCH} per request")
        if len({p.number for p in self.parts}) != len(self.parts):
            raise InputError("parts names a part number twice")


@dataclass(frozen=True)
class ObjectToSign:
    """One small file of a brokered directory run: its key (relative to the user's space, under the run's PREFIX),
    its size and digests."""

    key: str
    size: int
    checksum: str | None = None
    content_md5: str | None = None

    def __post_init__(self) -> None:
        check_text("key", self.key, max_bytes=MAX_KEY_BYTES)
        check_int("size", self.size, MAX_PART_SIZE)
        _check_digests(self.checksum, self.content_md5)


@dataclass(frozen=True)
class ObjectsSignRequest:
    """``POST /api/v1/uploads/{id}/objects/sign``: PutObject URLs for small files of a brokered directory run."""

    objects: list[ObjectToSign] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.objects:
            raise InputError(f"objects is empty: ask for 1 to {MAX_SIGN_BATCH} objects")
        if len(self.objects) > MAX_SIGN_BATCH:
            raise InputError(f"objects asks for {len(self.objects)} URLs; at most {MAX_SIGN_BATCH} per request")
        if len({o.key for o in self.objects}) != len(self.objects):
            raise InputError("objects names a key twice")


def check_object(upload: Upload, obj: ObjectToSign, *, content_md5_required: bool) -> str | None:
    """Refuse an object that carries the wrong checksum for its run (:class:`InputError`); the run's checksum
    algorithm (``None``: none)."""
    name = upload.checksum_algorithm or "none"
    algorithm = None if name == "none" else name
    if algorithm is not None:
        if obj.checksum is None:
            raise InputError(f"{obj.key} needs its {algorithm} checksum (base64)")
        _digest(f"{obj.key}'s checksum", obj.checksum, algorithm)
    elif obj.checksum is not None:
        raise InputError(f"this run signs no checksum: {obj.key} must not carry one")
    if content_md5_required and obj.content_md5 is None:
        raise InputError(f"{obj.key} needs its content_md5 (base64): this server's storage checks it")
    return algorithm


def confine_prefix(prefix: str, username: str, key_prefix: str) -> str:
    """The full storage PREFIX (ending in ``/``) of a directory run's ``key_prefix`` (``""`` or ending in
    ``/``) in ``username``'s space; :class:`InputError` as :func:`confine_key`."""
    return confine_key(prefix, username, key_prefix + "k")[:-1]


def under(prefix: str, key: str) -> bool:
    """Whether the full storage ``key`` is an object under the full ``prefix`` (which ends in ``/``)."""
    return key.startswith(prefix) and len(key) > len(prefix)


@dataclass(frozen=True)
class PartDone:
    number: int
    etag: str = ""
    checksum: str | None = None
    content_md5: str | None = None

    def __post_init__(self) -> None:
        check_int("number", self.number, MAX_PARTS)
        check_text("etag", self.etag, max_bytes=1024)
        if self.checksum is not None:
            check_text("checksum", self.checksum, max_bytes=64)
        if self.content_md5 is not None:
            _digest("content_md5", self.content_md5, "md5")


@dataclass(frozen=True)
class CompleteRequest:
    """``POST /api/v1/uploads/{id}/complete``."""

    parts: list[PartDone] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.parts) > MAX_PARTS:
            raise InputError(f"parts lists {len(self.parts)} parts; S3 allows {MAX_PARTS}")
        if len({p.number for p in self.parts}) != len(self.parts):
            raise InputError("parts names a part number twice")


def plan_brokered(total_bytes: int, part_size: int, *, multipart: bool = False) -> UploadPlan:
    """The plan of a brokered upload (:class:`InputError` when it breaks an S3 limit): one PutObject when the
    object fits in one part (``multipart`` false) unless ``multipart`` asks for a one-part multipart upload, else
    parts of ``part_size`` (0: the server chooses)."""
    import dataclasses

    from ..plan import PlanError, plan_upload

    if part_size and not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise InputError(f"part_size {part_size} is outside S3's limits: use 5 MiB to 5 GiB")
    try:
        plan = plan_upload(total_bytes, part_size=part_size or None, workers=1)
    except PlanError as exc:
        raise InputError(str(exc)) from None
    return dataclasses.replace(plan, multipart=True) if multipart and not plan.multipart else plan


def part_size_of(upload: Upload, number: int) -> int:
    """The planned size of part ``number`` (1-based) of ``upload``; :class:`InputError` outside the plan."""
    if not 1 <= number <= max(1, upload.parts_total):
        raise InputError(f"part {number} is not in this upload's plan: parts are 1 to {max(1, upload.parts_total)}")
    if not upload.store_upload_id:
        return upload.total_bytes
    offset = (number - 1) * upload.part_size
    return min(upload.part_size, upload.total_bytes - offset)


def check_part(upload: Upload, part: PartToSign, *, content_md5_required: bool) -> str | None:
    """Refuse a part that does not match the plan or carries the wrong checksum (:class:`InputError`); the
    upload's checksum algorithm (``None``: none)."""
    expected = part_size_of(upload, part.number)
    if part.size != expected:
        raise InputError(f"part {part.number} is {expected} bytes in this upload's plan, not {part.size}")
    name = upload.checksum_algorithm or "none"
    algorithm = None if name == "none" else name
    if algorithm is not None:
        if part.checksum is None:
            raise InputError(f"part {part.number} needs its {algorithm} checksum (base64)")
        _digest(f"part {part.number}'s checksum", part.checksum, algorithm)
    elif part.checksum is not None:
        raise InputError(f"this upload signs no checksum: part {part.number} must not carry one")
    if content_md5_required and part.content_md5 is None:
        raise InputError(f"part {part.number} needs its content_md5 (base64): this server's storage checks it")
    return algorithm


class SignLimiter:
    """Part URLs signed per user in the current minute (a fixed window); thread-safe, bounded by users."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._window = 0
        self._counts: dict[int, int] = {}

    def take(self, user_id: int, parts: int) -> float | None:
        """Count ``parts`` signatures for the user; ``None`` when allowed, else seconds until the next window."""
        now = self._clock()
        window = int(now // 60)
        with self._lock:
            if window != self._window:
                self._window, self._counts = window, {}
            used = self._counts.get(user_id, 0)
            if used + parts > self.per_minute:
                return max(1.0, (window + 1) * 60 - now)
            self._counts[user_id] = used + parts
        return None


def broker_fields(upload: Upload) -> dict[str, Any]:
    """What a brokered record adds to its JSON."""
    return {"brokered": True, "storage_key": upload.storage_key, "multipart": bool(upload.store_upload_id),
            "checksum_algorithm": upload.checksum_algorithm, "verified": upload.verified,
            "last_activity_at": upload.last_activity_at.isoformat() if upload.last_activity_at else None,
            "parent_id": upload.parent_id}


class UserLocks:
    """One user's brokered creates, one at a time in this process: the quota is checked and the new upload
    recorded under the lock, so two creates at once cannot both pass a check that only one fits. Striped (a
    fixed set of locks, by user id): bounded, whatever the number of users. Other replicas are held off by the
    user's row, locked for the create's transaction (``SELECT ... FOR UPDATE``, on PostgreSQL)."""

    def __init__(self, stripes: int = 64) -> None:
        self._locks = [asyncio.Lock() for _ in range(stripes)]

    def of(self, user_id: object) -> asyncio.Lock:
        return self._locks[hash(user_id) % len(self._locks)]
