"""The resume journal while one object's upload runs: a component the upload holds, never a base class.

The journal is a hint, the store is the truth (:mod:`.resume`). What this keeps:

* loading: a journal that cannot be trusted, or that describes another destination, is set aside with a warning;
* writing: every part as it finishes, rewritten at most every :data:`JOURNAL_SAVE_S` and always before
  CompleteMultipartUpload; a journal that cannot be written is one warning, never a failed upload. The rewrites
  while parts finish are fsynced at most every :data:`JOURNAL_FSYNC_S` (two fsyncs cost the coordinator
  about a millisecond and a half of CPU, a figure per part in a cluster run); every write is atomic, so a killed
  process leaves the newest journal, and a power cut at worst an older one, which the store corrects on
  ``--resume``. The first write, the one before Complete and the one kept at the end are fsynced;
* the end: removed with the upload, kept with an upload kept for ``--resume`` (or one whose abort failed).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .. import journal as journal_mod
from ..checksums import Algorithm
from ..journal import Journal, PartRecord
from ..plan import UploadPlan
from .worker import PartResult

__all__ = ["JOURNAL_FSYNC_S", "JOURNAL_SAVE_S", "JournalKeeper"]

log = logging.getLogger("mpupload")

#: the journal is rewritten at most this often while parts finish (and always at the end)
JOURNAL_SAVE_S = 1.0
#: ... and fsynced at most this often (see the module docstring)
JOURNAL_FSYNC_S = 10.0


class JournalKeeper:
    def __init__(self, path: Path | None, source_path: str, endpoint: str | None, bucket: str, key: str, *,
                 warn: Callable[[str], None]) -> None:
        self.path = path
        self.source_path = source_path
        self.endpoint = endpoint
        self.bucket = bucket
        self.key = key
        self.warn = warn
        self.journal: Journal | None = None
        self._fingerprint: journal_mod.SourceFingerprint | None = None
        self._saved_at = 0.0
        self._synced_at = 0.0
        self._failed = False

    def fingerprint(self) -> journal_mod.SourceFingerprint:
        if self._fingerprint is None:
            self._fingerprint = journal_mod.fingerprint(self.source_path)
        return self._fingerprint

    def load(self) -> Journal | None:
        """The interrupted run's journal, if there is one this run can trust."""
        if self.path is None:
            return None
        try:
            existing = journal_mod.load(self.path)
        except journal_mod.CorruptJournal as exc:
            aside: object = "(it could not be moved)"
            with contextlib.suppress(OSError):
                aside = journal_mod.set_aside(self.path)
            self.warn(f"the resume journal could not be trusted ({exc}); it was set aside as {aside}")
            return None
        if existing is not None and (existing.bucket, existing.key) != (self.bucket, self.key):
            self.warn(f"the resume journal {self.path} describes another destination: set aside")
            with contextlib.suppress(OSError):
                journal_mod.set_aside(self.path)
            return None
        return existing

    def start(self, upload_id: str, plan: UploadPlan, algorithm: Algorithm | None, md5: bool,
              reused: Mapping[int, PartResult], record_id: str | None) -> None:
        """A new journal for ``upload_id`` with the parts already on the store (a resumed upload's)."""
        if self.path is None:
            return
        journal = Journal(self.path, self.fingerprint(), self.endpoint, self.bucket, self.key, upload_id,
                          plan.part_size, plan.parts_total, algorithm.value if algorithm else None, md5,
                          record_id=record_id)
        for number, result in reused.items():
            journal.record(number, PartRecord(result.size, result.etag or "", result.checksum, result.md5))
        self.journal = journal
        self.save()
        self._saved_at = self._synced_at = time.monotonic()

    def part(self, result: PartResult) -> None:
        if self.journal is None:
            return
        self.journal.record(result.number, PartRecord(result.size, result.etag or "", result.checksum, result.md5))
        now = time.monotonic()
        if now - self._saved_at >= JOURNAL_SAVE_S:
            durable = now - self._synced_at >= JOURNAL_FSYNC_S
            self.save(durable=durable)
            self._saved_at = now
            if durable:
                self._synced_at = now

    def save(self, *, durable: bool = True) -> None:
        """Write the journal now (fsynced unless ``durable`` is false); a failure is one warning (the upload goes
        on)."""
        if self.journal is None:
            return
        try:
            self.journal.save(durable=durable)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                self.warn(f"cannot write the resume journal {self.journal.path} ({exc.strerror or exc}): the upload "
                          "goes on; if it is interrupted, --resume finds it on the store instead")

    def end(self, *, keep: bool) -> None:
        """The upload ended: keep the journal (the upload is kept, or its abort failed) or remove it."""
        if self.journal is None:
            return
        if keep:
            self.save()
        else:
            with contextlib.suppress(OSError):
                self.journal.remove()

    def remove_file(self) -> None:
        """Remove the journal file, whatever this run wrote (the upload it describes was aborted)."""
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
