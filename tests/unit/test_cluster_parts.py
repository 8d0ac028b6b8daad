"""The pure parts of a cluster run: the coordinator's byte ledger, the workers' counters and cancel flag, and the
source digests every worker compares (a real tree on disk)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpupload.engine.dask_executor import ByteLedger
from mpupload.engine.dask_worker import PolledFlag, TaskCounter
from mpupload.engine.executor import WorkerLost
from mpupload.engine.reader import PartReader
from mpupload.errors import Cancelled
from mpupload.source_check import SAMPLE_BYTES, FileSample, ListingDigest, TreeListing, sample_offsets
from mpupload.tree import FilterRule, Filters, TreeProblem, walk

MiB = 1024 * 1024


def test_the_ledger_sums_the_current_executions_and_the_results() -> None:
    ledger = ByteLedger()
    ledger.begin("a", 100)
    ledger.begin("b", 100)
    ledger.report("a", "n1", "w1", 40)
    ledger.report("b", "n2", "w2", 10)
    assert ledger.total() == 50
    ledger.report("a", "n1", "w1", 20)  # the worker retried: its count fell
    assert ledger.total() == 30
    ledger.end("a", 100)  # the result is the truth
    assert ledger.total() == 110
    ledger.report("a", "n1", "w1", 70)  # a late report of a finished task changes nothing
    assert ledger.total() == 110


def test_a_count_never_exceeds_its_tasks_length() -> None:
    ledger = ByteLedger()
    ledger.begin("a", 100)
    ledger.report("a", "n1", "w1", 10_000)
    assert ledger.total() == 100
    ledger.end("a", 10_000)
    assert ledger.total() == 100
    ledger.report("x", "n9", "w1", 5)  # a task this run never submitted
    assert ledger.total() == 100


def test_a_worker_that_left_takes_its_bytes_in_flight_with_it() -> None:
    ledger = ByteLedger()
    ledger.begin("a", 100)
    ledger.begin("b", 100)
    ledger.report("a", "n1", "w1", 60)
    ledger.report("b", "n2", "w2", 30)
    assert ledger.worker_left("w1") == 1
    assert ledger.total() == 30
    ledger.report("a", "n1", "w1", 80)  # its last report, late: void
    assert ledger.total() == 30
    ledger.report("a", "n3", "w2", 5)  # Dask runs it again elsewhere
    assert ledger.total() == 35


def test_a_new_execution_voids_the_earlier_one() -> None:
    ledger = ByteLedger()
    ledger.begin("a", 100)
    ledger.report("a", "n1", "w1", 90)
    ledger.report("a", "n2", "w2", 10)  # rescheduled before the departure was seen
    assert ledger.total() == 10
    ledger.report("a", "n1", "w1", 95)  # the dead execution's report, arriving late
    assert ledger.total() == 10
    ledger.end("a", 0)  # failed
    assert ledger.total() == 0


class _Event:
    def __init__(self) -> None:
        self.value = False
        self.calls = 0

    def is_set(self) -> bool:
        self.calls += 1
        return self.value


def test_the_polled_flag_is_a_local_bool_refreshed_from_the_event_and_stays_set() -> None:
    event = _Event()
    flag = PolledFlag(event)
    assert not flag.is_set() and event.calls == 0  # reading it asks nobody
    flag.refresh()
    assert not flag.is_set()
    event.value = True
    assert not flag.is_set()
    flag.refresh()
    assert flag.is_set()
    event.value = False
    flag.refresh()
    flag.clear()
    assert flag.is_set() and event.calls == 2  # once set, never asked again


def test_the_body_reader_stops_on_the_polled_flag_and_counts_in_the_task_counter(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(3 * MiB))
    event = _Event()
    flag = PolledFlag(event)
    counter = TaskCounter()
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = PartReader(fd, 0, 3 * MiB, counter=counter, slot=0, cancel=flag)  # type: ignore[arg-type]
        assert len(reader.read(MiB)) == MiB
        assert counter.value == MiB
        event.value = True
        flag.refresh()
        with pytest.raises(Cancelled):
            reader.read(MiB)
        reader.rollback()
        assert counter.value == 0
    finally:
        os.close(fd)


def test_a_file_sample_sees_a_change_anywhere_it_samples_and_in_the_size(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = bytearray(os.urandom(4 * MiB))
    path.write_bytes(data)
    first = FileSample(str(path)).digest()
    assert first.startswith(f"{4 * MiB}:")
    for offset in sample_offsets(len(data)):
        changed = bytearray(data)
        changed[offset + SAMPLE_BYTES // 2] ^= 1
        path.write_bytes(changed)
        assert FileSample(str(path)).digest() != first
    path.write_bytes(data + b"x")
    assert FileSample(str(path)).digest() != first
    path.write_bytes(data)
    assert FileSample(str(path)).digest() == first
    small = tmp_path / "small"
    small.write_bytes(b"abc")
    assert FileSample(str(small)).digest() != FileSample(str(tmp_path / "f")).digest()
    with pytest.raises(OSError):
        FileSample(str(tmp_path / "missing")).digest()


def test_a_tree_listing_equals_the_digest_the_coordinator_builds_during_its_walk(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "a" / "b").mkdir(parents=True)
    for rel in ("x.bin", "a/y.txt", "a/b/z.txt", "a/b/skip.tmp"):
        (tree / rel).write_bytes(rel.encode() * 10)
    rules = (FilterRule(False, "*.tmp"),)
    listing = ListingDigest()
    for entry in walk([str(tree)], Filters(rules)):
        if isinstance(entry, TreeProblem):
            listing.problem(entry.rel)
        else:
            listing.add(entry.rel, entry.size, entry.mtime_ns)
    probe = TreeListing((str(tree),), tuple((r.include, r.pattern) for r in rules))
    assert probe.digest() == listing.hexdigest()
    assert listing.files == 3
    assert TreeListing((str(tree),)).digest() != listing.hexdigest()  # the filters count
    (tree / "a" / "y.txt").write_bytes(b"other")
    assert probe.digest() != listing.hexdigest()


def test_a_lost_cluster_job_is_told_as_what_happened_not_as_a_local_worker_death() -> None:
    """A local worker process that died has a slot, a pid and an exit code; a cluster's lost job has none of them,
    and its line says what the cluster did instead of 'worker -1 (pid None)'."""
    local = WorkerLost(None, 2, 4242, -9)
    assert local.describe() == "worker 2 (pid 4242) died with exit code -9; replacing it"
    assert "exit code -9" in local.too_many(5) and "worker processes died 5 times" in local.too_many(5)
    lost = WorkerLost(None, -1, None, None, reason="the cluster gave up on a task whose workers kept dying")
    assert lost.describe() == "the cluster gave up on a task whose workers kept dying; sending its job again"
    assert "None" not in lost.describe() + lost.too_many(7)
    assert lost.too_many(7).startswith("the cluster lost jobs 7 times (last: the cluster gave up")
