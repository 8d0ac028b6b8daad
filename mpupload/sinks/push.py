"""The API push: progress snapshots to the API server, from a background thread that never slows the upload.

How it works::

    aggregator (main thread) --emit()--> ReportBuffer --sender thread--> POST /api/v1/uploads/{id}/progress
                                          (O(1), under a lock)           own session, 2-3 s timeouts, backoff

* :meth:`PushSink.emit` turns the snapshot into a report body, stamps it with a ``seq`` and hands it over;
  it never waits for the network.
* :class:`ReportBuffer` is bounded and latest-wins: consecutive reports of the same status replace each
  other, a status change (uploading -> finalizing) is kept as its own entry, and the final report
  (completed, stopped, failed) is never replaced or dropped. At most :data:`BUFFER_MAX` entries.
* The sender posts the newest report every ``interval_s`` seconds, and at once on a status change. A report
  that fails (no answer, 5xx) is retried after :func:`backoff_delay`; newer snapshots replace it meanwhile.
* A record that could not be registered at start (server down or hanging) is registered by the sender as
  soon as the server answers, and then catches up with the latest snapshot. The events keep the store's
  UploadId as ``upload_id`` in that case (the record id was not known when ``started`` went out).
* ``seq`` is time based (:class:`SeqClock`): microseconds since the epoch, strictly increasing in this
  process, so that a resumed upload in a new process keeps rising without any saved state.
* The answer ``{"action": "stop"}`` calls ``on_stop`` once (the CLI cancels the upload, as Ctrl+C does).
* 401 (token expired or revoked), 404, 409 and 422 stop the reporting; the upload goes on, and ``say``
  is called once with a line that says why.
* :meth:`PushSink.close` waits at most ``final_wait_s`` for the final report, then says once when it could
  not be delivered. When the server is so slow that the reports still pending could not all be delivered
  in half that time (by the last round trip), the final report replaces them. When the server has not
  answered since the outage reported at the start, it waits only :data:`OUTAGE_FINAL_WAIT_S` and says
  nothing more: the user was told already.

**A directory run.** Its reports carry the run's ``files_*`` counts (from ``Snapshot.files``) and stay one
small snapshot: the per-file lists of its events (``in_flight``, ``failed_files``, ...) are left out. The files
themselves travel apart, through ``POST /api/v1/uploads/{id}/files``:

* ``file_completed`` and ``file_failed`` events (no report of their own) and the ``in_flight`` files of each
  progress snapshot go into a bounded map, path -> newest entry (:class:`.file_list.PendingFiles`: at most
  ``pending_files_max`` entries; failed files are kept first, and what had to go is counted);
* after each delivered report the sender posts up to ``files_batches_per_report`` batches of at most 1000
  entries (:data:`FILE_BATCHES_PER_REPORT`), failed files first; a batch that gets no answer goes back into
  the map and is retried after a backoff, one the server refuses (409, 413, 422) is dropped and counted;
* at :meth:`PushSink.finish`, once the final report is delivered, the rest is sent within ``files_flush_s``
  (:data:`FILES_FLUSH_S`); if some could not be, or were dropped on the way, one warning line says how many
  file states the server's list misses and why (unless another line already said that reporting failed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..client.errors import ApiAuthError, ApiError, ApiNotFound, ApiRefused
from ..wire import DATASET_EVENT_FIELDS, Event, Snapshot, Status
from .base import Sink
from .file_list import PENDING_FILES_MAX, PendingFiles, entries_of

__all__ = ["BUFFER_MAX", "FINAL_WAIT_S", "FILES_FLUSH_S", "FILE_BATCHES_PER_REPORT", "REPORT_INTERVAL_S",
           "PushSink", "Report", "ReportBuffer", "SeqClock", "Transport", "backoff_delay", "report_body"]

log = logging.getLogger("mpupload")

REPORT_INTERVAL_S = 2.0
#: how long ``close()`` waits for the final report
FINAL_WAIT_S = 5.0
BUFFER_MAX = 8
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 4.0
#: while closing, retries come at least this often
CLOSING_BACKOFF_MAX_S = 0.5
#: the wait at close when the server has not answered since the outage was reported at the start
OUTAGE_FINAL_WAIT_S = 1.0
FINAL_EVENTS = (Event.COMPLETED, Event.STOPPED, Event.FAILED)
FILE_EVENTS = (Event.FILE_COMPLETED, Event.FILE_FAILED)
#: files batches sent after each report (8,000 files per 2 s interval: faster than a run finishes files)
FILE_BATCHES_PER_REPORT = 8
#: how long ``finish()`` goes on sending the file list once the final report is delivered
FILES_FLUSH_S = 5.0
#: what a directory run's events carry besides the counts, per file: sent through the files route, not reported
_PER_FILE_EXTRAS = frozenset(name for names in DATASET_EVENT_FIELDS.values() for name in names)


class Transport(Protocol):
    """What the sender needs from the API client (:class:`mpupload.client.ApiClient` implements it)."""

    def create_upload(self, body: Mapping[str, Any]) -> dict[str, Any]: ...

    def report(self, record_id: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    def post_files(self, record_id: str, files: list[dict[str, Any]]) -> dict[str, Any]: ...


class SeqClock:
    """Report sequence numbers: microseconds since the epoch, forced strictly increasing in this process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(int(self._clock() * 1_000_000), self._last + 1)
            return self._last


def backoff_delay(attempt: int, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_MAX_S) -> float:
    """Seconds before retry number ``attempt`` (1, 2, ...): doubling from ``base_s``, capped at ``cap_s``."""
    if attempt < 1:
        return 0.0
    return float(min(cap_s, base_s * 2 ** min(attempt - 1, 30)))


@dataclass
class Report:
    seq: int
    status: Status
    body: dict[str, Any]
    final: bool = False
    #: send at once, without waiting for the interval (a status change, the start, the end)
    urgent: bool = False


class ReportBuffer:
    """Bounded, latest-wins per status; the final report is never replaced or dropped. Not locked itself."""

    def __init__(self, maxlen: int = BUFFER_MAX) -> None:
        if maxlen < 2:
            raise ValueError("the buffer needs room for a pending report and the final one")
        self._items: deque[Report] = deque()
        self._maxlen = maxlen

    def __len__(self) -> int:
        return len(self._items)

    def put(self, report: Report) -> None:
        items = self._items
        if items and items[-1].final:
            return  # nothing comes after the end
        if items and not report.final and items[-1].status is report.status:
            report.urgent = report.urgent or items[-1].urgent
            items[-1] = report
            return
        items.append(report)
        while len(items) > self._maxlen:
            del items[0]  # the oldest is never the final one: the final one is always last

    def peek(self) -> Report | None:
        return self._items[0] if self._items else None

    def done(self, report: Report) -> None:
        """``report`` was delivered: drop it, unless a newer report has replaced it meanwhile."""
        if self._items and self._items[0] is report:
            self._items.popleft()

    def clear(self) -> None:
        self._items.clear()

    def drop_pending(self, keep_head: bool) -> int:
        """Drop the non-final reports not yet sent (the head too unless ``keep_head``: it is in flight)."""
        head = [self._items[0]] if keep_head and self._items else []
        dropped = len(self._items) - len(head)
        self._items = deque(head)
        return dropped

    def has_final(self) -> bool:
        return bool(self._items) and self._items[-1].final

    def last(self) -> Report | None:
        return self._items[-1] if self._items else None


def report_body(snapshot: Snapshot, seq: int) -> dict[str, Any]:
    """The progress report for one snapshot: the snapshot's fields plus ``seq`` (extra fields are ignored).

    Its ``parts_total`` is the registration's: the upload is registered from the final plan, after the resume
    decision, and the aggregator is built from the same plan. A directory run's per-file lists are left out
    (they go through the files route), so a report stays small however many files failed."""
    body = snapshot.to_dict()
    if snapshot.files is not None:
        for name in _PER_FILE_EXTRAS.intersection(body):
            del body[name]
    body["seq"] = seq
    return body


class PushSink(Sink):
    """A progress sink that reports to the API server from its own thread (see the module docstring)."""

    def __init__(
        self,
        transport: Transport,
        *,
        record_id: str | None,
        registration: Mapping[str, Any],
        interval_s: float = REPORT_INTERVAL_S,
        final_wait_s: float = FINAL_WAIT_S,
        on_stop: Callable[[], None] | None = None,
        say: Callable[[str], None] = lambda line: None,
        api_url: str = "the API server",
        continuing: bool = False,
        outage_reported: bool = False,
        clock: Callable[[], float] = time.monotonic,
        seq: SeqClock | None = None,
        pending_files_max: int = PENDING_FILES_MAX,
        files_batches_per_report: int = FILE_BATCHES_PER_REPORT,
        files_flush_s: float = FILES_FLUSH_S,
        adopt_upload_id: bool = False,
    ) -> None:
        self._transport = transport
        self.record_id = record_id
        #: a brokered upload: the server made the record with the upload (its id is the store's upload id, in
        #: the ``started`` event), owns its end (completed, or stopped by an abort), and a report its end
        #: overtook is dropped, not an error; nothing is registered here
        self._adopt = adopt_upload_id
        self._registration = dict(registration)
        self._interval_s = interval_s
        #: snapshots four times per report, so the report sent is never more than a quarter interval old (the
        #: aggregator keeps its tick within 0.25-1 s)
        self.refresh_s = interval_s / 4
        self._final_wait_s = final_wait_s
        self._on_stop = on_stop
        self._say = say
        self._api_url = api_url
        #: the record comes from an earlier run (``--resume``): a 404 on it means "register a new one"
        self._continuing = continuing and record_id is not None
        self._clock = clock
        self._seq = seq or SeqClock()
        self._cond = threading.Condition()
        self._buffer = ReportBuffer()
        self._last_status: Status | None = None
        self._last_sent_at: float | None = None
        self._retry_at = 0.0
        self._attempts = 0
        self._in_flight = False
        self._closing = False
        self._stopped = False
        self._finished = False
        self._disabled = False
        self._said_once = False
        self._outage_reported = outage_reported
        self._last_error: str | None = None
        #: the latest round trip of a delivered report (seconds)
        self._rtt_s = 0.0
        self.final_seen = False
        self.final_delivered = False
        self.stop_requested = False
        self.accepted = 0
        # a directory run's file list (see the module docstring)
        self._files = PendingFiles(pending_files_max)
        self._files_batches = files_batches_per_report
        self._files_flush_s = files_flush_s
        self._files_busy = False
        self._files_retry_at = 0.0
        self._files_attempts = 0
        #: why the file list is not sent any more (the server has no files route, or an unexpected error)
        self._files_off: str | None = None
        #: entries of batches the server refused, and its last reason
        self._files_refused = 0
        self._files_error: str | None = None
        self.files_sent = 0
        self._thread = threading.Thread(target=self._run, name="mpupload-push", daemon=True)
        self._thread.start()

    # -- the sink port (main thread) ----------------------------------------------------------------------------
    def emit(self, snapshot: Snapshot) -> None:
        final = snapshot.event in FINAL_EVENTS
        with self._cond:
            if self._disabled or self.final_seen:
                return
            if snapshot.files is not None and self._files_off is None:
                for entry in entries_of(snapshot):
                    self._files.put(entry)
            if snapshot.event in FILE_EVENTS:
                return  # a file's state goes with the file list; the counts with the next report
            if self._adopt and self.record_id is None and snapshot.event is Event.STARTED:
                self.record_id = snapshot.extra.get("store_upload_id") or None
            seq = self._seq.next()
            report = Report(seq, snapshot.status, report_body(snapshot, seq), final=final,
                            urgent=final or snapshot.event is Event.STARTED or snapshot.status is not self._last_status)
            self._last_status = snapshot.status
            self.final_seen = final
            if final and self._rtt_s * (len(self._buffer) + 1) > self._final_wait_s / 2:
                # a slow server could not take every pending report before the final wait runs out: the
                # final report supersedes them (a subscriber may then not see FINALIZING, never a wrong end)
                self._buffer.drop_pending(keep_head=self._in_flight)
            self._buffer.put(report)
            self._cond.notify_all()

    def close(self) -> None:
        """Deliver the final report (bounded wait). Without a final snapshot, leave room for :meth:`fail`."""
        if self.final_seen:
            self.finish()

    # -- for the CLI --------------------------------------------------------------------------------------------
    def fail(self, status: Status, error: str | None) -> None:
        """The upload ended before it produced a final snapshot (e.g. the store refused the bucket)."""
        with self._cond:
            if self.final_seen or self._disabled:
                return
            seq = self._seq.next()
            body: dict[str, Any] = {"seq": seq, "status": status.value, "bytes_done": 0, "speed_bps": 0.0,
                                    "avg_speed_bps": 0.0, "eta_seconds": None, "parts_done": 0,
                                    "elapsed_seconds": 0.0}
            if error:
                body["error"] = error
            self.final_seen = True
            self._buffer.put(Report(seq, status, body, final=True, urgent=True))
            self._cond.notify_all()
        self.finish()

    def finish(self) -> None:
        """Wait at most ``final_wait_s`` for the buffer to drain, stop the sender, say if the end was lost."""
        with self._cond:
            if self._finished:
                return
            self._finished = True
            self._closing = True
            self._retry_at = 0.0  # one more try at once, whatever the backoff said
            self._cond.notify_all()
            wait_s = min(self._final_wait_s, OUTAGE_FINAL_WAIT_S) if self._outage_reported else self._final_wait_s
            deadline = self._clock() + wait_s
            while (len(self._buffer) or self._in_flight) and not self._disabled and self._thread.is_alive():
                left = deadline - self._clock()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.1))
            lost = self._buffer.has_final() and not self.final_delivered
            last = self._buffer.last()
            status = last.status.value if lost and last is not None else None
            if not lost:
                self._flush_files()
            files_line = self._files_line()
            self._stopped = True
            self._cond.notify_all()
        if lost and not self._said_once and not self._outage_reported:
            self._say_once(f"the {status or 'final'} status could not be reported to {self._api_url}"
                           f" ({self._last_error or 'no answer'}); the record there is out of date")
        if files_line and not self._said_once and not self._outage_reported:
            self._say_once(files_line)

    def _flush_files(self) -> None:
        """(Under the lock, closing) let the sender send the rest of the file list, for ``files_flush_s`` at most."""
        deadline = self._clock() + self._files_flush_s
        self._files_retry_at = 0.0
        self._cond.notify_all()
        while ((len(self._files) or self._files_busy) and self._files_off is None and not self._disabled
               and self.record_id is not None and self._thread.is_alive()):
            left = deadline - self._clock()
            if left <= 0:
                break
            self._cond.wait(min(left, 0.1))

    def _files_line(self) -> str | None:
        """(Under the lock) the warning when the server's file list misses file states; ``None`` when whole."""
        left = len(self._files)
        dropped = sum(self._files.dropped.values())
        if not (left or dropped or self._files_refused):
            return None
        parts = []
        if left:
            parts.append(f"{left} not sent when the run ended ({self._files_off or self._files_error or 'no answer'})")
        if dropped:
            kinds = ", ".join(f"{n} {status}" for status, n in sorted(self._files.dropped.items()))
            parts.append(f"{dropped} dropped while the server did not take them ({kinds}; the sink holds at most "
                         f"{self._files.limit})")
        if self._files_refused:
            parts.append(f"{self._files_refused} refused by the server ({self._files_error})")
        total = left + dropped + self._files_refused
        return (f"the file list of this upload on {self._api_url} misses {total} file states: "
                + "; ".join(parts))

    @property
    def disabled(self) -> bool:
        return self._disabled

    # -- the sender thread ----------------------------------------------------------------------------------------
    def _say_once(self, line: str) -> None:
        if not self._said_once:
            self._said_once = True
            try:
                self._say(line)
            except Exception:  # noqa: BLE001 - a broken stderr must not break the sender
                pass

    def _files_due(self) -> bool:
        return bool(len(self._files)) and self._files_off is None and self.record_id is not None

    def _next(self) -> Report | Literal["files"] | None:
        """Wait (under the lock) for the next report that is due (or, closing, the rest of the file list);
        ``None`` when it is time to stop."""
        with self._cond:
            while True:
                if self._stopped or self._disabled:
                    return None
                head = self._buffer.peek()
                now = self._clock()
                timeout: float | None = None
                if head is None and self._closing and self._files_due():
                    if now >= self._files_retry_at:
                        return "files"
                    timeout = self._files_retry_at - now
                if head is not None:
                    due_at = self._retry_at
                    if not (head.urgent or self._closing) and self._last_sent_at is not None:
                        due_at = max(due_at, self._last_sent_at + self._interval_s)
                    if now >= due_at:
                        self._in_flight = True
                        return head
                    timeout = due_at - now
                self._cond.wait(timeout)

    def _run(self) -> None:
        while True:
            report = self._next()
            if report is None:
                return
            if report == "files":
                self._send_files(None)
                continue
            sent_at = self._clock()
            try:
                delivered = self._deliver(report)
            except Exception as exc:  # noqa: BLE001 - the sender never dies silently on a surprise
                delivered = False
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._disable(f"progress reporting to {self._api_url} stopped after an unexpected error "
                              f"({self._last_error}); the upload goes on")
            with self._cond:
                self._in_flight = False
                now = self._clock()
                if delivered:
                    self._rtt_s = now - sent_at
                    self._attempts = 0
                    self._retry_at = 0.0
                    self._last_sent_at = now
                    self._buffer.done(report)
                    if report.final:
                        self.final_delivered = True
                elif not self._disabled:
                    self._attempts += 1
                    cap = CLOSING_BACKOFF_MAX_S if self._closing else BACKOFF_MAX_S
                    self._retry_at = now + backoff_delay(self._attempts, cap_s=cap)
                self._cond.notify_all()
                closing = self._closing
            if delivered:
                self._send_files(None if closing else self._files_batches)

    def _send_files(self, batches: int | None) -> None:
        """Post up to ``batches`` files batches (all that are due when ``None``), failed files first."""
        sent = 0
        while batches is None or sent < batches:
            with self._cond:
                if (self._stopped or self._disabled or not self._files_due()
                        or self._clock() < self._files_retry_at):
                    return
                batch = self._files.take()
                self._files_busy = True
                record_id = self.record_id
            assert record_id is not None
            delivered = False
            try:
                self._transport.post_files(record_id, batch)
                delivered = True
            except ApiAuthError as exc:
                self._last_error = exc.detail or str(exc)
                self._disable(f"the API server no longer accepts the token ({self._last_error}): progress is not "
                              "reported any more, the upload goes on; run mpupload login")
            except ApiNotFound as exc:  # a server without the files route (or the record is gone)
                self._files_stop(batch, f"the server does not take file lists: {exc.detail or exc}")
            except ApiRefused as exc:
                with self._cond:
                    self._files_refused += len(batch)
                    self._files_error = exc.detail or str(exc)
            except ApiError as exc:  # unreachable, timeout, 5xx: the batch goes back, retried after a backoff
                with self._cond:
                    self._files.give_back(batch)
                    self._files_error = str(exc)
                    self._files_attempts += 1
                    cap = CLOSING_BACKOFF_MAX_S if self._closing else BACKOFF_MAX_S
                    self._files_retry_at = self._clock() + backoff_delay(self._files_attempts, cap_s=cap)
            except Exception as exc:  # noqa: BLE001 - the sender never dies silently on a surprise
                self._files_stop(batch, f"{type(exc).__name__}: {exc}")
            finally:
                with self._cond:
                    self._files_busy = False
                    if delivered:
                        self.files_sent += len(batch)
                        self._files_attempts = 0
                        self._files_retry_at = 0.0
                    self._cond.notify_all()
            if not delivered:
                return
            sent += 1

    def _files_stop(self, batch: list[dict[str, Any]], reason: str) -> None:
        """Send no more files batches (the reports go on); what was not sent is counted as left over."""
        with self._cond:
            self._files.give_back(batch)
            self._files_off = reason
            self._cond.notify_all()

    def _disable(self, line: str) -> None:
        with self._cond:
            self._disabled = True
            self._buffer.clear()
            self._cond.notify_all()
        self._say_once(line)

    def _deliver(self, report: Report) -> bool:
        """Register the record if needed, then post one report. True when the server took it."""
        try:
            if self.record_id is None and self._adopt:
                return True  # the server made no record (the upload ended before it was created): nothing to say
            if self.record_id is None:
                record = self._transport.create_upload(self._registration)
                self.record_id = str(record["id"])
                self._continuing = False
            answer = self._transport.report(self.record_id, report.body)
        except ApiAuthError as exc:
            self._last_error = exc.detail or str(exc)
            self._disable(f"the API server no longer accepts the token ({self._last_error}): progress is not "
                          "reported any more, the upload goes on; run mpupload login")
            return False
        except ApiNotFound as exc:
            if self._continuing and self.accepted == 0:
                # the journal's record is gone (or belongs to someone else now): start a new record
                self.record_id = None
                self._continuing = False
                return self._deliver(report)
            self._last_error = exc.detail or str(exc)
            self._disable(f"the API server does not know upload {self.record_id} ({self._last_error}): "
                          "progress is not reported any more, the upload goes on")
            return False
        except ApiRefused as exc:
            if self._adopt:
                log.debug("report %s dropped: the server already ended brokered upload %s (%s)", report.seq,
                          self.record_id, exc.detail or exc)
                return True
            self._last_error = exc.detail or str(exc)
            self._disable(f"the API server refused a progress report ({self._last_error}): progress is not "
                          "reported any more, the upload goes on")
            return False
        except ApiError as exc:  # unreachable, timeout, 5xx: retry with backoff
            self._last_error = str(exc)
            return False
        self._outage_reported = False  # the server answers again: a lost final status is worth a line
        self.accepted += 1
        if answer.get("action") == "stop" and not report.final and not self.stop_requested:
            self.stop_requested = True
            if self._on_stop is not None:
                self._on_stop()
        return True
