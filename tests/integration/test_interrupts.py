"""Ctrl+C, SIGTERM, dying workers and a dying coordinator — real signals to real process groups."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import SERVERS
from tests.support.cli import (
    CliProcess,
    cli_env,
    events,
    make_file,
    multipart_uploads,
    sha256_file,
    sha256_object,
    signal_group,
    start_cli,
)
from tests.support.proxy import ProxyHandle, proxy_for
from tests.support.s3server import S3Server, wait_until

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


@pytest.fixture
def slow(s3: S3Server, tmp_path: Path) -> Iterator[tuple[S3Server, ProxyHandle]]:
    """The server behind a proxy that lets each connection send about 3 MiB/s."""
    proxy = proxy_for(s3, throttle_bps=3 * MiB,
                        log_path=tmp_path / "proxy.jsonl")
    yield proxy.s3server(s3), proxy
    proxy.stop()


def progressing(cli: CliProcess, at_least: int = 1, timeout: float = 60) -> dict[str, Any]:
    line = cli.wait_line(lambda l: l.startswith("{") and json.loads(l)["event"] == "progress"
                         and json.loads(l)["bytes_done"] >= at_least, timeout)
    return dict(json.loads(line))


def worker_pids(cli: CliProcess) -> list[int]:
    try:
        children = psutil.Process(cli.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c.pid for c in children if "multiprocessing" in " ".join(c.cmdline()) or c.ppid() == cli.pid]


def alive(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_aborts_and_exits_130(slow: tuple[S3Server, ProxyHandle], s3: S3Server, bucket: str,
                                     tmp_path: Path, sig: int) -> None:
    server, _ = slow
    src = make_file(tmp_path / "f.bin", 60 * MiB)
    state = tmp_path / "state"
    state.mkdir()
    cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--workers", "2",
                    "--progress", "json", env=cli_env(server, MPUPLOAD_STATE_DIR=str(state)))
    try:
        progressing(cli)
        assert list(state.glob("*.json")), "a running multipart upload has a journal"
        signal_group(cli, sig)
        assert cli.wait(15) == 130, cli.stderr
    finally:
        cli.kill_group()
    final = events(cli.stdout)[-1]
    assert final["event"] == "stopped" and final["status"] == "stopped"
    assert final["aborted"] is True
    assert final["bytes_done"] <= final["total_bytes"]
    assert "Traceback" not in cli.stderr
    assert cli.stderr.strip().splitlines()[-1].startswith("mpupload: stopped")
    assert multipart_uploads(s3.client(), bucket) == []
    assert not list(state.glob("*.json")), "an aborted upload leaves no journal"


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_keep_on_interrupt_leaves_exactly_one(slow: tuple[S3Server, ProxyHandle], s3: S3Server, bucket: str,
                                              tmp_path: Path) -> None:
    server, _ = slow
    src = make_file(tmp_path / "f.bin", 60 * MiB)
    cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--workers", "2",
                    "--progress", "json", "--keep-on-interrupt", env=cli_env(server))
    try:
        progressing(cli)
        signal_group(cli, signal.SIGINT)
        assert cli.wait(15) == 130, cli.stderr
    finally:
        cli.kill_group()
    final = events(cli.stdout)[-1]
    assert final["event"] == "stopped" and final["aborted"] is False
    uploads = multipart_uploads(s3.client(), bucket)
    assert len(uploads) == 1 and uploads[0]["Key"] == "k"
    assert uploads[0]["UploadId"] == final["store_upload_id"]


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_sigint_with_512mib_parts_exits_within_5s(slow: tuple[S3Server, ProxyHandle], s3: S3Server, bucket: str,
                                                   tmp_path: Path) -> None:
    """A part is not finished before the cancel is noticed: the body reader checks between chunks."""
    server, _ = slow
    src = tmp_path / "sparse.bin"
    with open(src, "wb") as fh:
        fh.truncate(1024 * MiB + 1)
    cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "512MiB", "--workers", "2",
                    "--progress", "json", env=cli_env(server))
    try:
        progressing(cli, at_least=2 * MiB, timeout=90)
        sent = time.monotonic()
        signal_group(cli, signal.SIGINT)
        assert cli.wait(30) == 130, cli.stderr
        took = time.monotonic() - sent
    finally:
        cli.kill_group()
    assert took < 5.0, f"exited {took:.1f}s after SIGINT"
    assert events(cli.stdout)[-1]["event"] == "stopped"
    assert multipart_uploads(s3.client(), bucket) == []


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_second_sigint_exits_at_once_and_says_what_is_left(slow: tuple[S3Server, ProxyHandle], s3: S3Server,
                                                           bucket: str, tmp_path: Path) -> None:
    server, _ = slow
    src = tmp_path / "sparse.bin"
    with open(src, "wb") as fh:
        fh.truncate(1024 * MiB)
    cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "512MiB", "--workers", "2",
                    "--progress", "plain", env=cli_env(server))
    try:
        wait_until(lambda: bool(worker_pids(cli)), 30, "workers to start")
        os.kill(cli.pid, signal.SIGINT)
        cli.wait_line(lambda l: "press Ctrl+C again" in l, 10, stream="stderr")
        os.kill(cli.pid, signal.SIGINT)
        assert cli.wait(10) == 130
    finally:
        cli.kill_group()
    assert "second signal" in cli.stderr
    # the exact command that removes what may be left (mpupload cleanup of this upload id), or nothing
    assert re.search(r"mpupload cleanup s3://\S+/k --upload-id \S+ --endpoint-url", cli.stderr) \
        or "nothing was left" in cli.stderr, cli.stderr
    # the workers follow their coordinator
    wait_until(lambda: not any(alive(p) for p in worker_pids(cli)), 10, "workers to exit")


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_killed_worker_is_replaced_and_the_object_is_right(slow: tuple[S3Server, ProxyHandle], s3: S3Server,
                                                           bucket: str, tmp_path: Path) -> None:
    server, _ = slow
    src = make_file(tmp_path / "f.bin", 30 * MiB + 5, seed=7)
    cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--workers", "2",
                    "--progress", "json", env=cli_env(server))
    try:
        progressing(cli, at_least=MiB)
        victims = worker_pids(cli)
        assert victims, "no worker processes found"
        os.kill(victims[0], signal.SIGKILL)
        assert cli.wait(120) == 0, cli.stderr
    finally:
        cli.kill_group()
    assert "died" in cli.stderr
    evs = events(cli.stdout)
    assert evs[-1]["event"] == "completed" and evs[-1]["bytes_done"] == src.stat().st_size
    assert all(e["bytes_done"] <= e["total_bytes"] for e in evs)
    assert sha256_object(s3.client(), bucket, "k") == sha256_file(src)
    assert multipart_uploads(s3.client(), bucket) == []


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_workers_die_with_a_killed_coordinator(slow: tuple[S3Server, ProxyHandle], s3: S3Server, bucket: str,
                                               tmp_path: Path, method: str) -> None:
    server, _ = slow
    src = make_file(tmp_path / "f.bin", 40 * MiB)
    cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--workers", "3",
                    "--progress", "json", env=cli_env(server, MPUPLOAD_START_METHOD=method))
    try:
        progressing(cli)
        workers = worker_pids(cli)
        assert workers
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(10)
        wait_until(lambda: not any(alive(p) for p in workers), 5, f"workers {workers} to exit")
    finally:
        cli.kill_group()
