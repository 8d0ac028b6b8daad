"""What a source looks like from one host: a digest every cluster worker computes before any byte is sent.

A cluster run (``--cluster``) reads SOURCE on every worker at the same path, so they must all see the same data
(a shared filesystem). Before anything is sent, each worker computes the digest of its view of the source and the
coordinator compares it with its own (:class:`~mpupload.engine.dask_executor.DaskExecutor`):

* a **file** (:class:`FileSample`): its size and the SHA-256 of :data:`SAMPLES` blocks of :data:`SAMPLE_BYTES`
  at fixed places (the start, the end and evenly between): a different file, or a different version of it,
  differs there in practice, and reading 512 KiB costs nothing next to the upload;
* a **tree** (:class:`TreeListing`): the digest of its listing, as the walk of :mod:`mpupload.tree` gives it with
  the run's filters: each file's relative path, size and modification time, in the walk's order
  (:class:`ListingDigest`; the coordinator builds the same digest during its own walk).

Pure stdlib: workers import this module without the engine's heavy parts.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

__all__ = ["SourceProbe", "FileSample", "TreeListing", "ListingDigest", "SAMPLES", "SAMPLE_BYTES"]

SAMPLES = 8
SAMPLE_BYTES = 64 * 1024


def sample_offsets(size: int) -> list[int]:
    """Where :class:`FileSample` reads its blocks (sorted, distinct)."""
    if size <= SAMPLES * SAMPLE_BYTES:
        return [0] if size else []
    last = size - SAMPLE_BYTES
    return sorted({last * i // (SAMPLES - 1) for i in range(SAMPLES)})


@dataclass(frozen=True)
class FileSample:
    """One file: its size and the hash of sampled blocks (the whole file when it is small)."""

    path: str

    def describe(self) -> str:
        return self.path

    def digest(self) -> str:
        """``"<size>:<sha256 of the samples>"``; raises ``OSError`` when the file cannot be read."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            h = hashlib.sha256()
            if size <= SAMPLES * SAMPLE_BYTES:
                h.update(_pread_all(fd, size, 0))
            else:
                for offset in sample_offsets(size):
                    h.update(_pread_all(fd, SAMPLE_BYTES, offset))
            return f"{size}:{h.hexdigest()}"
        finally:
            os.close(fd)


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    pieces: list[bytes] = []
    got = 0
    while got < length:
        data = os.pread(fd, length - got, offset + got)
        if not data:
            break  # a shorter file: the digest differs, which is the point
        pieces.append(data)
        got += len(data)
    return b"".join(pieces)


class ListingDigest:
    """The digest of a walk's listing, built entry by entry (the coordinator feeds it during its own walk)."""

    #: how many problems (entries the walk could not read) are kept to be named in a message
    KEEP_PROBLEMS = 5

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.files = 0
        #: the first problems, as ``"rel: error"`` lines
        self.problems: list[str] = []

    def add(self, rel: str, size: int, mtime_ns: int) -> None:
        self._h.update(f"{rel}\0{size}\0{mtime_ns}\n".encode("utf-8", "surrogateescape"))
        self.files += 1

    def problem(self, rel: str, error: str = "") -> None:
        self._h.update(f"{rel}\0!\n".encode("utf-8", "surrogateescape"))
        if len(self.problems) < self.KEEP_PROBLEMS:
            self.problems.append(f"{rel}: {error}" if error else rel)

    def hexdigest(self) -> str:
        return f"{self.files}:{self._h.hexdigest()}"


@dataclass(frozen=True)
class TreeListing:
    """Directories (and files) walked with the run's filters: the digest of every entry's path, size and time."""

    sources: tuple[str, ...]
    #: the ``--include``/``--exclude`` rules as (include, pattern), in order
    rules: tuple[tuple[bool, str], ...] = ()
    follow_symlinks: bool = True

    def describe(self) -> str:
        return ", ".join(self.sources)

    def digest(self) -> str:
        return self.examine().hexdigest()

    def examine(self) -> ListingDigest:
        """The walk's listing digest, with the first entries it could not read (named when a worker differs: a
        worker that runs as another user may not list what the coordinator lists)."""
        from .tree import FilterRule, Filters, TreeProblem, walk

        filters = Filters([FilterRule(include, pattern) for include, pattern in self.rules]) if self.rules else None
        listing = ListingDigest()
        for entry in walk(list(self.sources), filters, follow_symlinks=self.follow_symlinks):
            if isinstance(entry, TreeProblem):
                listing.problem(entry.rel, entry.error)
            else:
                listing.add(entry.rel, entry.size, entry.mtime_ns)
        return listing


SourceProbe = FileSample | TreeListing
