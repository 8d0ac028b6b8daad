"""The API push's pure parts (seq, backoff, the latest-wins buffer) and the sender thread against fakes."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from mpupload.client.errors import ApiAuthError, ApiNotFound, ApiRefused, ApiUnreachable
from mpupload.sinks.push import PushSink, Report, ReportBuffer, SeqClock, backoff_delay, report_body
from mpupload.wire import Event, Snapshot, Status


def snap(event: Event, status: Status, done: int = 0, **extra: Any) -> Snapshot:
    return Snapshot(event=event, status=status, upload_id="u", bucket="b", key="k", total_bytes=100,
                    bytes_done=done, speed_bps=1.0, avg_speed_bps=1.0, eta_seconds=None, elapsed_seconds=1.0,
                    parts_done=0, parts_total=2, extra=dict(extra))


# -- seq ------------------------------------------------------------------------------------------------------------
def test_seq_is_microseconds_and_strictly_increasing_even_when_the_clock_goes_back() -> None:
    times = iter([100.0, 100.0, 99.0, 100.000002, 200.0])
    seq = SeqClock(lambda: next(times))
    values = [seq.next() for _ in range(5)]
    assert values == [100_000_000, 100_000_001, 100_000_002, 100_000_003, 200_000_000]


def test_seq_of_a_new_process_is_above_an_earlier_one() -> None:
    earlier = SeqClock().next()
    wait_for(lambda: int(time.time() * 1_000_000) > earlier)  # the clock has moved on, as between two runs
    assert SeqClock().next() > earlier


def test_seq_is_thread_safe() -> None:
    seq = SeqClock(lambda: 1.0)
    out: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        got = [seq.next() for _ in range(500)]
        with lock:
            out.extend(got)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 2000


# -- backoff --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("attempt", "delay"), [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0),
                                                (1000, 4.0)])
def test_backoff_doubles_and_is_capped(attempt: int, delay: float) -> None:
    assert backoff_delay(attempt) == delay


def test_backoff_with_another_cap() -> None:
    assert backoff_delay(10, base_s=0.1, cap_s=0.5) == 0.5


# -- the buffer -----------------------------------------------------------------------------------------------------
def rep(seq: int, status: Status, final: bool = False, urgent: bool = False) -> Report:
    return Report(seq, status, {"seq": seq}, final=final, urgent=urgent)


def test_latest_wins_within_a_status_and_keeps_urgency() -> None:
    buf = ReportBuffer()
    buf.put(rep(1, Status.UPLOADING, urgent=True))
    buf.put(rep(2, Status.UPLOADING))
    buf.put(rep(3, Status.UPLOADING))
    assert len(buf) == 1
    head = buf.peek()
    assert head is not None and head.seq == 3 and head.urgent


def test_a_status_change_and_the_final_report_are_kept() -> None:
    buf = ReportBuffer()
    buf.put(rep(1, Status.UPLOADING))
    buf.put(rep(2, Status.FINALIZING, urgent=True))
    buf.put(rep(3, Status.FINALIZING))
    buf.put(rep(4, Status.COMPLETED, final=True))
    buf.put(rep(5, Status.UPLOADING))  # nothing after the end
    assert [r.seq for r in buf._items] == [1, 3, 4]
    assert buf.has_final()


def test_bounded_and_never_drops_the_final() -> None:
    buf = ReportBuffer(maxlen=3)
    statuses = [Status.UPLOADING, Status.FINALIZING] * 5
    for i, status in enumerate(statuses):
        buf.put(rep(i, status))
    buf.put(rep(99, Status.FAILED, final=True))
    assert len(buf) == 3 and buf._items[-1].seq == 99


def test_done_keeps_a_newer_replacement() -> None:
    buf = ReportBuffer()
    sent = rep(1, Status.UPLOADING)
    buf.put(sent)
    buf.put(rep(2, Status.UPLOADING))  # replaced while "in flight"
    buf.done(sent)
    head = buf.peek()
    assert head is not None and head.seq == 2
    buf.done(head)
    assert len(buf) == 0


def test_report_body_adds_seq_and_keeps_the_snapshot() -> None:
    s = Snapshot(event=Event.PROGRESS, status=Status.UPLOADING, upload_id=None, bucket="b", key="k",
                 total_bytes=10, bytes_done=5, speed_bps=None, avg_speed_bps=0.0, eta_seconds=None,
                 elapsed_seconds=0.0, parts_done=3, parts_total=9)
    body = report_body(s, 7)
    assert body["seq"] == 7 and body["parts_done"] == 3 and body["parts_total"] == 9
    assert body["status"] == "uploading"
    assert body["speed_bps"] == 0.0 and body["eta_seconds"] is None


# -- the sender against a fake server -------------------------------------------------------------------------------
class FakeServer:
    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.created = 0
        self.create_attempts = 0
        self.failed_reports = 0
        self.fail_with: Exception | None = None
        self.fail_create: Exception | None = None
        self.block = threading.Event()
        self.block.set()
        self.answer: dict[str, Any] = {"ignored": False, "upload": {}}
        self.lock = threading.Lock()

    def create_upload(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.create_attempts += 1
        if self.fail_create is not None:
            raise self.fail_create
        self.created += 1
        return {"id": f"rec-{self.created}"}

    def report(self, record_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self.block.wait(10)
        if self.fail_with is not None:
            self.failed_reports += 1
            raise self.fail_with
        with self.lock:
            self.reports.append({"record": record_id, **body})
        return dict(self.answer)

    def statuses(self) -> list[str]:
        with self.lock:
            return [r["status"] for r in self.reports]


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def sink(server: FakeServer, **kw: Any) -> tuple[PushSink, list[str]]:
    said: list[str] = []
    kw.setdefault("record_id", "rec-0")
    kw.setdefault("interval_s", 0.05)
    kw.setdefault("final_wait_s", 2.0)
    return PushSink(server, registration={"parts_total": 2}, say=said.append, **kw), said


def test_reports_in_order_with_rising_seq_and_delivers_the_final() -> None:
    server = FakeServer()
    push, said = sink(server)
    push.emit(snap(Event.STARTED, Status.UPLOADING))
    for done in range(10, 60, 10):
        push.emit(snap(Event.PROGRESS, Status.UPLOADING, done))
        wait_for(lambda done=done: bool(server.reports) and server.reports[-1]["bytes_done"] == done)  # a pace
    push.emit(snap(Event.PROGRESS, Status.FINALIZING, 100))
    push.emit(snap(Event.COMPLETED, Status.COMPLETED, 100, checksum="crc32c:x", etag="e", verified="crc32c"))
    push.close()
    assert push.final_delivered and said == []
    statuses = server.statuses()
    assert statuses[0] == "uploading" and statuses[-2:] == ["finalizing", "completed"]
    seqs = [r["seq"] for r in server.reports]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert server.reports[-1]["checksum"] == "crc32c:x" and server.reports[-1]["record"] == "rec-0"


def test_emit_never_waits_for_a_hanging_server() -> None:
    server = FakeServer()
    server.block.clear()  # every request hangs
    push, said = sink(server, final_wait_s=0.3)
    started = time.monotonic()
    push.emit(snap(Event.STARTED, Status.UPLOADING))
    for i in range(2000):
        push.emit(snap(Event.PROGRESS, Status.UPLOADING, i % 100))
    push.emit(snap(Event.COMPLETED, Status.COMPLETED, 100))
    assert time.monotonic() - started < 1.0
    assert len(push._buffer) <= 2
    push.close()
    assert time.monotonic() - started < 2.0, "close waits a bounded time"
    assert len(said) == 1 and "completed status could not be reported" in said[0]
    server.block.set()


def test_outage_reported_at_start_is_not_repeated_at_close() -> None:
    server = FakeServer()
    server.fail_create = ApiUnreachable("cannot reach")
    push, said = sink(server, record_id=None, outage_reported=True, final_wait_s=5.0)
    push.emit(snap(Event.STARTED, Status.UPLOADING))
    push.emit(snap(Event.FAILED, Status.FAILED, error="boom"))
    started = time.monotonic()
    push.close()
    assert time.monotonic() - started < 2.0 and said == []


def test_registers_late_when_the_server_comes_back() -> None:
    server = FakeServer()
    server.fail_create = ApiUnreachable("cannot reach")
    push, said = sink(server, record_id=None)
    push.emit(snap(Event.STARTED, Status.UPLOADING))
    wait_for(lambda: server.create_attempts >= 1)  # the registration failed: the server is down
    server.fail_create = None
    push.emit(snap(Event.PROGRESS, Status.UPLOADING, 50))
    push.emit(snap(Event.COMPLETED, Status.COMPLETED, 100))
    push.close()
    assert push.record_id == "rec-1" and push.final_delivered and said == []
    assert server.statuses()[-1] == "completed"


def test_stop_action_calls_on_stop_once() -> None:
    server = FakeServer()
    server.answer = {"ignored": False, "upload": {}, "action": "stop"}
    stops: list[int] = []
    push, _ = sink(server, on_stop=lambda: stops.append(1))
    push.emit(snap(Event.STARTED, Status.UPLOADING))
    wait_for(lambda: stops)
    push.emit(snap(Event.PROGRESS, Status.UPLOADING, 10))
    push.emit(snap(Event.STOPPED, Status.STOPPED, 10, aborted=True))
    push.close()
    assert stops == [1] and push.stop_requested and server.statuses()[-1] == "stopped"


@pytest.mark.parametrize(("error", "words"), [
    (ApiAuthError("expired", status=401, detail="expired"), "no longer accepts the token"),
    (ApiNotFound("gone", status=404), "does not know upload"),
    (ApiRefused("bad", status=409), "refused a progress report"),
])
def test_rejections_stop_reporting_and_are_said_once(error: Exception, words: str) -> None:
    server = FakeServer()
    server.fail_with = error
    push, said = sink(server)
    push.emit(snap(Event.STARTED, Status.UPLOADING))
    wait_for(lambda: push.disabled)
    for i in range(5):
        push.emit(snap(Event.PROGRESS, Status.UPLOADING, i))
    push.emit(snap(Event.COMPLETED, Status.COMPLETED, 100))
    push.close()
    assert len(said) == 1 and words in said[0]


def test_a_resumed_record_that_is_gone_gets_a_new_one() -> None:
    server = FakeServer()
    calls: list[str] = []
    real_report = server.report

    def report(record_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        calls.append(record_id)
        if record_id == "old":
            raise ApiNotFound("gone", status=404)
        return real_report(record_id, body)

    server.report = report  # type: ignore[method-assign]
    push, said = sink(server, record_id="old", continuing=True)
    push.emit(snap(Event.STARTED, Status.UPLOADING))
    push.emit(snap(Event.COMPLETED, Status.COMPLETED, 100))
    push.close()
    assert calls[:2] == ["old", "rec-1"] and push.record_id == "rec-1" and said == []


def test_transient_failures_are_retried() -> None:
    server = FakeServer()
    server.fail_with = ApiUnreachable("down")
    push, said = sink(server)
    push.emit(snap(Event.STARTED, Status.UPLOADING))
    wait_for(lambda: server.failed_reports >= 1)  # the report failed
    server.fail_with = None
    push.emit(snap(Event.COMPLETED, Status.COMPLETED, 100))
    push.close()
    assert push.final_delivered and said == [] and server.statuses()[-1] == "completed"


def test_fail_without_a_final_snapshot_sends_failed() -> None:
    server = FakeServer()
    push, _ = sink(server)
    push.close()  # no final snapshot: nothing yet
    push.fail(Status.FAILED, "the bucket does not exist")
    assert server.reports[-1]["status"] == "failed" and server.reports[-1]["error"] == "the bucket does not exist"
    push.finish()  # idempotent


# -- the journal keeps the record id (optional field, version 1 stays readable) ----------------------------------
def test_journal_record_id_round_trips_and_old_journals_read_as_none(tmp_path: Any) -> None:
    import json

    from mpupload import journal as journal_mod

    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    path = tmp_path / "j.json"
    j = journal_mod.Journal(path, journal_mod.fingerprint(str(src)), None, "b", "k", "mpu-1", 5 << 20, 2, None, True,
                            record_id="rec-7")
    j.save()
    loaded = journal_mod.load(path)
    assert loaded is not None and loaded.record_id == "rec-7"
    data = json.loads(path.read_text())
    del data["record_id"]  # as written before the field existed
    path.write_text(json.dumps(data))
    old = journal_mod.load(path)
    assert old is not None and old.record_id is None and old.upload_id == "mpu-1"


class SlowServer(FakeServer):
    """Every report takes ``delay`` seconds to answer."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.answering = 0  # reports received so far, each answered ``delay`` seconds later

    def report(self, record_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self.answering += 1
        time.sleep(self.delay)  # the fake server's latency, not a wait of the test
        return super().report(record_id, body)


def test_a_slow_server_still_gets_the_final_status_within_the_wait() -> None:
    server = SlowServer(0.3)
    push, said = sink(server, final_wait_s=1.0)  # three reports in a row would take 0.9 s of the 1 s
    push.emit(snap(Event.STARTED, Status.UPLOADING))
    wait_for(lambda: server.statuses() == ["uploading"])  # the round trip is known now
    push.emit(snap(Event.PROGRESS, Status.UPLOADING, 50))
    wait_for(lambda: server.answering >= 2)  # in flight now
    push.emit(snap(Event.PROGRESS, Status.FINALIZING, 100))
    push.emit(snap(Event.COMPLETED, Status.COMPLETED, 100))
    push.close()
    assert push.final_delivered and said == []
    assert server.statuses()[-1] == "completed" and "finalizing" not in server.statuses()


def test_a_fast_server_sees_every_status() -> None:
    server = FakeServer()
    push, said = sink(server, final_wait_s=1.0)
    push.emit(snap(Event.STARTED, Status.UPLOADING))
    wait_for(lambda: server.statuses() == ["uploading"])
    push.emit(snap(Event.PROGRESS, Status.FINALIZING, 100))
    push.emit(snap(Event.COMPLETED, Status.COMPLETED, 100))
    push.close()
    assert server.statuses()[-2:] == ["finalizing", "completed"] and said == []


def test_drop_pending_keeps_the_report_in_flight() -> None:
    buffer = ReportBuffer()
    first, second = Report(1, Status.UPLOADING, {}), Report(2, Status.FINALIZING, {})
    buffer.put(first)
    buffer.put(second)
    assert buffer.drop_pending(keep_head=True) == 1 and buffer.peek() is first
    assert buffer.drop_pending(keep_head=False) == 1 and buffer.peek() is None


# -- a brokered upload: the server's record ------------------------------------------------------------------------
def test_a_brokered_sink_reports_to_the_upload_s_record_and_registers_nothing() -> None:
    """The record is the one the server made with the upload (the started event's store upload id); a report
    the server's own end overtook (409: it completed the upload) is dropped without a word."""
    server = FakeServer()
    push, said = sink(server, record_id=None, adopt_upload_id=True)
    push.emit(snap(Event.STARTED, Status.UPLOADING, store_upload_id="srv-7"))
    wait_for(lambda: bool(server.reports))
    server.fail_with = ApiRefused("illegal transition completed -> finalizing", status=409)
    push.emit(snap(Event.PROGRESS, Status.FINALIZING, 100))
    wait_for(lambda: server.failed_reports >= 1)
    server.fail_with = None
    push.emit(snap(Event.COMPLETED, Status.COMPLETED, 100))
    push.close()
    assert server.created == 0 and said == [] and not push.disabled
    assert {r["record"] for r in server.reports} == {"srv-7"}
    assert server.statuses() == ["uploading", "completed"]


def test_a_brokered_sink_without_an_upload_says_nothing_and_registers_nothing() -> None:
    """The upload ended before the server made it (the server refused the key): no record to report to."""
    server = FakeServer()
    push, said = sink(server, record_id=None, adopt_upload_id=True)
    push.fail(Status.FAILED, "the API server refused the upload")
    push.finish()
    assert server.create_attempts == 0 and server.reports == [] and said == []
