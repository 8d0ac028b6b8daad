"""The boto3 adapter of the :class:`~mpupload.storage.port.Store` port: the only module of mpupload that calls an
S3 operation.

A :class:`Boto3Store` is built from the picklable :class:`~mpupload.storage.config.StoreConfig` and builds its
boto3 client lazily, in the process that first uses it: it pickles as its config alone, so a worker process gets
it through its pipe or spec and builds its own client (clients never cross a process boundary).

Each method is one request with S3's parameters, passed through as botocore names them; errors are botocore's own,
read by :mod:`mpupload.storage.errors`. One exception: a small whole object's PutObject takes the lean path
(:mod:`.lean`: its own SigV4 request on a persistent connection, a fraction of botocore's CPU) when the client's
configuration allows it; its error answers are :class:`~mpupload.storage.errors.StoreError`, its network
failures botocore's exceptions. ``MPUPLOAD_LEAN_PUT=0`` sends every PutObject through botocore.

Pagination and abort-and-confirm come from :class:`~mpupload.storage.port.StoreBase`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ..checksums import Algorithm, boto_checksum_param
from .config import StoreConfig
from .port import (
    CHECKSUM_FIELDS,
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
    as_utc,
)

if TYPE_CHECKING:
    from .lean import LeanPut

__all__ = ["Boto3Store"]

log = logging.getLogger("mpupload")


class Boto3Store(StoreBase):
    """A :class:`~mpupload.storage.port.Store` over one boto3 S3 client, built on first use."""

    #: a worker process can have it (it pickles as its config and builds its own client there)
    crosses_processes = True

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config or StoreConfig()
        self._client: Any = None
        self._pid = os.getpid()
        #: the lean PutObject over this process's client (``None``: not decided yet; ``False``: botocore only)
        self._lean: LeanPut | Literal[False] | None = None
        self._presign_client: Any = None
        self._presign_pid = 0
        self._presign_lock = threading.Lock()

    @classmethod
    def over_client(cls, client: Any, config: StoreConfig | None = None) -> Boto3Store:
        """A store over a client built elsewhere (tests: a fake client). It still pickles as ``config``."""
        store = cls(config)
        store._client = client
        store._pid = -1  # never rebuilt: the fake is the client, in every process
        store._lean = False  # a client built elsewhere may carry its own handlers: botocore sends everything
        return store

    # -- the client, per process ----------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The boto3 client, built from the config the first time it is needed in this process (a forked child
        inherits the parent's store object, never its connections: it builds its own)."""
        if self._client is None or (self._pid != -1 and self._pid != os.getpid()):
            self._client = self.config.make_client()
            self._pid = os.getpid()
            self._lean = None
        return self._client

    def lean_put(self) -> LeanPut | None:
        """The lean PutObject over this process's client (:mod:`.lean`), or ``None``: botocore sends them."""
        client = self.client
        if self._lean is None:
            from .lean import LeanPut

            self._lean = LeanPut.for_client(client) or False
        return self._lean if self._lean is not False else None

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self._client = None
        self._pid = os.getpid()
        self._lean = None
        self._presign_client = None
        self._presign_pid = 0
        self._presign_lock = threading.Lock()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Boto3Store) and other.config == self.config

    def __hash__(self) -> int:
        return hash((Boto3Store, self.config))

    def __repr__(self) -> str:
        return f"Boto3Store({self.config!r})"

    @property
    def endpoint_url(self) -> str | None:
        return self.config.endpoint_url

    def short_lived(self) -> Boto3Store:
        """A fresh store (and client) with short timeouts and few retries, for aborts."""
        return Boto3Store(self.config.short_lived())

    def connect(self) -> None:
        self.client  # noqa: B018 - built now

    # -- buckets ------------------------------------------------------------------------------------------------
    def head_bucket(self, bucket: str) -> None:
        self.client.head_bucket(Bucket=bucket)

    def create_bucket(self, bucket: str) -> None:
        self.client.create_bucket(Bucket=bucket)

    def lifecycle_rules(self, bucket: str) -> list[Mapping[str, Any]]:
        answer = self.client.get_bucket_lifecycle_configuration(Bucket=bucket)
        return list(answer.get("Rules") or [])

    # -- objects ------------------------------------------------------------------------------------------------
    def head_object(self, bucket: str, key: str, *, version_id: str | None = None,
                    checksum_mode: bool = False) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if checksum_mode:
            kwargs["ChecksumMode"] = "ENABLED"
        if version_id:
            kwargs["VersionId"] = version_id
        return dict(self.client.head_object(**kwargs))

    def get_object(self, bucket: str, key: str, *, version_id: str | None = None,
                   byte_range: tuple[int, int] | None = None) -> Body:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        if byte_range is not None:
            kwargs["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        body: Body = self.client.get_object(**kwargs)["Body"]
        return body

    def put_object(self, bucket: str, key: str, body: Any, *, content_length: int, checksum: Checksum | None = None,
                   content_md5: str | None = None, if_none_match: bool = False,
                   object_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """PutObject: a small whole object goes the lean way when it can (:mod:`.lean`), the rest through
        botocore."""
        lean = self.lean_put()
        if lean is not None and lean.accepts(bucket, content_length, object_args):
            from .lean import UseBotocore

            try:
                return lean.put(bucket, key, body, content_length=content_length, checksum=checksum,
                                content_md5=content_md5, if_none_match=if_none_match, object_args=object_args)
            except UseBotocore as exc:
                log.debug("PutObject of s3://%s/%s goes through botocore: %s", bucket, key, exc)
                lean.forget(bucket)
                if hasattr(body, "seek"):
                    body.seek(0)
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, "ContentLength": content_length,
                                  **(object_args or {})}
        if checksum is not None:
            params[boto_checksum_param(checksum.algorithm)] = checksum.value
        if content_md5 is not None:
            params["ContentMD5"] = content_md5
        if if_none_match:
            params["IfNoneMatch"] = "*"
        params["Body"] = body
        return dict(self.client.put_object(**params))

    def delete_object(self, bucket: str, key: str, *, version_id: str | None = None,
                      if_match: str | None = None) -> None:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        elif if_match:
            kwargs["IfMatch"] = f'"{if_match}"'
        self.client.delete_object(**kwargs)

    # -- multipart uploads --------------------------------------------------------------------------------------
    def create_multipart_upload(self, bucket: str, key: str, *, algorithm: Algorithm | None = None,
                                object_args: Mapping[str, Any] | None = None, size: int | None = None,
                                part_size: int | None = None) -> str:
        create: dict[str, Any] = {**(object_args or {}), "Bucket": bucket, "Key": key}
        if algorithm is not None:
            create["ChecksumAlgorithm"] = algorithm.value.upper()
        return str(self.client.create_multipart_upload(**create)["UploadId"])

    def upload_part(self, bucket: str, key: str, upload_id: str, part_number: int, body: Any, *,
                    content_length: int, checksum: Checksum | None = None,
                    content_md5: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": part_number,
                                  "ContentLength": content_length}
        if checksum is not None:
            params[boto_checksum_param(checksum.algorithm)] = checksum.value
        if content_md5 is not None:
            params["ContentMD5"] = content_md5
        params["Body"] = body
        return dict(self.client.upload_part(**params))

    def complete_multipart_upload(self, bucket: str, key: str, upload_id: str, parts: Sequence[CompletedPart], *,
                                  if_none_match: bool = False) -> dict[str, Any]:
        entries = []
        for part in parts:
            entry: dict[str, Any] = {"PartNumber": part.number, "ETag": f'"{part.etag}"'}
            if part.checksum is not None:
                entry[boto_checksum_param(part.checksum.algorithm)] = part.checksum.value
            entries.append(entry)
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, "UploadId": upload_id,
                                  "MultipartUpload": {"Parts": entries}}
        if if_none_match:
            params["IfNoneMatch"] = "*"
        return dict(self.client.complete_multipart_upload(**params))

    # -- presigned requests (the API server brokers uploads with them) ------------------------------------------------
    @property
    def presign_client(self) -> Any:
        """A SigV4 client for presigning (built once per process; presigning sends nothing)."""
        client = self._presign_client
        if client is None or self._presign_pid != os.getpid():
            with self._presign_lock:  # the server's sign requests come on many threads at once: one client
                client = self._presign_client
                if client is None or self._presign_pid != os.getpid():
                    client = self.config.make_client(signature_version="s3v4")
                    self._presign_client = client
                    self._presign_pid = os.getpid()
        return client

    def _presign(self, operation: str, method: str, params: dict[str, Any], checksum: Checksum | None,
                 content_md5: str | None, expires_in: int) -> PresignedRequest:
        headers: dict[str, str] = {}
        if checksum is not None:
            params[boto_checksum_param(checksum.algorithm)] = checksum.value
            headers[f"x-amz-checksum-{checksum.algorithm.value}"] = checksum.value
        if content_md5 is not None:
            params["ContentMD5"] = content_md5
            headers["Content-MD5"] = content_md5
        url = self._fast_presign(method, params, headers, expires_in)
        if url is None:
            url = self.presign_client.generate_presigned_url(operation, Params=params, ExpiresIn=expires_in,
                                                             HttpMethod=method)
        return PresignedRequest(method, str(url), headers, expires_in)

    def _fast_presign(self, method: str, params: dict[str, Any], headers: dict[str, str],
                      expires_in: int) -> str | None:
        """The presigned URL signed by :func:`.sigv4.presign` at botocore's endpoint for the bucket (the lean
        path's: same addressing, signing region, credentials frozen anew), without botocore's request pipeline:
        about a third of its CPU, which is the API server's cost per signed part. ``None`` (botocore signs)
        where the lean path would not go: another signature scheme, proxies, ``MPUPLOAD_LEAN_PUT=0``..."""
        from .sigv4 import Credentials, amz_date, presign, quote_key

        lean = self._presign_lean()
        target = lean._target(params["Bucket"]) if lean is not None else None
        if lean is None or target is None:
            return None
        frozen = lean._credentials.get_frozen_credentials()
        path = f"{target.base_path}/{quote_key(params['Key'])}"
        query = {"partNumber": str(params["PartNumber"]), "uploadId": str(params["UploadId"])} \
            if "UploadId" in params else {}
        signed = presign(method, path, {"host": target.host_header, **headers},
                         Credentials(frozen.access_key, frozen.secret_key, frozen.token), region=target.region,
                         service=target.service, timestamp=amz_date(_now()), expires=expires_in,
                         params=query)
        return f"{target.scheme}://{target.host_header}{path}?{signed}"

    def _presign_lean(self) -> Any:
        """The lean path of the presigning client (built with it, once per process; ``False``: none)."""
        client = self.presign_client
        lean = getattr(self, "_presign_lean_of", None)
        if lean is None or lean[0] is not client or lean[1] is None:
            from .lean import LeanPut

            with self._presign_lock:
                lean = getattr(self, "_presign_lean_of", None)
                if lean is None or lean[0] is not client or lean[1] is None:
                    lean = (client, LeanPut.for_client(client) or False)
                    self._presign_lean_of = lean
        return lean[1] or None

    def presign_upload_part(self, bucket: str, key: str, upload_id: str, part_number: int, *,
                            checksum: Checksum | None = None, content_md5: str | None = None,
                            expires_in: int) -> PresignedRequest:
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": part_number}
        return self._presign("upload_part", "PUT", params, checksum, content_md5, expires_in)

    def presign_put_object(self, bucket: str, key: str, *, checksum: Checksum | None = None,
                           content_md5: str | None = None, expires_in: int) -> PresignedRequest:
        return self._presign("put_object", "PUT", {"Bucket": bucket, "Key": key}, checksum, content_md5,
                             expires_in)

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)

    def list_parts_page(self, bucket: str, key: str, upload_id: str, *, marker: int | None = None,
                        max_parts: int | None = None) -> PartsPage:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
        if marker is not None:
            kwargs["PartNumberMarker"] = marker
        if max_parts is not None:
            kwargs["MaxParts"] = max_parts
        page = self.client.list_parts(**kwargs)
        parts = []
        for p in page.get("Parts") or []:
            checksums = {algorithm: str(p[name]) for algorithm, name in CHECKSUM_FIELDS.items() if p.get(name)}
            stamp = p.get("LastModified")
            parts.append(PagePart(int(p["PartNumber"]), int(p.get("Size", 0)), str(p.get("ETag", "")).strip('"'),
                                  checksums, as_utc(stamp) if stamp is not None else None))
        next_marker = page.get("NextPartNumberMarker")
        return PartsPage(tuple(parts), bool(page.get("IsTruncated")), int(next_marker) if next_marker else None,
                         page.get("ChecksumAlgorithm"))

    def list_objects_page(self, bucket: str, prefix: str, *, token: str | None = None) -> ObjectsPage:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if token is not None:
            kwargs["ContinuationToken"] = token
        page = self.client.list_objects_v2(**kwargs)
        objects = tuple(ListedObject(str(o["Key"]), int(o.get("Size") or 0), str(o.get("ETag") or ""))
                        for o in page.get("Contents") or [])
        return ObjectsPage(objects, bool(page.get("IsTruncated")), page.get("NextContinuationToken") or None)

    def list_uploads_page(self, bucket: str, prefix: str, *, key_marker: str | None = None,
                          upload_id_marker: str | None = None) -> UploadsPage:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if key_marker is not None:
            kwargs["KeyMarker"] = key_marker
        if upload_id_marker is not None:
            kwargs["UploadIdMarker"] = upload_id_marker
        page = self.client.list_multipart_uploads(**kwargs)
        uploads = tuple(ListedUpload(str(u["Key"]), str(u["UploadId"]), as_utc(u["Initiated"]),
                                     u.get("ChecksumAlgorithm")) for u in page.get("Uploads") or [])
        return UploadsPage(uploads, bool(page.get("IsTruncated")), page.get("NextKeyMarker") or None,
                           page.get("NextUploadIdMarker") or None)


def _now() -> Any:
    """The time a presigned URL is signed at (a function: the tests fix it)."""
    import datetime as _dt

    return _dt.datetime.now(_dt.UTC)
