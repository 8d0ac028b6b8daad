"""Brokered against direct: the same file, the same store, the same API server, in one run (issue 15).

* **direct** — ``mpupload upload FILE s3://bench/direct/run-N`` with the store's credentials, reporting progress to
  the API server;
* **brokered** — ``mpupload upload FILE brokered/run-N`` with only the API token: the server (``mpupload serve
  --storage s3://bench/brokered``) creates, signs each part, completes and verifies.

The store is the discard endpoint (``benchmarks.discard_server``: it validates checksums and Content-MD5 and
throws bodies away), so the figures are the clients' and the server's own costs, not a store's. Runs alternate
(direct, brokered, direct, ...). Reported: MiB/s (median), the ratio brokered / direct, the client's CPU-s per
GiB (the whole process tree, ``wait4``), and the API server's CPU per signed part: its CPU during a brokered run
minus its CPU during a direct run (both push progress), divided by the parts signed.

    python -m benchmarks.brokered --size 1GiB --runs 3 --out benchmarks/results/brokered.json
    python -m benchmarks.brokered --tree 10000 --runs 3 --out benchmarks/results/brokered-tree.json

``--tree N`` uploads a directory instead: N files of 64 KiB in nested folders (the datasets benchmark's ``small``
tree), to ``s3://bench/direct/run-K/`` and to ``sets/run-K/`` (a brokered run: one record, the files' PutObject
URLs signed in batches through it). "Per signed part" then reads "per signed object".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import run as bench

PASSWORD = "bench-password-1"
USER = "bench"


def serve(workdir: Path, store_url: str) -> tuple[subprocess.Popen[bytes], str, float]:
    """``mpupload serve --storage`` on SQLite; the process, its URL, and how long it took to answer."""
    db = f"sqlite:///{workdir / 'server.db'}"
    env = {**bench.peer_env(), "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "MPUPLOAD_SIGN_MAX_PER_MINUTE": "1000000"}
    added = subprocess.run([sys.executable, "-m", "mpupload", "users", "add", USER, "--password-stdin",
                            "--database-url", db], input=PASSWORD + "\n", text=True, capture_output=True, env=env,
                           cwd=bench.REPO_ROOT, check=False)
    if added.returncode != 0:
        raise RuntimeError(added.stderr)
    port = bench.free_port()
    log = open(workdir / "serve.log", "ab")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen([sys.executable, "-m", "mpupload", "serve", "--port", str(port), "--database-url", db,
                             "--storage", f"s3://{bench.BUCKET}/brokered", "--storage-endpoint-url", store_url,
                             "--storage-region", "us-east-1"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=bench.REPO_ROOT, stdin=subprocess.DEVNULL)
    log.close()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    while time.monotonic() - started < 60:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url, time.monotonic() - started
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError((workdir / "serve.log").read_text()[-2000:])
        time.sleep(0.2)
    raise RuntimeError("the API server did not answer in 60 s")


def cpu_of(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1GiB")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--part-size", default=None, help="--part-size for both (default: mpupload's)")
    p.add_argument("--tree", type=int, default=0, metavar="N",
                   help="upload a tree of N files of 64 KiB instead of one file of --size")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    size = bench.parse_size(args.size)
    rows: dict[str, list[dict[str, Any]]] = {"direct": [], "brokered": []}
    with tempfile.TemporaryDirectory(prefix="mpupload-brokered-bench-") as tmp:
        work = Path(tmp)
        if args.tree:
            from benchmarks.datasets import small_tree, write_tree

            spec = small_tree(args.tree, 64 * 1024)
            file = write_tree(spec, work)
            size = sum(n for _, n in spec.files)
        else:
            file = bench.make_file(work, size)
        slash = "/" if args.tree else ""
        with bench.running_server("discard", work) as store:
            api, api_url, _ = serve(work, store.url)
            try:
                token = httpx.post(f"{api_url}/api/v1/auth/login", json={"username": USER, "password": PASSWORD},
                                   timeout=30).json()["token"]
                base = {k: v for k, v in bench.peer_env().items() if not k.startswith(("AWS_", "MPUPLOAD_"))}
                base.update(MPUPLOAD_API_URL=api_url, MPUPLOAD_TOKEN=token, MPUPLOAD_STATE_DIR=str(work / "state"))
                extra = ["--part-size", args.part_size] if args.part_size else []
                known = {pid for pid in (store.pid, api.pid) if pid is not None}
                for run in range(1, args.runs + 1):
                    for kind in ("direct", "brokered"):
                        if kind == "direct":
                            env = {**base, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                                   "AWS_DEFAULT_REGION": "us-east-1"}
                            argv_ = [sys.executable, "-m", "mpupload", "upload", str(file),
                                     f"s3://{bench.BUCKET}/direct/run-{run}{slash}", "--endpoint-url", store.url,
                                     "--progress", "json", *extra]
                        else:
                            env = {**base, "HOME": str(work / "home")}
                            argv_ = [sys.executable, "-m", "mpupload", "upload", str(file), f"sets/run-{run}{slash}",
                                     "--progress", "json", *extra]
                        before = cpu_of(api.pid)
                        code, wall, measured, tail = bench.measure(argv_, env, False, 600, work, known)
                        server_cpu = cpu_of(api.pid) - before
                        out = (work / "peer.out").read_text()
                        evs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
                        parts = next((e.get("parts_total") for e in evs if e.get("event") == "started"), None)
                        row = {"run": run, "exit": code, "wall_s": round(wall, 3),
                               "mib_s": round(size / bench.MIB / wall, 1),
                               "cpu_s_per_gib": round(measured["cpu_s"] / (size / 2**30), 3),
                               "peak_rss_mib": round(measured["peak_rss_mib"], 1), "parts": parts,
                               "server_cpu_s": round(server_cpu, 3)}
                        if code != 0:
                            row["error"] = tail[-500:]
                        rows[kind].append(row)
                        bench.log(f"{kind} run {run}: {row}")
            finally:
                api.terminate()
                api.wait(20)
    doc = summarize(rows, size)
    if args.tree:
        doc["tree"] = {"files": args.tree, "file_bytes": 64 * 1024}
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if all(r["exit"] == 0 for rs in rows.values() for r in rs) else 1


def summarize(rows: dict[str, list[dict[str, Any]]], size: int) -> dict[str, Any]:
    def med(kind: str, name: str) -> float:
        return float(statistics.median(r[name] for r in rows[kind]))

    parts = rows["brokered"][0]["parts"] or 1
    extra_server = med("brokered", "server_cpu_s") - med("direct", "server_cpu_s")
    return {
        "machine": bench.machine_info(), "size_bytes": size, "store": "discard (bodies thrown away)", "runs": rows,
        "median": {kind: {name: med(kind, name) for name in ("mib_s", "cpu_s_per_gib", "server_cpu_s")}
                   for kind in rows},
        "brokered_over_direct_speed": round(med("brokered", "mib_s") / med("direct", "mib_s"), 3),
        "server_ms_per_signed_part": round(1000 * extra_server / parts, 3),
        "parts": parts,
        "targets": {"brokered >= 0.95x direct": med("brokered", "mib_s") >= 0.95 * med("direct", "mib_s"),
                    "server <= 1 ms per signed part": extra_server / parts <= 0.001},
    }


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
