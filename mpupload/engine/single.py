"""A file that fits in one part: one PutObject, sent from a thread of the parent so that the main thread
keeps ticking and handling signals. ``started`` waits for the first byte on the wire.

The body carries its checksum (``x-amz-checksum-<algorithm>``) and ``Content-MD5``. The answer's ETag is
compared with the MD5 when it can be one: not under SSE-KMS or SSE-C (the answer says so), and when an
unexplained ETag comes back the store is asked once (:mod:`.probe`) whether its ETags are MD5s at all. Only
then is a different ETag a damaged body, sent again. Once the PUT succeeded a Ctrl+C no longer stops it: the
object is there, and it is verified and reported.
"""

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
from .probe import StoreTraits, etag_is_md5_answer, integrity_plan
from .reader import PartReader, digest_range
from .session import SHUTDOWN_JOIN_S, SINGLE_PUT_ATTEMPTS, UploadSession
from .verify import Expected, verify_written

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
        started = False
        traits: StoreTraits | None = None
        try:
            self._check_cancel()
            outcome: dict[str, Any] = {}
            for _ in range(2):  # a second PUT only when the probe shows the first ETag was a damaged body's
                outcome = self._send(counter, algorithm, md5, traits, started)
                started = True
                etag = str(outcome["response"].get("ETag", "")).strip('"').lower()
                if not md5 or etag == outcome["md5"] or etag_is_md5_answer(outcome["response"]) is False \
                        or traits is not None:
                    break
                traits = self._traits(algorithm)
                if not traits.etag_is_md5:
                    break
                log.warning("the store's ETag %s is not the MD5 %s of the file: sending it again", etag,
                            outcome["md5"])
            self.agg.set_status(Status.FINALIZING)
            self.agg.tick(self.source.size, 1)
            return self._verify_single(outcome, algorithm, traits)
        except E.Cancelled:
            self.agg.finish(Event.STOPPED, Status.STOPPED,
                            {"aborted": False, "reason": self.cancel.reason, "left_behind": self._left_behind()},
                            sent_bytes=counter.total())
            raise E.Cancelled(f"{self.cancel.reason or 'interrupted'}; the object was not written"
                              f"{self._left_behind_text()}") from None
        except E.MpuploadError as exc:
            extra: dict[str, Any] = {"error": str(exc), "error_type": type(exc).__name__}
            if self.left:
                extra["left_behind"] = self._left_behind()
            self.agg.finish(Event.FAILED, Status.FAILED, extra, sent_bytes=counter.total())
            raise

    def _send(self, counter: ByteCounter, algorithm: Algorithm | None, md5: bool, traits: StoreTraits | None,
              started: bool) -> dict[str, Any]:
        """One PutObject (with retries) from a thread; the main thread ticks and watches for a cancel."""
        outcome: dict[str, Any] = {}

        def put() -> None:
            try:
                outcome["response"] = self._put_with_retries(counter, algorithm, md5, traits, outcome)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                outcome["error"] = exc

        # ``started`` waits for the first byte on the wire: botocore sends ``Expect: 100-continue``, so the
        # store has accepted the request (credentials, bucket, permissions) before the body moves. A PUT
        # refused outright then prints just the error line, as a refused CreateMultipartUpload does.
        thread = threading.Thread(target=put, name="mpupload-put", daemon=True)
        thread.start()
        next_tick = time.monotonic() + TICK_S
        while thread.is_alive():
            wait([self.cancel.fileno()], max(0.0, next_tick - time.monotonic()))
            if self.cancel.cancelled:
                self._flag.set()
                thread.join(SHUTDOWN_JOIN_S + 3)
                if "response" not in outcome:
                    raise E.Cancelled(self.cancel.reason or "interrupted")
                break  # the object is there: too late to stop; it is verified and reported
            if not started and counter.total() > 0:
                self.agg.started(self._started_extra(None, algorithm, md5))
                started = True
            if started and time.monotonic() >= next_tick:
                self.agg.tick(counter.total(), 0)
                next_tick = time.monotonic() + TICK_S
        thread.join()
        if "error" in outcome:
            exc = outcome["error"]
            if isinstance(exc, E.Cancelled):
                raise E.Cancelled(self.cancel.reason or "interrupted")
            raise self._err(exc) from exc
        if not started:
            self.agg.started(self._started_extra(None, algorithm, md5))
        return outcome

    def _put_with_retries(
        self, counter: ByteCounter, algorithm: Algorithm | None, md5: bool, traits: StoreTraits | None,
        outcome: dict[str, Any],
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
                    # only when the store is known to give MD5 ETags is a different one a damaged body
                    if md5 and traits is not None and traits.etag_is_md5 and etag != outcome["md5"] \
                            and etag_is_md5_answer(response) is not False:
                        raise E.PartCorrupted(f"the store's ETag {etag} is not the MD5 {outcome['md5']} of the file")
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

    def _verify_single(self, outcome: dict[str, Any], algorithm: Algorithm | None,
                       traits: StoreTraits | None) -> UploadResult:
        response = dict(outcome["response"])
        etag = str(response.get("ETag", "")).strip('"').lower()
        md5 = outcome.get("md5")
        reason: str | None = None
        if md5 is not None and etag == md5:
            parts_checked: str | None = "md5"  # the store's own MD5 of what it got is the file's
        elif self.options.checksum is ChecksumMode.NONE:
            parts_checked = None
        else:
            traits = traits or self._traits(algorithm)
            integrity = integrity_plan(self.options.checksum, algorithm, traits)
            parts_checked, reason = integrity.parts_checked, integrity.warning
        expected = Expected(
            self.source.size, max(1, self.source.size), multipart=False, algorithm=algorithm,
            part_checksums=(outcome["checksum"],) if "checksum" in outcome else None,
            part_md5s=(md5,) if md5 is not None and (traits is None or traits.etag_is_md5 is not False) else None)
        verdict = verify_written(
            self._access(), expected, response, parts_checked=parts_checked,
            validates_checksum=bool(traits and traits.validates_checksum), read_back_path=self._read_back_path,
            cancel=self._flag, size_only_reason=reason)
        return self._complete(verdict, f"s3://{self.bucket}/{self.key}", parts=1)
