"""The same small contract checks against the in-memory store and against Boto3Store on moto: what the engine
relies on from any Store (answers, listings, "gone" errors, abort-and-confirm, the newest upload of a key)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator

import pytest

from mpupload.checksums import Algorithm, b64, new_hasher
from mpupload.storage.boto3_store import Boto3Store
from mpupload.storage.config import StoreConfig
from mpupload.storage.errors import error_code, is_gone
from mpupload.storage.memory import MemoryStore
from mpupload.storage.port import AbortOutcome, Checksum, CompletedPart, Store
from tests.support.s3server import S3Server

MiB = 1024 * 1024
PART = 5 * MiB  # S3's minimum part size, which moto enforces too


def _crc(data: bytes) -> str:
    h = new_hasher(Algorithm.CRC32C)
    h.update(data)
    return b64(h.digest())


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324


@pytest.fixture(params=["memory", "moto"])
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Store, str]]:
    bucket = f"c-{uuid.uuid4().hex[:12]}"
    if request.param == "memory":
        yield MemoryStore(bucket, parts_page_size=2), bucket
        return
    server: S3Server = request.getfixturevalue("moto_server")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    s3 = Boto3Store(StoreConfig(endpoint_url=server.endpoint_url, region=server.region))
    s3.create_bucket(bucket)
    yield s3, bucket


def _upload_parts(store: Store, bucket: str, key: str, parts: list[bytes]) -> tuple[str, list[CompletedPart]]:
    upload_id = store.create_multipart_upload(bucket, key, algorithm=Algorithm.CRC32C,
                                              object_args={"ContentType": "application/octet-stream"})
    done = []
    for number, data in enumerate(parts, 1):
        checksum = Checksum(Algorithm.CRC32C, _crc(data))
        answer = store.upload_part(bucket, key, upload_id, number, data, content_length=len(data), checksum=checksum)
        assert str(answer["ETag"]).strip('"') == _md5(data)
        done.append(CompletedPart(number, _md5(data), checksum))
    return upload_id, done


def test_multipart_round_trip(store: tuple[Store, str]) -> None:
    s3, bucket = store
    parts = [os.urandom(PART), os.urandom(PART), b"tail"]
    upload_id, done = _upload_parts(s3, bucket, "k", parts)
    listing = s3.list_parts(bucket, "k", upload_id, algorithm=Algorithm.CRC32C)
    assert listing is not None
    assert [(p.number, p.size, p.etag) for p in listing.parts.values()] == [
        (n, len(d), _md5(d)) for n, d in enumerate(parts, 1)]
    page = s3.list_parts_page(bucket, "k", upload_id, max_parts=1)
    assert len(page.parts) == 1 and page.truncated and page.next_marker == 1
    assert not s3.upload_gone(bucket, "k", upload_id)
    answer = s3.complete_multipart_upload(bucket, "k", upload_id, done)
    etag = hashlib.md5(b"".join(bytes.fromhex(_md5(d)) for d in parts)).hexdigest() + "-3"  # noqa: S324
    assert str(answer["ETag"]).strip('"') == etag
    head = s3.head_object(bucket, "k", checksum_mode=True)
    assert int(head["ContentLength"]) == sum(map(len, parts)) and str(head["ETag"]).strip('"') == etag
    body = s3.get_object(bucket, "k", byte_range=(PART - 2, PART + 1))
    try:
        assert body.read() == parts[0][-2:] + parts[1][:2]
    finally:
        body.close()
    assert s3.upload_gone(bucket, "k", upload_id)
    assert s3.list_parts(bucket, "k", upload_id) is None


def test_abort_and_confirm_and_gone_errors(store: tuple[Store, str]) -> None:
    s3, bucket = store
    upload_id, _ = _upload_parts(s3, bucket, "k", [b"x" * 10])
    assert s3.abort_and_confirm(bucket, "k", upload_id) is AbortOutcome.ABORTED
    assert s3.abort_and_confirm(bucket, "k", upload_id).gone
    with pytest.raises(Exception) as info:  # noqa: PT011 - the adapter's own error type
        s3.list_parts_page(bucket, "k", upload_id, max_parts=1)
    assert is_gone(info.value)
    with pytest.raises(Exception) as info:  # noqa: PT011
        s3.head_object(bucket, "missing")
    assert error_code(info.value) == "404"
    with pytest.raises(Exception) as info:  # noqa: PT011
        s3.get_object(bucket, "missing")
    assert error_code(info.value) == "NoSuchKey"
    with pytest.raises(Exception) as info:  # noqa: PT011
        s3.head_bucket(f"{bucket}-missing")
    assert error_code(info.value) == "404"
    with pytest.raises(Exception) as info:  # noqa: PT011
        s3.lifecycle_rules(bucket)
    assert error_code(info.value) == "NoSuchLifecycleConfiguration"


def test_uploads_are_listed_and_the_newest_is_found(store: tuple[Store, str]) -> None:
    s3, bucket = store
    ids = [s3.create_multipart_upload(bucket, key) for key in ("a/1", "k", "k", "kk")]
    listed = [(u.key, u.upload_id) for u in s3.list_uploads(bucket, "", max_pages=10)]
    assert sorted(listed) == sorted(zip(("a/1", "k", "k", "kk"), ids))
    assert [u.key for u in s3.list_uploads(bucket, "a/", max_pages=10)] == ["a/1"]
    newest = s3.find_upload(bucket, "k", max_pages=10)
    assert newest is not None and newest.key == "k" and newest.upload_id in ids[1:3]
    for key, upload_id in zip(("a/1", "k", "k", "kk"), ids):
        s3.abort_multipart_upload(bucket, key, upload_id)
    assert s3.find_upload(bucket, "k", max_pages=10) is None


def test_put_head_delete(store: tuple[Store, str]) -> None:
    s3, bucket = store
    data = b"small object"
    answer = s3.put_object(bucket, "o", data, content_length=len(data),
                           checksum=Checksum(Algorithm.CRC32C, _crc(data)),
                           content_md5=b64(hashlib.md5(data).digest()))  # noqa: S324
    assert str(answer["ETag"]).strip('"') == _md5(data)
    head = s3.head_object(bucket, "o", checksum_mode=True)
    assert int(head["ContentLength"]) == len(data)
    assert head.get("ChecksumCRC32C") in (None, _crc(data))  # moto keeps no checksum sent as a bare header
    s3.delete_object(bucket, "o")
    with pytest.raises(Exception) as info:  # noqa: PT011
        s3.head_object(bucket, "o")
    assert error_code(info.value) == "404"


def test_objects_are_listed_by_prefix_page_by_page(store: tuple[Store, str]) -> None:
    s3, bucket = store
    if isinstance(s3, MemoryStore):
        s3.objects_page_size = 2  # several pages
    names = ["p/a", "p/b", "p/c/d", "p/e f", "q/x"]
    for name in names:
        data = name.encode()
        s3.put_object(bucket, name, data, content_length=len(data))
    listed = list(s3.list_objects(bucket, "p/"))
    assert [o.key for o in listed] == ["p/a", "p/b", "p/c/d", "p/e f"]
    assert [o.size for o in listed] == [3, 3, 5, 5]
    assert all(o.etag.strip('"') == _md5(o.key.encode()) for o in listed)
    assert list(s3.list_objects(bucket, "none/")) == []
