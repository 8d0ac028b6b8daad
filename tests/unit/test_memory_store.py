"""The in-memory store: S3's semantics, pagination through the shared paginators, faults, hooks and counters,
and its errors read by the same classification as botocore's."""

from __future__ import annotations

import hashlib
import pickle
from typing import Any

import pytest

from mpupload import errors as E
from mpupload.checksums import Algorithm, b64, composite_checksum, new_hasher, unb64
from mpupload.storage.errors import StoreError, classify, error_code, http_status, is_gone, is_retryable
from mpupload.storage.memory import MemoryStore
from mpupload.storage.port import AbortOutcome, Checksum, CompletedPart, ListingStuck

MIN = 16  # the lowered minimum part size of these tests


def _crc(data: bytes, algorithm: Algorithm = Algorithm.CRC32C) -> str:
    h = new_hasher(algorithm)
    h.update(data)
    return b64(h.digest())


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore("b", min_part_size=MIN, parts_page_size=2, uploads_page_size=2)


def _upload(store: MemoryStore, key: str = "k", parts: tuple[bytes, ...] = (b"a" * MIN, b"b" * MIN, b"c"),
            algorithm: Algorithm | None = Algorithm.CRC32C) -> tuple[str, list[CompletedPart]]:
    upload_id = store.create_multipart_upload("b", key, algorithm=algorithm)
    done = []
    for number, data in enumerate(parts, 1):
        checksum = Checksum(algorithm, _crc(data, algorithm)) if algorithm else None
        answer = store.upload_part("b", key, upload_id, number, data, content_length=len(data), checksum=checksum)
        assert answer["ETag"] == f'"{_md5(data)}"'
        done.append(CompletedPart(number, answer["ETag"].strip('"'), checksum))
    return upload_id, done


def test_multipart_upload_etag_and_composite_checksum(store: MemoryStore) -> None:
    parts = (b"a" * MIN, b"b" * MIN, b"c")
    upload_id, done = _upload(store, parts=parts)
    answer = store.complete_multipart_upload("b", "k", upload_id, done)
    etag = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-3"  # noqa: S324
    composite = composite_checksum(Algorithm.CRC32C, (unb64(_crc(p)) for p in parts))
    assert answer["ETag"] == f'"{etag}"' and answer["ChecksumCRC32C"] == composite
    head = store.head_object("b", "k", checksum_mode=True)
    assert head["ContentLength"] == 2 * MIN + 1 and head["ETag"] == f'"{etag}"'
    assert head["ChecksumCRC32C"] == composite and head["ChecksumType"] == "COMPOSITE"
    assert "ChecksumCRC32C" not in store.head_object("b", "k")  # only with ChecksumMode=ENABLED, as AWS
    body = store.get_object("b", "k", byte_range=(MIN - 1, MIN))
    assert body.read() == b"ab"
    # the upload is gone once completed
    with pytest.raises(StoreError) as info:
        store.complete_multipart_upload("b", "k", upload_id, done)
    assert error_code(info.value) == "NoSuchUpload" and is_gone(info.value)
    assert store.list_parts("b", "k", upload_id) is None


def test_put_object_full_object_checksum_and_conditions(store: MemoryStore) -> None:
    data = b"hello"
    answer = store.put_object("b", "k", data, content_length=5, checksum=Checksum(Algorithm.SHA256,
                                                                                 _crc(data, Algorithm.SHA256)),
                              content_md5=b64(hashlib.md5(data).digest()))  # noqa: S324
    assert answer["ETag"] == f'"{_md5(data)}"'
    head = store.head_object("b", "k", checksum_mode=True)
    assert head["ChecksumSHA256"] == _crc(data, Algorithm.SHA256) and head["ChecksumType"] == "FULL_OBJECT"
    with pytest.raises(StoreError) as info:
        store.put_object("b", "k", b"x", content_length=1, if_none_match=True)
    assert isinstance(classify(info.value, bucket="b", key="k"), E.ObjectExists)
    with pytest.raises(StoreError, match="PreconditionFailed"):
        store.delete_object("b", "k", if_match="0" * 32)
    store.delete_object("b", "k", if_match=_md5(data))
    with pytest.raises(StoreError) as info:
        store.head_object("b", "k")
    assert error_code(info.value) == "404" and http_status(info.value) == 404
    with pytest.raises(StoreError, match="NoSuchKey"):
        store.get_object("b", "k")


@pytest.mark.parametrize("algorithm", [Algorithm.CRC32C, Algorithm.CRC32, Algorithm.SHA256])
def test_a_wrong_checksum_is_a_bad_digest(store: MemoryStore, algorithm: Algorithm) -> None:
    upload_id = store.create_multipart_upload("b", "k", algorithm=algorithm)
    with pytest.raises(StoreError) as info:
        store.upload_part("b", "k", upload_id, 1, b"data", content_length=4,
                          checksum=Checksum(algorithm, _crc(b"other", algorithm)))
    assert error_code(info.value) == "BadDigest" and http_status(info.value) == 400
    assert is_retryable(info.value)  # a body damaged in transit: sending it again can fix it
    with pytest.raises(StoreError, match="BadDigest"):
        store.upload_part("b", "k", upload_id, 1, b"data", content_length=4,
                          content_md5=b64(hashlib.md5(b"other").digest()))  # noqa: S324
    assert store.uploads("b") == {upload_id: []}


def test_complete_checks_sizes_order_etags_and_checksums(store: MemoryStore) -> None:
    upload_id, done = _upload(store, parts=(b"a" * (MIN - 1), b"b"))
    with pytest.raises(StoreError, match="EntityTooSmall"):
        store.complete_multipart_upload("b", "k", upload_id, done)
    upload_id, done = _upload(store)
    with pytest.raises(StoreError, match="InvalidPartOrder"):
        store.complete_multipart_upload("b", "k", upload_id, list(reversed(done)))
    with pytest.raises(StoreError, match="InvalidPart"):
        store.complete_multipart_upload("b", "k", upload_id, [CompletedPart(1, "0" * 32, done[0].checksum)])
    with pytest.raises(StoreError, match="must include the checksum"):
        store.complete_multipart_upload("b", "k", upload_id, [CompletedPart(p.number, p.etag) for p in done])
    # a single last part may be small, and the real minimum is S3's 5 MiB
    assert MemoryStore("b").min_part_size == 5 * 1024 * 1024
    store.complete_multipart_upload("b", "k", upload_id, done)


def test_abort_then_the_upload_is_gone(store: MemoryStore) -> None:
    upload_id, _ = _upload(store)
    assert store.abort_and_confirm("b", "k", upload_id) is AbortOutcome.ABORTED
    assert store.abort_and_confirm("b", "k", upload_id) is AbortOutcome.ALREADY_GONE
    assert store.upload_gone("b", "k", upload_id)
    with pytest.raises(StoreError) as info:
        store.upload_part("b", "k", upload_id, 4, b"x", content_length=1)
    err = classify(info.value, bucket="b", key="k", upload_id=upload_id)
    assert isinstance(err, E.UploadGone) and not is_retryable(info.value)


def test_an_abort_that_fails_is_raised_and_can_be_repeated(store: MemoryStore) -> None:
    upload_id, _ = _upload(store)
    store.fail("AbortMultipartUpload", code="InternalError", status=500)
    with pytest.raises(StoreError):  # an abort that fails for another reason than "gone" is the caller's error
        store.abort_and_confirm("b", "k", upload_id)
    assert store.abort_and_confirm("b", "k", upload_id) is AbortOutcome.ABORTED
    assert store.calls["AbortMultipartUpload"] == 2


def test_abort_not_confirmed_when_parts_stay_listed() -> None:
    store = MemoryStore("b")
    upload_id, _ = _upload(store, parts=(b"x",), algorithm=None)
    # the store "forgets" to abort: every AbortMultipartUpload answers OK but the parts stay
    store.abort_multipart_upload = lambda bucket, key, upload_id: None  # type: ignore[method-assign]
    assert store.abort_and_confirm("b", "k", upload_id, rounds=3) is AbortOutcome.PARTS_REMAIN
    assert store.calls["ListParts"] == 3
    store.fail("ListParts", code="AccessDenied", status=403)
    outcome = store.abort_and_confirm("b", "k", upload_id)
    assert outcome is AbortOutcome.UNCONFIRMED and not outcome.gone


def test_list_parts_paginates_to_the_end(store: MemoryStore) -> None:
    parts = tuple(bytes([65 + i]) * MIN for i in range(5))
    upload_id, _ = _upload(store, parts=parts)
    listing = store.list_parts("b", "k", upload_id)
    assert listing is not None and sorted(listing.parts) == [1, 2, 3, 4, 5]
    assert listing.algorithm == "CRC32C"
    assert listing.parts[3].checksum == _crc(parts[2]) and listing.parts[3].etag == _md5(parts[2])
    assert store.calls["ListParts"] == 3  # pages of 2
    with pytest.raises(ListingStuck):
        store.list_parts("b", "k", upload_id, max_pages=2)


def test_list_uploads_paginates_and_finds_the_newest(store: MemoryStore) -> None:
    ids = [store.create_multipart_upload("b", key) for key in ("a/1", "a/2", "k", "k", "k", "z")]
    listed = list(store.list_uploads("b", "", max_pages=100))
    assert [u.upload_id for u in listed] == ids
    assert store.calls["ListMultipartUploads"] == 3
    assert [u.key for u in store.list_uploads("b", "a/", max_pages=100)] == ["a/1", "a/2"]
    newest = store.find_upload("b", "k", max_pages=100)
    assert newest is not None and newest.upload_id == ids[4]
    with pytest.raises(ListingStuck):
        list(store.list_uploads("b", "", max_pages=2))


def test_faults_hooks_and_counters(store: MemoryStore) -> None:
    store.fail("HeadBucket", 2, code="SlowDown", status=503)
    for _ in range(2):
        with pytest.raises(StoreError) as info:
            store.head_bucket("b")
        assert error_code(info.value) == "SlowDown" and http_status(info.value) == 503
        assert is_retryable(info.value)
    store.head_bucket("b")
    assert store.calls["HeadBucket"] == 3
    seen: list[dict[str, Any]] = []
    store.before("CreateMultipartUpload", lambda op, params: seen.append(params))
    store.create_multipart_upload("b", "k")
    assert seen == [{"Bucket": "b", "Key": "k", "ChecksumAlgorithm": None}]
    with pytest.raises(ValueError, match="unknown operation"):
        store.fail("UploadParts")
    store.fail("ListParts", code="AccessDenied", status=403)
    with pytest.raises(StoreError) as info:
        store.list_parts_page("b", "k", "x")
    assert isinstance(classify(info.value, bucket="b"), E.AuthError)


def test_missing_bucket_and_lifecycle() -> None:
    store = MemoryStore()
    with pytest.raises(StoreError) as info:
        store.head_bucket("nope")
    assert error_code(info.value) == "404"
    with pytest.raises(StoreError) as info:
        store.create_multipart_upload("nope", "k")
    assert isinstance(classify(info.value, bucket="nope"), E.BucketNotFound)
    store.create_bucket("b")
    with pytest.raises(StoreError, match="NoSuchLifecycleConfiguration"):
        store.lifecycle_rules("b")
    rule = {"Status": "Enabled", "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}
    store.set_lifecycle_rules("b", [rule])
    assert store.lifecycle_rules("b") == [rule]


def test_store_error_pickles_and_prints_like_botocore() -> None:
    err = StoreError("NoSuchUpload", 404, "gone", "ListParts")
    again = pickle.loads(pickle.dumps(err))
    assert (again.code, again.status, again.message, again.operation) == ("NoSuchUpload", 404, "gone", "ListParts")
    assert str(err) == "An error occurred (NoSuchUpload) when calling the ListParts operation: gone"
    assert is_retryable(StoreError("InternalError", 500)) and not is_retryable(StoreError("NotImplemented", 501))


def test_a_memory_store_stays_in_its_process(store: MemoryStore) -> None:
    with pytest.raises(TypeError, match="one process"):
        pickle.dumps(store)


@pytest.mark.parametrize(("code", "status"), [
    ("NoSuchUpload", 404), ("NoSuchKey", 404), ("404", 404), ("NoSuchBucket", 404), ("AccessDenied", 403),
    ("PreconditionFailed", 412), ("InvalidStorageClass", 400), ("BadDigest", 400), ("SlowDown", 503),
    ("InternalError", 500), ("NotImplemented", 501), ("EntityTooSmall", 400), ("Weird", 502), ("Weird", 409),
])
def test_a_store_error_is_read_like_the_same_botocore_answer(code: str, status: int) -> None:
    from botocore.exceptions import ClientError

    ours = StoreError(code, status, "message", "UploadPart")
    boto = ClientError({"Error": {"Code": code, "Message": "message"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "UploadPart")
    assert (error_code(ours), http_status(ours), is_gone(ours), is_retryable(ours)) == (
        error_code(boto), http_status(boto), is_gone(boto), is_retryable(boto))
    mine, theirs = classify(ours, bucket="b", key="k"), classify(boto, bucket="b", key="k")
    assert type(mine) is type(theirs) and str(mine) == str(theirs)


def test_the_habits_of_other_stores() -> None:
    store = MemoryStore("b", checks_checksums=False, checks_content_md5=False, md5_etags=False)
    upload_id = store.create_multipart_upload("b", "k", algorithm=Algorithm.CRC32C)
    wrong = Checksum(Algorithm.CRC32C, _crc(b"other"))
    answer = store.upload_part("b", "k", upload_id, 1, b"data", content_length=4, checksum=wrong,
                               content_md5=b64(hashlib.md5(b"other").digest()))  # noqa: S324
    assert answer["ETag"].strip('"') != _md5(b"data")  # not an MD5
    listing = store.list_parts("b", "k", upload_id)
    assert listing is not None and listing.parts[1].checksum == wrong.value  # what it was sent
    store.complete_multipart_upload("b", "k", upload_id, [CompletedPart(1, answer["ETag"], wrong)])
    assert store.head_object("b", "k")["ContentLength"] == 4
