"""A worker given a run of parts of one upload, on a store that signs each part's URL for its body (brokered),
hashes them first and has their URLs signed in one request (:func:`mpupload.engine.worker.sign_ahead`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from mpupload.checksums import Algorithm, b64, new_hasher
from mpupload.engine.worker import PartJob, PartTarget, part_digests, sign_ahead
from mpupload.plan import Part


class Flag:
    def __init__(self, cancelled: bool = False) -> None:
        self.cancelled = cancelled

    def is_set(self) -> bool:
        return self.cancelled


class SigningStore:
    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, list[Any]]] = []
        self.fail = fail

    def sign_ahead(self, upload_id: str, parts: list[Any]) -> None:
        self.calls.append((upload_id, list(parts)))
        if self.fail is not None:
            raise self.fail


def jobs_of(path: Path, sizes: list[int], *, algorithm: Algorithm | None = Algorithm.CRC32C, md5: bool = True,
            upload_id: str | None = "up-1") -> tuple[PartJob, ...]:
    target = PartTarget(str(path), "b", "k", upload_id, algorithm, md5)
    jobs, offset = [], 0
    for number, size in enumerate(sizes, start=1):
        jobs.append(PartJob(target, Part(number, offset, size)))
        offset += size
    return tuple(jobs)


def crc32c(data: bytes) -> str:
    hasher = new_hasher(Algorithm.CRC32C)
    hasher.update(data)
    return b64(hasher.digest())


def test_the_parts_are_hashed_once_and_signed_in_one_request(tmp_path: Path) -> None:
    data = os.urandom(3000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    jobs = jobs_of(path, [1000, 1000, 1000])
    store = SigningStore()
    digests = sign_ahead(store, jobs, Flag())  # type: ignore[arg-type]
    pieces = [data[0:1000], data[1000:2000], data[2000:3000]]
    assert digests == {n: (crc32c(p), hashlib.md5(p).digest()) for n, p in enumerate(pieces, start=1)}
    [(upload_id, signed)] = store.calls
    assert upload_id == "up-1"
    assert [(n, size, checksum.algorithm, checksum.value, md5) for n, size, checksum, md5 in signed] == [
        (n, 1000, Algorithm.CRC32C, crc32c(p), b64(hashlib.md5(p).digest())) for n, p in enumerate(pieces, start=1)]
    with open(path, "rb") as f:  # what a part's first attempt would have computed itself
        assert part_digests(f.fileno(), jobs[1], Flag()) == digests[2]  # type: ignore[arg-type]


def test_nothing_is_signed_ahead_when_it_cannot_help_or_goes_wrong(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(2000))
    two = jobs_of(path, [1000, 1000])
    assert sign_ahead(object(), two, Flag()) == {}  # type: ignore[arg-type] # a store that signs nothing
    store = SigningStore()
    assert sign_ahead(store, two[:1], Flag()) == {}  # type: ignore[arg-type] # one part: signed as it goes
    assert sign_ahead(store, jobs_of(path, [1000, 1000], upload_id=None), Flag()) == {}  # type: ignore[arg-type]
    assert sign_ahead(store, two, Flag(cancelled=True)) == {}  # type: ignore[arg-type]
    assert store.calls == []
    refused = SigningStore(fail=ConnectionError("the API server is gone"))
    assert sign_ahead(refused, two, Flag()) == {}  # type: ignore[arg-type] # each part signs (and fails) itself
    assert len(refused.calls) == 1
    path.unlink()
    assert sign_ahead(store, two, Flag()) == {}  # type: ignore[arg-type] # each part reports the missing file


def test_without_an_algorithm_or_md5_nothing_is_hashed_but_the_urls_are_signed(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(2000))
    store = SigningStore()
    digests = sign_ahead(store, jobs_of(path, [1000, 1000], algorithm=None, md5=False), Flag())  # type: ignore[arg-type]
    assert digests == {1: (None, None), 2: (None, None)}
    assert [signed for _, signed in store.calls] == [[(1, 1000, None, None), (2, 1000, None, None)]]
