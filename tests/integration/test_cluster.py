"""Cluster runs (issue 14): the real CLI as coordinator, a real ``dask scheduler`` and three ``dask worker``
processes (tests/support/dask_cluster.py), moto's S3 server.

The workers get the S3 server's keys in their own environment (their credential chain) but not its endpoint:
the coordinator resolves that and sends it with the tasks. That every worker sent bytes is read from the worker
processes themselves (``/proc/PID/io``'s ``rchar``: the part bodies they read), not from mpupload's output.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import cli_env, events, make_file, multipart_uploads, run_cli, sha256_file, sha256_object
from tests.support.dask_cluster import DaskCluster, proc_io, start_cluster
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


def worker_env(server: S3Server) -> dict[str, str]:
    """A worker's own environment: the store's keys, not its endpoint (that comes from the coordinator)."""
    env = cli_env(server)
    env.pop("AWS_ENDPOINT_URL", None)
    return env


@pytest.fixture(scope="module")
def cluster(moto_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    c = start_cluster(tmp_path_factory.mktemp("dask"), worker_env(moto_server), workers=3, nthreads=2)
    yield c
    c.stop()


def read_by_worker(cluster: DaskCluster) -> dict[int, int]:
    return {w.pid: proc_io(cluster.worker_pid(w))["rchar"] for w in cluster.workers}


def check_events(stdout: str, *, workers: int = 3) -> list[dict[str, Any]]:
    evs = events(stdout)
    started = next(e for e in evs if e["event"] == "started")
    assert started["workers"] == workers and started["hosts"] == 1, started
    for e in evs:
        assert 0 <= e["bytes_done"] <= e["total_bytes"], e
    assert evs[-1]["event"] == "completed", evs[-1]
    assert evs[-1]["bytes_done"] == evs[-1]["total_bytes"]
    return evs


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_a_big_file_goes_up_from_every_worker(cluster: DaskCluster, s3: S3Server, bucket: str,
                                              tmp_path: Path) -> None:
    src = make_file(tmp_path / "big.bin", 60 * MiB + 123, seed=14)
    before = read_by_worker(cluster)
    done = run_cli("upload", str(src), f"s3://{bucket}/big.bin", "--cluster", cluster.address, "--part-size", "5MiB",
                   "--progress", "json", env=cli_env(s3), timeout=180)
    assert done.returncode == 0, done.stderr + cluster.logs()
    after = read_by_worker(cluster)
    check_events(done.stdout)
    assert sha256_object(s3.client(), bucket, "big.bin") == sha256_file(src)
    assert multipart_uploads(s3.client(), bucket) == []
    read = {pid: after[pid] - before[pid] for pid in before}
    # each worker read at least one whole part of the file (a part is read to hash it, then to send it)
    assert all(n >= 5 * MiB for n in read.values()), read
    assert sum(read.values()) >= 60 * MiB, read


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_a_directory_goes_up_from_every_worker(cluster: DaskCluster, s3: S3Server, bucket: str,
                                               tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files: dict[str, Path] = {}
    (tree / "large").mkdir(parents=True)
    (tree / "small").mkdir()
    for n in range(3):
        files[f"large/{n}.bin"] = make_file(tree / "large" / f"{n}.bin", 25 * MiB + n, seed=100 + n)
    for n in range(90):
        files[f"small/{n:03d}.txt"] = make_file(tree / "small" / f"{n:03d}.txt", 10_000 + n, seed=n)
    before = read_by_worker(cluster)
    done = run_cli("upload", str(tree), f"s3://{bucket}/sets/", "--cluster", cluster.address, "--part-size", "5MiB",
                   "--progress", "json", env=cli_env(s3), timeout=180)
    assert done.returncode == 0, done.stderr + cluster.logs()
    after = read_by_worker(cluster)
    evs = check_events(done.stdout)
    assert evs[-1]["files_done"] == len(files)
    client = s3.client()
    for rel, path in files.items():
        assert sha256_object(client, bucket, f"sets/{rel}") == sha256_file(path), rel
    assert multipart_uploads(client, bucket) == []
    read = {pid: after[pid] - before[pid] for pid in before}
    assert all(n >= 5 * MiB for n in read.values()), read



# -- a worker that sees another file at the same path ----------------------------------------------------------------

@pytest.fixture(scope="module")
def odd_cluster(moto_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaskCluster, Path,
                                                                                                    int]]:
    """Two workers that see ``data/`` as it is, and one that sees ``other/`` mounted over it (its own mount
    namespace): the same names and sizes, other bytes and times. Yields the cluster, ``data/`` and that worker's
    pid."""
    base = tmp_path_factory.mktemp("odd")
    data, other = base / "data", base / "other"
    for d, seed in ((data, 1), (other, 2)):
        (d / "sub").mkdir(parents=True)
        make_file(d / "big.bin", 12 * MiB, seed=seed)
        make_file(d / "sub" / "small.txt", 1000, seed=seed)
    os.utime(other / "sub" / "small.txt", ns=(1, 1))
    c = start_cluster(base / "dask", worker_env(moto_server), workers=2, nthreads=2)
    try:
        odd = c.start_worker(worker_env(moto_server), private_mount=(other, data))
        c.wait_workers(3)
    except BaseException:
        c.stop()
        raise
    yield c, data, odd.pid
    c.stop()


def nothing_on_the_store(s3: S3Server, bucket: str) -> None:
    client = s3.client()
    assert multipart_uploads(client, bucket) == []
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_worker_that_sees_another_source_stops_the_run_before_any_part(
        odd_cluster: tuple[DaskCluster, Path, int], s3: S3Server, bucket: str, what: str) -> None:
    cluster, data, odd_pid = odd_cluster
    source, dest = (data / "big.bin", f"s3://{bucket}/big.bin") if what == "file" else (data, f"s3://{bucket}/d/")
    done = run_cli("upload", str(source), dest, "--cluster", cluster.address, "--part-size", "5MiB",
                   "--progress", "json", env=cli_env(s3), timeout=120)
    assert done.returncode == 2, done.stderr + cluster.logs()
    line = done.stderr.strip().splitlines()[-1]
    assert f"pid {odd_pid}" in line and "sees a different source" in line, done.stderr
    assert "Traceback" not in done.stderr
    assert not [e for e in events(done.stdout) if e["event"] in ("started", "progress")]
    nothing_on_the_store(s3, bucket)
