"""Brokered uploads, CLI half (issue 15): ``mpupload upload FILE KEY`` (no ``s3://``) as a real process with no
AWS credentials anywhere (no ``AWS_*`` variable, an empty HOME), against a real ``mpupload serve --storage`` on
moto and Ceph RGW. The store is read only by the test, with the server's credentials."""

from __future__ import annotations

import hashlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SERVERS
from tests.integration.api_support import Api, until
from tests.integration.test_brokered import PREFIX, serve, store_uploads
from tests.support.cli import ROOT, CliProcess, events, make_file, mpupload_cmd
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


@pytest.fixture
def served(s3: S3Server, bucket: str, tmp_path: Path) -> Iterator[tuple[Api, S3Server, str]]:
    api = serve(s3, bucket, tmp_path, MPUPLOAD_SIGN_EXPIRES="900", MPUPLOAD_SIGN_MAX_PER_MINUTE="20000")
    try:
        yield api, s3, bucket
    finally:
        api.stop()


def bare_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment with no AWS credentials anywhere: no ``AWS_*`` nor ``MPUPLOAD_*`` variable, an empty HOME."""
    import os

    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MPUPLOAD_", "BOTO"))}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", MPUPLOAD_STATE_DIR=str(home / "state"), **extra)
    return env


def user_env(api: Api, home: Path, user: str = "alice") -> dict[str, str]:
    return bare_env(home, MPUPLOAD_API_URL=api.url, MPUPLOAD_TOKEN=api.token(user))


def run(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(mpupload_cmd("upload", *args), env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, stdin=subprocess.DEVNULL)


def start(env: dict[str, str], *args: str) -> CliProcess:
    return CliProcess(subprocess.Popen(mpupload_cmd("upload", *args), env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True,
                                       stdin=subprocess.DEVNULL))


def records(api: Api, env: dict[str, str]) -> list[dict[str, Any]]:
    answer = httpx.get(f"{api.url}/api/v1/uploads", headers={"Authorization": f"Bearer {env['MPUPLOAD_TOKEN']}"},
                       timeout=10)
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def stored(s3: S3Server, bucket: str, key: str) -> bytes:
    return bytes(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_a_file_and_a_small_one_go_brokered_without_aws_credentials(served: tuple[Api, S3Server, str],
                                                                      tmp_path: Path) -> None:
    """A 13 MiB file in 5 MiB parts and a 3 KiB one (a one-part multipart upload) land under PREFIX/alice/, equal
    to the files; the server's record is the run's (one record each, brokered, completed, verified), and the
    JSON events name it."""
    api, s3, bucket = served
    env = user_env(api, tmp_path / "home")
    big = make_file(tmp_path / "big.bin", 13 * MiB, seed=1)
    small = make_file(tmp_path / "small.txt", 3 * 1024, seed=2)

    done = run(env, str(big), "sets/big.bin", "--part-size", "5MiB", "--progress", "json")
    assert done.returncode == 0, done.stderr
    evs = events(done.stdout)
    started, final = evs[0], evs[-1]
    assert started["event"] == "started" and final["event"] == "completed", (started, final)
    assert started["multipart"] is True and started["parts_total"] == 3
    assert final["key"] == f"{PREFIX}/alice/sets/big.bin"
    assert stored(s3, bucket, f"{PREFIX}/alice/sets/big.bin") == big.read_bytes()

    done = run(env, str(small), "notes/", "--progress", "json")  # a key ending in / takes the file's name
    assert done.returncode == 0, done.stderr
    assert stored(s3, bucket, f"{PREFIX}/alice/notes/small.txt") == small.read_bytes()
    small_id = events(done.stdout)[-1]["upload_id"]

    mine = {r["storage_key"]: r for r in records(api, env)}
    assert set(mine) == {f"{PREFIX}/alice/sets/big.bin", f"{PREFIX}/alice/notes/small.txt"}, mine
    record = mine[f"{PREFIX}/alice/sets/big.bin"]
    assert record["id"] == final["upload_id"] == started["upload_id"]
    assert record["brokered"] is True and record["status"] == "completed" and record["multipart"] is True
    assert record["bytes_done"] == record["total_bytes"] == 13 * MiB and record["verified"], record
    assert mine[f"{PREFIX}/alice/notes/small.txt"]["id"] == small_id
    assert store_uploads(s3, bucket) == []


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_no_server_or_no_storage_is_one_line_and_exit_2(s3: S3Server, tmp_path: Path) -> None:
    """Without an API server configured, or with one that has no storage, the CLI says so in one line (exit 2)
    before anything; so does an option that needs the user's own access to the store."""
    file = make_file(tmp_path / "f.bin", 1024)
    done = run(bare_env(tmp_path / "nobody"), str(file), "sets/f.bin")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "no API server is configured" in line and "mpupload login" in line, line

    plain = Api(tmp_path / "plain").prepare("alice")  # a server without --storage
    try:
        env = user_env(plain, tmp_path / "home")
        done = run(env, str(file), "sets/f.bin")
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert "no storage for brokered uploads" in line, line
        assert records(plain, env) == []

        for extra in (["--sse", "AES256"], ["--endpoint-url", s3.endpoint_url], ["--verify", "read-back"],
                      ["--no-report"]):
            done = run(env, str(file), "sets/f.bin", *extra)
            assert done.returncode == 2, (extra, done.stderr)
            assert len(done.stderr.strip().splitlines()) == 1 and "s3://" in done.stderr, (extra, done.stderr)

        env["MPUPLOAD_TOKEN"] = "not-a-token"
        done = run(env, str(file), "sets/f.bin")
        assert done.returncode == 3, done.stderr
    finally:
        plain.stop()


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_a_key_outside_the_rules_is_refused_and_leaves_nothing(served: tuple[Api, S3Server, str],
                                                                tmp_path: Path) -> None:
    api, s3, bucket = served
    env = user_env(api, tmp_path / "home")
    file = make_file(tmp_path / "f.bin", 6 * MiB)
    for key in ("../bob/f.bin", "a//b.bin", "/abs.bin"):
        done = run(env, str(file), key)
        assert done.returncode == 2, (key, done.stderr)
        assert "refused the upload" in done.stderr, (key, done.stderr)
    assert [r for r in records(api, env) if r["status"] != "stopped"] == []
    assert store_uploads(s3, bucket) == []


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_ctrl_c_aborts_on_the_store_and_resume_after_kill_9_sends_the_rest(served: tuple[Api, S3Server, str],
                                                                           tmp_path: Path) -> None:
    """Ctrl+C mid-run: exit 130, the record stopped, nothing left on the store. A run killed with SIGKILL
    mid-run keeps its upload; ``--resume`` sends only the missing parts to the same record."""
    api, s3, bucket = served
    env = user_env(api, tmp_path / "home")
    file = make_file(tmp_path / "big.bin", 40 * MiB, seed=3)
    args = (str(file), "sets/big.bin", "--part-size", "5MiB", "--workers", "1", "--max-bandwidth", "4MiB/s",
            "--progress", "json")

    cli = start(env, *args)
    try:
        until(lambda: _parts(s3, bucket) >= 1, 60, "a part on the store")
        cli.popen.send_signal(signal.SIGINT)
        assert cli.wait(30) == 130, cli.stderr
    finally:
        cli.kill_group()
    [record] = records(api, env)
    assert record["status"] == "stopped", record
    until(lambda: store_uploads(s3, bucket) == [], 30, "nothing left on the store after Ctrl+C")

    cli = start(env, *args)
    try:
        until(lambda: _parts(s3, bucket) >= 2, 60, "two parts on the store")
        cli.popen.send_signal(signal.SIGKILL)
        cli.popen.wait(30)
    finally:
        cli.kill_group()
    kept = _parts(s3, bucket)
    active = [r for r in records(api, env) if r["status"] not in ("stopped",)]
    assert len(active) == 1, active
    done = run(env, str(file), "sets/big.bin", "--part-size", "5MiB", "--resume", "--progress", "json", timeout=240)
    assert done.returncode == 0, done.stderr
    evs = events(done.stdout)
    assert evs[0]["resumed_parts"] >= kept >= 2, (evs[0], kept)
    assert evs[-1]["upload_id"] == active[0]["id"]
    assert stored(s3, bucket, f"{PREFIX}/alice/sets/big.bin") == file.read_bytes()
    assert store_uploads(s3, bucket) == []


def _parts(s3: S3Server, bucket: str) -> int:
    client = s3.client()
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=f"{PREFIX}/").get("Uploads", [])
    return sum(len(client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", []))
               for u in uploads)
