"""Byte units, size parsing and human formatting.

Every constant carries its unit in its name; sizes are ``int`` bytes, durations ``float`` seconds.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["KiB", "MiB", "GiB", "TiB", "parse_size", "parse_rate", "format_bytes", "format_rate", "format_duration",
           "parse_duration"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": KiB, "ki": KiB,
    "m": 1000**2, "mb": 1000**2, "mib": MiB, "mi": MiB,
    "g": 1000**3, "gb": 1000**3, "gib": GiB, "gi": GiB,
    "t": 1000**4, "tb": 1000**4, "tib": TiB, "ti": TiB,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Parse ``64MiB``, ``8M``, ``1.5GiB`` or ``1048576`` into bytes.

    Decimal prefixes (``MB``, ``M``) are powers of 1000 and binary prefixes (``MiB``) powers of 1024,
    as in the AWS CLI. Raises ``ValueError`` with a message fit for a user.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"cannot read size {text!r}: use a number with an optional unit, e.g. 64MiB")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown size unit {unit!r} in {text!r}: use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)")
    value = Fraction(number) * factor  # exact: float(number) * factor rejects e.g. '16.1KB'
    if value.denominator != 1:
        raise ValueError(f"size {text!r} is not a whole number of bytes")
    return int(value)


_PER_SECOND_RE = re.compile(r"\s*/\s*s(ec)?\s*$", re.IGNORECASE)


def parse_rate(text: str) -> int:
    """Parse ``200MiB/s``, ``50MB/s``, ``1.5GiB/s``, ``800KiB`` or ``1048576`` into bytes per second.

    The units are :func:`parse_size`'s (``MB`` powers of 1000, ``MiB`` of 1024); ``/s`` may be left out; a plain
    number is bytes per second; a fraction of a byte per second is dropped. Raises ``ValueError`` with a message fit
    for a user (the lowest cap a run accepts is checked elsewhere: :func:`mpupload.engine.throttle.check_rate`).
    """
    match = _SIZE_RE.match(_PER_SECOND_RE.sub("", text, count=1))
    if not match:
        raise ValueError(f"cannot read rate {text!r}: use a number with an optional unit, e.g. 200MiB/s or 50MB/s")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown unit {unit!r} in {text!r}: use B, KiB, MiB, GiB (or KB, MB, GB) per second, "
                         "e.g. 200MiB/s")
    return int(Fraction(number) * factor)


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; binary prefixes, one decimal."""
    if not math.isfinite(n):
        return "-"
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_rate(bps: float | None) -> str:
    """Bytes per second as ``'12.3 MiB/s'``; ``None`` (unknown) as ``'-'``."""
    if bps is None or not math.isfinite(bps):
        return "-"
    return f"{format_bytes(bps)}/s"


def format_duration(seconds: float | None) -> str:
    """``None`` -> ``'-'``; ``75`` -> ``'1:15'``; ``3700`` -> ``'1:01:40'``; days as ``'2d 03:00:00'``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_DURATION_UNITS_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``24h``, ``7d``, ``2w`` -> seconds; ``ValueError`` with what to write otherwise."""
    match = _DURATION_RE.match(text.lower())
    if not match:
        raise ValueError(f"cannot read duration {text!r}: use e.g. 30m, 24h or 7d")
    return float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]
