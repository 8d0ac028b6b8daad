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

from tests.conftest import ALL_SERVERS, SERVERS
from tests.integration.api_support import Api, until
from tests.integration.test_brokered import PREFIX, serve, store_uploads
from tests.support.cli import ROOT, CliProcess, events, make_file, mpupload_cmd
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


def storage_env(s3: S3Server, **extra: str) -> dict[str, str]:
    """The server's settings for a store over HTTPS with our own CA: the server checks it with that CA."""
    return {**({"MPUPLOAD_STORAGE_CA_BUNDLE": s3.ca_bundle} if s3.ca_bundle else {}),
            "MPUPLOAD_SIGN_EXPIRES": "900", "MPUPLOAD_SIGN_MAX_PER_MINUTE": "20000", **extra}


def ca_args(s3: S3Server) -> list[str]:
    """The CLI's trust of the store's URLs (its own: the server's CA setting is the server's)."""
    return ["--ca-bundle", s3.ca_bundle] if s3.ca_bundle else []


@pytest.fixture
def served(s3: S3Server, bucket: str, tmp_path: Path) -> Iterator[tuple[Api, S3Server, str]]:
    api = serve(s3, bucket, tmp_path, **storage_env(s3))
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


@pytest.mark.parametrize("s3", ALL_SERVERS, indirect=True)
def test_a_file_and_a_small_one_go_brokered_without_aws_credentials(served: tuple[Api, S3Server, str],
                                                                      tmp_path: Path) -> None:
    """A 13 MiB file in 5 MiB parts and a 3 KiB one (a one-part multipart upload) land under PREFIX/alice/, equal
    to the files; the server's record is the run's (one record each, brokered, completed, verified), and the
    JSON events name it. Over HTTPS with a private CA (Ceph RGW's own TLS; moto behind a TLS front), the CLI
    checks the store's certificate with ``--ca-bundle``: without it, the run stops with one line, exit 2, and
    leaves nothing on the store."""
    api, s3, bucket = served
    env = user_env(api, tmp_path / "home")
    big = make_file(tmp_path / "big.bin", 13 * MiB, seed=1)
    small = make_file(tmp_path / "small.txt", 3 * 1024, seed=2)

    if s3.ca_bundle:
        done = run(env, str(big), "sets/untrusted.bin", "--part-size", "5MiB")
        assert done.returncode == 2, done.stderr
        [line] = [line for line in done.stderr.splitlines() if line.startswith("mpupload: error:")]
        assert "TLS certificate check failed" in line and "--ca-bundle" in line, line
        assert "X-Amz-Signature" not in done.stderr  # a signed URL is a credential: never shown
        assert store_uploads(s3, bucket) == []
        assert [r["status"] for r in records(api, env)] == ["failed"]  # (aborted on the store: nothing kept)

    done = run(env, str(big), "sets/big.bin", "--part-size", "5MiB", "--progress", "json", *ca_args(s3))
    assert done.returncode == 0, done.stderr
    evs = events(done.stdout)
    started, final = evs[0], evs[-1]
    assert started["event"] == "started" and final["event"] == "completed", (started, final)
    assert started["multipart"] is True and started["parts_total"] == 3
    assert final["key"] == f"{PREFIX}/alice/sets/big.bin"
    assert stored(s3, bucket, f"{PREFIX}/alice/sets/big.bin") == big.read_bytes()

    done = run(env, str(small), "notes/", "--progress", "json", *ca_args(s3))  # a key ending in /: the file's name
    assert done.returncode == 0, done.stderr
    assert stored(s3, bucket, f"{PREFIX}/alice/notes/small.txt") == small.read_bytes()
    small_id = events(done.stdout)[-1]["upload_id"]

    mine = {r["storage_key"]: r for r in records(api, env) if r["status"] != "failed"}
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

    kept, active = stop_then_kill(api, s3, bucket, env, args)
    done = run(env, str(file), "sets/big.bin", "--part-size", "5MiB", "--resume", "--progress", "json", timeout=240)
    assert done.returncode == 0, done.stderr
    evs = events(done.stdout)
    assert evs[0]["resumed_parts"] >= kept >= 2, (evs[0], kept)
    assert evs[-1]["upload_id"] == active["id"]
    assert stored(s3, bucket, f"{PREFIX}/alice/sets/big.bin") == file.read_bytes()
    assert store_uploads(s3, bucket) == []



def stop_then_kill(api: Api, s3: S3Server, bucket: str, env: dict[str, str], args: tuple[str, ...],
                   timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """Run ``upload *args`` and Ctrl+C it once a part is on the store: exit 130, its record stopped, nothing left
    on the store. Run it again and kill -9 it once two parts are there. The parts it kept, and its record."""
    cli = start(env, *args)
    try:
        until(lambda: _parts(s3, bucket) >= 1, timeout, "a part on the store")
        cli.popen.send_signal(signal.SIGINT)
        assert cli.wait(timeout) == 130, cli.stderr
    finally:
        cli.kill_group()
    [record] = records(api, env)
    assert record["status"] == "stopped", record
    until(lambda: store_uploads(s3, bucket) == [], 30, "nothing left on the store after Ctrl+C")

    cli = start(env, *args)
    try:
        until(lambda: _parts(s3, bucket) >= 2, timeout, "two parts on the store")
        cli.popen.send_signal(signal.SIGKILL)
        cli.popen.wait(30)
    finally:
        cli.kill_group()
    [active] = [r for r in records(api, env) if r["status"] != "stopped"]
    return _parts(s3, bucket), active


def _parts(s3: S3Server, bucket: str) -> int:
    client = s3.client()
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=f"{PREFIX}/").get("Uploads", [])
    return sum(len(client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", []))
               for u in uploads)


def sign_requests(proxy: Any) -> list[dict[str, Any]]:
    return [r for r in proxy.requests() if r["method"] == "POST" and r["path"].endswith("/parts/sign")]


def part_puts(proxy: Any, number: int) -> list[dict[str, Any]]:
    return [r for r in proxy.requests() if r["method"] == "PUT" and f"partNumber={number}&" in r["query"] + "&"]


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_a_worker_has_its_run_of_parts_signed_in_one_request(served: tuple[Api, S3Server, str],
                                                             tmp_path: Path) -> None:
    """8 parts, 2 workers: the parts go a run per worker (4, then 2, then single parts), each run hashed and
    signed in one request: at most 4 sign requests (counted at the API server's door), the object right."""
    from tests.support.proxy import start_proxy

    api, s3, bucket = served
    door = start_proxy("127.0.0.1", api.port, log_path=tmp_path / "api.jsonl")
    try:
        env = user_env(api, tmp_path / "home")
        env["MPUPLOAD_API_URL"] = door.url()
        file = make_file(tmp_path / "big.bin", 40 * MiB, seed=5)
        done = run(env, str(file), "sets/big.bin", "--part-size", "5MiB", "--workers", "2", "--progress", "json")
        assert done.returncode == 0, done.stderr
        assert stored(s3, bucket, f"{PREFIX}/alice/sets/big.bin") == file.read_bytes()
        signs = sign_requests(door)
        assert 2 <= len(signs) <= 4, signs
    finally:
        door.stop()


@pytest.fixture
def fronted(request: pytest.FixtureRequest, ceph_server: S3Server, tmp_path: Path) -> Iterator[
        tuple[Api, S3Server, str, Any]]:
    """Ceph RGW behind a proxy that puts a fault between everyone and the store (``request.param``: the proxy's
    options, and ``server``: the API server's settings); the API server's storage endpoint is the proxy, so the
    URLs it signs go through it."""
    import uuid

    from tests.conftest import empty_bucket
    from tests.support.proxy import proxy_for

    options = dict(request.param)
    server = options.pop("server", {})
    name = f"t-{uuid.uuid4().hex[:12]}"
    client = ceph_server.client()
    client.create_bucket(Bucket=name)
    proxy = proxy_for(ceph_server, log_path=tmp_path / "store.jsonl", **options)
    try:
        api = serve(proxy.s3server(ceph_server), name, tmp_path, **storage_env(ceph_server, **server))
        try:
            yield api, ceph_server, name, proxy
        finally:
            api.stop()
    finally:
        proxy.stop()
        empty_bucket(client, name)


@pytest.mark.parametrize("fronted", [{"flip_part": 2}], indirect=True)
def test_a_body_that_differs_from_its_signed_digest_is_refused_then_signed_and_sent_again(
        fronted: tuple[Api, S3Server, str, Any], tmp_path: Path) -> None:
    """One bit of part 2 flipped on the way to Ceph RGW: the store refuses the body (its Content-MD5 is signed
    into the URL), the CLI hashes the part again, has it signed again and sends it again; the object is right.
    (moto checks no Content-MD5: this is RGW's and AWS's behaviour.)"""
    api, ceph, bucket, proxy = fronted
    env = user_env(api, tmp_path / "home")
    file = make_file(tmp_path / "big.bin", 13 * MiB, seed=6)
    done = run(env, str(file), "sets/big.bin", "--part-size", "5MiB", "--progress", "json")
    assert done.returncode == 0, done.stderr
    assert stored(ceph, bucket, f"{PREFIX}/alice/sets/big.bin") == file.read_bytes()
    puts = part_puts(proxy, 2)
    assert [p["flipped"] for p in puts] == [True, False], puts
    assert len(part_puts(proxy, 1)) == len(part_puts(proxy, 3)) == 1


@pytest.mark.parametrize("fronted", [{"hold_part": 2, "hold_seconds": 6.0,
                                      "server": {"MPUPLOAD_SIGN_EXPIRES": "3"}}], indirect=True)
def test_a_url_that_expires_before_the_store_sees_it_is_signed_again(fronted: tuple[Api, S3Server, str, Any],
                                                                     tmp_path: Path) -> None:
    """URLs valid for 3 s, and part 2's request held 6 s on its way to Ceph RGW: the store refuses it as expired,
    the CLI has it signed again and sends it again, unasked; the object is right. The parts after it, signed
    ahead with part 2, are signed again before they are sent (most of their life is gone)."""
    api, ceph, bucket, proxy = fronted
    env = user_env(api, tmp_path / "home")
    file = make_file(tmp_path / "big.bin", 13 * MiB, seed=7)
    done = run(env, str(file), "sets/big.bin", "--part-size", "5MiB", "--workers", "1", "--progress", "json")
    assert done.returncode == 0, done.stderr
    assert stored(ceph, bucket, f"{PREFIX}/alice/sets/big.bin") == file.read_bytes()
    puts = part_puts(proxy, 2)
    assert [p["fault"] for p in puts] == ["hold", None], puts
    assert len(part_puts(proxy, 3)) == 1
