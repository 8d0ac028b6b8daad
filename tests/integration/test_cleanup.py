"""``mpupload cleanup`` and ``mpupload resumable`` as real processes against real S3 servers.

The uploads are left the way interrupted runs leave them: CreateMultipartUpload plus a part or two, never
completed. Note that moto 5.2.5 reports every upload as initiated on 2010-11-10; cleanup still keeps young
uploads there because it decides on the time of the newest part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mpupload.journal import Journal, PartRecord, SourceFingerprint, journal_path
from tests.conftest import SERVERS
from tests.support.cli import cli_env, multipart_uploads, run_cli
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
#: whether the store answers GetBucketLifecycleConfiguration (both do: NoSuchLifecycleConfiguration, then the rule)
LIFECYCLE_SUPPORTED = {"moto": True, "ceph": True}
#: how a young upload with parts is kept: moto's bogus initiation date makes it look old, its parts do not
KEEP_REASON = {"moto": "keep (a part was uploaded within 24h)", "ceph": "keep (younger than 24h)"}


def _interrupted(client: Any, bucket: str, key: str, parts: int) -> str:
    upload_id: str = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    for number in range(1, parts + 1):
        client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=b"p" * 1000 * number)
    return upload_id


@pytest.fixture
def scene(s3: S3Server, bucket: str) -> dict[str, str]:
    """Two interrupted uploads under ``data/``, one under ``other/``, and a completed object: key -> upload id."""
    client = s3.client()
    client.put_object(Bucket=bucket, Key="data/done.bin", Body=b"complete")
    return {
        "data/one.bin": _interrupted(client, bucket, "data/one.bin", 1),
        "data/two.bin": _interrupted(client, bucket, "data/two.bin", 2),
        "other/three.bin": _interrupted(client, bucket, "other/three.bin", 1),
    }


def _live(s3: S3Server, bucket: str) -> dict[str, str]:
    return {u["Key"]: u["UploadId"] for u in multipart_uploads(s3.client(), bucket)}


def _journal(state: Path, s3: S3Server, bucket: str, key: str, upload_id: str, *, endpoint: str | None = None,
             parts_done: int = 1, source: str = "/data/src.bin") -> Journal:
    state.mkdir(parents=True, exist_ok=True)
    ep = endpoint or s3.endpoint_url
    journal = Journal(
        path=journal_path(source, ep, bucket, key, directory=state),
        source=SourceFingerprint(source, 4 * 8 * MiB, 1, 2, 3, "0" * 64),
        endpoint=ep, bucket=bucket, key=key, upload_id=upload_id, part_size=8 * MiB, parts_total=4,
        checksum_algorithm="crc32c", md5=False,
        parts={n: PartRecord(8 * MiB, f"etag{n}") for n in range(1, parts_done + 1)},
    )
    journal.save()
    return journal


def _one_line(stderr: str, expected: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert expected in lines[0], lines[0]


def _row(stdout: str, key: str) -> str:
    rows = [line for line in stdout.splitlines() if line.startswith(key + " ")]
    assert len(rows) == 1, stdout
    return rows[0]


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_dry_run_lists_and_changes_nothing(s3: S3Server, bucket: str, scene: dict[str, str], tmp_path: Path) -> None:
    state = tmp_path / "state"
    stale = _journal(state, s3, bucket, "data/gone.bin", "no-such-upload")
    before = _live(s3, bucket)
    env = cli_env(s3, MPUPLOAD_STATE_DIR=str(state))
    proc = run_cli("cleanup", f"s3://{bucket}/data/", "--dry-run", "--older-than", "0s", env=env)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert "would abort" in _row(proc.stdout, "data/one.bin") and "would abort" in _row(proc.stdout, "data/two.bin")
    assert "2.9 KiB" in _row(proc.stdout, "data/two.bin")  # 1000 + 2000 bytes in 2 parts
    assert "other/three.bin" not in proc.stdout and "data/done.bin" not in proc.stdout
    assert "dry run: would abort 2 uploads" in proc.stdout
    assert f"would remove 1 stale local journal:\n  {stale.path}" in proc.stdout
    assert _live(s3, bucket) == before
    assert stale.path.exists()

    default = run_cli("cleanup", f"s3://{bucket}/data/", "--dry-run", env=env)
    assert default.returncode == 0, default.stderr
    assert KEEP_REASON[s3.name] in _row(default.stdout, "data/one.bin")
    assert _live(s3, bucket) == before


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_older_than_zero_aborts_exactly_the_prefix(s3: S3Server, bucket: str, scene: dict[str, str],
                                                     tmp_path: Path) -> None:
    state = tmp_path / "state"
    doomed = _journal(state, s3, bucket, "data/one.bin", scene["data/one.bin"])
    outside = _journal(state, s3, bucket, "other/three.bin", scene["other/three.bin"])
    env = cli_env(s3, MPUPLOAD_STATE_DIR=str(state))
    proc = run_cli("cleanup", f"s3://{bucket}/data/", "--older-than", "0s", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {(u["key"], u["action"], u["result"]) for u in report["uploads"]} == {
        ("data/one.bin", "abort", "aborted"), ("data/two.bin", "abort", "aborted")}
    assert {u["key"]: u["parts"] for u in report["uploads"]} == {"data/one.bin": 1, "data/two.bin": 2}
    assert _live(s3, bucket) == {"other/three.bin": scene["other/three.bin"]}
    # the journal of an upload this run aborted is stale now; the one outside the prefix is not touched
    assert [j["path"] for j in report["journals"]["removed"]] == [str(doomed.path)]
    assert not doomed.path.exists() and outside.path.exists()
    assert s3.client().head_object(Bucket=bucket, Key="data/done.bin")["ContentLength"] == 8

    again = run_cli("cleanup", f"s3://{bucket}/data/", "--older-than", "0s", env=env)
    assert again.returncode == 0, again.stderr
    assert f"no incomplete multipart uploads in s3://{bucket}/data/" in again.stdout


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_default_age_aborts_nothing_young(s3: S3Server, bucket: str, scene: dict[str, str], tmp_path: Path) -> None:
    env = cli_env(s3, MPUPLOAD_STATE_DIR=str(tmp_path / "state"))
    proc = run_cli("cleanup", f"s3://{bucket}", env=env)
    assert proc.returncode == 0, proc.stderr
    for key in scene:
        assert KEEP_REASON[s3.name] in _row(proc.stdout, key)
    assert "aborted 0 of 0 uploads" in proc.stdout
    assert _live(s3, bucket) == scene


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_stale_journal_removed_live_one_kept(s3: S3Server, bucket: str, scene: dict[str, str],
                                             tmp_path: Path) -> None:
    client = s3.client()
    aborted = _interrupted(client, bucket, "data/aborted.bin", 1)
    client.abort_multipart_upload(Bucket=bucket, Key="data/aborted.bin", UploadId=aborted)
    state = tmp_path / "state"
    stale = _journal(state, s3, bucket, "data/aborted.bin", aborted)
    live = _journal(state, s3, bucket, "data/one.bin", scene["data/one.bin"], source="/data/one.bin")
    elsewhere = _journal(state, s3, bucket, "data/aborted.bin", aborted, endpoint="http://127.0.0.2:1")
    other_bucket = _journal(state, s3, "another-bucket", "data/aborted.bin", aborted)
    env = cli_env(s3, MPUPLOAD_STATE_DIR=str(state))
    proc = run_cli("cleanup", f"s3://{bucket}/data/", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "removed 1 stale local journal\n" in proc.stdout
    assert not stale.path.exists()
    assert live.path.exists() and elsewhere.path.exists() and other_bucket.path.exists()
    assert _live(s3, bucket) == scene


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_lifecycle_warning(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    env = cli_env(s3, MPUPLOAD_STATE_DIR=str(tmp_path / "state"))
    proc = run_cli("cleanup", f"s3://{bucket}", env=env)
    assert proc.returncode == 0, proc.stderr
    if not LIFECYCLE_SUPPORTED[s3.name]:
        _one_line(proc.stderr, "could not read the lifecycle rules")
        return
    _one_line(proc.stderr, f"bucket {bucket} has no lifecycle rule that aborts incomplete multipart uploads")
    assert f"aws s3api put-bucket-lifecycle-configuration --bucket {bucket} " in proc.stderr
    assert '"DaysAfterInitiation":7' in proc.stderr and f"--endpoint-url {s3.endpoint_url}" in proc.stderr

    s3.client().put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [{
        "ID": "abort-mpu", "Status": "Enabled", "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}]})
    proc = run_cli("cleanup", f"s3://{bucket}", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    report = json.loads(run_cli("cleanup", f"s3://{bucket}", "--json", env=env).stdout)
    assert report["lifecycle_abort_rule"] is True


BAD = [
    ("not an s3 url", lambda b: [f"{b}/data"], "is not an S3 URL"),
    ("no bucket", lambda b: ["s3:///data"], "has no bucket"),
    ("bad duration", lambda b: [f"s3://{b}", "--older-than", "soon"], "cannot read duration 'soon'"),
    ("missing bucket", lambda b: ["s3://no-such-bucket-mpupload/x"], "does not exist"),
]


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
@pytest.mark.parametrize(("name", "argv", "expected"), BAD, ids=[c[0] for c in BAD])
def test_bad_input(s3: S3Server, bucket: str, scene: dict[str, str], tmp_path: Path, name: str, argv: Any,
                   expected: str) -> None:
    proc = run_cli("cleanup", *argv(bucket), env=cli_env(s3, MPUPLOAD_STATE_DIR=str(tmp_path / "state")))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    _one_line(proc.stderr, expected)
    assert proc.stdout == ""
    assert _live(s3, bucket) == scene


def test_resumable_lists_journals_and_corrupt_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = cli_env(MPUPLOAD_STATE_DIR=str(state))
    empty = run_cli("resumable", env=env)
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.strip() == f"no resumable uploads recorded on this machine (state directory: {state})"

    server = S3Server("any", "http://127.0.0.1:9000", "k", "s")
    first = _journal(state, server, "bkt", "data/a.bin", "upload-a", parts_done=3, source="/data/a.bin")
    second = _journal(state, server, "bkt", "data/b.bin", "upload-b", parts_done=1, source="/data/b.bin")
    second.endpoint = None  # AWS itself: the resume command needs no --endpoint-url
    second.save()
    corrupt = state / ("0" * 32 + ".json")
    corrupt.write_text("{not json")
    proc = run_cli("resumable", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout
    line_a = next(line for line in lines if line.startswith("/data/a.bin -> s3://bkt/data/a.bin"))
    assert "75.0% 24.0 MiB / 32.0 MiB, parts 3/4" in line_a and "upload upload-a" in line_a
    assert line_a.endswith("mpupload upload /data/a.bin s3://bkt/data/a.bin --resume "
                           "--endpoint-url http://127.0.0.1:9000")
    line_b = next(line for line in lines if line.startswith("/data/b.bin -> s3://bkt/data/b.bin"))
    assert "25.0% 8.0 MiB / 32.0 MiB, parts 1/4" in line_b
    assert line_b.endswith("mpupload upload /data/b.bin s3://bkt/data/b.bin --resume")
    assert any(line.startswith(f"{corrupt}: corrupt journal") for line in lines)
    assert first.path.exists() and corrupt.exists()  # listing changes nothing

    report = json.loads(run_cli("resumable", "--json", env=env).stdout)
    assert {u["upload_id"] for u in report["uploads"]} == {"upload-a", "upload-b"}
    assert [c["path"] for c in report["corrupt"]] == [str(corrupt)]
