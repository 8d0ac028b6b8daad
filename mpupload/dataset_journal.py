"""A directory run's resume record: an append-only file of the files it finished.

One journal per (absolute sources, endpoint, bucket, prefix), ``<sha256>.dataset`` in :func:`~mpupload.journal.
state_dir` (directory 0700, file 0600), like the one-file journal; :meth:`DatasetJournal.open` holds the
:class:`~mpupload.journal.JournalLock` beside it until :meth:`~DatasetJournal.close`, so two runs never append to the
same journal.

Format (version 1): lines of compact JSON, each ending in ``\\n``::

    {"kind":"mpupload-dataset","version":1,"identity":{...},"created_at":"..."}
    ["train/0001.jpg",5123,1715000000123456789,1234567,"\\"etag\\"","crc32c base64"]
    ["train/0002.jpg",5124,1715000000123456789,1234568,null,null,"other/key"]

A record is ``[rel, size, mtime_ns, inode, etag, checksum]``, plus the key when it is not the identity's
``prefix`` + rel. Records are appended, many in one ``write`` (:meth:`~DatasetJournal.record`), and fsynced every
few seconds by the caller (:meth:`~DatasetJournal.sync`): a crash loses at most the last few seconds, which the
next run uploads again.

Reading is strict about what it trusts: a torn last line (the process was killed mid-write) is dropped and cut off
before anything is appended; a line that does not parse is reported once and ignored; a header of another version
or identity starts a new journal. What a run keeps in memory is two sorted arrays of 64-bit hashes, one of
(rel, size, mtime_ns, inode) and one of rel: 16 bytes a finished file, no object per file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from array import array
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from . import errors as E
from .fsutil import write_atomic
from .journal import JournalLock, state_dir

__all__ = ["DATASET_JOURNAL_VERSION", "FinishedFile", "DatasetJournal", "dataset_journal_path"]

DATASET_JOURNAL_VERSION = 1
_KIND = "mpupload-dataset"
#: bytes read at a time while loading (lines are parsed a chunk at a time, never the whole file at once)
_READ_BYTES = 1024 * 1024
_encode = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class FinishedFile:
    rel: str
    key: str
    size: int
    mtime_ns: int
    inode: int
    etag: str | None
    checksum: str | None


def dataset_journal_path(sources: Sequence[str], endpoint: str | None, bucket: str, prefix: str) -> Path:
    """Where the journal of these sources uploaded to this destination lives (the order of sources counts)."""
    identity = json.dumps([[os.path.abspath(s) for s in sources], endpoint or "", bucket, prefix])
    return state_dir() / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.dataset"


def _sorted(values: array[int]) -> array[int]:
    return array("q", sorted(values))


_UNREADABLE = object()


class _Loader:
    """Reads the records of an existing journal into hashes; counts the lines it could not trust."""

    def __init__(self) -> None:
        self.fingerprints: array[int] = array("q")
        self.rels: array[int] = array("q")
        self.bad = 0
        self.first_bad = 0

    def lines(self, chunk: list[bytes], first_line: int) -> None:
        """Many lines parsed in one call (fast); when that fails or miscounts, one by one."""
        entries: list[Any]
        try:
            entries = json.loads(b"[" + b",".join(chunk) + b"]")
        except (ValueError, UnicodeDecodeError):
            entries = []
        if len(entries) != len(chunk):
            entries = [_parse(line) for line in chunk]
        try:  # the common case, every line good, in two comprehensions
            fingerprints = [hash((e[0], e[1], e[2], e[3])) for e in entries
                            if type(e) is list and 6 <= len(e) <= 7 and type(e[0]) is str]
        except TypeError:  # an unhashable value (a list, an object) in a fingerprint
            fingerprints = []
        if len(fingerprints) == len(entries):
            self.fingerprints.fromlist(fingerprints)
            self.rels.fromlist([hash(e[0]) for e in entries])
            return
        for n, e in enumerate(entries):
            # the types need no check: a value of another type hashes to what no file's fingerprint hashes to
            if type(e) is list and 6 <= len(e) <= 7 and type(rel := e[0]) is str:
                try:
                    self.fingerprints.append(hash((rel, e[1], e[2], e[3])))
                except TypeError:
                    pass
                else:
                    self.rels.append(hash(rel))
                    continue
            self.bad += 1
            if not self.first_bad:
                self.first_bad = first_line + n


def _parse(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return _UNREADABLE


class DatasetJournal:
    """The journal of one directory run: what earlier runs finished (read once), and what this one finishes."""

    def __init__(self, path: Path, fd: int, lock: JournalLock, prefix: str | None) -> None:
        self.path = path
        self._fd = fd
        self._lock = lock
        self._prefix = prefix
        self._fingerprints: array[int] = array("q")
        self._rels: array[int] = array("q")
        #: how many files the earlier runs recorded as finished (distinct relative paths)
        self.earlier = 0

    # -- opening ------------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, identity: Mapping[str, Any], *, resume: bool,
             warn: Callable[[str], None]) -> DatasetJournal:
        """``resume=False``: a new journal replaces any old one. ``resume=True``: the old one is read (when its
        identity is this one; else it is replaced, with a warning) and appended to.

        Raises :class:`~mpupload.errors.UsageError` when another run holds this journal, :class:`OSError` when
        it cannot be written.
        """
        wanted = json.loads(json.dumps(dict(identity)))  # as it reads back from the file
        try:
            lock = JournalLock(path).acquire()
        except E.UsageError:
            raise E.UsageError("another mpupload run is uploading these sources to this destination: wait for it "
                               "to finish, or stop it first") from None
        try:
            prefix = wanted.get("prefix") if isinstance(wanted.get("prefix"), str) else None
            loader: _Loader | None = None
            fd = -1
            if resume:
                loader, fd = cls._read(path, wanted, warn)
            if fd < 0:
                header = {"kind": _KIND, "version": DATASET_JOURNAL_VERSION, "identity": wanted,
                          "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
                write_atomic(path, (_encode(header) + "\n").encode())
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            journal = cls(path, fd, lock, prefix)
        except BaseException:
            lock.release()
            raise
        if loader is not None:
            journal._fingerprints = _sorted(loader.fingerprints)
            del loader.fingerprints
            journal._rels = _sorted(loader.rels)
            del loader.rels
            journal.earlier = sum(1 for _ in groupby(journal._rels))
        return journal

    @staticmethod
    def _read(path: Path, wanted: Any, warn: Callable[[str], None]) -> tuple[_Loader | None, int]:
        """The records of the journal at ``path`` and an fd to append to it; ``(None, -1)`` to start anew."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, -1
        try:
            loader = _Loader()
            ok, end = DatasetJournal._load(fd, wanted, loader, path, warn)
            if not ok:
                os.close(fd)
                return None, -1
            if end != os.fstat(fd).st_size:  # a torn last line: cut it off before appending after it
                os.ftruncate(fd, end)
            if loader.bad:
                warn(f"{loader.bad} line{'s' if loader.bad != 1 else ''} of the run's journal {path} could not be "
                     f"read (first: line {loader.first_bad}) and {'were' if loader.bad != 1 else 'was'} ignored: "
                     "those files are uploaded again")
            return loader, fd
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _load(fd: int, wanted: Any, loader: _Loader, path: Path, warn: Callable[[str], None]) -> tuple[bool, int]:
        """Read the header and every complete line; ``(header ok, offset after the last complete line)``."""
        rest = b""
        offset = 0  # of ``rest`` in the file
        line_no = 1
        header_seen = False
        while True:
            block = os.pread(fd, _READ_BYTES, offset + len(rest))
            if not block:
                break
            data = rest + block
            cut = data.rfind(b"\n") + 1
            lines = data[:cut].split(b"\n")[:-1]
            rest = data[cut:]
            if not header_seen and lines:
                header_seen = True
                reason = DatasetJournal._header_problem(lines[0], wanted)
                if reason:
                    warn(f"the run's journal {path} {reason}: starting a new one (every file is checked again)")
                    return False, 0
                lines = lines[1:]
                line_no += 1
            if lines:
                loader.lines(lines, line_no)
                line_no += len(lines)
            offset += cut
        if not header_seen:
            if rest:
                warn(f"the run's journal {path} has no complete header: starting a new one")
            return False, 0
        return True, offset

    @staticmethod
    def _header_problem(line: bytes, wanted: Any) -> str:
        try:
            header = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return "does not start with a valid header"
        if not isinstance(header, dict) or header.get("kind") != _KIND:
            return "is not a directory run's journal"
        if header.get("version") != DATASET_JOURNAL_VERSION:
            return f"has version {header.get('version')!r}, not {DATASET_JOURNAL_VERSION}"
        if header.get("identity") != wanted:
            return "belongs to other sources or another destination"
        return ""

    # -- what earlier runs finished ----------------------------------------------------------------------------------
    def finished(self, rel: str, size: int, mtime_ns: int, inode: int) -> bool:
        """Whether an earlier run finished this file, with this same size, modification time and inode."""
        return _contains(self._fingerprints, hash((rel, size, mtime_ns, inode)))

    def known(self, rel: str) -> bool:
        """Whether an earlier run finished a file at ``rel``, whatever its fingerprint (known and not finished:
        it changed since)."""
        return _contains(self._rels, hash(rel))

    # -- this run ----------------------------------------------------------------------------------------------------
    def record(self, entries: Sequence[FinishedFile]) -> None:
        """Append these finished files: one ``write`` of all their lines, no fsync (see :meth:`sync`)."""
        if not entries:
            return
        prefix = self._prefix
        lines = []
        for e in entries:
            row: list[object] = [e.rel, e.size, e.mtime_ns, e.inode, e.etag, e.checksum]
            if prefix is None or e.key != prefix + e.rel:
                row.append(e.key)
            lines.append(_encode(row))
        lines.append("")
        payload = "\n".join(lines).encode()
        view = memoryview(payload)
        while view:  # one write, unless the kernel takes less (a full disk raises)
            view = view[os.write(self._fd, view):]

    def sync(self) -> None:
        """Make what was recorded durable."""
        if self._fd >= 0:
            os.fsync(self._fd)

    def close(self) -> None:
        """fsync, close, and let another run take the journal."""
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1
                self._lock.release()

    def remove(self) -> None:
        """The run finished every file: the journal is no longer needed."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            self.path.unlink(missing_ok=True)
        finally:
            self._lock.release()  # the .lock file stays: unlinking it could let two later runs lock different files

    def __enter__(self) -> DatasetJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _contains(values: array[int], h: int) -> bool:
    i = bisect_left(values, h)
    return i < len(values) and values[i] == h
