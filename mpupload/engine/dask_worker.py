"""What runs inside the Dask workers of a cluster run: the tasks of :mod:`.dask_executor`, and per worker process a
reporter and a cancel poller.

This module is imported by the workers (they need ``mpupload[cluster]`` installed, the same version as the
coordinator) and imports ``distributed`` only inside its functions.

* :func:`check_task` answers :class:`Hello`: this worker's view of the source (:mod:`mpupload.source_check`),
  its host, pid, threads, mpupload version, and whether its credential chain finds credentials;
* :func:`run_task` runs one job (a part, a whole object, a batch of small files) with
  :func:`~.worker.run_job`, as a local worker process does, with this process's store client (one per store
  settings, built on first use); the source file is opened per task (a worker outlives runs: a descriptor kept
  open would read a replaced file's old bytes);
* every task execution counts its bytes in a :class:`TaskCounter` of its own; the process's **reporter** thread
  sends the absolute count of every running execution every :data:`REPORT_S` seconds with the worker's
  ``log_event`` on the topic :data:`REPORT_TOPIC` (``{"run", "worker", "counts": [[task key, execution nonce,
  bytes], ...]}``); the nonce tells apart two executions of the same task (Dask runs a task again when its
  worker died);
* the **cancel poller** thread keeps a local bool per (run, generation) (:class:`PolledFlag`) up to date from the
  run's ``distributed.Event`` every :data:`CANCEL_POLL_S` seconds; the body reader checks that bool per chunk, so
  a part in flight stops within a chunk on every host. A generation's event is only ever set, never cleared: the
  coordinator starts a new generation (a new event) when its run goes on after a failure.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..source_check import SourceProbe
from ..storage.port import Store
from .worker import Job, JobResult, OpenFiles, WorkerConfig, run_job

__all__ = ["RunSpec", "Hello", "TaskCounter", "PolledFlag", "check_task", "run_task", "REPORT_TOPIC", "REPORT_S",
           "CANCEL_POLL_S", "cancel_event_name"]

log = logging.getLogger("mpupload")

#: the one topic every worker reports on (the scheduler keeps a bounded log per topic: one topic, not one per run)
REPORT_TOPIC = "mpupload-progress"
#: how often a worker process sends the counts of its running tasks
REPORT_S = 0.25
#: how often a worker process asks the scheduler whether its runs were cancelled
CANCEL_POLL_S = 0.2
#: a run that has had no task in a worker process for this long is forgotten there
RUN_IDLE_S = 60.0


def cancel_event_name(run_id: str, generation: int) -> str:
    return f"mpupload-cancel-{run_id}-{generation}"


@dataclass(frozen=True)
class RunSpec:
    """What every task of a run carries besides its job: plain data, and nothing secret unless the user asked
    (``--cluster-pass-credentials`` puts credentials in the store's settings)."""

    run_id: str
    config: WorkerConfig


@dataclass(frozen=True)
class Hello:
    """One worker's answer to :func:`check_task`."""

    address: str
    host: str
    pid: int
    nthreads: int
    version: str
    #: this worker's digest of the source (None: no source to check, or ``error``)
    digest: str | None = None
    #: why the source could not be read here
    error: str | None = None
    #: why this worker could not build its store client (a profile missing here, a bad CA bundle path ...)
    client_error: str | None = None
    #: whether the store client finds credentials on this worker (its own chain, or passed ones)
    credentials: bool = True


class TaskCounter:
    """The byte count of one task execution: the :class:`~.counter.ByteCounter` surface the body reader uses."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, slot: int, n: int) -> None:
        with self._lock:
            self.value += n

    def get(self, slot: int) -> int:
        return self.value

    def set(self, slot: int, value: int) -> None:
        with self._lock:
            self.value = value

    def total(self) -> int:
        return self.value


class PolledFlag:
    """A cancel flag read per chunk without a round trip: a bool the process's poller refreshes from the run's
    ``distributed.Event``. Once set it stays set (a generation's event is never cleared)."""

    def __init__(self, event: Any) -> None:
        self._event = event
        self._set = False
        self.refreshed = 0.0

    def refresh(self) -> None:
        if self._set:
            return
        try:
            self._set = bool(self._event.is_set())
        except Exception:  # noqa: BLE001 - the scheduler is unreachable: keep going; the coordinator decides
            pass
        self.refreshed = time.monotonic()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True

    def clear(self) -> None:  # the coordinator starts a new generation instead
        pass


class _Run:
    """One run as this worker process sees it: its running executions and its cancel flags."""

    def __init__(self, run_id: str, address: str) -> None:
        self.run_id = run_id
        self.address = address
        #: task key -> (execution nonce, counter) of the executions running here
        self.running: dict[str, tuple[str, TaskCounter]] = {}
        #: (key, nonce, final count) of executions that ended since the last report
        self.ended: list[tuple[str, str, int]] = []
        self.flags: dict[int, PolledFlag] = {}
        self.last_active = time.monotonic()


class _Process:
    """The state of one worker process, shared by its task threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connect_lock = threading.Lock()
        self.runs: dict[str, _Run] = {}
        self._stores: dict[Any, Store] = {}
        self._put_pools: dict[int, ThreadPoolExecutor] = {}
        self._worker: Any = None
        self._threads_started = False

    # -- resources -------------------------------------------------------------------------------------------------
    def store(self, config: WorkerConfig) -> Store:
        """This process's store for these settings (a Boto3Store builds its client once, then every task shares it)."""
        settings = getattr(config.store, "config", None)
        # passed credentials are not part of a StoreConfig's equality: they key the cache too
        key = (settings, settings.credentials) if settings is not None else config.store
        with self.lock:
            store = self._stores.get(key)
            if store is None:
                store = self._stores[key] = config.store
        with self.connect_lock:  # a boto3 session makes one client at a time (it is not thread-safe)
            store.connect()
        return store

    def put_pool(self, threads: int) -> ThreadPoolExecutor | None:
        if threads <= 1:
            return None
        with self.lock:
            pool = self._put_pools.get(threads)
            if pool is None:
                pool = self._put_pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="mpupload-put")
            return pool

    # -- runs ------------------------------------------------------------------------------------------------------
    def begin(self, worker: Any, run_id: str, generation: int, key: str) -> tuple[_Run, PolledFlag, str, TaskCounter]:
        import distributed

        dd: Any = distributed
        with self.lock:
            self._worker = worker
            run = self.runs.get(run_id)
            if run is None:
                run = self.runs[run_id] = _Run(run_id, worker.address)
            flag = run.flags.get(generation)
        fresh = False
        if flag is None:  # the worker's client is made once per process, outside the lock
            made = PolledFlag(dd.Event(cancel_event_name(run_id, generation), client=dd.get_client()))
            with self.lock:
                flag = run.flags.setdefault(generation, made)
            fresh = flag is made
        with self.lock:
            nonce = uuid.uuid4().hex[:12]
            counter = TaskCounter()
            run.running[key] = (nonce, counter)
            run.last_active = time.monotonic()
            start = not self._threads_started
            self._threads_started = True
        if fresh or time.monotonic() - flag.refreshed > 2 * CANCEL_POLL_S:
            flag.refresh()  # a task that starts after a cancel does not send a chunk
        if start:
            for target, name in ((self._report_loop, "mpupload-reporter"), (self._cancel_loop, "mpupload-cancel")):
                threading.Thread(target=target, name=name, daemon=True).start()
        return run, flag, nonce, counter

    def end(self, run: _Run, key: str, nonce: str, final: int) -> None:
        with self.lock:
            if run.running.get(key, (None,))[0] == nonce:
                del run.running[key]
            run.ended.append((key, nonce, final))
            run.last_active = time.monotonic()

    def report(self) -> None:
        """Send the counts of every running execution (and the last count of those that ended) of every run."""
        with self.lock:
            worker = self._worker
            messages = []
            now = time.monotonic()
            for run_id, run in list(self.runs.items()):
                counts = [[key, nonce, counter.value] for key, (nonce, counter) in run.running.items()]
                counts += [[key, nonce, final] for key, nonce, final in run.ended]
                run.ended = []
                if counts:
                    messages.append({"run": run_id, "worker": run.address, "counts": counts})
                elif now - run.last_active > RUN_IDLE_S:
                    del self.runs[run_id]
        if worker is None:
            return
        for message in messages:
            try:
                worker.log_event(REPORT_TOPIC, message)
            except Exception:  # noqa: BLE001 - the worker is closing
                log.debug("could not report progress", exc_info=True)

    def _report_loop(self) -> None:
        while True:
            time.sleep(REPORT_S)
            self.report()

    def _cancel_loop(self) -> None:
        while True:
            time.sleep(CANCEL_POLL_S)
            with self.lock:
                flags = [flag for run in self.runs.values() if run.running for flag in run.flags.values()
                         if not flag.is_set()]
            for flag in flags:
                flag.refresh()


_PROCESS: _Process | None = None
_PROCESS_LOCK = threading.Lock()


def _process() -> _Process:
    global _PROCESS
    with _PROCESS_LOCK:
        if _PROCESS is None or getattr(_PROCESS, "_pid", os.getpid()) != os.getpid():
            _PROCESS = _Process()
            _PROCESS._pid = os.getpid()  # type: ignore[attr-defined]
        return _PROCESS


def run_task(spec: RunSpec, job: Job, key: str, generation: int) -> JobResult:
    """One job on this worker (the coordinator's task ``key``; ``generation`` names the run's cancel event)."""
    from distributed import get_worker

    state = _process()
    run, flag, nonce, counter = state.begin(get_worker(), spec.run_id, generation, key)
    final = 0
    # the task's own open file, closed at its end: a worker outlives runs, and a descriptor kept open would read the
    # old file after it was replaced at the same path
    files = OpenFiles(keep=1)
    try:
        store = state.store(spec.config)
        result = run_job(store, files, spec.config, job, counter, 0, flag,  # type: ignore[arg-type]
                         threads=state.put_pool(spec.config.put_threads))
        final = result.size if result.ok else 0
        return result
    finally:
        files.close()
        state.end(run, key, nonce, final)


def check_task(spec: RunSpec, probe: SourceProbe | None) -> Hello:
    """This worker's view of the source and of its own set-up (never raises: the answer says what is wrong)."""
    from distributed import get_worker

    from .. import __version__

    worker = get_worker()
    hello = dict(address=worker.address, host=socket.gethostname(), pid=os.getpid(), nthreads=worker.state.nthreads,
                 version=__version__)
    error = digest = None
    if probe is not None:
        try:
            digest = probe.digest()
        except OSError as exc:
            error = f"cannot read {probe.describe()}: {exc.strerror or exc}"
    credentials = True
    client_error = None
    config = getattr(spec.config.store, "config", None)
    if config is not None:
        try:
            with _process().connect_lock:
                credentials = config.resolved_credentials() is not None
            _process().store(spec.config)
        except Exception as exc:  # noqa: BLE001 - a profile missing here, a bad CA bundle path ...
            client_error = f"{type(exc).__name__}: {exc}"
    return Hello(**hello, digest=digest, error=error, client_error=client_error,  # type: ignore[arg-type]
                 credentials=credentials)
