"""The journal while an upload runs, and ``--resume``: what to reuse, what to report as already done.

An object found at the key of an interrupted upload that is gone counts as done only when it is *this file*
(:func:`~mpupload.engine.verify.identify`: its checksum or ETag equals what the journal recorded for this file's
parts, or its bytes read back equal the file's). The size alone proves nothing: the previous version of a file
often has the same size. Otherwise the upload is gone: the run says so and uploads from the start.
"""

from __future__ import annotations

import contextlib
import logging
import time

from .. import errors as E
from .. import journal as journal_mod
from ..checksums import Algorithm
from ..journal import Journal, PartRecord
from ..options import ChecksumMode, UploadResult
from ..storage.config import effective_endpoint
from .probe import StoreTraits
from .resume import AlreadyComplete, ResumeState, find_resume, verify_parts
from .session import JOURNAL_SAVE_S, UploadSession, algorithm_or_none
from .verify import Expected, Verdict, identify
from .worker import PartResult

__all__ = ["Journaling"]

log = logging.getLogger("mpupload")


class Journaling(UploadSession):
    #: what the store checks, learned while preparing a resume (the stored parts are checked with it)
    resume_traits: StoreTraits | None = None

    def _load_journal(self) -> Journal | None:
        assert self.journal_path is not None
        try:
            existing = journal_mod.load(self.journal_path)
        except journal_mod.CorruptJournal as exc:
            aside: object = "(it could not be moved)"
            with contextlib.suppress(OSError):
                aside = journal_mod.set_aside(self.journal_path)
            self._warn(f"the resume journal could not be trusted ({exc}); it was set aside as {aside}")
            return None
        if existing is not None and (existing.bucket, existing.key) != (self.bucket, self.key):
            self._warn(f"the resume journal {self.journal_path} describes another destination: set aside")
            with contextlib.suppress(OSError):
                journal_mod.set_aside(self.journal_path)
            return None
        return existing

    def _prepare_journal(self) -> ResumeState | AlreadyComplete | None:
        """Load the journal; start over (aborting the old upload) or find what can be resumed.

        Returns :class:`AlreadyComplete` only for an object shown to be this file (``verdict`` set).
        """
        if self.journal_path is None:
            return None
        existing = self._load_journal()
        if not self.options.resume:
            if existing is not None:
                log.warning("starting over: aborting the earlier unfinished upload %s of this file (use --resume "
                            "to continue it instead)", existing.upload_id)
                if not self._abort_id(existing.upload_id, self.store.short_lived()):
                    self._warn(f"could not abort the earlier unfinished upload {existing.upload_id} of this file: "
                               f"remove it with: {self._cleanup_command(existing.upload_id)}")
                with contextlib.suppress(OSError):
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
            state = find_resume(self.store, self.bucket, self.key, self.source.size, self.plan, existing)
        except E.MpuploadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._err(exc) from exc
        if isinstance(state, AlreadyComplete):
            verdict = self._identify(state.journal)
            if verdict is not None:
                state.verdict = verdict
                return state
            self._warn(f"the interrupted multipart upload {state.journal.upload_id} no longer exists (aborted, or "
                       f"expired), and the object at s3://{self.bucket}/{self.key} cannot be shown to be this file "
                       "(its checksum and ETag do not match the parts recorded for it): uploading from the start")
            state = None
        if state is None:
            log.warning("nothing to resume for s3://%s/%s: uploading from the start", self.bucket, self.key)
            if existing is not None:
                with contextlib.suppress(OSError):
                    existing.remove()
            return None
        self.plan = state.plan
        self.upload_id = state.upload_id  # from here on a stop keeps it (it is the upload being resumed)
        traits = None
        if self.options.checksum is not ChecksumMode.NONE:
            traits = self._traits(state.algorithm)
        self.resume_traits = traits
        self._check_cancel()
        # the store's ETags are MD5s (the probe), or the journal says its parts' MD5s were compared with them
        etag_is_md5 = bool(traits and traits.etag_is_md5) or bool(existing is not None and existing.md5
                                                                   and traits is None)
        verify_parts(state, self.source.path, trust_journal=existing is not None, etag_is_md5=etag_is_md5,
                     threads=self.plan.workers, cancel=self._flag)
        return state

    def _expected_from_journal(self, journal: Journal) -> Expected:
        complete = len(journal.parts) == journal.parts_total
        ordered = [journal.parts[n] for n in sorted(journal.parts)] if complete else []
        algorithm = algorithm_or_none(journal.checksum_algorithm)
        checksums = tuple(p.checksum or "" for p in ordered) if ordered and all(p.checksum for p in ordered) else None
        md5s = tuple(p.md5 or "" for p in ordered) if ordered and all(p.md5 for p in ordered) else None
        return Expected(self.source.size, journal.part_size, multipart=True, algorithm=algorithm,
                        part_checksums=checksums if algorithm is not None else None, part_md5s=md5s)

    def _identify(self, journal: Journal) -> Verdict | None:
        """Is the object at the key this file? (The interrupted run's upload is gone.)"""
        return identify(self._access(), self._expected_from_journal(journal), read_back_path=self._read_back_path,
                        cancel=self._flag, threads=self.plan.workers)

    def _report_already_complete(self, done: AlreadyComplete) -> UploadResult:
        """A crash during CompleteMultipartUpload: the object is there, and it is this file. Report done."""
        journal = done.journal
        assert done.verdict is not None
        self.upload_id = journal.upload_id
        self.resumed_bytes, self.resumed_parts = self.source.size, journal.parts_total
        self.agg.resumed_bytes = self.source.size
        self.agg.started(self._started_extra(None, algorithm_or_none(journal.checksum_algorithm), journal.md5))
        with contextlib.suppress(OSError):
            journal.remove()
        return self._complete(done.verdict, f"s3://{self.bucket}/{self.key}", parts=journal.parts_total)

    def _journal_start(self, algorithm: Algorithm | None, md5: bool, reused: dict[int, PartResult]) -> None:
        if self.journal_path is None or self.upload_id is None:
            return
        journal = Journal(self.journal_path, self.fingerprint(), effective_endpoint(self.store.endpoint_url),
                          self.bucket, self.key, self.upload_id, self.plan.part_size, self.plan.parts_total,
                          algorithm.value if algorithm else None, md5, record_id=self.record_id)
        for number, result in reused.items():
            journal.record(number, PartRecord(result.size, result.etag or "", result.checksum, result.md5))
        self.journal = journal
        self._save_journal()
        self._journal_saved_at = time.monotonic()

    def _journal_part(self, result: PartResult) -> None:
        if self.journal is None:
            return
        self.journal.record(result.number, PartRecord(result.size, result.etag or "", result.checksum, result.md5))
        now = time.monotonic()
        if now - self._journal_saved_at >= JOURNAL_SAVE_S:
            self._save_journal()
            self._journal_saved_at = now

    def _journal_end(self, *, keep: bool) -> None:
        if self.journal is None:
            return
        if keep:
            self._save_journal()
        else:
            self._remove_journal()
