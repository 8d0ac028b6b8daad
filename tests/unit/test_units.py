"""Size parsing and human formatting (mpupload.units)."""

from __future__ import annotations

import math

import pytest

from mpupload import units
from mpupload.units import GiB, KiB, MiB, TiB, format_bytes, format_duration, format_rate, parse_size


def test_constants_are_binary_powers() -> None:
    assert (KiB, MiB, GiB, TiB) == (2**10, 2**20, 2**30, 2**40)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # plain bytes
        ("0", 0),
        ("1", 1),
        ("1048576", MiB),
        ("5B", 5),
        ("5b", 5),
        # decimal prefixes are powers of 1000
        ("1k", 1000),
        ("1KB", 1000),
        ("8M", 8_000_000),
        ("8MB", 8_000_000),
        ("2G", 2_000_000_000),
        ("2GB", 2_000_000_000),
        ("1T", 10**12),
        ("1TB", 10**12),
        # binary prefixes are powers of 1024, with or without the trailing B, any case
        ("1KiB", KiB),
        ("1Ki", KiB),
        ("64MiB", 64 * MiB),
        ("64mib", 64 * MiB),
        ("64MIB", 64 * MiB),
        ("64Mi", 64 * MiB),
        ("5GiB", 5 * GiB),
        ("5TiB", 5 * TiB),
        # whitespace around and between number and unit
        ("  64MiB  ", 64 * MiB),
        ("64 MiB", 64 * MiB),
        ("\t8 M\n", 8_000_000),
        # fractions that come out as whole bytes
        ("1.5GiB", 3 * GiB // 2),
        ("0.5KiB", 512),
        ("1.5KB", 1500),
        ("0.001KB", 1),
        ("2.0", 2),
        # fractions that floats get wrong (16.1 * 1000 == 16100.000000000002)
        ("16.1KB", 16_100),
        ("2.01KB", 2_010),
        ("4.07KB", 4_070),
        # integers beyond float precision stay exact
        ("9007199254740993", 2**53 + 1),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    result = parse_size(text)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    "text",
    [
        "", "   ", "MiB", "abc", "64 MiB extra", "1,000", "1e6", ".5MiB", "5.MiB", "nan", "inf", "0x10",
        "5 M B",
    ],
)
def test_parse_size_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("text", ["-1", "-5MiB", " -64 MiB", "+5MiB"])
def test_parse_size_signed(text: str) -> None:
    with pytest.raises(ValueError, match="cannot read size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["5PiB", "5 bytes", "5XB", "10mbit", "3kibi"])
def test_parse_size_unknown_unit(text: str) -> None:
    with pytest.raises(ValueError, match="unknown size unit") as info:
        parse_size(text)
    assert "MiB" in str(info.value)  # the message says what to use instead


@pytest.mark.parametrize("text", ["0.5", "1.5B", "0.3KiB", "1.0001KB", "0.0000001MiB"])
def test_parse_size_fractional_bytes_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="whole number of bytes"):
        parse_size(text)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (MiB, "1.0 MiB"),
        (64 * MiB, "64.0 MiB"),
        (5 * GiB, "5.0 GiB"),
        (5 * TiB, "5.0 TiB"),
        (1024 * TiB, "1.0 PiB"),
        (2048 * 1024 * TiB, "2048.0 PiB"),  # PiB is the largest unit
        (-1536, "-1.5 KiB"),
        (12.6, "13 B"),
        (math.inf, "-"),
        (-math.inf, "-"),
        (math.nan, "-"),
    ],
)
def test_format_bytes(n: float, expected: str) -> None:
    assert format_bytes(n) == expected


@pytest.mark.parametrize(
    ("bps", "expected"),
    [
        (None, "-"),
        (math.inf, "-"),
        (math.nan, "-"),
        (0, "0 B/s"),
        (0.0, "0 B/s"),
        (512, "512 B/s"),
        (12.3 * MiB, "12.3 MiB/s"),
        (1.5 * GiB, "1.5 GiB/s"),
    ],
)
def test_format_rate(bps: float | None, expected: str) -> None:
    assert format_rate(bps) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, "-"),
        (math.inf, "-"),
        (math.nan, "-"),
        (-1.0, "-"),
        (0, "0:00"),
        (0.4, "0:00"),
        (9, "0:09"),
        (59, "0:59"),
        (59.6, "1:00"),
        (60, "1:00"),
        (75, "1:15"),
        (3599, "59:59"),
        (3600, "1:00:00"),
        (3700, "1:01:40"),
        (86399, "23:59:59"),
        (86400, "1d 00:00:00"),
        (2 * 86400 + 3 * 3600, "2d 03:00:00"),
        (100 * 86400 + 61, "100d 00:01:01"),
    ],
)
def test_format_duration(seconds: float | None, expected: str) -> None:
    assert format_duration(seconds) == expected


def test_all_is_exact() -> None:
    assert all(hasattr(units, name) for name in units.__all__)
    public_functions = {
        name for name, obj in vars(units).items()
        if callable(obj) and not name.startswith("_") and getattr(obj, "__module__", None) == units.__name__
    }
    assert public_functions <= set(units.__all__)
