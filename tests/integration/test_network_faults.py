"""Network faults between the CLI and the store, from a fault-injecting proxy process (no stubs, no mocks):
connection resets mid-part, 503 SlowDown, stalls and truncated answers end in a correct object, or in a
clean, resumable failure (exit 1, upload and journal kept, the resume command printed); progress never
goes above 100 %; a crash while CompleteMultipartUpload is under way resumes to "already complete"."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

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
SIZE = 6 * 5 * MiB + 4321  # 7 parts of 5 MiB


def _check_events(stdout: str) -> list[dict[str, Any]]:
    evs = events(stdout)
    assert evs, "no events"
    for e in evs:
        assert 0 <= e["bytes_done"] <= e["total_bytes"] and e["percent"] <= 100, e
    return evs


FAULTS = {
    "reset mid-part": {"reset_part": 3, "reset_after": 2 * MiB},
    "503 SlowDown": {"slowdown": 3},
    "stalled part": {"stall_part": 2, "stall_seconds": 600},
    "truncated answer": {"truncate_response": 2},
    "all of them": {"reset_part": 4, "slowdown": 2, "stall_part": 2, "stall_seconds": 600, "truncate_response": 1},
}


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_ends_in_a_correct_object(s3: S3Server, bucket: str, tmp_path: Path, fault: str) -> None:
    src = make_file(tmp_path / "f.bin", SIZE, seed=31)
    proxy = proxy_for(s3, log_path=tmp_path / "faults.jsonl", **FAULTS[fault])
    try:
        began = time.monotonic()
        proc = run_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--progress", "json",
                       "--stall-timeout", "3", env=cli_env(proxy.s3server(s3)), timeout=300)
        took = time.monotonic() - began
        log = proxy.requests()
    finally:
        proxy.stop()
    assert proc.returncode == 0, proc.stderr
    if fault == "stalled part":
        # a stalled request is never logged (its body never passes); the run waited out the stall timeout
        assert took >= 3.0
    else:
        assert any(r.get("fault") for r in log), "the fault was injected"
    final = _check_events(proc.stdout)[-1]
    assert final["event"] == "completed" and final["bytes_done"] == SIZE
    assert sha256_object(s3.client(), bucket, "k") == sha256_file(src)
    assert multipart_uploads(s3.client(), bucket) == []


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_faults_beyond_the_retry_budget_fail_cleanly_and_resume(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """Every UploadPart answered 503 for longer than the retries last: exit 1, the upload and its journal are
    kept, the resume command is printed; running it (the store healthy again) completes the object."""
    src = make_file(tmp_path / "f.bin", SIZE, seed=32)
    state = tmp_path / "state"
    state.mkdir()
    proxy = proxy_for(s3, log_path=tmp_path / "faults.jsonl", slowdown=10_000)
    try:
        env = cli_env(proxy.s3server(s3), MPUPLOAD_STATE_DIR=str(state), AWS_MAX_ATTEMPTS="1")
        proc = run_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--progress", "json",
                       "--workers", "2", env=env, timeout=300)
        port = proxy.port
    finally:
        proxy.stop()
    assert proc.returncode == 1, proc.stderr
    failed = _check_events(proc.stdout)[-1]
    assert failed["event"] == "failed" and "SlowDown" in failed["error"]
    assert failed["resume_command"].endswith("--resume")
    assert [u["UploadId"] for u in multipart_uploads(s3.client(), bucket)] == [failed["store_upload_id"]]
    assert list(state.glob("*.json")), "the journal is kept"
    # the same endpoint, healthy now
    healthy = proxy_for(s3, listen_port=port)
    try:
        proc = run_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--progress", "json",
                       "--resume", env=cli_env(healthy.s3server(s3), MPUPLOAD_STATE_DIR=str(state)))
    finally:
        healthy.stop()
    assert proc.returncode == 0, proc.stderr
    assert sha256_object(s3.client(), bucket, "k") == sha256_file(src)
    assert multipart_uploads(s3.client(), bucket) == []


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_sigkill_during_complete_then_resume_reports_done(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    src = make_file(tmp_path / "f.bin", SIZE, seed=33)
    state = tmp_path / "state"
    state.mkdir()
    proxy = proxy_for(s3, log_path=tmp_path / "faults.jsonl", delay_complete_response=600)
    port = proxy.port
    try:
        cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--progress", "json",
                        env=cli_env(proxy.s3server(s3), MPUPLOAD_STATE_DIR=str(state)))
        try:
            cli.wait_line(lambda l: l.startswith("{") and json.loads(l)["status"] == "finalizing", 120)
            client = s3.client()
            # the store completes the object while the CLI still waits for the answer: then it dies
            from tests.support.s3server import wait_until

            wait_until(lambda: client.head_object(Bucket=bucket, Key="k")["ContentLength"] == SIZE, 60,
                       "the store to complete the object")
        finally:
            cli.kill_group()
    finally:
        proxy.stop()
    assert list(state.glob("*.json"))
    again = proxy_for(s3, listen_port=port,
                        log_path=tmp_path / "again.jsonl")
    try:
        proc = run_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--progress", "json",
                       "--resume", env=cli_env(again.s3server(s3), MPUPLOAD_STATE_DIR=str(state)))
        sent = [r for r in again.requests() if r["method"] == "PUT"]
    finally:
        again.stop()
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    assert evs[0]["resumed_bytes"] == SIZE and evs[-1]["event"] == "completed"
    assert evs[-1]["verified"] in ("md5", "crc32c")
    assert sent == []  # nothing was sent again
    assert sha256_object(s3.client(), bucket, "k") == sha256_file(src)
    assert not list(state.glob("*.json"))
