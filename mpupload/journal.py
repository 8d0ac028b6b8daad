"""Resume state: a small versioned JSON per (source, destination), written atomically.

The journal is a *hint*; the store is the truth. On ``--resume`` the parts the store lists (ListParts) are
what counts, and a part is reused only when its size and checksum match the local bytes.

Where: ``$MPUPLOAD_STATE_DIR``, else ``$XDG_STATE_HOME/mpupload``, else ``~/.local/state/mpupload``
(directory 0700, files 0600). One file per (absolute source path, endpoint, bucket, key), named by a hash
of those; a ``.lock`` file beside it is held (``flock``) for the whole run, so two runs cannot use the
same journal.

Format (version 1)::

    {"version": 1, "kind": "mpupload-journal",
     "source": {"path", "size", "mtime_ns", "inode", "device", "sample_sha256"},
     "destination": {"endpoint", "bucket", "key"},
     "upload_id", "part_size", "parts_total", "checksum_algorithm", "md5",
     "created_at", "updated_at",
     "parts": {"<number>": {"size", "etag", "checksum", "md5"}},
     "record_id"}

``record_id`` (optional, may be absent or null) is the API server's record of the upload, so that
``--resume`` continues the same record; journals written before it existed read as ``null``.

Writes go to a temporary file in the same directory, are fsynced, then renamed over the journal (and the
directory fsynced): a crash leaves the old journal or the new one, never half of one. A journal that does
not parse, has another version, or describes another source or destination is reported and set aside
(renamed ``*.corrupt-<time>``), never trusted.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import errors as E
from .fsutil import write_atomic

__all__ = [
    "JOURNAL_VERSION", "CorruptJournal", "SourceFingerprint", "PartRecord", "Journal", "state_dir",
    "journal_path", "load", "set_aside", "list_journals", "JournalLock", "fingerprint",
]

JOURNAL_VERSION = 1
_KIND = "mpupload-journal"
#: bytes hashed at each of the sampled offsets of the source (start, middle, end)
SAMPLE_BYTES = 64 * 1024


class CorruptJournal(ValueError):
    """The journal cannot be trusted; the message says why."""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def state_dir() -> Path:
    """The directory that holds journals (created 0700 on first use)."""
    env = os.environ.get("MPUPLOAD_STATE_DIR")
    if env:
        path = Path(env)
    else:
        base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        path = Path(base) / "mpupload"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class SourceFingerprint:
    path: str
    size: int
    mtime_ns: int
    inode: int
    device: int
    #: SHA-256 of 64 KiB at the start, the middle and the end of the file
    sample_sha256: str

    def differences(self, other: SourceFingerprint) -> list[str]:
        """What changed between two fingerprints of the same path (empty: the same file)."""
        out = []
        for name in ("size", "mtime_ns", "inode", "sample_sha256"):
            if getattr(self, name) != getattr(other, name):
                out.append({"mtime_ns": "modification time", "sample_sha256": "content",
                            "inode": "inode"}.get(name, name))
        return out


def fingerprint(path: str) -> SourceFingerprint:
    """Fingerprint a file: stat fields plus a hash of three 64 KiB samples (cheap even for 500 GB)."""
    abspath = os.path.abspath(path)
    fd = os.open(abspath, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        h = hashlib.sha256()
        size = st.st_size
        for offset in sorted({0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)}):
            h.update(os.pread(fd, SAMPLE_BYTES, offset))
        return SourceFingerprint(abspath, size, st.st_mtime_ns, st.st_ino, st.st_dev, h.hexdigest())
    finally:
        os.close(fd)


@dataclass
class PartRecord:
    size: int
    etag: str
    checksum: str | None = None
    md5: str | None = None


@dataclass
class Journal:
    path: Path
    source: SourceFingerprint
    endpoint: str | None
    bucket: str
    key: str
    upload_id: str
    part_size: int
    parts_total: int
    checksum_algorithm: str | None
    md5: bool
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    parts: dict[int, PartRecord] = field(default_factory=dict)
    #: the API server's record id of this upload (None: not reported, or registered late)
    record_id: str | None = None

    # -- serialisation --------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": JOURNAL_VERSION,
            "kind": _KIND,
            "source": asdict(self.source),
            "destination": {"endpoint": self.endpoint, "bucket": self.bucket, "key": self.key},
            "upload_id": self.upload_id,
            "part_size": self.part_size,
            "parts_total": self.parts_total,
            "checksum_algorithm": self.checksum_algorithm,
            "md5": self.md5,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            # by hand, not asdict(): a 10,000-part journal is written every few seconds, and asdict's deep copy
            # made that ten times dearer
            "parts": {str(n): {"size": p.size, "etag": p.etag, "checksum": p.checksum, "md5": p.md5}
                      for n, p in sorted(self.parts.items())},
            "record_id": self.record_id,
        }

    @classmethod
    def from_json(cls, path: Path, data: Any) -> Journal:
        try:
            if not isinstance(data, dict) or data.get("kind") != _KIND:
                raise CorruptJournal("not an mpupload journal")
            if data.get("version") != JOURNAL_VERSION:
                raise CorruptJournal(f"journal version {data.get('version')!r}, this mpupload reads {JOURNAL_VERSION}")
            src = data["source"]
            dest = data["destination"]
            journal = cls(
                path=path,
                source=SourceFingerprint(str(src["path"]), int(src["size"]), int(src["mtime_ns"]),
                                         int(src["inode"]), int(src["device"]), str(src["sample_sha256"])),
                endpoint=dest.get("endpoint"),
                bucket=str(dest["bucket"]),
                key=str(dest["key"]),
                upload_id=str(data["upload_id"]),
                part_size=int(data["part_size"]),
                parts_total=int(data["parts_total"]),
                checksum_algorithm=data.get("checksum_algorithm"),
                md5=bool(data.get("md5")),
                created_at=str(data.get("created_at") or _now()),
                updated_at=str(data.get("updated_at") or _now()),
                parts={int(n): PartRecord(int(p["size"]), str(p["etag"]), p.get("checksum"), p.get("md5"))
                       for n, p in dict(data.get("parts") or {}).items()},
                record_id=str(data["record_id"]) if data.get("record_id") else None,
            )
        except CorruptJournal:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise CorruptJournal(f"malformed journal ({type(exc).__name__}: {exc})") from None
        if journal.part_size <= 0 or not 1 <= journal.parts_total <= 10_000:
            raise CorruptJournal("malformed journal (part size or part count out of range)")
        if any(not 1 <= n <= journal.parts_total for n in journal.parts):
            raise CorruptJournal("malformed journal (a part number outside the plan)")
        return journal

    # -- state --------------------------------------------------------------------------------------------------
    @property
    def bytes_done(self) -> int:
        return sum(p.size for p in self.parts.values())

    def record(self, number: int, part: PartRecord) -> None:
        self.parts[number] = part

    def save(self, *, durable: bool = True) -> None:
        """Write atomically: temporary file, rename over the journal; ``durable`` fsyncs the file before the
        rename and the directory after it (:func:`~mpupload.fsutil.write_atomic`)."""
        self.updated_at = _now()
        payload = json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode()
        write_atomic(self.path, payload, durable=durable)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def journal_path(source_path: str, endpoint: str | None, bucket: str, key: str, *, directory: Path | None = None) \
        -> Path:
    identity = json.dumps([os.path.abspath(source_path), endpoint or "", bucket, key])
    name = hashlib.sha256(identity.encode()).hexdigest()[:32]
    return (directory or state_dir()) / f"{name}.json"


def load(path: Path) -> Journal | None:
    """The journal at ``path``; ``None`` when there is none; :class:`CorruptJournal` when it is unusable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CorruptJournal(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptJournal(f"{path} is not valid JSON ({exc})") from None
    return Journal.from_json(path, data)


def set_aside(path: Path) -> Path:
    """Rename an untrusted journal out of the way (kept for inspection); returns the new name."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():  # set aside twice within a second: keep both
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, target)
    return target


def list_journals(directory: Path | None = None) -> Iterator[Journal | tuple[Path, CorruptJournal]]:
    """Every journal in the state directory; unusable ones as ``(path, error)``."""
    root = directory or state_dir()
    for path in sorted(root.glob("*.json")):
        try:
            journal = load(path)
        except CorruptJournal as exc:
            yield path, exc
            continue
        if journal is not None:
            yield journal


class JournalLock:
    """An exclusive, non-blocking ``flock`` on ``<journal>.lock`` for the whole run.

    A second run on the same (source, destination) gets a :class:`~mpupload.errors.UsageError` (exit 2).
    The kernel drops the lock when the process dies, even by SIGKILL.
    """

    def __init__(self, journal_file: Path) -> None:
        self.path = journal_file.with_name(journal_file.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> JournalLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 32, 0).decode().strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f" (pid {holder})" if holder else ""
                raise E.UsageError(
                    f"another mpupload run{who} is uploading this file to this destination: wait for it to "
                    "finish, or stop it first"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JournalLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
