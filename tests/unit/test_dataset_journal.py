"""A directory run's journal: where it lives, what it remembers across runs, and what it refuses to trust."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from mpupload.dataset_journal import DATASET_JOURNAL_VERSION, DatasetJournal, FinishedFile, dataset_journal_path
from mpupload.errors import UsageError
from mpupload.journal import state_dir

IDENTITY: dict[str, Any] = {"sources": ["/data"], "endpoint": None, "bucket": "b", "prefix": "sets/"}


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "state"
    monkeypatch.setenv("MPUPLOAD_STATE_DIR", str(d))
    assert state_dir() == d  # made, 0700
    return d


def ff(rel: str, size: int = 10, mtime: int = 1_700_000_000_000_000_001, inode: int = 7, *,
       key: str | None = None) -> FinishedFile:
    return FinishedFile(rel, key if key is not None else "sets/" + rel, size, mtime, inode, '"etag"', "AAAAAA==")


class Warnings(list[str]):
    def __call__(self, message: str) -> None:
        self.append(message)


def open_journal(path: Path, *, resume: bool, identity: dict[str, Any] | None = None,
                 warn: Warnings | None = None) -> DatasetJournal:
    return DatasetJournal.open(path, identity or IDENTITY, resume=resume, warn=warn if warn is not None else Warnings())


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


# -- where ------------------------------------------------------------------------------------------------------------

def test_the_path_is_in_the_state_dir_named_by_sources_and_destination(state: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    p = dataset_journal_path(["data", "more"], "http://s3.local", "b", "sets/")
    assert p.parent == state and p.suffix == ".dataset" and len(p.stem) == 32
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert dataset_journal_path([str(tmp_path / "data"), "more"], "http://s3.local", "b", "sets/") == p
    others = {dataset_journal_path(["more", "data"], "http://s3.local", "b", "sets/"),
              dataset_journal_path(["data", "more"], None, "b", "sets/"),
              dataset_journal_path(["data", "more"], "http://s3.local", "c", "sets/"),
              dataset_journal_path(["data", "more"], "http://s3.local", "b", "other/")}
    assert p not in others and len(others) == 4


# -- across runs ------------------------------------------------------------------------------------------------------

def test_a_new_journal_is_0600_with_a_header_and_records_one_line_a_file(state: Path) -> None:
    path = dataset_journal_path(["/data"], None, "b", "sets/")
    j = open_journal(path, resume=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    j.record([ff("a.txt"), ff("b/c.txt", key="elsewhere/c.txt")])
    j.record([])
    j.sync()
    j.close()
    j.close()  # twice is harmless
    header, one, two, end = lines(path)
    assert end == b""
    h = json.loads(header)
    assert h["kind"] == "mpupload-dataset" and h["version"] == DATASET_JOURNAL_VERSION and h["identity"] == IDENTITY
    assert json.loads(one) == ["a.txt", 10, 1_700_000_000_000_000_001, 7, '"etag"', "AAAAAA=="]  # the key is implied
    assert json.loads(two)[-1] == "elsewhere/c.txt"  # not prefix + rel: kept
    assert b" " not in one  # compact


def test_resume_knows_what_finished_and_what_changed(state: Path) -> None:
    path = state / "j.dataset"
    j = open_journal(path, resume=False)
    j.record([ff("a.txt"), ff("b.txt", size=20)])
    j.record([ff("dir/ü c.txt", inode=9)])
    j.close()
    j = open_journal(path, resume=True)
    assert j.earlier == 3
    assert j.finished("a.txt", 10, 1_700_000_000_000_000_001, 7)
    assert j.finished("dir/ü c.txt", 10, 1_700_000_000_000_000_001, 9)
    # changed since: the size, the modification time, the inode (replaced by another file)
    assert not j.finished("b.txt", 21, 1_700_000_000_000_000_001, 7) and j.known("b.txt")
    assert not j.finished("a.txt", 10, 1_700_000_000_000_000_002, 7) and j.known("a.txt")
    assert not j.finished("a.txt", 10, 1_700_000_000_000_000_001, 8)
    assert not j.finished("new.txt", 10, 1_700_000_000_000_000_001, 7) and not j.known("new.txt")
    # this run appends; the next run sees both
    j.record([ff("b.txt", size=21), ff("new.txt")])
    j.close()
    j = open_journal(path, resume=True)
    assert j.earlier == 4  # distinct files: b.txt twice counts once
    assert j.finished("b.txt", 21, 1_700_000_000_000_000_001, 7) and j.finished("new.txt", 10,
                                                                                 1_700_000_000_000_000_001, 7)
    j.close()


def test_without_resume_an_old_journal_is_replaced(state: Path) -> None:
    path = state / "j.dataset"
    j = open_journal(path, resume=False)
    j.record([ff("a.txt")])
    j.close()
    old_inode = path.stat().st_ino
    j = open_journal(path, resume=False)
    assert j.earlier == 0 and not j.known("a.txt")
    j.close()
    assert len(lines(path)) == 2 and path.stat().st_ino != old_inode  # replaced (atomically), not truncated
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_resume_without_a_journal_starts_one_quietly(state: Path) -> None:
    warn = Warnings()
    j = open_journal(state / "none.dataset", resume=True, warn=warn)
    assert j.earlier == 0 and warn == []
    j.close()
    assert (state / "none.dataset").exists()


def test_a_torn_last_line_is_ignored_and_cut_off_before_appending(state: Path) -> None:
    path = state / "j.dataset"
    j = open_journal(path, resume=False)
    j.record([ff("a.txt"), ff("b.txt")])
    j.close()
    with open(path, "ab") as fh:  # killed mid-write
        fh.write(b'["c.txt",10,1700000000000000001,7,"\\"et')
    warn = Warnings()
    j = open_journal(path, resume=True, warn=warn)
    assert warn == [] and j.earlier == 2 and not j.known("c.txt")
    j.record([ff("d.txt")])
    j.close()
    assert not path.read_bytes().count(b'"\\"et["')
    warn = Warnings()
    j = open_journal(path, resume=True, warn=warn)
    assert warn == [] and j.earlier == 3 and j.finished("d.txt", 10, 1_700_000_000_000_000_001, 7)
    j.close()


def test_bad_lines_in_the_middle_are_reported_once_and_never_trusted(state: Path) -> None:
    path = state / "j.dataset"
    j = open_journal(path, resume=False)
    j.record([ff("a.txt")])
    j.close()
    with open(path, "ab") as fh:
        fh.write(b'["x.txt",10,1700000000000000001,7,"\\"e\n')  # torn by something, then more was appended
        fh.write(b"\x00\x00\x00garbage\n")
        fh.write(b'{"p":"y.txt"}\n')
        fh.write(b'["z.txt","10",1700000000000000001,7,null,null]\n')  # a size that is not a number
        fh.write(b'["w.txt",[1],1700000000000000001,7,null,null]\n')
        fh.write(b"null\n")
        fh.write(b"\n")
    j2 = open_journal(path, resume=True)
    j2.record([ff("b.txt")])
    j2.close()
    warn = Warnings()
    j = open_journal(path, resume=True, warn=warn)
    assert len(warn) == 1
    assert "6 lines" in warn[0] and "first: line 3" in warn[0] and str(path) in warn[0]
    assert j.finished("a.txt", 10, 1_700_000_000_000_000_001, 7) and j.finished("b.txt", 10,
                                                                                 1_700_000_000_000_000_001, 7)
    assert not j.known("x.txt") and not j.known("y.txt") and not j.known("w.txt")
    assert not j.finished("z.txt", 10, 1_700_000_000_000_000_001, 7)
    j.close()


@pytest.mark.parametrize(("header", "said"), [
    (json.dumps({"kind": "mpupload-dataset", "version": 1, "identity": {**IDENTITY, "prefix": "other/"}}),
     "belongs to other sources or another destination"),
    (json.dumps({"kind": "mpupload-dataset", "version": 99, "identity": IDENTITY}), "has version 99"),
    (json.dumps({"kind": "mpupload-journal", "version": 1}), "is not a directory run's journal"),
    ("{not json", "does not start with a valid header"),
])
def test_a_journal_of_another_identity_or_version_is_replaced_with_a_warning(state: Path, header: str,
                                                                            said: str) -> None:
    path = state / "j.dataset"
    path.write_text(header + '\n["a.txt",10,1700000000000000001,7,null,null]\n')
    warn = Warnings()
    j = open_journal(path, resume=True, warn=warn)
    assert len(warn) == 1 and said in warn[0] and "starting a new one" in warn[0]
    assert j.earlier == 0 and not j.known("a.txt")
    j.close()
    assert json.loads(lines(path)[0])["identity"] == IDENTITY and len(lines(path)) == 2


def test_a_journal_with_only_a_torn_header_is_replaced(state: Path) -> None:
    path = state / "j.dataset"
    path.write_bytes(b'{"kind":"mpupl')
    warn = Warnings()
    j = open_journal(path, resume=True, warn=warn)
    assert len(warn) == 1 and "no complete header" in warn[0]
    j.close()
    assert json.loads(lines(path)[0])["kind"] == "mpupload-dataset"


def test_two_runs_cannot_hold_the_same_journal(state: Path) -> None:
    path = state / "j.dataset"
    j = open_journal(path, resume=False)
    with pytest.raises(UsageError, match="another mpupload run is uploading these sources") as info:
        open_journal(path, resume=True)
    assert info.value.exit_code == 2
    j.close()
    open_journal(path, resume=True).close()  # free again once closed


def test_remove_deletes_the_journal_and_frees_the_lock(state: Path) -> None:
    path = state / "j.dataset"
    j = open_journal(path, resume=False)
    j.record([ff("a.txt")])
    j.remove()
    assert not path.exists()
    j = open_journal(path, resume=True)
    assert j.earlier == 0
    j.close()
    j.remove()  # after close, too
    assert not path.exists()


def test_ten_thousand_records_in_batches_of_fifty_take_well_under_a_second(state: Path) -> None:
    path = state / "j.dataset"
    j = open_journal(path, resume=False)
    batches = [[ff(f"train/{b:04d}/{i:03d}.jpg", size=i, inode=b * 100 + i) for i in range(50)] for b in range(200)]
    start = time.perf_counter()
    for batch in batches:
        j.record(batch)
    elapsed = time.perf_counter() - start
    j.close()
    assert elapsed < 0.5, f"{elapsed:.3f} s"
    assert len(lines(path)) == 10_002
    j = open_journal(path, resume=True)
    assert j.earlier == 10_000 and j.finished("train/0199/049.jpg", 49, 1_700_000_000_000_000_001, 19949)
    j.close()


def test_a_large_journal_is_read_across_read_blocks(state: Path) -> None:
    """Lines that straddle the reader's blocks (1 MiB) are read whole."""
    path = state / "j.dataset"
    j = open_journal(path, resume=False)
    long = "d" * 900 + "/"
    j.record([ff(f"{long}{i:05d}.bin", inode=i) for i in range(3000)])  # ~3 MiB
    j.close()
    assert path.stat().st_size > 2 * 1024 * 1024
    warn = Warnings()
    j = open_journal(path, resume=True, warn=warn)
    assert warn == [] and j.earlier == 3000
    assert all(j.finished(f"{long}{i:05d}.bin", 10, 1_700_000_000_000_000_001, i) for i in range(3000))
    j.close()

