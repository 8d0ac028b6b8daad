"""The CLI reports to a real API server: live progress seen by a GraphQL subscriber, Ctrl+C and Stop from the
dashboard as STOPPED, resume continuing the same record, a server that is down, killed, hanging or back, and
tokens the server rejects. Real processes throughout: ``mpupload serve``, moto's S3 server, the CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.api_support import Api, SilentServer, until, warnings
from tests.server.gqlws import GqlWs
from tests.support.cli import (
    CliProcess,
    cli_env,
    events,
    make_file,
    multipart_uploads,
    run_cli,
    sha256_file,
    sha256_object,
    signal_group,
    start_cli,
)
from tests.support.proxy import ProxyHandle, proxy_for
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
STOP = "mutation($id: ID!) { stopUpload(id: $id) { id } }"
FAST = ["--report-interval", "0.2", "--part-size", "5MiB", "--workers", "2", "--progress", "json"]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server = Api(tmp_path_factory.mktemp("api")).prepare("alice", "bob")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_s3(moto_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto behind a proxy that lets each connection send about 4 MiB/s: uploads that last a few seconds."""
    proxy: ProxyHandle = proxy_for(moto_server, throttle_bps=4 * MiB)
    yield proxy.s3server(moto_server)
    proxy.stop()


@pytest.fixture
def moto_bucket(moto_server: S3Server) -> Iterator[str]:
    import uuid

    from tests.conftest import empty_bucket

    name = f"t-{uuid.uuid4().hex[:12]}"
    client = moto_server.client()
    client.create_bucket(Bucket=name)
    yield name
    empty_bucket(client, name)


def env_for(s3: S3Server, api_url: str, token: str, tmp: Path, **extra: str) -> dict[str, str]:
    state = tmp / "state"
    state.mkdir(exist_ok=True)
    return cli_env(s3, MPUPLOAD_API_URL=api_url, MPUPLOAD_TOKEN=token, MPUPLOAD_STATE_DIR=str(state),
                   MPUPLOAD_CONFIG_DIR=str(tmp / "config"), **extra)


def first_progress(cli: CliProcess, at_least: int = 1, timeout: float = 60) -> dict[str, Any]:
    line = cli.wait_line(lambda l: l.startswith("{") and json.loads(l)["event"] == "progress"
                         and json.loads(l)["bytes_done"] >= at_least, timeout)
    return dict(json.loads(line))


def record_where(api: Api, token: str, record_id: str, predicate: Any, timeout: float = 20) -> dict[str, Any]:
    return until(lambda: (lambda r: r if predicate(r) else None)(api.record(token, record_id)), timeout,
                 f"record {record_id} reaches the expected state")


# -- end to end -------------------------------------------------------------------------------------------------
def test_live_progress_reaches_a_subscriber(api: Api, slow_s3: S3Server, moto_server: S3Server, moto_bucket: str,
                                            tmp_path: Path) -> None:
    """UPLOADING with growing bytes, then FINALIZING, then COMPLETED with the checksum; events carry the id."""
    token = api.token("alice")
    src = make_file(tmp_path / "data.bin", 24 * MiB, seed=1)
    env = env_for(slow_s3, api.url, token, tmp_path)

    async def follow() -> tuple[list[dict[str, Any]], CliProcess]:
        async with GqlWs(api.url, token) as ws:
            op = await ws.subscribe("subscription { uploadEvents { id bucket status bytesDone host checksum } }")
            cli = start_cli("upload", str(src), f"s3://{moto_bucket}/data.bin", *FAST, env=env)
            seen: list[dict[str, Any]] = []
            while not seen or seen[-1]["status"] not in ("COMPLETED", "FAILED", "STOPPED"):
                event = (await ws.next(op, timeout=60))["uploadEvents"]
                if event["bucket"] == moto_bucket:  # the current state of earlier uploads comes first
                    seen.append(event)
            return seen, cli

    seen, cli = asyncio.run(follow())
    assert cli.wait(30) == 0, cli.stderr
    statuses = [s["status"] for s in seen]
    assert statuses[-1] == "COMPLETED", statuses
    uploading = [s["bytesDone"] for s in seen if s["status"] == "UPLOADING"]
    assert len(set(uploading)) >= 3 and uploading == sorted(uploading), uploading
    assert "FINALIZING" in statuses and statuses.index("FINALIZING") > statuses.index("UPLOADING")
    assert seen[-1]["checksum"] and seen[-1]["checksum"].startswith("crc32c:")
    assert not warnings(cli.stderr), cli.stderr
    # the JSON events carry the API record id
    record_id = seen[-1]["id"]
    assert {e["upload_id"] for e in events(cli.stdout)} == {record_id}
    completed = events(cli.stdout)[-1]
    record = api.record(token, record_id)
    assert record["bytes_done"] == record["total_bytes"] == 24 * MiB
    assert record["checksum"] == completed["checksum"] and record["etag"] == completed["etag"]
    assert record["host"] and record["filename"] == "data.bin" and record["parts_total"] == 5
    assert sha256_object(moto_server.client(), moto_bucket, "data.bin") == sha256_file(src)

    # list and status (plain, JSON, and --watch on a finished upload) read the same record: read-only commands,
    # run side by side
    with ThreadPoolExecutor(5) as pool:
        listed, as_json, status, watch, missing = pool.map(lambda args: run_cli(*args, env=env, timeout=60), [
            ("list",), ("list", "--json"), ("status", record_id),
            ("status", record_id, "--watch", "--progress", "json"), ("status", "no-such-id")])
    assert listed.returncode == 0 and record_id in listed.stdout and "completed" in listed.stdout, listed.stderr
    assert [r["id"] for r in json.loads(as_json.stdout)][0] == record_id
    assert status.returncode == 0 and "completed" in status.stdout and "crc32c:" in status.stdout
    assert watch.returncode == 0, watch.stderr
    assert events(watch.stdout)[-1]["event"] == "completed"
    assert missing.returncode == 2 and "mpupload list" in missing.stderr


def test_status_watch_follows_a_running_upload(api: Api, slow_s3: S3Server, moto_bucket: str,
                                               tmp_path: Path) -> None:
    token = api.token("alice")
    src = make_file(tmp_path / "w.bin", 16 * MiB, seed=2)
    env = env_for(slow_s3, api.url, token, tmp_path)
    cli = start_cli("upload", str(src), f"s3://{moto_bucket}/w.bin", *FAST, env=env)
    try:
        record_id = first_progress(cli)["upload_id"]
        with cli.held():  # the upload cannot finish before the watcher follows it, however busy the machine
            watch = start_cli("status", record_id, "--watch", "--progress", "json", env=env)
            watch.wait_line(lambda l: l.startswith("{") and json.loads(l)["event"] == "started", 60)
        assert cli.wait(60) == 0, cli.stderr
        assert watch.wait(60) == 0, watch.stderr
    finally:
        cli.kill_group()
    kinds = [e["event"] for e in events(watch.stdout)]
    assert kinds[0] == "started" and kinds[-1] == "completed" and "progress" in kinds, kinds


def test_missing_bucket_marks_the_record_failed(api: Api, moto_server: S3Server, tmp_path: Path) -> None:
    token = api.token("alice")
    src = make_file(tmp_path / "m.bin", 12 * MiB, seed=10)
    done = run_cli("upload", str(src), "s3://no-such-bucket-here/m.bin", *FAST,
                   env=env_for(moto_server, api.url, token, tmp_path))
    assert done.returncode == 2, done.stderr
    records = [r for r in api.uploads(token) if r["bucket"] == "no-such-bucket-here"]
    assert len(records) == 1 and records[0]["status"] == "failed" and records[0]["error"], records


# -- Ctrl+C and resume --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [False, True], ids=["abort", "keep-then-resume"])
def test_ctrl_c_reports_stopped(api: Api, slow_s3: S3Server, moto_server: S3Server, moto_bucket: str,
                                tmp_path: Path, keep: bool) -> None:
    token = api.token("alice")
    src = make_file(tmp_path / "c.bin", 30 * MiB, seed=3)
    env = env_for(slow_s3, api.url, token, tmp_path)
    args = ["upload", str(src), f"s3://{moto_bucket}/c.bin", *FAST, *(["--keep-on-interrupt"] if keep else [])]
    cli = start_cli(*args, env=env)
    try:
        record_id = first_progress(cli, at_least=5 * MiB)["upload_id"]
        signal_group(cli, signal.SIGINT)
        assert cli.wait(20) == 130, cli.stderr
    finally:
        cli.kill_group()
    # the STOPPED status reached the server before the CLI exited: no waiting here
    record = api.record(token, record_id)
    assert record["status"] == "stopped", record
    s3 = moto_server.client()
    if not keep:
        assert multipart_uploads(s3, moto_bucket) == []
        assert record["resume_command"] is None and not record["resumable"]
        return
    assert len(multipart_uploads(s3, moto_bucket)) == 1
    assert record["resumable"] and "--resume" in record["resume_command"], record
    stopped_seq = record["seq"]
    done = run_cli(*args, "--resume", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {e["upload_id"] for e in events(done.stdout)} == {record_id}, "--resume continues the same record"
    record = api.record(token, record_id)
    assert record["status"] == "completed" and record["seq"] > stopped_seq
    assert [u["id"] for u in api.uploads(token)].count(record_id) == 1
    assert sha256_object(s3, moto_bucket, "c.bin") == sha256_file(src)
    assert multipart_uploads(s3, moto_bucket) == []


# -- Stop from the dashboard ----------------------------------------------------------------------------------------
def test_stop_from_the_dashboard(api: Api, slow_s3: S3Server, moto_server: S3Server, moto_bucket: str,
                                 tmp_path: Path) -> None:
    alice, bob = api.token("alice"), api.token("bob")
    src = make_file(tmp_path / "s.bin", 30 * MiB, seed=4)
    cli = start_cli("upload", str(src), f"s3://{moto_bucket}/s.bin", *FAST,
                    env=env_for(slow_s3, api.url, alice, tmp_path))
    try:
        record_id = first_progress(cli)["upload_id"]
        # someone else cannot stop it: NOT_FOUND, and the upload goes on
        answer = api.graphql(bob, STOP, {"id": record_id})
        assert answer["errors"][0]["extensions"]["code"] == "NOT_FOUND", answer
        before = api.record(alice, record_id)["bytes_done"]
        record_where(api, alice, record_id, lambda r: r["bytes_done"] > before and r["status"] == "uploading")
        assert cli.popen.poll() is None
        # the owner can
        answer = api.graphql(alice, STOP, {"id": record_id})
        assert not answer.get("errors"), answer
        asked = time.monotonic()
        assert cli.wait(15) == 130, cli.stderr
        assert time.monotonic() - asked < 8, "the CLI stops within a few report intervals (a loaded machine)"
    finally:
        cli.kill_group()
    assert "stopped from the dashboard" in cli.stderr
    assert events(cli.stdout)[-1]["event"] == "stopped"
    assert multipart_uploads(moto_server.client(), moto_bucket) == []
    record = api.record(alice, record_id)
    assert record["status"] == "stopped" and not record["stop_requested"], record


# -- an API server that is down, hanging, killed, or back ----------------------------------------------------------
@pytest.fixture
def restartable(api: Api) -> Iterator[Api]:
    """The shared server, for a test that kills it: started again afterwards (same port, same database)."""
    yield api
    if api.proc is None or api.proc.poll() is not None:
        api.start()


@pytest.mark.parametrize("kind", ["down", "hanging"])
def test_unreachable_server_does_not_stop_the_upload(moto_server: S3Server, moto_bucket: str, tmp_path: Path,
                                                     kind: str) -> None:
    silent = SilentServer()
    if kind == "down":
        silent.close()  # nothing listens on that port any more
    try:
        src = make_file(tmp_path / "d.bin", 12 * MiB, seed=5)
        started = time.monotonic()
        done = run_cli("upload", str(src), f"s3://{moto_bucket}/d.bin", *FAST,
                       env=env_for(moto_server, silent.url, "some-token", tmp_path), timeout=60)
        took = time.monotonic() - started
    finally:
        silent.close()
    assert done.returncode == 0, done.stderr
    assert len(warnings(done.stderr)) == 1, done.stderr
    assert "without progress reports" in done.stderr
    # a store upload id, since no record could be registered before the upload started
    assert all(e["upload_id"] and len(e["upload_id"]) > 20 for e in events(done.stdout)[1:])
    assert sha256_object(moto_server.client(), moto_bucket, "d.bin") == sha256_file(src)
    assert took < 30, took  # bounded: a few seconds to give up at the start, a few at the end


def test_server_killed_mid_upload(restartable: Api, tmp_path: Path, slow_s3: S3Server, moto_server: S3Server,
                                  moto_bucket: str) -> None:
    api = restartable
    token = api.token("alice")
    src = make_file(tmp_path / "k.bin", 20 * MiB, seed=6)
    cli = start_cli("upload", str(src), f"s3://{moto_bucket}/k.bin", *FAST,
                    env=env_for(slow_s3, api.url, token, tmp_path))
    try:
        first_progress(cli)
        api.kill()
        assert cli.wait(90) == 0, cli.stderr
    finally:
        cli.kill_group()
    lines = warnings(cli.stderr)
    assert len(lines) == 1 and "could not be reported" in lines[0], cli.stderr
    assert sha256_object(moto_server.client(), moto_bucket, "k.bin") == sha256_file(src)


def test_server_back_mid_upload_gets_the_final_status(restartable: Api, tmp_path: Path, slow_s3: S3Server,
                                                      moto_bucket: str) -> None:
    api = restartable
    token = api.token("alice")
    src = make_file(tmp_path / "b.bin", 30 * MiB, seed=7)
    cli = start_cli("upload", str(src), f"s3://{moto_bucket}/b.bin", *FAST,
                    env=env_for(slow_s3, api.url, token, tmp_path))
    try:
        record_id = first_progress(cli)["upload_id"]
        api.kill()
        first_progress(cli, at_least=10 * MiB)  # the upload goes on meanwhile
        with cli.held():  # and is still running when the server is back, however slowly it starts
            api.start()  # the same port, the same database
        assert cli.wait(90) == 0, cli.stderr
    finally:
        cli.kill_group()
    record = api.record(token, record_id)
    assert record["status"] == "completed" and record["bytes_done"] == 30 * MiB, record
    assert not warnings(cli.stderr), cli.stderr


def test_server_down_at_start_then_back_registers_late(restartable: Api, tmp_path: Path, slow_s3: S3Server,
                                                       moto_bucket: str) -> None:
    api = restartable
    token = api.token("alice")
    api.kill()
    src = make_file(tmp_path / "l.bin", 40 * MiB, seed=8)
    cli = start_cli("upload", str(src), f"s3://{moto_bucket}/l.bin", *FAST,
                    env=env_for(slow_s3, api.url, token, tmp_path))
    try:
        first_progress(cli)
        with cli.held():  # the server is back while the upload still runs, however slowly it starts
            api.start()
        assert cli.wait(90) == 0, cli.stderr
    finally:
        cli.kill_group()
    records = [r for r in api.uploads(token) if r["bucket"] == moto_bucket]
    assert len(records) == 1 and records[0]["status"] == "completed", records
    assert records[0]["bytes_done"] == 40 * MiB
    assert len(warnings(cli.stderr)) == 1, cli.stderr
    # the events keep the store's UploadId: no record existed when the upload started
    assert records[0]["id"] not in {e["upload_id"] for e in events(cli.stdout)}


# -- tokens the server rejects ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_ttl_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server = Api(tmp_path_factory.mktemp("api-ttl"), env={"MPUPLOAD_TOKEN_TTL": "1"})
    server.add_user("alice")
    server.start()
    yield server
    server.stop()


def _expired(api: Api) -> str:
    token = api.token("alice")
    until(lambda: api.get("/api/v1/me", token).status_code == 401, 20, "the token expires")
    return token


def _revoke(api: Api, token: str) -> str:
    response = httpx.post(f"{api.url}/api/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    return token


@pytest.mark.parametrize("kind", ["bogus", "expired", "revoked"])
def test_rejected_token_exits_3_before_touching_the_store(short_ttl_api: Api, moto_server: S3Server,
                                                          moto_bucket: str, tmp_path: Path, kind: str) -> None:
    api = short_ttl_api
    if kind == "bogus":
        token = "not-a-token"
    elif kind == "expired":
        token = _expired(api)
    else:
        token = _revoke(api, api.token("alice"))
    src = make_file(tmp_path / "r.bin", 12 * MiB)
    done = run_cli("upload", str(src), f"s3://{moto_bucket}/r.bin", *FAST,
                   env=env_for(moto_server, api.url, token, tmp_path))
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("rejected the token: run mpupload login"), done.stderr
    assert done.stdout == ""
    s3 = moto_server.client()
    assert multipart_uploads(s3, moto_bucket) == []
    assert s3.list_objects_v2(Bucket=moto_bucket).get("KeyCount", 0) == 0


def test_token_revoked_mid_upload_is_said_once(api: Api, slow_s3: S3Server, moto_server: S3Server,
                                               moto_bucket: str, tmp_path: Path) -> None:
    """A token that stops working mid-upload (revoked here; expiry answers the same 401): the upload goes on."""
    src = make_file(tmp_path / "e.bin", 30 * MiB, seed=9)
    token = api.token("alice")
    cli = start_cli("upload", str(src), f"s3://{moto_bucket}/e.bin", *FAST,
                    env=env_for(slow_s3, api.url, token, tmp_path))
    try:
        first_progress(cli)
        _revoke(api, token)
        assert cli.wait(90) == 0, cli.stderr
    finally:
        cli.kill_group()
    lines = warnings(cli.stderr)
    assert len(lines) == 1 and "no longer accepts the token" in lines[0] and "mpupload login" in lines[0], cli.stderr
    assert sha256_object(moto_server.client(), moto_bucket, "e.bin") == sha256_file(src)
