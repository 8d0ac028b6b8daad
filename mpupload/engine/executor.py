"""Where parts run: the ``Executor`` port, its events, and the in-process executor.

An executor takes jobs (:class:`~.worker.PartJob`: one part of one named object) and runs them somewhere;
the coordinator (later, the scheduler of many objects) owns what they mean. The contract:

* ``submit(job)`` queues a job (``first=True``: ahead of the others, for a job given back by a dead worker);
* ``events(timeout, wake)`` hands queued jobs to idle workers, waits until something happens (or ``timeout``
  passes, or one of the ``wake`` objects, e.g. the cancel token's pipe, is readable) and returns what did:
  :class:`JobDone` (a result: sent, failed, or cancelled), :class:`WorkerLost` (a worker died; its job, if it
  had one, is handed back and must be submitted again; the executor has already started a replacement) and
  :class:`WorkerBroken` (a worker could not even start, e.g. its client could not be built);
* ``bytes_sent()`` is the byte-true total of every worker's counter: bytes count when they are sent, a retry
  takes them back, a dead worker's bytes in flight are taken back;
* ``cancel()`` sets the shared flag that the body reader checks every chunk; ``shutdown(timeout_s)`` ends the
  workers (a sentinel each, a bounded join, then a kill).

Two implementations: :class:`~.pool.LocalProcessExecutor` (worker processes, for multipart uploads) and
:class:`ThreadExecutor` here (threads of this process, for an object sent with one PutObject: no process
to start). A Dask executor comes later; its jobs are the same descriptors, never bytes.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe, wait
from typing import Any, Protocol

from .counter import ByteCounter, CancelFlag
from .worker import Job, JobResult, OpenFiles, PartResult, WorkerConfig, run_job

__all__ = ["Executor", "ExecutorEvent", "JobDone", "PartDone", "WorkerLost", "WorkerBroken", "QueueingExecutor",
           "ThreadExecutor"]


@dataclass(frozen=True)
class JobDone:
    """A job's result: sent (``result.ok``), failed, or cancelled."""

    job: Job
    result: JobResult


@dataclass(frozen=True)
class WorkerLost:
    """A worker died (killed, out of memory). ``job`` is the job it held, to be submitted again."""

    job: Job | None
    slot: int
    pid: int | None
    exitcode: int | None
    #: what happened, when it was not a local worker process that died (a cluster's task lost or given up on)
    reason: str | None = None

    def describe(self) -> str:
        """The warning line for it."""
        if self.reason is not None:
            return f"{self.reason}; sending its job again"
        return f"worker {self.slot} (pid {self.pid}) died with exit code {self.exitcode}; replacing it"

    def too_many(self, deaths: int) -> str:
        """What to say when the run gives up after ``deaths`` of these."""
        if self.reason is not None:
            return (f"the cluster lost jobs {deaths} times (last: {self.reason}): check the Dask workers' logs and "
                    "their memory limits")
        return (f"worker processes died {deaths} times (last exit code {self.exitcode}): check memory limits and the "
                "system log")


@dataclass(frozen=True)
class WorkerBroken:
    """A worker could not start (its store client could not be built): ``result`` says why."""

    result: PartResult

    def raise_error(self, upload_id: str | None = None) -> None:
        self.result.raise_error(upload_id)


@dataclass(frozen=True)
class PartDone:
    """A part of a batch of parts (``job``) that is on the store, before the batch's :class:`JobDone` (which
    repeats it): the coordinator journals it at once. Executors that cannot say it early do not."""

    job: Job
    result: PartResult


ExecutorEvent = JobDone | PartDone | WorkerLost | WorkerBroken


class Executor(Protocol):
    #: how many jobs can run at once
    workers: int
    #: a job costs this executor enough that one object's parts go to it several to a job (a
    #: :class:`~.worker.BatchJob` of parts: optional, false when absent)
    batches_parts: bool

    def submit(self, job: Job, *, first: bool = False) -> None: ...

    def events(self, timeout: float, wake: Sequence[Any] = ()) -> list[ExecutorEvent]: ...

    def bytes_sent(self) -> int: ...

    def cancel(self) -> None: ...

    def shutdown(self, timeout_s: float = 2.0) -> None: ...


class QueueingExecutor:
    """What both local executors share: the queue of jobs not yet handed to a worker, the byte counter (one slot
    per worker) and the shared cancel flag."""

    #: a job is a message on a pipe or a queue: parts go one to a job
    batches_parts = False

    counter: ByteCounter
    flag: CancelFlag
    pending: deque[Job]

    def submit(self, job: Job, *, first: bool = False) -> None:
        if first:
            self.pending.appendleft(job)
        else:
            self.pending.append(job)

    def bytes_sent(self) -> int:
        return self.counter.total()

    def cancel(self) -> None:
        self.flag.set()


class ThreadExecutor(QueueingExecutor):
    """Jobs run in threads of this process, each with its own store client built when the thread starts.

    For an object that goes up with one PutObject: no worker process to start and no second interpreter to
    pay for; the main thread stays free to tick the bar and handle Ctrl+C. Results come back through a pipe,
    so ``events`` waits on them and on the cancel token with one ``wait``.
    """

    def __init__(self, config: WorkerConfig, threads: int = 1, *, cancel: CancelFlag | None = None,
                 counter: ByteCounter | None = None) -> None:
        self.workers = threads
        self.config = config
        # a capped run makes its counters first: the throttle reads them all (one slot per thread)
        self.counter = counter if counter is not None else ByteCounter(threads)
        self.flag = cancel if cancel is not None else CancelFlag()
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self.pending: deque[Job] = deque()
        self._reader, self._writer = Pipe(duplex=False)
        self._send_lock = threading.Lock()
        #: threads without a job: a job is handed over only to one of them (no queue of jobs behind a busy thread)
        self._idle = threads
        self._threads = [threading.Thread(target=self._run, args=(slot,), name=f"mpupload-put-{slot}", daemon=True)
                         for slot in range(threads)]
        for thread in self._threads:
            thread.start()

    def _send(self, item: ExecutorEvent) -> None:
        with self._send_lock:
            self._writer.send(item)

    def _run(self, slot: int) -> None:
        try:
            store = self.config.store
            store.connect()
        except BaseException as exc:  # noqa: BLE001 - reported, not raised
            from ..storage import classify

            err = classify(exc, endpoint=self.config.store.endpoint_url)
            self._send(WorkerBroken(PartResult(0, False, error_type=type(err).__name__, error=str(err))))
            return
        files = OpenFiles(keep=2)
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                try:
                    result = run_job(store, files, self.config, job, self.counter, slot, self.flag,
                                     on_part=lambda part, job=job: self._send(PartDone(job, part)))  # type: ignore[misc]
                except BaseException as exc:  # noqa: BLE001 - run_job answers; this is a bug's safety net
                    result = PartResult(getattr(job, "number", -1), False, error_type=type(exc).__name__,
                                        error=str(exc), object_id=getattr(getattr(job, "target", None), "object_id", 0))
                self._send(JobDone(job, result))
        finally:
            files.close()

    def events(self, timeout: float, wake: Sequence[Any] = ()) -> list[ExecutorEvent]:
        while self.pending and self._idle > 0:
            self._idle -= 1
            self._jobs.put(self.pending.popleft())
        wait([self._reader, *wake], max(0.0, timeout))
        out: list[ExecutorEvent] = []
        while self._reader.poll(0):
            event = self._reader.recv()
            if isinstance(event, JobDone):
                self._idle += 1
            out.append(event)
        return out

    def shutdown(self, timeout_s: float = 2.0) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout_s)
        for conn in (self._reader, self._writer):
            with contextlib.suppress(OSError):
                conn.close()


def drain(conn: Connection) -> tuple[list[Any], bool]:
    """Every object waiting on a pipe, and False when the pipe turned out to be broken (a worker's death)."""
    out: list[Any] = []
    try:
        while conn.poll(0):
            out.append(conn.recv())
    except (EOFError, OSError, ConnectionError):
        return out, False
    return out, True
