"""The worker loop run in-process against a real S3 server: pipe pre-loaded with jobs and the sentinel."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpupload.checksums import Algorithm
from mpupload.engine.counter import ByteCounter, CancelFlag
from mpupload.engine.worker import PartJob, PartResult, PartTarget, WorkerConfig, worker_main
from mpupload.plan import Part
from mpupload.storage import StoreConfig
from mpupload.storage.boto3_store import Boto3Store
from tests.support.s3server import S3Server

MiB = 1024 * 1024


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _config(server: S3Server) -> WorkerConfig:
    os.environ.update({"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key})
    return WorkerConfig(Boto3Store(StoreConfig(endpoint_url=server.endpoint_url, region="us-east-1")))


def _target(path: Path, bucket: str, upload_id: str, **kw: object) -> PartTarget:
    return PartTarget(str(path), bucket, "k", upload_id, **kw)  # type: ignore[arg-type]


def test_worker_uploads_its_parts_and_stops_at_the_sentinel(
    moto_server: S3Server, tmp_path: Path, restore_signals: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_server.access_key)
    client = moto_server.client()
    client.create_bucket(Bucket="wloop")
    data = os.urandom(11 * MiB)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    upload_id = client.create_multipart_upload(Bucket="wloop", Key="k", ChecksumAlgorithm="CRC32C")["UploadId"]
    target = _target(path, "wloop", upload_id, algorithm=Algorithm.CRC32C, md5=True)
    parent, child = multiprocessing.Pipe()
    for part in (Part(1, 0, 5 * MiB), Part(2, 5 * MiB, 5 * MiB), Part(3, 10 * MiB, MiB), None):
        parent.send(PartJob(target, part) if part is not None else None)
    counter, flag = ByteCounter(2), CancelFlag()
    worker_main(1, _config(moto_server), child, counter, flag, os.getpid())  # returns at the sentinel
    results: list[PartResult] = [parent.recv() for _ in range(3)]
    assert [r.number for r in results] == [1, 2, 3]
    assert all(r.ok and r.checksum and r.md5 and r.etag == r.md5 for r in results)
    assert counter.get(1) == len(data) and counter.get(0) == 0
    parts = [{"PartNumber": r.number, "ETag": r.etag, "ChecksumCRC32C": r.checksum} for r in results]
    client.complete_multipart_upload(Bucket="wloop", Key="k", UploadId=upload_id, MultipartUpload={"Parts": parts})
    assert client.get_object(Bucket="wloop", Key="k")["Body"].read() == data


def test_cancelled_worker_answers_cancelled_and_counts_nothing(
    moto_server: S3Server, tmp_path: Path, restore_signals: None
) -> None:
    client = moto_server.client()
    client.create_bucket(Bucket="wcancel")
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(6 * MiB))
    upload_id = client.create_multipart_upload(Bucket="wcancel", Key="k")["UploadId"]
    target = _target(path, "wcancel", upload_id, algorithm=None, md5=False)
    parent, child = multiprocessing.Pipe()
    parent.send(PartJob(target, Part(1, 0, 6 * MiB)))
    parent.send(None)
    counter, flag = ByteCounter(1), CancelFlag()
    flag.set()
    worker_main(0, _config(moto_server), child, counter, flag, os.getpid())
    result: PartResult = parent.recv()
    assert result.cancelled and not result.ok
    assert counter.total() == 0


def test_worker_reports_a_fatal_error_without_retrying(
    moto_server: S3Server, tmp_path: Path, restore_signals: None
) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 10)
    target = _target(path, "no-such-bucket-wloop", "nope", algorithm=None, md5=False)
    parent, child = multiprocessing.Pipe()
    parent.send(PartJob(target, Part(1, 0, 10)))
    parent.send(None)
    worker_main(0, _config(moto_server), child, ByteCounter(1), CancelFlag(), os.getpid())
    result: PartResult = parent.recv()
    assert not result.ok and not result.cancelled
    assert result.attempts == 1
    assert result.error_type in ("BucketNotFound", "UploadFailed")
