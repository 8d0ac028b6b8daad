"""The ``Store`` port: every S3 operation mpupload makes, as one typed interface.

The engine, the housekeeping code and the CLI speak to a store only through :class:`Store`. Adapters:
:class:`~mpupload.storage.boto3_store.Boto3Store` (boto3, the real thing) and
:class:`~mpupload.storage.memory.MemoryStore` (in memory, for functional tests); a brokered adapter (presigned
URLs from the API server) can follow.

Conventions every adapter keeps:

* **Errors** are the adapter's own exceptions (botocore's, or :class:`~mpupload.storage.errors.StoreError`);
  callers read them only through :mod:`mpupload.storage.errors` (``error_code``, ``http_status``, ``is_gone``,
  ``is_retryable``, ``classify``), by S3 error code and HTTP status. A missing object or bucket answers a HEAD
  with the code ``"404"`` (no body, as S3 does); an upload that does not exist answers ``NoSuchUpload`` (some
  stores ``NoSuchKey``: :data:`~mpupload.storage.errors.GONE_CODES`).
* **Answers** of object operations (HeadObject, PutObject, UploadPart, CompleteMultipartUpload) are mappings
  with S3's field names as botocore spells them: ``ETag`` (quoted), ``ContentLength``, ``VersionId``,
  ``ChecksumCRC32C`` / ``ChecksumCRC32`` / ``ChecksumSHA256``, ``ServerSideEncryption``, ``Location``.
  Listings are the frozen dataclasses below.
* **Pagination, abort-and-confirm and "is the upload gone"** are written once, in :class:`StoreBase`, on top of
  the one-page primitives (``list_parts_page``, ``list_uploads_page``) an adapter implements.
"""

from __future__ import annotations

import datetime as _dt
import enum
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from .. import errors as E
from ..checksums import Algorithm
from ..plan import MAX_PARTS
from .errors import is_gone

__all__ = ["Store", "StoreBase", "Body", "Checksum", "CompletedPart", "ListedPart", "PagePart", "PartsPage",
           "PartListing", "ListedUpload", "UploadsPage", "ListedObject", "ObjectsPage", "AbortOutcome",
           "ListingStuck", "ABORT_ROUNDS", "LIST_PAGE_PARTS", "CHECKSUM_FIELDS", "as_utc", "PresignedRequest"]

log = logging.getLogger("mpupload")

#: how many times an abort is repeated while ListParts still shows parts (parts in flight may land after it)
ABORT_ROUNDS = 3
#: ListParts page size asked for: S3's largest
LIST_PAGE_PARTS = 1000
#: the checksum fields a listed part may carry, in the order they are looked for
CHECKSUM_FIELDS: dict[Algorithm, str] = {Algorithm.CRC32C: "ChecksumCRC32C", Algorithm.CRC32: "ChecksumCRC32",
                                         Algorithm.SHA256: "ChecksumSHA256"}


def as_utc(value: Any) -> _dt.datetime:
    """A store's timestamp (an aware datetime, or an ISO-8601 string) as an aware UTC datetime."""
    stamp = _dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    if not isinstance(stamp, _dt.datetime):
        raise ValueError(f"not a timestamp: {value!r}")
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=_dt.UTC)
    return stamp.astimezone(_dt.UTC)


class Checksum(NamedTuple):
    """A checksum sent with a body: the algorithm and its base64 value (``x-amz-checksum-<algorithm>``)."""

    algorithm: Algorithm
    value: str


class Body(Protocol):
    """An object's bytes as GetObject answers them: read in chunks, then closed."""

    def read(self, amt: int = ...) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class CompletedPart:
    """One entry of CompleteMultipartUpload: the part's number, its ETag (unquoted) and its checksum, if any."""

    number: int
    etag: str
    checksum: Checksum | None = None


@dataclass(frozen=True)
class ListedPart:
    """A part as ListParts lists it. ``checksum`` is the value for the algorithm asked for (or found)."""

    number: int
    size: int
    etag: str
    checksum: str | None
    #: when the part was uploaded (``None``: the store did not say)
    last_modified: _dt.datetime | None = None


@dataclass(frozen=True)
class PagePart:
    """A part on one ListParts page, with every checksum it carries."""

    number: int
    size: int
    etag: str
    #: algorithm -> base64 value, in :data:`CHECKSUM_FIELDS` order
    checksums: Mapping[Algorithm, str]
    last_modified: _dt.datetime | None = None


@dataclass(frozen=True)
class PartsPage:
    """One ListParts page, as the store answered it."""

    parts: tuple[PagePart, ...]
    truncated: bool
    next_marker: int | None
    #: the checksum algorithm the store names for the upload (``CRC32C``, ...), if it names one
    algorithm: str | None = None


@dataclass(frozen=True)
class PartListing:
    """Every part of an upload (ListParts paginated to the end)."""

    parts: dict[int, ListedPart]
    #: the checksum algorithm the store names for the upload, else the one its parts carry
    algorithm: str | None


@dataclass(frozen=True)
class ListedUpload:
    """An unfinished multipart upload as ListMultipartUploads lists it."""

    key: str
    upload_id: str
    initiated: _dt.datetime
    checksum_algorithm: str | None = None


@dataclass(frozen=True)
class UploadsPage:
    uploads: tuple[ListedUpload, ...]
    truncated: bool
    next_key_marker: str | None
    next_upload_id_marker: str | None


@dataclass(frozen=True)
class ListedObject:
    """An object as ListObjectsV2 lists it."""

    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class ObjectsPage:
    objects: tuple[ListedObject, ...]
    truncated: bool
    next_token: str | None


@dataclass(frozen=True)
class PresignedRequest:
    """A request signed for someone else to send (a presigned URL): the method, the URL, and the headers the
    sender must send exactly as given (they are signed: a different value, or a body that does not match a
    signed checksum, is refused by the store)."""

    method: str
    url: str
    headers: Mapping[str, str]
    expires_in: int


class AbortOutcome(enum.Enum):
    #: this call aborted the upload and the store confirms it is gone
    ABORTED = "aborted"
    #: the store said at once that the upload does not exist
    ALREADY_GONE = "already gone"
    #: parts were still listed after every round
    PARTS_REMAIN = "parts remain"
    #: the abort was accepted, but the ListParts that checks it failed for another reason than "gone"
    UNCONFIRMED = "unconfirmed"

    @property
    def gone(self) -> bool:
        """The store confirmed that the upload no longer exists."""
        return self in (AbortOutcome.ABORTED, AbortOutcome.ALREADY_GONE)


class ListingStuck(E.UploadFailed):
    """A listing the store kept answering "truncated" without a way forward, or past its page bound."""

    def __init__(self, message: str, *, pages: int, bucket: str | None = None,
                 upload_id: str | None = None) -> None:
        super().__init__(message, bucket=bucket, upload_id=upload_id)
        self.pages = pages


class Store(Protocol):
    """Everything mpupload asks of an S3 store. See the module docstring for errors and answers."""

    @property
    def endpoint_url(self) -> str | None:
        """The endpoint configured for this store (``None``: the default one), for messages and journals."""
        ...

    def short_lived(self) -> Store:
        """The same store, for clean-up calls (abort) that must end quickly even when the store is unwell."""
        ...

    def connect(self) -> None:
        """Get ready to send requests now (a boto3 client is built): a broken configuration (an unknown
        profile, say) shows here rather than in the first request. Sends nothing."""
        ...

    # -- buckets ------------------------------------------------------------------------------------------------
    def head_bucket(self, bucket: str) -> None: ...

    def create_bucket(self, bucket: str) -> None: ...

    def lifecycle_rules(self, bucket: str) -> list[Mapping[str, Any]]:
        """GetBucketLifecycleConfiguration's rules (``NoSuchLifecycleConfiguration`` when it has none)."""
        ...

    # -- objects ------------------------------------------------------------------------------------------------
    def head_object(self, bucket: str, key: str, *, version_id: str | None = None,
                    checksum_mode: bool = False) -> dict[str, Any]:
        """HeadObject; ``checksum_mode`` asks for the object's checksum (``ChecksumMode=ENABLED``)."""
        ...

    def get_object(self, bucket: str, key: str, *, version_id: str | None = None,
                   byte_range: tuple[int, int] | None = None) -> Body:
        """GetObject's body; ``byte_range`` is ``(first, last)``, both included (``Range: bytes=first-last``)."""
        ...

    def put_object(self, bucket: str, key: str, body: Any, *, content_length: int, checksum: Checksum | None = None,
                   content_md5: str | None = None, if_none_match: bool = False,
                   object_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """PutObject; ``object_args`` are S3's object options (``ContentType``, ``Metadata``, encryption...);
        ``if_none_match`` refuses (412) when the key exists."""
        ...

    def delete_object(self, bucket: str, key: str, *, version_id: str | None = None,
                      if_match: str | None = None) -> None:
        """DeleteObject of exactly that version, or only while the object's ETag is ``if_match`` (unquoted)."""
        ...

    # -- multipart uploads --------------------------------------------------------------------------------------
    def create_multipart_upload(self, bucket: str, key: str, *, algorithm: Algorithm | None = None,
                                object_args: Mapping[str, Any] | None = None, size: int | None = None,
                                part_size: int | None = None) -> str:
        """CreateMultipartUpload; returns the UploadId. ``size`` and ``part_size`` (the object's and its plan's) are
        for a store that plans the upload itself (the brokered one); S3 takes neither."""
        ...

    def upload_part(self, bucket: str, key: str, upload_id: str, part_number: int, body: Any, *,
                    content_length: int, checksum: Checksum | None = None,
                    content_md5: str | None = None) -> dict[str, Any]: ...

    def complete_multipart_upload(self, bucket: str, key: str, upload_id: str, parts: Sequence[CompletedPart], *,
                                  if_none_match: bool = False) -> dict[str, Any]: ...

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """One AbortMultipartUpload, nothing more (see :meth:`abort_and_confirm`)."""
        ...

    def presign_upload_part(self, bucket: str, key: str, upload_id: str, part_number: int, *,
                            checksum: Checksum | None = None, content_md5: str | None = None,
                            expires_in: int) -> PresignedRequest:
        """An UploadPart URL valid ``expires_in`` seconds, SigV4, with ``checksum`` and ``content_md5`` (when
        given) signed in as headers, so that the store refuses a body that does not match them."""
        ...

    def presign_put_object(self, bucket: str, key: str, *, checksum: Checksum | None = None,
                           content_md5: str | None = None, expires_in: int) -> PresignedRequest:
        """A PutObject URL, signed as :meth:`presign_upload_part` signs a part."""
        ...

    def list_parts_page(self, bucket: str, key: str, upload_id: str, *, marker: int | None = None,
                        max_parts: int | None = None) -> PartsPage:
        """One ListParts request (``max_parts=1`` is the cheap "does the upload exist" question)."""
        ...

    def list_uploads_page(self, bucket: str, prefix: str, *, key_marker: str | None = None,
                          upload_id_marker: str | None = None) -> UploadsPage:
        """One ListMultipartUploads request."""
        ...

    def list_objects_page(self, bucket: str, prefix: str, *, token: str | None = None) -> ObjectsPage:
        """One ListObjectsV2 request (up to 1000 objects whose key starts with ``prefix``, by key)."""
        ...

    # -- written once, in StoreBase -----------------------------------------------------------------------------
    def list_objects(self, bucket: str, prefix: str, *, max_pages: int | None = None) -> Iterator[ListedObject]: ...

    def list_parts(self, bucket: str, key: str, upload_id: str, *, algorithm: Algorithm | None = None,
                   max_pages: int | None = None) -> PartListing | None: ...

    def upload_gone(self, bucket: str, key: str, upload_id: str) -> bool: ...

    def abort_and_confirm(self, bucket: str, key: str, upload_id: str, *,
                          rounds: int = ABORT_ROUNDS) -> AbortOutcome: ...

    def list_uploads(self, bucket: str, prefix: str, *, max_pages: int,
                     stop_past: str | None = None) -> Iterator[ListedUpload]: ...

    def find_upload(self, bucket: str, key: str, *, max_pages: int) -> ListedUpload | None: ...


class StoreBase:
    """The operations written once for every adapter, on top of its one-request primitives.

    A subclass implements the :class:`Store` primitives; pagination, abort-and-confirm and the "is this upload
    gone" question come from here, so that a store with small pages or an odd marker is handled the same way
    whichever adapter speaks to it.
    """

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        raise NotImplementedError

    def list_parts_page(self, bucket: str, key: str, upload_id: str, *, marker: int | None = None,
                        max_parts: int | None = None) -> PartsPage:
        raise NotImplementedError

    def list_uploads_page(self, bucket: str, prefix: str, *, key_marker: str | None = None,
                          upload_id_marker: str | None = None) -> UploadsPage:
        raise NotImplementedError

    def list_objects_page(self, bucket: str, prefix: str, *, token: str | None = None) -> ObjectsPage:
        raise NotImplementedError

    def list_objects(self, bucket: str, prefix: str, *, max_pages: int | None = None) -> Iterator[ListedObject]:
        """Every object whose key starts with ``prefix``, page by page (ListObjectsV2). Raises :class:`ListingStuck`
        when a truncated answer gives no new continuation token, or after ``max_pages`` pages."""
        token: str | None = None
        seen: set[str] = set()
        pages = 0
        while max_pages is None or pages < max_pages:
            pages += 1
            page = self.list_objects_page(bucket, prefix, token=token)
            yield from page.objects
            if not page.truncated:
                return
            if not page.next_token or page.next_token in seen:
                break
            seen.add(page.next_token)
            token = page.next_token
        raise ListingStuck(f"the store's list of s3://{bucket}/{prefix} did not end after {pages} page(s) (it keeps "
                           "answering 'truncated')", pages=pages, bucket=bucket)

    def list_parts(self, bucket: str, key: str, upload_id: str, *, algorithm: Algorithm | None = None,
                   max_pages: int | None = None) -> PartListing | None:
        """Every part the store holds for ``upload_id``, paginated to the end; ``None`` if the upload is gone.

        A part's ``checksum`` is its value for ``algorithm``, else for the first algorithm it carries. Raises
        :class:`ListingStuck` when the store answers "truncated" with a part marker that does not advance (or
        lists past S3's last part number), or after ``max_pages`` pages; any other failure is the store's error.
        """
        parts: dict[int, ListedPart] = {}
        marker = 0
        named: str | None = None
        pages = 0
        while True:
            if max_pages is not None and pages >= max_pages:
                raise ListingStuck(f"the store's ListParts of upload {upload_id} did not end after {pages} page(s)",
                                   pages=pages, bucket=bucket, upload_id=upload_id)
            pages += 1
            try:
                page = self.list_parts_page(bucket, key, upload_id, marker=marker, max_parts=LIST_PAGE_PARTS)
            except Exception as exc:
                if is_gone(exc):
                    return None
                raise
            named = named or page.algorithm
            for part in page.parts:
                found = algorithm or next(iter(part.checksums), None)
                value = part.checksums.get(found) if found is not None else None
                parts[part.number] = ListedPart(part.number, part.size, part.etag, value, part.last_modified)
                if algorithm is None and found is not None and named is None:
                    named = found.value
            if not page.truncated:
                return PartListing(parts, named)
            next_marker = page.next_marker or 0
            if next_marker <= marker or next_marker >= MAX_PARTS:
                raise ListingStuck(
                    f"the store kept answering ListParts of upload {upload_id} as truncated (next part marker "
                    f"{next_marker}, after {marker})", pages=pages, bucket=bucket, upload_id=upload_id)
            marker = next_marker

    def upload_gone(self, bucket: str, key: str, upload_id: str) -> bool:
        """One ListParts (``MaxParts=1``): ``True`` only when the store clearly says the upload does not exist;
        any other failure means "cannot tell" (``False``)."""
        try:
            self.list_parts_page(bucket, key, upload_id, max_parts=1)
        except Exception as exc:  # noqa: BLE001 - anything but "gone" means "cannot tell"
            return is_gone(exc)
        return False

    def abort_and_confirm(self, bucket: str, key: str, upload_id: str, *,
                          rounds: int = ABORT_ROUNDS) -> AbortOutcome:
        """Abort the upload and make sure nothing is left: ListParts after each abort, repeated (up to
        ``rounds`` times) while parts still show up, since parts in flight may land after an abort.

        Raises the store's error when an AbortMultipartUpload fails for another reason than "gone".
        """
        for round_ in range(rounds):
            try:
                self.abort_multipart_upload(bucket, key, upload_id)
            except Exception as exc:
                if is_gone(exc):
                    return AbortOutcome.ALREADY_GONE if round_ == 0 else AbortOutcome.ABORTED
                raise
            try:
                page = self.list_parts_page(bucket, key, upload_id, max_parts=1)
            except Exception as exc:  # noqa: BLE001 - anything but "gone" means "cannot tell"
                return AbortOutcome.ABORTED if is_gone(exc) else AbortOutcome.UNCONFIRMED
            if not page.parts:
                return AbortOutcome.ABORTED
        return AbortOutcome.PARTS_REMAIN

    def list_uploads(self, bucket: str, prefix: str, *, max_pages: int,
                     stop_past: str | None = None) -> Iterator[ListedUpload]:
        """Every unfinished upload whose key starts with ``prefix``, page by page (ListMultipartUploads).

        ``stop_past``: stop once the next page would start past this key (uploads are listed by key). Raises
        :class:`ListingStuck` when a truncated answer gives no way forward (no marker, or markers already seen)
        or after ``max_pages`` pages; a store error on a page is raised as it is.
        """
        key_marker: str | None = None
        upload_id_marker: str | None = None
        seen: set[tuple[str, str]] = set()
        pages = 0
        while pages < max_pages:
            pages += 1
            page = self.list_uploads_page(bucket, prefix, key_marker=key_marker, upload_id_marker=upload_id_marker)
            yield from page.uploads
            if not page.truncated:
                return
            last = page.uploads[-1] if page.uploads else None
            next_key = page.next_key_marker or (last.key if last else None)
            next_id = page.next_upload_id_marker or (last.upload_id if last else None) or ""
            if not next_key or (next_key, next_id) in seen:
                break
            if stop_past is not None and next_key > stop_past:
                return
            seen.add((next_key, next_id))
            key_marker, upload_id_marker = next_key, next_id
        raise ListingStuck(f"the store's list of multipart uploads in s3://{bucket}/{prefix} did not end after "
                           f"{pages} page(s) (it keeps answering 'truncated')", pages=pages, bucket=bucket)

    def find_upload(self, bucket: str, key: str, *, max_pages: int) -> ListedUpload | None:
        """The newest unfinished upload of exactly ``key`` (a listing that does not end gives what it saw)."""
        newest: ListedUpload | None = None
        try:
            for upload in self.list_uploads(bucket, key, max_pages=max_pages, stop_past=key):
                if upload.key == key and (newest is None or upload.initiated > newest.initiated):
                    newest = upload
        except ListingStuck:
            log.debug("the list of multipart uploads of s3://%s/%s did not end: using what was listed", bucket, key)
        return newest
