"""Speed and ETA: pure functions and a small sampler over an injected clock.

Speed is sampled on a fixed tick and smoothed with an exponential moving average that starts soft: the
first sample is taken as it is, and the weight of new samples shrinks from 1 to ``2 / (window + 1)`` as
samples accumulate, so the first seconds are neither zero nor a spike. ``total / elapsed`` is reported
separately as the average speed, never as the current one.

ETA is ``None`` ("unknown") rather than a wrong number: before the first useful sample, when the current
speed is zero, or when it would be absurdly far away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SpeedMeter", "eta_seconds", "average_speed", "MAX_ETA_S"]

#: an ETA beyond this (100 days) says nothing useful: report unknown
MAX_ETA_S = 100 * 86400.0


def eta_seconds(total_bytes: int, done_bytes: int, speed_bps: float | None) -> float | None:
    """Remaining seconds at ``speed_bps``; 0.0 when done; ``None`` when unknown."""
    remaining = total_bytes - done_bytes
    if remaining <= 0:
        return 0.0
    if speed_bps is None or not math.isfinite(speed_bps) or speed_bps <= 0:
        return None
    eta = remaining / speed_bps
    if not math.isfinite(eta) or eta > MAX_ETA_S:
        return None
    return eta


def average_speed(sent_bytes: int, elapsed_s: float) -> float:
    """Bytes sent by this run divided by its elapsed time; 0.0 before any time has passed."""
    if elapsed_s <= 0 or sent_bytes <= 0:
        return 0.0
    return sent_bytes / elapsed_s


@dataclass
class SpeedMeter:
    """Current speed from (time, bytes) samples taken on a fixed tick.

    ``window`` is the number of samples the moving average spans once warmed up; with a 0.5 s tick the
    default spans about 5 s. Bytes that go backwards (a retried part) count as no progress for speed;
    the bytes sent again later count again, because they are really sent again.
    """

    window: int = 10
    _last_t: float | None = None
    _last_bytes: int = 0
    _samples: int = 0
    _speed: float | None = None

    def sample(self, now: float, done_bytes: int) -> float | None:
        if self._last_t is None:
            self._last_t, self._last_bytes = now, done_bytes
            return self._speed
        dt = now - self._last_t
        if dt <= 0:
            return self._speed
        delta = max(0, done_bytes - self._last_bytes)
        instant = delta / dt
        self._samples += 1
        weight = 2.0 / (min(self._samples, self.window) + 1)
        if self._samples == 1 or self._speed is None:
            self._speed = instant
        else:
            self._speed += (instant - self._speed) * weight
        self._last_t, self._last_bytes = now, done_bytes
        return self._speed

    @property
    def speed(self) -> float | None:
        return self._speed
