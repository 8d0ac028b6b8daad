"""The cluster benchmark's smoke run (benchmarks/cluster.py, issue 14): two simulated hosts (network namespaces
with shaped veths, a ``dask worker`` in each), a small file, the discard endpoint.

Nothing here asserts a speed: at this size the figures are dominated by start-up. The benchmark must run every
row to a checked upload, write plausible figures, spread the cluster's bytes over its hosts, and leave nothing
behind: no namespace, link or address of its run. It needs root (network namespaces): a skip on a developer's
machine without it, a failure under ``CI=true`` (CI runs as root).

It is not marked ``bench``, so it runs in the ``other`` half of the suite (tests/conftest.py), apart from the
other smoke benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import IN_CI

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 180  # about 30 s on an idle 2-core machine
ROWS = {"local-root", "local-ns", "cluster-1", "cluster-2", "cluster-2-parts8MiB"}


def _leftovers(prefix: str) -> list[str]:
    link_prefix = prefix.replace("-", "")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    left = [line for line in netns.splitlines() if line.startswith(prefix + "-")]
    left += [m.group(1) for m in re.finditer(r"^\d+: ([^:@]+)", links, re.M) if m.group(1).startswith(link_prefix)]
    return left


def _remove(prefix: str) -> None:
    """Delete a killed run's namespaces and links."""
    for name in _leftovers(prefix):
        if name.startswith(prefix + "-"):
            subprocess.run(["ip", "netns", "del", name.split()[0]], check=False, capture_output=True)
        else:
            subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


def _wait_nothing_left(prefix: str, timeout: float = 10.0) -> list[str]:
    """The kernel removes a deleted namespace's links asynchronously: poll (bounded) until they are gone."""
    deadline = time.monotonic() + timeout
    while True:
        left = _leftovers(prefix)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.mark.timeout(DEADLINE_S + 30)
def test_cluster_bench_smoke_runs_every_row_and_leaves_nothing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        (pytest.fail if IN_CI else pytest.skip)("network namespaces need root (CI runs as root)")
    out = tmp_path / "cluster.json"
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- cluster:start -->\nold\n<!-- cluster:end -->\nafter\n")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.cluster", "--quick", "--hosts", "1,2", "--size", "32MiB",
         "--part-size", "5MiB", "--alt-part-size", "8MiB", "--rate", "64MiB", "--out", str(out),
         "--readme", str(readme), "--tmpdir", str(tmp_path)],
        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DEADLINE_S, check=False,
    )
    assert proc.returncode == 0, f"cluster smoke benchmark failed:\n{proc.stderr[-6000:]}"
    doc = json.loads(out.read_text())
    prefix = doc["config"]["prefix"]

    # nothing left behind: the runner's own check, and ours
    assert doc["leftovers"] == {"netns": [], "links": [], "addresses": []}, doc["leftovers"]
    assert _wait_nothing_left(prefix) == []
    service = doc["config"]["service_ip"]
    lo = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True,
                        check=True).stdout
    assert f" {service}/" not in lo

    assert doc["benchmark"] == "cluster" and doc["config"]["quick"] is True
    assert doc["config"]["hosts"] == [1, 2] and doc["config"]["size_bytes"] == 32 * 1024 * 1024
    assert "tbf" in doc["config"]["qdisc"]
    size = doc["config"]["size_bytes"]
    rows = doc["servers"]["discard"]["rows"]
    assert set(rows) == ROWS
    for name, row in rows.items():
        assert row["ok_runs"] == 1 and row["failed_runs"] == 0, (name, [r["error"] for r in row["runs"]])
        med = row["median"]
        for key in ("transfer_s", "transfer_mib_s", "wall_s", "coordinator_cpu_s"):
            assert med[key] is not None and med[key] > 0, (name, key, med)
    assert doc["servers"]["discard"]["per_host_mib_s"] > 0

    # the local run inside namespace 1 went through its veth; the unshaped one through none
    ns1 = f"{prefix}-1"
    assert rows["local-ns"]["sent_bytes"][ns1] >= size
    assert rows["local-root"]["sent_bytes"][ns1] < size // 4
    for n in (1, 2):
        row = rows[f"cluster-{n}"]
        assert row["hosts_seen"] == n and row["workers_seen"] == n, row  # worker processes
        assert row["median"]["workers_cpu_s"] > 0 and row["median"]["coordinator_transfer_cpu_s"] is not None
        sent = row["sent_bytes"]
        assert sum(sent.values()) >= size  # headers included
        for i in range(1, n + 1):  # every host sent a share of the parts
            assert sent[f"{prefix}-{i}"] >= 5 * 1024 * 1024, (n, sent)
        assert row["ratio_vs_per_host"] is not None and row["ratio_vs_per_host"] > 0
        assert [t["met"] in (True, False) for t in row["targets"]] == [True, True, True, True]

    model = doc["servers"]["discard"]["coordinator_model"]  # two part counts, two durations: the fit exists
    assert model is not None and model["points"] == 3, model
    assert rows["cluster-2"]["steady_cpu_s_per_gib"] is not None

    # the README block was replaced by the table
    text = readme.read_text()
    assert text.startswith("before\n<!-- cluster:start -->\n") and text.endswith("<!-- cluster:end -->\nafter\n")
    assert "| cluster, 2 hosts | 2 |" in text and "old" not in text


@pytest.mark.timeout(120)
def test_cluster_bench_removes_everything_when_terminated_mid_upload(tmp_path: Path) -> None:
    """SIGTERM while an upload runs inside a namespace: the runner stops the CLI and the servers, deletes the
    namespaces, links and address it made, and exits 143."""
    import psutil

    if os.geteuid() != 0:
        (pytest.fail if IN_CI else pytest.skip)("network namespaces need root (CI runs as root)")
    log = tmp_path / "runner.log"
    with open(log, "wb") as err:
        runner = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.cluster", "--quick", "--hosts", "1", "--size", "32MiB",
             "--part-size", "8MiB", "--rate", "2MiB", "--no-local-root", "--out", str(tmp_path / "c.json"),
             "--tmpdir", str(tmp_path)],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    prefix = f"mpub-{runner.pid}"
    try:
        own_netns = os.readlink("/proc/self/ns/net")

        def uploading_cli() -> psutil.Process | None:
            """The CLI uploading from inside a namespace (``ip netns exec`` has exec'd it: its network namespace
            is not ours)."""
            for child in psutil.Process(runner.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error, OSError):
                    cmd = child.cmdline()
                    if ("mpupload" in cmd and "upload" in cmd
                            and os.readlink(f"/proc/{child.pid}/ns/net") != own_netns):
                        return child
            return None

        deadline = time.monotonic() + 60
        cli = None
        while cli is None:  # the one-host local run has started inside namespace 1 (16 s at 2 MiB/s)
            assert runner.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"no upload started in a namespace:\n{log.read_text()}"
            cli = uploading_cli()
            time.sleep(0.1)
        assert _leftovers(prefix), "the namespace should exist while the upload runs"
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=60) == 143, log.read_text()
    finally:
        if runner.poll() is None:  # killed, it cannot clean up: remove what it made here
            runner.kill()
            runner.wait()
            _remove(prefix)
            service = re.search(r"service address ([0-9.]+),", log.read_text())
            if service:
                subprocess.run(["ip", "addr", "del", f"{service.group(1)}/32", "dev", "lo"], check=False,
                               capture_output=True)
    assert _wait_nothing_left(prefix) == [], log.read_text()
    assert not cli.is_running() or cli.status() == psutil.STATUS_ZOMBIE
    assert "removed every namespace, link and address" in log.read_text()
    assert not (tmp_path / "c.json").exists()  # nothing is published from an interrupted run
