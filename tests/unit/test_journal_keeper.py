"""The journal keeper's writes while parts finish: every second at most, fsynced every few seconds at most, and
always fsynced when it matters (the first write, the one before Complete, the one kept at the end)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpupload import fsutil
from mpupload.engine import journaling
from mpupload.engine.journaling import JOURNAL_FSYNC_S, JOURNAL_SAVE_S, JournalKeeper
from mpupload.engine.worker import PartResult
from mpupload.plan import plan_upload

MIB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = fsutil.os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(fsutil.os, "fsync", counting)
    return calls


def _keeper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock) -> JournalKeeper:
    monkeypatch.setattr(journaling.time, "monotonic", clock)
    source = tmp_path / "data.bin"
    source.write_bytes(b"x" * 1024)
    warnings: list[str] = []
    keeper = JournalKeeper(tmp_path / "j.json", str(source), "http://127.0.0.1:9", "bkt", "k", warn=warnings.append)
    keeper.start("upload-1", plan_upload(100 * 5 * MIB, part_size=5 * MIB), None, False, {}, None)
    return keeper


def _recorded(path: Path) -> set[int]:
    return {int(n) for n in json.loads(path.read_text())["parts"]}


def test_rewrites_while_parts_finish_are_fsynced_only_every_few_seconds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsyncs: list[int]) -> None:
    clock = Clock()
    keeper = _keeper(tmp_path, monkeypatch, clock)
    assert len(fsyncs) == 2  # the first write: the file, then the directory
    written: list[int] = []
    for number in range(1, 31):  # a part every half second for 15 s
        clock.now += 0.5
        keeper.part(PartResult(number, True, 5 * MIB, etag=f'"e{number}"'))
        written.append(len(fsyncs))
        # a killed process leaves what was last written: never more than JOURNAL_SAVE_S of parts behind
        assert max(_recorded(keeper.path), default=0) >= number - int(JOURNAL_SAVE_S / 0.5)
    durable_writes = (len(fsyncs) - 2) // 2
    assert durable_writes == int(15 / JOURNAL_FSYNC_S), durable_writes
    keeper.save()  # before Complete
    assert len(fsyncs) - written[-1] == 2
    assert _recorded(keeper.path) == set(range(1, 31))
    assert not list(tmp_path.glob("*.tmp"))


def test_the_journal_kept_at_the_end_is_fsynced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsyncs: list[int]) -> None:
    clock = Clock()
    keeper = _keeper(tmp_path, monkeypatch, clock)
    clock.now += 1.5
    keeper.part(PartResult(1, True, 5 * MIB, etag='"e1"'))
    before = len(fsyncs)
    assert before == 2  # that rewrite was not fsynced
    keeper.end(keep=True)
    assert len(fsyncs) == before + 2
    assert _recorded(keeper.path) == {1}
