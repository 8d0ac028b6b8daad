"""The lean PutObject (mpupload/storage/lean.py) against real servers: moto and Ceph RGW, over HTTP and HTTPS
(our own CA). Objects it writes are read back through botocore; every refusal is compared with botocore's for
the same request on the same store; resets and SlowDown from the fault proxy are retried by the worker."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from mpupload.checksums import Algorithm, b64, new_hasher
from mpupload.engine.counter import ByteCounter, CancelFlag
from mpupload.engine.worker import PartJob, PartTarget, WorkerConfig, upload_one_part
from mpupload.plan import Part
from mpupload.storage.boto3_store import Boto3Store
from mpupload.storage.config import StoreConfig
from mpupload.storage.errors import error_code, http_status, is_retryable
from mpupload.storage.port import Checksum
from tests.conftest import ALL_SERVERS, SERVERS
from tests.support.s3server import S3Server

pytestmark = [pytest.mark.integration]

KEYS = ["plain.bin", "with space/and more  spaces.txt", "ünïcödé/日本語/ß.bin", "a+b=c~d&e;f,g:h@i!j$k'l(m)n*o",
        "dir//double/./dot/../x", "percent%20not-encoded%", "trailing-slash/"]


def _crc(data: bytes) -> Checksum:
    h = new_hasher(Algorithm.CRC32C)
    h.update(data)
    return Checksum(Algorithm.CRC32C, b64(h.digest()))


def _md5(data: bytes) -> str:
    h = new_hasher(Algorithm.MD5)
    h.update(data)
    return b64(h.digest())


class Counted:
    """How many PutObjects the lean path itself sent (and saw fail) for one store."""

    def __init__(self, store: Boto3Store) -> None:
        lean = store.lean_put()
        assert lean is not None, "the lean path is off for this store"
        self.calls = 0
        original = lean.put

        def put(*args: Any, **kwargs: Any) -> dict[str, Any]:
            self.calls += 1
            return original(*args, **kwargs)

        lean.put = put  # type: ignore[method-assign]


def _store(s3: S3Server, monkeypatch: pytest.MonkeyPatch, *, lean: bool = True, endpoint: str | None = None,
           verify: bool | str | None = None) -> Boto3Store:
    """A store with this server's credentials, under a profile of their own: the process keeps one boto3 session
    (and its credentials) per profile, and the servers of a session do not share credentials."""
    profile = f"lean-{s3.access_key}"
    credentials = Path(os.environ.get("HOME", "/tmp")) / f"lean-credentials-{s3.access_key}"
    credentials.write_text(f"[{profile}]\naws_access_key_id = {s3.access_key}\n"
                           f"aws_secret_access_key = {s3.secret_key}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("MPUPLOAD_LEAN_PUT", "1" if lean else "0")
    store = Boto3Store(StoreConfig(endpoint_url=endpoint or s3.endpoint_url, region=s3.region, profile=profile,
                                   verify=verify if verify is not None else s3.ca_bundle, max_attempts=1))
    assert (store.lean_put() is not None) is lean
    return store


@pytest.mark.parametrize("s3", ALL_SERVERS, indirect=True)
def test_objects_written_lean_read_back_through_botocore(s3: S3Server, bucket: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(s3, monkeypatch)
    counted = Counted(store)
    client = s3.client()
    for n, key in enumerate(KEYS):
        body = os.urandom(1000 + n)
        args = {"ContentType": f"application/x-test-{n}", "Metadata": {"mpupload-crc32c": _crc(body).value,
                                                                       "Owner": f"tester {n}"}}
        answer = store.put_object(bucket, key, body, content_length=len(body), checksum=_crc(body),
                                  content_md5=_md5(body), object_args=args)
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert str(answer["ETag"]).strip('"') == new_hasher_hex(body)
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == len(body) and head["ContentType"] == args["ContentType"]
        assert head["Metadata"] == {"mpupload-crc32c": _crc(body).value, "owner": f"tester {n}"}
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed == set(KEYS)
    assert counted.calls == len(KEYS)


def new_hasher_hex(body: bytes) -> str:
    h = new_hasher(Algorithm.MD5)
    h.update(body)
    return h.digest().hex()


def _outcome(store: Boto3Store, bucket: str, key: str, body: bytes, **kw: Any) -> tuple[Any, ...]:
    """What the store made of one PutObject: ("ok", the answer's object fields) or ("refused", code, status)."""
    try:
        answer = store.put_object(bucket, key, body, content_length=len(body), **kw)
    except Exception as exc:  # noqa: BLE001
        return "refused", error_code(exc), http_status(exc), is_retryable(exc)
    return "ok", {k: v for k, v in answer.items() if k in ("ServerSideEncryption", "ChecksumCRC32C")}


CASES: dict[str, dict[str, Any]] = {
    "wrong Content-MD5": {"content_md5": _md5(b"not the body")},
    "missing bucket": {"bucket": "no-such-bucket-here"},
    "If-None-Match on an existing key": {"if_none_match": True, "existing": True},
    "SSE-S3": {"object_args": {"ServerSideEncryption": "AES256"}},
    "a storage class that does not exist": {"object_args": {"StorageClass": "NOT_A_CLASS"}},
    "checksum and MD5": {"checksum": "right", "content_md5": "right"},
}


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_answer_is_botocores_answer(s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch,
                                         case: str) -> None:
    spec = dict(CASES[case])
    body = os.urandom(4096)
    target = spec.pop("bucket", bucket)
    existing = spec.pop("existing", False)
    if spec.get("checksum") == "right":
        spec["checksum"] = _crc(body)
    if spec.get("content_md5") == "right":
        spec["content_md5"] = _md5(body)
    outcomes = []
    for lean in (False, True):
        store = _store(s3, monkeypatch, lean=lean)
        key = f"{case}/{uuid.uuid4().hex}"
        if existing:
            s3.client().put_object(Bucket=bucket, Key=key, Body=b"already here")
        outcomes.append(_outcome(store, target, key, body, **spec))
    theirs, ours = outcomes
    assert ours == theirs
    expected = {("missing bucket", s3.name): ("refused", "NoSuchBucket", 404, False),
                ("wrong Content-MD5", "ceph"): ("refused", "BadDigest", 400, True),
                ("If-None-Match on an existing key", "moto"): ("refused", "PreconditionFailed", 412, False)}
    if (case, s3.name) in expected:
        assert ours == expected[(case, s3.name)]


def _job(path: Path, bucket: str) -> PartJob:
    target = PartTarget(str(path), bucket, "retried.bin", None, Algorithm.CRC32C, md5=True, etag_is_md5=True)
    return PartJob(target, Part(1, 0, path.stat().st_size))


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_slowdown_and_a_reset_are_retried_by_the_worker(s3: S3Server, bucket: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.proxy import proxy_for

    data = os.urandom(256 * 1024)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    with proxy_for(s3, slowdown_puts=1, reset_part=0, reset_after=100_000, log_path=tmp_path / "log.jsonl") as proxy:
        store = _store(s3, monkeypatch, endpoint=proxy.url())
        config = WorkerConfig(store, backoff_base_s=0.05, backoff_max_s=0.1)
        counter = ByteCounter(1)
        fd = os.open(path, os.O_RDONLY)
        try:
            result = upload_one_part(store, fd, config, _job(path, bucket), counter, 0, CancelFlag())
        finally:
            os.close(fd)
        faults = [r["fault"] for r in proxy.requests() if r["method"] == "PUT"]
    assert result.ok and result.attempts == 3, result.error
    assert faults == ["slowdown", "reset", None]
    assert counter.get(0) == len(data)
    assert s3.client().get_object(Bucket=bucket, Key="retried.bin")["Body"].read() == data


@pytest.mark.parametrize("s3", ["moto+https"], indirect=True)
def test_tls_without_our_ca_is_refused_as_botocore_refuses_it(s3: S3Server, bucket: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import SSLError

    from mpupload import errors as E
    from mpupload.storage.errors import classify

    for lean in (False, True):
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
        store = _store(s3, monkeypatch, lean=lean, verify=True)
        with pytest.raises(SSLError) as caught:
            store.put_object(bucket, "k", b"x", content_length=1)
        assert isinstance(classify(caught.value), E.UsageError)
    insecure = _store(s3, monkeypatch, verify=False)
    assert insecure.put_object(bucket, "k", b"x", content_length=1)["ResponseMetadata"]["HTTPStatusCode"] == 200
