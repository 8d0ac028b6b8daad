"""The local sinks for a directory run: synthetic snapshot sequences (wire.Snapshot/FileCounts), no engine."""

from __future__ import annotations

import io
import json
import textwrap
from typing import Any

import enlighten
import pytest

from mpupload.sinks import JsonLinesSink, PlainSink, TerminalSink
from mpupload.sinks.jsonl import encode_snapshot
from mpupload.sinks.plain import MAX_LISTED, dataset_summary, file_counts_text
from mpupload.sinks.terminal import MAX_FILE_LINES, dataset_render_fields, file_lines, shorten_columns
from mpupload.units import KiB, MiB
from mpupload.wire import Event, FileCounts, Snapshot, Status
from tests.unit.test_sinks import ANSI, FakeClock, FlushRecorder, _run_on_pty

TOTAL = 2005 * MiB  # "2.0 GiB"
STATUS = {Event.STARTED: Status.UPLOADING, Event.PROGRESS: Status.UPLOADING, Event.FILE_COMPLETED: Status.UPLOADING,
          Event.FILE_FAILED: Status.UPLOADING, Event.COMPLETED: Status.COMPLETED, Event.STOPPED: Status.STOPPED,
          Event.FAILED: Status.FAILED}


def dsnap(event: Event, done: int = 0, files: FileCounts | None = None, *, key: str = "sets/",
          speed: float | None = 112.3 * MiB, eta: float | None = 7.0, elapsed: float = 4.0, **extra: Any) -> Snapshot:
    files = files or FileCounts(total=2005, done=0, failed=0)
    return Snapshot(event=event, status=STATUS[event], upload_id="u-1", bucket="bucket", key=key, total_bytes=TOTAL,
                    bytes_done=done, speed_bps=speed, avg_speed_bps=98.1 * MiB, eta_seconds=eta,
                    elapsed_seconds=elapsed, parts_done=files.done, parts_total=2005, extra=dict(extra), files=files)


def dstarted() -> Snapshot:
    return dsnap(Event.STARTED, speed=None, eta=None, elapsed=0.0, bytes_total=TOTAL, prefix="sets/",
                 sources=["data/"], workers=4, put_threads=8, part_size=64 * MiB)


def completed_file(i: int, size: int = MiB, skipped: str | None = None) -> Snapshot:
    return dsnap(Event.FILE_COMPLETED, i * MiB, FileCounts(2005, i + 1, 0), key=f"sets/train/{i:04d}.jpg",
                 prefix="sets/", path=f"train/{i:04d}.jpg", size=size, verified="crc32c", etag='"e"',
                 checksum="AAAAAA==", skipped=skipped)


def failed_file(i: int, failed: int) -> Snapshot:
    return dsnap(Event.FILE_FAILED, 0, FileCounts(2005, 0, failed), key=f"sets/bad/{i:02d}.jpg", prefix="sets/",
                 path=f"bad/{i:02d}.jpg", size=10, error="[Errno 13] Permission denied", error_type="PermissionError")


def failed_entries(n: int) -> list[dict[str, Any]]:
    return [{"path": f"bad/{i:02d}.jpg", "key": f"sets/bad/{i:02d}.jpg", "size": 10,
             "error": "[Errno 13] Permission denied"} for i in range(n)]


def in_flight(n: int, base: int = 0) -> list[dict[str, Any]]:
    """``n`` files in flight, listed smallest first (the sinks sort them)."""
    return [{"path": f"train/{base + i:04d}.jpg", "key": f"sets/train/{base + i:04d}.jpg", "size": (i + 1) * MiB,
             "bytes_done": (i + 1) * MiB // 2} for i in range(n)]


def final(event: Event, files: FileCounts, failed: int = 0, **extra: Any) -> Snapshot:
    extra.setdefault("warnings", [])
    return dsnap(event, TOTAL if event is Event.COMPLETED else 456 * MiB, files, eta=0.0, elapsed=75.0,
                 failed_files=failed_entries(failed), **extra)


def _string_manager(stream: Any) -> Any:
    return enlighten.Manager(stream=stream, enabled=True, width=100, no_resize=True)


# --- the pure parts --------------------------------------------------------------------------------------

def test_file_counts_text() -> None:
    assert file_counts_text(FileCounts(2005, 120, 1)) == "120/2005 done, 1 failed"
    assert file_counts_text(FileCounts(2005, 120, 0, skipped=3)) == "120/2005 done, 3 skipped"
    assert file_counts_text(FileCounts(None, 7, 0)) == "7/? done"


@pytest.mark.parametrize(("snapshot", "expected"), [
    (final(Event.COMPLETED, FileCounts(2005, 2005, 0)),
     ["2005 files (2.0 GiB) uploaded to s3://bucket/sets/ in 1:15 (avg 98.1 MiB/s)"]),
    (final(Event.COMPLETED, FileCounts(1, 1, 0)),
     ["1 file (2.0 GiB) uploaded to s3://bucket/sets/ in 1:15 (avg 98.1 MiB/s)"]),
    (final(Event.COMPLETED, FileCounts(2005, 2005, 0, skipped=5)),
     ["2000 files (2.0 GiB) uploaded to s3://bucket/sets/ in 1:15 (avg 98.1 MiB/s); 5 skipped"]),
    (final(Event.FAILED, FileCounts(2005, 2003, 2), failed=2, error="2 of 2005 files failed"),
     ["2003 files (456.0 MiB) uploaded to s3://bucket/sets/ in 1:15 (avg 98.1 MiB/s); 2 failed:",
      "  bad/00.jpg: [Errno 13] Permission denied", "  bad/01.jpg: [Errno 13] Permission denied"]),
    (final(Event.STOPPED, FileCounts(2005, 120, 0)),
     ["stopped: 120 of 2005 files (456.0 MiB) uploaded to s3://bucket/sets/ in 1:15 (avg 98.1 MiB/s)"]),
    (final(Event.FAILED, FileCounts(None, 0, 0), error="access denied"),  # the run failed, not its files
     ["failed: 0 of ? files (456.0 MiB) uploaded to s3://bucket/sets/ in 1:15 (avg 98.1 MiB/s)"]),
])
def test_dataset_summary(snapshot: Snapshot, expected: list[str]) -> None:
    assert dataset_summary(snapshot) == expected


def test_dataset_summary_lists_20_failures_then_a_count() -> None:
    lines = dataset_summary(final(Event.FAILED, FileCounts(2005, 1980, 25), failed=25), uploaded_bytes=3 * KiB)
    assert lines[0] == "1980 files (3.0 KiB) uploaded to s3://bucket/sets/ in 1:15 (avg 98.1 MiB/s); 25 failed:"
    assert lines[1:21] == [f"  bad/{i:02d}.jpg: [Errno 13] Permission denied" for i in range(MAX_LISTED)]
    assert lines[21:] == ["  … and 5 more (all of them with --progress json)"]


def test_dataset_summary_flattens_and_cuts_long_errors_and_lists_warnings() -> None:
    entry = {"path": "a.bin", "key": "sets/a.bin", "size": 1, "error": "line one\nline two " + "x" * 1000}
    snapshot = final(Event.FAILED, FileCounts(2, 1, 1), warnings=["skipped a FIFO: pipe"])
    snapshot.extra["failed_files"] = [entry]
    lines = dataset_summary(snapshot)
    assert lines[1].startswith("  a.bin: line one line two xxx") and "\n" not in lines[1]
    assert len(lines[1]) == len("  a.bin: ") + 300 and "…" in lines[1]
    assert lines[2] == "1 warning above"  # printed when it came; the summary only counts them


def test_dataset_render_fields() -> None:
    fields = dataset_render_fields(dsnap(Event.PROGRESS, 456 * MiB, FileCounts(2005, 120, 1)))
    assert fields == {"percent": "22.7%", "done": "456.0 MiB", "size": "2.0 GiB", "speed": "112.3 MiB/s",
                      "remaining": "0:07", "files": "120/2005, 1 failed"}
    assert dataset_render_fields(dsnap(Event.PROGRESS, 0, FileCounts(None, 3, 0)))["files"] == "3/?"


def test_file_lines_largest_first_cut_and_aligned() -> None:
    entries = in_flight(16) + [{"path": "big/" + "日本語" * 30 + ".bin", "key": "k", "size": 40 * MiB,
                                "bytes_done": 10 * MiB}, {"path": "empty", "key": "k", "size": 0, "bytes_done": 0}]
    lines = file_lines(entries, width=100)
    assert len(lines) == MAX_FILE_LINES
    descs = [desc for desc, _, _, _ in lines]
    assert "…" in descs[0] and descs[0].startswith("big/日本")  # the largest, cut in the middle
    assert [d.strip() for d in descs[1:]] == [f"train/{i:04d}.jpg" for i in (15, 14, 13, 12, 11)]
    widths = {sum(2 if "\u3000" <= c <= "\u9fff" else 1 for c in d) for d in descs}
    assert len(widths) == 1  # padded to one width in columns: the bars line up
    assert lines[0][1:] == (40.0 * MiB, 10.0 * MiB, {"percent": "25.0%", "done": "10.0 MiB", "size": "40.0 MiB"})
    empty = file_lines([{"path": "empty", "size": 0, "bytes_done": 0}], width=100)[0]
    assert empty[1:] == (1.0, 0.0, {"percent": "0.0%", "done": "0 B", "size": "0 B"})


def test_shorten_columns_counts_wide_characters() -> None:
    assert shorten_columns("abc", 3) == "abc"
    cut = shorten_columns("日本語の長いファイル名.bin", 12)
    assert cut.startswith("日本") and cut.endswith(".bin") and "…" in cut
    assert sum(2 if ord(c) > 0x2E80 and c != "…" else 1 for c in cut) <= 12


# --- plain lines -----------------------------------------------------------------------------------------

def test_plain_directory_run() -> None:
    stream, clock = io.StringIO(), FakeClock()
    sink = PlainSink(stream, interval_s=5.0, clock=clock)
    sink.emit(dstarted())
    for i in range(120):
        sink.emit(completed_file(i))
    sink.emit(failed_file(0, 1))
    clock.now = 5.0
    sink.emit(dsnap(Event.PROGRESS, 456 * MiB, FileCounts(2005, 120, 1), in_flight=in_flight(3)))
    clock.now = 6.0
    sink.emit(dsnap(Event.PROGRESS, 500 * MiB, FileCounts(2005, 130, 1)))  # inside the interval
    sink.emit(final(Event.FAILED, FileCounts(2005, 2004, 1), failed=1, error="1 of 2005 files failed"))
    sink.close()
    assert stream.getvalue().splitlines() == [
        "upload: data/ -> s3://bucket/sets/  2005 files, 2.0 GiB, 4 workers, 8 put threads",
        "failed: bad/00.jpg: [Errno 13] Permission denied",
        "  22.7%  456.0 MiB / 2.0 GiB  112.3 MiB/s (avg 98.1 MiB/s)  ETA 0:07  files 120/2005 done, 1 failed",
        "2004 files (120.0 MiB) uploaded to s3://bucket/sets/ in 1:15 (avg 98.1 MiB/s); 1 failed:",
        "  bad/00.jpg: [Errno 13] Permission denied",
    ]


def test_plain_25_failures_print_20_lines_and_a_count() -> None:
    stream = io.StringIO()
    sink = PlainSink(stream)
    sink.emit(dstarted())
    for i in range(25):
        sink.emit(failed_file(i, i + 1))
    lines = stream.getvalue().splitlines()
    assert lines[1:] == [f"failed: bad/{i:02d}.jpg: [Errno 13] Permission denied" for i in range(20)]
    sink.emit(final(Event.FAILED, FileCounts(2005, 1980, 25), failed=25))
    lines = stream.getvalue().splitlines()[21:]
    assert lines[0] == "… and 5 more failures (see the summary)"
    assert lines[1].endswith("; 25 failed:") and len(lines) == 2 + 20 + 1
    assert lines[-1] == "  … and 5 more (all of them with --progress json)"


def test_plain_one_file_run_is_unchanged_by_file_events() -> None:
    """A one-file run's final event still prints the one final line (no summary, no counts)."""
    stream = io.StringIO()
    sink = PlainSink(stream)
    one = Snapshot(event=Event.COMPLETED, status=Status.COMPLETED, upload_id=None, bucket="b", key="k", total_bytes=10,
                   bytes_done=10, speed_bps=1.0, avg_speed_bps=1.0, eta_seconds=0.0, elapsed_seconds=1.0,
                   parts_done=1, parts_total=1, extra={"verified": "md5"})
    sink.emit(one)
    assert stream.getvalue() == "done: s3://b/k  10 B in 0:01 (avg 1 B/s), verified md5\n"


# --- JSON lines ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("snapshot", [
    completed_file(7),
    failed_file(3, 1),
    dstarted(),
    dsnap(Event.PROGRESS, 5, FileCounts(None, 0, 0), speed=None, eta=None, in_flight=in_flight(2)),
    final(Event.FAILED, FileCounts(2005, 1980, 25), failed=25, error="25 of 2005 files failed"),
    dsnap(Event.FILE_COMPLETED, 1, key="sets/ünï cödé/日本語 \"q\"\\.bin", path="ünï cödé/日本語 \"q\"\\.bin",
          size=0, skipped="exists", etag=None),
    dsnap(Event.PROGRESS, 1, speed=float("nan"), eta=float("inf")),  # not the fast path: json.dumps itself
    dsnap(Event.PROGRESS, 1, speed=5, elapsed=3),  # ints where floats are expected: json.dumps itself
    dsnap(Event.PROGRESS, 1, parts_total=9, files_done=3),  # an event field overrides: to_dict's order
    Snapshot(event=Event.COMPLETED, status=Status.COMPLETED, upload_id=None, bucket="b", key="k", total_bytes=0,
             bytes_done=0, speed_bps=None, avg_speed_bps=0.0, eta_seconds=None, elapsed_seconds=0.0, parts_done=1,
             parts_total=1, extra={"verified": "md5", "left_behind": [{"upload_id": "U", "n": 1.5}]}),
])
def test_encode_snapshot_is_json_dumps_of_to_dict(snapshot: Snapshot) -> None:
    assert encode_snapshot(snapshot) == json.dumps(snapshot.to_dict(), separators=(",", ":"))


def test_jsonl_writes_every_file_event_and_flushes_them_with_the_next_tick() -> None:
    stream, clock = FlushRecorder(), FakeClock()
    sink = JsonLinesSink(stream, min_interval_s=1.0, clock=clock)
    sink.emit(dstarted())
    flushes = len(stream.flushed)
    for i in range(1000):
        sink.emit(completed_file(i))
    sink.emit(failed_file(0, 1))
    assert len(stream.flushed) == flushes  # no flush per file event
    clock.now = 0.25
    sink.emit(dsnap(Event.PROGRESS, 5 * MiB, FileCounts(2005, 1000, 1)))  # throttled, but flushes the file lines
    assert len(stream.flushed) == flushes + 1
    sink.emit(final(Event.FAILED, FileCounts(2005, 2004, 1), failed=1))
    sink.close()
    objects = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [o["event"] for o in objects] == ["started"] + ["file_completed"] * 1000 + ["file_failed", "failed"]
    assert objects[1]["files_done"] == 1 and objects[1]["path"] == "train/0000.jpg" and objects[1]["skipped"] is None
    assert {"files_total", "files_done", "files_failed", "files_skipped"} <= objects[0].keys()
    assert objects[-1]["failed_files"] == failed_entries(1)


# --- the terminal bar ------------------------------------------------------------------------------------

def test_terminal_in_flight_lines_appear_and_disappear() -> None:
    stream = io.StringIO()
    sink = TerminalSink(stream, manager_factory=_string_manager)
    sink.emit(dstarted())
    sink.sync()
    assert sink.file_bars == []
    sink.emit(dsnap(Event.PROGRESS, 456 * MiB, FileCounts(2005, 120, 0), in_flight=in_flight(16)))
    sink.sync()
    bars = sink.file_bars
    assert len(bars) == MAX_FILE_LINES
    assert [b.desc.strip() for b in bars] == [f"train/{i:04d}.jpg" for i in range(15, 9, -1)]  # largest first
    assert bars[0].total == 16.0 * MiB and bars[0].count == 8.0 * MiB
    line = bars[0].format(width=100)
    assert "train/0015.jpg" in line and "50.0% |" in line and "8.0 MiB /  16.0 MiB" in line and len(line) == 100
    sink.emit(dsnap(Event.PROGRESS, 500 * MiB, FileCounts(2005, 130, 0), in_flight=in_flight(2, base=100)))
    sink.sync()
    assert sink.file_bars == bars[:2]  # the same counters, rewritten; the other four are closed
    assert [b.desc.strip() for b in sink.file_bars] == ["train/0101.jpg", "train/0100.jpg"]
    assert all(b not in sink.manager.counters for b in bars[2:])
    sink.emit(dsnap(Event.PROGRESS, 600 * MiB, FileCounts(2005, 140, 0), in_flight=[]))
    sink.sync()
    assert sink.file_bars == [] and len(sink.manager.counters) == 2  # the total bar and the status line
    total = sink.bar.format(width=100)
    assert "files 140/2005" in total and "600.0 MiB / 2.0 GiB" in total and "ETA 0:07" in total
    sink.emit(final(Event.COMPLETED, FileCounts(2005, 2005, 0)))
    sink.close()
    assert stream.getvalue().endswith(
        "\n2005 files (2.0 GiB) uploaded to s3://bucket/sets/ in 1:15 (avg 98.1 MiB/s)\n")


def test_terminal_failures_above_the_bars_then_a_count_then_the_summary() -> None:
    stream = io.StringIO()
    sink = TerminalSink(stream, manager_factory=_string_manager)
    sink.emit(dstarted())
    for i in range(25):
        sink.emit(failed_file(i, i + 1))
    sink.emit(dsnap(Event.PROGRESS, 456 * MiB, FileCounts(2005, 120, 25), in_flight=in_flight(3)))
    sink.sync()
    out = stream.getvalue()
    printed = [f"failed: bad/{i:02d}.jpg: [Errno 13] Permission denied" for i in range(25)]
    assert all(line in out for line in printed[:20]) and printed[20] not in out
    assert "files 120/2005, 25 failed" in out
    sink.emit(final(Event.FAILED, FileCounts(2005, 1980, 25), failed=25))
    sink.close()
    out = stream.getvalue()
    assert out.count("… and 5 more failures (see the summary)") == 1
    summary = out[out.index("1980 files (456.0 MiB) uploaded to s3://bucket/sets/"):].splitlines()
    assert summary[0].endswith("; 25 failed:") and summary[-1] == "  … and 5 more (all of them with --progress json)"
    assert len(summary) == 22
    assert out.index("… and 5 more failures") < out.rindex("files 1980/2005, 25 failed") < out.index(summary[0])


def test_terminal_file_completed_draws_nothing() -> None:
    stream = io.StringIO()
    sink = TerminalSink(stream, manager_factory=_string_manager)
    sink.emit(dstarted())
    sink.emit(dsnap(Event.PROGRESS, 0, FileCounts(2005, 0, 0), in_flight=in_flight(16)))
    sink.sync()
    before = stream.getvalue()
    for i in range(2000):
        sink.emit(completed_file(i, size=KiB))
    assert stream.getvalue() == before  # no redraw, no line per file
    assert sink._pending is None  # and the renderer was not woken
    sink.emit(final(Event.COMPLETED, FileCounts(2005, 2005, 0)))
    sink.close()
    assert "2005 files (2.0 MiB) uploaded" in stream.getvalue()  # the sizes of the files it uploaded


def test_terminal_directory_run_on_a_non_tty() -> None:
    stream = io.StringIO()
    sink = TerminalSink(stream)  # disabled manager: only the failed files and the summary
    sink.emit(dstarted())
    sink.emit(failed_file(0, 1))
    sink.emit(dsnap(Event.PROGRESS, 456 * MiB, FileCounts(2005, 120, 1), in_flight=in_flight(3)))
    sink.sync()
    assert stream.getvalue() == "failed: bad/00.jpg: [Errno 13] Permission denied\n"
    sink.emit(final(Event.STOPPED, FileCounts(2005, 120, 1), failed=1))
    sink.close()
    assert stream.getvalue().splitlines()[1:] == [
        "stopped: 120 of 2005 files (456.0 MiB) uploaded to s3://bucket/sets/ in 1:15 (avg 98.1 MiB/s); 1 failed:",
        "  bad/00.jpg: [Errno 13] Permission denied"]


DATASET_CHILD = textwrap.dedent("""
    import sys
    from mpupload.wire import Event, FileCounts, Snapshot, Status
    from mpupload.sinks import TerminalSink
    from mpupload.units import MiB

    TOTAL = 120 * MiB

    def snap(event, status, done, files, key="sets/", **extra):
        return Snapshot(event=event, status=status, upload_id="u-1", bucket="bucket", key=key, total_bytes=TOTAL,
                        bytes_done=done, speed_bps=12.5 * MiB, avg_speed_bps=11.0 * MiB, eta_seconds=3.0,
                        elapsed_seconds=2.0, parts_done=files.done, parts_total=40, extra=extra, files=files)

    def flight(names):
        return [{"path": n, "key": "sets/" + n, "size": (40 - i) * MiB, "bytes_done": 10 * MiB}
                for i, n in enumerate(names)]

    U = Status.UPLOADING
    sink = TerminalSink(sys.stderr)
    assert sink.manager.enabled, "stderr should be a TTY here"
    sink.emit(snap(Event.STARTED, U, 0, FileCounts(40, 0, 0), bytes_total=TOTAL, prefix="sets/",
                   sources=["data/"], workers=4, put_threads=8))
    sink.sync()
    sink.emit(snap(Event.PROGRESS, U, 30 * MiB, FileCounts(40, 10, 0),
                   in_flight=flight(["big/shard-0001.bin", "big/日本語-0002.bin", "small/ünï-0003.txt"])))
    sink.sync()
    sink.emit(snap(Event.FILE_COMPLETED, U, 30 * MiB, FileCounts(40, 11, 0), key="sets/small/ünï-0003.txt",
                   prefix="sets/", path="small/ünï-0003.txt", size=38 * MiB, verified="crc32c", etag="e",
                   checksum="c", skipped=None))
    sink.emit(snap(Event.FILE_FAILED, U, 30 * MiB, FileCounts(40, 11, 1), key="sets/bad.bin", prefix="sets/",
                   path="bad.bin", size=5, error="[Errno 13] Permission denied", error_type="PermissionError"))
    sink.emit(snap(Event.PROGRESS, U, 60 * MiB, FileCounts(40, 11, 1), in_flight=flight(["big/shard-0001.bin"])))
    sink.sync()
    sink.emit(snap(Event.FAILED, Status.FAILED, TOTAL, FileCounts(40, 39, 1), error="1 of 40 files failed",
                   failed_files=[{"path": "bad.bin", "key": "sets/bad.bin", "size": 5,
                                  "error": "[Errno 13] Permission denied"}], warnings=[]))
    sink.close()
""")


def test_directory_run_draws_on_a_real_pty() -> None:
    returncode, raw = _run_on_pty(DATASET_CHILD)
    text = ANSI.sub("", raw).replace("\r", "")
    assert returncode == 0, text
    assert "\x1b[" in raw  # enlighten really drew
    assert "s3://bucket/sets/" in text and "files 10/40" in text and "12.5 MiB/s  ETA 0:03" in text
    for name in ("big/shard-0001.bin", "big/日本語-0002.bin", "small/ünï-0003.txt"):
        assert name in text
    assert "25.0% |" in text and "10.0 MiB /  40.0 MiB" in text  # a file line
    assert "upload id u-1  workers 4  put threads 8" in text
    failed = "failed: bad.bin: [Errno 13] Permission denied"
    assert failed in text and text.index(failed) < text.index("files 11/40, 1 failed")
    # the two smaller files' lines went away: only the largest is redrawn after the failure line
    tick = text.index(failed)
    last = text[text.index("\n", text.rindex("files 11/40, 1 failed")):]  # the last tick drew the total bar last
    assert "big/shard-0001.bin" in text[tick:] and "big/日本語-0002.bin" not in last and "ünï-0003" not in last
    summary = "39 files (38.0 MiB) uploaded to s3://bucket/sets/ in 0:02 (avg 11.0 MiB/s); 1 failed:"
    assert summary in text and text.rindex("100.0% |") < text.index(summary)
    assert text.rstrip().endswith("  bad.bin: [Errno 13] Permission denied")
