"""How a capped run's rate is judged from its own ``--progress json`` events (the ``--max-bandwidth`` tests, local
and cluster).

A cap is an upper bound, so the upper side is asserted tightly and the lower side loosely (a busy machine, e.g. CI
under ``stress-ng --cpu 2``, may send slower than the cap, never faster):

* over any interval between two events the run sent at most ``cap * interval + slack``, where the slack is the
  bucket's burst plus one chunk per concurrent sender (senders that check at the same instant each take one; see
  :mod:`mpupload.engine.throttle`) plus 50 ms of the cap for the time between reading the counter and the clock;
* the average rate in the steady part of the run (first to last progress event) is at most 5 % above the cap and at
  least 70 % of it;
* the wall time is at least ``(bytes - burst) / cap``.
"""

from __future__ import annotations

from typing import Any

from mpupload.engine.throttle import burst_for, chunk_for

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
              low: float = 0.70, slack: float | None = None) -> dict[str, float]:
    """``slack``: the bytes an interval may carry beyond the cap (default: one local bucket's, see above)."""
    started = evs[0]
    assert started["event"] == "started" and started["max_bandwidth_bps"] == cap
    assert evs[-1]["event"] == "completed", evs[-1]
    pts = points(evs)
    if slack is None:
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
