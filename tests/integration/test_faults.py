"""Corruption in transit and a source that changes: no upload completes silently wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SERVERS
from tests.support.cli import (
    cli_env,
    events,
    make_file,
    multipart_uploads,
    run_cli,
    sha256_file,
    sha256_object,
    start_cli,
)
from tests.support.proxy import proxy_for
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
@pytest.mark.parametrize("checksum", ["auto", "crc32c", "md5"])
def test_flipped_byte_in_a_part_is_caught(s3: S3Server, bucket: str, tmp_path: Path, checksum: str) -> None:
    src = make_file(tmp_path / "f.bin", 17 * MiB, seed=11)
    proxy = proxy_for(s3, log_path=tmp_path / "proxy.jsonl", flip_part=2)
    try:
        proc = run_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--checksum", checksum,
                       "--progress", "json", env=cli_env(proxy.s3server(s3)))
        log = proxy.requests()
    finally:
        proxy.stop()
    flipped = [r for r in log if r["flipped"]]
    assert len(flipped) == 1 and "partNumber=2" in flipped[0]["query"]
    part2 = [r for r in log if r["method"] == "PUT" and "partNumber=2&" in r["query"] + "&"]
    assert len(part2) >= 2, "the corrupted part must have been sent again"
    # either the corruption was caught and the part re-sent (a correct object), or the command failed
    if proc.returncode == 0:
        assert events(proc.stdout)[-1]["verified"] != "size-only"
        assert sha256_object(s3.client(), bucket, "k") == sha256_file(src)
    else:
        assert proc.returncode == 1, proc.stderr
        with pytest.raises(Exception):
            s3.client().head_object(Bucket=bucket, Key="k")
    assert multipart_uploads(s3.client(), bucket) == []
    assert proc.returncode == 0, proc.stderr  # and with one flip, a retry always succeeds


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_flipped_byte_in_a_single_put_is_caught(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    src = make_file(tmp_path / "f.bin", 3 * MiB, seed=12)
    proxy = proxy_for(s3, log_path=tmp_path / "proxy.jsonl", flip_part=0)
    try:
        proc = run_cli("upload", str(src), f"s3://{bucket}/k", "--progress", "json",
                       env=cli_env(proxy.s3server(s3)))
        log = proxy.requests()
    finally:
        proxy.stop()
    assert sum(r["flipped"] for r in log) == 1
    assert proc.returncode == 0, proc.stderr
    assert sha256_object(s3.client(), bucket, "k") == sha256_file(src)


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_source_changed_during_upload_aborts_with_exit_2(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    src = make_file(tmp_path / "f.bin", 30 * MiB)
    proxy = proxy_for(s3, log_path=tmp_path / "proxy.jsonl", throttle_bps=4 * MiB)
    try:
        cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--workers", "2",
                        "--progress", "json", env=cli_env(proxy.s3server(s3)))
        try:
            cli.wait_line(lambda l: l.startswith("{") and json.loads(l)["bytes_done"] > 0, 60)
            with open(src, "ab") as fh:
                fh.write(b"appended while uploading")
            assert cli.wait(120) == 2, cli.stderr
        finally:
            cli.kill_group()
    finally:
        proxy.stop()
    assert "changed during the upload" in cli.stderr
    assert events(cli.stdout)[-1]["event"] == "failed"
    assert multipart_uploads(s3.client(), bucket) == []
    with pytest.raises(Exception):
        s3.client().head_object(Bucket=bucket, Key="k")


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_store_gone_mid_upload_keeps_the_upload_and_exits_1(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """Retrying later can succeed: the multipart upload is kept, the command exits 1 and says so."""
    src = make_file(tmp_path / "f.bin", 30 * MiB)
    proxy = proxy_for(s3, log_path=tmp_path / "proxy.jsonl", throttle_bps=4 * MiB)
    env = cli_env(proxy.s3server(s3), AWS_MAX_ATTEMPTS="1")
    cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--workers", "2",
                    "--progress", "json", env=env)
    try:
        cli.wait_line(lambda l: l.startswith("{") and json.loads(l)["bytes_done"] > 0, 60)
        proxy.stop()  # the endpoint disappears: connections are refused from now on
        assert cli.wait(120) == 1, cli.stderr
    finally:
        cli.kill_group()
        proxy.stop()
    last = cli.stderr.strip().splitlines()[-1]
    assert last.startswith("mpupload: error:") and "continue it with mpupload upload" in last, last
    assert last.endswith("--resume")
    final = events(cli.stdout)[-1]
    assert final["event"] == "failed" and final["store_upload_id"]
    uploads = multipart_uploads(s3.client(), bucket)
    assert [u["UploadId"] for u in uploads] == [final["store_upload_id"]]
