"""``max_bandwidth`` through the library against the in-memory store: the threads' executors (one PutObject, the
parts of a multipart upload, a directory run's batches and its large file) are capped, the cap is announced in the
``started`` event, and a bad cap is refused before the store sees a request.

Under a cap a run can only be slower, never faster, so what is asserted is the lower bound on its time (a busy
machine cannot make that flaky): ``(bytes - burst) / rate``. The accuracy on real processes and a real server is
tests/integration/test_bandwidth.py's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mpupload import errors as E
from mpupload.api import upload_directory, upload_file
from mpupload.engine import probe
from mpupload.engine.executors import Executors
from mpupload.engine.throttle import burst_for
from mpupload.options import UploadOptions
from mpupload.storage.memory import MemoryStore
from mpupload.wire import Event, Snapshot

MiB = 1024 * 1024
BUCKET = "bw"


class Recorder:
    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []

    def emit(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MPUPLOAD_STATE_DIR", str(tmp_path / "state"))
    probe.clear_cache()
    yield
    probe.clear_cache()


def capped(rate: int, **kw: Any) -> UploadOptions:
    return UploadOptions(**{"part_size": 5 * MiB, "workers": 3, "max_bandwidth": rate, **kw})


def timed(fn: Any) -> tuple[Any, float]:
    t = time.monotonic()
    out = fn()
    return out, time.monotonic() - t


@pytest.mark.parametrize(("size", "rate", "multipart"), [(3 * MiB, 4 * MiB, False), (12 * MiB, 8 * MiB, True)])
def test_one_file_is_capped(tmp_path: Path, size: int, rate: int, multipart: bool) -> None:
    store = MemoryStore(BUCKET)
    data = os.urandom(size)
    (tmp_path / "f.bin").write_bytes(data)
    rec = Recorder()
    result, elapsed = timed(lambda: upload_file(str(tmp_path / "f.bin"), BUCKET, "k", store=store,
                                                options=capped(rate), sinks=[rec]))
    assert store.object(BUCKET, "k").data == data
    assert (store.calls["CreateMultipartUpload"] > 0) == multipart
    assert elapsed >= (size - burst_for(rate)) / rate, f"{size} bytes in {elapsed:.2f} s broke the cap of {rate} B/s"
    started = rec.snapshots[0]
    assert started.event is Event.STARTED and started.extra["max_bandwidth_bps"] == rate
    assert result.size == size


def test_a_directory_run_is_capped(tmp_path: Path) -> None:
    store = MemoryStore(BUCKET)
    root = tmp_path / "tree"
    root.mkdir()
    for n in range(40):
        (root / f"small-{n}.bin").write_bytes(os.urandom(64 * 1024))
    (root / "big.bin").write_bytes(os.urandom(6 * MiB))
    total, rate = 40 * 64 * 1024 + 6 * MiB, 8 * MiB
    rec = Recorder()
    _, elapsed = timed(lambda: upload_directory([str(root)], BUCKET, "p/", store=store, options=capped(rate),
                                                sinks=[rec]))
    assert store.object(BUCKET, "p/big.bin") is not None and store.object(BUCKET, "p/small-39.bin") is not None
    assert elapsed >= (total - burst_for(rate)) / rate
    started = rec.snapshots[0]
    assert started.event is Event.STARTED and started.extra["max_bandwidth_bps"] == rate


def test_without_a_cap_there_is_no_throttle_and_no_field() -> None:
    executors = Executors(MemoryStore(BUCKET), 2)
    try:
        assert executors.config.throttle is None and executors.max_bandwidth is None
    finally:
        executors.shutdown()


def test_the_started_event_has_no_cap_field_without_a_cap(tmp_path: Path) -> None:
    store = MemoryStore(BUCKET)
    (tmp_path / "f.bin").write_bytes(b"x" * 1000)
    rec = Recorder()
    upload_file(str(tmp_path / "f.bin"), BUCKET, "k", store=store, options=UploadOptions(), sinks=[rec])
    assert "max_bandwidth_bps" not in rec.snapshots[0].extra


def test_a_cap_on_a_cluster_run_goes_to_the_cluster_not_to_a_local_throttle() -> None:
    """This host's counters see none of a cluster's bytes: a cluster run's cap is the cluster executor's to split
    (no local throttle, no local counters made for it), and the started event still says the cap."""
    store = MemoryStore(BUCKET)
    executors = Executors(store, 2, cluster=object(), max_bandwidth=8 * MiB)  # type: ignore[arg-type]
    try:
        assert executors.config.throttle is None
        assert executors.max_bandwidth == 8 * MiB
        assert executors._parts_counter is None and executors._put_counter is None
    finally:
        executors.shutdown()


@pytest.mark.parametrize("rate", [0, -1, 1000])
def test_a_bad_cap_is_refused_before_the_store(tmp_path: Path, rate: int) -> None:
    store = MemoryStore(BUCKET)
    (tmp_path / "f.bin").write_bytes(b"x" * 1000)
    with pytest.raises(E.UsageError, match="--max-bandwidth"):
        upload_file(str(tmp_path / "f.bin"), BUCKET, "k", store=store, options=UploadOptions(max_bandwidth=rate))
    with pytest.raises(E.UsageError, match="--max-bandwidth"):
        upload_directory([str(tmp_path)], BUCKET, "p/", store=store, options=UploadOptions(max_bandwidth=rate))
    assert sum(store.calls.values()) == 0
