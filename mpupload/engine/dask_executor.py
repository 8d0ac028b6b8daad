"""The cluster executor: parts and small-file batches run on the workers of a Dask cluster (``--cluster``).

The coordinator (this process) alone creates, probes, completes and aborts the uploads, keeps the journal, pushes
to the API server and draws the bar; the workers only run jobs (:mod:`.dask_worker`): part and file descriptors,
never bytes. Every worker reads the source at the same path (a shared filesystem). ``distributed`` is imported
when a :class:`DaskExecutor` is made, never by ``import mpupload``.

**Before any byte is sent** (:meth:`DaskExecutor.check`), one task pinned to each worker computes that worker's
digest of the source (:mod:`mpupload.source_check`: size and sampled hashes of a file, the listing of a tree) and
says its mpupload version and whether it finds credentials. A different digest is
:class:`~mpupload.errors.SourceMismatch` (exit 2) naming the worker; so is a source the worker cannot read. Jobs
then go only to the workers that passed (``workers=`` restrictions). A worker that joins the cluster during the
run (a job queue starts them as it can) is checked the same way by the watch thread as soon as the scheduler says
it joined: if it passes it takes jobs from then on (and adds its threads to the run's concurrency, unless
``--workers`` fixed it); if not, the run goes on without it, with a warning.

**Progress** is byte-true across hosts. Each task execution counts its own bytes; every worker process sends the
absolute counts of its running executions every 0.4 s (:data:`~.dask_worker.REPORT_S`) in UDP datagrams straight
to this process (:mod:`.dask_direct`: authenticated with the run's key, read by the main thread when it wants the
total), and through the scheduler (``Worker.log_event`` on one topic, which this process subscribes to with
``Client.subscribe_topic``) when this process does not listen or has not acked it lately. The relayed channel rides
the worker's existing batched stream (ordered per worker, no extra connection), but each message costs this
process's Dask event loop about a quarter of a millisecond, and the reports were almost half of that loop's work
during a transfer. A report is absolute and numbered per worker process, so a lost one is corrected by the next and
a late one (of either channel) is dropped. The coordinator keeps, per task, the last count of its current execution
(a report of an execution that was superseded, or of a task that finished, is ignored) and sums:

* a task's count is replaced by its result's size when the result comes back (the result is the truth);
* a retry inside the worker rewinds the body reader, so the reported count falls;
* a worker that leaves the cluster (killed, host gone: the scheduler's ``remove-worker`` event) has its
  executions' counts dropped at once; Dask runs those tasks again elsewhere (bounded by the scheduler's
  ``allowed-failures``), and when it gives up (``KilledWorker``) the job comes back as
  :class:`~.executor.WorkerLost`, which the engine submits again (bounded by its own count of deaths);
* each count is capped at its job's length, so the total never exceeds the size.

**Cancel**: the run's cancel flag (set by Ctrl+C) is mirrored to a ``distributed.Event`` that the workers poll
every 0.2 s into a local bool the body reader checks per chunk, so parts in flight stop within a chunk on every
host; then the engine aborts the upload, repeating until ListParts is empty. A run that goes on after a failure
(a directory run) lowers its flag: the executor then starts a new *generation* (a new event) instead of clearing
the old one, so no task can see a stale "cancelled". An event once set stays set (Dask cannot say when every task
that must see it has stopped): a cancelled run leaves that small object on the scheduler.

**A bandwidth cap** (``--max-bandwidth``) is split among the run's tasks in flight: each gets ``cap / in_flight``
(in flight: submitted and not seen to end; at most the run's concurrency). The figure goes with every task it
submits, and, when it changes, the watch thread publishes it with a sequence number in the run's
``distributed.Variable``, which the workers poll every 0.5 s (:mod:`.dask_worker`: each worker process meters the
run's senders there at that share times its running tasks). While every slot is busy the figure does not change;
when fewer tasks are left than slots, the remaining tasks share the whole cap. The sum over the workers is at most
the cap except while a lower figure is on its way to the workers (up to 0.5 s, after more tasks were submitted at
once than were in flight).

**The scheduler lost** mid-run: :class:`~mpupload.errors.ClusterUnavailable` (exit 1); the multipart upload is
kept, with its journal, for ``--resume``.

**Credentials**: the tasks carry the store's settings (endpoint, region, profile name, CA bundle path, timeouts),
never credentials: each worker uses its own credential chain, unless ``--cluster-pass-credentials`` put this
process's credentials in the settings (then they travel, pickled, with every task: see docs/cluster.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import select
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import errors as E
from ..source_check import SourceProbe, TreeListing
from .counter import CancelFlag
from .dask_direct import ReportListener, SequenceGate, listen_for
from .dask_worker import REPORT_TOPIC, Hello, RunSpec, cancel_event_name, check_task, run_packed, share_variable_name
from .executor import ExecutorEvent, JobDone, WorkerLost
from .worker import BatchJob, BatchResult, Job, PartJob, PartResult, WorkerConfig

__all__ = ["DaskExecutor", "ClusterSpec", "ByteLedger", "CONNECT_TIMEOUT_S", "CHECK_TIMEOUT_S"]

log = logging.getLogger("mpupload")

#: how long connecting to the scheduler may take
CONNECT_TIMEOUT_S = 10.0
#: how long the workers may take to check the source (a large tree is walked on every worker)
CHECK_TIMEOUT_S = 600.0
#: how often the set of workers is asked for when the scheduler says nothing: it says at once when a worker joins or
#: leaves (its ``add-worker``/``remove-worker`` events, which this process subscribes to); asking every second
#: instead cost the coordinator about 2 ms of CPU per second
MEMBERSHIP_S = 10.0
#: the scheduler's topic for cluster events
CLUSTER_TOPIC = "all"
#: how long a finished task's result may take to come back from its worker
RESULT_TIMEOUT_S = 60.0


class FutureCancelled(Exception):
    """A task Dask cancelled (the run's end, a cancel, every worker gone): no result to fetch."""


@dataclass(frozen=True)
class ClusterSpec:
    """Where and how a run uses a cluster."""

    #: the scheduler, ``tcp://HOST:8786``
    address: str
    #: tasks in flight at once (None: one per thread of the workers that checked the source)
    concurrency: int | None = None
    connect_timeout_s: float = CONNECT_TIMEOUT_S


@dataclass
class _Task:
    job: Job
    future: Any


@dataclass
class _Count:
    length: int
    #: the reported count of the task's current execution, and that execution's nonce and worker
    count: int = 0
    nonce: str | None = None
    worker: str | None = None


class ByteLedger:
    """The byte-true total of a run's tasks from the workers' absolute reports (pure; thread-safe).

    Per task: the last count of its current execution, at most its length. A report of an execution that was
    superseded (Dask ran the task again elsewhere), or of a task that has ended, changes nothing; a task's end
    replaces its count by what its result says was sent; a worker that left drops the counts of its executions.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, _Count] = {}
        self._void: set[tuple[str, str]] = set()
        self._finished = 0

    def begin(self, key: str, length: int) -> None:
        with self._lock:
            self._open[key] = _Count(length)

    def report(self, key: str, nonce: str, worker: str | None, count: int) -> None:
        with self._lock:
            c = self._open.get(key)
            if c is None or (key, nonce) in self._void:
                return
            if c.nonce is not None and c.nonce != nonce:
                self._void.add((key, c.nonce))  # a new execution: the earlier one is void
            c.nonce, c.worker, c.count = nonce, worker, min(c.length, max(0, int(count)))

    def end(self, key: str, sent: int) -> None:
        """The task ended: ``sent`` bytes of it are on the store (0: failed, cancelled, or lost)."""
        with self._lock:
            c = self._open.pop(key, None)
            if c is None:
                return
            if c.nonce is not None:
                self._void.add((key, c.nonce))
            self._finished += min(c.length, max(0, sent))

    def worker_left(self, address: str) -> int:
        """Drop the counts of the executions on a worker that left; how many there were."""
        dropped = 0
        with self._lock:
            for key, c in self._open.items():
                if c.worker == address:
                    if c.nonce is not None:
                        self._void.add((key, c.nonce))
                    c.nonce = c.worker = None
                    c.count = 0
                    dropped += 1
        return dropped

    def total(self) -> int:
        with self._lock:
            return self._finished + sum(c.count for c in self._open.values())


def _files(n: str) -> str:
    return f"{n} file" if n == "1" else f"{n} files"


def _difference(probe: SourceProbe, theirs: str | None, ours: str | None, problems: Sequence[str] = ()) -> str:
    """How a worker's digest differs from this host's, in words (``problems``: what its walk could not read)."""
    their_n, _, _ = (theirs or "").partition(":")
    our_n, _, _ = (ours or "").partition(":")
    if isinstance(probe, TreeListing):
        unread = ""
        if problems:
            unread = f"; it could not read {', '.join(problems)} (the workers must run as a user that can read " \
                     "the whole tree)"
        if their_n != our_n:
            return f"it lists {_files(their_n)}, this host {_files(our_n)}{unread}"
        return f"the same number of files, but other names, sizes or modification times{unread}"
    if their_n != our_n:
        return f"{their_n} bytes there, {our_n} here"
    return "the same size, other bytes where it was sampled"


def _refusal(hello: Hello, probe: SourceProbe | None, expected: str | None, *,
             consequence: str = "nothing was sent") -> E.MpuploadError | None:
    """Why this worker must not take the run's jobs (the error the run stops with), or None."""
    from .. import __version__

    where = f"the worker {hello.address} (host {hello.host}, pid {hello.pid})"
    if hello.version != __version__:
        return E.UsageError(f"{where} runs mpupload {hello.version}, this is {__version__}: install the same version "
                            "on the coordinator and the workers")
    if hello.error is not None:
        return E.SourceMismatch(f"{where} {hello.error}: every worker must read the source at the same path (a shared "
                                f"filesystem); {consequence}")
    if probe is not None and hello.digest != expected:
        difference = _difference(probe, hello.digest, expected, hello.problems)
        return E.SourceMismatch(f"{where} sees a different source at {probe.describe()} ({difference}): every worker "
                                f"must read the same data at the same path (a shared filesystem); {consequence}")
    if hello.client_error is not None:
        return E.UsageError(f"{where} cannot build its S3 client ({hello.client_error}): fix the workers' AWS "
                            "configuration (the profile, the CA bundle) and run the command again")
    if not hello.credentials:
        return E.AuthError(f"{where} finds no AWS credentials: give the workers their own (environment, profile, "
                           "instance role), or pass this host's with --cluster-pass-credentials")
    if hello.unreachable is not None:
        return E.StoreUnreachable(f"{where} {hello.unreachable}: the workers have their URLs signed there, so log "
                                  f"in with an address of the API server every worker can reach (mpupload login "
                                  f"URL, or MPUPLOAD_API_URL); {consequence}")
    return None


#: Dask settings of the coordinator's process, applied before distributed is first imported unless the user set
#: them (a config file, a ``DASK_*`` variable). Measured on an idle client: 0.94 ms of CPU per second with Dask's
#: defaults, 0.06 with these; the rest of the coordinator costs about as much
COORDINATOR_DASK_CONFIG = {
    # this process sends small messages only (task descriptors, a few KiB): Dask's check of each message's size,
    # to hand big ones to a thread, walked every message and was an eighth of the coordinator's event loop
    "distributed.comm.offload": False,
    # the client's heartbeat only stamps the scheduler's "last seen" for it (a client is dropped when its
    # connection closes, not for a missed heartbeat), and the scheduler-info poll refreshes a cache this process
    # never reads (it asks for the workers itself): every 5 s and 2 s they were half each of the idle cost
    "distributed.client.heartbeat": "30s",
    "distributed.client.scheduler-info-interval": "30s",
}


def _distributed() -> Any:
    try:
        import dask

        unset = {k: v for k, v in COORDINATOR_DASK_CONFIG.items() if dask.config.get(k, None) is None}
        if unset:
            dask.config.set(unset)
        import distributed
    except ImportError:
        raise E.UsageError("--cluster needs Dask distributed: pip install 'mpupload[cluster]'") from None
    return distributed


class DaskExecutor:
    """The :class:`~.executor.Executor` port over a Dask cluster (see the module docstring)."""

    #: a task costs the coordinator 3-6 ms of CPU (its messages through the scheduler), whatever it carries: an
    #: object's parts come several to a task while there are many left (:func:`~.object_upload.batch_size`)
    batches_parts = True

    def __init__(self, spec: ClusterSpec, config: WorkerConfig, *, flag: CancelFlag | None = None,
                 max_bandwidth: int | None = None) -> None:
        distributed = _distributed()
        if not getattr(config.store, "crosses_processes", False):
            raise E.UsageError("--cluster needs a store that workers can rebuild (an S3 endpoint), not an "
                               "in-process one")
        if not log.isEnabledFor(logging.DEBUG):
            # Dask's own warnings (reconnecting, a worker gone) would print around the one line the CLI prints; its
            # logging set-up gives some of its loggers levels of their own
            for name in ["distributed", *logging.root.manager.loggerDict]:
                if name == "distributed" or name.startswith("distributed."):
                    logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        self.spec = spec
        self.config = config
        self.flag = flag if flag is not None else CancelFlag()
        self.run_id = uuid.uuid4().hex[:16]
        self.max_bandwidth = max_bandwidth
        #: under a cap: the share per task in flight, its sequence number, and the last one the workers were sent
        self._share: tuple[int, float] | None = None
        self._share_sent: tuple[int, float] | None = None
        self.address = spec.address
        try:
            with warnings.catch_warnings(record=True) as caught:  # Dask's version table: one line of ours instead
                warnings.simplefilter("always")
                self._client = distributed.Client(spec.address, timeout=spec.connect_timeout_s, set_as_default=False)
            for warning in caught:
                first = str(warning.message).strip().splitlines()[0] if str(warning.message).strip() else ""
                log.warning("Dask: %s (--debug shows more)", first)
                log.debug("Dask: %s", warning.message)
        except (OSError, TimeoutError) as exc:
            raise E.ClusterUnavailable(f"cannot connect to the Dask scheduler at {spec.address} ({exc}): check the "
                                       "address and that the scheduler is running") from None
        except ValueError as exc:
            raise E.UsageError(f"--cluster {spec.address}: {exc}") from None
        self.ledger = ByteLedger()
        #: the workers' reports: straight to this process in datagrams (:mod:`.dask_direct`), or through the
        #: scheduler; numbered per worker process, so a late one of either channel is dropped
        self._gate = SequenceGate()
        self.reports_relayed = 0
        self._listener: ReportListener | None = listen_for(self.run_id, self._local_host(), self._gate,
                                                            self._take_counts)
        self.run = RunSpec(self.run_id, config, max_bandwidth=max_bandwidth,
                           report_to=self._listener.address if self._listener is not None else None)
        self.workers = 0
        self.hosts = 0
        self.hellos: dict[str, Hello] = {}
        self._allowed: list[str] = []
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}
        #: results that came on the report topic (pickled), until their task's future says it finished
        self._results: dict[str, bytes] = {}
        self._pending: deque[tuple[Job, bool]] = deque()
        self._done: queue.SimpleQueue[tuple[str, Any, BaseException | None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._seq = 0
        self._generation = 0
        #: generations whose cancel was asked for here, and those whose event is set on the scheduler
        self._pushed: set[int] = set()
        self._sent: set[int] = set()
        self._send_lock = threading.Lock()
        self._members: set[str] | None = None
        #: what the workers were checked against, every address ever seen, and the checks of workers that joined
        #: during the run (run by the watch thread)
        self._probe: SourceProbe | None = None
        self._expected: str | None = None
        self._known: set[str] = set()
        self._joining: dict[str, Any] = {}
        self._late = 0
        self._lost = False
        self._closed = False
        self._stop = threading.Event()
        self._push_wanted = threading.Event()
        self._membership_changed = threading.Event()
        self._client.subscribe_topic(REPORT_TOPIC, self._on_report)
        self._client.subscribe_topic(CLUSTER_TOPIC, self._on_cluster_event)
        self._watch = threading.Thread(target=self._watch_loop, name="mpupload-cluster-watch", daemon=True)
        self._watch.start()

    # -- the check before any byte is sent --------------------------------------------------------------------------
    def check(self, probe: SourceProbe | None, expected: str | None = None) -> None:
        """Every worker's view of the source must be this process's: else :class:`SourceMismatch` (exit 2)."""
        if probe is not None and expected is None:
            try:
                expected = probe.digest()
            except OSError as exc:
                raise E.UsageError(f"cannot read {probe.describe()}: {exc.strerror or exc}") from None
        addresses = sorted(self._scheduler_workers())
        if not addresses:
            raise E.ClusterUnavailable(f"the Dask cluster at {self.address} has no workers: start some with "
                                       f"dask worker {self.address}")
        futures = [self._client.submit(check_task, self.run, probe, key=f"mpupload-check-{self.run_id}-{i}",
                                       workers=[a], allow_other_workers=False, pure=False)
                   for i, a in enumerate(addresses)]
        deadline = time.monotonic() + CHECK_TIMEOUT_S
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            if self.flag.is_set():
                self._client.cancel(futures)
                raise E.Cancelled("interrupted while the workers checked the source; nothing was sent")
            self._check_alive()
            time.sleep(0.02)
        hellos: list[Hello] = []
        for future in futures:
            if future.status != "finished":
                log.warning("a worker of the cluster did not check the source (%s): this run does not use it",
                            future.status if future.done() else "no answer in time")
                future.cancel()
                continue
            hellos.append(future.result())
        for hello in hellos:
            refusal = _refusal(hello, probe, expected)
            if refusal is not None:
                raise refusal
        if not hellos:
            raise E.ClusterUnavailable(f"no worker of the Dask cluster at {self.address} answered: check the "
                                       "workers' logs")
        with self._lock:
            self.hellos = {h.address: h for h in hellos}
            self._allowed = [h.address for h in hellos]
            self._members = set(self._allowed)
            self._probe, self._expected = probe, expected
            self._known = set(addresses)
        self.hosts = len({h.host for h in hellos})
        threads = sum(h.nthreads for h in hellos)
        self.workers = max(1, self.spec.concurrency or threads)

    @property
    def checked(self) -> bool:
        return bool(self._allowed)

    def started_fields(self) -> dict[str, int]:
        return {"hosts": self.hosts, "workers": len(self.hellos)}

    # -- the Executor port -----------------------------------------------------------------------------------------
    def submit(self, job: Job, *, first: bool = False) -> None:
        if first:
            self._pending.appendleft((job, True))
        else:
            self._pending.append((job, False))

    def bytes_sent(self) -> int:
        if self._listener is not None:
            self._listener.drain()
        return self.ledger.total()

    def cancel(self) -> None:
        self.flag.set()
        self._sync_flag()

    def events(self, timeout: float, wake: Sequence[Any] = ()) -> list[ExecutorEvent]:
        if self._listener is not None:
            self._listener.drain()  # the workers' acks keep coming while nothing asks for the total
        self._sync_flag()
        self._check_alive()
        self._dispatch()
        out: list[ExecutorEvent] = []
        if self._done.empty():
            with contextlib.suppress(InterruptedError):  # select(): a poll object per call cost more
                select.select([self._wake_r, *wake], [], [], max(0.0, timeout))
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self._wake_r, 4096)
        while True:
            try:
                key, result, error = self._done.get_nowait()
            except queue.Empty:
                break
            event = self._finish(key, result, error)
            if event is not None:
                out.append(event)
        self._check_alive()
        self._dispatch()
        return out

    def shutdown(self, timeout_s: float = 2.0) -> None:
        """Cancel what has not run; give running tasks (stopping within a chunk after a cancel) ``timeout_s`` to
        end; lower the run's events on the scheduler; close the client."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        with self._lock:
            futures = [t.future for t in self._tasks.values()]
            joining = list(self._joining.values())
        with contextlib.suppress(Exception):
            self._client.cancel(joining)
        if not self._lost:
            with contextlib.suppress(Exception):
                self._client.cancel([f for f in futures if f.status == "pending"], force=False)
            deadline = time.monotonic() + timeout_s
            while any(f.status == "pending" for f in futures) and time.monotonic() < deadline:
                time.sleep(0.05)
        self._stop.set()
        self._push_wanted.set()
        self._watch.join(timeout_s)
        if not self._lost:
            with contextlib.suppress(Exception):
                self._client.unsubscribe_topic(REPORT_TOPIC)
            with contextlib.suppress(Exception):
                self._client.unsubscribe_topic(CLUSTER_TOPIC)
            # a cancel not yet sent is sent now. The events stay set: Dask cannot tell when the tasks that must see
            # them have stopped (cancelling a future does not stop its task), so a cancelled run leaves its event
            # (a few hundred bytes) on the scheduler
            self._send_cancels()
            if self._share is not None:  # unlike an event, a variable can go: no task of the run needs it now
                with contextlib.suppress(Exception):
                    _distributed().Variable(share_variable_name(self.run_id), client=self._client).delete()
        if self._listener is not None:
            self._listener.close()
            log.debug("progress reports from the workers: %d direct, %d through the scheduler (%d datagrams "
                      "rejected)", self._listener.received, self.reports_relayed, self._listener.rejected)
        with contextlib.suppress(Exception):
            self._client.close(timeout=timeout_s)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- inside ----------------------------------------------------------------------------------------------------
    def _scheduler_workers(self) -> dict[str, int]:
        try:
            return dict(self._client.nthreads())
        except Exception as exc:  # noqa: BLE001
            raise E.ClusterUnavailable(f"lost the Dask scheduler at {self.address} ({exc})") from None

    def _dispatch(self) -> None:
        if not self._allowed and self._pending:
            raise RuntimeError("DaskExecutor.check() must run before the first job")
        if self.max_bandwidth is not None and not self._lost:
            # the tasks in flight once this round is submitted: their share goes with each of them
            self._set_share(min(self.workers, len(self._tasks) + len(self._pending)))
        while self._pending and len(self._tasks) < self.workers and not self._lost:
            job, first = self._pending.popleft()
            self._seq += 1
            kind = "batch" if isinstance(job, BatchJob) else "part"
            key = f"mpupload-{kind}-{self.run_id}-{self._seq}"
            packed = pickle.dumps((self.run, job, key, self._generation, self._share), pickle.HIGHEST_PROTOCOL)
            future = self._client.submit(run_packed, packed, key=key, pure=False,
                                         workers=list(self._allowed), allow_other_workers=False,
                                         priority=1 if first else 0, retries=0)
            self.ledger.begin(key, job.length)
            with self._lock:
                self._tasks[key] = _Task(job, future)
            future.add_done_callback(lambda f, key=key: self._collect(key, f))

    def _set_share(self, in_flight: int) -> None:
        """The cap's share per task for ``in_flight`` tasks; a new figure is published by the watch thread."""
        assert self.max_bandwidth is not None
        if in_flight <= 0:
            return  # nothing in flight: the last figure stands until there is
        per_task = self.max_bandwidth / in_flight
        if self._share is not None and self._share[1] == per_task:
            return
        self._share = ((self._share[0] + 1) if self._share is not None else 1, per_task)
        self._push_wanted.set()

    def _send_share(self) -> None:
        """Publish the newest share if the workers have not been sent it (in the watch thread: never blocks the
        main one)."""
        share = self._share
        if share is None or share == self._share_sent:
            return
        try:
            _distributed().Variable(share_variable_name(self.run_id), client=self._client).set(share)
            self._share_sent = share
        except Exception:  # noqa: BLE001 - the scheduler is gone: the main thread says so
            log.debug("could not publish the run's bandwidth share", exc_info=True)

    def _collect(self, key: str, future: Any) -> None:
        """A task ended (in Dask's callback thread). Its result came on the report topic before Dask said it
        finished (the worker sends it first, on the same stream); else, or if the task failed, it is fetched here,
        so the main thread never waits on a worker."""
        result: Any = None
        error: BaseException | None = None
        with self._lock:
            sent = self._results.pop(key, None)
        if sent is not None and future.status == "finished":
            try:
                result = pickle.loads(sent)
            except Exception:  # noqa: BLE001 - fetch it instead
                sent = None
        if future.status == "cancelled" or (sent is None and (self._closed or self._lost)):
            # nothing to fetch: asking Dask would start a wait on its event loop that, with the client closing,
            # ends as "Task exception was never retrieved" on stderr after the run's last line
            error = FutureCancelled(f"{key} was cancelled")
        elif sent is None or future.status != "finished":
            try:
                result = future.result(timeout=RESULT_TIMEOUT_S)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                error = exc
        self._done.put((key, result, error))
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _finish(self, key: str, result: Any, error: BaseException | None) -> ExecutorEvent | None:
        with self._lock:
            task = self._tasks.pop(key, None)
            self._results.pop(key, None)
        if task is None:
            return None
        self.ledger.end(key, int(result.size) if error is None and result is not None and result.ok else 0)
        if error is None:
            return JobDone(task.job, result)
        distributed = _distributed()
        if isinstance(error, distributed.KilledWorker):
            log.debug("Dask gave up on a task: %s", error)
            return WorkerLost(task.job, -1, None, None, reason="the cluster gave up on a task whose workers kept dying "
                                                              f"({error})")
        if isinstance(error, TimeoutError):  # its result could not be fetched (its worker hangs): run it again
            with contextlib.suppress(Exception):
                task.future.cancel()
            return WorkerLost(task.job, -1, None, None, reason="a task's result did not come back from its worker in "
                                                              f"{RESULT_TIMEOUT_S:.0f} s")
        if self._lost or self._client.status != "running":
            self._lost = True
            return None
        if isinstance(error, FutureCancelled) or type(error).__name__ in ("CancelledError", "FutureCancelledError"):
            if self.flag.is_set() or self._closed:
                return self._cancelled(task.job)
            return WorkerLost(task.job, -1, None, None, reason="the cluster cancelled a task")  # run it again
        return JobDone(task.job, self._failed(task.job, f"the cluster could not run the job: {error!r}"))

    @staticmethod
    def _cancelled(job: Job) -> JobDone:
        if isinstance(job, BatchJob):
            return JobDone(job, BatchResult(job.batch_id, tuple(
                PartResult(j.number, False, cancelled=True, error_type="Cancelled", error="cancelled",
                           object_id=j.target.object_id) for j in job.jobs)))
        assert isinstance(job, PartJob)
        return JobDone(job, PartResult(job.number, False, cancelled=True, error_type="Cancelled", error="cancelled",
                                       object_id=job.target.object_id))

    @staticmethod
    def _failed(job: Job, message: str) -> BatchResult | PartResult:
        if isinstance(job, BatchJob):
            return BatchResult(job.batch_id, tuple(
                PartResult(j.number, False, error_type="UploadFailed", error=message, object_id=j.target.object_id)
                for j in job.jobs))
        assert isinstance(job, PartJob)
        return PartResult(job.number, False, error_type="UploadFailed", error=message, object_id=job.target.object_id)

    def _check_alive(self) -> None:
        if self._lost or self._client.status != "running":
            self._lost = True
            raise E.ClusterUnavailable(f"lost the connection to the Dask scheduler at {self.address} during the run")
        if self._members is not None and not self._members and (self._tasks or self._pending):
            raise E.ClusterUnavailable(f"every worker of the Dask cluster at {self.address} that checked the source "
                                       "has left: start workers again")

    @property
    def reports_direct(self) -> int:
        return self._listener.received if self._listener is not None else 0

    def _local_host(self) -> str | None:
        """The address this process reaches the scheduler from: the workers most likely reach it there too."""
        try:
            return str(_distributed().comm.get_address_host(self._client.scheduler_comm.comm.local_address))
        except Exception:  # noqa: BLE001 - an unusual comm: the reports go through the scheduler
            return None

    def _take_counts(self, worker: str | None, counts: Any) -> None:
        for key, nonce, count in counts:
            self.ledger.report(key, nonce, worker, count)

    def _on_report(self, event: Any) -> None:
        """A worker's counts or results, relayed by the scheduler (in the client's event loop: quick, no I/O)."""
        _, message = event
        if not isinstance(message, dict) or message.get("run") != self.run_id:
            return
        if "counts" in message and self._gate.newer(message.get("p"), message.get("s")):
            self.reports_relayed += 1
            self._take_counts(message.get("worker"), message["counts"])
        results = message.get("results")
        if results:
            with self._lock:
                for key, _nonce, blob in results:
                    if key in self._tasks:  # any execution's result is the job's: it ran to its end
                        self._results[key] = blob

    def _on_cluster_event(self, event: Any) -> None:
        """A worker joined or left (in the client's event loop): the watch thread asks for the workers now."""
        _, message = event
        if isinstance(message, dict) and message.get("action") in ("add-worker", "remove-worker"):
            self._membership_changed.set()
            self._push_wanted.set()

    def _worker_left(self, address: str) -> None:
        """Its executions' bytes are taken back now; Dask runs its tasks again on the other workers (a task whose
        workers keep dying comes back as KilledWorker: :class:`WorkerLost`, which the engine counts and bounds)."""
        hello = self.hellos.get(address)
        log.warning("the cluster's worker %s (pid %s) left: its tasks run again on the others", address,
                    hello.pid if hello else "?")
        self.ledger.worker_left(address)

    def _sync_flag(self) -> None:
        """Mirror the local cancel flag: set -> the current generation's event (by the watch thread, never
        blocking); lowered after a set -> a new generation for the tasks submitted from now on."""
        if self.flag.is_set():
            if self._generation not in self._pushed:
                self._pushed.add(self._generation)
                self._push_wanted.set()
        elif self._generation in self._pushed:
            self._generation += 1

    def _send_cancels(self) -> None:
        """Set the events of the generations cancelled here that are not set on the scheduler yet."""
        distributed = _distributed()
        with self._send_lock:
            for generation in sorted(self._pushed - self._sent):
                try:
                    distributed.Event(cancel_event_name(self.run_id, generation), client=self._client).set()
                    self._sent.add(generation)
                except Exception:  # noqa: BLE001 - the scheduler is gone: the main thread says so
                    log.debug("could not set the cluster's cancel event", exc_info=True)

    def _watch_loop(self) -> None:
        """Sets the run's cancel events, and asks for the scheduler's workers when one joined or left (and every
        :data:`MEMBERSHIP_S`, or every second while a joining worker's check runs)."""
        next_poll = time.monotonic() + MEMBERSHIP_S
        while not self._stop.is_set():
            self._push_wanted.wait(max(0.0, next_poll - time.monotonic()))
            self._push_wanted.clear()
            self._send_cancels()
            self._send_share()
            if self._stop.is_set() or (time.monotonic() < next_poll and not self._membership_changed.is_set()):
                continue
            self._membership_changed.clear()
            next_poll = time.monotonic() + (1.0 if self._joining else MEMBERSHIP_S)
            members = self._members
            if members is None or self._client.status != "running":
                continue
            try:
                now = set(self._client.nthreads())
            except Exception:  # noqa: BLE001
                continue
            for address in sorted(members - now):
                self._worker_left(address)
            self._members = members & now
            with contextlib.suppress(BlockingIOError, OSError):
                if members - now:
                    os.write(self._wake_w, b"x")
            if not self._members and self._tasks:
                log.warning("every worker that checked the source has left the cluster")
            self._admit(now)

    def _admit(self, now: set[str]) -> None:
        """Workers that joined the cluster during the run (a job queue starts them as it can) are checked as the
        first ones were; those that pass take jobs from then on, the others are left out with a warning."""
        if self._closed or self.flag.is_set():
            return
        for address in sorted(now - self._known):
            self._known.add(address)
            self._late += 1
            try:
                self._joining[address] = self._client.submit(
                    check_task, self.run, self._probe, key=f"mpupload-check-{self.run_id}-late-{self._late}",
                    workers=[address], allow_other_workers=False, pure=False)
            except Exception:  # noqa: BLE001 - the client is closing
                return
        for address, future in list(self._joining.items()):
            if not future.done():
                continue
            del self._joining[address]
            if address not in now:
                continue  # it left again
            if future.status != "finished":
                log.warning("the worker %s joined the cluster but did not check the source (%s): this run does not "
                            "use it", address, future.status)
                continue
            hello: Hello = future.result()
            refusal = _refusal(hello, self._probe, self._expected, consequence="this run does not use it")
            if refusal is not None:
                log.warning("%s", refusal)
                continue
            with self._lock:
                self.hellos[address] = hello
                self._allowed = [*self._allowed, address]
                self._members = (self._members or set()) | {address}
                if self.spec.concurrency is None:
                    self.workers += hello.nthreads
                self.hosts = len({h.host for h in self.hellos.values()})
            log.warning("the worker %s (host %s, pid %s) joined the cluster and sees the same source: it takes jobs "
                        "from now on", address, hello.host, hello.pid)
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"x")
