"""Parts in jobs for an executor whose jobs cost (a cluster): guided self-scheduling."""

from __future__ import annotations

import itertools

import pytest

from mpupload.engine.object_upload import MAX_PARTS_PER_JOB, batch_size


def _jobs(parts: int, slots: int) -> list[int]:
    """The job sizes when every slot asks for a job in turn (what the upload's loop does as slots free)."""
    sizes, left = [], parts
    while left:
        k = batch_size(left, slots)
        assert 1 <= k <= min(left, MAX_PARTS_PER_JOB)
        sizes.append(k)
        left -= k
    return sizes


@pytest.mark.parametrize(("parts", "slots"), list(itertools.product([1, 5, 16, 64, 1000, 10_000], [1, 4, 12, 400])))
def test_the_jobs_shrink_to_single_parts(parts: int, slots: int) -> None:
    sizes = _jobs(parts, slots)
    assert sum(sizes) == parts
    assert sizes == sorted(sizes, reverse=True)  # large first
    if parts >= slots > 1:
        assert sizes[-slots:] == [1] * slots  # a slot that ends early finds single parts to take


@pytest.mark.parametrize(("parts", "slots", "jobs"), [
    (16, 12, 16),          # fewer parts than twice the slots: one to a job, as before
    (16, 4, 10),           # 1 GiB in 64 MiB parts on one host of 4 threads: 4, 3, 2, then single parts
    (64, 4, 17),           # the same in 16 MiB parts: 8 x 5, 6, 4, 3, 2, 2, then single parts
    (10_000, 400, 2285),   # 625 GiB in 64 MiB parts on 100 hosts of 4 threads
])
def test_fewer_jobs(parts: int, slots: int, jobs: int) -> None:
    assert len(_jobs(parts, slots)) == jobs


def test_slots_that_join_take_smaller_jobs_from_then_on() -> None:
    assert batch_size(19, 2) == 8
    assert batch_size(11, 8) == 1  # three workers of two threads joined: what is left is spread
