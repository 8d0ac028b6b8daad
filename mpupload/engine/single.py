"""A file that fits in one part: one PutObject, sent by a :class:`~.executor.ThreadExecutor` (a thread of this
process: no worker process to start) through the same part function and retry policy as a multipart upload's
parts, so that the main thread keeps ticking and handling signals. ``started`` waits for the first byte on the
wire.

The body carries its checksum (``x-amz-checksum-<algorithm>``) and ``Content-MD5``. The answer's ETag is
compared with the MD5 when it can be one: not under SSE-KMS or SSE-C (the answer says so), and when an
unexplained ETag comes back the store is asked once (:mod:`.probe`) whether its ETags are MD5s at all. Only
then is a different ETag a damaged body, sent again. Once the PUT succeeded a Ctrl+C no longer stops it: the
object is there, and it is verified and reported.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import errors as E
from ..checksums import Algorithm
from ..events import Event, Status
from ..options import ChecksumMode, UploadResult
from ..plan import Part
from ..storage.errors import error_code
from .aggregator import TICK_S
from .executor import JobDone, WorkerBroken
from .probe import StoreTraits, etag_is_md5_answer, integrity_plan
from .session import SHUTDOWN_JOIN_S, UploadSession
from .verify import Expected, verify_written
from .worker import PartJob, PartResult, PartTarget

__all__ = ["SinglePut"]

log = logging.getLogger("mpupload")


class SinglePut(UploadSession):
    def _check_bucket(self) -> None:
        """Fail before the start line on what a single PutObject would only reveal at its end: a missing
        bucket, no credentials, an unreachable store. 403 says nothing (no s3:ListBucket): go ahead."""
        try:
            self.store.head_bucket(self.bucket)
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
        started = False
        traits: StoreTraits | None = None
        try:
            self._check_cancel()
            result: PartResult | None = None
            for _ in range(2):  # a second PUT only when the probe shows the first ETag was a damaged body's
                result = self._send(algorithm, md5, traits, started)
                started = True
                answer = result.answer or {}
                etag = str(answer.get("ETag", "")).strip('"').lower()
                if not md5 or etag == result.md5 or etag_is_md5_answer(answer) is False or traits is not None:
                    break
                traits = self._traits(algorithm)
                if not traits.etag_is_md5:
                    break
                log.warning("the store's ETag %s is not the MD5 %s of the file: sending it again", etag, result.md5)
            assert result is not None
            self.agg.set_status(Status.FINALIZING)
            self.agg.tick(self.source.size, 1)
            return self._verify_single(result, algorithm, traits)
        except E.Cancelled:
            self.agg.finish(Event.STOPPED, Status.STOPPED,
                            {"aborted": False, "reason": self.cancel.reason, "left_behind": self._left_behind()},
                            sent_bytes=self._put_sent())
            raise E.Cancelled(f"{self.cancel.reason or 'interrupted'}; the object was not written"
                              f"{self._left_behind_text()}") from None
        except E.MpuploadError as exc:
            extra: dict[str, Any] = {"error": str(exc), "error_type": type(exc).__name__}
            if self.left:
                extra["left_behind"] = self._left_behind()
            self.agg.finish(Event.FAILED, Status.FAILED, extra, sent_bytes=self._put_sent())
            raise

    #: the executor's byte count when the PUT being sent began (a PUT sent again counts from zero again)
    _put_base = 0

    def _put_sent(self) -> int:
        return max(0, self._bytes_sent() - self._put_base)

    def _send(self, algorithm: Algorithm | None, md5: bool, traits: StoreTraits | None,
              started: bool) -> PartResult:
        """One PutObject (with the part's retries) run by the executor; this thread ticks and watches for a cancel.

        ``started`` waits for the first byte on the wire: botocore sends ``Expect: 100-continue``, so the store
        has accepted the request (credentials, bucket, permissions) before the body moves. A PUT refused outright
        then prints just the error line, as a refused CreateMultipartUpload does.
        """
        executor = self._start_executor(multipart=False)
        target = PartTarget(self.source.path, self.bucket, self.key, None, algorithm, md5,
                            etag_is_md5=bool(md5 and traits is not None and traits.etag_is_md5),
                            object_args=tuple(self._object_args().items()), if_none_match=self.options.no_overwrite)
        self._put_base = executor.bytes_sent()
        executor.submit(PartJob(target, Part(1, 0, self.source.size)))
        result: PartResult | None = None
        next_tick = time.monotonic() + TICK_S
        while result is None:
            for event in executor.events(max(0.0, next_tick - time.monotonic()), wake=[self.cancel.fileno()]):
                if isinstance(event, WorkerBroken):
                    event.raise_error()
                if isinstance(event, JobDone):
                    result = event.result
            if result is None and self.cancel.cancelled:
                executor.cancel()
                deadline = time.monotonic() + SHUTDOWN_JOIN_S + 3
                while result is None and time.monotonic() < deadline:
                    for event in executor.events(0.1):
                        if isinstance(event, JobDone):
                            result = event.result
                if result is None or not result.ok:
                    raise E.Cancelled(self.cancel.reason or "interrupted")
                break  # the object is there: too late to stop; it is verified and reported
            if not started and self._put_sent() > 0:
                self.agg.started(self._started_extra(None, algorithm, md5))
                started = True
            if started and time.monotonic() >= next_tick:
                self.agg.tick(self._put_sent(), 0)
                next_tick = time.monotonic() + TICK_S
        if not result.ok:
            if result.cancelled:
                raise E.Cancelled(self.cancel.reason or "interrupted")
            if result.traceback:
                log.debug("the PutObject failed:\n%s", result.traceback)
            result.raise_error(part=False)
        if not started:
            self.agg.started(self._started_extra(None, algorithm, md5))
        return result

    def _verify_single(self, result: PartResult, algorithm: Algorithm | None,
                       traits: StoreTraits | None) -> UploadResult:
        response = dict(result.answer or {})
        etag = str(response.get("ETag", "")).strip('"').lower()
        md5 = result.md5
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
            part_checksums=(result.checksum,) if result.checksum is not None else None,
            part_md5s=(md5,) if md5 is not None and (traits is None or traits.etag_is_md5 is not False) else None)
        verdict = verify_written(
            self._access(), expected, response, parts_checked=parts_checked,
            validates_checksum=bool(traits and traits.validates_checksum), read_back_path=self._read_back_path,
            cancel=self._flag, size_only_reason=reason)
        return self._complete(verdict, f"s3://{self.bucket}/{self.key}", parts=1)
