"""``mpupload upload`` end to end: real CLI processes, real worker processes, real S3 servers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ALL_SERVERS, SERVERS
from tests.support.cli import (
    cli_env,
    events,
    make_file,
    multipart_uploads,
    run_cli,
    sha256_file,
    sha256_object,
)
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
MiB = 1024 * 1024

CONTRACT_KEYS = {
    "event", "upload_id", "bucket", "key", "total_bytes", "bytes_done", "percent", "speed_bps", "avg_speed_bps",
    "eta_seconds", "elapsed_seconds", "parts_done", "parts_total", "status",
}


def upload(s3: S3Server, src: Path, dest: str, *extra: str, timeout: float = 180) -> Any:
    return run_cli("upload", str(src), dest, "--progress", "json", *extra, env=cli_env(s3), timeout=timeout)


@pytest.mark.parametrize("s3", ALL_SERVERS, indirect=True)
@pytest.mark.parametrize(
    ("size", "part_size"),
    [(0, None), (1, None), (5 * MiB - 1, "5MiB"), (5 * MiB + 1, "5MiB"), (5 * MiB + 1, None),
     (23 * MiB + 12345, "5MiB")],
    ids=["0B", "1B", "5MiB-1", "5MiB+1-multipart", "5MiB+1-single", "23MiB-5parts"],
)
def test_sizes_round_trip(s3: S3Server, bucket: str, tmp_path: Path, size: int, part_size: str | None) -> None:
    src = make_file(tmp_path / "data.bin", size, seed=size)
    args = ["--part-size", part_size] if part_size else []
    proc = upload(s3, src, f"s3://{bucket}/dir/", *args)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    evs = events(proc.stdout)
    final = evs[-1]
    assert final["event"] == "completed"
    assert final["key"] == "dir/data.bin"
    assert final["bytes_done"] == final["total_bytes"] == size
    assert final["verified"] in ("crc32c", "md5"), final  # never size-only on these stores with --checksum auto
    client = s3.client()
    assert client.head_object(Bucket=bucket, Key="dir/data.bin")["ContentLength"] == size
    assert sha256_object(client, bucket, "dir/data.bin") == sha256_file(src)
    assert multipart_uploads(client, bucket) == []


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_json_events_follow_the_contract(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    src = make_file(tmp_path / "f.bin", 40 * MiB + 7)
    proc = upload(s3, src, f"s3://{bucket}/k", "--part-size", "5MiB", "--workers", "3")
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    assert [e["event"] for e in evs][0] == "started"
    assert evs[-1]["event"] == "completed"
    assert all(e["event"] == "progress" for e in evs[1:-1])
    for e in evs:
        assert CONTRACT_KEYS <= set(e), e
        assert 0 <= e["bytes_done"] <= e["total_bytes"]
        assert 0 <= e["percent"] <= 100
        assert e["eta_seconds"] is None or e["eta_seconds"] >= 0
    # nothing was retried here, so bytes_done never falls (it falls only when a part is sent again)
    done_seq = [e["bytes_done"] for e in evs]
    assert done_seq == sorted(done_seq)
    started = evs[0]
    assert started["part_size"] == 5 * MiB and started["workers"] == 3
    assert started["resumed_bytes"] == 0 and started["resumed_parts"] == 0
    assert started["parts_total"] == 9
    done = evs[-1]
    assert done["bytes_done"] == done["total_bytes"] and done["percent"] == 100
    assert done["parts_done"] == 9 and done["status"] == "completed"
    assert {"checksum", "etag", "location", "verified"} <= set(done)
    assert done["upload_id"]  # without an API server: the store's UploadId


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_plain_lines_when_not_a_tty(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    src = make_file(tmp_path / "f.bin", 12 * MiB)
    proc = run_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", env=cli_env(s3))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("upload: ") and "3 parts" in lines[0] and "5.0 MiB" in lines[0]
    assert re.match(r"^done: s3://\S+/k\s+12\.0 MiB in \S+ \(avg .+/s\), verified (md5|crc32c)$", lines[-1]), lines


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_quiet_prints_nothing(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    src = make_file(tmp_path / "f.bin", 6 * MiB)
    proc = run_cli("upload", str(src), f"s3://{bucket}/k", "--quiet", env=cli_env(s3))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_start_methods(s3: S3Server, bucket: str, tmp_path: Path, method: str) -> None:
    src = make_file(tmp_path / "f.bin", 17 * MiB + 3, seed=3)
    proc = run_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--workers", "3",
                   "--progress", "json", env=cli_env(s3, MPUPLOAD_START_METHOD=method))
    assert proc.returncode == 0, proc.stderr
    assert events(proc.stdout)[-1]["event"] == "completed"
    assert sha256_object(s3.client(), bucket, "k") == sha256_file(src)


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_object_options(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    src = make_file(tmp_path / "table.csv", 11 * MiB)
    proc = upload(s3, src, f"s3://{bucket}/a/", "--part-size", "5MiB", "--metadata", "team=ml",
                  "--metadata", "run=42", "--storage-class", "STANDARD_IA", "--sse", "AES256")
    assert proc.returncode == 0, proc.stderr
    head = s3.client().head_object(Bucket=bucket, Key="a/table.csv")
    assert head["ContentType"] == "text/csv"
    assert head["Metadata"] == {"team": "ml", "run": "42"}
    assert head.get("StorageClass") == "STANDARD_IA"
    assert head.get("ServerSideEncryption") == "AES256"
    proc = upload(s3, src, f"s3://{bucket}/b.bin", "--content-type", "application/x-custom")
    assert proc.returncode == 0, proc.stderr
    assert s3.client().head_object(Bucket=bucket, Key="b.bin")["ContentType"] == "application/x-custom"


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_no_overwrite(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    first = make_file(tmp_path / "a.bin", 6 * MiB, seed=1)
    second = make_file(tmp_path / "b.bin", 6 * MiB, seed=2)
    assert upload(s3, first, f"s3://{bucket}/k", "--part-size", "5MiB").returncode == 0
    proc = upload(s3, second, f"s3://{bucket}/k", "--part-size", "5MiB", "--no-overwrite")
    assert proc.returncode == 2, proc.stderr
    assert "already exists" in proc.stderr and "Traceback" not in proc.stderr
    assert sha256_object(s3.client(), bucket, "k") == sha256_file(first)
    assert multipart_uploads(s3.client(), bucket) == []
    assert upload(s3, second, f"s3://{bucket}/new", "--no-overwrite").returncode == 0


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_checksum_modes(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    src = make_file(tmp_path / "f.bin", 11 * MiB)
    seen = {}
    for mode in ("crc32c", "crc32", "sha256", "md5", "none"):
        proc = upload(s3, src, f"s3://{bucket}/{mode}", "--part-size", "5MiB", "--checksum", mode)
        assert proc.returncode == 0, proc.stderr
        seen[mode] = events(proc.stdout)[-1]["verified"]
        assert sha256_object(s3.client(), bucket, mode) == sha256_file(src)
    assert seen["none"] == "size-only"
    assert seen["md5"] == "md5"
    assert all(v != "size-only" for m, v in seen.items() if m != "none"), seen
    proc = upload(s3, src, f"s3://{bucket}/none2", "--part-size", "5MiB", "--checksum", "none")
    assert "only the object's size was checked" in proc.stderr


def test_aws_environment_is_honoured(moto_server: S3Server, tmp_path: Path) -> None:
    """AWS_ENDPOINT_URL and the credentials chain work as for the AWS CLI (no --endpoint-url here)."""
    client = moto_server.client()
    client.create_bucket(Bucket="envbucket")
    src = make_file(tmp_path / "f.bin", 1000)
    env = cli_env(moto_server)
    assert "AWS_ENDPOINT_URL" in env
    proc = run_cli("upload", str(src), "s3://envbucket/x", env=env)
    assert proc.returncode == 0, proc.stderr
    env.pop("AWS_ENDPOINT_URL")
    env["AWS_ENDPOINT_URL_S3"] = moto_server.endpoint_url
    proc = run_cli("upload", str(src), "s3://envbucket/y", env=env)
    assert proc.returncode == 0, proc.stderr
    assert {o["Key"] for o in client.list_objects_v2(Bucket="envbucket")["Contents"]} == {"x", "y"}


def test_https_needs_the_right_ca(moto_https: S3Server, tmp_path: Path) -> None:
    moto_https.client().create_bucket(Bucket="tlsbucket")
    src = make_file(tmp_path / "f.bin", 6 * MiB)
    env = cli_env(moto_https)
    ca = env.pop("AWS_CA_BUNDLE")
    proc = run_cli("upload", str(src), "s3://tlsbucket/a", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "--ca-bundle" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("upload", str(src), "s3://tlsbucket/b", "--ca-bundle", ca, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("upload", str(src), "s3://tlsbucket/c", "--no-verify-ssl", env=env)
    assert proc.returncode == 0, proc.stderr
    keys = {o["Key"] for o in moto_https.client().list_objects_v2(Bucket="tlsbucket")["Contents"]}
    assert keys == {"b", "c"}


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_no_part_is_held_in_memory(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """Peak RSS of the whole process tree does not grow with the part size (parts are streamed)."""
    import psutil

    src = tmp_path / "sparse.bin"
    with open(src, "wb") as fh:
        fh.truncate(300 * MiB)
    proc = psutil.Popen(
        [sys.executable, "-m", "mpupload", "upload", str(src), f"s3://{bucket}/big", "--part-size", "150MiB",
         "--workers", "2", "--progress", "none"],
        env=cli_env(s3), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    peak = 0
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, max(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass
        try:
            proc.wait(0.05)
        except psutil.TimeoutExpired:
            pass
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert peak < 150 * MiB, f"a process reached {peak / MiB:.0f} MiB with 150 MiB parts"


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_sse_kms_is_verified_by_what_the_store_answers(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """Whether an ETag is an MD5 is decided by what the store answers (the probe), never by ``--sse`` alone:
    these stores' ETags stay MD5s under ``--sse aws:kms``, so the object is verified by MD5, without a warning.
    (A store whose KMS ETags are not MD5s: tests/integration/test_trust.py.)"""
    src = make_file(tmp_path / "f.bin", 11 * MiB)
    proc = upload(s3, src, f"s3://{bucket}/k", "--part-size", "5MiB", "--sse", "aws:kms")
    assert proc.returncode == 0, proc.stderr
    assert events(proc.stdout)[-1]["verified"] == "md5"
    assert "only the" not in proc.stderr
    assert s3.client().head_object(Bucket=bucket, Key="k")["ServerSideEncryption"] == "aws:kms"
    assert sha256_object(s3.client(), bucket, "k") == sha256_file(src)
