"""The ingest benchmark runs end to end (``python -m benchmarks.ingest --smoke``: a real server on SQLite,
20 uploads reporting, 5 GraphQL subscribers, a few seconds) and writes a sane result.

Nothing here asserts a rate or a latency: only that every phase ran, counted something, and that every
subscriber received events caused by the reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.bench]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 120


@pytest.mark.timeout(DEADLINE_S + 30)
def test_ingest_smoke_benchmark_writes_a_sane_result(tmp_path: Path) -> None:
    out = tmp_path / "ingest.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ingest", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DEADLINE_S, check=False,
    )
    assert proc.returncode == 0, f"smoke ingest benchmark failed:\n{proc.stderr[-6000:]}"
    doc = json.loads(out.read_text())

    assert doc["benchmark"] == "ingest" and doc["smoke"] is True
    assert doc["machine"]["nproc"] >= 1 and doc["machine"]["python"].startswith("3.")
    assert 0 <= doc["machine"]["busy_cores_before_start"] <= doc["machine"]["nproc"]  # other work, measured
    assert "| sqlite |" in doc["markdown"] and "| sqlite |" in proc.stdout
    [result] = doc["results"]
    assert result["backend"] == "sqlite" and "error" not in result
    assert result["uploads"] == 20 and result["subscribers"] == 5
    assert result["subscribers_connected"] == 5
    assert result["subscriber_failures_total"] == 0, result["subscriber_failures"]
    assert result["every_subscriber_got_events"] is True

    open_loop = result["open_loop"]
    assert open_loop["offered_per_s"] == 40.0
    assert open_loop["accepted_reports"] > 0 and open_loop["accepted_per_s"] > 0
    assert open_loop["http_errors"] == 0, open_loop["http_errors_by_kind"]
    assert open_loop["subscribers_with_events"] == 5
    assert 0 < open_loop["events_received"] <= open_loop["events_expected"]
    for key in ("report_rtt_ms", "event_latency_ms"):
        figures = open_loop[key]
        assert figures["p50"] is not None and 0 < figures["p50"] <= figures["p99"] <= figures["max"], (key, figures)
    assert open_loop["server_cpu_s_per_1k_reports"] > 0
    assert open_loop["server_peak_rss_mib"] > 0

    for name in ("closed_loop_with_subscribers", "closed_loop_without_subscribers"):
        closed = result[name]
        assert closed["accepted_reports"] > 0 and closed["accepted_per_s"] > 0, (name, closed)
        assert closed["concurrency"] == 4
    assert result["closed_loop_with_subscribers"]["events_received"] > 0
    assert result["target"]["met"] is False  # 40 reports/s offered cannot meet a 500/s target
