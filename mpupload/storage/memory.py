"""An in-memory :class:`~mpupload.storage.port.Store` for functional tests, with S3's semantics and faults on
demand.

What it keeps as S3 does:

* buckets (``NoSuchBucket``; HEAD answers ``404`` / ``403`` without a body), objects (``NoSuchKey``; a HEAD of a
  missing key answers ``404``), multipart uploads with their UploadId (``NoSuchUpload`` once aborted or
  completed, and for an unknown id);
* a part's ETag is the MD5 of its bytes; a multipart object's ETag is ``md5(part md5s)-N``; every part but the
  last must be at least :attr:`MemoryStore.min_part_size` bytes (5 MiB, checked at Complete: ``EntityTooSmall``),
  Complete lists parts in ascending order (``InvalidPartOrder``) with their ETags (``InvalidPart``);
* checksums: an ``x-amz-checksum-*`` value (CRC32C, CRC32, SHA256, through :mod:`mpupload.checksums`) or a
  ``Content-MD5`` that does not match the body is refused with ``BadDigest``; an upload created with a checksum
  algorithm keeps each part's checksum, Complete must repeat it, and HeadObject (with ``checksum_mode``) reports
  the composite ``<checksum of part checksums>-N`` for a multipart object and the full-object checksum for a
  PutObject, as AWS does;
* ``If-None-Match: *`` on PutObject and Complete and ``If-Match`` on DeleteObject (``PreconditionFailed``);
* ListParts and ListMultipartUploads paginate, with page sizes small enough to test that
  (``parts_page_size``, ``uploads_page_size``).

For tests:

* :meth:`MemoryStore.fail` makes the next N calls of an operation fail with a code and an HTTP status;
* :meth:`MemoryStore.before` runs a callback before an operation (to cancel an upload mid-run, to abort it
  behind the uploader's back, ...);
* :attr:`MemoryStore.calls` counts the requests per operation (S3's names: ``UploadPart``, ``ListParts``, ...).

Errors are :class:`~mpupload.storage.errors.StoreError`, read like botocore's by :mod:`mpupload.storage.errors`.
Safe to use from several threads. It lives in one process and refuses to be pickled: parts sent to it must be
sent from this process (threads), not from worker processes.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import io
import itertools
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from ..checksums import Algorithm, b64, boto_checksum_param, composite_checksum, new_hasher, unb64
from ..units import MiB
from .errors import StoreError
from .port import (
    Body,
    Checksum,
    CompletedPart,
    ListedObject,
    ListedUpload,
    ObjectsPage,
    PagePart,
    PartsPage,
    PresignedRequest,
    StoreBase,
    UploadsPage,
)

__all__ = ["MemoryStore", "MemoryObject", "OPERATIONS", "S3_MIN_PART_SIZE"]

S3_MIN_PART_SIZE = 5 * MiB
#: the operations the store counts, fails and hooks, by S3's names
OPERATIONS = frozenset({
    "HeadBucket", "CreateBucket", "GetBucketLifecycleConfiguration", "HeadObject", "GetObject", "PutObject",
    "DeleteObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "AbortMultipartUpload",
    "ListParts", "ListMultipartUploads", "ListObjectsV2",
})
_ALGORITHMS = {"CRC32C": Algorithm.CRC32C, "CRC32": Algorithm.CRC32, "SHA256": Algorithm.SHA256}


@dataclass
class MemoryObject:
    data: bytes
    etag: str
    #: the object's checksum as HeadObject reports it (``None``: none)
    checksum: Checksum | None = None
    checksum_type: str | None = None
    parts: int | None = None
    object_args: dict[str, Any] = field(default_factory=dict)
    last_modified: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.UTC))


@dataclass
class _Part:
    data: bytes
    etag: str
    checksum: str | None
    last_modified: _dt.datetime


@dataclass
class _Upload:
    key: str
    upload_id: str
    initiated: _dt.datetime
    algorithm: Algorithm | None
    object_args: dict[str, Any]
    parts: dict[int, _Part] = field(default_factory=dict)


@dataclass
class _Bucket:
    objects: dict[str, MemoryObject] = field(default_factory=dict)
    uploads: dict[str, _Upload] = field(default_factory=dict)
    lifecycle: list[Mapping[str, Any]] | None = None


@dataclass
class _Fault:
    times: int
    code: str
    status: int
    message: str


def _digest(algorithm: Algorithm, data: bytes) -> str:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return b64(hasher.digest())


def _read(body: Any) -> bytes:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    chunks: list[bytes] = []
    while True:
        chunk = body.read(1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _signed(checksum: Checksum | None, content_md5: str | None) -> dict[str, str]:
    headers = {f"x-amz-checksum-{checksum.algorithm.value}": checksum.value} if checksum is not None else {}
    if content_md5 is not None:
        headers["Content-MD5"] = content_md5
    return headers


class MemoryStore(StoreBase):
    """A store in this process's memory. ``buckets`` are created at once; ``min_part_size`` (5 MiB, as S3) can be
    lowered for tests; ``parts_page_size`` and ``uploads_page_size`` cap ListParts and ListMultipartUploads pages
    (S3: 1000); ``clock`` gives the time of initiations and parts.

    Habits of other stores (``docs/stores.md``), for tests of what the engine makes of them:
    ``checks_checksums=False`` accepts a wrong ``x-amz-checksum-*`` and keeps the value sent (moto, Ceph RGW);
    ``checks_content_md5=False`` accepts a wrong ``Content-MD5`` (moto); ``md5_etags=False`` answers ETags that are
    not MD5s (SSE-KMS, some compatible stores).
    """

    def __init__(self, *buckets: str, min_part_size: int = S3_MIN_PART_SIZE, parts_page_size: int = 1000,
                 uploads_page_size: int = 1000, endpoint_url: str | None = None,
                 clock: Callable[[], _dt.datetime] | None = None, checks_checksums: bool = True,
                 checks_content_md5: bool = True, md5_etags: bool = True) -> None:
        self.min_part_size = min_part_size
        self.checks_checksums = checks_checksums
        self.checks_content_md5 = checks_content_md5
        self.md5_etags = md5_etags
        self.parts_page_size = parts_page_size
        self.uploads_page_size = uploads_page_size
        #: ListObjectsV2's page size
        self.objects_page_size = 1000
        self._endpoint_url = endpoint_url
        self.clock = clock or (lambda: _dt.datetime.now(_dt.UTC))
        self.calls: Counter[str] = Counter()
        self._buckets: dict[str, _Bucket] = {name: _Bucket() for name in buckets}
        self._faults: dict[str, list[_Fault]] = {}
        self._hooks: dict[str, list[tuple[Callable[[str, dict[str, Any]], None], bool]]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    def __reduce__(self) -> Any:
        raise TypeError("a MemoryStore lives in one process and cannot be pickled: send its parts from threads of "
                        "this process, not from worker processes")

    # -- for tests ----------------------------------------------------------------------------------------------
    def fail(self, operation: str, times: int = 1, *, code: str = "InternalError", status: int = 500,
             message: str = "injected fault") -> None:
        """Make the next ``times`` calls of ``operation`` fail with ``code`` and HTTP ``status``."""
        self._check_operation(operation)
        with self._lock:
            self._faults.setdefault(operation, []).append(_Fault(times, code, status, message))

    def before(self, operation: str, callback: Callable[[str, dict[str, Any]], None], *, once: bool = False) -> None:
        """Run ``callback(operation, params)`` before every call of ``operation`` (only the next with ``once``).
        It runs outside the store's lock: it may call the store, and what it raises is the call's error."""
        self._check_operation(operation)
        with self._lock:
            self._hooks.setdefault(operation, []).append((callback, once))

    def object(self, bucket: str, key: str) -> MemoryObject | None:
        with self._lock:
            return self._bucket(bucket, "HeadObject").objects.get(key)

    def uploads(self, bucket: str) -> dict[str, list[int]]:
        """The unfinished uploads of a bucket: upload id -> its part numbers."""
        with self._lock:
            return {u.upload_id: sorted(u.parts) for u in self._bucket(bucket, "ListMultipartUploads").uploads.values()}

    def set_lifecycle_rules(self, bucket: str, rules: list[Mapping[str, Any]] | None) -> None:
        with self._lock:
            self._bucket(bucket, "GetBucketLifecycleConfiguration").lifecycle = rules

    @staticmethod
    def _check_operation(operation: str) -> None:
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}: one of {sorted(OPERATIONS)}")

    def _enter(self, operation: str, **params: Any) -> None:
        """Count the call, run the hooks, then raise an injected fault if one is due."""
        with self._lock:
            self.calls[operation] += 1
            hooks = list(self._hooks.get(operation, ()))
            self._hooks[operation] = [h for h in hooks if not h[1]]
        for callback, _ in hooks:
            callback(operation, params)
        with self._lock:
            queue = self._faults.get(operation)
            if queue:
                fault = queue[0]
                fault.times -= 1
                if fault.times <= 0:
                    queue.pop(0)
                raise StoreError(fault.code, fault.status, fault.message, operation)

    def _bucket(self, name: str, operation: str) -> _Bucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            if operation in ("HeadBucket", "HeadObject"):
                raise StoreError("404", 404, "Not Found", operation)
            raise StoreError("NoSuchBucket", 404, "The specified bucket does not exist", operation)
        return bucket

    def _upload(self, bucket: str, key: str, upload_id: str, operation: str) -> _Upload:
        upload = self._bucket(bucket, operation).uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise StoreError("NoSuchUpload", 404, "The specified upload does not exist. The upload ID may be invalid, "
                             "or the upload may have been aborted or completed.", operation)
        return upload

    def _etag(self, data: bytes) -> str:
        return hashlib.md5(data).hexdigest() if self.md5_etags else uuid.uuid4().hex  # noqa: S324 - S3's ETag

    def _receive(self, body: Any, content_length: int, checksum: Checksum | None, content_md5: str | None,
                 operation: str) -> tuple[bytes, str]:
        """Read a request's body as S3 does: the whole Content-Length, its digests checked; (bytes, ETag)."""
        data = _read(body)
        if len(data) != content_length:
            raise StoreError("IncompleteBody", 400, "You did not provide the number of bytes specified by the "
                             "Content-Length HTTP header", operation)
        self._check_body(data, checksum, content_md5, operation)
        return data, self._etag(data)

    def _check_body(self, data: bytes, checksum: Checksum | None, content_md5: str | None, operation: str) -> None:
        if content_md5 is not None:
            try:
                sent = base64.b64decode(content_md5, validate=True)
            except ValueError:
                raise StoreError("InvalidDigest", 400, "The Content-MD5 you specified was invalid.",
                                 operation) from None
            if self.checks_content_md5 and sent != hashlib.md5(data).digest():  # noqa: S324 - S3's Content-MD5
                raise StoreError("BadDigest", 400, "The Content-MD5 you specified did not match what we received.",
                                 operation)
        if self.checks_checksums and checksum is not None and _digest(checksum.algorithm, data) != checksum.value:
            raise StoreError("BadDigest", 400, f"The {checksum.algorithm.value.upper()} you specified did not match "
                             "the calculated checksum.", operation)

    # -- the Store ----------------------------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str | None:
        return self._endpoint_url

    def short_lived(self) -> MemoryStore:
        return self

    def connect(self) -> None:
        pass

    def head_bucket(self, bucket: str) -> None:
        self._enter("HeadBucket", Bucket=bucket)
        with self._lock:
            self._bucket(bucket, "HeadBucket")

    def create_bucket(self, bucket: str) -> None:
        self._enter("CreateBucket", Bucket=bucket)
        with self._lock:
            if bucket in self._buckets:
                raise StoreError("BucketAlreadyOwnedByYou", 409, "Your previous request to create the named bucket "
                                 "succeeded and you already own it.", "CreateBucket")
            self._buckets[bucket] = _Bucket()

    def lifecycle_rules(self, bucket: str) -> list[Mapping[str, Any]]:
        self._enter("GetBucketLifecycleConfiguration", Bucket=bucket)
        with self._lock:
            rules = self._bucket(bucket, "GetBucketLifecycleConfiguration").lifecycle
            if rules is None:
                raise StoreError("NoSuchLifecycleConfiguration", 404, "The lifecycle configuration does not exist",
                                 "GetBucketLifecycleConfiguration")
            return list(rules)

    def head_object(self, bucket: str, key: str, *, version_id: str | None = None,
                    checksum_mode: bool = False) -> dict[str, Any]:
        self._enter("HeadObject", Bucket=bucket, Key=key, VersionId=version_id)
        with self._lock:
            obj = self._bucket(bucket, "HeadObject").objects.get(key)
            if obj is None:
                raise StoreError("404", 404, "Not Found", "HeadObject")
            # the object options as S3 answers them (ContentType, Metadata, StorageClass, encryption)
            answer: dict[str, Any] = {**obj.object_args, "ContentLength": len(obj.data), "ETag": f'"{obj.etag}"',
                                      "LastModified": obj.last_modified, "Metadata": dict(obj.object_args.get(
                                          "Metadata") or {})}
            if checksum_mode and obj.checksum is not None:
                answer[boto_checksum_param(obj.checksum.algorithm)] = obj.checksum.value
                answer["ChecksumType"] = obj.checksum_type
            if obj.parts is not None:
                answer["PartsCount"] = obj.parts
            return answer

    def get_object(self, bucket: str, key: str, *, version_id: str | None = None,
                   byte_range: tuple[int, int] | None = None) -> Body:
        self._enter("GetObject", Bucket=bucket, Key=key, VersionId=version_id, Range=byte_range)
        with self._lock:
            obj = self._bucket(bucket, "GetObject").objects.get(key)
            if obj is None:
                raise StoreError("NoSuchKey", 404, "The specified key does not exist.", "GetObject")
            data = obj.data
        if byte_range is not None:
            first, last = byte_range
            if first < 0 or first >= len(data) or last < first:
                raise StoreError("InvalidRange", 416, "The requested range is not satisfiable", "GetObject")
            data = data[first:last + 1]
        return io.BytesIO(data)

    def put_object(self, bucket: str, key: str, body: Any, *, content_length: int, checksum: Checksum | None = None,
                   content_md5: str | None = None, if_none_match: bool = False,
                   object_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        self._enter("PutObject", Bucket=bucket, Key=key, ContentLength=content_length)
        data, etag = self._receive(body, content_length, checksum, content_md5, "PutObject")
        with self._lock:
            target = self._bucket(bucket, "PutObject")
            if if_none_match and key in target.objects:
                raise StoreError("PreconditionFailed", 412, "At least one of the pre-conditions you specified did "
                                 "not hold", "PutObject")
            target.objects[key] = MemoryObject(data, etag, checksum, "FULL_OBJECT" if checksum else None, None,
                                               dict(object_args or {}), self.clock())
        answer: dict[str, Any] = {"ETag": f'"{etag}"'}
        if checksum is not None:
            answer[boto_checksum_param(checksum.algorithm)] = checksum.value
        return answer

    def delete_object(self, bucket: str, key: str, *, version_id: str | None = None,
                      if_match: str | None = None) -> None:
        self._enter("DeleteObject", Bucket=bucket, Key=key, VersionId=version_id, IfMatch=if_match)
        with self._lock:
            target = self._bucket(bucket, "DeleteObject")
            obj = target.objects.get(key)
            if if_match is not None:
                if obj is None:
                    raise StoreError("NoSuchKey", 404, "The specified key does not exist.", "DeleteObject")
                if obj.etag != if_match.strip('"'):
                    raise StoreError("PreconditionFailed", 412, "At least one of the pre-conditions you specified "
                                     "did not hold", "DeleteObject")
            target.objects.pop(key, None)

    def create_multipart_upload(self, bucket: str, key: str, *, algorithm: Algorithm | None = None,
                                object_args: Mapping[str, Any] | None = None, size: int | None = None,
                                part_size: int | None = None) -> str:
        self._enter("CreateMultipartUpload", Bucket=bucket, Key=key, ChecksumAlgorithm=algorithm)
        with self._lock:
            target = self._bucket(bucket, "CreateMultipartUpload")
            # ids sort in the order uploads were created, as S3 lists uploads of one key
            upload_id = f"{next(self._ids):08d}-{uuid.uuid4().hex}"
            target.uploads[upload_id] = _Upload(key, upload_id, self.clock(), algorithm, dict(object_args or {}))
            return upload_id

    def presign_upload_part(self, bucket: str, key: str, upload_id: str, part_number: int, *,
                            checksum: Checksum | None = None, content_md5: str | None = None,
                            expires_in: int) -> PresignedRequest:
        """A ``memory://`` URL nothing can send (for tests of the code that asks for it), with the signed headers."""
        query = urlencode({"uploadId": upload_id, "partNumber": part_number, "expires": expires_in})
        return PresignedRequest("PUT", f"memory://{bucket}/{quote(key)}?{query}", _signed(checksum, content_md5),
                                expires_in)

    def presign_put_object(self, bucket: str, key: str, *, checksum: Checksum | None = None,
                           content_md5: str | None = None, expires_in: int) -> PresignedRequest:
        query = urlencode({"expires": expires_in})
        return PresignedRequest("PUT", f"memory://{bucket}/{quote(key)}?{query}", _signed(checksum, content_md5),
                                expires_in)

    def upload_part(self, bucket: str, key: str, upload_id: str, part_number: int, body: Any, *,
                    content_length: int, checksum: Checksum | None = None,
                    content_md5: str | None = None) -> dict[str, Any]:
        self._enter("UploadPart", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=part_number,
                    ContentLength=content_length)
        with self._lock:
            self._upload(bucket, key, upload_id, "UploadPart")
        if not 1 <= part_number <= 10_000:
            raise StoreError("InvalidArgument", 400, "Part number must be an integer between 1 and 10000, inclusive",
                             "UploadPart")
        data, etag = self._receive(body, content_length, checksum, content_md5, "UploadPart")
        with self._lock:
            upload = self._upload(bucket, key, upload_id, "UploadPart")  # it may have been aborted meanwhile
            if checksum is not None and upload.algorithm is not None and checksum.algorithm is not upload.algorithm:
                raise StoreError("InvalidRequest", 400, f"Checksum Type mismatch occurred, expected checksum Type: "
                                 f"{upload.algorithm.value}, actual checksum Type: {checksum.algorithm.value}",
                                 "UploadPart")
            stored = _digest(upload.algorithm, data) if upload.algorithm is not None else None
            if checksum is not None and not self.checks_checksums:
                stored = checksum.value  # a store that does not check keeps what it was sent
            upload.parts[part_number] = _Part(data, etag, stored, self.clock())
        answer: dict[str, Any] = {"ETag": f'"{etag}"'}
        if checksum is not None:
            answer[boto_checksum_param(checksum.algorithm)] = checksum.value
        return answer

    def complete_multipart_upload(self, bucket: str, key: str, upload_id: str, parts: Sequence[CompletedPart], *,
                                  if_none_match: bool = False) -> dict[str, Any]:
        op = "CompleteMultipartUpload"
        self._enter(op, Bucket=bucket, Key=key, UploadId=upload_id, Parts=list(parts))
        with self._lock:
            target = self._bucket(bucket, op)
            upload = self._upload(bucket, key, upload_id, op)
            if not parts:
                raise StoreError("MalformedXML", 400, "The XML you provided was not well-formed", op)
            numbers = [p.number for p in parts]
            if numbers != sorted(set(numbers)):
                raise StoreError("InvalidPartOrder", 400, "The list of parts was not in ascending order.", op)
            chosen: list[_Part] = []
            for entry in parts:
                part = upload.parts.get(entry.number)
                if part is None or part.etag != entry.etag.strip('"').lower():
                    raise StoreError("InvalidPart", 400, f"One or more of the specified parts could not be found "
                                     f"(part {entry.number}).", op)
                if upload.algorithm is not None:
                    if entry.checksum is None:
                        raise StoreError("InvalidRequest", 400, f"The upload was created using a "
                                         f"{upload.algorithm.value} checksum. The complete request must include the "
                                         f"checksum for each part. It was missing for part {entry.number} in the "
                                         "request.", op)
                    if entry.checksum.value != part.checksum:
                        raise StoreError("InvalidPart", 400, f"The checksum of part {entry.number} does not match.",
                                         op)
                chosen.append(part)
            for number, part in zip(numbers[:-1], chosen[:-1]):
                if len(part.data) < self.min_part_size:
                    raise StoreError("EntityTooSmall", 400, f"Your proposed upload (part {number}) is smaller than "
                                     "the minimum allowed size", op)
            if if_none_match and key in target.objects:
                raise StoreError("PreconditionFailed", 412, "At least one of the pre-conditions you specified did "
                                 "not hold", op)
            etag = (hashlib.md5(b"".join(bytes.fromhex(p.etag) for p in chosen)).hexdigest()  # noqa: S324
                    + f"-{len(chosen)}")
            checksum = None
            if upload.algorithm is not None:
                value = composite_checksum(upload.algorithm, (unb64(p.checksum) for p in chosen))
                checksum = Checksum(upload.algorithm, value)
            target.objects[key] = MemoryObject(b"".join(p.data for p in chosen), etag, checksum,
                                               "COMPOSITE" if checksum else None, len(chosen), upload.object_args,
                                               self.clock())
            del target.uploads[upload_id]
        answer: dict[str, Any] = {"Location": f"s3://{bucket}/{key}", "Bucket": bucket, "Key": key,
                                  "ETag": f'"{etag}"'}
        if checksum is not None:
            answer[boto_checksum_param(checksum.algorithm)] = checksum.value
        return answer

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        self._enter("AbortMultipartUpload", Bucket=bucket, Key=key, UploadId=upload_id)
        with self._lock:
            self._upload(bucket, key, upload_id, "AbortMultipartUpload")
            del self._buckets[bucket].uploads[upload_id]

    def list_parts_page(self, bucket: str, key: str, upload_id: str, *, marker: int | None = None,
                        max_parts: int | None = None) -> PartsPage:
        self._enter("ListParts", Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker,
                    MaxParts=max_parts)
        with self._lock:
            upload = self._upload(bucket, key, upload_id, "ListParts")
            size = min(self.parts_page_size, max_parts or 1000)
            numbers = [n for n in sorted(upload.parts) if n > (marker or 0)]
            page = numbers[:size]
            listed = []
            for number in page:
                part = upload.parts[number]
                checksums = {upload.algorithm: part.checksum} if upload.algorithm and part.checksum else {}
                listed.append(PagePart(number, len(part.data), part.etag, checksums, part.last_modified))
            truncated = len(numbers) > size
            algorithm = upload.algorithm.value.upper() if upload.algorithm else None
            return PartsPage(tuple(listed), truncated, page[-1] if truncated and page else None, algorithm)

    def list_objects_page(self, bucket: str, prefix: str, *, token: str | None = None) -> ObjectsPage:
        self._enter("ListObjectsV2", Bucket=bucket, Prefix=prefix, ContinuationToken=token)
        with self._lock:
            keys = sorted(k for k in self._bucket(bucket, "ListObjectsV2").objects
                          if k.startswith(prefix) and (token is None or k > token))
            page = keys[:self.objects_page_size]
            truncated = len(keys) > len(page)
            objects = self._bucket(bucket, "ListObjectsV2").objects
            listed = tuple(ListedObject(k, len(objects[k].data), f'"{objects[k].etag}"') for k in page)
            return ObjectsPage(listed, truncated, page[-1] if truncated else None)

    def list_uploads_page(self, bucket: str, prefix: str, *, key_marker: str | None = None,
                          upload_id_marker: str | None = None) -> UploadsPage:
        self._enter("ListMultipartUploads", Bucket=bucket, Prefix=prefix, KeyMarker=key_marker,
                    UploadIdMarker=upload_id_marker)
        with self._lock:
            uploads = sorted((u for u in self._bucket(bucket, "ListMultipartUploads").uploads.values()
                              if u.key.startswith(prefix)), key=lambda u: (u.key, u.upload_id))

            def after_markers(u: _Upload) -> bool:
                if key_marker is None:
                    return True
                if upload_id_marker:
                    return u.key > key_marker or (u.key == key_marker and u.upload_id > upload_id_marker)
                return u.key > key_marker

            rest = [u for u in uploads if after_markers(u)]
            page = rest[:self.uploads_page_size]
            truncated = len(rest) > len(page)
            listed = tuple(ListedUpload(u.key, u.upload_id, u.initiated,
                                        u.algorithm.value.upper() if u.algorithm else None) for u in page)
            last = page[-1] if truncated and page else None
            return UploadsPage(listed, truncated, last.key if last else None, last.upload_id if last else None)
