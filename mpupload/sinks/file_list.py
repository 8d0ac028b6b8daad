"""A directory run's file list on its way to the API server: the bounded map of what is not sent yet.

The push sink (:mod:`.push`) turns ``file_completed`` and ``file_failed`` events, and the ``in_flight`` files of
each ``progress`` snapshot, into entries of a files batch (:data:`mpupload.wire.FILE_BATCH_FIELDS`) and puts
them in a :class:`PendingFiles`: path -> the newest entry not sent yet, so a file that changes state a few
times before the next batch is sent once. Completed files are sent too, so that the server's list is whole.

Memory is bounded: at most ``limit`` entries are held (a server that is down for an hour must not cost a
million entries). When the map is full, an entry goes in this order: the oldest file in flight (its state is
stale soon anyway), then the oldest completed or skipped file, then the oldest failed one — failed files are
kept first, they are what a user looks for. A new entry that ranks below everything held is not taken. Every
entry that goes is counted by its status (:attr:`PendingFiles.dropped`), so the sink can say what the server's
list misses.

:meth:`PendingFiles.put` is O(1) (it runs on the upload's main thread, once per file event);
:meth:`PendingFiles.take` runs on the sender thread and makes the entries fit the server's bounds: text is
made valid UTF-8 without NUL and cut to its byte limit, ``bytes_done`` is kept within ``size``.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from ..wire import FILE_BATCH_FIELDS, FILES_BATCH_MAX, FILES_BATCH_MAX_BYTES, Event, FileStatus, Snapshot

__all__ = ["PENDING_FILES_MAX", "BATCH_BYTES", "PendingFiles", "entries_of", "fit_text"]

#: entries the sink holds before it drops some (about 1 KiB each: a few MiB at most)
PENDING_FILES_MAX = 20_000
#: a batch stops growing at this much JSON (half what the server takes, so an estimate off by a bit is fine)
BATCH_BYTES = FILES_BATCH_MAX_BYTES // 2

_MAX_BYTES = {f.name: f.maximum for f in FILE_BATCH_FIELDS if f.kind is str}
#: the three groups of entries, in the order they are dropped (and sent last)
_IN_FLIGHT, _DONE, _FAILED = 0, 1, 2
_RANK = {FileStatus.UPLOADING.value: _IN_FLIGHT, FileStatus.COMPLETED.value: _DONE, FileStatus.SKIPPED.value: _DONE,
         FileStatus.FAILED.value: _FAILED}


def fit_text(value: object, max_bytes: int | None) -> str:
    """``value`` as valid UTF-8 text without NUL, cut (at a character boundary) to ``max_bytes`` bytes.

    A name that is not UTF-8 (``os.fsdecode`` keeps its bytes as lone surrogates) shows U+FFFD where it
    cannot be read."""
    text = str(value)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name makes
        raw = text.encode("utf-8", "replace")
    text = raw.decode("utf-8", "replace").replace("\x00", "\ufffd")
    if max_bytes is not None and len(text) * 4 > max_bytes:
        data = text.encode("utf-8")
        if len(data) > max_bytes:
            text = data[:max_bytes].decode("utf-8", "ignore")  # only a character cut in two is left out
    return text


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _entry(path: object, key: object, size: object, bytes_done: object, status: FileStatus,
           error: object = None) -> dict[str, Any]:
    return {"path": path, "key": key, "size": size, "bytes_done": bytes_done, "status": status.value,
            "error": error}


def entries_of(snapshot: Snapshot) -> list[dict[str, Any]]:
    """The files batch entries one snapshot brings: a per-file event's file, a progress snapshot's files in
    flight; nothing for the others (unchecked here: :meth:`PendingFiles.take` makes them fit)."""
    extra = snapshot.extra
    if snapshot.event is Event.FILE_COMPLETED:
        size = extra.get("size", 0)
        status = FileStatus.SKIPPED if extra.get("skipped") else FileStatus.COMPLETED
        return [_entry(extra.get("path", snapshot.key), snapshot.key, size, size, status)]
    if snapshot.event is Event.FILE_FAILED:
        return [_entry(extra.get("path", snapshot.key), snapshot.key, extra.get("size", 0), 0, FileStatus.FAILED,
                       extra.get("error") or extra.get("error_type") or "failed")]
    if snapshot.event is Event.PROGRESS:
        in_flight = extra.get("in_flight")
        if isinstance(in_flight, list):
            return [_entry(f.get("path"), f.get("key", ""), f.get("size", 0), f.get("bytes_done", 0),
                           FileStatus.UPLOADING) for f in in_flight if isinstance(f, dict) and f.get("path")]
    return []


class PendingFiles:
    """Path -> the newest entry not sent yet, at most ``limit`` of them (see the module docstring). Not locked
    itself: the sink holds its lock around every call."""

    def __init__(self, limit: int = PENDING_FILES_MAX) -> None:
        if limit < 1:
            raise ValueError("the map needs room for one entry")
        self.limit = limit
        #: in flight, completed or skipped, failed: each in the order the files were put
        self._groups: tuple[dict[str, dict[str, Any]], ...] = ({}, {}, {})
        #: status -> entries dropped because the map was full (never sent)
        self.dropped: Counter[str] = Counter()

    def __len__(self) -> int:
        return sum(len(group) for group in self._groups)

    def __contains__(self, path: object) -> bool:
        return any(path in group for group in self._groups)

    def put(self, entry: dict[str, Any]) -> None:
        """Hold ``entry`` as its path's newest state (O(1)); when full, drop what ranks lowest."""
        path = str(entry["path"])
        for group in self._groups:
            group.pop(path, None)
        rank = _RANK.get(str(entry["status"]), _DONE)
        if len(self) >= self.limit and not self._drop_one(rank):
            self.dropped[str(entry["status"])] += 1
            return
        self._groups[rank][path] = entry

    def _drop_one(self, up_to: int) -> bool:
        """Drop the oldest entry of the lowest group not above ``up_to``; False when there is none."""
        for group in self._groups[:up_to + 1]:
            if group:
                path = next(iter(group))
                self.dropped[str(group.pop(path)["status"])] += 1
                return True
        return False

    def take(self, max_entries: int = FILES_BATCH_MAX, max_bytes: int = BATCH_BYTES) -> list[dict[str, Any]]:
        """Up to ``max_entries`` entries (about ``max_bytes`` of JSON at most) out of the map, failed files first,
        made to fit the server's bounds."""
        batch: list[dict[str, Any]] = []
        size = 2
        for group in reversed(self._groups):
            while group and len(batch) < max_entries:
                path = next(iter(group))
                entry = _fitted(group[path])
                cost = len(json.dumps(entry, ensure_ascii=False).encode()) + 1
                if batch and size + cost > max_bytes:
                    return batch
                del group[path]
                batch.append(entry)
                size += cost
        return batch

    def give_back(self, batch: list[dict[str, Any]]) -> None:
        """A batch that was not delivered: its entries go back, unless a newer state of the file came meanwhile."""
        for entry in batch:
            if entry["path"] not in self:
                self.put(entry)


def _fitted(entry: dict[str, Any]) -> dict[str, Any]:
    size = _count(entry.get("size"))
    error = entry.get("error")
    return {"path": fit_text(entry.get("path"), _MAX_BYTES["path"]),
            "key": fit_text(entry.get("key") or "", _MAX_BYTES["key"]), "size": size,
            "bytes_done": min(size, _count(entry.get("bytes_done"))), "status": entry["status"],
            "error": None if error is None else fit_text(error, _MAX_BYTES["error"])}
