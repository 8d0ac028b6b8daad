"""The push sink's pending file list: newest state per path, the bound (failed files kept first, what went is
counted), batches that fit the server's bounds, and the entries a directory run's snapshots bring."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from mpupload import wire
from mpupload.sinks.file_list import PendingFiles, entries_of, fit_text
from mpupload.sinks.push import report_body


def entry(path: str, status: str = "completed", error: str | None = None, size: int = 10) -> dict[str, Any]:
    return {"path": path, "key": f"p/{path}", "size": size, "bytes_done": size if status != "failed" else 0,
            "status": status, "error": error}


def snap(event: wire.Event, key: str = "p/", **extra: Any) -> wire.Snapshot:
    return wire.Snapshot(event=event, status=wire.Status.UPLOADING, upload_id="u", bucket="b", key=key,
                         total_bytes=100, bytes_done=10, speed_bps=1.0, avg_speed_bps=1.0, eta_seconds=None,
                         elapsed_seconds=1.0, parts_done=1, parts_total=4, extra=extra,
                         files=wire.FileCounts(total=4, done=1, failed=1, skipped=0))


def test_the_newest_state_of_a_path_wins() -> None:
    pending = PendingFiles()
    pending.put(entry("a", "uploading"))
    pending.put(entry("b"))
    pending.put(entry("a", "failed", error="boom"))
    assert len(pending) == 2
    batch = pending.take()
    assert [(e["path"], e["status"]) for e in batch] == [("a", "failed"), ("b", "completed")]  # failed first
    assert len(pending) == 0 and pending.take() == []


def test_the_bound_keeps_failed_files_first_and_counts_what_went() -> None:
    pending = PendingFiles(limit=5)
    for i in range(3):
        pending.put(entry(f"fly{i}", "uploading"))
    for i in range(3):
        pending.put(entry(f"ok{i}"))
    assert len(pending) == 5 and pending.dropped == {"uploading": 1}  # the oldest in flight went first
    for i in range(4):
        pending.put(entry(f"bad{i}", "failed", error="e"))
    assert len(pending) == 5
    assert pending.dropped == {"uploading": 3, "completed": 2}
    pending.put(entry("late"))  # the same rank: the oldest of it goes
    assert "late" in pending and "ok2" not in pending and pending.dropped["completed"] == 3
    pending.put(entry("bad9", "failed", error="e"))  # a completed file goes before any failed one
    assert "late" not in pending and pending.dropped["completed"] == 4
    pending.put(entry("fly9", "uploading"))  # ranks below every entry held: not taken
    pending.put(entry("bad10", "failed", error="e"))  # only failed files left: the oldest of them goes
    assert pending.dropped == {"uploading": 4, "completed": 4, "failed": 1}
    paths = [e["path"] for e in pending.take()]
    assert paths == ["bad1", "bad2", "bad3", "bad9", "bad10"]


def test_a_batch_is_bounded_by_entries_and_bytes_and_comes_back_when_not_sent() -> None:
    pending = PendingFiles()
    for i in range(2500):
        pending.put(entry(f"f{i:05d}"))
    sizes = [len(pending.take()) for _ in range(3)]
    assert sizes == [1000, 1000, 500]
    for i in range(300):
        pending.put(entry(f"long{i}", "failed", error="x" * 5000))  # cut to 4096 bytes each
    batch = pending.take(max_bytes=256 * 1024)
    assert 0 < len(batch) < 300 and len(json.dumps({"files": batch}).encode()) <= 256 * 1024 + 2
    assert all(len(e["error"].encode()) == 4096 for e in batch)
    pending.put(entry(batch[0]["path"], "completed"))  # a newer state came while the batch was out
    pending.give_back(batch)
    again = {e["path"]: e["status"] for e in pending.take(max_bytes=8 * 1024 * 1024)}
    assert len(again) == 300 and again[batch[0]["path"]] == "completed"


@pytest.mark.parametrize(("value", "limit", "expected"), [
    ("plain/name.txt", 1024, "plain/name.txt"),
    (os.fsdecode(b"bad\xffname"), 1024, "bad\ufffdname"),
    ("nul\x00inside", None, "nul\ufffdinside"),
    ("é" * 600, 1024, "é" * 512),
    ("aé", 2, "a"),  # never half a character
    ("\ud800", 10, "?"),
])
def test_text_is_made_to_fit(value: str, limit: int | None, expected: str) -> None:
    assert fit_text(value, limit) == expected


def test_the_entries_a_directory_runs_snapshots_bring() -> None:
    done = entries_of(snap(wire.Event.FILE_COMPLETED, key="p/a.bin", path="a.bin", size=7, skipped=None))
    skipped = entries_of(snap(wire.Event.FILE_COMPLETED, key="p/s.bin", path="s.bin", size=3, skipped="exists"))
    failed = entries_of(snap(wire.Event.FILE_FAILED, key="p/x", path="x", size=9, error="unreadable",
                             error_type="SourceError"))
    flying = entries_of(snap(wire.Event.PROGRESS, in_flight=[{"path": "big", "key": "p/big", "size": 100,
                                                              "bytes_done": 40}]))
    assert done == [{"path": "a.bin", "key": "p/a.bin", "size": 7, "bytes_done": 7, "status": "completed",
                     "error": None}]
    assert skipped[0]["status"] == "skipped" and failed[0]["status"] == "failed"
    assert (failed[0]["error"], failed[0]["bytes_done"]) == ("unreadable", 0)
    assert flying == [{"path": "big", "key": "p/big", "size": 100, "bytes_done": 40, "status": "uploading",
                       "error": None}]
    assert entries_of(snap(wire.Event.STARTED)) == []
    for entries in (done, skipped, failed, flying):
        assert list(entries[0]) == list(wire.FILE_BATCH_FIELD_NAMES)


def test_a_directory_runs_report_carries_the_counts_and_no_file_lists() -> None:
    final = snap(wire.Event.FAILED, failed_files=[{"path": f"f{i}", "key": "k", "size": 1, "error": "e"}
                                                  for i in range(10_000)], warnings=["w"], error="1 of 4 files failed")
    body = report_body(final, 7)
    assert [body[n] for n in wire.FILES_FIELDS] == [4, 1, 1, 0]
    assert "failed_files" not in body and "warnings" not in body and body["error"] == "1 of 4 files failed"
    assert len(json.dumps(body)) < 2000
    progress = report_body(snap(wire.Event.PROGRESS, in_flight=[{"path": "a"}]), 8)
    assert "in_flight" not in progress and progress["seq"] == 8
