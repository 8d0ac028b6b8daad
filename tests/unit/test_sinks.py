"""The local progress sinks: JSON lines, plain lines, the enlighten bar (also on a real pseudo-terminal)."""

from __future__ import annotations

import io
import json
import os
import re
import select
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import enlighten
import pytest

from mpupload.sinks import JsonLinesSink, PlainSink, TerminalSink, make_sinks
from mpupload.sinks.terminal import render_fields, shorten, status_text
from mpupload.units import GiB, MiB
from mpupload.wire import Event, Snapshot, Status

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 19 * 64 * MiB  # 1216 MiB, shown as "1.2 GiB"
DONE_LINE = "done: s3://bucket/data/train.bin  1.2 GiB in 0:12 (avg 98.1 MiB/s), verified crc32c"
CONTRACT_KEYS = {"event", "upload_id", "bucket", "key", "total_bytes", "bytes_done", "percent", "speed_bps",
                 "avg_speed_bps", "eta_seconds", "elapsed_seconds", "parts_done", "parts_total", "status"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FlushRecorder(io.StringIO):
    """A stream that remembers what had been written each time it was flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


class TtyLike(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def snap(event: Event, bytes_done: int = 0, *, speed: float | None = 112.3 * MiB, avg: float = 98.1 * MiB,
         eta: float | None = 7.0, elapsed: float = 4.0, parts_done: int = 7, total: int = TOTAL,
         **extra: Any) -> Snapshot:
    status = {Event.STARTED: Status.UPLOADING, Event.PROGRESS: Status.UPLOADING,
              Event.COMPLETED: Status.COMPLETED, Event.STOPPED: Status.STOPPED,
              Event.FAILED: Status.FAILED}[event]
    return Snapshot(event=event, status=status, upload_id="u-1", bucket="bucket", key="data/train.bin",
                    total_bytes=total, bytes_done=bytes_done, speed_bps=speed, avg_speed_bps=avg,
                    eta_seconds=eta, elapsed_seconds=elapsed, parts_done=parts_done, parts_total=19,
                    extra=dict(extra))


def started(**extra: Any) -> Snapshot:
    fields: dict[str, Any] = {"part_size": 64 * MiB, "workers": 4, "resumed_bytes": 0, "resumed_parts": 0}
    fields.update(extra)
    return snap(Event.STARTED, fields["resumed_bytes"], speed=None, avg=0.0, eta=None, elapsed=0.0,
                parts_done=fields["resumed_parts"], **fields)


def completed() -> Snapshot:
    return snap(Event.COMPLETED, TOTAL, speed=95.0 * MiB, eta=0.0, elapsed=12.4, parts_done=19,
                checksum="crc32c", etag='"abc-19"', location="http://s3/bucket/data/train.bin",
                verified="crc32c")


# --- JSON lines -------------------------------------------------------------------------------------------

def test_jsonl_does_not_skip_a_second_for_a_tick_that_comes_a_little_early() -> None:
    """The aggregator ticks once a second for JSON lines; its clock and the sink's are read apart, so a tick may
    look a few milliseconds early: that line is written (skipping it left two seconds without a line)."""
    stream, clock = FlushRecorder(), FakeClock()
    sink = JsonLinesSink(stream, min_interval_s=1.0, clock=clock)
    for now, snapshot in [(0.0, started()), (0.98, snap(Event.PROGRESS, 10 * MiB)),
                          (1.5, snap(Event.PROGRESS, 20 * MiB)), (1.97, snap(Event.PROGRESS, 30 * MiB))]:
        clock.now = now
        sink.emit(snapshot)
    assert [json.loads(line)["bytes_done"] for line in stream.getvalue().splitlines()] == [0, 10 * MiB, 30 * MiB]


def test_jsonl_writes_contract_lines_and_throttles_progress() -> None:
    stream, clock = FlushRecorder(), FakeClock()
    sink = JsonLinesSink(stream, min_interval_s=1.0, clock=clock)
    plan = [(0.0, started()), (0.3, snap(Event.PROGRESS, 10 * MiB)), (1.0, snap(Event.PROGRESS, 100 * MiB)),
            (1.5, snap(Event.PROGRESS, 200 * MiB)), (2.1, snap(Event.PROGRESS, 300 * MiB)),
            (2.2, completed())]
    for now, snapshot in plan:
        clock.now = now
        sink.emit(snapshot)
    sink.close()

    lines = stream.getvalue().splitlines()
    objects = [json.loads(line) for line in lines]
    assert [(o["event"], o["bytes_done"]) for o in objects] == [
        ("started", 0), ("progress", 100 * MiB), ("progress", 300 * MiB), ("completed", TOTAL)]
    for obj in objects:
        assert CONTRACT_KEYS <= obj.keys()
    assert {"part_size", "workers", "resumed_bytes", "resumed_parts"} <= objects[0].keys()
    assert objects[-1]["verified"] == "crc32c" and objects[-1]["percent"] == 100.0
    assert objects[0]["eta_seconds"] is None
    assert all(": " not in line and ", " not in line for line in lines)  # compact separators
    # every line was flushed as soon as it was written
    assert ["".join(line + "\n" for line in lines[:n]) for n in range(1, len(lines) + 1)] == \
        [text for text in stream.flushed if text][: len(lines)]


def test_jsonl_final_event_is_never_throttled() -> None:
    stream, clock = io.StringIO(), FakeClock()
    sink = JsonLinesSink(stream, min_interval_s=10.0, clock=clock)
    for event in (started(), snap(Event.PROGRESS, 5 * MiB),
                  snap(Event.STOPPED, 5 * MiB, aborted=True)):
        sink.emit(event)
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["started", "stopped"]


# --- plain lines ------------------------------------------------------------------------------------------

def test_plain_started_progress_completed() -> None:
    stream, clock = io.StringIO(), FakeClock()
    sink = PlainSink(stream, interval_s=5.0, clock=clock)
    sink.emit(started())
    for now, done in ((1.0, 100 * MiB), (4.9, 400 * MiB), (5.0, 456 * MiB), (9.0, 800 * MiB)):
        clock.now = now
        sink.emit(snap(Event.PROGRESS, done))
    clock.now = 10.0
    sink.emit(snap(Event.PROGRESS, 1000 * MiB, speed=None, eta=None))
    clock.now = 12.4
    sink.emit(completed())
    sink.close()
    assert stream.getvalue().splitlines() == [
        "upload: s3://bucket/data/train.bin  1.2 GiB in 19 parts of 64.0 MiB, 4 workers",
        "  37.5%  456.0 MiB / 1.2 GiB  112.3 MiB/s (avg 98.1 MiB/s)  ETA 0:07  parts 7/19",
        "  82.2%  1000.0 MiB / 1.2 GiB  - (avg 98.1 MiB/s)  ETA -  parts 7/19",
        DONE_LINE,
    ]


def test_plain_started_line_mentions_resumed_bytes() -> None:
    stream = io.StringIO()
    PlainSink(stream).emit(started(resumed_bytes=7 * 64 * MiB, resumed_parts=7, workers=1))
    assert stream.getvalue() == ("upload: s3://bucket/data/train.bin  1.2 GiB in 19 parts of 64.0 MiB,"
                                 " 1 worker, resuming: 448.0 MiB in 7 parts already stored\n")


def test_a_run_from_several_hosts_says_how_many() -> None:
    stream = io.StringIO()
    PlainSink(stream).emit(started(workers=12, hosts=3))
    PlainSink(stream).emit(started(workers=4, hosts=1))
    assert stream.getvalue().splitlines() == [
        "upload: s3://bucket/data/train.bin  1.2 GiB in 19 parts of 64.0 MiB, 12 workers on 3 hosts",
        "upload: s3://bucket/data/train.bin  1.2 GiB in 19 parts of 64.0 MiB, 4 workers"]
    assert "workers 12  hosts 3" in status_text(started(workers=12, hosts=3), {"workers": 12, "hosts": 3})


@pytest.mark.parametrize(("final", "expected"), [
    (snap(Event.STOPPED, 456 * MiB, elapsed=5.0, aborted=True),
     ("stopped: s3://bucket/data/train.bin at 37.5% (456.0 MiB of 1.2 GiB) after 0:05;"
      " multipart upload aborted")),
    (snap(Event.STOPPED, 456 * MiB, elapsed=5.0, aborted=False, kept=True,
          resume_command="mpupload upload f.bin s3://bucket/data/train.bin --resume"),
     ("stopped: s3://bucket/data/train.bin at 37.5% (456.0 MiB of 1.2 GiB) after 0:05;"
      " multipart upload kept")),
    # the abort failed: never "aborted", never "kept" (the CLI's own line gives the command that removes it)
    (snap(Event.STOPPED, 456 * MiB, elapsed=5.0, aborted=False, kept=False, store_upload_id="U",
          left_behind=[{"upload_id": "U", "reason": "its abort failed"}]),
     ("stopped: s3://bucket/data/train.bin at 37.5% (456.0 MiB of 1.2 GiB) after 0:05;"
      " the multipart upload could NOT be aborted: it is still on the store")),
    (snap(Event.STOPPED, 0, elapsed=0.0, aborted=False, kept=False, left_behind=[]),
     "stopped: s3://bucket/data/train.bin at 0.0% (0 B of 1.2 GiB) after 0:00; nothing was left on the store"),
    (snap(Event.FAILED, 456 * MiB, error="cannot reach the store at http://127.0.0.1:9: connection refused"),
     # the error itself is the CLI's own line: the sink says where the upload stopped
     "failed: s3://bucket/data/train.bin at 37.5% (456.0 MiB of 1.2 GiB) after 0:04"),
    (snap(Event.COMPLETED, TOTAL, elapsed=75.0, verified="size-only"),
     "done: s3://bucket/data/train.bin  1.2 GiB in 1:15 (avg 98.1 MiB/s), verified by size only"),
])
def test_plain_final_lines(final: Snapshot, expected: str) -> None:
    stream, clock = io.StringIO(), FakeClock()
    sink = PlainSink(stream, clock=clock)
    sink.emit(started())
    clock.now = 0.1  # inside the interval: a final line is written anyway
    sink.emit(final)
    assert stream.getvalue().splitlines()[-1] == expected


# --- terminal bar: pure parts -----------------------------------------------------------------------------

@pytest.mark.parametrize(("snapshot", "expected"), [
    (snap(Event.PROGRESS, 456 * MiB),
     {"percent": "37.5%", "done": "456.0 MiB", "size": "1.2 GiB", "speed": "112.3 MiB/s",
      "remaining": "0:07", "parts": "7/19"}),
    (snap(Event.PROGRESS, 0, speed=None, eta=None, parts_done=0),
     {"percent": "0.0%", "done": "0 B", "size": "1.2 GiB", "speed": "-", "remaining": "-", "parts": "0/19"}),
    (snap(Event.PROGRESS, 2 * TOTAL),  # never shows more than 100%
     {"percent": "100.0%", "done": "2.4 GiB", "size": "1.2 GiB", "speed": "112.3 MiB/s",
      "remaining": "0:07", "parts": "7/19"}),
    (snap(Event.COMPLETED, 0, total=0, speed=0.0, eta=0.0, parts_done=1),
     {"percent": "100.0%", "done": "0 B", "size": "0 B", "speed": "0 B/s", "remaining": "0:00",
      "parts": "1/19"}),
    (snap(Event.PROGRESS, 150 * GiB, total=200 * GiB, eta=3700.0),
     {"percent": "75.0%", "done": "150.0 GiB", "size": "200.0 GiB", "speed": "112.3 MiB/s",
      "remaining": "1:01:40", "parts": "7/19"}),
])
def test_render_fields(snapshot: Snapshot, expected: dict[str, str]) -> None:
    assert render_fields(snapshot) == expected
    assert TerminalSink.render_fields(snapshot) == expected


@pytest.mark.parametrize(("text", "width", "expected"), [
    ("s3://bucket/key", 20, "s3://bucket/key"),
    ("s3://bucket/data/train.bin", 12, "s3://…in.bin"),
    ("s3://bucket/data/train.bin", 1, "s"),
])
def test_shorten(text: str, width: int, expected: str) -> None:
    assert shorten(text, width) == expected
    assert len(shorten(text, width)) <= width


def test_status_text() -> None:
    extra = started(checksum="crc32c", resumed_bytes=64 * MiB, resumed_parts=1).extra
    assert status_text(snap(Event.PROGRESS, 456 * MiB, elapsed=75.0), extra) == (
        "upload id u-1  workers 4  part 64.0 MiB  checksum crc32c  resumed 64.0 MiB  avg 98.1 MiB/s"
        "  elapsed 1:15")


def _string_manager(stream: Any) -> Any:
    """An enabled manager on a StringIO: enlighten formats and writes as on a TTY, minus the escapes."""
    return enlighten.Manager(stream=stream, enabled=True, width=100, no_resize=True)


def test_counter_format_of_the_real_bar() -> None:
    """format() on the counter TerminalSink builds: a format error shows up here, not only on a TTY."""
    sink = TerminalSink(io.StringIO(), manager_factory=_string_manager)
    sink.emit(started())
    sink.emit(snap(Event.PROGRESS, 456 * MiB))
    sink.sync()
    assert isinstance(sink.bar.total, float) and isinstance(sink.bar.count, float)
    line = sink.bar.format(width=100)
    assert "37.5% |" in line and "456.0 MiB / 1.2 GiB" in line and "112.3 MiB/s" in line
    assert "ETA 0:07" in line and "parts 7/19" in line and "s3://" in line
    assert len(line) == 100
    sink.close()


def test_terminal_sink_drives_an_enabled_manager() -> None:
    stream = io.StringIO()
    sink = TerminalSink(stream, manager_factory=_string_manager)
    sink.emit(started())
    sink.emit(snap(Event.PROGRESS, 456 * MiB))
    sink.sync()
    sink.emit(snap(Event.PROGRESS, 400 * MiB))  # a part was retried: the bar goes back
    sink.sync()
    assert sink.bar.count == 400.0 * MiB
    sink.emit(snap(Event.PROGRESS, 2 * TOTAL))  # never beyond the total
    sink.sync()
    assert sink.bar.count == sink.bar.total == float(TOTAL)
    sink.emit(completed())
    sink.close()
    out = stream.getvalue()
    assert out.index("456.0 MiB / 1.2 GiB") < out.index("400.0 MiB / 1.2 GiB") < out.index("100.0% |")
    assert "upload id u-1  workers 4  part 64.0 MiB" in out
    assert out.endswith(DONE_LINE + "\n")
    assert not sink.manager.enabled


def test_terminal_sink_on_a_non_tty_prints_only_the_outcome() -> None:
    stream = io.StringIO()
    sink = TerminalSink(stream)  # enlighten.get_manager: disabled, stream is not a TTY
    sink.emit(started())
    sink.emit(snap(Event.PROGRESS, 456 * MiB))
    sink.emit(snap(Event.PROGRESS, 300 * MiB))
    sink.sync()
    assert sink.bar.count == 300.0 * MiB
    sink.emit(snap(Event.FAILED, 300 * MiB, error="access denied"))
    sink.emit(snap(Event.PROGRESS, 500 * MiB))  # after the end: ignored
    sink.close()
    sink.close()
    assert stream.getvalue() == "failed: s3://bucket/data/train.bin at 24.7% (300.0 MiB of 1.2 GiB) after 0:04\n"


# --- make_sinks -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "tty", "quiet", "expected"), [
    ("auto", True, False, [TerminalSink]),
    ("auto", False, False, [PlainSink]),
    ("bar", False, False, [TerminalSink]),
    ("plain", True, False, [PlainSink]),
    ("json", True, False, [JsonLinesSink]),
    ("json", False, True, [JsonLinesSink]),
    ("none", True, False, []),
    ("auto", True, True, []),
    ("bar", True, True, []),
    ("plain", False, True, []),
])
def test_make_sinks(mode: str, tty: bool, quiet: bool, expected: list[type]) -> None:
    stdout, stderr = TtyLike(False), TtyLike(tty)
    sinks = make_sinks(mode, stdout=stdout, stderr=stderr, quiet=quiet)
    assert [type(s) for s in sinks] == expected
    for sink in sinks:
        sink.emit(completed())
        sink.close()
    if expected == [JsonLinesSink]:
        assert json.loads(stdout.getvalue())["event"] == "completed" and stderr.getvalue() == ""
    elif expected:
        assert stdout.getvalue() == ""
        assert stderr.getvalue().endswith(DONE_LINE + "\n")


def test_make_sinks_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown progress mode 'fancy'"):
        make_sinks("fancy", stdout=io.StringIO(), stderr=io.StringIO(), quiet=False)


# --- a real pseudo-terminal ------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    from mpupload.wire import Event, Snapshot, Status
    from mpupload.sinks import TerminalSink
    from mpupload.units import MiB

    TOTAL = 19 * 64 * MiB

    def snap(event, status, done, speed, eta, parts, elapsed, **extra):
        return Snapshot(event=event, status=status, upload_id="u-1", bucket="bucket", key="data/train.bin",
                        total_bytes=TOTAL, bytes_done=done, speed_bps=speed, avg_speed_bps=98.1 * MiB,
                        eta_seconds=eta, elapsed_seconds=elapsed, parts_done=parts, parts_total=19,
                        extra=extra)

    sink = TerminalSink(sys.stderr)
    assert sink.manager.enabled, "stderr should be a TTY here"
    sink.emit(snap(Event.STARTED, Status.UPLOADING, 0, None, None, 0, 0.0,
                   part_size=64 * MiB, workers=4, resumed_bytes=0, resumed_parts=0))
    sink.sync()
    sink.emit(snap(Event.PROGRESS, Status.UPLOADING, 456 * MiB, 112.3 * MiB, 7.0, 7, 4.0))
    sink.sync()
    sink.emit(snap(Event.PROGRESS, Status.UPLOADING, 400 * MiB, 101.0 * MiB, None, 6, 4.5))
    sink.sync()
    sink.emit(snap(Event.PROGRESS, Status.UPLOADING, TOTAL, 120.0 * MiB, 0.0, 19, 12.0))
    sink.sync()
    sink.emit(snap(Event.COMPLETED, Status.COMPLETED, TOTAL, 120.0 * MiB, 0.0, 19, 12.4,
                   checksum="crc32c", etag="x", location="y", verified="crc32c"))
    sink.close()
""")
#: escape sequences: DCS (capability queries), CSI, OSC, charset selection, two-byte ESC codes
ANSI = re.compile(r"\x1bP[^\x1b]*\x1b\\|\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
                  r"|\x1b[()][0-9A-Za-z]|\x1b[0-9=>A-Za-z]")


def _run_on_pty(code: str, deadline_s: float = 60.0) -> tuple[int, str]:
    import fcntl
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30", "PYTHONPATH": str(ROOT),
           "PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    try:
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave,
                                env=env, cwd=ROOT, start_new_session=True)
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    answered = 0
    deadline = time.monotonic() + deadline_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                pytest.fail(f"child still running after {deadline_s} s; output so far: {b''.join(chunks)!r}")
            ready, _, _ = select.select([master], [], [], left)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave end is closed, the child is gone
                break
            if not data:
                break
            chunks.append(data)
            # Play the terminal: blessed asks for the cursor position (DSR 6n, also the end marker of its
            # capability probes) and waits for the answer, 5 s per probe on a terminal that stays silent.
            queries = b"".join(chunks).count(b"\x1b[6n")
            while answered < queries:
                os.write(master, b"\x1b[1;1R")
                answered += 1
        returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return returncode, b"".join(chunks).decode("utf-8", errors="replace")


def test_terminal_sink_draws_on_a_real_pty() -> None:
    returncode, raw = _run_on_pty(CHILD)
    text = ANSI.sub("", raw).replace("\r", "")
    assert returncode == 0, text
    assert "\x1b" not in text and "+q" not in text  # every escape sequence was recognised
    assert "\x1b[" in raw  # enlighten really drew (cursor movement), it was not a disabled manager
    assert "37.5% |" in text and "456.0 MiB / 1.2 GiB" in text
    assert "112.3 MiB/s  ETA 0:07  parts 7/19" in text
    # the retry pulled the bar back, with an unknown ETA
    assert text.index("456.0 MiB / 1.2 GiB") < text.index("400.0 MiB / 1.2 GiB")
    assert "ETA -  parts 6/19" in text
    assert "100.0% |" in text and "1.2 GiB / 1.2 GiB  120.0 MiB/s  ETA 0:00  parts 19/19" in text
    assert "upload id u-1  workers 4  part 64.0 MiB" in text
    summary = DONE_LINE
    assert summary in text
    assert text.rindex("100.0% |") < text.index(summary)  # printed under the final bar
    bar_lines = [line for line in text.split("\n") if "100.0% |" in line]
    assert bar_lines and all(line.startswith("s3://") for line in bar_lines)


def test_started_line_of_a_single_put() -> None:
    from mpupload.sinks.plain import started_line

    line = started_line(started(multipart=False, part_size=1000, workers=1))
    assert line.endswith("in a single PutObject") and "part" not in line.replace("PutObject", "")


def test_final_line_says_what_was_resumed() -> None:
    from mpupload.sinks.plain import final_line

    line = final_line(snap(Event.COMPLETED, TOTAL, eta=0.0, elapsed=12.4, parts_done=19, verified="md5",
                           resumed_bytes=18 * 64 * MiB, resumed_parts=18))
    assert line.endswith("; resumed 1.1 GiB of 1.2 GiB, 18/19 parts"), line


def test_jsonl_writes_every_status_change_even_within_the_interval() -> None:
    stream = io.StringIO()
    t = [0.0]
    sink = JsonLinesSink(stream, min_interval_s=1.0, clock=lambda: t[0])
    sink.emit(started())
    t[0] = 0.5
    sink.emit(snap(Event.PROGRESS, 100))  # throttled
    t[0] = 0.6
    finalizing = Snapshot(**{**snap(Event.PROGRESS, 200).__dict__, "status": Status.FINALIZING})
    sink.emit(finalizing)  # a new status: written
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["status"] for line in lines] == ["uploading", "finalizing"]
