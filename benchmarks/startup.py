"""What mpupload costs before (and apart from) the bytes: start-up CPU of the whole process tree.

Usage::

    python -m benchmarks.startup [--runs 10] [--out FILE]

Measured, as CPU-seconds (user+sys of the process tree, ``os.wait4`` as in :mod:`benchmarks.run`), median of
``--runs``: ``python -c pass`` (the floor), ``import mpupload``, ``mpupload --version``, ``mpupload --help``,
``mpupload upload --help``, and uploads to the discard endpoint of a 1-byte file (one PutObject), a "small"
100 MiB file (two parts) and a "large" 1 GiB file (16 parts), with their peak RSS (``--smoke``: 1 B, 8 MiB and
16 MiB, one run each). The fixed cost of an upload is the 1-byte upload's
CPU; what a byte costs is the slope between the larger files. The targets (issue 12): ``--version`` and
``--help`` at most 0.1 CPU-s; the process tree at most 300 MiB at defaults.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from .run import (
    BUCKET,
    GIB,
    MIB,
    become_subreaper,
    log,
    machine_info,
    make_file,
    measure,
    peer_env,
    running_server,
    warm_bytecode,
)

TARGET_CLI_CPU_S = 0.1
TARGET_RSS_MIB = 300.0


def _cpu(argv: list[str], runs: int, workdir: Path, known: set[int] | None = None) -> dict[str, Any]:
    """Median CPU of ``runs`` runs; ``known``: processes of ours that are not the command's (the server)."""
    cpus: list[float] = []
    rss: list[float] = []
    for _ in range(runs):
        code, _wall, m, tail = measure(argv, peer_env(), False, 600.0, workdir, set(known or ()))
        if code != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({code}): {tail}")
        cpus.append(float(m["cpu_s"]))
        rss.append(float(m.get("peak_rss_mib", 0.0)))
    return {"cpu_s": round(statistics.median(cpus), 3), "cpu_s_min": round(min(cpus), 3),
            "peak_rss_mib": round(max(rss), 1), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="one run each, files of 1 B, 8 MiB and 16 MiB")
    args = parser.parse_args(argv)
    become_subreaper()
    warm_bytecode()
    py = sys.executable
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mpupload-startup-") as tmp:
        work = Path(tmp)
        if args.smoke:
            args.runs = 1
        for name, cmd in (("python -c pass", [py, "-c", "pass"]),
                          ("import mpupload", [py, "-c", "import mpupload"]),
                          ("mpupload --version", [py, "-m", "mpupload", "--version"]),
                          ("mpupload --help", [py, "-m", "mpupload", "--help"]),
                          ("mpupload upload --help", [py, "-m", "mpupload", "upload", "--help"])):
            results[name] = _cpu(cmd, args.runs, work)
            log(f"{name}: {results[name]}")
        sizes = {"1 B": 1, "small": 8 * MIB, "large": 16 * MIB} if args.smoke else \
            {"1 B": 1, "small": 100 * MIB, "large": GIB}
        files = {label: make_file(work, size) for label, size in sizes.items()}
        with running_server("discard", work) as server:
            for label, path in files.items():
                cmd = [py, "-m", "mpupload", "upload", str(path), f"s3://{BUCKET}/{label.replace(' ', '')}",
                       "--endpoint-url", server.url, "--checksum", "crc32c", "--progress", "none", "--no-report"]
                runs = args.runs if path.stat().st_size < GIB else max(1, min(args.runs, 3))
                known = {pid for pid in (server.pid,) if pid is not None}
                results[f"upload {label}"] = _cpu(cmd, runs, work, known)
                log(f"upload {label}: {results[f'upload {label}']}")
    fixed = results["upload 1 B"]["cpu_s"]
    span_gib = (sizes["large"] - sizes["small"]) / GIB
    per_gib = (results["upload large"]["cpu_s"] - results["upload small"]["cpu_s"]) / span_gib
    doc = {
        "machine": machine_info(),
        "results": results,
        "sizes": sizes,
        "fixed_cost_cpu_s": fixed,
        "marginal_cpu_s_per_gib": round(per_gib, 3),
        "targets": {
            "--version <= 0.1 CPU-s": results["mpupload --version"]["cpu_s"] <= TARGET_CLI_CPU_S,
            "--help <= 0.1 CPU-s": results["mpupload --help"]["cpu_s"] <= TARGET_CLI_CPU_S,
            "peak RSS <= 300 MiB (1 GiB upload, defaults)":
                results["upload large"]["peak_rss_mib"] <= TARGET_RSS_MIB,
        },
    }
    text = json.dumps(doc, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
