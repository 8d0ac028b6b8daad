"""What a user sees of ``--max-bandwidth``: the plain started lines and the bar's status line name the cap, and
say nothing of it when there is none."""

from __future__ import annotations

import io

from mpupload.sinks.plain import PlainSink, dataset_started_line, started_line
from mpupload.sinks.terminal import status_text
from mpupload.wire import Event, FileCounts
from tests.unit.test_sinks import MiB, snap, started


def test_the_started_lines_name_the_cap() -> None:
    stream = io.StringIO()
    PlainSink(stream).emit(started(workers=4, max_bandwidth_bps=8 * MiB))
    assert stream.getvalue() == ("upload: s3://bucket/data/train.bin  1.2 GiB in 19 parts of 64.0 MiB, 4 workers,"
                                 " capped at 8.0 MiB/s\n")
    assert started_line(started(multipart=False, part_size=1000, workers=1, max_bandwidth_bps=800 * 1024)).endswith(
        "in a single PutObject, capped at 800.0 KiB/s")
    assert "capped" not in started_line(started(workers=4))


def test_a_directory_runs_started_line_names_the_cap() -> None:
    snapshot = started(workers=2, put_threads=8, bytes_total=3 * MiB, max_bandwidth_bps=4 * MiB)
    snapshot = snapshot.__class__(**{**snapshot.__dict__, "files": FileCounts(total=10, done=0, failed=0)})
    assert dataset_started_line(snapshot).endswith("2 workers, 8 put threads, capped at 4.0 MiB/s")


def test_the_status_line_names_the_cap() -> None:
    extra = started(max_bandwidth_bps=200 * MiB).extra
    assert "  cap 200.0 MiB/s  avg " in status_text(snap(Event.PROGRESS, 456 * MiB, elapsed=75.0), extra)
    assert " cap " not in status_text(snap(Event.PROGRESS, 456 * MiB, elapsed=75.0), started().extra)
