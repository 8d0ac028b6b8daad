"""The brokered adapter of the :class:`~mpupload.storage.port.Store` port: the API server holds the storage
credentials, this process holds only the user's API token (issue 15).

Each S3 operation the engine makes becomes a call to the server's broker routes, or a request to a URL the
server signed:

* ``create_multipart_upload`` — ``POST /api/v1/uploads`` with ``"brokered": true`` (always a multipart upload,
  one part for a small file: the workers then need only the upload's id). The **upload id is the server's record
  id**: every later call names it, and the progress reports go to the same record;
* ``sign_ahead`` — ``POST /api/v1/uploads/{id}/parts/sign`` for several parts at once, each with its checksum
  (and its ``Content-MD5`` when the server's storage checks only that) signed in: a worker given a run of parts
  hashes them first and signs them in one request (:meth:`BrokeredStore.sign_window` parts at most), so the
  server's cost per request and the round trip are shared;
* ``upload_part`` — a ``PUT`` of the body to the part's signed URL, straight to the store: the one signed ahead
  for this body (same checksum, not about to expire), else one signed now. A URL the store refuses with 403
  (expired, most likely: Ceph RGW does not say why) is signed again, once, and the part sent again;
* ``list_parts_page`` — ``GET /api/v1/uploads/{id}/parts`` (the server lists every page);
* ``complete_multipart_upload`` — ``POST /api/v1/uploads/{id}/complete``: the server checks the parts against
  ListParts, completes and verifies the object;
* ``abort_multipart_upload`` — ``POST /api/v1/uploads/{id}/abort``: the server aborts and confirms;
* ``list_uploads_page`` — the user's brokered records that are still active, for ``--resume`` without a journal;
* ``head_object`` — the newest completed brokered record of the key: the object as the server found it when it
  verified it (the user cannot read the storage).

A brokered **directory run** (:meth:`BrokeredStore.open_run`) is one server record: its small files are
PutObjects whose URLs a worker has signed a batch at a time (``sign_puts``: ``POST /api/v1/uploads/{run}/
objects/sign``, each with its digests signed in), its large files multipart uploads created in it
(``parent_id``); ``list_objects_page`` is the server's listing of the user's space (``GET /api/v1/storage/
objects``). The bodies go on the lean PutObject's persistent connections (:class:`~.lean.Wire`).

On a **cluster** (:meth:`BrokeredStore.for_cluster`) the workers never get the user's token: they get a store whose
token is a *worker token* the server made for the upload or run (asked for with its create, ``"worker_token":
true``; for an upload being resumed, ``POST /api/v1/uploads/{id}/worker-token``). It signs that record's URLs
and nothing else, it dies with the record, and logging out revokes it. Until the coordinator has it (the workers'
check before the first byte), the workers' store carries no token at all.

What a user cannot do without storage credentials (read an object back, a PutObject outside a run, delete) is
refused as ``AccessDenied``: the CLI refuses the options that need it before anything starts.

Engine keys are full storage keys (``PREFIX/<user>/KEY``, the ``space`` :data:`BrokerConfig` carries); the
server is sent the part under the user's space. Errors are :class:`~.errors.StoreError` with S3's codes (the
store's own XML error for a refused PUT; ``NoSuchUpload`` for a record the server says is gone or not active),
network failures the builtin :class:`ConnectionError` (retried), so :mod:`.errors` reads them as any store's.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import errors as E
from ..checksums import Algorithm
from .errors import StoreError
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

__all__ = ["BrokerConfig", "BrokeredStore", "fetch_storage"]

#: how often a part whose URL expired before the store read it is signed and sent again
RESIGN_ATTEMPTS = 2
#: a worker hashes and signs at most this many bytes of parts ahead of sending them (they are read again to
#: be sent: from the page cache, and nothing is held in memory)
SIGN_AHEAD_BYTES = 128 * 1024 * 1024
#: a URL signed ahead is used only while at least this share of its lifetime is left (else it is signed again)
FRESH_SHARE = 0.25
_HEADER_OF = {algorithm: f"x-amz-checksum-{algorithm.value}" for algorithm in CHECKSUM_FIELDS}


@dataclass(frozen=True)
class BrokerConfig:
    """Picklable settings of a brokered store (they travel to the worker processes)."""

    api_url: str
    #: the user's API token (never shown by ``repr``)
    token: str = field(repr=False)
    #: the server's storage bucket, and the user's space in it (``PREFIX/<user>/``)
    bucket: str
    space: str
    #: the server's storage checks ``Content-MD5`` only: every part sends its MD5, signed in
    content_md5_required: bool = False
    #: the most parts the server signs in one request
    max_sign_batch: int = 100
    #: TLS verification of the store's URLs: ``None`` the system's, a path a CA bundle, ``False`` none
    verify: bool | str | None = None
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0

    def short_lived(self) -> BrokerConfig:
        return dataclasses.replace(self, connect_timeout_s=3.0, read_timeout_s=30.0)


def fetch_storage(api_url: str, token: str) -> dict[str, Any]:
    """``GET /api/v1/storage``: where the user's brokered uploads go (the client's errors: 409 when the server
    has no storage, 401 for a bad token, :class:`~mpupload.client.errors.ApiUnreachable`)."""
    from ..client.http import ApiClient

    client = ApiClient(api_url, token)
    try:
        return client._json(client._request("GET", "/api/v1/storage"))
    finally:
        client.close()


class BrokeredStore(StoreBase):
    """The :class:`~mpupload.storage.port.Store` of a brokered upload (see the module docstring)."""

    crosses_processes = True
    #: no PutObject here: a small file is a one-part multipart upload
    always_multipart = True

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        #: a brokered directory run's record id, once :meth:`open_run` made it (the coordinator's store): its large
        #: files' multipart uploads are created in it, and its small files' URLs signed through it
        self.run_id: str | None = None
        #: storage key -> (run id, checksum, content_md5, request, use-before monotonic): PutObject URLs signed ahead
        #: (:meth:`sign_puts`), and the run a key's URL is signed in again
        self._puts: dict[str, tuple[str, str | None, str | None, PresignedRequest | None, float]] = {}
        self._local = threading.local()
        #: storage key -> the record this process completed for it (what :meth:`head_object` answers first)
        self._completed: dict[str, dict[str, Any]] = {}
        #: (upload id, part number) -> URLs signed ahead: (checksum, content_md5, request, use-before monotonic)
        self._ahead: dict[tuple[str, int], tuple[str | None, str | None, PresignedRequest, float]] = {}
        self._ahead_lock = threading.Lock()
        #: the store a cluster's workers get (:meth:`for_cluster`): it signs with a worker token, once there is one,
        #: and the record that token signs for
        self._workers: BrokeredStore | None = None
        self._granted: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"BrokeredStore({self.config.api_url!r}, s3://{self.config.bucket}/{self.config.space})"

    # -- the port's plumbing ----------------------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str | None:
        return self.config.api_url

    def short_lived(self) -> BrokeredStore:
        return BrokeredStore(self.config.short_lived())

    def for_cluster(self) -> BrokeredStore:
        """The store a cluster's workers get: the same settings with **no** token until the upload or run is
        created (or resumed) here; then with its worker token (see the module docstring)."""
        if self._workers is None:
            self._workers = BrokeredStore(dataclasses.replace(self.config, token=""))
            if self.run_id is not None:
                self._grant(self.run_id)
        return self._workers

    def check_reach(self) -> None:
        """Whether this process reaches the API server (a cluster's worker, before it takes any job): ``GET
        /healthz``. Raises :class:`ConnectionError` saying why not."""
        import requests

        url = self.config.api_url.rstrip("/") + "/healthz"
        try:
            response = self._session().get(url, timeout=(min(self.config.connect_timeout_s, 5.0), 10.0))
        except requests.RequestException as exc:
            raise ConnectionError(f"cannot reach the API server at {self.config.api_url} "
                                  f"({_reason(exc)})") from None
        if response.status_code != 200:
            raise ConnectionError(f"cannot reach the API server at {self.config.api_url} (GET /healthz answered "
                                  f"HTTP {response.status_code})")

    def _grant(self, record_id: str, answer: Mapping[str, Any] | None = None) -> None:
        """Give the workers' store the worker token of ``record_id`` (unless it has it): the one in a create's
        ``answer``, else one asked for now. A resume that lists an upload's parts and then starts a new upload
        instead (the file no longer fits it) gets the new upload's token with its create."""
        if self._workers is None or self._granted == record_id:
            return
        token = (answer or {}).get("worker_token")
        if not token:
            token = self._api("POST", f"/api/v1/uploads/{record_id}/worker-token", "CreateWorkerToken",
                              upload_id=record_id)["token"]
        self._workers.config = dataclasses.replace(self._workers.config, token=str(token))
        self._granted = record_id

    def connect(self) -> None:
        self._session()

    def known_traits(self) -> tuple[bool, bool | None, bool | None]:
        """What the store checks, as the server's operator set it up (no probe: a user cannot make the probe's
        throwaway upload): ``(validates_checksum, etag_is_md5, validates_content_md5)``. A server started with
        ``--storage-content-md5`` has a store that checks Content-MD5 and not checksums; one without it, a store
        that refuses a body whose signed checksum differs (AWS)."""
        md5 = self.config.content_md5_required
        return not md5, None, True if md5 else None

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = requests.Session()
            session.headers["User-Agent"] = "mpupload"
            self._local.session = session
        return session

    def _timeout(self) -> tuple[float, float]:
        return (self.config.connect_timeout_s, self.config.read_timeout_s)

    def _api(self, method: str, path: str, operation: str, *, body: Mapping[str, Any] | None = None,
             upload_id: str | None = None) -> Any:
        """One call to the server's routes; its refusals as :class:`StoreError` with S3's codes."""
        import requests

        url = self.config.api_url.rstrip("/") + path
        try:
            response = self._session().request(method, url, json=None if body is None else dict(body),
                                               headers={"Authorization": f"Bearer {self.config.token}"},
                                               timeout=self._timeout())
        except requests.Timeout as exc:
            raise TimeoutError(f"the API server at {self.config.api_url} did not answer {operation} in time") \
                from exc
        except requests.RequestException as exc:
            raise ConnectionError(f"cannot reach the API server at {self.config.api_url} ({type(exc).__name__})") \
                from exc
        if response.status_code < 400:
            try:
                return response.json()
            except ValueError:
                raise StoreError("InternalError", 502, f"the API server's answer to {operation} is not JSON",
                                 operation) from None
        raise _api_error(response, operation, upload_id)

    def _relative(self, bucket: str, key: str) -> str:
        space = self.config.space
        if bucket != self.config.bucket or not key.startswith(space):
            raise StoreError("AccessDenied", 403, f"s3://{bucket}/{key} is outside your space s3://"
                                                  f"{self.config.bucket}/{space} on the API server's storage")
        return key[len(space):]

    # -- buckets ------------------------------------------------------------------------------------------------
    def head_bucket(self, bucket: str) -> None:
        if bucket != self.config.bucket:
            raise StoreError("NoSuchBucket", 404, f"the API server's storage is s3://{self.config.bucket}")

    def create_bucket(self, bucket: str) -> None:
        raise _denied("CreateBucket")

    def lifecycle_rules(self, bucket: str) -> list[Mapping[str, Any]]:
        raise _denied("GetBucketLifecycleConfiguration")

    # -- objects ------------------------------------------------------------------------------------------------
    def head_object(self, bucket: str, key: str, *, version_id: str | None = None,
                    checksum_mode: bool = False) -> dict[str, Any]:
        """The object as the server verified it on completion (the newest completed brokered upload of the key);
        404 when the server completed none."""
        self._relative(bucket, key)
        record = self._completed.get(key)
        if record is None:
            found = [r for r in self._records() if r.get("storage_key") == key and r.get("status") == "completed"]
            if not found:
                # an object put by a directory run has no record of its own: the server's listing of it
                for obj in self.list_objects_page(bucket, key).objects:
                    if obj.key == key:
                        return {"ContentLength": obj.size, "ETag": f'"{obj.etag.strip(chr(34))}"'}
                raise StoreError("404", 404, "Not Found", "HeadObject")
            record = max(found, key=lambda r: str(r.get("updated_at") or ""))
        return _head_of(record)

    def get_object(self, bucket: str, key: str, *, version_id: str | None = None,
                   byte_range: tuple[int, int] | None = None) -> Body:
        raise _denied("GetObject")

    def put_object(self, bucket: str, key: str, body: Any, *, content_length: int, checksum: Checksum | None = None,
                   content_md5: str | None = None, if_none_match: bool = False,
                   object_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A small file of a brokered directory run: a PUT to the URL the server signed for this body in the run
        (:meth:`sign_puts`; signed now when none is fresh). ``object_args`` are not sent: the URL is signed for
        the body's digests only. Outside a run there is no PutObject here."""
        self._relative(bucket, key)
        with self._ahead_lock:
            kept = self._puts.get(key)
        run_id = kept[0] if kept is not None else self.run_id
        if run_id is None:
            raise _denied("PutObject")
        if if_none_match:
            raise StoreError("NotImplemented", 501, "a brokered upload cannot refuse to overwrite (--no-overwrite)")
        value = checksum.value if checksum is not None else None

        def signed_for(attempt: int) -> PresignedRequest:
            if attempt == 1 and kept is not None and kept[3] is not None \
                    and (kept[1], kept[2]) == (value, content_md5) and time.monotonic() < kept[4]:
                return kept[3]
            return self._sign_objects(run_id, [(key, content_length, checksum, content_md5)])[0][1]

        answer = self._send(signed_for, body, content_length, "PutObject", f"{key.rsplit('/', 1)[-1]}")
        with self._ahead_lock:
            self._puts.pop(key, None)
        return answer

    def delete_object(self, bucket: str, key: str, *, version_id: str | None = None,
                      if_match: str | None = None) -> None:
        raise _denied("DeleteObject")

    # -- multipart uploads --------------------------------------------------------------------------------------
    def create_multipart_upload(self, bucket: str, key: str, *, algorithm: Algorithm | None = None,
                                object_args: Mapping[str, Any] | None = None, size: int | None = None,
                                part_size: int | None = None) -> str:
        """The server creates the upload and its record; the record's id is the upload id."""
        if size is None:
            raise StoreError("InvalidRequest", 400, "a brokered upload needs the object's size when it is created")
        body = {"brokered": True, "key": self._relative(bucket, key), "total_bytes": size,
                "part_size": part_size or 0, "multipart": True,
                "checksum_algorithm": algorithm.value if algorithm is not None else "none",
                "filename": os.path.basename(key), "host": socket.gethostname(),
                **({"parent_id": self.run_id} if self.run_id is not None else {}),
                **({"worker_token": True} if self.run_id is None and self._workers is not None else {})}
        record = self._api("POST", "/api/v1/uploads", "CreateMultipartUpload", body=body)
        if self.run_id is None:
            self._grant(str(record["id"]), record)
        return str(record["id"])

    def sign_window(self, part_size: int) -> int:
        """How many parts of ``part_size`` bytes a worker hashes and signs at once (1: sign each part as it goes):
        at most :data:`SIGN_AHEAD_BYTES` of them, and at most what the server signs in one request."""
        return max(1, min(self.config.max_sign_batch, SIGN_AHEAD_BYTES // max(1, part_size)))

    def sign_ahead(self, upload_id: str, parts: Sequence[tuple[int, int, Checksum | None, str | None]]) -> None:
        """Sign the URLs of ``(number, size, checksum, content_md5)`` parts in one request (in requests of at most
        ``max_sign_batch``) and keep them for :meth:`upload_part`. A URL is used only for the body it was signed
        for, and only while a quarter of its lifetime is left."""
        step = max(1, self.config.max_sign_batch)
        for start in range(0, len(parts), step):
            chunk = parts[start:start + step]
            signed_at = time.monotonic()
            requests_ = self.sign_parts(upload_id, chunk)
            with self._ahead_lock:
                for (number, _size, checksum, md5), request in zip(chunk, requests_, strict=True):
                    use_before = signed_at + request.expires_in * (1 - FRESH_SHARE)
                    self._ahead[(upload_id, number)] = (checksum.value if checksum is not None else None, md5,
                                                        request, use_before)

    def _signed_for(self, upload_id: str, number: int, size: int, checksum: Checksum | None,
                    content_md5: str | None) -> PresignedRequest:
        """The URL signed ahead for this body when it is still fresh, else one signed now."""
        with self._ahead_lock:
            kept = self._ahead.pop((upload_id, number), None)
        if kept is not None:
            value, md5, request, use_before = kept
            if value == (checksum.value if checksum is not None else None) and md5 == content_md5 \
                    and time.monotonic() < use_before:
                return request
        return self.sign_parts(upload_id, [(number, size, checksum, content_md5)])[0]

    def upload_part(self, bucket: str, key: str, upload_id: str, part_number: int, body: Any, *,
                    content_length: int, checksum: Checksum | None = None,
                    content_md5: str | None = None) -> dict[str, Any]:
        def signed_for(attempt: int) -> PresignedRequest:
            if attempt == 1:
                return self._signed_for(upload_id, part_number, content_length, checksum, content_md5)
            return self.sign_parts(upload_id, [(part_number, content_length, checksum, content_md5)])[0]

        return self._send(signed_for, body, content_length, "UploadPart", f"part {part_number}")

    def _send(self, signed_for: Any, body: Any, content_length: int, operation: str, what: str) -> dict[str, Any]:
        """Send ``body`` to the URL ``signed_for(attempt)`` gives, straight to the store, on this thread's
        persistent connection (:class:`~.lean.Wire`, as the lean PutObject's); a 403 (an expired URL, most likely)
        is signed again and sent again, once. The answer as S3's: the ETag and checksums."""
        from urllib.parse import urlsplit

        from .lean import _rewind, _Stale

        wire = self._wire()
        attempt = 0
        stale_retried = False
        while True:
            attempt += 1
            signed = signed_for(attempt)
            url = urlsplit(signed.url)
            scheme, host = url.scheme, url.hostname or ""
            port = url.port or (443 if scheme == "https" else 80)
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            headers = {"Host": url.netloc, **signed.headers, "Content-Length": str(content_length),
                       "User-Agent": "mpupload"}
            conn = wire.connection(scheme, host, port)
            reused = conn.sock is not None and conn.used > 0
            try:
                status, reason, answer_headers, error_body = wire.exchange(conn, signed.method, path, headers, {},
                                                                           body)
            except _Stale as exc:
                wire.drop(scheme, host, port)
                if reused and not stale_retried and _rewind(body):
                    # the store closed an idle keep-alive connection just as we wrote on it: again, on a new one
                    stale_retried, attempt = True, attempt - 1
                    continue
                cause = exc.cause
                raise ConnectionError(f"sending {what} to the store at {_origin(signed.url)} failed "
                                      f"({type(cause).__name__}: {_without_query(str(cause))})") from None
            except BaseException as exc:
                wire.drop(scheme, host, port)
                raise _network_error(exc, what, signed.url) from None
            conn.used += 1
            if 200 <= status < 300:
                lowered = {name.lower(): value for name, value in answer_headers}
                answer: dict[str, Any] = {"ETag": lowered.get("etag", "")}
                for algorithm, name in CHECKSUM_FIELDS.items():
                    value = lowered.get(_HEADER_OF[algorithm])
                    if value:
                        answer[name] = value
                return answer
            wire.drop(scheme, host, port)
            error = _s3_error(status, error_body, reason, operation)
            if not (_maybe_expired(error) and attempt < RESIGN_ATTEMPTS and _rewind(body)):
                raise error

    def _wire(self) -> Any:
        wire = self._local.__dict__.get("wire")
        if wire is None:
            from .lean import Wire

            wire = self._local.wire = Wire(connect_timeout=self.config.connect_timeout_s,
                                           read_timeout=self.config.read_timeout_s, keepalive=True,
                                           verify=self.config.verify)
        return wire

    # -- a brokered directory run ---------------------------------------------------------------------------------
    def open_run(self, prefix: str, *, total_bytes: int, files_total: int, name: str,
                 algorithm: Algorithm | None, resume: bool = False) -> str:
        """The server's record of a directory run to the full storage ``prefix`` (the user's space and a PREFIX
        ending in ``/``): the quota is checked for ``total_bytes`` now. Its id is the run's (:attr:`run_id`).
        ``resume``: it continues the user's earlier runs to the prefix (they end; their large files are its)."""
        body = {"brokered": True, "dataset": True, "key": self._relative(self.config.bucket, prefix),
                "total_bytes": total_bytes, "files_total": files_total, "filename": name, "resume": resume,
                "checksum_algorithm": algorithm.value if algorithm is not None else "none",
                "host": socket.gethostname(), **({"worker_token": True} if self._workers is not None else {})}
        record = self._api("POST", "/api/v1/uploads", "CreateRun", body=body)
        self.run_id = str(record["id"])
        self._grant(self.run_id, record)
        return self.run_id

    def sign_puts(self, run_id: str, objects: Sequence[tuple[str, int, Checksum | None, str | None]]) -> None:
        """Have the PutObject URLs of ``(storage key, size, checksum, content_md5)`` objects of run ``run_id``
        signed (in requests of at most ``max_sign_batch``) and keep them for :meth:`put_object`, which uses a URL
        only for the body it was signed for, while a quarter of its lifetime is left."""
        step = max(1, self.config.max_sign_batch)
        with self._ahead_lock:  # (the run a key is signed in again, should this fail)
            for key, *_ in objects:
                self._puts[key] = (run_id, None, None, None, 0.0)
        for start in range(0, len(objects), step):
            chunk = objects[start:start + step]
            signed_at = time.monotonic()
            signed = self._sign_objects(run_id, chunk)
            with self._ahead_lock:
                for (key, _size, checksum, md5), (_, request) in zip(chunk, signed, strict=True):
                    self._puts[key] = (run_id, checksum.value if checksum is not None else None, md5, request,
                                       signed_at + request.expires_in * (1 - FRESH_SHARE))

    def _sign_objects(self, run_id: str, objects: Sequence[tuple[str, int, Checksum | None, str | None]]
                      ) -> list[tuple[str, PresignedRequest]]:
        body = {"objects": [{"key": self._relative(self.config.bucket, key), "size": size,
                             **({"checksum": checksum.value} if checksum is not None else {}),
                             **({"content_md5": md5} if md5 is not None else {})}
                            for key, size, checksum, md5 in objects]}
        answer = self._api("POST", f"/api/v1/uploads/{run_id}/objects/sign", "SignObjects", body=body,
                           upload_id=run_id)
        expires = int(answer.get("expires_in") or 0)
        space = self.config.space
        return [(space + str(o["key"]), PresignedRequest(str(o["method"]), str(o["url"]),
                                                         dict(o.get("headers") or {}), expires))
                for o in answer["objects"]]

    def sign_parts(self, upload_id: str, parts: Sequence[tuple[int, int, Checksum | None, str | None]]
                   ) -> list[PresignedRequest]:
        """URLs for ``(number, size, checksum, content_md5)`` parts, in one request to the server."""
        body = {"parts": [{"number": number, "size": size,
                           **({"checksum": checksum.value} if checksum is not None else {}),
                           **({"content_md5": md5} if md5 is not None else {})}
                          for number, size, checksum, md5 in parts]}
        answer = self._api("POST", f"/api/v1/uploads/{upload_id}/parts/sign", "SignParts", body=body,
                           upload_id=upload_id)
        expires = int(answer.get("expires_in") or 0)
        return [PresignedRequest(str(p["method"]), str(p["url"]), dict(p.get("headers") or {}), expires)
                for p in answer["parts"]]

    def complete_multipart_upload(self, bucket: str, key: str, upload_id: str, parts: Sequence[CompletedPart], *,
                                  if_none_match: bool = False) -> dict[str, Any]:
        if if_none_match:
            raise StoreError("NotImplemented", 501, "a brokered upload cannot refuse to overwrite (--no-overwrite)")
        body = {"parts": [{"number": p.number, "etag": p.etag,
                           **({"checksum": p.checksum.value} if p.checksum is not None else {})} for p in parts]}
        record = self._api("POST", f"/api/v1/uploads/{upload_id}/complete", "CompleteMultipartUpload", body=body,
                           upload_id=upload_id)
        self._completed[key] = record
        return _head_of(record)

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        self._api("POST", f"/api/v1/uploads/{upload_id}/abort", "AbortMultipartUpload", upload_id=upload_id)

    def presign_upload_part(self, bucket: str, key: str, upload_id: str, part_number: int, *,
                            checksum: Checksum | None = None, content_md5: str | None = None,
                            expires_in: int) -> PresignedRequest:
        raise StoreError("NotImplemented", 501, "the API server signs part URLs for a part's size: use sign_parts",
                         "PresignUploadPart")

    def presign_put_object(self, bucket: str, key: str, *, checksum: Checksum | None = None,
                           content_md5: str | None = None, expires_in: int) -> PresignedRequest:
        raise _denied("PutObject")

    def list_parts_page(self, bucket: str, key: str, upload_id: str, *, marker: int | None = None,
                        max_parts: int | None = None) -> PartsPage:
        """Every part after ``marker`` in one page (the server pages through ListParts itself). An upload resumed
        on a cluster gets its worker token here, before any part goes to the workers."""
        answer = self._api("GET", f"/api/v1/uploads/{upload_id}/parts", "ListParts", upload_id=upload_id)
        if self.run_id is None:
            self._grant(upload_id)
        algorithm = _algorithm(answer.get("checksum_algorithm"))
        parts = []
        for p in answer.get("parts") or []:
            number = int(p["number"])
            if marker is not None and number <= marker:
                continue
            checksums = {algorithm: str(p["checksum"])} if algorithm is not None and p.get("checksum") else {}
            stamp = p.get("last_modified")
            parts.append(PagePart(number, int(p.get("size") or 0), str(p.get("etag") or "").strip('"'), checksums,
                                  as_utc(stamp) if stamp else None))
        if max_parts is not None:
            parts = parts[:max_parts]
        return PartsPage(tuple(parts), False, None, algorithm.value.upper() if algorithm is not None else None)

    def list_uploads_page(self, bucket: str, prefix: str, *, key_marker: str | None = None,
                          upload_id_marker: str | None = None) -> UploadsPage:
        """The user's active brokered uploads under ``prefix``, by key (one page: the server lists them all)."""
        found = []
        for r in self._records():
            key = str(r.get("storage_key") or "")
            if r.get("brokered") and r.get("multipart") and r.get("status") in ("pending", "uploading", "finalizing") \
                    and key.startswith(prefix) and (key_marker is None or key > key_marker):
                algorithm = _algorithm(r.get("checksum_algorithm"))
                found.append(ListedUpload(key, str(r["id"]), as_utc(r["created_at"]),
                                          algorithm.value.upper() if algorithm is not None else None))
        found.sort(key=lambda u: (u.key, u.initiated))
        return UploadsPage(tuple(found), False, None, None)

    def list_objects_page(self, bucket: str, prefix: str, *, token: str | None = None) -> ObjectsPage:
        """One page of the objects under ``prefix`` in the user's space, as the server lists them."""
        from urllib.parse import urlencode

        space = self.config.space
        if bucket != self.config.bucket or not (prefix.startswith(space) or space.startswith(prefix)):
            raise StoreError("AccessDenied", 403, f"s3://{bucket}/{prefix} is outside your space s3://"
                                                  f"{self.config.bucket}/{space} on the API server's storage")
        query = {"prefix": prefix[len(space):] if prefix.startswith(space) else "",
                 **({"token": token} if token is not None else {})}
        answer = self._api("GET", f"/api/v1/storage/objects?{urlencode(query)}", "ListObjectsV2")
        objects = tuple(ListedObject(space + str(o["key"]), int(o.get("size") or 0), str(o.get("etag") or ""))
                        for o in answer.get("objects") or [])
        next_token = answer.get("next_token")
        return ObjectsPage(objects, next_token is not None, str(next_token) if next_token is not None else None)

    def _records(self) -> list[dict[str, Any]]:
        answer = self._api("GET", "/api/v1/uploads", "ListUploads")
        return [r for r in answer if isinstance(r, dict)] if isinstance(answer, list) else []


# -- answers and errors ---------------------------------------------------------------------------------------------

def _reason(exc: BaseException) -> str:
    """A requests error in a few words: its innermost cause (``ConnectionRefusedError: [Errno 111] ...``)."""
    cause = exc
    while (inner := cause.__cause__ or cause.__context__) is not None:
        cause = inner
    return f"{type(cause).__name__}: {cause}"[:200]


def _origin(url: str) -> str:
    """``scheme://host:port`` of a URL: what an error may name (a signed URL's query is a credential)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _without_query(text: str) -> str:
    """``text`` with every URL query cut out (requests names the URL it failed on, signature included)."""
    import re

    return re.sub(r"\?[^\s)'\"]*", "?...", text)


def _network_error(exc: BaseException, what: str, url: str) -> BaseException:
    """A failure of the connection to the store as the error it stands for, never naming the URL's query: an
    untrusted certificate is a :class:`~mpupload.errors.UsageError` (exit 2: what to pass), a timeout the builtin
    :class:`TimeoutError`, any other network failure :class:`ConnectionError` (both retried); the body's own
    errors (an unreadable or changed file, a cancel) as they are."""
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - botocore is a dependency
        return exc
    if isinstance(exc, bx.SSLError):
        if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc):
            return E.UsageError(f"TLS certificate check failed for the store at {_origin(url)} (the API server's "
                                "storage): pass --ca-bundle FILE with the CA that signed its certificate, or "
                                "--no-verify-ssl for a test store")
        return ConnectionError(f"sending {what} to the store at {_origin(url)} failed (TLS: "
                               f"{_without_query(str(exc))})")
    if isinstance(exc, (bx.ReadTimeoutError, bx.ConnectTimeoutError, TimeoutError)):
        return TimeoutError(f"the store at {_origin(url)} did not answer {what} in time")
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionClosedError, OSError)) \
            and not isinstance(exc, (FileNotFoundError, PermissionError)):
        return ConnectionError(f"sending {what} to the store at {_origin(url)} failed ({type(exc).__name__}: "
                               f"{_without_query(str(exc))})")
    return exc


def _algorithm(name: object) -> Algorithm | None:
    try:
        return Algorithm(str(name).lower()) if name and str(name).lower() != "none" else None
    except ValueError:
        return None


def _head_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """A HeadObject-like answer from a completed brokered record: its size, ETag and, when the server verified
    the object by its checksum, that checksum."""
    head: dict[str, Any] = {"ContentLength": int(record.get("total_bytes") or 0)}
    if record.get("multipart") and record.get("part_size"):
        # the part size it was sent with, as a direct directory run stores it in the object's metadata
        # (``mpupload-part-size``): --skip-existing compares a multipart ETag with it
        head["Metadata"] = {"mpupload-part-size": str(record["part_size"])}
    etag = record.get("etag")
    if etag:
        head["ETag"] = f'"{str(etag).strip(chr(34))}"'
    algorithm = _algorithm(record.get("checksum_algorithm"))
    if algorithm is not None and record.get("verified") == algorithm.value and record.get("checksum"):
        head[CHECKSUM_FIELDS[algorithm]] = str(record["checksum"])
    return head


def _denied(operation: str) -> StoreError:
    return StoreError("AccessDenied", 403, f"{operation} is not possible in a brokered upload: the API server "
                                           "holds the storage credentials", operation)


def _maybe_expired(error: StoreError) -> bool:
    """A store's 403 to a URL the API server signed: most likely expired before the store saw it. AWS says so
    ("Request has expired"); Ceph RGW answers a bare ``AccessDenied``. Either way it is signed again, once."""
    return error.status == 403


def _s3_error(status: int, body: bytes, reason: str, operation: str) -> StoreError:
    """The store's error answer as a :class:`StoreError`: S3's XML code and message, else the HTTP status."""
    from .lean import parse_error

    found = parse_error(status, body, reason)
    return StoreError(found.code, status, found.message, operation)


def _api_error(response: Any, operation: str, upload_id: str | None) -> Exception:
    """A refusal of the API server as the error it stands for: 404 (not yours, or no such upload) and 409 for an
    upload the storage no longer has, or that is no longer active, are ``NoSuchUpload``; 401 and 403 an
    :class:`~mpupload.errors.AuthError` (exit 3), 400, 413 and 422 (a key outside the rules, the quota) a
    :class:`~mpupload.errors.UsageError` with the server's reason (exit 2); 429 is ``SlowDown``; 5xx keep their
    status (retried)."""
    try:
        data = response.json()
        detail = str(data.get("detail")) if isinstance(data, dict) else str(data)
    except ValueError:
        detail = (response.text or "").strip()[:200]
    status = response.status_code
    if status == 404 and upload_id is not None:
        return StoreError("NoSuchUpload", 404, detail, operation)
    if status == 409 and upload_id is not None and ("no longer has" in detail or " is " in detail
                                                    and ("stopped" in detail or "failed" in detail)):
        return StoreError("NoSuchUpload", 404, detail, operation)
    if status in (401, 403):
        return E.AuthError(f"the API server refused the token ({detail}): run mpupload login")
    if status == 429:
        return StoreError("SlowDown", 503, detail, operation)
    if status in (400, 413, 422):
        return E.UsageError(f"the API server refused the upload: {detail}")
    return StoreError(str(status), status, detail, operation)
