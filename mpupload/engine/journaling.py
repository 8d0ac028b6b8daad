"""The journal while an upload runs, and ``--resume``: what to reuse, what to report as already done."""

from __future__ import annotations

import contextlib
import logging
import time

from .. import errors as E
from .. import journal as journal_mod
from ..checksums import Algorithm, boto_checksum_param, composite_checksum, multipart_etag, unb64
from ..journal import Journal, PartRecord
from ..options import UploadResult
from ..storage.config import effective_endpoint
from .resume import AlreadyComplete, ResumeState, find_resume, verify_parts
from .session import JOURNAL_SAVE_S, UploadSession, algorithm_or_none
from .worker import PartResult

__all__ = ["Journaling"]

log = logging.getLogger("mpupload")


class Journaling(UploadSession):
    def _prepare_journal(self) -> ResumeState | AlreadyComplete | None:
        """Load the journal; start over (aborting the old upload) or find what can be resumed."""
        if self.journal_path is None:
            return None
        try:
            existing = journal_mod.load(self.journal_path)
        except journal_mod.CorruptJournal as exc:
            aside = journal_mod.set_aside(self.journal_path)
            self._warn(f"the resume journal could not be trusted ({exc}); it was set aside as {aside}")
            existing = None
        if existing is not None and (existing.bucket, existing.key) != (self.bucket, self.key):
            self._warn(f"the resume journal {self.journal_path} describes another destination: set aside")
            journal_mod.set_aside(self.journal_path)
            existing = None
        if not self.options.resume:
            if existing is not None:
                log.warning("starting over: aborting the earlier unfinished upload %s of this file (use --resume "
                            "to continue it instead)", existing.upload_id)
                self._abort_id(existing.upload_id, self.store.short_lived().make_client())
                existing.remove()
            return None
        if existing is not None:
            # a run without reporting keeps the record of the interrupted run for a later one
            self.record_id = self.record_id or existing.record_id
            changed = existing.source.differences(self.fingerprint())
            if changed:
                raise E.SourceChanged(
                    f"{self.source.path} changed since the interrupted upload ({', '.join(changed)} differ): its "
                    f"stored parts cannot be reused. Start over by running the same command without --resume "
                    f"(that aborts the old multipart upload {existing.upload_id})",
                    bucket=self.bucket, key=self.key, upload_id=existing.upload_id)
        try:
            state = find_resume(self.client, self.bucket, self.key, self.source.size, self.plan, existing)
        except E.MpuploadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._err(exc) from exc
        if state is None:
            log.warning("nothing to resume for s3://%s/%s: uploading from the start", self.bucket, self.key)
            if existing is not None:
                existing.remove()
            return None
        if isinstance(state, ResumeState):
            self.plan = state.plan
            verify_parts(state, self.source.path, trust_journal=existing is not None, etag_is_md5=self._etag_is_md5,
                         threads=self.plan.workers, cancel=self._flag)
        return state

    def _report_already_complete(self, done: AlreadyComplete) -> UploadResult:
        """A crash during CompleteMultipartUpload: the object is there. Verify it, report done."""
        journal = done.journal
        self.upload_id = journal.upload_id
        self.resumed_bytes, self.resumed_parts = self.source.size, journal.parts_total
        self.agg.resumed_bytes = self.source.size
        self.agg.started(self._started_extra(algorithm_or_none(journal.checksum_algorithm), journal.md5))
        head = self._head()
        self._check_size(head)
        etag = str(head.get("ETag") or "").strip('"')
        verified, checksum = "size-only", None
        if len(journal.parts) == journal.parts_total:
            if journal.md5 and all(p.md5 for p in journal.parts.values()):
                expected = multipart_etag(bytes.fromhex(journal.parts[n].md5 or "") for n in sorted(journal.parts))
                if etag.lower() == expected:
                    verified, checksum = "md5", f"md5:{expected}"
            algorithm = algorithm_or_none(journal.checksum_algorithm)
            if algorithm is not None and all(p.checksum for p in journal.parts.values()):
                expected = composite_checksum(algorithm, (unb64(journal.parts[n].checksum)
                                                          for n in sorted(journal.parts)))
                stored = head.get(boto_checksum_param(algorithm))
                if stored == expected:
                    verified, checksum = algorithm.value, f"{algorithm.value}:{stored}"
        if verified == "size-only":
            self._warn("the object was completed by the interrupted run; only its size could be checked")
        journal.remove()
        return self._complete(verified, etag, checksum, f"s3://{self.bucket}/{self.key}", parts=journal.parts_total)

    def _journal_start(self, algorithm: Algorithm | None, md5: bool, reused: dict[int, PartResult]) -> None:
        if self.journal_path is None or self.upload_id is None:
            return
        journal = Journal(self.journal_path, self.fingerprint(), effective_endpoint(self.store.endpoint_url),
                          self.bucket, self.key, self.upload_id, self.plan.part_size, self.plan.parts_total,
                          algorithm.value if algorithm else None, md5, record_id=self.record_id)
        for number, result in reused.items():
            journal.record(number, PartRecord(result.size, result.etag or "", result.checksum, result.md5))
        self.journal = journal
        journal.save()
        self._journal_saved_at = time.monotonic()

    def _journal_part(self, result: PartResult) -> None:
        if self.journal is None:
            return
        self.journal.record(result.number, PartRecord(result.size, result.etag or "", result.checksum, result.md5))
        now = time.monotonic()
        if now - self._journal_saved_at >= JOURNAL_SAVE_S:
            self.journal.save()
            self._journal_saved_at = now

    def _journal_end(self, *, keep: bool) -> None:
        if self.journal is None:
            return
        if keep:
            with contextlib.suppress(OSError):
                self.journal.save()
        else:
            self.journal.remove()

