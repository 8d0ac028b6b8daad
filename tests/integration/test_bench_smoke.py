"""The smoke benchmark (every peer, both servers, a small file) and checks of the discard endpoint.

Nothing here asserts a speed or a memory figure: the benchmark must *run* for every peer, and its
numbers must be plausible (positive), that is all. The discard endpoint is checked for the S3
behaviour the figures depend on: checksum validation (BadDigest), sizes, aws-chunked decoding.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from awscrt import checksums
from botocore.config import Config
from botocore.exceptions import ClientError

pytestmark = [pytest.mark.integration, pytest.mark.bench]

REPO_ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
SMOKE_DEADLINE_S = 1500


def _b64(value: int, width: int = 4) -> str:
    return base64.b64encode(value.to_bytes(width, "big")).decode()


# --------------------------------------------------------------------------------------------------
# The smoke benchmark
# --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(SMOKE_DEADLINE_S + 60)
def test_smoke_bench_runs_every_peer_on_every_server(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
        check=False,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SMOKE_DEADLINE_S,
    )
    assert proc.returncode == 0, f"smoke benchmark failed:\n{proc.stderr[-6000:]}"
    doc = json.loads(out.read_text())

    assert doc["config"]["smoke"] is True
    size = doc["config"]["size_bytes"]
    assert size > 0
    for key in ("cpu_model", "nproc", "memory_gib", "kernel", "python"):
        assert doc["machine"][key], key
    expected_peers = {"mpupload", "mpupload-bar", "aws-s3-cp", "boto3-upload_file", "boto3-tuned", "awscrt", "s5cmd"}
    assert set(doc["config"]["peers"]) == expected_peers
    assert set(doc["servers"]) == {"discard", "moto"}
    for kind, server in doc["servers"].items():
        assert set(server["peers"]) == expected_peers, kind
        for name, entry in server["peers"].items():
            where = f"{kind}/{name}"
            assert entry["ok_runs"] >= 1 and entry["failed_runs"] == 0, f"{where}: {entry.get('error')}"
            for run in entry["runs"]:
                assert run["ok"] and run["exit_code"] == 0, where
                assert run["wall_s"] > 0 and run["mib_s"] > 0, where
                assert size / run["wall_s"] > 0, where
                assert run["cpu_s"] > 0 and run["cpu_s_per_gib"] > 0, where
                assert run["peak_rss_mib"] > 0, where
            median = entry["median"]
            assert median["mib_s"] > 0 and median["peak_rss_mib"] > 0, where
            assert entry["ratio_vs_mpupload"] is not None, where
            assert entry["ratio_vs_fastest"] is not None, where
            assert entry["checksum"], where
        assert server["bar_cost"] is not None, kind
        fastest = server["fastest_peer"]
        assert fastest in expected_peers - {"mpupload", "mpupload-bar"}, kind
        assert server["peers"][fastest]["ratio_vs_fastest"]["mib_s"] == 1.0, kind
        assert server["lowest_cpu_peer"] in expected_peers - {"mpupload", "mpupload-bar"}, kind


def test_report_renders_and_refuses_a_readme_without_markers(tmp_path: Path) -> None:
    from benchmarks import report

    doc: dict[str, Any] = {
        "generated_at": "2026-01-02T03:04:05+00:00",
        "machine": {"cpu_model": "CPU", "nproc": 2, "memory_gib": 4.0, "os": "OS", "kernel": "6.1", "python": "3.11"},
        "tools": {"boto3": "1"},
        "config": {"size": "16 MiB", "runs": 1},
        "servers": {
            "discard": {
                "label": "discard endpoint (client-bound)",
                "peers": {
                    "mpupload": {
                        "median": {"wall_s": 1.0, "mib_s": 16.0, "cpu_s_per_gib": 2.0, "peak_rss_mib": 100.0},
                        "ratio_vs_mpupload": {"mib_s": 1.0, "cpu_s_per_gib": 1.0, "peak_rss_mib": 1.0},
                        "checksum": "CRC32C per part",
                    },
                    "awscrt": {
                        "median": {"wall_s": 0.5, "mib_s": 32.0, "cpu_s_per_gib": 1.0, "peak_rss_mib": 50.0},
                        "checksum": "none",
                    },
                    "boto3-tuned": {
                        "median": {"wall_s": 2.0, "mib_s": 8.0, "cpu_s_per_gib": 4.0, "peak_rss_mib": 60.0},
                    },
                    "s5cmd": {"median": None, "error": "exit code 1: boom"},
                },
            }
        },
    }
    block = report.render(doc)
    assert "| mpupload | 1.00 | 16 | 2.00 | 100 | 0.50× / 2.00× | CRC32C per part |" in block
    assert "| awscrt | 0.50 | 32 | 1.00 | 50 | 1.00× / 1.00× | none |" in block
    assert "| boto3-tuned | 2.00 | 8 | 4.00 | 60 | 0.25× / 4.00× | – |" in block  # an older file: no checksum
    assert "Fastest peer: awscrt" in block and "mpupload: 0.50× its speed at 2.00× its CPU" in block
    assert "failed: exit code 1: boom" in block
    assert "2026-01-02" in block and "client-bound" in block

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\noutro\n")
    results = tmp_path / "r.json"
    results.write_text(json.dumps(doc))
    assert report.main([str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- bench:start -->\n") and text.endswith("<!-- bench:end -->\noutro\n")
    assert "old" not in text and "| mpupload |" in text

    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert report.main([str(results), "--readme", str(plain)]) == 1
    assert plain.read_text() == "no markers\n"


def test_targets_are_the_issues_at_each_size() -> None:
    """Issue 12's targets: 1 GiB vs the fastest peer, 4 GiB absolute CPU, 100 MiB vs the lowest-CPU peer."""
    from benchmarks import run

    def med(mib_s: float, cpu: float, rss: float = 50.0) -> dict[str, Any]:
        return {"median": {"mib_s": mib_s, "cpu_s_per_gib": cpu, "peak_rss_mib": rss, "peak_rss_mib_max": rss}}

    peers = {"mpupload": med(600.0, 1.2, 280.0), "mpupload-bar": med(2000.0, 0.1),  # never "the fastest peer"
             "awscrt": med(900.0, 1.0), "s5cmd": med(500.0, 3.0), "boto3-tuned": med(800.0, 0.95),
             "aws-s3-cp": {"median": None}}
    assert run.fastest_peer(peers) == "awscrt" and run.cheapest_peer(peers) == "boto3-tuned"

    def by_name(size: int, server: str = "discard") -> dict[str, dict[str, Any]]:
        return {t["name"]: t for t in run.targets(server, peers, None, size)}

    one = by_name(run.GIB)
    assert one["peak RSS MiB (process tree, defaults)"]["met"] is True
    speed, cpu = one["MiB/s vs the fastest peer (awscrt)"], one["CPU-s/GiB vs the fastest peer (awscrt)"]
    assert speed["value"] == pytest.approx(600 / 900) and speed["met"] is False
    assert cpu["value"] == pytest.approx(1.2) and cpu["met"] is False
    four = by_name(4 * run.GIB)
    assert four["client CPU-s/GiB"]["limit"] == 0.6 and four["client CPU-s/GiB"]["met"] is False
    small = by_name(100 * MIB)
    low = small["CPU-s/GiB vs the lowest-CPU peer (boto3-tuned)"]
    assert low["value"] == pytest.approx(1.2 / 0.95) and low["met"] is True
    assert set(by_name(run.GIB, "moto")) == {"peak RSS MiB (process tree, defaults)"}  # server-bound: RSS only
    assert set(by_name(16 * MIB)) == {"peak RSS MiB (process tree, defaults)"}  # no target at this size


# --------------------------------------------------------------------------------------------------
# The discard endpoint
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def discard_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.discard_server", "--port", "0"],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "discard server did not start"
        line = proc.stdout.readline().decode()
        m = re.fullmatch(r"LISTENING (\d+)\s*", line)
        assert m, line
        url = f"http://127.0.0.1:{m.group(1)}"
        _client(url).create_bucket(Bucket="t")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _client(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="k",
        aws_secret_access_key="s",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, request_checksum_calculation="when_required"),
    )


def test_discard_multipart_wrong_crc32c_is_bad_digest_and_sizes_are_kept(discard_url: str) -> None:
    s3 = _client(discard_url)
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(123_457)]
    crcs = [checksums.crc32c(p) for p in parts]
    up = s3.create_multipart_upload(Bucket="t", Key="obj", ChecksumAlgorithm="CRC32C")
    uid = up["UploadId"]

    with pytest.raises(ClientError) as err:
        s3.upload_part(Bucket="t", Key="obj", UploadId=uid, PartNumber=2, Body=parts[1],
                       ChecksumCRC32C=_b64(crcs[1] ^ 1))
    assert err.value.response["Error"]["Code"] == "BadDigest"

    done = []
    for n, (body, crc) in enumerate(zip(parts, crcs), start=1):
        r = s3.upload_part(Bucket="t", Key="obj", UploadId=uid, PartNumber=n, Body=body, ChecksumCRC32C=_b64(crc))
        assert r["ChecksumCRC32C"] == _b64(crc)
        done.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumCRC32C": _b64(crc)})

    listed = s3.list_parts(Bucket="t", Key="obj", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ChecksumCRC32C"]) for p in listed] == [
        (n, len(b), _b64(c)) for n, (b, c) in enumerate(zip(parts, crcs), start=1)
    ]

    result = s3.complete_multipart_upload(Bucket="t", Key="obj", UploadId=uid, MultipartUpload={"Parts": done})
    composite = _b64(checksums.crc32c(b"".join(c.to_bytes(4, "big") for c in crcs))) + "-3"
    assert result["ChecksumCRC32C"] == composite
    assert result["ETag"].endswith('-3"')

    head = s3.head_object(Bucket="t", Key="obj", ChecksumMode="ENABLED")
    assert head["ContentLength"] == sum(len(p) for p in parts)
    assert head["ChecksumCRC32C"] == composite
    assert s3.list_multipart_uploads(Bucket="t").get("Uploads", []) == []


def test_discard_put_object_content_md5_and_head(discard_url: str) -> None:
    s3 = _client(discard_url)
    body = os.urandom(300_001)
    good = base64.b64encode(hashlib.md5(body).digest()).decode()
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="t", Key="small", Body=body, ContentMD5=base64.b64encode(b"\0" * 16).decode())
    assert err.value.response["Error"]["Code"] == "BadDigest"
    s3.put_object(Bucket="t", Key="small", Body=body, ContentMD5=good)
    assert s3.head_object(Bucket="t", Key="small")["ContentLength"] == len(body)
    s3.delete_object(Bucket="t", Key="small")
    with pytest.raises(ClientError):
        s3.head_object(Bucket="t", Key="small")


def _raw_request(url: str, head: str, body: bytes, expect_continue: bool = False) -> tuple[int, str]:
    """Send one request by hand; return (status, response head + body as text)."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        data = b""
        if expect_continue:
            while b"\r\n\r\n" not in data:
                data += sock.recv(4096)
            assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), data
            data = data[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        sock.sendall(body)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = re.search(rb"Content-Length: (\d+)\r\n.*?\r\n\r\n", data, re.DOTALL)
            if m and len(data) >= m.end() + int(m.group(1)):
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    text = data.decode("utf-8", "replace")
    return int(text.split(" ", 2)[1]), text


def _aws_chunked(payload: bytes, chunk: int, trailer: str) -> bytes:
    out = b""
    for i in range(0, len(payload), chunk):
        piece = payload[i:i + chunk]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n" + trailer.encode() + b"\r\n\r\n"


@pytest.mark.parametrize("good", [True, False])
def test_discard_aws_chunked_with_trailing_crc32(discard_url: str, good: bool) -> None:
    payload = os.urandom(200_000)
    crc = zlib.crc32(payload) ^ (0 if good else 1)
    body = _aws_chunked(payload, 65536, f"x-amz-checksum-crc32:{_b64(crc)}")
    head = (
        f"PUT /t/chunked-{good} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        "Content-Encoding: aws-chunked\r\nx-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER\r\n"
        f"x-amz-decoded-content-length: {len(payload)}\r\nx-amz-trailer: x-amz-checksum-crc32\r\n"
        "Expect: 100-continue\r\n\r\n"
    )
    status, text = _raw_request(discard_url, head, body, expect_continue=True)
    if good:
        assert status == 200, text
        assert f"x-amz-checksum-crc32: {_b64(crc)}" in text
        size = _client(discard_url).head_object(Bucket="t", Key="chunked-True")["ContentLength"]
        assert size == len(payload)
    else:
        assert status == 400 and "<Code>BadDigest</Code>" in text, text


def test_discard_transfer_encoding_chunked(discard_url: str) -> None:
    payload = os.urandom(100_000)
    body = _aws_chunked(payload, 30_000, "").replace(b"0\r\n\r\n\r\n", b"0\r\n\r\n")
    head = (
        "PUT /t/te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        f"x-amz-checksum-crc32c: {_b64(checksums.crc32c(payload))}\r\n\r\n"
    )
    status, text = _raw_request(discard_url, head, body)
    assert status == 200, text
    assert _client(discard_url).head_object(Bucket="t", Key="te")["ContentLength"] == len(payload)


# --------------------------------------------------------------------------------------------------
# The library peers, multipart (the smoke run's 16 MiB fits in one of their 32 MiB parts)
# --------------------------------------------------------------------------------------------------


def _peer_env() -> dict[str, str]:
    from benchmarks import run

    return run.peer_env()


@pytest.mark.parametrize("peer", ["awscrt", "boto3-tuned"])
def test_library_peer_uploads_in_parts_without_any_checksum(discard_url: str, tmp_path: Path, peer: str) -> None:
    from benchmarks import run

    size = 40 * MIB  # two parts of 32 MiB and 8 MiB
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(size))
    key = f"peer-{peer}"
    argv = next(p for p in run.PEERS if p.name == peer).build(path, discard_url, key)
    argv = [a if a != run.BUCKET else "t" for a in argv]  # the fixture's bucket
    proc = subprocess.run(argv, env=_peer_env(), capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    head = _client(discard_url).head_object(Bucket="t", Key=key, ChecksumMode="ENABLED")
    assert head["ContentLength"] == size
    assert head["ETag"].endswith('-2"'), head["ETag"]  # a multipart upload of two 32 MiB-sized parts
    assert not [k for k in head if k.startswith("Checksum")], head  # it sent no checksum, as the report says


def test_awscrt_peer_exits_non_zero_when_the_upload_fails(tmp_path: Path) -> None:
    from benchmarks import run

    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    argv = next(p for p in run.PEERS if p.name == "awscrt").build(path, url, "k")
    proc = subprocess.run(argv, env=_peer_env(), capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 1 and "awscrt upload failed" in proc.stderr, proc.stderr


def test_bar_cost_instrument_runs() -> None:
    """The bar-cost measurement (benchmarks/bar_cost.py) keeps working: it drives the real bar on a pty."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "benchmarks.bar_cost", "--redraws", "20"], capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "ms CPU per redraw" in proc.stdout and "% of one core" in proc.stdout


def test_startup_bench_measures_every_command_and_upload(tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.startup", "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(out.read_text())
    names = {"python -c pass", "import mpupload", "mpupload --version", "mpupload --help", "mpupload upload --help",
             "upload 1 B", "upload small", "upload large"}
    assert set(doc["results"]) == names
    assert all(r["cpu_s"] > 0 for r in doc["results"].values())
    assert doc["results"]["upload large"]["peak_rss_mib"] > doc["results"]["python -c pass"]["peak_rss_mib"] > 0
    assert set(doc["targets"]) == {"--version <= 0.1 CPU-s", "--help <= 0.1 CPU-s",
                                   "peak RSS <= 300 MiB (1 GiB upload, defaults)"}
