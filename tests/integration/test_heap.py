"""The CLI freezes what its set-up made before the transfer starts (``settle_heap``): a full collection during the
transfer then walks only what the transfer made, not the ~10^5 objects of boto3's and Dask's imports (30-100 ms of
the coordinator's CPU each, measured in ``benchmarks/cluster.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import ROOT, cli_env, make_file
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
MiB = 1024 * 1024

# runs the real CLI in a process whose aggregator notes the collector's state when the transfer starts
PROBE = """
import gc, json, sys
from mpupload.engine import aggregator
from mpupload.cli.main import main
seen = []
started = aggregator.Aggregator.started
def noting(self, extra):
    seen.append({"frozen": gc.get_freeze_count(), "enabled": gc.isenabled()})
    return started(self, extra)
aggregator.Aggregator.started = noting
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"probe": seen, "code": code}), file=sys.stderr)
"""


def probe(s3: S3Server, *args: str) -> tuple[dict[str, object], str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=cli_env(s3), capture_output=True, text=True,
                          timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith('{"probe"')]
    assert line, proc.stderr
    return json.loads(line[-1]), proc.stderr


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_the_heap_is_frozen_before_a_file_is_sent(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    src = make_file(tmp_path / "f.bin", 12 * MiB, seed=3)
    out, err = probe(s3, "upload", str(src), f"s3://{bucket}/f.bin", "--part-size", "5MiB", "--progress", "none")
    assert out["code"] == 0, err
    [seen] = out["probe"]  # type: ignore[misc]
    assert seen["enabled"] is True  # frozen, not switched off: what the transfer makes is still collected
    assert seen["frozen"] > 10_000, seen  # the imports and the set-up (boto3 alone makes more)


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_the_heap_is_frozen_before_a_directory_is_sent(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(3):
        make_file(tree / f"f{i}.bin", 100_000 + i, seed=i)
    out, err = probe(s3, "upload", str(tree), f"s3://{bucket}/tree/", "--progress", "none")
    assert out["code"] == 0, err
    assert out["probe"], err
    assert out["probe"][0]["frozen"] > 10_000, out  # type: ignore[index]
