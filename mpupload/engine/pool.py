"""A pool of worker processes, one pipe each, managed by the coordinator's main thread.

No shared queue: a worker killed while holding a queue's lock would freeze its siblings. Each worker
has its own duplex pipe; the coordinator hands a part to an idle worker and waits on every pipe and every
process sentinel at once, so a death is seen as soon as it happens.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .counter import ByteCounter, CancelFlag
from .worker import PartJob, WorkerSpec, worker_main

__all__ = ["WorkerPool", "WorkerHandle", "START_METHODS"]

START_METHODS = ("fork", "forkserver", "spawn")


@dataclass
class WorkerHandle:
    slot: int
    process: Any
    conn: Connection
    job: PartJob | None = None
    #: bytes of the parts this slot finished, so the slot can be reset when its process dies
    completed_bytes: int = 0
    started_at: float = field(default_factory=time.monotonic)


class WorkerPool:
    def __init__(
        self,
        spec: WorkerSpec,
        size: int,
        counter: ByteCounter,
        cancel: CancelFlag,
        *,
        start_method: str | None = None,
    ) -> None:
        method = start_method or os.environ.get("MPUPLOAD_START_METHOD") or None
        if method is not None and method not in START_METHODS:
            raise ValueError(f"unknown start method {method!r}: use one of {', '.join(START_METHODS)}")
        self._ctx: Any = multiprocessing.get_context(method)
        self.spec = spec
        self.counter = counter
        self.cancel = cancel
        self.workers: list[WorkerHandle] = []
        for slot in range(size):
            self.workers.append(self._start(slot))

    def _start(self, slot: int) -> WorkerHandle:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main,
            args=(slot, self.spec, child_conn, self.counter, self.cancel, os.getpid()),
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
        self.workers[handle.slot] = new
        return new

    def idle(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.job is None]

    def send(self, handle: WorkerHandle, job: PartJob) -> None:
        handle.job = job
        handle.conn.send(job)

    def dispatch(self, pending: deque[PartJob]) -> list[WorkerHandle]:
        """Hand pending parts to idle workers; returns the workers found dead on the way.

        A worker that died while idle (killed, OOM) is seen here before its sentinel is: writing to its pipe
        fails (``BrokenPipeError``). Its part goes back to the front of ``pending`` and the caller replaces it.
        """
        dead: list[WorkerHandle] = []
        for worker in self.idle():
            if not pending:
                break
            job = pending.popleft()
            try:
                self.send(worker, job)
            except (BrokenPipeError, ConnectionError, EOFError, OSError):
                worker.job = None
                pending.appendleft(job)
                worker.process.join(1.0)
                dead.append(worker)
        return dead

    def waitables(self) -> list[Any]:
        objs: list[Any] = []
        for w in self.workers:
            objs.append(w.conn)
            objs.append(w.process.sentinel)
        return objs

    def shutdown(self, timeout_s: float = 2.0) -> None:
        """One sentinel per worker, a bounded join, then SIGKILL for whatever is still running."""
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.conn.send(None)
        deadline = time.monotonic() + timeout_s
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
        for w in self.workers:
            if w.process.is_alive():
                w.process.kill()
                w.process.join(2.0)
            with contextlib.suppress(Exception):
                w.conn.close()
