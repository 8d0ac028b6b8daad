"""benchmarks/datasets.py --merge: runs of different trees joined into one results document (pure logic)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import datasets

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "datasets.json"


def run_of(trees: list[str], when: str, load: float, startup: dict[str, Any] | None) -> dict[str, Any]:
    return {"machine": {"cpu_model": "cpu", "nproc": 2}, "generated_at": when, "finished_at": when,
            "load_average_at_start": [load, 0.0, 0.0],
            "config": {"runs": 3, "trees": {t: {"files": 1} for t in trees}},
            "trees": {t: {"label": t, "servers": {}} for t in trees}, "startup": startup}


def test_merge_joins_the_trees_in_their_order_and_names_every_run() -> None:
    first = run_of(["small", "mixed"], "2026-12-03T07:08:31+00:00", 0.9, {"started_s": 1.0})
    second = run_of(["large"], "2026-12-03T07:19:53+00:00", 1.3, {"started_s": 0.8})
    doc = datasets.merge([first, second])
    assert list(doc["trees"]) == ["small", "large", "mixed"]
    assert set(doc["config"]["trees"]) == {"small", "large", "mixed"}
    assert [r["trees"] for r in doc["runs"]] == [["small", "mixed"], ["large"]]
    assert [r["load_average_at_start"][0] for r in doc["runs"]] == [0.9, 1.3]
    assert doc["startup"] == {"started_s": 0.8}  # the last run's start-up check
    assert doc["finished_at"] == second["finished_at"]
    assert first["trees"] == {t: {"label": t, "servers": {}} for t in ("small", "mixed")}  # inputs untouched


def test_merge_refuses_results_of_different_machines() -> None:
    other = run_of(["large"], "2026-12-03T07:19:53+00:00", 1.3, None)
    other["machine"] = {"cpu_model": "another", "nproc": 8}
    with pytest.raises(ValueError, match="different machines"):
        datasets.merge([run_of(["small"], "2026-12-03T07:08:31+00:00", 0.9, None), other])


def test_the_committed_results_render_with_each_run_named() -> None:
    doc = json.loads(RESULTS.read_text())
    text = datasets.render(copy.deepcopy(doc))
    if len(doc.get("runs") or []) > 1:
        assert f"measured in {len(doc['runs'])} runs: " in text
    for tree in doc["trees"]:
        assert f"**{tree} tree" in text
