"""Part planning at S3's limits (mpupload.plan). hypothesis is not installed: plain tables."""

from __future__ import annotations

import re

import pytest

from mpupload.plan import (
    DEFAULT_PART_SIZE,
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MAX_WORKERS,
    MIN_PART_SIZE,
    WORKER_MEMORY_BYTES,
    Part,
    PlanError,
    UploadPlan,
    plan_upload,
)
from mpupload.units import GiB, MiB, TiB


def test_limits_are_s3s() -> None:
    assert MIN_PART_SIZE == 5 * MiB
    assert MAX_PART_SIZE == 5 * GiB
    assert MAX_PARTS == 10_000
    assert MAX_OBJECT_SIZE == 5 * TiB


def assert_covers_exactly(plan: UploadPlan) -> None:
    """Parts are numbered 1..n, contiguous from offset 0, sum to the file, and respect S3's part limits."""
    parts = list(plan.parts())
    assert len(parts) == plan.parts_total
    assert [p.number for p in parts] == list(range(1, plan.parts_total + 1))
    offset = 0
    for p in parts:
        assert p.offset == offset
        offset += p.length
    assert offset == plan.total_bytes
    assert sum(p.length for p in parts) == plan.total_bytes
    for p in parts[:-1]:
        assert p.length == plan.part_size
        assert MIN_PART_SIZE <= p.length <= MAX_PART_SIZE
    last = parts[-1]
    assert 0 <= last.length <= plan.part_size
    if plan.total_bytes:
        assert last.length >= 1
    assert plan.parts_total <= MAX_PARTS


@pytest.mark.parametrize(
    ("total", "part_size", "parts_total", "multipart", "last_length"),
    [
        (0, None, 1, False, 0),
        (1, None, 1, False, 1),
        (MIN_PART_SIZE - 1, None, 1, False, MIN_PART_SIZE - 1),
        (MIN_PART_SIZE - 1, MIN_PART_SIZE, 1, False, MIN_PART_SIZE - 1),
        (MIN_PART_SIZE, MIN_PART_SIZE, 1, False, MIN_PART_SIZE),
        (MIN_PART_SIZE + 1, MIN_PART_SIZE, 2, True, 1),
        (2 * MIN_PART_SIZE, MIN_PART_SIZE, 2, True, MIN_PART_SIZE),
        (DEFAULT_PART_SIZE, None, 1, False, DEFAULT_PART_SIZE),
        (DEFAULT_PART_SIZE + 1, None, 2, True, 1),
        (MAX_PARTS * MIN_PART_SIZE, MIN_PART_SIZE, MAX_PARTS, True, MIN_PART_SIZE),
        (MAX_PARTS * MIN_PART_SIZE - 1, MIN_PART_SIZE, MAX_PARTS, True, MIN_PART_SIZE - 1),
        (MAX_PARTS * DEFAULT_PART_SIZE, None, MAX_PARTS, True, DEFAULT_PART_SIZE),
        (MAX_PART_SIZE, MAX_PART_SIZE, 1, False, MAX_PART_SIZE),
        (MAX_PART_SIZE + 1, MAX_PART_SIZE, 2, True, 1),
    ],
)
def test_plan_edges(
    total: int, part_size: int | None, parts_total: int, multipart: bool, last_length: int
) -> None:
    plan = plan_upload(total, part_size=part_size)
    assert plan.total_bytes == total
    assert plan.parts_total == parts_total
    assert plan.multipart is multipart
    assert plan.part(parts_total).length == last_length
    if part_size is not None:
        assert plan.part_size == part_size
    assert_covers_exactly(plan)


def test_zero_byte_file_is_one_empty_put() -> None:
    plan = plan_upload(0)
    assert (plan.parts_total, plan.multipart, plan.workers) == (1, False, 1)
    assert list(plan.parts()) == [Part(1, 0, 0)]


def test_auto_part_size_grows_in_whole_mib_past_10000_default_parts() -> None:
    plan = plan_upload(MAX_PARTS * DEFAULT_PART_SIZE + 1)
    assert plan.part_size == DEFAULT_PART_SIZE + MiB
    assert plan.parts_total <= MAX_PARTS
    assert_covers_exactly(plan)


def test_five_tib_exactly_auto() -> None:
    plan = plan_upload(5 * TiB)
    assert plan.multipart
    assert plan.part_size % MiB == 0
    assert MIN_PART_SIZE <= plan.part_size <= MAX_PART_SIZE
    assert plan.parts_total <= MAX_PARTS
    assert plan.parts_total == -(-5 * TiB // plan.part_size)
    assert plan.part_size == 525 * MiB  # the smallest whole MiB that fits 5 TiB in 10,000 parts
    assert (plan.part_size - MiB) * MAX_PARTS < 5 * TiB
    # walking 9,987 parts is cheap; it proves the whole object is covered
    assert_covers_exactly(plan)


def test_five_tib_with_max_part_size() -> None:
    plan = plan_upload(5 * TiB, part_size=MAX_PART_SIZE)
    assert plan.parts_total == 1024
    assert_covers_exactly(plan)


@pytest.mark.parametrize("part_size", [None, MIN_PART_SIZE, MAX_PART_SIZE])
def test_over_five_tib_rejected(part_size: int | None) -> None:
    with pytest.raises(PlanError, match="5 TiB"):
        plan_upload(5 * TiB + 1, part_size=part_size)


def test_negative_size_rejected() -> None:
    with pytest.raises(PlanError):
        plan_upload(-1)


@pytest.mark.parametrize("part_size", [0, 1, MIN_PART_SIZE - 1, MAX_PART_SIZE + 1, -MIN_PART_SIZE])
def test_part_size_out_of_range(part_size: int) -> None:
    with pytest.raises(PlanError, match="5MiB to 5GiB"):
        plan_upload(100 * MiB, part_size=part_size)


@pytest.mark.parametrize(
    ("total", "part_size"),
    [
        (MAX_PARTS * MIN_PART_SIZE + 1, MIN_PART_SIZE),
        (MAX_PARTS * 64 * MiB + 1, 64 * MiB),
        (5 * TiB, 100 * MiB),
    ],
)
def test_too_many_parts_suggests_a_part_size_that_works(total: int, part_size: int) -> None:
    with pytest.raises(PlanError) as info:
        plan_upload(total, part_size=part_size)
    assert isinstance(info.value, ValueError)
    match = re.search(r"--part-size (\d+)MiB", str(info.value))
    assert match, str(info.value)
    suggested = int(match.group(1)) * MiB
    # the suggestion works, and is the smallest whole MiB that does
    plan = plan_upload(total, part_size=suggested)
    assert plan.parts_total <= MAX_PARTS
    assert (suggested - MiB) * MAX_PARTS < total


@pytest.mark.parametrize("workers", [0, -1, MAX_WORKERS + 1])
def test_workers_out_of_range(workers: int) -> None:
    with pytest.raises(PlanError, match=f"1 to {MAX_WORKERS}"):
        plan_upload(GiB, workers=workers)


@pytest.mark.parametrize(
    ("total", "workers", "available_memory", "expected"),
    [
        (GiB, None, None, 4),  # default
        (GiB, 1, None, 1),
        (GiB, MAX_WORKERS, None, 16),  # capped at parts_total (16 x 64 MiB)
        (100 * GiB, MAX_WORKERS, None, MAX_WORKERS),
        (DEFAULT_PART_SIZE + 1, None, None, 2),  # 2 parts
        (DEFAULT_PART_SIZE + 1, 8, None, 2),
        (MiB, 8, None, 1),  # single PutObject: one worker
        (0, MAX_WORKERS, None, 1),
        (GiB, None, 0, 1),  # no memory: still one worker
        (GiB, None, 2 * WORKER_MEMORY_BYTES - 1, 1),
        (GiB, None, 3 * 2 * WORKER_MEMORY_BYTES, 3),
        (GiB, None, 100 * GiB, 4),  # plenty of memory: the default, not more
        (DEFAULT_PART_SIZE + 1, None, 100 * GiB, 2),
    ],
)
def test_workers(total: int, workers: int | None, available_memory: int | None, expected: int) -> None:
    plan = plan_upload(total, workers=workers, available_memory=available_memory)
    assert plan.workers == expected
    assert 1 <= plan.workers <= max(1, plan.parts_total)


@pytest.mark.parametrize(
    ("total", "part_size"),
    [(1, None), (MIN_PART_SIZE + 1, MIN_PART_SIZE), (GiB + 7, 6 * MiB), (10 * GiB, None), (3 * GiB, GiB)],
)
def test_part_matches_parts(total: int, part_size: int | None) -> None:
    plan = plan_upload(total, part_size=part_size)
    assert [plan.part(n) for n in range(1, plan.parts_total + 1)] == list(plan.parts())
    with pytest.raises(IndexError):
        plan.part(0)
    with pytest.raises(IndexError):
        plan.part(plan.parts_total + 1)
    with pytest.raises(IndexError):
        plan.part(-1)


def test_last_part_length() -> None:
    plan = plan_upload(GiB + 7, part_size=6 * MiB)
    assert plan.parts_total == -(-(GiB + 7) // (6 * MiB))
    last = plan.part(plan.parts_total)
    assert last.length == (GiB + 7) - (plan.parts_total - 1) * 6 * MiB
    assert last.offset + last.length == GiB + 7


def test_plan_and_part_are_frozen() -> None:
    plan = plan_upload(GiB)
    with pytest.raises(AttributeError):
        plan.workers = 8  # type: ignore[misc]
    with pytest.raises(AttributeError):
        plan.part(1).length = 0  # type: ignore[misc]
