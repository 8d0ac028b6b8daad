"""The engine's store-facing pieces run against the in-memory Store: the probe, the resume decision and the
verification of a written object, with S3's semantics and small listing pages."""

from __future__ import annotations

import hashlib

import pytest

from mpupload import errors as E
from mpupload.checksums import Algorithm, b64, new_hasher
from mpupload.engine.probe import clear_cache, probe_store
from mpupload.engine.resume import ResumeState, find_resume
from mpupload.engine.verify import Expected, ObjectAccess, verify_object
from mpupload.plan import plan_upload
from mpupload.storage.memory import MemoryStore
from mpupload.storage.port import Checksum, CompletedPart

MiB = 1024 * 1024


def _crc(data: bytes) -> str:
    h = new_hasher(Algorithm.CRC32C)
    h.update(data)
    return b64(h.digest())


def test_the_probe_finds_a_store_that_checks_checksums_and_leaves_nothing() -> None:
    clear_cache()
    store = MemoryStore("b")

    def abort(upload_id: str) -> bool:
        return store.abort_and_confirm("b", "k", upload_id).gone

    traits, left = probe_store(store, bucket="b", key="k", create_args={}, algorithm=Algorithm.CRC32C,
                               cache_key=object(), abort=abort, cancelled=lambda: False)
    assert traits.validates_checksum and left is None
    assert store.uploads("b") == {}
    assert store.calls["UploadPart"] == 1  # the wrong checksum was refused: nothing more to ask


@pytest.mark.parametrize(("habits", "validates", "etag_is_md5", "content_md5"), [
    ({"checks_checksums": False}, False, True, None),  # moto, Ceph RGW: ETags tell
    ({"checks_checksums": False, "md5_etags": False}, False, False, True),  # SSE-KMS: Content-MD5 tells
    ({"checks_checksums": False, "md5_etags": False, "checks_content_md5": False}, False, False, False),
])
def test_the_probe_tells_the_habits_of_a_store(habits: dict[str, bool], validates: bool, etag_is_md5: bool,
                                               content_md5: bool | None) -> None:
    clear_cache()
    store = MemoryStore("b", **habits)  # type: ignore[arg-type]
    traits, left = probe_store(store, bucket="b", key="k", create_args={}, algorithm=Algorithm.CRC32C,
                               cache_key=object(), abort=lambda u: store.abort_and_confirm("b", "k", u).gone,
                               cancelled=lambda: False)
    assert (traits.validates_checksum, traits.etag_is_md5, traits.validates_content_md5) == (
        validates, etag_is_md5, content_md5)
    assert left is None and store.uploads("b") == {}


def test_resume_without_a_journal_over_small_pages() -> None:
    store = MemoryStore("b", min_part_size=5 * MiB, parts_page_size=2, uploads_page_size=1)
    store.create_multipart_upload("b", "k", algorithm=Algorithm.CRC32C)  # an older upload of the key
    upload_id = store.create_multipart_upload("b", "k", algorithm=Algorithm.CRC32C)
    store.create_multipart_upload("b", "l")  # another key, listed after
    part = b"p" * (5 * MiB)
    for number in range(1, 6):
        store.upload_part("b", "k", upload_id, number, part, content_length=len(part),
                          checksum=Checksum(Algorithm.CRC32C, _crc(part)))
    size = 12 * 5 * MiB
    got = find_resume(store, "b", "k", size, plan_upload(size, part_size=8 * MiB, workers=2), None)
    assert isinstance(got, ResumeState)
    assert got.upload_id == upload_id and got.algorithm is Algorithm.CRC32C
    assert sorted(got.listed) == [1, 2, 3, 4, 5] and got.listed[3].checksum == _crc(part)
    assert got.plan.part_size == 5 * MiB  # inferred from the stored parts, not the plan's 8 MiB
    assert store.calls["ListParts"] == 3  # pages of 2


def test_a_written_object_is_verified_and_a_wrong_one_deleted() -> None:
    store = MemoryStore("b", min_part_size=4)
    parts = [b"abcd", b"ef"]
    upload_id = store.create_multipart_upload("b", "k", algorithm=Algorithm.CRC32C)
    done = []
    for number, data in enumerate(parts, 1):
        checksum = Checksum(Algorithm.CRC32C, _crc(data))
        answer = store.upload_part("b", "k", upload_id, number, data, content_length=len(data), checksum=checksum)
        done.append(CompletedPart(number, answer["ETag"].strip('"'), checksum))
    answer = store.complete_multipart_upload("b", "k", upload_id, done)
    access = ObjectAccess(store, "b", "k")
    md5s = tuple(hashlib.md5(p).hexdigest() for p in parts)  # noqa: S324
    expected = Expected(6, 4, multipart=True, algorithm=Algorithm.CRC32C,
                        part_checksums=tuple(_crc(p) for p in parts), part_md5s=md5s)
    verdict = verify_object(access, expected, answer=answer, parts_checked="crc32c", validates_checksum=True,
                             read_back_path=None)
    assert verdict.verified == "crc32c" and verdict.checksum is not None
    wrong = Expected(7, 4, multipart=True, algorithm=Algorithm.CRC32C)
    with pytest.raises(E.IntegrityError, match="was deleted"):
        verify_object(access, wrong, answer=answer, parts_checked="crc32c", validates_checksum=True)
    assert store.object("b", "k") is None
    assert store.calls["DeleteObject"] == 1
