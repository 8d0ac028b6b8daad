"""What the local S3 stores do with S3's integrity features: the probe behind docs/stores.md.

Each test runs against Ceph RGW (the session fixture from test_ceph_fixture.py) and against moto's server
(started here as its own process), and ASSERTS the behaviour observed so far, store by store, from the
``EXPECT`` table below.  When a store changes (a Ceph or moto upgrade), a test here fails and tells which
row of docs/stores.md to update.  The client is the one mpupload uses: SigV4 with payload signing off
(UNSIGNED-PAYLOAD over plain HTTP), checksums only when required, path-style addressing.

    .venv/bin/python -m pytest tests/integration/test_store_behaviour.py -o addopts="" -q
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import io
import os
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from awscrt.checksums import crc32c
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.integration.test_ceph_fixture import ceph_s3, ceph_s3_tls  # noqa: F401  (session fixtures)
from tests.support.s3server import S3Server

pytestmark = [pytest.mark.integration]

MiB = 1024 * 1024
PART = 5 * MiB


@dataclass(frozen=True)
class Expect:
    """Observed behaviour of one store; errors are "<HTTP status> <S3 code>", ``None`` means accepted."""

    wrong_content_md5: str | None  # PutObject / UploadPart with a wrong Content-MD5
    wrong_checksum: str | None  # PutObject / UploadPart with a wrong x-amz-checksum-crc32c
    create_echoes_algorithm: bool  # CreateMultipartUpload(ChecksumAlgorithm=CRC32C) answers it back
    echoes_checksum: (
        bool  # UploadPart/PutObject answer x-amz-checksum-crc32c (x-amz-sdk-checksum-algorithm sent)
    )
    echoes_bare_checksum: bool  # ... when only x-amz-checksum-crc32c is sent, without the algorithm header
    head_checksum_after_put: bool  # HeadObject(ChecksumMode=ENABLED) returns the PutObject's CRC32C
    head_checksum_after_complete: bool  # ... returns a composite CRC32C after CompleteMultipartUpload
    complete_etag: bool  # CompleteMultipartUpload's response body carries the object's ETag
    if_none_match_complete: bool  # CompleteMultipartUpload(IfNoneMatch="*") on an existing key gives 412
    list_parts_after_abort: str  # error code of ListParts on an aborted upload
    upload_part_after_abort: str  # ... of UploadPart
    complete_after_abort: str  # ... of CompleteMultipartUpload
    https_default_checksums: str | None  # boto3 defaults over HTTPS (aws-chunked + CRC32 trailer)
    complete_subset: str | None  # CompleteMultipartUpload naming only parts 1-2 of 3 uploaded
    delete_wrong_if_match: str | None  # DeleteObject(IfMatch=<another ETag>): None means it deleted anyway
    complete_version_id: str | None  # the VersionId CompleteMultipartUpload answers on an unversioned bucket
    lists_upload_algorithm: bool  # ListMultipartUploads names an upload's ChecksumAlgorithm


EXPECT = {
    "ceph": Expect(
        wrong_content_md5="400 BadDigest",
        wrong_checksum=None,
        create_echoes_algorithm=False,
        echoes_checksum=False,
        echoes_bare_checksum=False,
        head_checksum_after_put=False,
        head_checksum_after_complete=False,
        complete_etag=False,
        if_none_match_complete=False,
        list_parts_after_abort="404 NoSuchKey",
        upload_part_after_abort="404 NoSuchUpload",
        complete_after_abort="500 InternalError",
        https_default_checksums="411 MissingContentLength",
        complete_subset="400 InvalidPart",
        delete_wrong_if_match=None,
        complete_version_id=None,
        lists_upload_algorithm=False,
    ),
    "moto": Expect(
        wrong_content_md5=None,
        wrong_checksum=None,
        create_echoes_algorithm=True,
        echoes_checksum=True,
        echoes_bare_checksum=False,
        head_checksum_after_put=True,
        head_checksum_after_complete=True,
        complete_etag=True,
        if_none_match_complete=True,
        list_parts_after_abort="404 NoSuchUpload",
        upload_part_after_abort="500",
        complete_after_abort="500",
        https_default_checksums=None,  # not measured: moto's server speaks plain HTTP only
        complete_subset=None,
        delete_wrong_if_match="412 PreconditionFailed",
        complete_version_id="null",
        lists_upload_algorithm=True,
    ),
}


@pytest.fixture(scope="session")
def moto_s3(moto_server: S3Server) -> S3Server:
    return moto_server


# --------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(params=[pytest.param("ceph", marks=pytest.mark.ceph), "moto"])
def store(request: pytest.FixtureRequest) -> S3Server:
    fixture = "ceph_s3" if request.param == "ceph" else "moto_s3"
    server: S3Server = request.getfixturevalue(fixture)
    return server


@pytest.fixture
def expect(store: S3Server) -> Expect:
    return EXPECT[store.name]


def probe_client(server: S3Server, **config: Any) -> Any:
    """The client mpupload uses: no payload signing, checksums only when required, no retries."""
    settings: dict[str, Any] = {
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        "s3": {"addressing_style": "path", "payload_signing_enabled": False},
        "retries": {"max_attempts": 1, "mode": "standard"},
    }
    settings.update(config)
    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        verify=server.ca_bundle if server.ca_bundle else True,
        config=Config(**settings),
    )


@pytest.fixture
def s3(store: S3Server) -> Any:
    return probe_client(store)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"probe-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    return name


def error_code(call: Callable[[], object]) -> str | None:
    """``None`` when the call succeeds, else "<HTTP status> <S3 error code>" (just the status without one)."""
    try:
        call()
    except ClientError as exc:
        status = str(exc.response["ResponseMetadata"]["HTTPStatusCode"])
        code = str(exc.response["Error"].get("Code") or status)
        return status if code == status else f"{status} {code}"
    return None


def b64_crc32c(data: bytes) -> str:
    return base64.b64encode(crc32c(data).to_bytes(4, "big")).decode()


def b64_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def multipart_etag(parts: list[bytes]) -> str:
    return hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"


def moto_composite(parts: list[bytes]) -> str:
    """moto computes the composite from the part bytes itself, with real CRC32C only when the optional
    ``crc32c`` package is installed; otherwise it falls back to zlib's CRC32 under the CRC32C name."""
    checksum: Callable[[bytes], int] = crc32c if importlib.util.find_spec("crc32c") else zlib.crc32
    raw = b"".join(checksum(p).to_bytes(4, "big") for p in parts)
    return base64.b64encode(checksum(raw).to_bytes(4, "big")).decode()


def completion(s3: Any, bucket: str, key: str, upload_id: str, parts: Any, **extra: Any) -> Callable[[], Any]:
    """CompleteMultipartUpload as a call for ``error_code``."""
    return functools.partial(
        s3.complete_multipart_upload,
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": parts},
        **extra,
    )


def upload_parts(s3: Any, bucket: str, key: str, upload_id: str, parts: list[bytes]) -> list[dict[str, Any]]:
    done = []
    for number, data in enumerate(parts, start=1):
        answer = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
        done.append({"PartNumber": number, "ETag": answer["ETag"]})
    return done


# --------------------------------------------------------------------------------------------------
# 1. Content-MD5


def test_wrong_content_md5(s3: Any, bucket: str, expect: Expect) -> None:
    wrong = b64_md5(b"something else")
    put = functools.partial(s3.put_object, Bucket=bucket, Key="p", Body=b"hello", ContentMD5=wrong)
    assert error_code(put) == expect.wrong_content_md5
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    body = os.urandom(PART)
    call = functools.partial(
        s3.upload_part, Bucket=bucket, Key="m", UploadId=upload_id, PartNumber=1, Body=body, ContentMD5=wrong
    )
    assert error_code(call) == expect.wrong_content_md5
    # the right MD5 is always accepted
    s3.upload_part(
        Bucket=bucket, Key="m", UploadId=upload_id, PartNumber=1, Body=body, ContentMD5=b64_md5(body)
    )
    s3.abort_multipart_upload(Bucket=bucket, Key="m", UploadId=upload_id)


# --------------------------------------------------------------------------------------------------
# 2. x-amz-checksum-crc32c


def test_multipart_crc32c(s3: Any, bucket: str, expect: Expect) -> None:
    created = s3.create_multipart_upload(Bucket=bucket, Key="m", ChecksumAlgorithm="CRC32C")
    assert (created.get("ChecksumAlgorithm") == "CRC32C") is expect.create_echoes_algorithm
    upload_id, parts = created["UploadId"], [os.urandom(PART), b"!"]

    right = s3.upload_part(
        Bucket=bucket,
        Key="m",
        UploadId=upload_id,
        PartNumber=1,
        Body=parts[0],
        ChecksumAlgorithm="CRC32C",
        ChecksumCRC32C=b64_crc32c(parts[0]),
    )
    assert right.get("ChecksumCRC32C") == (b64_crc32c(parts[0]) if expect.echoes_checksum else None)

    bad = b64_crc32c(b"not the part")
    call = functools.partial(
        s3.upload_part,
        Bucket=bucket,
        Key="m",
        UploadId=upload_id,
        PartNumber=2,
        Body=parts[1],
        ChecksumAlgorithm="CRC32C",
        ChecksumCRC32C=bad,
    )
    assert error_code(call) == expect.wrong_checksum
    if expect.wrong_checksum is not None:  # rejected: upload the part properly
        s3.upload_part(
            Bucket=bucket,
            Key="m",
            UploadId=upload_id,
            PartNumber=2,
            Body=parts[1],
            ChecksumAlgorithm="CRC32C",
            ChecksumCRC32C=b64_crc32c(parts[1]),
        )

    listed = s3.list_parts(Bucket=bucket, Key="m", UploadId=upload_id)["Parts"]
    completion = [
        {"PartNumber": p["PartNumber"], "ETag": p["ETag"], "ChecksumCRC32C": b64_crc32c(data)}
        for p, data in zip(listed, parts, strict=True)
    ]
    s3.complete_multipart_upload(
        Bucket=bucket, Key="m", UploadId=upload_id, MultipartUpload={"Parts": completion}
    )

    head = s3.head_object(Bucket=bucket, Key="m", ChecksumMode="ENABLED")
    got = s3.get_object(Bucket=bucket, Key="m", ChecksumMode="ENABLED")
    assert got["Body"].read() == b"".join(parts)
    if expect.head_checksum_after_complete:
        # moto: HEAD gives the bare value, GET appends "-<parts>" and says COMPOSITE
        assert head["ChecksumCRC32C"] == moto_composite(parts)
        assert got["ChecksumCRC32C"] == moto_composite(parts) + "-2"
        assert got["ChecksumType"] == "COMPOSITE"
    else:
        assert "ChecksumCRC32C" not in head and "ChecksumCRC32C" not in got


def test_put_object_crc32c(s3: Any, bucket: str, expect: Expect) -> None:
    body = b"hello, checksums"
    bare = s3.put_object(Bucket=bucket, Key="bare", Body=body, ChecksumCRC32C=b64_crc32c(body))
    assert bare.get("ChecksumCRC32C") == (b64_crc32c(body) if expect.echoes_bare_checksum else None)

    good = s3.put_object(
        Bucket=bucket, Key="good", Body=body, ChecksumAlgorithm="CRC32C", ChecksumCRC32C=b64_crc32c(body)
    )
    assert good.get("ChecksumCRC32C") == (b64_crc32c(body) if expect.echoes_checksum else None)

    bad = b64_crc32c(b"not the body")
    call = functools.partial(
        s3.put_object, Bucket=bucket, Key="bad", Body=body, ChecksumAlgorithm="CRC32C", ChecksumCRC32C=bad
    )
    assert error_code(call) == expect.wrong_checksum
    stored = s3.head_object(Bucket=bucket, Key="bad", ChecksumMode="ENABLED").get("ChecksumCRC32C")
    assert stored == (bad if expect.head_checksum_after_put else None)  # moto keeps the wrong value as given
    assert s3.get_object(Bucket=bucket, Key="bad")["Body"].read() == body


# --------------------------------------------------------------------------------------------------
# 3. ETags


def test_etags_are_md5_based(s3: Any, bucket: str, expect: Expect) -> None:
    parts = [os.urandom(PART), os.urandom(PART), b"x"]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    done = upload_parts(s3, bucket, "m", upload_id, parts)
    assert [d["ETag"] for d in done] == [f'"{hashlib.md5(p).hexdigest()}"' for p in parts]

    completed = s3.complete_multipart_upload(
        Bucket=bucket, Key="m", UploadId=upload_id, MultipartUpload={"Parts": done}
    )
    expected = f'"{multipart_etag(parts)}"'
    assert s3.head_object(Bucket=bucket, Key="m")["ETag"] == expected
    assert completed["ETag"] == (expected if expect.complete_etag else "")  # Ceph 16 answers <ETag></ETag>
    put = s3.put_object(Bucket=bucket, Key="p", Body=b"abc")
    assert put["ETag"] == f'"{hashlib.md5(b"abc").hexdigest()}"'


# --------------------------------------------------------------------------------------------------
# 4. If-None-Match: *


def test_if_none_match_on_put_object(s3: Any, bucket: str) -> None:
    put = functools.partial(s3.put_object, Bucket=bucket, Key="k", IfNoneMatch="*")
    assert error_code(functools.partial(put, Body=b"one")) is None
    assert error_code(functools.partial(put, Body=b"two")) == "412 PreconditionFailed"
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"one"


def test_if_none_match_on_complete(s3: Any, bucket: str, expect: Expect) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"original")
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    done = upload_parts(s3, bucket, "k", upload_id, [b"replacement"])
    call = completion(s3, bucket, "k", upload_id, done, IfNoneMatch="*")
    if expect.if_none_match_complete:
        assert error_code(call) == "412 PreconditionFailed"
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"original"
        s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id)
    else:  # Ceph 16 ignores the header and overwrites
        assert error_code(call) is None
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"replacement"


# --------------------------------------------------------------------------------------------------
# 5. ListParts pagination


def test_list_parts_pagination(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    upload_parts(s3, bucket, "m", upload_id, [bytes([n]) * 10 for n in range(5)])
    pages, marker = [], 0
    while True:
        page = s3.list_parts(Bucket=bucket, Key="m", UploadId=upload_id, MaxParts=2, PartNumberMarker=marker)
        numbers = [p["PartNumber"] for p in page.get("Parts", [])]
        pages.append((numbers, page["IsTruncated"], page["NextPartNumberMarker"]))
        if not page["IsTruncated"] or len(pages) > 5:
            break
        marker = page["NextPartNumberMarker"]
    assert pages == [([1, 2], True, 2), ([3, 4], True, 4), ([5], False, 5)]
    s3.abort_multipart_upload(Bucket=bucket, Key="m", UploadId=upload_id)


# --------------------------------------------------------------------------------------------------
# 6. minimum part size


def test_small_parts_fail_at_complete(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    done = upload_parts(s3, bucket, "m", upload_id, [b"a" * 1024, b"b"])  # each UploadPart is accepted
    call = completion(s3, bucket, "m", upload_id, done)
    assert error_code(call) == "400 EntityTooSmall"
    assert error_code(call) == "400 EntityTooSmall"  # the upload survives: a retry gets the same answer
    s3.abort_multipart_upload(Bucket=bucket, Key="m", UploadId=upload_id)
    # a single small part is fine: it is also the last one
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="one")["UploadId"]
    done = upload_parts(s3, bucket, "one", upload_id, [b"a" * 1024])
    s3.complete_multipart_upload(
        Bucket=bucket, Key="one", UploadId=upload_id, MultipartUpload={"Parts": done}
    )


def test_complete_with_a_subset_of_the_parts(s3: Any, bucket: str, expect: Expect) -> None:
    parts = [os.urandom(PART), b"b", b"c"]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    done = upload_parts(s3, bucket, "m", upload_id, parts)
    call = completion(s3, bucket, "m", upload_id, done[:2])
    assert error_code(call) == expect.complete_subset
    if expect.complete_subset is None:
        assert s3.get_object(Bucket=bucket, Key="m")["Body"].read() == b"".join(parts[:2])
    else:
        s3.abort_multipart_upload(Bucket=bucket, Key="m", UploadId=upload_id)


# --------------------------------------------------------------------------------------------------
# 7. abort


def test_abort_removes_the_upload(s3: Any, bucket: str, expect: Expect) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    done = upload_parts(s3, bucket, "m", upload_id, [b"part"])
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [upload_id]
    s3.abort_multipart_upload(Bucket=bucket, Key="m", UploadId=upload_id)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    same = {"Bucket": bucket, "Key": "m", "UploadId": upload_id}
    assert error_code(functools.partial(s3.list_parts, **same)) == expect.list_parts_after_abort
    part = functools.partial(s3.upload_part, **same, PartNumber=2, Body=b"x")
    assert error_code(part) == expect.upload_part_after_abort
    assert error_code(completion(s3, bucket, "m", upload_id, done)) == expect.complete_after_abort
    assert error_code(functools.partial(s3.abort_multipart_upload, **same)) == "404 NoSuchUpload"


# --------------------------------------------------------------------------------------------------
# 8. UNSIGNED-PAYLOAD over plain HTTP


def test_unsigned_payload_over_http(store: S3Server, s3: Any, bucket: str) -> None:
    assert store.endpoint_url.startswith("http://")
    sent: list[bytes] = []

    def record(request: Any, **_: Any) -> None:
        sent.append(request.headers["x-amz-content-sha256"])

    s3.meta.events.register("before-send.s3.PutObject", record)
    body = os.urandom(64 * 1024)
    s3.put_object(Bucket=bucket, Key="k", Body=body)
    assert sent == [b"UNSIGNED-PAYLOAD"]
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == body


# --------------------------------------------------------------------------------------------------
# extra: boto3's default checksum settings (>= 1.36, "when_supported")


def test_boto3_default_checksums_over_http(store: S3Server, bucket: str, expect: Expect) -> None:
    """Over plain HTTP botocore sends x-amz-checksum-crc32 as an ordinary header: both stores accept it."""
    s3 = boto3.session.Session().client(
        "s3",
        endpoint_url=store.endpoint_url,
        aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key,
        region_name=store.region,
        config=Config(s3={"addressing_style": "path"}),
    )
    body = os.urandom(64 * 1024)
    put = s3.put_object(Bucket=bucket, Key="k", Body=body)
    assert ("ChecksumCRC32" in put) is expect.echoes_checksum
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == body


@pytest.mark.ceph
def test_boto3_default_checksums_over_https_on_ceph(ceph_s3_tls: S3Server) -> None:  # noqa: F811
    """Over HTTPS botocore streams the body aws-chunked with a CRC32 trailer, which Ceph 16 refuses."""
    defaults = {
        "request_checksum_calculation": "when_supported",
        "response_checksum_validation": "when_supported",
    }
    s3 = probe_client(ceph_s3_tls, s3={"addressing_style": "path"}, **defaults)
    name = f"probe-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    body = os.urandom(64 * 1024)

    def put() -> None:
        s3.put_object(Bucket=name, Key="k", Body=io.BytesIO(body))

    assert error_code(put) == EXPECT["ceph"].https_default_checksums
    upload_id = s3.create_multipart_upload(Bucket=name, Key="m")["UploadId"]
    part = functools.partial(
        s3.upload_part, Bucket=name, Key="m", UploadId=upload_id, PartNumber=1, Body=io.BytesIO(body)
    )
    assert error_code(part) == EXPECT["ceph"].https_default_checksums
    s3.abort_multipart_upload(Bucket=name, Key="m", UploadId=upload_id)
    # with checksums "when_required" the same upload works
    probe_client(ceph_s3_tls).put_object(Bucket=name, Key="k", Body=body)
    assert s3.get_object(Bucket=name, Key="k")["Body"].read() == body


def test_delete_with_a_wrong_if_match(s3: Any, bucket: str, expect: Expect) -> None:
    """mpupload deletes a corrupt object only with If-Match (or its VersionId): a store that ignores If-Match
    deletes whatever is at the key, so there mpupload's fresh HEAD just before is the only guard."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"hello")
    got = error_code(lambda: s3.delete_object(Bucket=bucket, Key="k", IfMatch='"0123456789abcdef0123456789abcdef"'))
    assert got == expect.delete_wrong_if_match
    still_there = error_code(lambda: s3.head_object(Bucket=bucket, Key="k")) is None
    assert still_there is (expect.delete_wrong_if_match is not None)


def test_complete_version_id_and_listed_algorithm(s3: Any, bucket: str, expect: Expect) -> None:
    """What CompleteMultipartUpload says of versions on an unversioned bucket (moto says "null", which is no
    version HeadObject accepts), and whether ListMultipartUploads names the upload's checksum algorithm (what a
    resume without a journal needs)."""
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="CRC32C")["UploadId"]
    listed = [u for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"] if u["UploadId"] == upload_id]
    assert (listed[0].get("ChecksumAlgorithm") == "CRC32C") is expect.lists_upload_algorithm
    data = os.urandom(1000)
    answer = s3.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=1, Body=data,
                            ChecksumCRC32C=b64_crc32c(data))
    done = s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": answer["ETag"], "ChecksumCRC32C": b64_crc32c(data)}]})
    assert done.get("VersionId") == expect.complete_version_id
