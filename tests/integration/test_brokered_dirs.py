"""Brokered directory runs (issue 15): ``mpupload upload DIR PREFIX/`` (no ``s3://``) as a real process with no AWS
credentials anywhere, against a real ``mpupload serve --storage`` on moto and Ceph RGW. One record for the run,
its small files' PutObject URLs signed in batches through it, its large files multipart uploads in it; the quota
is checked once for the run's bytes, and the run cannot sign more than it declared."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ALL_SERVERS, SERVERS
from tests.integration.api_support import Api, until
from tests.integration.test_brokered import PREFIX, store_uploads
from tests.integration.test_brokered_cli import ca_args, records, run, served, start, stored, user_env
from tests.server.support import cli
from tests.support.cli import events, make_file
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
__all__ = ["served"]


def make_tree(root: Path, *, small: int = 30, large: int = 1) -> dict[str, bytes]:
    """``small`` files of 0 B to ~70 KiB in nested folders, and ``large`` files of 11 MiB; rel path -> bytes."""
    out: dict[str, bytes] = {}
    for i in range(small):
        rel = f"d{i % 3}/sub{i % 2}/f{i:03d}.bin"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        out[rel] = make_file(root / rel, (i * 2377) % 70_000 if i else 0, seed=i).read_bytes()
    for i in range(large):
        rel = f"big/large{i}.bin"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        out[rel] = make_file(root / rel, 11 * MiB, seed=100 + i).read_bytes()
    return out


def stored_keys(s3: S3Server, bucket: str, prefix: str) -> dict[str, int]:
    client = s3.client()
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = int(obj["Size"])
    return found


def auth(env: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {env['MPUPLOAD_TOKEN']}"}


@pytest.mark.parametrize("s3", ALL_SERVERS, indirect=True)
def test_a_directory_goes_brokered_without_aws_credentials(served: tuple[Api, S3Server, str],
                                                            tmp_path: Path) -> None:
    """A tree of 30 small files and an 11 MiB one (5 MiB parts: a multipart upload) lands under
    PREFIX/alice/PREFIX/, every object equal to its file; one run record (brokered, completed, its files
    counted) and one record for the large file, inside the run; nothing is left on the store."""
    api, s3, bucket = served
    env = user_env(api, tmp_path / "home")
    tree = make_tree(tmp_path / "data")
    done = run(env, str(tmp_path / "data"), "sets/v1/", "--part-size", "5MiB", "--progress", "json", *ca_args(s3))
    assert done.returncode == 0, done.stderr
    final = events(done.stdout)[-1]
    assert final["event"] == "completed", final
    base = f"{PREFIX}/alice/sets/v1/"
    assert stored_keys(s3, bucket, base) == {base + rel: len(data) for rel, data in tree.items()}
    for rel in ("d0/sub0/f000.bin", "d1/sub1/f001.bin", "d2/sub1/f029.bin", "big/large0.bin"):
        assert stored(s3, bucket, base + rel) == tree[rel], rel
    mine = records(api, env)
    [runrec] = [r for r in mine if r.get("files_total") is not None]
    assert runrec["brokered"] is True and runrec["status"] == "completed", runrec
    assert runrec["storage_key"] == base and runrec["files_total"] == len(tree) == runrec["files_done"]
    assert runrec["id"] == final["upload_id"]
    [child] = [r for r in mine if r.get("parent_id")]
    assert child["parent_id"] == runrec["id"] and child["storage_key"] == base + "big/large0.bin"
    assert child["status"] == "completed" and child["multipart"] is True and child["verified"], child
    assert store_uploads(s3, bucket) == []


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_a_run_signs_only_under_its_prefix_and_within_its_bytes(served: tuple[Api, S3Server, str],
                                                                tmp_path: Path) -> None:
    """The routes themselves: a run's record takes object URLs only under its PREFIX and only for the bytes it
    declared (a key signed again counts once); another user's run is 404; a run's parts cannot be signed, nor a
    run completed, as a file's; a large file's upload is only in a run of its own user, under its PREFIX."""
    api, s3, bucket = served
    alice, bob = user_env(api, tmp_path / "a"), user_env(api, tmp_path / "b", "bob")
    url = f"{api.url}/api/v1/uploads"
    made = httpx.post(url, json={"brokered": True, "dataset": True, "key": "runs/", "total_bytes": 100,
                                 "files_total": 2, "checksum_algorithm": "none"}, headers=auth(alice), timeout=10)
    assert made.status_code == 200, made.text
    run_id = made.json()["id"]
    assert made.json()["storage_key"] == f"{PREFIX}/alice/runs/"
    sign = f"{url}/{run_id}/objects/sign"
    md5 = "1B2M2Y8AsgTpgAmY7PhCfg=="  # (the server's storage checks Content-MD5 in these tests)

    def ask(env: dict[str, str], objects: list[dict[str, Any]]) -> httpx.Response:
        return httpx.post(sign, json={"objects": [{"content_md5": md5, **o} for o in objects]}, headers=auth(env),
                          timeout=10)

    ok = ask(alice, [{"key": "runs/a", "size": 60}])
    assert ok.status_code == 200, ok.text
    [signed] = ok.json()["objects"]
    assert signed["method"] == "PUT" and f"/{PREFIX}/alice/runs/a" in signed["url"]
    assert ask(alice, [{"key": "runs/a", "size": 60}]).status_code == 200  # signed again: counted once
    over = ask(alice, [{"key": "runs/b", "size": 41}])
    assert over.status_code == 413 and "declared 100 bytes" in over.json()["detail"], over.text
    assert ask(alice, [{"key": "runs/b", "size": 40}]).status_code == 200
    outside = ask(alice, [{"key": "elsewhere/c", "size": 0}])
    assert outside.status_code == 422 and "outside this run's prefix" in outside.json()["detail"]
    assert ask(alice, [{"key": "runs/../x", "size": 0}]).status_code == 422
    assert ask(bob, [{"key": "runs/d", "size": 0}]).status_code == 404  # not bob's run
    assert httpx.post(f"{url}/{run_id}/parts/sign", json={"parts": [{"number": 1, "size": 1}]},
                      headers=auth(alice), timeout=10).status_code == 409
    assert httpx.post(f"{url}/{run_id}/complete", json={"parts": []}, headers=auth(alice),
                      timeout=10).status_code == 409
    child = {"brokered": True, "key": "runs/big", "total_bytes": 6 * MiB, "part_size": 5 * MiB,
             "multipart": True, "checksum_algorithm": "none", "parent_id": run_id}
    assert httpx.post(url, json=child, headers=auth(bob), timeout=10).status_code == 404
    too_big = httpx.post(url, json=child, headers=auth(alice), timeout=10)
    assert too_big.status_code == 413, too_big.text  # beyond what the run declared
    elsewhere = httpx.post(url, json={**child, "key": "other/big", "total_bytes": 0}, headers=auth(alice),
                           timeout=10)
    assert elsewhere.status_code == 422, elsewhere.text
    assert store_uploads(s3, bucket) == []
    listed = httpx.get(f"{api.url}/api/v1/storage/objects", params={"prefix": "runs/"}, headers=auth(alice),
                       timeout=10)
    assert listed.status_code == 200 and listed.json()["objects"] == [], listed.text  # nothing was put


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_sign_requests_at_once_cannot_together_pass_a_run_s_bytes(served: tuple[Api, S3Server, str],
                                                                  tmp_path: Path) -> None:
    """Eight requests at the same moment, each for 30 bytes of a run that declared 100: exactly three pass (the
    count and the objects it allows are not interleaved)."""
    import concurrent.futures

    api, _, _ = served
    env = user_env(api, tmp_path / "home")
    url = f"{api.url}/api/v1/uploads"
    made = httpx.post(url, json={"brokered": True, "dataset": True, "key": "race/", "total_bytes": 100,
                                 "files_total": 8, "checksum_algorithm": "none"}, headers=auth(env), timeout=10)
    assert made.status_code == 200, made.text
    sign = f"{url}/{made.json()['id']}/objects/sign"

    def one(i: int) -> int:
        body = {"objects": [{"key": f"race/f{i}", "size": 30, "content_md5": "1B2M2Y8AsgTpgAmY7PhCfg=="}]}
        return httpx.post(sign, json=body, headers=auth(env), timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(one, range(8)))
    assert codes == [200] * 3 + [413] * 5, codes


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_a_run_over_the_quota_is_refused_before_anything_is_sent(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """The quota is checked once, for every byte of the run: a tree larger than what is left is one line, exit 2,
    and nothing reaches the store."""
    from tests.integration.test_brokered import serve_env
    from tests.integration.test_brokered_cli import storage_env

    api = Api(tmp_path, env=serve_env(s3, bucket, **storage_env(s3))).prepare("alice", "bob")
    try:
        quota = cli("users", "set", "alice", "--quota", "1MiB", "--database-url", api.database_url)
        assert quota.returncode == 0, quota.stderr
        env = user_env(api, tmp_path / "home")
        (tmp_path / "data").mkdir()
        for i in range(20):
            make_file(tmp_path / "data" / f"f{i}.bin", 64 * 1024, seed=i)
        done = run(env, str(tmp_path / "data"), "q/", *ca_args(s3))
        assert done.returncode == 2, done.stderr
        [line] = [line for line in done.stderr.splitlines() if line.startswith("mpupload: error:")]
        assert "over your quota" in line, line
        assert stored_keys(s3, bucket, f"{PREFIX}/") == {}
    finally:
        api.stop()


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_stop_of_a_run_with_the_cli_killed_aborts_its_large_file(served: tuple[Api, S3Server, str],
                                                                 tmp_path: Path) -> None:
    """kill -9 of the CLI while a run's large file is half sent, then Stop from the dashboard (GraphQL): the server
    aborts the large file's multipart upload on the store itself, and records the run and the file stopped. Then
    ``--resume`` of the run sends everything again, and every object is right."""
    api, s3, bucket = served
    env = user_env(api, tmp_path / "home")
    tree = make_tree(tmp_path / "data", small=4, large=1)
    cli = start(env, str(tmp_path / "data"), "stop/", "--part-size", "5MiB", "--workers", "1",
                "--max-bandwidth", "2MiB/s", "--progress", "json", *ca_args(s3))
    try:
        until(lambda: bool(store_uploads(s3, bucket)), timeout=60, what="the large file's multipart upload")
        until(lambda: any(r.get("bytes_done", 0) > 0 for r in records(api, env)), timeout=60,
              what="progress on the run")
    finally:
        cli.popen.send_signal(signal.SIGKILL)
        cli.popen.wait(timeout=30)
    mine = records(api, env)
    [runrec] = [r for r in mine if r.get("files_total") is not None]
    stopped = httpx.post(f"{api.url}/graphql", headers=auth(env), timeout=30, json={
        "query": "mutation($id: ID!) { stopUpload(id: $id) { id status } }", "variables": {"id": runrec["id"]}})
    assert stopped.status_code == 200 and "errors" not in stopped.json(), stopped.text
    until(lambda: store_uploads(s3, bucket) == [], timeout=30, what="the server's abort of the large file")
    after = {r["id"]: r for r in records(api, env)}
    assert after[runrec["id"]]["status"] == "stopped"
    [child] = [r for r in after.values() if r.get("parent_id") == runrec["id"]]
    assert child["status"] == "stopped" and "was stopped" in (child.get("error") or ""), child
    done = run(env, str(tmp_path / "data"), "stop/", "--part-size", "5MiB", "--resume", *ca_args(s3))
    assert done.returncode == 0, done.stderr
    base = f"{PREFIX}/alice/stop/"
    assert stored_keys(s3, bucket, base) == {base + rel: len(data) for rel, data in tree.items()}
    assert stored(s3, bucket, base + "big/large0.bin") == tree["big/large0.bin"]
    assert store_uploads(s3, bucket) == []


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_skip_existing_compares_with_the_user_s_space_as_the_server_lists_it(served: tuple[Api, S3Server, str],
                                                                            tmp_path: Path) -> None:
    """A second run with ``--skip-existing`` skips every file the first put (small ones by their MD5 against the
    listed ETag, the large one by its record's part size), and sends only a file that changed since."""
    api, s3, bucket = served
    env = user_env(api, tmp_path / "home")
    tree = make_tree(tmp_path / "data", small=12, large=1)
    first = run(env, str(tmp_path / "data"), "again/", "--part-size", "5MiB", *ca_args(s3))
    assert first.returncode == 0, first.stderr
    changed = "d1/sub1/f001.bin"
    (tmp_path / "data" / changed).write_bytes(b"changed since" + tree[changed][13:])
    second = run(env, str(tmp_path / "data"), "again/", "--part-size", "5MiB", "--skip-existing", "--progress",
                 "json", *ca_args(s3))
    assert second.returncode == 0, second.stderr
    final = events(second.stdout)[-1]
    assert final["event"] == "completed" and final["files_total"] == len(tree), final
    assert final["files_skipped"] == len(tree) - 1, final
    assert stored(s3, bucket, f"{PREFIX}/alice/again/{changed}") == (tmp_path / "data" / changed).read_bytes()


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_the_reaper_stops_an_idle_run_and_aborts_its_large_file(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """A run whose CLI is gone (nothing signs or reports for ``--stale-after``) is stopped by the reaper, and its
    large file's multipart upload is aborted on the store with it."""
    from tests.integration.test_brokered import serve

    api = serve(s3, bucket, tmp_path, MPUPLOAD_STALE_AFTER="3s")
    try:
        env = user_env(api, tmp_path / "home")
        url = f"{api.url}/api/v1/uploads"
        made = httpx.post(url, json={"brokered": True, "dataset": True, "key": "idle/", "total_bytes": 6 * MiB,
                                     "files_total": 1, "checksum_algorithm": "none"}, headers=auth(env), timeout=10)
        assert made.status_code == 200, made.text
        run_id = made.json()["id"]
        child = httpx.post(url, json={"brokered": True, "key": "idle/big", "total_bytes": 6 * MiB,
                                      "part_size": 5 * MiB, "multipart": True, "checksum_algorithm": "none",
                                      "parent_id": run_id}, headers=auth(env), timeout=10)
        assert child.status_code == 200, child.text
        assert store_uploads(s3, bucket) == [f"{PREFIX}/alice/idle/big"]
        until(lambda: {r["id"]: r["status"] for r in records(api, env)}.get(run_id) == "stopped", 60,
              "the reaper to stop the idle run", every=0.25)
        until(lambda: store_uploads(s3, bucket) == [], 30, "the large file's abort")
        after = {r["id"]: r for r in records(api, env)}
        assert after[child.json()["id"]]["status"] == "stopped"
    finally:
        api.stop()


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_resume_after_kill_9_continues_the_run_within_the_quota(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """kill -9 of a run half-way through its large file, then ``--resume``: the new run continues the old one (the
    old record ends, "continued by a --resume run", so the quota counts the run once: a quota that one run fits
    and two would not lets it through), and the large file's upload resumes at part level as the new run's."""
    from tests.integration.test_brokered import serve_env
    from tests.integration.test_brokered_cli import storage_env

    api = Api(tmp_path, env=serve_env(s3, bucket, **storage_env(s3))).prepare("alice", "bob")
    try:
        tree = make_tree(tmp_path / "data", small=4, large=1)
        total = sum(len(data) for data in tree.values())
        quota = cli("users", "set", "alice", "--quota", str(total + total // 2), "--database-url", api.database_url)
        assert quota.returncode == 0, quota.stderr
        env = user_env(api, tmp_path / "home")
        first = start(env, str(tmp_path / "data"), "res/", "--part-size", "5MiB", "--workers", "1",
                      "--max-bandwidth", "2MiB/s", *ca_args(s3))
        try:
            until(lambda: _parts_on_store(s3, bucket) >= 1, timeout=90, what="a part of the large file on the store")
        finally:
            first.popen.send_signal(signal.SIGKILL)
            first.popen.wait(timeout=30)
        [old_run] = [r for r in records(api, env) if r.get("files_total") is not None]
        [child] = [r for r in records(api, env) if r.get("parent_id")]
        done = run(env, str(tmp_path / "data"), "res/", "--part-size", "5MiB", "--resume", "--progress", "json",
                   *ca_args(s3))
        assert done.returncode == 0, done.stderr
        after = {r["id"]: r for r in records(api, env)}
        assert after[old_run["id"]]["status"] == "stopped", after[old_run["id"]]
        assert after[old_run["id"]]["error"] == "continued by a --resume run"
        new_run = events(done.stdout)[-1]["upload_id"]
        assert new_run != old_run["id"] and after[new_run]["status"] == "completed"
        assert after[child["id"]]["parent_id"] == new_run and after[child["id"]]["status"] == "completed"
        base = f"{PREFIX}/alice/res/"
        assert stored_keys(s3, bucket, base) == {base + rel: len(data) for rel, data in tree.items()}
        assert stored(s3, bucket, base + "big/large0.bin") == tree["big/large0.bin"]
        assert store_uploads(s3, bucket) == []
    finally:
        api.stop()


def _parts_on_store(s3: S3Server, bucket: str) -> int:
    client = s3.client()
    listed = client.list_multipart_uploads(Bucket=bucket, Prefix=f"{PREFIX}/").get("Uploads", [])
    return sum(len(client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", []))
               for u in listed)
