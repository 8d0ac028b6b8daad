"""A directory run (DatasetUpload) in this process against the in-memory Store.

Fakes only for the store: the walk, the scheduler, the executors (threads: an in-memory store cannot go to worker
processes), the run's journal and the aggregator are the real ones. What is checked is what a user relies on:
keys, one PutObject per small file, a failed file failing alone, --fail-fast, --skip-existing, resume without
sending twice what was complete, Ctrl+C aborting the multipart upload in flight — counted in requests the store
received.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mpupload import errors as E
from mpupload.api import prepare_dataset, upload_directory
from mpupload.engine import probe
from mpupload.engine.cancel import CancelToken
from mpupload.engine.dataset import PART_SIZE_METADATA, DatasetOptions
from mpupload.options import UploadOptions
from mpupload.storage.errors import StoreError
from mpupload.storage.memory import MemoryStore
from mpupload.wire import Event, Snapshot, Status

MiB = 1024 * 1024
BUCKET = "ds"
PART = 5 * MiB


class Recorder:
    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []

    def emit(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)

    def close(self) -> None:
        pass

    def of(self, event: Event) -> list[Snapshot]:
        return [s for s in self.snapshots if s.event is event]

    @property
    def final(self) -> Snapshot:
        return self.snapshots[-1]


class Puts:
    """The PutObject calls the store received, by key (the store probe sends none)."""

    def __init__(self, store: MemoryStore) -> None:
        self.keys: list[str] = []
        store.before("PutObject", lambda op, params: self.keys.append(params["Key"]))


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MPUPLOAD_STATE_DIR", str(tmp_path / "state"))
    probe.clear_cache()
    yield
    probe.clear_cache()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(BUCKET)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Nested directories, unicode and spaces, an empty file, 40 small files and one multipart file."""
    root = tmp_path / "data"
    for n in range(40):
        write(root / f"d{n % 4}" / f"sub {n % 3}" / f"file-{n}.bin", os.urandom(n * 97))
    write(root / "ünïcode dir" / "naïve file.txt", b"hello")
    write(root / "empty", b"")
    write(root / "big.bin", os.urandom(12 * MiB + 3))
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def options(**kw: Any) -> UploadOptions:
    return UploadOptions(**{"part_size": PART, "workers": 2, **kw})


def test_a_tree_goes_under_the_prefix_with_its_relative_paths(store: MemoryStore, tree: Path) -> None:
    puts = Puts(store)
    rec = Recorder()
    result = upload_directory([str(tree)], BUCKET, "sets/x/", store=store, options=options(), sinks=[rec],
                              dataset=DatasetOptions(put_threads=3, batch_files=7))
    expected = files_of(tree)
    assert result.files_total == len(expected) == result.files_done
    assert result.files_failed == 0
    for rel, data in expected.items():
        obj = store.object(BUCKET, f"sets/x/{rel}")
        assert obj is not None and obj.data == data, rel
    # one PutObject per small file, the big one as a multipart upload
    assert sorted(puts.keys) == sorted(f"sets/x/{rel}" for rel in expected if rel != "big.bin")
    assert store.uploads(BUCKET) == {}
    big = store.object(BUCKET, "sets/x/big.bin")
    assert big is not None and big.object_args["Metadata"][PART_SIZE_METADATA] == str(PART)
    small = store.object(BUCKET, "sets/x/d0/sub 0/file-0.bin")
    assert small is not None and "mpupload-crc32c" in small.object_args["Metadata"]
    started = rec.of(Event.STARTED)[0]
    assert started.files is not None and started.files.total == len(expected)
    assert started.total_bytes == sum(len(d) for d in expected.values())
    completed = rec.of(Event.FILE_COMPLETED)
    assert sorted(s.key for s in completed) == sorted(f"sets/x/{rel}" for rel in expected)
    assert rec.final.event is Event.COMPLETED and rec.final.bytes_done == rec.final.total_bytes
    assert rec.final.files is not None and rec.final.files.done == len(expected)
    # the big file goes first: no giant file starts last
    assert completed[0].key == "sets/x/big.bin"
    # progress never goes past the total
    assert all(s.bytes_done <= s.total_bytes for s in rec.snapshots)


def test_a_file_that_fails_fails_alone(store: MemoryStore, tree: Path) -> None:
    def refuse(op: str, params: dict[str, Any]) -> None:
        if params["Key"].endswith("file-7.bin"):
            raise StoreError("AccessDenied", 403, "denied by policy")

    store.before("PutObject", refuse)
    rec = Recorder()
    with pytest.raises(E.FilesFailed) as info:
        upload_directory([str(tree)], BUCKET, "p/", store=store, options=options(), sinks=[rec])
    assert "1 of" in str(info.value) and "file-7.bin" in str(info.value)
    failed = rec.of(Event.FILE_FAILED)
    assert [s.extra["path"] for s in failed] == ["d3/sub 1/file-7.bin"]
    assert rec.final.event is Event.FAILED and rec.final.status is Status.FAILED
    assert [f["path"] for f in rec.final.extra["failed_files"]] == ["d3/sub 1/file-7.bin"]
    expected = files_of(tree)
    stored = {rel for rel in expected if store.object(BUCKET, f"p/{rel}") is not None}
    assert stored == set(expected) - {"d3/sub 1/file-7.bin"}


def test_fail_fast_stops_at_the_first_failure(store: MemoryStore, tree: Path) -> None:
    def refuse(op: str, params: dict[str, Any]) -> None:
        raise StoreError("AccessDenied", 403, "denied by policy")

    store.before("PutObject", refuse)
    rec = Recorder()
    with pytest.raises(E.FilesFailed):
        upload_directory([str(tree)], BUCKET, "p/", store=store, options=options(), sinks=[rec],
                         dataset=DatasetOptions(fail_fast=True, put_threads=1, batch_files=4))
    assert rec.final.event is Event.FAILED
    assert rec.final.files is not None and rec.final.files.failed < 10  # not all 42 small files were tried
    assert store.uploads(BUCKET) == {}


def test_a_multipart_file_that_fails_is_aborted_and_the_others_go_on(store: MemoryStore, tree: Path) -> None:
    def refuse(op: str, params: dict[str, Any]) -> None:
        if params["Key"].endswith("big.bin") and params["ContentLength"] > len(probe.PROBE_BODY):
            raise StoreError("AccessDenied", 403, "denied by policy")

    store.before("UploadPart", refuse)
    with pytest.raises(E.FilesFailed):
        upload_directory([str(tree)], BUCKET, "p/", store=store, options=options())
    assert store.uploads(BUCKET) == {}  # the failed file's multipart upload was aborted
    assert store.object(BUCKET, "p/big.bin") is None
    assert store.object(BUCKET, "p/d0/sub 0/file-0.bin") is not None


def test_skip_existing_skips_the_same_objects_and_sends_a_changed_one(store: MemoryStore, tree: Path) -> None:
    upload_directory([str(tree)], BUCKET, "p/", store=store, options=options())
    same_size = b"x" * len(b"hello")
    store.put_object(BUCKET, "p/ünïcode dir/naïve file.txt", same_size, content_length=len(same_size))
    puts = Puts(store)
    parts_before = store.calls["UploadPart"]
    rec = Recorder()
    result = upload_directory([str(tree)], BUCKET, "p/", store=store, options=options(), sinks=[rec],
                              dataset=DatasetOptions(skip_existing=True))
    assert puts.keys == ["p/ünïcode dir/naïve file.txt"]
    assert store.calls["UploadPart"] == parts_before  # the multipart file was recognised by its part ETags
    obj = store.object(BUCKET, "p/ünïcode dir/naïve file.txt")
    assert obj is not None and obj.data == b"hello"
    assert result.files_skipped == result.files_total - 1
    skipped = [s for s in rec.of(Event.FILE_COMPLETED) if s.extra["skipped"] == "exists"]
    assert len(skipped) == result.files_total - 1


def test_resume_sends_only_what_is_missing_and_what_changed(store: MemoryStore, tree: Path) -> None:
    token = CancelToken()
    seen: list[str] = []

    def stop_after_ten(op: str, params: dict[str, Any]) -> None:
        seen.append(params["Key"])
        if len(seen) == 10:
            token.cancel("test stop")

    store.before("PutObject", stop_after_ten)
    first = Recorder()
    with pytest.raises(E.Cancelled):
        upload_directory([str(tree)], BUCKET, "p/", store=store, options=options(), cancel=token, sinks=[first],
                         dataset=DatasetOptions(put_threads=1, batch_files=1))
    token.close()
    stored_before = {k for k in files_of(tree) if store.object(BUCKET, f"p/{k}") is not None}
    assert "big.bin" in stored_before and 0 < len(stored_before) < len(files_of(tree))
    # a file the interrupted run finished (and recorded) changes before the resume
    changed_rel = sorted(s.extra["path"] for s in first.of(Event.FILE_COMPLETED) if s.extra["path"] != "big.bin")[0]
    (tree / changed_rel).write_bytes(b"new content")
    puts = Puts(store)
    parts_before = store.calls["UploadPart"]
    rec = Recorder()
    result = upload_directory([str(tree)], BUCKET, "p/", store=store, options=options(resume=True), sinks=[rec])
    assert store.calls["UploadPart"] == parts_before  # the big file was done: not sent again
    sent = set(puts.keys)
    assert sent == {f"p/{k}" for k in files_of(tree) if k not in stored_before} | {f"p/{changed_rel}"}
    assert len(puts.keys) == len(sent)  # nothing twice
    assert any(w.startswith(f"{changed_rel} changed since") for w in result.warnings)
    for rel, data in files_of(tree).items():
        obj = store.object(BUCKET, f"p/{rel}")
        assert obj is not None and obj.data == data, rel
    assert rec.final.event is Event.COMPLETED


def test_ctrl_c_during_a_multipart_file_aborts_it(store: MemoryStore, tree: Path) -> None:
    token = CancelToken()

    def cancel(op: str, params: dict[str, Any]) -> None:
        if params["ContentLength"] > len(probe.PROBE_BODY) and params["PartNumber"] == 2:
            token.cancel("test stop")

    store.before("UploadPart", cancel)
    rec = Recorder()
    with pytest.raises(E.Cancelled) as info:
        upload_directory([str(tree)], BUCKET, "p/", store=store, options=options(), cancel=token, sinks=[rec])
    token.close()
    assert "--resume" not in str(info.value) or "continue with" in str(info.value)
    assert store.uploads(BUCKET) == {}
    assert rec.final.event is Event.STOPPED and rec.final.status is Status.STOPPED
    assert store.object(BUCKET, "p/big.bin") is None


def test_a_prefix_without_a_slash_is_refused_before_the_store(store: MemoryStore, tree: Path) -> None:
    with pytest.raises(E.UsageError, match="end the destination with /"):
        prepare_dataset([str(tree)], BUCKET, "sets", store=store, options=options())
    assert sum(store.calls.values()) == 0


def test_two_sources_and_a_file_source(store: MemoryStore, tmp_path: Path) -> None:
    a = write(tmp_path / "a" / "x" / "1.txt", b"one").parent.parent
    f = write(tmp_path / "loose.txt", b"loose")
    upload_directory([str(a), str(f)], BUCKET, "", store=store, options=options())
    got = {k: store.object(BUCKET, k) for k in ("x/1.txt", "loose.txt")}
    assert all(obj is not None for obj in got.values())
    assert hashlib.sha256(got["loose.txt"].data).digest() == hashlib.sha256(b"loose").digest()  # type: ignore[union-attr]


def test_a_large_file_kept_on_interrupt_resumes_at_part_level(store: MemoryStore, tree: Path) -> None:
    token = CancelToken()
    sent: list[int] = []

    def cancel_at_part_two(op: str, params: dict[str, Any]) -> None:
        if params["ContentLength"] > len(probe.PROBE_BODY):
            sent.append(params["PartNumber"])
            if params["PartNumber"] == 2:
                token.cancel("test stop")

    store.before("UploadPart", cancel_at_part_two)
    with pytest.raises(E.Cancelled, match="kept"):
        upload_directory([str(tree)], BUCKET, "p/", store=store,
                         options=options(keep_on_interrupt=True, workers=1), cancel=token)
    token.close()
    (kept,) = store.uploads(BUCKET).values()
    assert 1 in kept and len(kept) < 3
    sent.clear()
    upload_directory([str(tree)], BUCKET, "p/", store=store, options=options(resume=True))
    assert sorted(sent) == [n for n in (1, 2, 3) if n not in kept]  # only the missing parts
    big = store.object(BUCKET, "p/big.bin")
    assert big is not None and big.data == (tree / "big.bin").read_bytes()
    assert store.uploads(BUCKET) == {}


def test_a_file_reported_done_is_never_listed_in_flight_again(store: MemoryStore, tree: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pass of the small-file loop ticks (a 1 µs tick), so a progress snapshot follows each batch that comes
    back: a file whose ``file_completed`` event went out is not in a later snapshot's ``in_flight`` (the API
    server keeps a file's last state: a stale entry would show it in flight after the run ended)."""
    monkeypatch.setattr("mpupload.engine.aggregator.TICK_S", 1e-6)

    class Eager(Recorder):
        refresh_s = 1e-6

    rec = Eager()
    result = upload_directory([str(tree)], BUCKET, "sets/x/", store=store, options=options(), sinks=[rec],
                              dataset=DatasetOptions(put_threads=3, batch_files=2))
    assert result.files_failed == 0
    finished: set[str] = set()
    listed = 0
    for snap in rec.snapshots:
        if snap.event in (Event.FILE_COMPLETED, Event.FILE_FAILED):
            finished.add(snap.extra["path"])
        elif snap.event is Event.PROGRESS:
            paths = {f["path"] for f in snap.extra["in_flight"]}
            listed += len(paths)
            assert not finished & paths, sorted(finished & paths)
    assert listed, "no snapshot listed a file in flight: the check above saw nothing"
