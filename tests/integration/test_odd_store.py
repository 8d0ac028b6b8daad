"""The odd store (tests/support/odd_store.py) does what each of its flags promises.

Every flag is exercised with boto3 directly, configured as mpupload configures it (unsigned payloads,
checksums only when required, path-style), so that tests of mpupload's integrity logic can rely on the
store: wrong digests refused or accepted, ETags that are or are not MD5s, the three multipart ETag forms,
SSE-KMS answers, write-only credentials, stored bytes (and silently corrupted ones), conditional deletes
and the request counters.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from awscrt import checksums
from botocore.config import Config
from botocore.exceptions import ClientError, FlexibleChecksumError

from tests.support.odd_store import KMS_KEY_ID, OddStore, start_odd_store
from tests.support.s3server import S3Server, wait_until

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
HEX_ETAG = re.compile(r'"[0-9a-f]{32}"')
Factory = Callable[..., OddStore]


def client(store: S3Server) -> Any:
    """A boto3 client configured as mpupload's StoreConfig.make_client configures it, without retries."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=store.endpoint_url,
        aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key,
        region_name=store.region,
        config=Config(
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=60,
        ),
    )


def with_bucket(store: S3Server) -> Any:
    s3 = client(store)
    s3.create_bucket(Bucket="b")
    return s3


def b64crc(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode()


def crc32c(data: bytes) -> str:
    return b64crc(checksums.crc32c(data))


def wrong(encoded: str) -> str:
    """A well-formed but wrong base64 digest of the same width."""
    raw = bytearray(base64.b64decode(encoded))
    raw[0] ^= 0xFF
    return base64.b64encode(bytes(raw)).decode()


def b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def aws_md5_of_md5s(parts: list[bytes]) -> str:
    return f'"{hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()}-{len(parts)}"'


def composite_crc32c(parts: list[bytes]) -> str:
    raw = b"".join(checksums.crc32c(p).to_bytes(4, "big") for p in parts)
    return f"{b64crc(checksums.crc32c(raw))}-{len(parts)}"


def error_code(err: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    resp = err.value.response
    return resp["ResponseMetadata"]["HTTPStatusCode"], resp["Error"]["Code"]


def upload(s3: Any, key: str, parts: list[bytes], order: list[int] | None = None,
           complete: list[int] | None = None, **create: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A multipart upload of ``parts`` (sent in ``order``, 1-based; completed with the part numbers in
    ``complete``); returns the Complete answer and the UploadPart answers by part number."""
    uid = s3.create_multipart_upload(Bucket="b", Key=key, **create)["UploadId"]
    answers: dict[int, dict[str, Any]] = {}
    for n in order or range(1, len(parts) + 1):
        extra = {"ChecksumCRC32C": crc32c(parts[n - 1])} if create.get("ChecksumAlgorithm") == "CRC32C" else {}
        answers[n] = s3.upload_part(Bucket="b", Key=key, UploadId=uid, PartNumber=n, Body=parts[n - 1], **extra)
    listed = []
    for n in complete or range(1, len(parts) + 1):
        item = {"PartNumber": n, "ETag": answers[n]["ETag"]}
        if "ChecksumCRC32C" in answers[n]:
            item["ChecksumCRC32C"] = answers[n]["ChecksumCRC32C"]
        listed.append(item)
    done = s3.complete_multipart_upload(Bucket="b", Key=key, UploadId=uid, MultipartUpload={"Parts": listed})
    return done, [answers[n] for n in sorted(answers)]


def aws_chunked_put(store: S3Server, key: str, payload: bytes, trailer_crc32c: str) -> tuple[int, bytes]:
    """PutObject with an aws-chunked body whose x-amz-checksum-crc32c comes in the trailer."""
    body = b""
    for i in range(0, len(payload), 65536):
        piece = payload[i : i + 65536]
        body += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    body += f"0\r\nx-amz-checksum-crc32c:{trailer_crc32c}\r\n\r\n".encode()
    port = int(store.endpoint_url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("PUT", f"/b/{key}", body=body, headers={
            "Content-Encoding": "aws-chunked",
            "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            "x-amz-decoded-content-length": str(len(payload)),
            "x-amz-trailer": "x-amz-checksum-crc32c",
        })
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------------
# Start-up and stop
# --------------------------------------------------------------------------------------------------


def test_the_helper_starts_an_s3server_and_stop_ends_the_process(tmp_path: Path) -> None:
    store = start_odd_store(tmp_path, "--keep-bodies")
    try:
        assert isinstance(store, S3Server)
        assert store.name == "odd-store" and store.flags == ("--keep-bodies",)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", store.endpoint_url)
        assert store.env()["AWS_ENDPOINT_URL"] == store.endpoint_url
        store.client().create_bucket(Bucket="via-s3server-client")
        assert [b["Name"] for b in client(store).list_buckets()["Buckets"]] == ["via-s3server-client"]
        assert store.stats()["options"]["keep_bodies"] is True
        (pid,) = store.pids
        os.kill(pid, 0)  # alive
    finally:
        store.stop()

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, 10, f"odd store pid {pid} to exit")


def test_contradictory_flags_fail_at_start_up_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="--corrupt-stored needs --keep-bodies"):
        start_odd_store(tmp_path, "--corrupt-stored")
    with pytest.raises(RuntimeError, match="--echo-checksums needs --checks-nothing"):
        start_odd_store(tmp_path, "--echo-checksums")
    with pytest.raises(RuntimeError, match="invalid choice"):
        start_odd_store(tmp_path, "--etags", "sha1")


def test_the_fixture_stops_what_it_started(odd_store: Factory) -> None:
    a, b = odd_store(), odd_store("--deny-head")
    assert a.endpoint_url != b.endpoint_url
    assert b.stats()["options"]["deny_head"] is True and a.stats()["options"]["deny_head"] is False
    # (the fixture's teardown stops both; this test only checks that two stores can coexist)


# --------------------------------------------------------------------------------------------------
# Default behaviour: as AWS
# --------------------------------------------------------------------------------------------------


def test_by_default_wrong_digests_are_refused_and_etags_are_md5s(odd_store: Factory) -> None:
    store = odd_store()
    s3 = with_bucket(store)
    body = os.urandom(300_001)

    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="b", Key="k", Body=body, ContentMD5=wrong(b64md5(body)))
    assert error_code(err) == (400, "BadDigest")
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="b", Key="k", Body=body, ChecksumCRC32C=wrong(crc32c(body)))
    assert error_code(err) == (400, "BadDigest")
    status, text = aws_chunked_put(store, "chunked", body, wrong(crc32c(body)))
    assert status == 400 and b"<Code>BadDigest</Code>" in text

    uid = s3.create_multipart_upload(Bucket="b", Key="mp")["UploadId"]
    with pytest.raises(ClientError) as err:
        s3.upload_part(Bucket="b", Key="mp", UploadId=uid, PartNumber=1, Body=body, ContentMD5=wrong(b64md5(body)))
    assert error_code(err) == (400, "BadDigest")
    # no Content-MD5 sent: the ETag is still the MD5 (the discard endpoint would answer a random one)
    part = s3.upload_part(Bucket="b", Key="mp", UploadId=uid, PartNumber=1, Body=body)
    assert part["ETag"] == md5_etag(body)

    put = s3.put_object(Bucket="b", Key="k", Body=body, ChecksumCRC32C=crc32c(body))
    assert put["ETag"] == md5_etag(body) and put["ChecksumCRC32C"] == crc32c(body)
    assert "ServerSideEncryption" not in put
    assert aws_chunked_put(store, "chunked", body, crc32c(body))[0] == 200
    head = s3.head_object(Bucket="b", Key="k", ChecksumMode="ENABLED")
    assert head["ETag"] == md5_etag(body) and head["ChecksumCRC32C"] == crc32c(body)
    assert head["ContentLength"] == len(body)

    # without --keep-bodies nothing is stored: GetObject is not served
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="b", Key="k")
    assert error_code(err) == (501, "NotImplemented")


# --------------------------------------------------------------------------------------------------
# --checks-nothing [--echo-checksums]
# --------------------------------------------------------------------------------------------------


def test_checks_nothing_accepts_wrong_digests_and_answers_no_checksums(odd_store: Factory) -> None:
    store = odd_store("--checks-nothing", "--keep-bodies")
    s3 = with_bucket(store)
    body = os.urandom(200_000)

    put = s3.put_object(Bucket="b", Key="k", Body=body, ContentMD5=wrong(b64md5(body)),
                        ChecksumCRC32C=wrong(crc32c(body)))
    assert put["ETag"] == md5_etag(body)  # the MD5 of what arrived, not of what the client claimed
    assert not [k for k in put if k.startswith("Checksum")]
    head = s3.head_object(Bucket="b", Key="k", ChecksumMode="ENABLED")
    assert not [k for k in head if k.startswith("Checksum")]
    assert s3.get_object(Bucket="b", Key="k")["Body"].read() == body

    status, _ = aws_chunked_put(store, "chunked", body, wrong(crc32c(body)))
    assert status == 200  # a wrong trailer too
    assert s3.get_object(Bucket="b", Key="chunked")["Body"].read() == body

    parts = [os.urandom(5 * MIB), os.urandom(1000)]
    created = s3.create_multipart_upload(Bucket="b", Key="mp", ChecksumAlgorithm="CRC32C")
    assert "ChecksumAlgorithm" not in created  # like Ceph RGW 16: it does not know the header
    uid = created["UploadId"]
    answers = [
        s3.upload_part(Bucket="b", Key="mp", UploadId=uid, PartNumber=n, Body=p,
                       ChecksumCRC32C=wrong(crc32c(p)), ContentMD5=wrong(b64md5(p)))
        for n, p in enumerate(parts, start=1)
    ]
    assert [a["ETag"] for a in answers] == [md5_etag(p) for p in parts]
    assert not [k for a in answers for k in a if k.startswith("Checksum")]
    listed = s3.list_parts(Bucket="b", Key="mp", UploadId=uid)
    assert "ChecksumAlgorithm" not in listed
    assert not [k for p in listed["Parts"] for k in p if k.startswith("Checksum")]
    done = s3.complete_multipart_upload(Bucket="b", Key="mp", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": a["ETag"]} for n, a in enumerate(answers, start=1)]})
    assert done["ETag"] == aws_md5_of_md5s(parts)
    assert not [k for k in done if k.startswith("Checksum")]
    head = s3.head_object(Bucket="b", Key="mp", ChecksumMode="ENABLED")
    assert not [k for k in head if k.startswith("Checksum")]


def test_checks_nothing_with_echo_checksums_stores_and_echoes_what_the_client_stated(odd_store: Factory) -> None:
    store = odd_store("--checks-nothing", "--echo-checksums")
    s3 = with_bucket(store)
    body = os.urandom(100_000)
    lie = wrong(crc32c(body))

    put = s3.put_object(Bucket="b", Key="k", Body=body, ChecksumCRC32C=lie, ContentMD5=wrong(b64md5(body)))
    assert put["ChecksumCRC32C"] == lie and put["ETag"] == md5_etag(body)
    assert s3.head_object(Bucket="b", Key="k", ChecksumMode="ENABLED")["ChecksumCRC32C"] == lie
    assert "ChecksumCRC32C" not in s3.head_object(Bucket="b", Key="k")  # only with ChecksumMode=ENABLED

    parts = [os.urandom(5 * MIB), os.urandom(777)]
    lies = [wrong(crc32c(p)) for p in parts]
    created = s3.create_multipart_upload(Bucket="b", Key="mp", ChecksumAlgorithm="CRC32C")
    assert created["ChecksumAlgorithm"] == "CRC32C"
    uid = created["UploadId"]
    answers = [
        s3.upload_part(Bucket="b", Key="mp", UploadId=uid, PartNumber=n, Body=p, ChecksumCRC32C=lie_n)
        for n, (p, lie_n) in enumerate(zip(parts, lies), start=1)
    ]
    assert [a["ChecksumCRC32C"] for a in answers] == lies
    listed = s3.list_parts(Bucket="b", Key="mp", UploadId=uid)["Parts"]
    assert [p["ChecksumCRC32C"] for p in listed] == lies
    done = s3.complete_multipart_upload(Bucket="b", Key="mp", UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": n, "ETag": a["ETag"], "ChecksumCRC32C": lie_n}
        for n, (a, lie_n) in enumerate(zip(answers, lies), start=1)]})
    raw = b"".join(base64.b64decode(x) for x in lies)
    composite_of_lies = f"{b64crc(checksums.crc32c(raw))}-2"
    assert done["ChecksumCRC32C"] == composite_of_lies != composite_crc32c(parts)
    assert s3.head_object(Bucket="b", Key="mp", ChecksumMode="ENABLED")["ChecksumCRC32C"] == composite_of_lies


# --------------------------------------------------------------------------------------------------
# --etags, --multipart-etag
# --------------------------------------------------------------------------------------------------


def test_random_etags_are_not_md5s_and_digests_are_still_checked(odd_store: Factory) -> None:
    store = odd_store("--etags", "random")
    s3 = with_bucket(store)
    body = os.urandom(50_000)

    first = s3.put_object(Bucket="b", Key="k", Body=body, ContentMD5=b64md5(body))["ETag"]
    second = s3.put_object(Bucket="b", Key="k", Body=body)["ETag"]
    for etag in (first, second):
        assert HEX_ETAG.fullmatch(etag) and etag != md5_etag(body)
    assert first != second
    assert s3.head_object(Bucket="b", Key="k")["ETag"] == second
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="b", Key="k", Body=body, ContentMD5=wrong(b64md5(body)))
    assert error_code(err) == (400, "BadDigest")

    parts = [os.urandom(5 * MIB), os.urandom(10)]
    done, answers = upload(s3, "mp", parts)
    for part, answer in zip(parts, answers):
        assert HEX_ETAG.fullmatch(answer["ETag"]) and answer["ETag"] != md5_etag(part)
    # the multipart ETag keeps its default form, made of the parts' true MD5s
    assert done["ETag"] == aws_md5_of_md5s(parts)


@pytest.mark.parametrize("form", ["md5-of-md5s", "random", "object-md5"])
def test_multipart_etag_forms_are_the_same_everywhere(odd_store: Factory, form: str) -> None:
    store = odd_store("--multipart-etag", form, "--keep-bodies")
    s3 = with_bucket(store)
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(4321)]
    whole = b"".join(parts)

    done, answers = upload(s3, "mp", parts, order=[3, 1, 2])
    assert [a["ETag"] for a in answers] == [md5_etag(p) for p in parts]
    etag = done["ETag"]
    if form == "md5-of-md5s":
        assert etag == aws_md5_of_md5s(parts)
    elif form == "object-md5":
        assert etag == md5_etag(whole)
    else:
        assert re.fullmatch(r'"[0-9a-f]{32}-3"', etag) and etag != aws_md5_of_md5s(parts)

    head = s3.head_object(Bucket="b", Key="mp")
    got = s3.get_object(Bucket="b", Key="mp")
    listed = s3.list_objects_v2(Bucket="b")["Contents"]
    assert head["ETag"] == got["ETag"] == etag
    assert [(o["Key"], o["ETag"], o["Size"]) for o in listed] == [("mp", etag, len(whole))]
    assert got["Body"].read() == whole


def test_object_md5_without_keep_bodies_still_hashes_the_whole_object(odd_store: Factory) -> None:
    store = odd_store("--multipart-etag", "object-md5")
    s3 = with_bucket(store)
    parts = [os.urandom(5 * MIB), os.urandom(99)]
    done, _ = upload(s3, "mp", parts)
    assert done["ETag"] == md5_etag(b"".join(parts))
    assert s3.head_object(Bucket="b", Key="mp")["ETag"] == done["ETag"]


# --------------------------------------------------------------------------------------------------
# --sse-kms-default
# --------------------------------------------------------------------------------------------------


def assert_kms(answer: dict[str, Any]) -> None:
    assert answer["ServerSideEncryption"] == "aws:kms"
    assert answer["SSEKMSKeyId"] == KMS_KEY_ID


def test_sse_kms_default_answers_kms_headers_and_random_etags_but_checks_digests(odd_store: Factory) -> None:
    store = odd_store("--sse-kms-default", "--keep-bodies")
    s3 = with_bucket(store)
    body = os.urandom(123_456)

    put = s3.put_object(Bucket="b", Key="k", Body=body, ContentMD5=b64md5(body), ChecksumCRC32C=crc32c(body))
    assert_kms(put)
    assert HEX_ETAG.fullmatch(put["ETag"]) and put["ETag"] != md5_etag(body)
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="b", Key="k", Body=body, ChecksumCRC32C=wrong(crc32c(body)))
    assert error_code(err) == (400, "BadDigest")
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="b", Key="k", Body=body, ContentMD5=wrong(b64md5(body)))
    assert error_code(err) == (400, "BadDigest")

    parts = [os.urandom(5 * MIB), os.urandom(2000)]
    created = s3.create_multipart_upload(Bucket="b", Key="mp", ChecksumAlgorithm="CRC32C")
    assert_kms(created)
    uid = created["UploadId"]
    with pytest.raises(ClientError) as err:
        s3.upload_part(Bucket="b", Key="mp", UploadId=uid, PartNumber=1, Body=parts[0],
                       ChecksumCRC32C=wrong(crc32c(parts[0])))
    assert error_code(err) == (400, "BadDigest")
    answers = []
    for n, p in enumerate(parts, start=1):
        answer = s3.upload_part(Bucket="b", Key="mp", UploadId=uid, PartNumber=n, Body=p, ChecksumCRC32C=crc32c(p))
        assert_kms(answer)
        assert HEX_ETAG.fullmatch(answer["ETag"]) and answer["ETag"] != md5_etag(p)
        assert answer["ChecksumCRC32C"] == crc32c(p)
        answers.append(answer)
    done = s3.complete_multipart_upload(Bucket="b", Key="mp", UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": n, "ETag": a["ETag"], "ChecksumCRC32C": a["ChecksumCRC32C"]}
        for n, a in enumerate(answers, start=1)]})
    assert_kms(done)
    assert re.fullmatch(r'"[0-9a-f]{32}-2"', done["ETag"]) and done["ETag"] != aws_md5_of_md5s(parts)
    assert done["ChecksumCRC32C"] == composite_crc32c(parts)

    head = s3.head_object(Bucket="b", Key="mp", ChecksumMode="ENABLED")
    assert_kms(head)
    assert head["ETag"] == done["ETag"] and head["ChecksumCRC32C"] == composite_crc32c(parts)
    got = s3.get_object(Bucket="b", Key="mp")
    assert_kms(got)
    assert got["Body"].read() == b"".join(parts)
    # bucket-level answers carry no SSE headers
    assert "x-amz-server-side-encryption" not in s3.list_objects_v2(Bucket="b")["ResponseMetadata"]["HTTPHeaders"]


# --------------------------------------------------------------------------------------------------
# --deny-head
# --------------------------------------------------------------------------------------------------


def test_deny_head_refuses_head_and_get_and_serves_everything_else(odd_store: Factory) -> None:
    store = odd_store("--deny-head", "--keep-bodies")
    s3 = with_bucket(store)
    body = os.urandom(1000)
    assert s3.put_object(Bucket="b", Key="k", Body=body)["ETag"] == md5_etag(body)
    done, _ = upload(s3, "mp", [os.urandom(5 * MIB), body])
    assert done["ETag"].endswith('-2"')

    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket="b", Key="k")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="b", Key="k")
    assert error_code(err) == (403, "AccessDenied")

    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket="b")["Contents"]) == ["k", "mp"]
    s3.head_bucket(Bucket="b")
    assert s3.delete_object(Bucket="b", Key="k")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="b")["Contents"]] == ["mp"]


# --------------------------------------------------------------------------------------------------
# --keep-bodies, --corrupt-stored
# --------------------------------------------------------------------------------------------------


def test_keep_bodies_serves_ranges_and_consistent_headers(odd_store: Factory) -> None:
    store = odd_store("--keep-bodies")
    s3 = with_bucket(store)
    body = os.urandom(1_000_003)
    s3.put_object(Bucket="b", Key="k", Body=body)

    head = s3.head_object(Bucket="b", Key="k")
    full = s3.get_object(Bucket="b", Key="k")
    assert full["Body"].read() == body
    for name in ("ContentLength", "ETag", "LastModified"):
        assert head[name] == full[name], name
    assert head["ContentLength"] == len(body) and head["ETag"] == md5_etag(body)

    size = len(body)
    for spec, first, last in [
        ("bytes=0-0", 0, 0),
        ("bytes=1000-1999", 1000, 1999),
        (f"bytes={size - 10}-", size - 10, size - 1),
        ("bytes=-7", size - 7, size - 1),
        (f"bytes=500000-{size + 100}", 500_000, size - 1),
    ]:
        got = s3.get_object(Bucket="b", Key="k", Range=spec)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206, spec
        assert got["ContentRange"] == f"bytes {first}-{last}/{size}", spec
        assert got["ContentLength"] == last - first + 1, spec
        assert got["ETag"] == head["ETag"], spec
        assert got["Body"].read() == body[first : last + 1], spec
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="b", Key="k", Range=f"bytes={size}-")
    assert error_code(err) == (416, "InvalidRange")

    s3.put_object(Bucket="b", Key="empty", Body=b"")
    assert s3.get_object(Bucket="b", Key="empty")["Body"].read() == b""

    # parts are assembled in the order listed at Complete, whatever order they were sent in
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(3333)]
    done, _ = upload(s3, "mp", parts, order=[2, 3, 1], complete=[1, 3])
    got = s3.get_object(Bucket="b", Key="mp")
    assert got["Body"].read() == parts[0] + parts[2]
    assert got["ETag"] == done["ETag"] == aws_md5_of_md5s([parts[0], parts[2]])
    assert got["ContentLength"] == len(parts[0]) + len(parts[2])


def test_corrupt_stored_returns_different_bytes_under_right_looking_etags_and_checksums(
    odd_store: Factory,
) -> None:
    store = odd_store("--keep-bodies", "--corrupt-stored")
    s3 = with_bucket(store)
    body = os.urandom(400_000)
    put = s3.put_object(Bucket="b", Key="k", Body=body, ChecksumCRC32C=crc32c(body))
    assert put["ETag"] == md5_etag(body) and put["ChecksumCRC32C"] == crc32c(body)

    head = s3.head_object(Bucket="b", Key="k", ChecksumMode="ENABLED")
    assert head["ETag"] == md5_etag(body) and head["ChecksumCRC32C"] == crc32c(body)
    stored = s3.get_object(Bucket="b", Key="k")["Body"].read()
    assert len(stored) == len(body) and stored != body
    assert [i for i in range(len(body)) if stored[i] != body[i]] == [len(body) // 2]
    # a read-back that checks the bytes against the stored checksum catches it
    with pytest.raises(FlexibleChecksumError):
        s3.get_object(Bucket="b", Key="k", ChecksumMode="ENABLED")["Body"].read()

    parts = [os.urandom(5 * MIB), os.urandom(5000)]
    done, _ = upload(s3, "mp", parts, ChecksumAlgorithm="CRC32C")
    assert done["ETag"] == aws_md5_of_md5s(parts) and done["ChecksumCRC32C"] == composite_crc32c(parts)
    head = s3.head_object(Bucket="b", Key="mp", ChecksumMode="ENABLED")
    assert head["ETag"] == done["ETag"] and head["ChecksumCRC32C"] == composite_crc32c(parts)
    whole = b"".join(parts)
    stored = s3.get_object(Bucket="b", Key="mp")["Body"].read()
    assert len(stored) == len(whole) and stored != whole
    assert hashlib.md5(stored).digest() != hashlib.md5(whole).digest()


# --------------------------------------------------------------------------------------------------
# Conditional DeleteObject
# --------------------------------------------------------------------------------------------------


def test_delete_object_honours_if_match(odd_store: Factory) -> None:
    store = odd_store()
    s3 = with_bucket(store)
    etag = s3.put_object(Bucket="b", Key="k", Body=b"first")["ETag"]

    with pytest.raises(ClientError) as err:
        s3.delete_object(Bucket="b", Key="k", IfMatch=md5_etag(b"other"))
    assert error_code(err) == (412, "PreconditionFailed")
    assert s3.head_object(Bucket="b", Key="k")["ETag"] == etag  # still there

    assert s3.delete_object(Bucket="b", Key="k", IfMatch=etag)["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.list_objects_v2(Bucket="b").get("Contents", []) == []
    with pytest.raises(ClientError) as err:
        s3.delete_object(Bucket="b", Key="k", IfMatch=etag)
    assert error_code(err) == (404, "NoSuchKey")

    s3.put_object(Bucket="b", Key="k", Body=b"second")
    assert s3.delete_object(Bucket="b", Key="k")["ResponseMetadata"]["HTTPStatusCode"] == 204  # no If-Match
    assert s3.delete_object(Bucket="b", Key="k")["ResponseMetadata"]["HTTPStatusCode"] == 204  # absent: as S3
    assert s3.list_objects_v2(Bucket="b").get("Contents", []) == []


# --------------------------------------------------------------------------------------------------
# /_stats
# --------------------------------------------------------------------------------------------------


def test_stats_count_requests_answers_bytes_and_part_attempts(odd_store: Factory) -> None:
    store = odd_store()
    s3 = with_bucket(store)
    assert store.stats()["requests"]["UploadPart"] == 0

    parts = [os.urandom(5 * MIB), os.urandom(1234)]
    uid = s3.create_multipart_upload(Bucket="b", Key="mp")["UploadId"]
    with pytest.raises(ClientError):  # refused, then sent again: part 2 is sent twice
        s3.upload_part(Bucket="b", Key="mp", UploadId=uid, PartNumber=2, Body=parts[1],
                       ContentMD5=wrong(b64md5(parts[1])))
    etags = [s3.upload_part(Bucket="b", Key="mp", UploadId=uid, PartNumber=n, Body=p)["ETag"]
             for n, p in enumerate(parts, start=1)]
    s3.list_parts(Bucket="b", Key="mp", UploadId=uid)
    s3.list_multipart_uploads(Bucket="b")
    s3.complete_multipart_upload(Bucket="b", Key="mp", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]})
    other = s3.create_multipart_upload(Bucket="b", Key="gone")["UploadId"]
    s3.abort_multipart_upload(Bucket="b", Key="gone", UploadId=other)
    s3.put_object(Bucket="b", Key="small", Body=b"x" * 100)
    s3.head_object(Bucket="b", Key="small")
    s3.delete_object(Bucket="b", Key="small")

    stats = store.stats()
    assert stats["requests"] == {
        "CreateBucket": 1,
        "CreateMultipartUpload": 2,
        "UploadPart": 3,
        "CompleteMultipartUpload": 1,
        "AbortMultipartUpload": 1,
        "ListParts": 1,
        "ListMultipartUploads": 1,
        "PutObject": 1,
        "HeadObject": 1,
        "GetObject": 0,
        "DeleteObject": 1,
    }
    assert stats["responses"]["UploadPart"] == {"200": 2, "400": 1}
    assert stats["responses"]["AbortMultipartUpload"] == {"204": 1}
    assert stats["bytes_received"] == {"UploadPart": len(parts[0]) + 2 * len(parts[1]), "PutObject": 100}
    assert stats["part_uploads"] == {uid: {"1": 1, "2": 2}}
    assert store.stats()["requests"] == stats["requests"]  # reading the counters is not counted
