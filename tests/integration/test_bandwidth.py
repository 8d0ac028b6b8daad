"""``--max-bandwidth`` end to end: the real CLI, its real worker processes, moto's server.

What is measured is what the CLI itself reports (``--progress json``: ``bytes_done`` and ``elapsed_seconds`` of
every event), plus the wall time seen from here, judged as :mod:`tests.support.rates` says.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

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
from tests.support.rates import SKEW_S, check_cap, worst_excess
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
KiB = 1024
MiB = 1024 * KiB


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
    """One PutObject from the coordinator's thread, through the lean path (5 MiB: a line a second gives the
    three progress events the rate is judged on)."""
    cap, size = 1 * MiB, 5 * MiB
    src = make_file(tmp_path / "small.bin", size, seed=3)
    t = time.monotonic()
    proc = run_cli("upload", str(src), f"s3://{bucket}/small.bin", "--max-bandwidth", "1MiB/s", "--progress", "json",
                   env=cli_env(s3), timeout=60)
    wall = time.monotonic() - t
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    assert evs[0]["multipart"] is False
    check_cap(evs, cap, 1, size, wall, what="one 5 MiB PutObject, 1MiB/s")
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
       ("bits", "10mbps")]


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
