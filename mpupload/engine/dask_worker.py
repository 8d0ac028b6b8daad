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
  sends the absolute count of every running execution every :data:`REPORT_S` seconds, numbered per process: in
  datagrams to the coordinator's report address (:mod:`.dask_direct`), and with the worker's ``log_event`` on the
  topic :data:`REPORT_TOPIC` (``{"run", "worker", "counts": [[task key, execution nonce, bytes], ...], "p", "s"}``)
  while the coordinator has not acked this process's datagrams lately (or gave no address); the nonce tells apart
  two executions of the same task (Dask runs a task again when its worker died); a task's result goes on that
  topic too, at its end;
* the **cancel poller** thread keeps a local bool per (run, generation) (:class:`PolledFlag`) up to date from the
  run's ``distributed.Event`` every :data:`CANCEL_POLL_S` seconds; the body reader checks that bool per chunk, so
  a part in flight stops within a chunk on every host. A generation's event is only ever set, never cleared: the
  coordinator starts a new generation (a new event) when its run goes on after a failure;
* under a bandwidth cap (``--max-bandwidth``) every task carries the coordinator's *share per task in flight*
  (``(seq, bytes/s)``), which the coordinator also publishes in the run's ``distributed.Variable``
  (:func:`share_variable_name`) when it changes; the same poller reads it every :data:`SHARE_POLL_S` seconds. The
  process's senders of the run share one :class:`~.throttle.RateBucket` at that share times the run's tasks
  running here, set again as tasks start and end; of two shares the one with the higher ``seq`` is the newer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..source_check import SourceProbe, TreeListing
from ..storage.port import Store
from .dask_direct import ACK_MAGIC, ACK_STALE_S, ReportAddress, report_datagrams, unseal
from .throttle import RateBucket, chunk_for
from .worker import Job, JobResult, OpenFiles, WorkerConfig, run_job

__all__ = ["RunSpec", "Hello", "TaskCounter", "PolledFlag", "check_task", "run_task", "run_packed", "REPORT_TOPIC",
           "REPORT_S",
           "CANCEL_POLL_S", "SHARE_POLL_S", "cancel_event_name", "share_variable_name", "RunShare"]

log = logging.getLogger("mpupload")

#: the one topic every worker reports on (the scheduler keeps a bounded log per topic: one topic, not one per run)
REPORT_TOPIC = "mpupload-progress"
#: how often a worker process sends the counts of its running tasks
REPORT_S = 0.4
#: how often a worker process asks the scheduler whether its runs were cancelled
CANCEL_POLL_S = 0.2
#: how often a worker process asks for its capped runs' current share
SHARE_POLL_S = 0.5
#: a run that has had no task in a worker process for this long is forgotten there
RUN_IDLE_S = 60.0


def cancel_event_name(run_id: str, generation: int) -> str:
    return f"mpupload-cancel-{run_id}-{generation}"


def share_variable_name(run_id: str) -> str:
    return f"mpupload-share-{run_id}"


@dataclass(frozen=True)
class RunSpec:
    """What every task of a run carries besides its job: plain data, and nothing secret unless the user asked
    (``--cluster-pass-credentials`` puts credentials in the store's settings)."""

    run_id: str
    config: WorkerConfig
    #: the run's cap in bytes per second (``--max-bandwidth``), split by the coordinator; None: no cap
    max_bandwidth: int | None = None
    #: where the coordinator listens for reports in datagrams (:mod:`.dask_direct`); None: through the scheduler
    report_to: ReportAddress | None = None


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
    #: a tree: the first entries this worker's walk could not read (``"rel: error"``)
    problems: tuple[str, ...] = ()
    #: why this worker could not build its store client (a profile missing here, a bad CA bundle path ...)
    client_error: str | None = None
    #: whether the store client finds credentials on this worker (its own chain, or passed ones)
    credentials: bool = True
    #: why this worker cannot reach the service its store signs through (a brokered store: the API server)
    unreachable: str | None = None


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


class RunShare:
    """A capped run's share in one worker process (pure; the caller holds the process's lock): the newest share per
    task in flight, and the bucket its senders meter through at that share times its tasks running here."""

    def __init__(self, seq: int, per_task: float) -> None:
        self.seq = seq
        self.per_task = per_task
        self.bucket = RateBucket(per_task, chunk=chunk_for(max(1, int(per_task))))

    def offer(self, seq: int, per_task: float) -> bool:
        """A share from a task's payload or from the run's variable; kept if newer. Whether it was."""
        if seq <= self.seq:
            return False
        self.seq, self.per_task = seq, per_task
        return True

    def apply(self, running: int) -> None:
        """Set the bucket for ``running`` tasks of the run in this process (none: left as it is, unused)."""
        if running > 0:
            self.bucket.set_rate(self.per_task * running)


class _Run:
    """One run as this worker process sees it: its running executions and its cancel flags."""

    def __init__(self, run_id: str, address: str, report_to: ReportAddress | None = None) -> None:
        self.run_id = run_id
        self.address = address
        #: the coordinator's report address, and when it last acked a datagram of this run (None: never)
        self.report_to = report_to
        self.acked_at: float | None = None
        #: task key -> (execution nonce, counter) of the executions running here
        self.running: dict[str, tuple[str, TaskCounter]] = {}
        #: (key, nonce, final count) of executions that ended since the last report
        self.ended: list[tuple[str, str, int]] = []
        self.flags: dict[int, PolledFlag] = {}
        self.last_active = time.monotonic()
        #: under a cap: the run's share here, and the variable the coordinator publishes it in
        self.share: RunShare | None = None
        self.share_variable: Any = None
        self.share_polled = 0.0


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
        #: this process's reports are numbered (datagrams and relayed messages alike): the coordinator drops a late one
        self.process_id = uuid.uuid4().hex[:12]
        self.seq = 0
        #: one UDP socket per address family, made on first use (the acks come back to it)
        self._socks: dict[int, socket.socket] = {}

    # -- resources -------------------------------------------------------------------------------------------------
    def store(self, config: WorkerConfig) -> Store:
        """This process's store for these settings (a Boto3Store builds its client once, then every task shares it)."""
        settings = getattr(config.store, "config", None)
        # passed credentials are not part of a StoreConfig's equality: they key the cache too (a brokered store's
        # settings hold its token)
        key = (settings, getattr(settings, "credentials", None)) if settings is not None else config.store
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
    def begin(self, worker: Any, run_id: str, generation: int, key: str,
              share: tuple[int, float] | None = None,
              report_to: ReportAddress | None = None) -> tuple[_Run, PolledFlag, str, TaskCounter]:
        import distributed

        dd: Any = distributed
        with self.lock:
            self._worker = worker
            run = self.runs.get(run_id)
            if run is None:
                run = self.runs[run_id] = _Run(run_id, worker.address, report_to)
            flag = run.flags.get(generation)
            need_variable = share is not None and run.share_variable is None
        if need_variable:
            variable = dd.Variable(share_variable_name(run_id), client=dd.get_client())
            with self.lock:
                if run.share_variable is None:
                    run.share_variable = variable
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
            if share is not None:
                if run.share is None:
                    run.share = RunShare(*share)
                else:
                    run.share.offer(*share)
                run.share.apply(len(run.running))
            start = not self._threads_started
            self._threads_started = True
        if fresh or time.monotonic() - flag.refreshed > 2 * CANCEL_POLL_S:
            flag.refresh()  # a task that starts after a cancel does not send a chunk
        if start:
            for target, name in ((self._report_loop, "mpupload-reporter"), (self._cancel_loop, "mpupload-cancel")):
                threading.Thread(target=target, name=name, daemon=True).start()
        return run, flag, nonce, counter

    def send_result(self, run: _Run, key: str, nonce: str, result: JobResult) -> None:
        """The job's result at once, on the report topic: the coordinator takes it from there instead of fetching
        the task's result from this worker (a round trip through the scheduler per task). The task still returns
        it, for a coordinator that missed this message."""
        worker = self._worker
        if worker is None:
            return
        try:
            worker.log_event(REPORT_TOPIC, {"run": run.run_id, "worker": run.address,
                                            "results": [[key, nonce, pickle.dumps(result)]]})
        except Exception:  # noqa: BLE001 - the worker is closing: the coordinator fetches the result
            log.debug("could not send a result", exc_info=True)

    def end(self, run: _Run, key: str, nonce: str, final: int) -> None:
        with self.lock:
            if run.running.get(key, (None,))[0] == nonce:
                del run.running[key]
                if run.share is not None:
                    run.share.apply(len(run.running))
            run.ended.append((key, nonce, final))
            run.last_active = time.monotonic()

    def report(self) -> None:
        """Send the counts of every running execution (and the last count of those that ended) of every run: in
        datagrams straight to the coordinator where it listens, and through the scheduler where it does not, or has
        not acked this process's datagrams for :data:`~.dask_direct.ACK_STALE_S`."""
        self._read_acks()
        with self.lock:
            worker = self._worker
            direct: list[tuple[ReportAddress, list[bytes]]] = []
            relayed = []
            now = time.monotonic()
            for run_id, run in list(self.runs.items()):
                counts = [[key, nonce, counter.value] for key, (nonce, counter) in run.running.items()]
                counts += [[key, nonce, final] for key, nonce, final in run.ended]
                run.ended = []
                if not counts:
                    if now - run.last_active > RUN_IDLE_S:
                        del self.runs[run_id]
                    continue
                if run.report_to is not None:
                    datagrams = report_datagrams(run.report_to.key, run_id, run.address, self.process_id, self.seq,
                                                 counts)
                    self.seq += len(datagrams)
                    direct.append((run.report_to, datagrams))
                if run.report_to is None or run.acked_at is None or now - run.acked_at > ACK_STALE_S:
                    relayed.append({"run": run_id, "worker": run.address, "counts": counts, "p": self.process_id,
                                    "s": self.seq})
                    self.seq += 1
        for address, datagrams in direct:
            self._send(address, datagrams)
        if worker is None:
            return
        for message in relayed:
            try:
                worker.log_event(REPORT_TOPIC, message)
            except Exception:  # noqa: BLE001 - the worker is closing
                log.debug("could not report progress", exc_info=True)

    def _send(self, address: ReportAddress, datagrams: list[bytes]) -> None:
        try:
            family, _, _, _, target = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)[0]
            sock = self._socks.get(family)
            if sock is None:
                sock = self._socks[family] = socket.socket(family, socket.SOCK_DGRAM)
                sock.setblocking(False)
            for datagram in datagrams:
                sock.sendto(datagram, target)
        except OSError:  # unreachable, a full buffer: the reports go through the scheduler until acks come back
            log.debug("could not send a progress datagram", exc_info=True)

    def _read_acks(self) -> None:
        """Take the coordinators' acks waiting on the sockets (it never blocks)."""
        for sock in list(self._socks.values()):
            while True:
                try:
                    datagram = sock.recv(65535)
                except OSError:  # nothing waiting (BlockingIOError), or an error queued on the socket
                    break
                self._take_ack(datagram)

    def _take_ack(self, datagram: bytes) -> None:
        now = time.monotonic()
        with self.lock:
            for run in self.runs.values():
                if run.report_to is None:
                    continue
                body = unseal(ACK_MAGIC, run.report_to.key, datagram)
                if body is not None and body.get("r") == run.run_id and body.get("p") == self.process_id:
                    run.acked_at = now
                    return

    def _report_loop(self) -> None:
        while True:
            time.sleep(REPORT_S)
            self.report()

    def _cancel_loop(self) -> None:
        while True:
            time.sleep(CANCEL_POLL_S)
            now = time.monotonic()
            with self.lock:
                flags = [flag for run in self.runs.values() if run.running for flag in run.flags.values()
                         if not flag.is_set()]
                capped = [run for run in self.runs.values() if run.running and run.share_variable is not None
                          and now - run.share_polled >= SHARE_POLL_S]
                for run in capped:
                    run.share_polled = now
            for flag in flags:
                flag.refresh()
            for run in capped:
                self.poll_share(run)

    def poll_share(self, run: _Run) -> None:
        """Read the run's published share (the coordinator sets it whenever its tasks in flight change)."""
        try:
            published = run.share_variable.get(timeout=SHARE_POLL_S)
            seq, per_task = int(published[0]), float(published[1])
        except Exception:  # noqa: BLE001 - not published yet, or the scheduler is unreachable: keep the last one
            return
        with self.lock:
            if run.share is not None and run.share.offer(seq, per_task):
                run.share.apply(len(run.running))


_PROCESS: _Process | None = None
_PROCESS_LOCK = threading.Lock()


def _process() -> _Process:
    global _PROCESS
    with _PROCESS_LOCK:
        if _PROCESS is None or getattr(_PROCESS, "_pid", os.getpid()) != os.getpid():
            _PROCESS = _Process()
            _PROCESS._pid = os.getpid()  # type: ignore[attr-defined]
        return _PROCESS


def run_task(spec: RunSpec, job: Job, key: str, generation: int, share: tuple[int, float] | None = None) -> JobResult:
    """One job on this worker (the coordinator's task ``key``; ``generation`` names the run's cancel event;
    ``share``: under a cap, the coordinator's ``(seq, bytes/s per task in flight)`` when it submitted the task)."""
    from distributed import get_worker

    state = _process()
    run, flag, nonce, counter = state.begin(get_worker(), spec.run_id, generation, key,
                                            share if spec.max_bandwidth is not None else None,
                                            spec.report_to)
    config = spec.config
    if run.share is not None:
        config = dataclasses.replace(config, throttle=run.share.bucket)
    final = 0
    # the task's own open file, closed at its end: a worker outlives runs, and a descriptor kept open would read the
    # old file after it was replaced at the same path
    files = OpenFiles(keep=1)
    try:
        store = state.store(spec.config)
        result = run_job(store, files, config, job, counter, 0, flag,  # type: ignore[arg-type]
                         threads=state.put_pool(spec.config.put_threads))
        final = result.size if result.ok else 0
        state.send_result(run, key, nonce, result)
        return result
    finally:
        files.close()
        state.end(run, key, nonce, final)


def run_packed(packed: bytes) -> JobResult:
    """:func:`run_task` with its arguments pickled by the coordinator into one ``bytes``: Dask then neither walks
    the arguments (to size them) nor serializes their parts one by one, which cost the coordinator about a
    millisecond per task."""
    spec, job, key, generation, share = pickle.loads(packed)
    return run_task(spec, job, key, generation, share)


def check_task(spec: RunSpec, probe: SourceProbe | None) -> Hello:
    """This worker's view of the source and of its own set-up (never raises: the answer says what is wrong)."""
    from distributed import get_worker

    from .. import __version__

    worker = get_worker()
    hello = dict(address=worker.address, host=socket.gethostname(), pid=os.getpid(), nthreads=worker.state.nthreads,
                 version=__version__)
    error = digest = None
    problems: tuple[str, ...] = ()
    if probe is not None:
        try:
            if isinstance(probe, TreeListing):
                listing = probe.examine()
                digest, problems = listing.hexdigest(), tuple(listing.problems)
            else:
                digest = probe.digest()
        except OSError as exc:
            error = f"cannot read {probe.describe()}: {exc.strerror or exc}"
    credentials = True
    client_error = unreachable = None
    config = getattr(spec.config.store, "config", None)
    if config is not None:
        try:
            resolve = getattr(config, "resolved_credentials", None)  # (none for a brokered store: URLs are signed)
            if resolve is not None:
                with _process().connect_lock:
                    credentials = resolve() is not None
            store = _process().store(spec.config)
        except Exception as exc:  # noqa: BLE001 - a profile missing here, a bad CA bundle path ...
            client_error = f"{type(exc).__name__}: {exc}"
        else:
            reach = getattr(store, "check_reach", None)
            if reach is not None:
                try:
                    reach()
                except Exception as exc:  # noqa: BLE001 - said in the hello, the coordinator stops the run
                    unreachable = str(exc)
    return Hello(**hello, digest=digest, error=error, client_error=client_error,  # type: ignore[arg-type]
                 credentials=credentials, problems=problems, unreachable=unreachable)
