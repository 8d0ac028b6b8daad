"""Brokered uploads on a Dask cluster (issue 15): the real CLI as coordinator, a real ``dask scheduler`` and two
``dask worker`` processes, a real ``mpupload serve --storage`` on moto.

Neither the CLI nor the workers have AWS credentials (no ``AWS_*`` variable, an empty HOME), and the workers have
no mpupload login either: they sign with the worker token the server made for the upload or run. The API server
is behind a recording proxy, so every sign request is seen with the SHA-256 of its bearer token (what the server
stores): each one is the upload's worker token, never the user's login. That the workers sent the bytes is read
from the worker processes themselves (``/proc/PID/io``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.integration.api_support import Api
from tests.integration.test_brokered import PREFIX, store_uploads
from tests.integration.test_brokered_cli import (
    bare_env,
    records,
    run,
    served,
    stop_then_kill,
    stored,
    user_env,
)
from tests.integration.test_brokered_dirs import make_tree, stored_keys
from tests.integration.test_cluster import read_by_worker
from tests.integration.test_worker_tokens import stored_tokens
from tests.support.cli import events, make_file
from tests.support.dask_cluster import DaskCluster, start_cluster
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
__all__ = ["served"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    home = tmp_path_factory.mktemp("worker-home")
    c = start_cluster(home / "dask", bare_env(home / "home"), workers=2, nthreads=2)
    yield c
    c.stop()


@pytest.fixture
def door(served: tuple[Api, S3Server, str], tmp_path: Path) -> Iterator[Any]:
    """A recording proxy in front of the API server: the CLI (and so its workers) reach the server through it."""
    from tests.support.proxy import start_proxy

    api, _, _ = served
    proxy = start_proxy("127.0.0.1", api.port, log_path=tmp_path / "api.jsonl")
    yield proxy
    proxy.stop()


def cluster_env(api: Api, door: Any, home: Path) -> dict[str, str]:
    env = user_env(api, home)
    env["MPUPLOAD_API_URL"] = door.url()
    return env


def signs(door: Any, *, since: int = 0) -> list[dict[str, Any]]:
    return [r for r in door.requests()[since:]
            if r["method"] == "POST" and r["path"].endswith(("/parts/sign", "/objects/sign"))]


def worker_tokens(api: Api, record_id: str) -> set[str]:
    """The SHA-256 of every worker token the server made for ``record_id``."""
    return {token_hash for token_hash, scope, _, _ in stored_tokens(api) if scope == record_id}


def check_signed_by_workers(door: Any, api: Api, env: dict[str, str], record_id: str, *, since: int = 0) -> None:
    made = signs(door, since=since)
    assert made, "no sign request"
    login = hashlib.sha256(env["MPUPLOAD_TOKEN"].encode()).hexdigest()
    assert all(r["bearer"] != login for r in made), "a sign request carried the user's login token"
    assert {r["bearer"] for r in made} <= worker_tokens(api, record_id), made


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_a_file_and_a_directory_go_brokered_from_workers_without_credentials(
        served: tuple[Api, S3Server, str], door: Any, cluster: DaskCluster, tmp_path: Path) -> None:
    api, s3, bucket = served
    env = cluster_env(api, door, tmp_path / "home")
    file = make_file(tmp_path / "big.bin", 26 * MiB + 7, seed=4)
    before = read_by_worker(cluster)
    done = run(env, str(file), "sets/big.bin", "--part-size", "5MiB", "--cluster", cluster.address,
               "--progress", "json", timeout=240)
    assert done.returncode == 0, done.stderr + cluster.logs()
    read = {pid: n - before[pid] for pid, n in read_by_worker(cluster).items()}
    assert sum(read.values()) >= 26 * MiB, read  # the parts were read (hashed, sent) by the workers
    assert stored(s3, bucket, f"{PREFIX}/alice/sets/big.bin") == file.read_bytes()
    final = events(done.stdout)[-1]
    assert final["event"] == "completed", final
    check_signed_by_workers(door, api, env, final["upload_id"])
    seen = len(door.requests())

    tree = make_tree(tmp_path / "data", small=40, large=1)
    done = run({**env, "MPUPLOAD_CLUSTER": cluster.address}, str(tmp_path / "data"), "sets/v1/", "--part-size",
               "5MiB", "--progress", "json", timeout=240)  # (the cluster from the environment)
    assert done.returncode == 0, done.stderr + cluster.logs()
    base = f"{PREFIX}/alice/sets/v1/"
    assert stored_keys(s3, bucket, base) == {base + rel: len(data) for rel, data in tree.items()}
    for rel in ("d0/sub0/f000.bin", "d2/sub1/f029.bin", "big/large0.bin"):
        assert stored(s3, bucket, base + rel) == tree[rel], rel
    run_id = events(done.stdout)[-1]["upload_id"]
    check_signed_by_workers(door, api, env, run_id, since=seen)
    assert any(r["path"].endswith("/objects/sign") for r in signs(door, since=seen))
    assert any(r["path"].endswith("/parts/sign") for r in signs(door, since=seen))  # the large file's, too
    assert store_uploads(s3, bucket) == []


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_ctrl_c_and_resume_after_kill_9_on_the_cluster(served: tuple[Api, S3Server, str], door: Any,
                                                       cluster: DaskCluster, tmp_path: Path) -> None:
    """Ctrl+C: exit 130, the record stopped, nothing left on the store. A coordinator killed with SIGKILL keeps
    its upload; ``--resume`` on the cluster sends the rest to the same record, its workers with a new worker
    token of that upload, which replaces the killed run's."""
    api, s3, bucket = served
    env = cluster_env(api, door, tmp_path / "home")
    file = make_file(tmp_path / "big.bin", 40 * MiB, seed=3)
    args = (str(file), "sets/big.bin", "--part-size", "5MiB", "--cluster", cluster.address, "--max-bandwidth",
            "4MiB/s", "--progress", "json")

    kept, active = stop_then_kill(api, s3, bucket, env, args, timeout=90)
    first = worker_tokens(api, active["id"])
    seen = len(door.requests())
    done = run(env, str(file), "sets/big.bin", "--part-size", "5MiB", "--cluster", cluster.address, "--resume",
               "--progress", "json", timeout=240)
    assert done.returncode == 0, done.stderr + cluster.logs()
    evs = events(done.stdout)
    assert evs[0]["resumed_parts"] >= kept >= 2, (evs[0], kept)
    assert evs[-1]["upload_id"] == active["id"]
    assert stored(s3, bucket, f"{PREFIX}/alice/sets/big.bin") == file.read_bytes()
    assert store_uploads(s3, bucket) == []
    check_signed_by_workers(door, api, env, active["id"], since=seen)
    # the resumed run's workers sign with a worker token of their own; the killed run's is revoked (its tasks that
    # were still running on the workers stop signing)
    assert {r["bearer"] for r in signs(door, since=seen)} - first
    assert {revoked for token_hash, _, _, revoked in stored_tokens(api) if token_hash in first} == {1}


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_a_worker_that_cannot_reach_the_api_server_stops_the_run_before_it_starts(
        served: tuple[Api, S3Server, str], tmp_path: Path) -> None:
    """The classic slip: logged in as ``http://localhost:PORT`` on the coordinator, a worker elsewhere cannot reach
    that. Here the worker's own ``/etc/hosts`` (a mount namespace of its own) sends ``localhost`` to an address
    nothing listens on: the run stops before anything is created or sent, naming the worker and the server."""
    if os.geteuid() != 0:
        (pytest.fail if IN_CI else pytest.skip)("a worker with an /etc/hosts of its own needs root")
    api, s3, bucket = served
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.9 localhost\n")
    env = user_env(api, tmp_path / "home")
    env["MPUPLOAD_API_URL"] = f"http://localhost:{api.port}"
    c = start_cluster(tmp_path / "dask", bare_env(tmp_path / "worker-home"), workers=0)
    try:
        odd = c.start_worker(bare_env(tmp_path / "worker-home"), private_mount=(hosts, Path("/etc/hosts")))
        c.wait_workers(1)
        file = make_file(tmp_path / "f.bin", 6 * MiB, seed=1)
        done = run(env, str(file), "sets/f.bin", "--part-size", "5MiB", "--cluster", c.address, timeout=120)
        odd_pid = c.worker_pid(odd)
    finally:
        c.stop()
    assert done.returncode == 1, done.stderr + c.logs()
    line = done.stderr.strip().splitlines()[-1]
    assert f"pid {odd_pid}) cannot reach the API server at http://localhost:{api.port}" in line, line
    assert "Connection refused" in line and "nothing was sent" in line, line
    assert records(api, env) == [] and store_uploads(s3, bucket) == []
