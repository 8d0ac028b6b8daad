"""``mpupload demo --cluster N``: a real ``dask scheduler`` and N real ``dask worker`` processes started by the demo,
the upload sent from them, and every one of them stopped by PID afterwards — after the upload and on Ctrl+C.

The demo prints the pids of the scheduler and the workers; every process it starts also inherits
``MPUPLOAD_TEST_TAG``, so a process it forgot is found even if its pid was never printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.cli import cli_env, events, run_cli, signal_group, start_cli
from tests.support.s3server import wait_until

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
CLUSTER_LINE = re.compile(r"Dask scheduler at (tcp://127\.0\.0\.1:\d+) \(pid (\d+)\) with (\d+) workers? of \d+ "
                          r"threads \(pids ([\d, ]+)\)")


def dask_pids(stderr: str) -> list[int]:
    """The scheduler's and the workers' pids, as the demo printed them."""
    match = CLUSTER_LINE.search(stderr)
    assert match, stderr
    return [int(match.group(2)), *(int(p) for p in match.group(4).split(", "))]


def tagged_processes(tag: str) -> list[psutil.Process]:
    """The live processes that carry the tag."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and p.environ().get("MPUPLOAD_TEST_TAG") == tag:
                found.append(p)
        except (psutil.Error, OSError):
            pass
    return found


def tagged(tag: str) -> list[list[str]]:
    return [p.info["cmdline"] for p in tagged_processes(tag)]


@pytest.fixture
def tag() -> Iterator[str]:
    """A tag for the demo's environment; whatever still carries it after the test is killed (a failed test
    leaves nothing running)."""
    value = uuid.uuid4().hex
    yield value
    for p in tagged_processes(value):
        with contextlib.suppress(psutil.Error):
            p.kill()


def no_tagged_process(tag: str) -> None:
    assert tagged(tag) == []


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def blocked_signals(pid: int) -> set[int]:
    """The signals a process blocks (a SIGTERM it blocks would not stop it)."""
    with open(f"/proc/{pid}/status") as fh:
        mask = int(next(line for line in fh if line.startswith("SigBlk:")).split()[1], 16)
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def assert_nothing_left(pids: list[int], tag: str) -> None:
    assert [pid for pid in pids if not gone(pid)] == []
    no_tagged_process(tag)


def test_demo_cluster_uploads_from_two_dask_workers_and_stops_them(tag: str) -> None:
    proc = run_cli("demo", "--cluster", "2", "--size", "24MiB", "--part-size", "5MiB", "--exit-after-upload",
                   "--progress", "json", "--port", "0", env={**cli_env(None), "MPUPLOAD_TEST_TAG": tag}, timeout=180)
    assert proc.returncode == 0, proc.stderr
    match = CLUSTER_LINE.search(proc.stderr)
    assert match and match.group(3) == "2", proc.stderr
    assert "uploading a 24.0 MiB sample to s3://demo/sample.bin from 2 Dask workers" in proc.stderr
    evs = events(proc.stdout)
    started = next(e for e in evs if e["event"] == "started")
    assert started["workers"] == 2 and started["hosts"] == 1, started
    done = evs[-1]
    assert done["event"] == "completed", done
    assert done["bytes_done"] == done["total_bytes"] == 24 * MiB and done["parts_done"] == done["parts_total"] == 5
    assert done["verified"] in ("crc32c", "md5"), done  # the store's checksum or ETag matched the file's
    assert "the server recorded the upload as COMPLETED" in proc.stderr
    assert_nothing_left(dask_pids(proc.stderr), tag)


def test_demo_cluster_ctrl_c_during_the_upload_stops_every_dask_process(tag: str) -> None:
    proc = start_cli("demo", "--cluster", "2", "--size", "400MiB", "--part-size", "5MiB", "--progress", "plain",
                     "--port", "0", env={**cli_env(None), "MPUPLOAD_TEST_TAG": tag})
    try:
        proc.wait_line(lambda line: line.startswith("upload: s3://demo/"), 120, stream="stderr")
        pids = dask_pids(proc.stderr)
        assert all(not gone(pid) for pid in pids)  # the cluster was up while the upload ran
        # none keeps SIGINT/SIGTERM blocked (a process may block them for a moment, e.g. while it starts a
        # thread, and a busy machine can catch it there: the state must clear, not be seen clear at one instant)
        wait_until(lambda: [pid for pid in pids if blocked_signals(pid) & {signal.SIGINT, signal.SIGTERM}] == [],
                   10, "no dask process keeps SIGINT/SIGTERM blocked")
        signal_group(proc.popen)  # as a terminal's Ctrl+C does
        rc = proc.wait(60)
    finally:
        if proc.popen.poll() is None:
            proc.kill_group()
    assert rc == 130, proc.stderr
    assert "the server recorded the upload as STOPPED" in proc.stderr
    assert_nothing_left(pids, tag)


def test_demo_cluster_sigterm_while_the_cluster_starts_stops_everything(tag: str) -> None:
    proc = start_cli("demo", "--cluster", "3", "--size", "8MiB", "--progress", "plain", "--port", "0",
                     env={**cli_env(None), "MPUPLOAD_TEST_TAG": tag})
    try:
        # the scheduler is started; the workers are starting or joining
        wait_until(lambda: proc.popen.poll() is not None
                   or any("distributed.cli.dask_scheduler" in " ".join(c) for c in tagged(tag)), 60,
                   "the demo's dask scheduler")
        assert "Dask scheduler at" not in proc.stderr  # not ready yet: the demo is still starting it
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(60)
    finally:
        if proc.popen.poll() is None:
            proc.kill_group()
    no_tagged_process(tag)
    assert rc == 130, proc.stderr


@pytest.mark.parametrize("value", ["0", "-1", "x", "17", "2.5"])
def test_demo_cluster_refuses_a_bad_worker_count(value: str, tag: str) -> None:
    proc = run_cli("demo", "--cluster", value, "--exit-after-upload",
                   env={**cli_env(None), "MPUPLOAD_TEST_TAG": tag}, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpupload: error: argument --cluster:"), proc.stderr
    assert "use 1 to 16" in lines[0]
    assert proc.stdout == ""


def test_demo_cluster_without_dask_says_what_to_install(tmp_path: Path, tag: str) -> None:
    shim = tmp_path / "distributed"  # an interpreter where ``import distributed`` fails
    shim.mkdir()
    (shim / "__init__.py").write_text("raise ImportError(\"No module named 'distributed'\", name='distributed')\n")
    proc = run_cli("demo", "--cluster", "2", "--exit-after-upload",
                   env={**cli_env(None), "PYTHONPATH": str(tmp_path), "MPUPLOAD_TEST_TAG": tag}, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'mpupload[cluster]'" in lines[0], proc.stderr
    no_tagged_process(tag)  # it started nothing
