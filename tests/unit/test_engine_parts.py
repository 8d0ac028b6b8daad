"""The shared counter, the cancel flag, the part body reader and its rollback (pure, in-process)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from mpupload.checksums import Algorithm, new_hasher
from mpupload.engine.counter import ByteCounter, CancelFlag
from mpupload.engine.reader import CHUNK, PartReader, digest_range
from mpupload.errors import Cancelled, SourceChanged

KiB = 1024


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[int, bytes]:
    data = os.urandom(3 * CHUNK + 12345)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


def test_counter_slots_are_independent_and_signed() -> None:
    c = ByteCounter(3)
    c.add(0, 10)
    c.add(2, 5)
    c.add(2, -3)
    assert (c.get(0), c.get(1), c.get(2), c.total()) == (10, 0, 2, 12)
    c.set(0, 4)
    assert c.total() == 6
    c.add(1, 2**40)
    assert c.total() == 2**40 + 6  # 64-bit slots: no overflow at 1 TiB


def _bump(counter: ByteCounter, slot: int, n: int) -> None:
    for _ in range(n):
        counter.add(slot, 1)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_counter_is_shared_with_worker_processes(method: str) -> None:
    ctx = multiprocessing.get_context(method)
    c = ByteCounter(2)
    procs = [ctx.Process(target=_bump, args=(c, slot, 1000)) for slot in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert c.total() == 2000 and c.get(0) == c.get(1) == 1000


def test_cancel_flag() -> None:
    f = CancelFlag()
    assert not f.is_set()
    f.set()
    assert f.is_set()


def test_reader_counts_what_is_read_and_returns_the_range(data_file: tuple[int, bytes]) -> None:
    fd, data = data_file
    c = ByteCounter(2)
    r = PartReader(fd, 100, 2 * CHUNK + 7, counter=c, slot=1)
    out = b""
    while chunk := r.read(8 * KiB):  # asked for 8 KiB, gets up to CHUNK
        assert len(chunk) <= CHUNK
        out += chunk
        assert c.get(1) == len(out) == r.counted == r.tell()
    assert out == data[100:100 + 2 * CHUNK + 7]
    assert len(r) == 2 * CHUNK + 7
    assert c.get(0) == 0


def test_rewind_takes_back_what_was_counted(data_file: tuple[int, bytes]) -> None:
    fd, data = data_file
    c = ByteCounter(1)
    r = PartReader(fd, 0, 3 * CHUNK, counter=c)
    r.read(CHUNK)
    r.read(CHUNK)
    assert c.total() == 2 * CHUNK
    r.seek(0)  # botocore rewinds before a retry
    assert c.total() == 0 and r.counted == 0
    assert r.read(CHUNK) == data[:CHUNK]
    assert c.total() == CHUNK
    r.rollback()  # the attempt failed
    assert c.total() == 0
    r.rollback()
    assert c.total() == 0


def test_seek_forward_does_not_count(data_file: tuple[int, bytes]) -> None:
    fd, _ = data_file
    c = ByteCounter(1)
    r = PartReader(fd, 0, 3 * CHUNK, counter=c)
    assert r.seek(0, os.SEEK_END) == 3 * CHUNK
    assert c.total() == 0 and r.read() == b""
    assert r.seek(10, os.SEEK_SET) == 10 and r.seek(5, os.SEEK_CUR) == 15


def test_reader_stops_between_chunks_when_cancelled(data_file: tuple[int, bytes]) -> None:
    fd, _ = data_file
    c, flag = ByteCounter(1), CancelFlag()
    r = PartReader(fd, 0, 3 * CHUNK, counter=c, cancel=flag)
    r.read(1)
    flag.set()
    with pytest.raises(Cancelled):
        r.read(1)
    assert c.total() == CHUNK  # the caller rolls back; the reader never counts past what it handed out


def test_short_read_is_a_changed_source(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 100)
    fd = os.open(p, os.O_RDONLY)
    try:
        r = PartReader(fd, 50, 100)
        with pytest.raises(SourceChanged):
            r.read()
        with pytest.raises(SourceChanged):
            digest_range(fd, 0, 200, [new_hasher(Algorithm.MD5)])
    finally:
        os.close(fd)


def test_digest_range_is_not_progress(data_file: tuple[int, bytes]) -> None:
    import hashlib

    fd, data = data_file
    h = new_hasher(Algorithm.MD5)
    digest_range(fd, 10, 2 * CHUNK + 3, [h])
    assert h.digest() == hashlib.md5(data[10:10 + 2 * CHUNK + 3]).digest()
    flag = CancelFlag()
    flag.set()
    with pytest.raises(Cancelled):
        digest_range(fd, 0, 10, [new_hasher(Algorithm.MD5)], cancel=flag)


def test_a_whole_objects_fingerprint_compares_the_inode_unless_it_is_minus_one(tmp_path: Path) -> None:
    """A cluster worker reads on another host: there the inode of the same file may differ, so the coordinator
    sends -1 and only size and mtime are compared; a local run compares the inode too."""
    import os

    from mpupload.engine.worker import PartTarget, _check_unchanged

    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    st = os.stat(path)

    def check(fingerprint: tuple[int, int, int]) -> None:
        target = PartTarget(str(path), "b", "k", None, None, False, fingerprint=fingerprint)
        fd = os.open(path, os.O_RDONLY)
        try:
            _check_unchanged(fd, target)
        finally:
            os.close(fd)

    check((st.st_size, st.st_mtime_ns, st.st_ino))
    check((st.st_size, st.st_mtime_ns, -1))
    with pytest.raises(SourceChanged):
        check((st.st_size, st.st_mtime_ns, st.st_ino + 1))
    with pytest.raises(SourceChanged):
        check((st.st_size, st.st_mtime_ns + 1, -1))
    with pytest.raises(SourceChanged):
        check((st.st_size + 1, st.st_mtime_ns, -1))
