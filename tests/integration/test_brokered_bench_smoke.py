"""The brokered benchmark (issue 15: brokered against direct on the discard endpoint, one API server) runs end to
end on a small file: every run of both kinds uploads (exit 0) and the JSON the figures come from is whole.

Nothing here asserts a speed: at 24 MiB the figures are process start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.bench]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 240


@pytest.mark.timeout(DEADLINE_S + 30)
def test_brokered_bench_smoke_runs_both_kinds(tmp_path: Path) -> None:
    out = tmp_path / "brokered-smoke.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.brokered", "--size", "24MiB", "--runs", "1",
                           "--part-size", "8MiB", "--out", str(out)], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=DEADLINE_S, check=False)
    assert proc.returncode == 0, f"brokered smoke benchmark failed:\n{proc.stderr[-6000:]}"
    doc = json.loads(out.read_text())
    assert doc["size_bytes"] == 24 * 1024 * 1024 and doc["parts"] == 3
    for kind in ("direct", "brokered"):
        [row] = doc["runs"][kind]
        assert row["exit"] == 0 and row["mib_s"] > 0 and row["cpu_s_per_gib"] > 0, row
        assert row["server_cpu_s"] >= 0, row
    assert doc["brokered_over_direct_speed"] > 0
    assert set(doc["targets"]) == {"brokered >= 0.95x direct", "server <= 1 ms per signed part"}
