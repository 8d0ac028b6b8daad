"""Part planning within S3's limits.

S3 multipart rules (the same in AWS and every compatible store we test):

* a part is 5 MiB to 5 GiB, except the last part, which may be smaller (even 1 byte);
* at most 10,000 parts; part numbers are 1..10,000;
* an object is at most 5 TiB.

A file that fits in one part is sent with a single PutObject; a zero-byte file too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .units import GiB, MiB, TiB

__all__ = [
    "MIN_PART_SIZE", "MAX_PART_SIZE", "MAX_PARTS", "MAX_OBJECT_SIZE", "DEFAULT_PART_SIZE",
    "MAX_WORKERS", "WORKER_MEMORY_BYTES", "Part", "UploadPlan", "plan_upload", "PlanError",
]

MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * TiB
DEFAULT_PART_SIZE = 64 * MiB
DEFAULT_WORKERS = 4
MAX_WORKERS = 64
#: resident memory one worker process costs (interpreter + botocore + buffers), measured on Linux
WORKER_MEMORY_BYTES = 80 * MiB


class PlanError(ValueError):
    """The requested plan breaks an S3 limit; the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class Part:
    number: int  # 1-based S3 part number
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class UploadPlan:
    total_bytes: int
    part_size: int
    parts_total: int
    workers: int
    multipart: bool

    def parts(self) -> Iterator[Part]:
        for index in range(self.parts_total):
            offset = index * self.part_size
            yield Part(index + 1, offset, min(self.part_size, self.total_bytes - offset))

    def part(self, number: int) -> Part:
        if not 1 <= number <= self.parts_total:
            raise IndexError(number)
        offset = (number - 1) * self.part_size
        return Part(number, offset, min(self.part_size, self.total_bytes - offset))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def plan_upload(
    total_bytes: int,
    *,
    part_size: int | None = None,
    workers: int | None = None,
    available_memory: int | None = None,
) -> UploadPlan:
    """Choose part size and worker count for a file of ``total_bytes``.

    ``part_size`` and ``workers`` override the automatic choice but must respect S3's limits.
    Automatic part size: :data:`DEFAULT_PART_SIZE`, grown in whole MiB until the file fits in
    :data:`MAX_PARTS` parts. Automatic workers: :data:`DEFAULT_WORKERS`, fewer when there are fewer
    parts or too little free memory (each worker costs about :data:`WORKER_MEMORY_BYTES`).
    """
    if total_bytes < 0:
        raise PlanError("file size cannot be negative")
    if total_bytes > MAX_OBJECT_SIZE:
        raise PlanError(
            f"file is {total_bytes} bytes; S3 objects are at most 5 TiB ({MAX_OBJECT_SIZE} bytes): split it first"
        )
    if part_size is not None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise PlanError(
                f"part size {part_size} bytes is outside S3's limits: use 5MiB to 5GiB"
            )
        if total_bytes > part_size * MAX_PARTS:
            needed = _ceil_div(_ceil_div(total_bytes, MAX_PARTS), MiB)
            raise PlanError(
                f"part size {part_size} bytes needs more than {MAX_PARTS} parts for this file: "
                f"use --part-size {needed}MiB or more"
            )
        size = part_size
    else:
        size = max(DEFAULT_PART_SIZE, _ceil_div(_ceil_div(total_bytes, MAX_PARTS), MiB) * MiB)
    parts_total = max(1, _ceil_div(total_bytes, size))
    multipart = parts_total > 1

    if workers is not None:
        if not 1 <= workers <= MAX_WORKERS:
            raise PlanError(f"--workers {workers} is out of range: use 1 to {MAX_WORKERS}")
        chosen = workers
    else:
        chosen = DEFAULT_WORKERS
        if available_memory is not None:
            chosen = max(1, min(chosen, available_memory // (2 * WORKER_MEMORY_BYTES)))
    chosen = min(chosen, parts_total) if multipart else 1
    return UploadPlan(total_bytes, size, parts_total, max(1, chosen), multipart)
