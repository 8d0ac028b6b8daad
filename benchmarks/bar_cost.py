"""The progress bar's own cost, measured where whole-run timings cannot see it.

Whole-upload comparisons (``--progress bar`` against ``--progress none``) of 1-10 s runs differ by a few per
cent either way from run to run on a small shared machine, more than the bar costs. This measures the bar
itself: ``TerminalSink`` driven in a pseudo-terminal that answers cursor-position queries like a terminal
emulator, N redraws, CPU time of the drawing process.

    python -m benchmarks.bar_cost [--redraws 400]

Prints the set-up cost, the CPU per redraw and what that is per second of upload at the aggregator's tick.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from mpupload.engine.aggregator import TICK_S
from mpupload.wire import Event, Snapshot, Status
from mpupload.sinks.terminal import TerminalSink

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def snap(event, done):
    return Snapshot(event, Status.UPLOADING, "u-1", "bucket", "data/train.bin", 4 * 2**30, done, 1e9, 9e8, 3.0,
                    1.0, 1, 64, {"workers": 4, "part_size": 2**26})

n = int(sys.argv[1])
t0 = cpu()
sink = TerminalSink(sys.stderr)
sink.emit(snap(Event.STARTED, 0))
sink.sync()
t1 = cpu()
for i in range(n):
    sink.emit(snap(Event.PROGRESS, i * 2**23 % (4 * 2**30)))
    sink.sync()
t2 = cpu()
sink.emit(snap(Event.COMPLETED, 4 * 2**30))
sink.close()
per_redraw = (t2 - t1) / n
json.dump({"setup_cpu_s": t1 - t0, "cpu_per_redraw_ms": per_redraw * 1000, "tick_s": TICK_S,
           "cpu_share_of_one_core": per_redraw / TICK_S}, open(sys.argv[2], "w"))
"""


def measure(redraws: int) -> dict[str, float]:
    out = Path(tempfile.mkdtemp()) / "bar.json"
    master, slave = os.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(redraws), str(out)], stdin=slave, stdout=slave,
                            stderr=slave, env=env)
    os.close(slave)
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                for _ in range(data.count(b"\x1b[6n")):  # answer like a terminal emulator
                    os.write(master, b"\x1b[1;1R")
            elif proc.poll() is not None:
                break
        proc.wait(60)
    finally:
        os.close(master)
    result: dict[str, float] = json.loads(out.read_text())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bar_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--redraws", type=int, default=400)
    args = parser.parse_args()
    r = measure(args.redraws)
    print(f"bar set-up: {r['setup_cpu_s'] * 1000:.1f} ms CPU; {r['cpu_per_redraw_ms']:.3f} ms CPU per redraw; "
          f"one redraw every {r['tick_s']} s = {r['cpu_share_of_one_core'] * 100:.3f} % of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
