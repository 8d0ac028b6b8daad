"""The push benchmark (issue 5: reporting to a healthy, a slow and a hanging API server against --no-report)
runs end to end on a small file.

Nothing here asserts a speed: at 16 MiB the figures are dominated by process start-up. The benchmark must
*run* every variant to a successful upload, write the JSON the report is made from, and the server record of
every reporting variant that has a server able to keep it must end completed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.bench]

REPO_ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {"no-report", "healthy", "healthy-0.25s", "slow", "hanging"}
DEADLINE_S = 240  # about 30 s on an idle 2-core machine; generous for a shared one


@pytest.mark.timeout(DEADLINE_S + 30)
def test_push_bench_smoke_runs_every_variant(tmp_path: Path) -> None:
    out = tmp_path / "push-smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.push", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DEADLINE_S, check=False,
    )
    assert proc.returncode == 0, f"push smoke benchmark failed:\n{proc.stderr[-6000:]}"
    doc = json.loads(out.read_text())

    assert doc["benchmark"] == "push" and doc["config"]["smoke"] is True
    assert doc["config"]["rounds"] == 1 and doc["config"]["size_bytes"] > 0
    assert set(doc["config"]["variants"]) == VARIANTS
    for key in ("cpu_model", "nproc", "kernel", "python"):
        assert doc["machine"][key], key
    assert set(doc["servers"]) == {"discard"}
    variants = doc["servers"]["discard"]["variants"]
    assert set(variants) == VARIANTS

    for name, entry in variants.items():
        assert entry["ok_runs"] == 1 and entry["failed_runs"] == 0, f"{name}: {entry.get('error')}"
        (run,) = entry["runs"]
        assert run["ok"] and run["exit_code"] == 0, f"{name}: {run['error']}"
        assert run["wall_s"] > 0 and run["cpu_s"] > 0 and run["peak_rss_mib"] > 0, name
        # the CLI's own completed event was parsed: the transfer figures and the timeline exist
        assert run["transfer_s"] is not None and run["transfer_mib_s"] is not None, name
        assert run["before_start_s"] is not None and run["after_completed_s"] is not None, name
        assert entry["median"] is not None and entry["ratio_vs_no_report"] is not None, name
        assert ("--no-report" in run["command"]) == (name == "no-report"), name
        if name in ("healthy", "healthy-0.25s", "slow"):
            assert run["record_completed"] is True, f"{name}: record ended {run['record_status']}"
            assert run["reports_received"] and run["reports_received"] >= 2, name
            assert "target" in entry, name
        else:
            assert run["record_completed"] is None, name

    # the hanging server really hung: the CLI warned once and went ahead
    hanging = variants["hanging"]["runs"][0]
    assert any("did not answer" in line for line in hanging["warnings"]), hanging["warnings"]
    assert doc["api_server"]["hanging_connections_accepted"] >= 1
    assert doc["api_server"]["slow_proxy_requests"] >= 3

    # the markdown table renders from the JSON
    from benchmarks import push

    table = push.render(doc)
    for name in VARIANTS:
        assert f"| {name} | 1/1 |" in table
