"""A file that fits in one part: one PutObject, sent from a thread of the parent so that the main thread
keeps ticking and handling signals. ``started`` waits for the first byte on the wire."""

from __future__ import annotations

import logging
import os
import threading
import time
from multiprocessing.connection import wait
from typing import Any

from .. import errors as E
from ..checksums import Algorithm, b64, boto_checksum_param, new_hasher
from ..events import Event, Status
from ..options import ChecksumMode, UploadResult
from ..storage.errors import error_code, is_retryable
from .aggregator import TICK_S
from .counter import ByteCounter
from .reader import PartReader, digest_range
from .session import SHUTDOWN_JOIN_S, SINGLE_PUT_ATTEMPTS, UploadSession

__all__ = ["SinglePut"]

log = logging.getLogger("mpupload")


class SinglePut(UploadSession):
    def _check_bucket(self) -> None:
        """Fail before the start line on what a single PutObject would only reveal at its end: a missing
        bucket, no credentials, an unreachable store. 403 says nothing (no s3:ListBucket): go ahead."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001
            code = error_code(exc)
            if code in ("403", "AccessDenied", "Forbidden"):
                return
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise E.BucketNotFound(
                    f"bucket {self.bucket!r} does not exist: create it first or check the name",
                    bucket=self.bucket, key=self.key) from exc
            raise self._err(exc) from exc


    # -- single PutObject ---------------------------------------------------------------------------------------
    def _run_single(self) -> UploadResult:
        algorithm = self._algorithm()
        md5 = self.options.checksum is not ChecksumMode.NONE
        counter = ByteCounter(1)
        outcome: dict[str, Any] = {}

        def put() -> None:
            try:
                outcome["response"] = self._put_with_retries(counter, algorithm, md5, outcome)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                outcome["error"] = exc

        # ``started`` waits for the first byte on the wire: botocore sends ``Expect: 100-continue``, so the
        # store has accepted the request (credentials, bucket, permissions) before the body moves. A PUT
        # refused outright then prints just the error line, as a refused CreateMultipartUpload does.
        started = False
        thread = threading.Thread(target=put, name="mpupload-put", daemon=True)
        thread.start()
        next_tick = time.monotonic() + TICK_S
        try:
            while thread.is_alive():
                wait([self.cancel.fileno()], max(0.0, next_tick - time.monotonic()))
                if self.cancel.cancelled:
                    self._flag.set()
                    thread.join(SHUTDOWN_JOIN_S + 3)
                    raise E.Cancelled(self.cancel.reason or "interrupted")
                if not started and counter.total() > 0:
                    self.agg.started(self._started_extra(algorithm, md5))
                    started = True
                if started and time.monotonic() >= next_tick:
                    self.agg.tick(counter.total(), 0)
                    next_tick = time.monotonic() + TICK_S
            thread.join()
            if not started and "error" not in outcome:
                self.agg.started(self._started_extra(algorithm, md5))
                started = True
            if "error" in outcome:
                exc = outcome["error"]
                if isinstance(exc, E.Cancelled):
                    raise E.Cancelled(self.cancel.reason or "interrupted")
                raise self._err(exc) from exc
            self.agg.set_status(Status.FINALIZING)
            self.agg.tick(self.source.size, 1)
            return self._verify_single(outcome, algorithm)
        except E.Cancelled:
            self.agg.finish(Event.STOPPED, Status.STOPPED, {"aborted": True, "reason": self.cancel.reason},
                            sent_bytes=counter.total())
            raise
        except E.MpuploadError as exc:
            self.agg.finish(Event.FAILED, Status.FAILED, {"error": str(exc), "error_type": type(exc).__name__},
                            sent_bytes=counter.total())
            raise

    def _put_with_retries(
        self, counter: ByteCounter, algorithm: Algorithm | None, md5: bool, outcome: dict[str, Any]
    ) -> Any:
        size = self.source.size
        fd = os.open(self.source.path, os.O_RDONLY)
        try:
            for attempt in range(1, SINGLE_PUT_ATTEMPTS + 1):
                algo_h = new_hasher(algorithm) if algorithm else None
                md5_h = new_hasher(Algorithm.MD5) if md5 else None
                hashers = [h for h in (algo_h, md5_h) if h is not None]
                digest_range(fd, 0, size, hashers, cancel=self._flag)
                params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key, "ContentLength": size,
                                          **self._object_args()}
                if algo_h is not None and algorithm is not None:
                    outcome["checksum"] = b64(algo_h.digest())
                    params[boto_checksum_param(algorithm)] = outcome["checksum"]
                if md5_h is not None:
                    raw = md5_h.digest()
                    outcome["md5"] = raw.hex()
                    params["ContentMD5"] = b64(raw)
                if self.options.no_overwrite:
                    params["IfNoneMatch"] = "*"
                reader = PartReader(fd, 0, size, counter=counter, slot=0, cancel=self._flag)
                params["Body"] = reader
                try:
                    response = self.client.put_object(**params)
                    etag = str(response.get("ETag", "")).strip('"').lower()
                    if md5 and self._etag_is_md5 and etag != outcome["md5"]:
                        raise E.UploadFailed(f"the store's ETag {etag} is not the MD5 {outcome['md5']} of the file")
                    if reader.counted != size:
                        counter.add(0, size - reader.counted)
                    return response
                except BaseException as exc:  # noqa: BLE001
                    reader.rollback()
                    if self._flag.is_set() or isinstance(exc, E.Cancelled):
                        raise E.Cancelled("cancelled") from exc
                    if isinstance(exc, E.SourceChanged) or not is_retryable(exc) or attempt == SINGLE_PUT_ATTEMPTS:
                        raise
                    delay = min(20.0, 0.5 * 2 ** (attempt - 1))
                    deadline = time.monotonic() + delay
                    while time.monotonic() < deadline and not self._flag.is_set():
                        time.sleep(0.05)
            raise AssertionError("unreachable")
        finally:
            os.close(fd)

    def _verify_single(self, outcome: dict[str, Any], algorithm: Algorithm | None) -> UploadResult:
        response = outcome["response"]
        head = self._head()
        self._check_size(head)
        etag = str(head.get("ETag") or response.get("ETag") or "").strip('"')
        verified = "size-only"
        checksum = None
        if "md5" in outcome and self._etag_is_md5 and etag.lower() == outcome["md5"]:
            verified = "md5"
        if algorithm is not None and "checksum" in outcome:
            stored = head.get(boto_checksum_param(algorithm)) or response.get(boto_checksum_param(algorithm))
            if stored is not None:
                if stored != outcome["checksum"]:
                    self._delete_corrupt()
                    raise E.IntegrityError(
                        f"the stored object's {algorithm.value} {stored} differs from the file's "
                        f"{outcome['checksum']}: the object was deleted; run the command again",
                        bucket=self.bucket, key=self.key)
                checksum = f"{algorithm.value}:{stored}"
                if verified == "size-only":
                    verified = algorithm.value
        if checksum is None and "md5" in outcome:
            checksum = f"md5:{outcome['md5']}"
        return self._complete(verified, etag, checksum, f"s3://{self.bucket}/{self.key}", parts=1)

