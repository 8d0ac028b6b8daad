"""``--max-bandwidth`` end to end: the real CLI, its real worker processes, moto's server.

What is measured is what the CLI itself reports (``--progress json``: ``bytes_done`` and ``elapsed_seconds`` of
every event), plus the wall time seen from here. A cap is an upper bound, so the upper side is asserted tightly and
the lower side loosely (a busy machine, e.g. CI under ``stress-ng --cpu 2``, may send slower than the cap, never
faster):

* over any interval between two events the run sent at most ``cap * interval + slack``, where the slack is the
  bucket's burst plus one chunk per concurrent sender (senders that check at the same instant each take one; see
  :mod:`mpupload.engine.throttle`) plus 50 ms of the cap for the time between reading the counter and the clock;
* the average rate in the steady part of the run (first to last progress event) is at most 5 % above the cap and at
  least 70 % of it;
* the wall time is at least ``(bytes - burst) / cap``.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from mpupload.engine.throttle import burst_for, chunk_for
from tests.support.cli import (
    cli_env,
    events,
    make_file,
    multipart_uploads,
    run_cli,
    sha256_file,
    sha256_object,
    signal_group,
    start_cli,
)
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
KiB = 1024
MiB = 1024 * KiB
#: the time between the aggregator's reading of the counter and of its clock, allowed for a busy machine
SKEW_S = 0.05


def points(evs: list[dict[str, Any]]) -> list[tuple[float, int]]:
    """(elapsed, bytes_done) of every event that samples the counter. Not ``started``: it says 0 bytes, but a
    single PutObject announces itself only once its first bytes are on the wire."""
    return [(float(e["elapsed_seconds"]), int(e["bytes_done"])) for e in evs
            if e["event"] in ("progress", "file_completed", "completed")]


def worst_excess(pts: list[tuple[float, int]], cap: int) -> float:
    """The most bytes any interval between two events carried beyond ``cap * its length``."""
    worst = 0.0
    for i, (t0, b0) in enumerate(pts):
        for t1, b1 in pts[i + 1:]:
            worst = max(worst, (b1 - b0) - cap * (t1 - t0))
    return worst


def busiest_window(pts: list[tuple[float, int]], seconds: float = 2.0) -> float:
    """The highest rate over intervals between events that last ``seconds`` give or take a quarter (bytes/s)."""
    rates = [(b1 - b0) / (t1 - t0) for i, (t0, b0) in enumerate(pts) for t1, b1 in pts[i + 1:]
             if 0.75 * seconds <= t1 - t0 <= 1.25 * seconds]
    return max(rates, default=0.0)


def steady_rate(evs: list[dict[str, Any]]) -> float:
    """Bytes per second between the first and the last ``progress`` event that is not yet at the end."""
    total = evs[0]["total_bytes"]
    prog = [(float(e["elapsed_seconds"]), int(e["bytes_done"])) for e in evs
            if e["event"] == "progress" and 0 < e["bytes_done"] < total]
    assert len(prog) >= 3, f"too few progress events to measure: {prog}"
    (t0, b0), (t1, b1) = prog[0], prog[-1]
    return (b1 - b0) / (t1 - t0)


def check_cap(evs: list[dict[str, Any]], cap: int, senders: int, size: int, wall: float, *, what: str,
              low: float = 0.70) -> dict[str, float]:
    started = evs[0]
    assert started["event"] == "started" and started["max_bandwidth_bps"] == cap
    assert evs[-1]["event"] == "completed", evs[-1]
    pts = points(evs)
    slack = burst_for(cap) + senders * chunk_for(cap) + SKEW_S * cap
    excess = worst_excess(pts, cap)
    steady = steady_rate(evs)
    window = busiest_window(pts)
    figures = {"cap_MiBps": cap / MiB, "steady_MiBps": steady / MiB, "steady_ratio": steady / cap,
               "busiest_2s_MiBps": window / MiB, "worst_excess_KiB": excess / KiB, "allowed_excess_KiB": slack / KiB,
               "wall_s": wall, "wall_ratio": size / wall / cap}
    print(f"\n{what}: " + ", ".join(f"{k}={v:.3f}" for k, v in figures.items()))
    assert excess <= slack, f"{what}: an interval carried {excess / KiB:.0f} KiB beyond the cap (allowed " \
                            f"{slack / KiB:.0f} KiB): {figures}"
    assert steady <= 1.05 * cap, f"{what}: {steady / MiB:.2f} MiB/s is above the cap: {figures}"
    assert steady >= low * cap, f"{what}: {steady / MiB:.2f} MiB/s is far below the cap: {figures}"
    assert wall >= (size - burst_for(cap)) / cap, f"{what}: done too soon for the cap: {figures}"
    return figures


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_one_large_file_holds_the_cap_over_twenty_seconds(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    cap, workers = 8 * MiB, 4
    size = 20 * cap
    src = make_file(tmp_path / "big.bin", size, seed=14)
    t = time.monotonic()
    proc = run_cli("upload", str(src), f"s3://{bucket}/big.bin", "--workers", str(workers), "--part-size", "16MiB",
                   "--max-bandwidth", "8MiB/s", "--progress", "json", env=cli_env(s3), timeout=120)
    wall = time.monotonic() - t
    assert proc.returncode == 0, proc.stderr
    check_cap(events(proc.stdout), cap, workers, size, wall, what="one 160 MiB file, 4 workers, 8MiB/s")
    assert sha256_object(s3.client(), bucket, "big.bin") == sha256_file(src)


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_a_directory_of_small_files_and_a_large_one_holds_the_cap(s3: S3Server, bucket: str,
                                                                  tmp_path: Path) -> None:
    """The large file's parts (botocore) first, then 160 small files, 8 at a time per worker (the lean PutObject)."""
    cap, workers, threads = 4 * MiB, 2, 8
    root = tmp_path / "tree"
    root.mkdir()
    make_file(root / "large.bin", 18 * MiB, seed=1)
    for n in range(160):
        make_file(root / f"small-{n:03d}.bin", 96 * KiB, seed=100 + n)
    size = 18 * MiB + 160 * 96 * KiB
    t = time.monotonic()
    proc = run_cli("upload", str(root), f"s3://{bucket}/tree/", "--workers", str(workers), "--put-threads",
                   str(threads), "--part-size", "6MiB", "--max-bandwidth", "4MiB", "--progress", "json",
                   env=cli_env(s3), timeout=120)
    wall = time.monotonic() - t
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    assert evs[-1]["files_done"] == 161
    check_cap(evs, cap, workers * threads, size, wall, what="a directory: 18 MiB + 160 x 96 KiB, 2x8 senders, 4MiB/s",
              low=0.5)
    # the small files' phase alone: its file events are frequent, and it must hold the cap by itself
    small = [(float(e["elapsed_seconds"]), int(e["bytes_done"])) for e in evs
             if e["event"] == "file_completed" and e["path"].startswith("small-")]
    assert len(small) == 160
    slack = burst_for(cap) + workers * threads * chunk_for(cap) + SKEW_S * cap
    assert worst_excess(small, cap) <= slack
    assert sha256_object(s3.client(), bucket, "tree/small-159.bin") == sha256_file(root / "small-159.bin")
    assert sha256_object(s3.client(), bucket, "tree/large.bin") == sha256_file(root / "large.bin")


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_one_small_file_in_one_put_is_capped(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """One PutObject from the coordinator's thread, through the lean path."""
    cap, size = 1 * MiB, 4 * MiB
    src = make_file(tmp_path / "small.bin", size, seed=3)
    t = time.monotonic()
    proc = run_cli("upload", str(src), f"s3://{bucket}/small.bin", "--max-bandwidth", "1MiB/s", "--progress", "json",
                   env=cli_env(s3), timeout=60)
    wall = time.monotonic() - t
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    assert evs[0]["multipart"] is False
    check_cap(evs, cap, 1, size, wall, what="one 4 MiB PutObject, 1MiB/s")
    assert sha256_object(s3.client(), bucket, "small.bin") == sha256_file(src)


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_ctrl_c_stops_a_throttled_upload_promptly(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """Every worker is asleep in the throttle most of the time: Ctrl+C still ends the run within seconds, and
    the multipart upload is aborted."""
    src = make_file(tmp_path / "f.bin", 40 * MiB, seed=5)
    cli = start_cli("upload", str(src), f"s3://{bucket}/f.bin", "--workers", "4", "--part-size", "5MiB",
                    "--max-bandwidth", "256KiB/s", "--progress", "json", env=cli_env(s3))
    try:
        cli.wait_line(lambda l: l.startswith("{") and json.loads(l)["event"] == "progress"
                      and json.loads(l)["bytes_done"] > 0, 30)
        t = time.monotonic()
        signal_group(cli, signal.SIGINT)
        rc = cli.wait(15)
        took = time.monotonic() - t
    finally:
        if cli.popen.poll() is None:
            cli.kill_group()
    assert rc == 130, cli.stderr
    assert took < 5.0, f"Ctrl+C took {took:.1f} s under a cap"
    assert events(cli.stdout)[-1]["event"] == "stopped"
    assert multipart_uploads(s3.client(), bucket) == []


BAD = [("zero", "0"), ("negative", "-5MiB/s"), ("garbage", "fast"), ("below the lowest cap", "10KiB/s"),
       ("bits", "10mbps"), ("with --cluster", "8MiB/s --cluster tcp://127.0.0.1:9")]


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
@pytest.mark.parametrize(("name", "rate"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_cap_is_one_line_and_exit_2_before_the_store(s3: S3Server, bucket: str, tmp_path: Path, name: str,
                                                           rate: str) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * (6 * MiB))
    for args in ([str(src), f"s3://{bucket}/k", "--part-size", "5MiB"], [str(tmp_path), f"s3://{bucket}/p/"]):
        rate_arg, *more = rate.split()
        proc = run_cli("upload", *args, f"--max-bandwidth={rate_arg}", *more, env=cli_env(s3))
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "--max-bandwidth" in lines[0], lines[0]
    assert multipart_uploads(s3.client(), bucket) == []
    assert s3.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
