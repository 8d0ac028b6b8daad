"""``--resume``: interrupted uploads continue where they stopped and end in a byte-identical object.

Real CLI processes killed with real signals; a logging proxy counts what the second run sends.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.conftest import SERVERS
from tests.support.cli import (
    CliProcess,
    cli_env,
    events,
    make_file,
    multipart_uploads,
    run_cli,
    sha256_file,
    sha256_object,
    start_cli,
)
from tests.support.proxy import ProxyHandle, proxy_for
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
PART = 5 * MiB
SIZE = 12 * PART + 12345  # 13 parts


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


def _parts_sent(proxy: ProxyHandle, upload_id: str | None, skip: int = 0) -> list[int]:
    """Part numbers of the UploadPart requests for ``upload_id`` whose body passed the proxy whole
    (the checksum probe uses a throwaway upload of its own and does not count)."""
    out = []
    for r in proxy.requests()[skip:]:
        if r["method"] == "PUT" and "partNumber=" in r["query"] and r.get("complete", True):
            q = dict(kv.split("=", 1) for kv in r["query"].split("&") if "=" in kv)
            if upload_id is None or unquote(q.get("uploadId", "")) == upload_id:
                out.append(int(q["partNumber"]))
    return out


@pytest.fixture
def slow(s3: S3Server, tmp_path: Path) -> Iterator[ProxyHandle]:
    proxy = proxy_for(s3, log_path=tmp_path / "slow.jsonl", throttle_bps=4 * MiB)
    yield proxy
    proxy.stop()


def _interrupted_first_run(s3: S3Server, slow: ProxyHandle, src: Path, bucket: str, state: Path,
                           *extra: str, min_parts: int = 3) -> CliProcess:
    cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--workers", "2",
                    "--progress", "json", *extra,
                    env=cli_env(slow.s3server(s3), MPUPLOAD_STATE_DIR=str(state)))
    cli.wait_line(lambda l: l.startswith("{") and json.loads(l)["parts_done"] >= min_parts, 90)
    return cli


def _resume(s3: S3Server, slow: ProxyHandle, src: Path, bucket: str, state: Path, *extra: str) \
        -> tuple[Any, list[int]]:
    """The second run. It goes to the same endpoint URL as the first (the journal belongs to that endpoint),
    served by a fresh, unthrottled proxy on the first one's port: requests of the first run that were still
    draining through the old proxy cannot be counted as the second run's. Returns the run and the part
    numbers it sent."""
    port = slow.port
    slow.stop()
    second = proxy_for(s3, log_path=Path(str(slow.log_path) + ".second"), listen_port=port)
    try:
        proc = run_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--resume", "--progress",
                       "json", *extra, env=cli_env(second.s3server(s3), MPUPLOAD_STATE_DIR=str(state)))
        evs = events(proc.stdout)
        upload_id = evs[0].get("store_upload_id") if evs else None
        return proc, _parts_sent(second, upload_id)
    finally:
        second.stop()


def _assert_whole(s3: S3Server, bucket: str, src: Path) -> None:
    client = s3.client()
    assert sha256_object(client, bucket, "k") == sha256_file(src)
    assert multipart_uploads(client, bucket) == []


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_keep_on_interrupt_then_resume_sends_only_the_missing_parts(
        s3: S3Server, slow: ProxyHandle, bucket: str, tmp_path: Path, state_dir: Path) -> None:
    src = make_file(tmp_path / "f.bin", SIZE, seed=21)
    cli = _interrupted_first_run(s3, slow, src, bucket, state_dir, "--keep-on-interrupt")
    try:
        os.killpg(cli.pid, signal.SIGINT)
        assert cli.wait(30) == 130, cli.stderr
    finally:
        cli.kill_group()
    stopped = events(cli.stdout)[-1]
    assert stopped["event"] == "stopped" and stopped["aborted"] is False
    last = cli.stderr.strip().splitlines()[-1]
    assert last.startswith("mpupload: stopped:") and last.endswith(stopped["resume_command"]), last
    assert stopped["resume_command"].endswith("--resume")
    assert f"s3://{bucket}/k" in stopped["resume_command"] and str(src) in stopped["resume_command"]
    assert list(state_dir.glob("*.json")), "the journal is kept with the upload"

    proc, sent = _resume(s3, slow, src, bucket, state_dir)
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    started, final = evs[0], evs[-1]
    assert started["event"] == "started" and started["resumed_parts"] >= 3
    assert started["resumed_bytes"] == started["resumed_parts"] * PART
    assert started["bytes_done"] == started["resumed_bytes"]
    assert final["event"] == "completed" and final["bytes_done"] == SIZE
    assert final["verified"] in ("md5", "crc32c")
    assert all(e["bytes_done"] >= started["resumed_bytes"] for e in evs)
    assert len(sent) == 13 - started["resumed_parts"], sent  # only the missing parts went again
    assert len(set(sent)) == len(sent)
    _assert_whole(s3, bucket, src)
    assert not list(state_dir.glob("*.json")), "a finished upload leaves no journal"


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
@pytest.mark.parametrize("when", ["early", "midway"])
def test_sigkill_then_resume(s3: S3Server, slow: ProxyHandle, bucket: str, tmp_path: Path, state_dir: Path,
                             when: str) -> None:
    src = make_file(tmp_path / "f.bin", SIZE, seed=22)
    cli = _interrupted_first_run(s3, slow, src, bucket, state_dir, min_parts=0 if when == "early" else 4)
    cli.kill_group()  # SIGKILL to the whole process group: no cleanup at all
    proc, sent = _resume(s3, slow, src, bucket, state_dir)
    assert proc.returncode == 0, proc.stderr
    started = events(proc.stdout)[0]
    if when == "midway":
        assert started["resumed_parts"] >= 4
    assert len(sent) == 13 - started["resumed_parts"]
    _assert_whole(s3, bucket, src)


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_resume_without_a_journal_finds_the_upload_on_the_store(
        s3: S3Server, slow: ProxyHandle, bucket: str, tmp_path: Path, state_dir: Path) -> None:
    src = make_file(tmp_path / "f.bin", SIZE, seed=23)
    cli = _interrupted_first_run(s3, slow, src, bucket, state_dir, min_parts=4)
    cli.kill_group()
    for journal in state_dir.glob("*.json"):
        journal.unlink()
    proc, sent = _resume(s3, slow, src, bucket, state_dir)
    assert proc.returncode == 0, proc.stderr
    started = events(proc.stdout)[0]
    assert started["resumed_parts"] >= 4  # verified against the local bytes, not trusted blindly
    assert len(sent) == 13 - started["resumed_parts"]
    _assert_whole(s3, bucket, src)


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_changed_source_is_refused(s3: S3Server, slow: ProxyHandle, bucket: str, tmp_path: Path,
                                   state_dir: Path) -> None:
    src = make_file(tmp_path / "f.bin", SIZE, seed=24)
    cli = _interrupted_first_run(s3, slow, src, bucket, state_dir, "--keep-on-interrupt")
    os.killpg(cli.pid, signal.SIGINT)
    cli.wait(30)
    with open(src, "r+b") as fh:  # same size, other bytes in the middle
        fh.seek(SIZE // 2)
        fh.write(b"edited")
    proc, sent = _resume(s3, slow, src, bucket, state_dir)
    assert proc.returncode == 2, proc.stderr
    assert "changed since the interrupted upload" in proc.stderr and "without --resume" in proc.stderr
    assert sent == []
    client = s3.client()
    with pytest.raises(Exception):
        client.head_object(Bucket=bucket, Key="k")  # nothing spliced
    # starting over, as the message says, gives the new file and aborts the old upload
    again = proxy_for(s3, listen_port=slow.port)
    try:
        proc = run_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB",
                       env=cli_env(again.s3server(s3), MPUPLOAD_STATE_DIR=str(state_dir)))
    finally:
        again.stop()
    assert proc.returncode == 0, proc.stderr
    _assert_whole(s3, bucket, src)


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_corrupt_journal_is_set_aside(s3: S3Server, slow: ProxyHandle, bucket: str, tmp_path: Path,
                                      state_dir: Path) -> None:
    src = make_file(tmp_path / "f.bin", SIZE, seed=25)
    cli = _interrupted_first_run(s3, slow, src, bucket, state_dir, min_parts=2)
    cli.kill_group()
    [journal] = state_dir.glob("*.json")
    journal.write_text('{"version": 1, "kind": "mpupload-journal", "parts": [garbage')
    proc, _ = _resume(s3, slow, src, bucket, state_dir)
    assert proc.returncode == 0, proc.stderr
    assert "could not be trusted" in proc.stderr
    assert list(state_dir.glob("*.corrupt-*"))
    _assert_whole(s3, bucket, src)


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_two_runs_on_one_journal(s3: S3Server, slow: ProxyHandle, bucket: str, tmp_path: Path,
                                 state_dir: Path) -> None:
    src = make_file(tmp_path / "f.bin", SIZE, seed=26)
    cli = _interrupted_first_run(s3, slow, src, bucket, state_dir, min_parts=1)
    try:
        proc = run_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--resume",
                       env=cli_env(slow.s3server(s3), MPUPLOAD_STATE_DIR=str(state_dir)))
        assert proc.returncode == 2, proc.stderr
        assert "another mpupload run" in proc.stderr and f"pid {cli.pid}" in proc.stderr
        assert len([l for l in proc.stderr.splitlines() if l.strip()]) == 1
    finally:
        cli.kill_group()


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_nothing_to_resume_uploads_fresh(s3: S3Server, slow: ProxyHandle, bucket: str, tmp_path: Path,
                                        state_dir: Path) -> None:
    src = make_file(tmp_path / "f.bin", SIZE, seed=27)
    proc, sent = _resume(s3, slow, src, bucket, state_dir)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to resume" in proc.stderr
    assert events(proc.stdout)[0]["resumed_parts"] == 0
    assert sorted(sent) == list(range(1, 14))
    _assert_whole(s3, bucket, src)


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_a_fresh_run_aborts_the_unfinished_upload_it_replaces(
        s3: S3Server, slow: ProxyHandle, bucket: str, tmp_path: Path, state_dir: Path) -> None:
    src = make_file(tmp_path / "f.bin", SIZE, seed=28)
    cli = _interrupted_first_run(s3, slow, src, bucket, state_dir, min_parts=1)
    cli.kill_group()
    [old] = multipart_uploads(s3.client(), bucket)
    proc = run_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--workers", "4",
                   env=cli_env(slow.s3server(s3), MPUPLOAD_STATE_DIR=str(state_dir)))
    assert proc.returncode == 0, proc.stderr
    assert old["UploadId"] in proc.stderr and "--resume" in proc.stderr
    _assert_whole(s3, bucket, src)  # the old upload was aborted, not left behind
