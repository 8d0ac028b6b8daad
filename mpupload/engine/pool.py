"""The local executor: worker processes, one pipe each, managed by the coordinator's main thread.

No shared queue: a worker killed while holding a queue's lock would freeze its siblings. Each worker
has its own duplex pipe; the executor hands a job to an idle worker and waits on every pipe and every
process sentinel at once, so a death is seen as soon as it happens. A dead worker's bytes in flight are
taken back from the counter, a new process takes its slot, and its job is handed back to the caller
(:class:`~.executor.WorkerLost`), which decides whether to send it again.

The workers start (and build their store clients) as soon as the executor exists: the coordinator creates
it before it makes the upload, so that cost overlaps the round trips to the store. Jobs name their
object (:class:`~.worker.PartTarget`), so one executor serves every object of a run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from .counter import ByteCounter, CancelFlag
from .executor import ExecutorEvent, JobDone, PartDone, QueueingExecutor, WorkerBroken, WorkerLost, drain
from .worker import Job, JobResult, PartResult, PartSent, WorkerConfig, worker_main

__all__ = ["LocalProcessExecutor", "WorkerHandle", "START_METHODS"]

START_METHODS = ("fork", "forkserver", "spawn")


@dataclass
class WorkerHandle:
    slot: int
    process: Any
    conn: Connection
    job: Job | None = None
    #: bytes of the parts this slot finished, so the slot can be reset when its process dies
    completed_bytes: int = 0
    started_at: float = field(default_factory=time.monotonic)


class LocalProcessExecutor(QueueingExecutor):
    def __init__(
        self,
        config: WorkerConfig,
        size: int,
        *,
        cancel: CancelFlag | None = None,
        start_method: str | None = None,
        counter: ByteCounter | None = None,
    ) -> None:
        method = start_method or os.environ.get("MPUPLOAD_START_METHOD") or None
        if method is not None and method not in START_METHODS:
            raise ValueError(f"unknown start method {method!r}: use one of {', '.join(START_METHODS)}")
        self._ctx: Any = multiprocessing.get_context(method)
        self.config = config
        self.workers = size
        # a capped run makes its counters first: the throttle reads them all (one slot per worker)
        self.counter = counter if counter is not None else ByteCounter(size)
        self.flag = cancel if cancel is not None else CancelFlag()
        self.pending: deque[Job] = deque()
        self.handles: list[WorkerHandle] = []
        for slot in range(size):
            self.handles.append(self._start(slot))

    def _start(self, slot: int) -> WorkerHandle:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main,
            args=(slot, self.config, child_conn, self.counter, self.flag, os.getpid()),
            name=f"mpupload-worker-{slot}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        return WorkerHandle(slot, process, parent_conn)

    def replace(self, handle: WorkerHandle) -> WorkerHandle:
        """Start a new process in a dead worker's slot; its in-flight bytes are taken back first."""
        with contextlib.suppress(Exception):
            handle.conn.close()
        with contextlib.suppress(Exception):
            handle.process.join(0)
        self.counter.set(handle.slot, handle.completed_bytes)
        new = self._start(handle.slot)
        new.completed_bytes = handle.completed_bytes
        self.handles[handle.slot] = new
        return new

    # -- the Executor port -----------------------------------------------------------------------------------
    def events(self, timeout: float, wake: Sequence[Any] = ()) -> list[ExecutorEvent]:
        out: list[ExecutorEvent] = []
        for worker in self._dispatch():  # workers that died while idle
            out.append(self._lost(worker))
        objs: list[Any] = []
        for w in self.handles:
            objs += [w.conn, w.process.sentinel]
        ready = wait([*objs, *wake], max(0.0, timeout))
        for worker in list(self.handles):
            alive = True
            if worker.conn in ready:
                alive = self._collect(worker, out)
            if worker.process.sentinel in ready or not alive:
                self._collect(worker, out)
                if worker.process.is_alive() and alive:
                    continue
                out.append(self._lost(worker))
        return out

    def shutdown(self, timeout_s: float = 2.0) -> None:
        """One sentinel per worker, a bounded join, then SIGKILL for whatever is still running."""
        for w in self.handles:
            with contextlib.suppress(Exception):
                w.conn.send(None)
        deadline = time.monotonic() + timeout_s
        for w in self.handles:
            w.process.join(max(0.0, deadline - time.monotonic()))
        for w in self.handles:
            if w.process.is_alive():
                w.process.kill()
                w.process.join(2.0)
            with contextlib.suppress(Exception):
                w.conn.close()

    # -- inside ------------------------------------------------------------------------------------------------
    def idle(self) -> list[WorkerHandle]:
        return [w for w in self.handles if w.job is None]

    def _dispatch(self) -> list[WorkerHandle]:
        """Hand pending jobs to idle workers; returns the workers found dead on the way.

        A worker that died while idle (killed, OOM) is seen here before its sentinel is: writing to its pipe
        fails (``BrokenPipeError``). Its job goes back to the front of the queue and the worker is replaced.
        """
        dead: list[WorkerHandle] = []
        for worker in self.idle():
            if not self.pending:
                break
            job = self.pending.popleft()
            try:
                worker.job = job
                worker.conn.send(job)
            except (BrokenPipeError, ConnectionError, EOFError, OSError):
                worker.job = None
                self.pending.appendleft(job)
                worker.process.join(1.0)
                dead.append(worker)
        return dead

    def _collect(self, worker: WorkerHandle, out: list[ExecutorEvent]) -> bool:
        """Every result waiting on a worker's pipe; False when the pipe is broken."""
        results: list[JobResult | PartSent]
        results, alive = drain(worker.conn)
        for result in results:
            if isinstance(result, PartSent):  # a part of its batch, before the batch's end
                if worker.job is not None:
                    out.append(PartDone(worker.job, result.result))
                continue
            if isinstance(result, PartResult) and result.number == 0 and not result.ok:  # it could not start
                out.append(WorkerBroken(result))
                continue
            job = worker.job
            worker.job = None
            if job is None:  # pragma: no cover - a worker answers only the job it was given
                continue
            if result.ok:
                worker.completed_bytes += result.size
            out.append(JobDone(job, result))
        return alive

    def _lost(self, worker: WorkerHandle) -> WorkerLost:
        job, worker.job = worker.job, None
        event = WorkerLost(job, worker.slot, worker.process.pid, worker.process.exitcode)
        self.replace(worker)
        return event
