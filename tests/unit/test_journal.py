"""The resume journal: where it lives, its name, the source fingerprint, atomic saves, corrupt input, the lock."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import multiprocessing
import os
import stat
import types
from pathlib import Path
from typing import Any

import pytest

from mpupload import journal as J
from mpupload.errors import UsageError
from mpupload.journal import (
    CorruptJournal,
    Journal,
    JournalLock,
    PartRecord,
    SourceFingerprint,
    fingerprint,
    journal_path,
    list_journals,
    load,
    set_aside,
)

#: how long a test waits for another process before it fails (never reached when things work)
DEADLINE = 60.0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _fp(path: str = "/data/big.bin", size: int = 3 * 8 * 1024 * 1024) -> SourceFingerprint:
    return SourceFingerprint(path, size, 1_700_000_000_123_456_789, 42, 7, "ab" * 32)


def _journal(directory: Path, **overrides: Any) -> Journal:
    kwargs: dict[str, Any] = dict(
        path=directory / "j.json", source=_fp(), endpoint="http://127.0.0.1:9000", bucket="bkt", key="a/b.bin",
        upload_id="upload-1", part_size=8 * 1024 * 1024, parts_total=3, checksum_algorithm="crc32c", md5=True,
    )
    kwargs.update(overrides)
    return Journal(**kwargs)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# -- state_dir ----------------------------------------------------------------------------------------------------


def test_state_dir_honours_mpupload_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "explicit" / "state"
    monkeypatch.setenv("MPUPLOAD_STATE_DIR", str(target))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert J.state_dir() == target
    assert target.is_dir() and _mode(target) == 0o700
    assert not (tmp_path / "xdg").exists()
    assert J.state_dir() == target  # a second call finds it


def test_state_dir_falls_back_to_xdg_state_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MPUPLOAD_STATE_DIR", "")  # empty means unset
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    path = J.state_dir()
    assert path == tmp_path / "xdg" / "mpupload"
    assert path.is_dir() and _mode(path) == 0o700


def test_state_dir_defaults_to_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MPUPLOAD_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = J.state_dir()
    assert path == tmp_path / ".local" / "state" / "mpupload"
    assert _mode(path) == 0o700


def test_journal_path_defaults_to_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MPUPLOAD_STATE_DIR", str(tmp_path / "st"))
    path = journal_path("/x", None, "b", "k")
    assert path.parent == tmp_path / "st" and path.suffix == ".json"


# -- journal_path -------------------------------------------------------------------------------------------------


def test_journal_path_is_stable_and_depends_on_every_part_of_the_identity(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    src = str(tmp_path / "file.bin")
    base = ("http://e:9000", "bucket", "key/x")
    p = journal_path(src, *base, directory=tmp_path)
    assert p == journal_path(src, *base, directory=tmp_path)
    assert p.parent == tmp_path and p.name.endswith(".json")
    # relative and absolute spellings of the same file: the same journal
    assert journal_path("file.bin", *base, directory=tmp_path) == p
    assert journal_path("./sub/../file.bin", *base, directory=tmp_path) == p
    others = {
        journal_path(str(tmp_path / "other.bin"), *base, directory=tmp_path),
        journal_path(src, "http://e:9001", "bucket", "key/x", directory=tmp_path),
        journal_path(src, None, "bucket", "key/x", directory=tmp_path),
        journal_path(src, "http://e:9000", "bucket2", "key/x", directory=tmp_path),
        journal_path(src, "http://e:9000", "bucket", "key/y", directory=tmp_path),
        # no ambiguity from concatenation
        journal_path(src, "http://e:9000", "bucketk", "ey/x", directory=tmp_path),
    }
    assert p not in others and len(others) == 6


# -- fingerprint ----------------------------------------------------------------------------------------------------


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src.bin"
    path.write_bytes(os.urandom(1024 * 1024 + 123))
    return path


def test_fingerprint_of_an_unchanged_file_has_no_differences(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(source.parent)
    a = fingerprint(source.name)
    b = fingerprint(str(source))
    assert a.path == str(source)  # absolute
    st = source.stat()
    assert (a.size, a.mtime_ns, a.inode, a.device) == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    assert len(a.sample_sha256) == 64
    assert a == b and a.differences(b) == []


def test_fingerprint_size_change(source: Path) -> None:
    before = fingerprint(str(source))
    with source.open("ab") as fh:
        fh.write(b"more")
    diffs = before.differences(fingerprint(str(source)))
    assert "size" in diffs


def test_fingerprint_mtime_change(source: Path) -> None:
    before = fingerprint(str(source))
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert before.differences(fingerprint(str(source))) == ["modification time"]


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_fingerprint_content_change_with_same_size_and_mtime(source: Path, where: str) -> None:
    before = fingerprint(str(source))
    st = source.stat()
    size = st.st_size
    offset = {"start": 10, "middle": size // 2, "end": size - 10}[where]
    with source.open("r+b") as fh:
        fh.seek(offset)
        old = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([old[0] ^ 0xFF]))
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = fingerprint(str(source))
    assert (after.size, after.mtime_ns) == (before.size, before.mtime_ns)
    assert before.differences(after) == ["content"]


def test_fingerprint_replaced_file_is_another_inode(source: Path) -> None:
    before = fingerprint(str(source))
    st = source.stat()
    copy = source.with_name("copy.bin")
    copy.write_bytes(source.read_bytes())
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(copy, source)
    assert before.differences(fingerprint(str(source))) == ["inode"]


def test_fingerprint_of_small_and_empty_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    small = tmp_path / "small"
    small.write_bytes(b"x")
    fe, fs = fingerprint(str(empty)), fingerprint(str(small))
    assert fe.size == 0 and fs.size == 1
    assert fe.sample_sha256 != fs.sample_sha256


def test_fingerprint_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fingerprint(str(tmp_path / "nope"))


# -- save / load ----------------------------------------------------------------------------------------------------


def test_journal_round_trips_with_parts(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    j.record(1, PartRecord(8 * 1024 * 1024, "0123abcd" * 4, "AAAAAA==", "md5-b64=="))
    j.record(3, PartRecord(5, "ffff" * 8))
    j.save()
    got = load(j.path)
    assert got is not None
    assert got == j  # every field, updated_at included (save sets it before writing)
    assert got.parts[1] == PartRecord(8 * 1024 * 1024, "0123abcd" * 4, "AAAAAA==", "md5-b64==")
    assert got.parts[3] == PartRecord(5, "ffff" * 8, None, None)
    assert set(got.parts) == {1, 3} and all(isinstance(n, int) for n in got.parts)
    assert got.bytes_done == 8 * 1024 * 1024 + 5
    raw = json.loads(j.path.read_bytes())
    assert raw["version"] == J.JOURNAL_VERSION and raw["kind"] == "mpupload-journal"
    assert set(raw["parts"]) == {"1", "3"}
    # the parts are written field by field: a field added to PartRecord must be written too
    assert set(raw["parts"]["1"]) == {f.name for f in dataclasses.fields(PartRecord)}


def test_journal_round_trips_without_endpoint_or_checksum(tmp_path: Path) -> None:
    j = _journal(tmp_path, endpoint=None, checksum_algorithm=None, md5=False)
    j.save()
    assert load(j.path) == j


def test_save_overwrites_and_later_save_wins(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    j.save()
    j.record(2, PartRecord(1, "e"))
    j.save()
    got = load(j.path)
    assert got is not None and set(got.parts) == {2}


def test_save_leaves_no_temp_file_and_the_file_is_private(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # a permissive umask must not make the journal world-readable
    try:
        j = _journal(tmp_path)
        j.save()
        j.record(1, PartRecord(1, "e"))
        j.save()
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.json"]
    assert _mode(j.path) & 0o077 == 0, oct(_mode(j.path))


def test_a_failed_save_keeps_the_previous_journal_and_leaves_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = _journal(tmp_path)
    j.record(1, PartRecord(1, "first"))
    j.save()
    before = j.path.read_bytes()

    def broken_replace(src: Any, dst: Any) -> None:
        assert Path(src).exists()  # the new content was written to a temporary file first
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(J.os, "replace", broken_replace)
    j.record(2, PartRecord(1, "second"))
    with pytest.raises(OSError, match="No space"):
        j.save()
    monkeypatch.undo()
    assert j.path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.json"]
    got = load(j.path)
    assert got is not None and set(got.parts) == {1}


def test_a_save_interrupted_while_writing_keeps_the_previous_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = _journal(tmp_path)
    j.save()
    before = j.path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise KeyboardInterrupt  # not even an Exception: the temp file must still go

    monkeypatch.setattr(J.os, "fsync", broken_fsync)
    with pytest.raises(KeyboardInterrupt):
        j.save()
    monkeypatch.undo()
    assert j.path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_load_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert load(tmp_path / "absent.json") is None


def test_load_of_an_unreadable_path_is_corrupt(tmp_path: Path) -> None:
    d = tmp_path / "dir.json"
    d.mkdir()
    with pytest.raises(CorruptJournal, match="cannot read"):
        load(d)


def test_remove(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    j.save()
    j.remove()
    assert not j.path.exists()
    j.remove()  # twice is fine


# -- corrupt input --------------------------------------------------------------------------------------------------


def _valid(tmp_path: Path) -> dict[str, Any]:
    j = _journal(tmp_path)
    j.record(1, PartRecord(8 * 1024 * 1024, "e1"))
    j.record(3, PartRecord(5, "e3"))
    return j.to_json()


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *head, last = dotted.split(".")
    for k in head:
        data = data[k]
    data[last] = value


def _del(data: dict[str, Any], dotted: str) -> None:
    *head, last = dotted.split(".")
    for k in head:
        data = data[k]
    del data[last]


@pytest.mark.parametrize("raw", [
    b"", b"{not json", b'{"version": 1, "kind": "mpupload-journal"', b"\xff\xfe\x00garbage", b"null", b"[]",
    b'"mpupload-journal"', b"42",
], ids=["empty", "not-json", "truncated", "binary", "null", "list", "string", "number"])
def test_not_a_journal_is_corrupt(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(raw)
    with pytest.raises(CorruptJournal):
        load(path)


def test_truncated_real_journal_is_corrupt(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    j.save()
    data = j.path.read_bytes()
    j.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptJournal, match="not valid JSON"):
        load(j.path)


CORRUPTIONS: list[tuple[str, Any, str]] = [
    # (change, value or DELETE, message fragment)
    ("kind", "something-else", "not an mpupload journal"),
    ("kind", None, "not an mpupload journal"),
    ("version", 2, "version 2"),
    ("version", "1", "version"),
    ("version", None, "version"),
    ("source", "DELETE", "malformed"),
    ("source.size", "DELETE", "malformed"),
    ("source.sample_sha256", "DELETE", "malformed"),
    ("source.mtime_ns", "soon", "malformed"),
    ("source", [1, 2], "malformed"),
    ("destination", "DELETE", "malformed"),
    ("destination.bucket", "DELETE", "malformed"),
    ("destination.key", "DELETE", "malformed"),
    ("destination", "s3://b/k", "malformed"),
    ("upload_id", "DELETE", "malformed"),
    ("part_size", "DELETE", "malformed"),
    ("part_size", "big", "malformed"),
    ("part_size", 0, "out of range"),
    ("part_size", -5, "out of range"),
    ("parts_total", "DELETE", "malformed"),
    ("parts_total", 0, "out of range"),
    ("parts_total", 10_001, "out of range"),
    ("parts_total", None, "malformed"),
    ("parts.1.size", "DELETE", "malformed"),
    ("parts.1.etag", "DELETE", "malformed"),
    ("parts.1", "not-a-record", "malformed"),
    ("parts.one", {"size": 1, "etag": "e"}, "malformed"),
    ("parts.0", {"size": 1, "etag": "e"}, "outside the plan"),
    ("parts.4", {"size": 1, "etag": "e"}, "outside the plan"),
    ("parts.-1", {"size": 1, "etag": "e"}, "outside the plan"),
    ("parts", "abc", "malformed"),
]


@pytest.mark.parametrize(("field", "value", "message"), CORRUPTIONS,
                         ids=[f"{f}={v!r}" for f, v, _ in CORRUPTIONS])
def test_corrupt_journals_raise(tmp_path: Path, field: str, value: Any, message: str) -> None:
    data = _valid(tmp_path)
    if value == "DELETE":
        _del(data, field)
    else:
        _set(data, field, value)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptJournal, match=message):
        load(path)


def test_part_count_at_the_s3_limit_is_accepted(tmp_path: Path) -> None:
    data = _valid(tmp_path)
    data["parts_total"] = 10_000
    data["parts"]["10000"] = {"size": 1, "etag": "e"}
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(data))
    got = load(path)
    assert got is not None and got.parts_total == 10_000 and 10_000 in got.parts


@pytest.mark.parametrize("literal", ["Infinity", "1e400"])
def test_infinite_numbers_are_corrupt(tmp_path: Path, literal: str) -> None:
    text = json.dumps(_valid(tmp_path)).replace('"part_size": 8388608', f'"part_size": {literal}')
    assert literal in text
    path = tmp_path / "inf.json"
    path.write_text(text)
    with pytest.raises(CorruptJournal):
        load(path)


# -- set_aside / list_journals ------------------------------------------------------------------------------------


def test_set_aside_renames_to_corrupt_with_a_time(tmp_path: Path) -> None:
    path = tmp_path / "abc.json"
    path.write_bytes(b"garbage")
    target = set_aside(path)
    assert not path.exists()
    assert target.parent == tmp_path
    assert target.name.startswith("abc.json.corrupt-")
    stamp = target.name.removeprefix("abc.json.corrupt-")
    _dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ")  # a UTC timestamp
    assert target.read_bytes() == b"garbage"
    assert list(list_journals(tmp_path)) == []  # set-aside files are not journals any more


def test_set_aside_of_a_missing_file_is_harmless(tmp_path: Path) -> None:
    target = set_aside(tmp_path / "gone.json")
    assert not target.exists()


def test_set_aside_twice_in_the_same_second_keeps_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = _dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=_dt.UTC)

    class FrozenDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return fixed

    monkeypatch.setattr(J, "_dt", types.SimpleNamespace(datetime=FrozenDatetime, UTC=_dt.UTC))
    path = tmp_path / "abc.json"
    path.write_bytes(b"first")
    first = set_aside(path)
    path.write_bytes(b"second")
    second = set_aside(path)
    assert first.read_bytes() == b"first"
    assert second.read_bytes() == b"second"


def test_list_journals_yields_journals_and_errors(tmp_path: Path) -> None:
    good1 = _journal(tmp_path, path=tmp_path / "a.json", key="k1")
    good2 = _journal(tmp_path, path=tmp_path / "c.json", key="k2")
    good1.save()
    good2.save()
    (tmp_path / "b.json").write_bytes(b"{broken")
    (tmp_path / "a.json.lock").write_bytes(b"123\n")  # not journals
    (tmp_path / "z.json.corrupt-20240101T000000Z").write_bytes(b"{")
    (tmp_path / "notes.txt").write_text("hi")
    items = list(list_journals(tmp_path))
    assert len(items) == 3
    journals = [i for i in items if isinstance(i, Journal)]
    errors = [i for i in items if isinstance(i, tuple)]
    assert sorted(j.key for j in journals) == ["k1", "k2"]
    assert len(errors) == 1
    bad_path, exc = errors[0]
    assert bad_path == tmp_path / "b.json" and isinstance(exc, CorruptJournal)


def test_list_journals_defaults_to_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPUPLOAD_STATE_DIR", str(tmp_path / "st"))
    assert list(list_journals()) == []
    _journal(tmp_path, path=J.state_dir() / "x.json").save()
    assert [j.key for j in list_journals() if isinstance(j, Journal)] == ["a/b.bin"]


# -- JournalLock ------------------------------------------------------------------------------------------------------


def test_lock_in_one_process(tmp_path: Path) -> None:
    jpath = tmp_path / "j.json"
    with JournalLock(jpath) as lock:
        assert lock.path == tmp_path / "j.json.lock"
        assert lock.path.read_text().strip() == str(os.getpid())
        assert _mode(lock.path) & 0o077 == 0
        with pytest.raises(UsageError, match=rf"\(pid {os.getpid()}\)") as info:
            JournalLock(jpath).acquire()
        assert info.value.exit_code == 2
        # another journal is independent
        JournalLock(tmp_path / "other.json").acquire().release()
    assert lock.path.read_text() == ""  # released: holder cleared
    JournalLock(jpath).acquire().release()
    lock.release()  # releasing twice is harmless


def _hold_lock(journal_file: str, ready: Any, release: Any) -> None:
    lock = JournalLock(Path(journal_file)).acquire()
    ready.set()
    release.wait(DEADLINE)
    lock.release()


def _start_holder(tmp_path: Path) -> tuple[Any, Any, Path]:
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    jpath = tmp_path / "j.json"
    proc = ctx.Process(target=_hold_lock, args=(str(jpath), ready, release), daemon=True)
    proc.start()
    if not ready.wait(DEADLINE):
        proc.kill()
        proc.join(DEADLINE)
        pytest.fail(f"the child did not take the lock within {DEADLINE}s (exit code {proc.exitcode})")
    return proc, release, jpath


def _assert_held_by(jpath: Path, pid: int) -> None:
    with pytest.raises(UsageError) as info:
        JournalLock(jpath).acquire()
    assert f"(pid {pid})" in str(info.value)
    assert "another mpupload run" in str(info.value)


def test_lock_held_by_another_process_until_it_exits(tmp_path: Path) -> None:
    proc, release, jpath = _start_holder(tmp_path)
    try:
        _assert_held_by(jpath, proc.pid)
        _assert_held_by(jpath, proc.pid)  # a failed attempt does not disturb the holder
    finally:
        release.set()
        proc.join(DEADLINE)
    assert proc.exitcode == 0
    with JournalLock(jpath) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())


def test_lock_of_a_killed_process_is_released_by_the_kernel(tmp_path: Path) -> None:
    proc, _release, jpath = _start_holder(tmp_path)
    try:
        _assert_held_by(jpath, proc.pid)
        proc.kill()  # SIGKILL: no release(), no cleanup
        proc.join(DEADLINE)
        assert proc.exitcode == -9
    finally:
        # no release.set(): the Event's condition would wait for the killed sleeper to acknowledge
        if proc.is_alive():
            proc.kill()
            proc.join(DEADLINE)
    # the dead holder's pid is still written in the file, but the lock is free
    assert JournalLock(jpath).path.read_text().strip() == str(proc.pid)
    with JournalLock(jpath) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
