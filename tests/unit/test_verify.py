"""What the store's answers prove about an object (pure), the guarded delete, and the short-read rule."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from mpupload import errors as E
from mpupload.checksums import Algorithm, b64, composite_checksum, multipart_etag, new_hasher
from mpupload.engine import reader
from mpupload.engine.verify import Expected, ObjectAccess, delete_if_unchanged, inspect, verify_object
from mpupload.storage import Boto3Store

MiB = 1024 * 1024


def _crc(data: bytes) -> str:
    h = new_hasher(Algorithm.CRC32C)
    h.update(data)
    return b64(h.digest())


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324


PARTS = [b"a" * 100, b"b" * 100, b"c" * 50]
EXPECTED = Expected(250, 100, multipart=True, algorithm=Algorithm.CRC32C,
                    part_checksums=tuple(_crc(p) for p in PARTS), part_md5s=tuple(_md5(p) for p in PARTS))


def _raw(data: bytes) -> bytes:
    h = new_hasher(Algorithm.CRC32C)
    h.update(data)
    return h.digest()


GOOD_COMPOSITE = composite_checksum(Algorithm.CRC32C, (_raw(p) for p in PARTS))
GOOD_ETAG = multipart_etag(bytes.fromhex(_md5(p)) for p in PARTS)


def test_expected_values() -> None:
    assert EXPECTED.parts == 3 and EXPECTED.ranges() == [(0, 100), (100, 100), (200, 50)]
    assert EXPECTED.checksum() == GOOD_COMPOSITE and GOOD_COMPOSITE.endswith("-3")
    assert EXPECTED.etag() == GOOD_ETAG
    single = Expected(5, 5, multipart=False, algorithm=Algorithm.CRC32C, part_checksums=(_crc(b"hello"),),
                      part_md5s=(_md5(b"hello"),))
    assert single.checksum() == _crc(b"hello") and single.etag() == _md5(b"hello") and single.ranges() == [(0, 5)]
    assert Expected(250, 100, multipart=True).checksum() is None and Expected(250, 100, multipart=True).etag() is None


@pytest.mark.parametrize(("head", "size_ok", "checksum", "etag"), [
    ({"ContentLength": 250, "ChecksumCRC32C": GOOD_COMPOSITE, "ETag": f'"{GOOD_ETAG}"'}, True, "match", "match"),
    ({"ContentLength": 249, "ChecksumCRC32C": GOOD_COMPOSITE, "ETag": f'"{GOOD_ETAG}"'}, False, "match", "match"),
    # a composite of the wrong part count, or a full-object value, is not comparable: absent, not a mismatch
    ({"ContentLength": 250, "ChecksumCRC32C": "AAAAAA==-2", "ETag": '"x-3"'}, True, "absent", "mismatch"),
    ({"ContentLength": 250, "ChecksumCRC32C": "AAAAAA==", "ETag": ""}, True, "absent", "absent"),
    ({"ContentLength": 250, "ChecksumCRC32C": "AAAAAA==-3", "ETag": '"0123-3"'}, True, "mismatch", "mismatch"),
], ids=["all-match", "size", "other-shapes", "full-object-checksum", "mismatch"])
def test_inspect(head: dict[str, Any], size_ok: bool, checksum: str, etag: str) -> None:
    ev = inspect(head, {}, EXPECTED)
    assert (ev.size_ok, ev.checksum, ev.etag) == (size_ok, checksum, etag)


def test_inspect_without_head_uses_the_uploads_answer_and_knows_no_size() -> None:
    ev = inspect(None, {"ChecksumCRC32C": GOOD_COMPOSITE, "ETag": f'"{GOOD_ETAG}"'}, EXPECTED)
    assert (ev.size_ok, ev.checksum, ev.etag) == (None, "match", "match")


class FakeClient:
    """HeadObject from a dict, DeleteObject recorded (a fake for the pure decision logic)."""

    def __init__(self, head: dict[str, Any] | Exception) -> None:
        self.head = head
        self.deleted: list[dict[str, Any]] = []

    def head_object(self, **kwargs: Any) -> dict[str, Any]:
        if isinstance(self.head, Exception):
            raise self.head
        return dict(self.head)

    def delete_object(self, **kwargs: Any) -> dict[str, Any]:
        self.deleted.append(kwargs)
        return {}


def _denied() -> ClientError:
    return ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadObject")


def test_guarded_delete_deletes_only_the_object_verified() -> None:
    client = FakeClient({"ETag": '"abc"'})
    assert delete_if_unchanged(ObjectAccess(Boto3Store.over_client(client), "b", "k"), "abc", None) is None
    assert client.deleted == [{"Bucket": "b", "Key": "k", "IfMatch": '"abc"'}]
    client = FakeClient({"ETag": '"abc"'})
    assert delete_if_unchanged(ObjectAccess(Boto3Store.over_client(client), "b", "k"), "abc", "v7") is None
    assert client.deleted == [{"Bucket": "b", "Key": "k", "VersionId": "v7"}]  # exactly that version


@pytest.mark.parametrize(("head", "why"), [
    ({"ETag": '"someone-elses"'}, "another object"),
    (_denied(), "denied"),
])
def test_guarded_delete_leaves_what_it_cannot_be_sure_of(head: Any, why: str) -> None:
    client = FakeClient(head)
    left = delete_if_unchanged(ObjectAccess(Boto3Store.over_client(client), "b", "k"), "abc", None)
    assert left is not None and why in left and client.deleted == []


def test_a_size_mismatch_deletes_and_fails() -> None:
    client = FakeClient({"ContentLength": 249, "ETag": f'"{GOOD_ETAG}"'})
    with pytest.raises(E.IntegrityError, match="249 bytes.*deleted"):
        verify_object(ObjectAccess(Boto3Store.over_client(client), "b", "k"), EXPECTED,
                      answer={"ETag": f'"{GOOD_ETAG}"'}, parts_checked="md5", validates_checksum=False)
    assert len(client.deleted) == 1


@pytest.mark.parametrize(("validates", "deleted"), [(True, True), (False, False)])
def test_a_composite_mismatch_is_evidence_only_where_the_store_validates(validates: bool, deleted: bool) -> None:
    head = {"ContentLength": 250, "ChecksumCRC32C": "AAAAAA==-3", "ETag": f'"{GOOD_ETAG}"'}
    client = FakeClient(head)
    access = ObjectAccess(Boto3Store.over_client(client), "b", "k")
    if deleted:
        with pytest.raises(E.IntegrityError):
            verify_object(access, EXPECTED, answer={}, parts_checked="crc32c", validates_checksum=True)
    else:
        verdict = verify_object(access, EXPECTED, answer={}, parts_checked="md5", validates_checksum=False)
        assert verdict.verified == "md5"
    assert bool(client.deleted) is deleted


def test_an_etag_of_another_form_never_deletes() -> None:
    client = FakeClient({"ContentLength": 250, "ETag": '"5f0e1b0d2a1c4d8e9f00112233445566-3"'})
    verdict = verify_object(ObjectAccess(Boto3Store.over_client(client), "b", "k"), EXPECTED, answer={},
                            parts_checked="md5", validates_checksum=False)
    assert verdict.verified == "md5" and client.deleted == [] and verdict.notes == []


def test_nothing_to_check_against_is_size_only_with_one_note() -> None:
    client = FakeClient({"ContentLength": 250, "ETag": '"random-3"'})
    verdict = verify_object(ObjectAccess(Boto3Store.over_client(client), "b", "k"), EXPECTED, answer={},
                            parts_checked=None, validates_checksum=False, size_only_reason="this store checks nothing")
    assert verdict.verified == "size-only" and len(verdict.notes) == 1
    assert verdict.notes[0].startswith("this store checks nothing: only the object's size was checked")


def test_identify_needs_more_than_the_size() -> None:
    """The object at the key of a gone upload: the same size is not this file; a matching checksum or ETag is."""
    same_size = FakeClient({"ContentLength": 250, "ETag": '"0123456789abcdef0123456789abcdef-3"'})
    assert verify_object(ObjectAccess(Boto3Store.over_client(same_size), "b", "k"), EXPECTED, answer=None) is None
    ours = FakeClient({"ContentLength": 250, "ETag": f'"{GOOD_ETAG}"'})
    verdict = verify_object(ObjectAccess(Boto3Store.over_client(ours), "b", "k"), EXPECTED, answer=None)
    assert verdict is not None and verdict.verified == "md5"
    denied = FakeClient(_denied())
    assert verify_object(ObjectAccess(Boto3Store.over_client(denied), "b", "k"), EXPECTED, answer=None) is None
    assert same_size.deleted == ours.deleted == denied.deleted == []  # identification never deletes


def test_short_reads_are_read_again_and_only_the_end_of_the_file_is_a_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FUSE and network filesystems may return fewer bytes than asked without being at the end of the file."""
    path = tmp_path / "f.bin"
    data = os.urandom(3 * MiB + 7)
    path.write_bytes(data)
    real = os.pread
    calls: list[int] = []

    def stingy(fd: int, n: int, offset: int) -> bytes:
        calls.append(n)
        return real(fd, min(n, 100_000), offset)

    monkeypatch.setattr(reader.os, "pread", stingy)
    fd = os.open(path, os.O_RDONLY)
    try:
        body = reader.PartReader(fd, 0, len(data))
        got = b"".join(iter(lambda: body.read(reader.CHUNK), b""))
        assert got == data and len(calls) > 30
        h = new_hasher(Algorithm.MD5)
        reader.digest_range(fd, 0, len(data), [h])
        assert h.digest() == hashlib.md5(data).digest()  # noqa: S324
        with pytest.raises(E.SourceChanged):
            reader.pread_exactly(fd, 10, len(data) - 5)  # the file ends before: that is a change
    finally:
        os.close(fd)
