"""CPU per small PutObject: botocore's pipeline against the lean path (mpupload/storage/lean.py).

One thread sends ``--objects`` objects of ``--size`` bytes through ``Boto3Store.put_object`` (a PartReader
body over one file, a CRC32C header and a content type, as a directory run sends them) to the discard endpoint
(``benchmarks.discard_server``, started here), first through botocore (``MPUPLOAD_LEAN_PUT=0``), then the lean
way, ``--runs`` times alternately. CPU is this process's ``time.process_time()`` over the loop (the server's
CPU is not counted); the checksum pass of the worker is not part of it.

    .venv/bin/python -m benchmarks.lean_put --objects 2000 --runs 3
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
from typing import Any


def _measure(port: int, lean: bool, objects: int, size: int, path: str) -> dict[str, float]:
    from mpupload.checksums import Algorithm, b64, new_hasher
    from mpupload.engine.reader import PartReader
    from mpupload.storage.boto3_store import Boto3Store
    from mpupload.storage.config import StoreConfig
    from mpupload.storage.port import Checksum

    os.environ["MPUPLOAD_LEAN_PUT"] = "1" if lean else "0"
    store = Boto3Store(StoreConfig(endpoint_url=f"http://127.0.0.1:{port}"))
    assert (store.lean_put() is not None) is lean
    fd = os.open(path, os.O_RDONLY)
    hasher = new_hasher(Algorithm.CRC32C)
    with open(path, "rb") as f:
        hasher.update(f.read())
    checksum = Checksum(Algorithm.CRC32C, b64(hasher.digest()))
    args = {"ContentType": "application/octet-stream"}
    mode = "lean" if lean else "botocore"
    try:
        for i in range(20):  # warm: the connection, the endpoint, the signing key
            store.put_object("bkt", f"warm/{mode}/{i}", PartReader(fd, 0, size), content_length=size,
                             checksum=checksum, object_args=args)
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(objects):
            store.put_object("bkt", f"{mode}/{i:06d}.bin", PartReader(fd, 0, size), content_length=size,
                             checksum=checksum, object_args=args)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        os.close(fd)
    return {"cpu_ms_per_object": cpu * 1e3 / objects, "objects_per_s": objects / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64 * 1024, help="bytes per object")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", help="write the figures as JSON here")
    a = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.discard_server", "--port", "0", "--bucket", "bkt"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1])
        with tempfile.NamedTemporaryFile(prefix="lean-put-") as body:
            body.write(os.urandom(a.size))
            body.flush()
            runs: dict[str, list[dict[str, float]]] = {"botocore": [], "lean": []}
            for _ in range(a.runs):
                for mode in ("botocore", "lean"):
                    figures = _measure(port, mode == "lean", a.objects, a.size, body.name)
                    runs[mode].append(figures)
                    print(f"{mode:8s} {a.objects} x {a.size} B: {figures['cpu_ms_per_object']:.3f} CPU-ms/object, "
                          f"{figures['objects_per_s']:.0f} objects/s", flush=True)
    finally:
        server.terminate()
        server.wait(10)
    result: dict[str, Any] = {"objects": a.objects, "size": a.size, "runs": runs}
    for mode, figures in runs.items():
        result[f"{mode}_median_cpu_ms"] = statistics.median(f["cpu_ms_per_object"] for f in figures)
        result[f"{mode}_median_objects_per_s"] = statistics.median(f["objects_per_s"] for f in figures)
    print(f"median: botocore {result['botocore_median_cpu_ms']:.3f} CPU-ms/object, lean "
          f"{result['lean_median_cpu_ms']:.3f} ({result['botocore_median_cpu_ms'] / result['lean_median_cpu_ms']:.1f}x"
          " less)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
