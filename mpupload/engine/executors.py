"""The executors of a run, started on demand and shared by its object uploads.

A multipart upload's parts go to worker processes (:class:`~.pool.LocalProcessExecutor`); an object sent with one
PutObject goes to a thread of this process (:class:`~.executor.ThreadExecutor`). :meth:`Executors.start` starts the
one the plan needs as early as possible (the workers build their clients while this process talks to the store);
the other is started only if it is ever needed (a resume turns a one-part plan into a multipart upload).
Every executor shares the run's cancel flag, which the CLI's Ctrl+C sets.

A cluster run (``cluster=``) has one executor for everything, :class:`~.dask_executor.DaskExecutor` (made, and
``distributed`` imported, on first use): parts, whole objects and batches all go to the cluster's workers, once
they have checked the source (:meth:`Executors.check_source`).

A local run with a bandwidth cap (``max_bandwidth``) makes the counters of both local executors at once, before any
worker starts, and one :class:`~.throttle.Throttle` that reads them all: it travels to every sender in the
:class:`~.worker.WorkerConfig`, so the cap holds for the whole run (see :mod:`.throttle`). Without a cap nothing
changes: each executor makes its own counter, and the config carries no throttle. A capped cluster run hands its
cap to the :class:`~.dask_executor.DaskExecutor`, which splits it among its tasks in flight (see :mod:`.throttle`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..source_check import SourceProbe
from ..storage.port import Store
from .counter import ByteCounter, CancelFlag
from .executor import Executor, ThreadExecutor
from .pool import LocalProcessExecutor
from .throttle import Throttle
from .worker import WorkerConfig

if TYPE_CHECKING:
    from .dask_executor import ClusterSpec, DaskExecutor

__all__ = ["Executors", "SHUTDOWN_JOIN_S"]

#: how long workers are given to finish at the end before they are killed
SHUTDOWN_JOIN_S = 2.0


class Executors:
    def __init__(self, store: Store, workers: int, *, flag: CancelFlag | None = None,
                 start_method: str | None = None, put_threads: int = 1, cluster: ClusterSpec | None = None,
                 cluster_store: Store | None = None, max_bandwidth: int | None = None) -> None:
        self._max_bandwidth = max_bandwidth
        #: the counters of the parts' executor and the PutObject thread, made now when the run is capped
        self._parts_counter: ByteCounter | None = None
        self._put_counter: ByteCounter | None = None
        throttle = None
        if max_bandwidth is not None and cluster is None:
            self._parts_counter, self._put_counter = ByteCounter(workers), ByteCounter(1)
            throttle = Throttle(max_bandwidth, (self._parts_counter, self._put_counter))
        # a Boto3Store crosses to the workers as its config
        self.config = WorkerConfig(store, put_threads=put_threads, throttle=throttle)
        #: where a cluster run sends its jobs, and the store settings its workers get (resolved here: endpoint,
        #: region; credentials only with --cluster-pass-credentials)
        self.cluster = cluster
        self.cluster_config = WorkerConfig(cluster_store or store, put_threads=put_threads)
        self._dask: DaskExecutor | None = None
        self.workers = workers
        self.flag = flag if flag is not None else CancelFlag()
        self.start_method = start_method
        self._parts: Executor | None = None
        self._put: ThreadExecutor | None = None
        self._closed = False

    def start(self, *, multipart: bool) -> Executor:
        return self.for_parts() if multipart else self.for_put()

    def for_parts(self) -> Executor:
        """The worker processes (started now if they were not); threads for a store that lives in this process
        only (an in-memory store: the functional tests)."""
        if self.cluster is not None:
            return self.for_cluster()
        if self._parts is None:
            self._check_open()
            if getattr(self.config.store, "crosses_processes", False):
                self._parts = LocalProcessExecutor(self.config, self.workers, cancel=self.flag,
                                                   start_method=self.start_method, counter=self._parts_counter)
            else:
                self._parts = ThreadExecutor(self.config, self.workers, cancel=self.flag, counter=self._parts_counter)
        return self._parts

    def for_put(self) -> Executor:
        """A thread of this process (started now if it was not); the cluster on a cluster run."""
        if self.cluster is not None:
            return self.for_cluster()
        if self._put is None:
            self._check_open()
            self._put = ThreadExecutor(self.config, 1, cancel=self.flag, counter=self._put_counter)
        return self._put

    @property
    def max_bandwidth(self) -> int | None:
        """The run's cap in bytes per second (``None``: none)."""
        return self._max_bandwidth

    def for_cluster(self) -> DaskExecutor:
        """The cluster's executor (connected now if it was not)."""
        if self._dask is None:
            self._check_open()
            from .dask_executor import DaskExecutor

            assert self.cluster is not None
            self._dask = DaskExecutor(self.cluster, self.cluster_config, flag=self.flag,
                                      max_bandwidth=self._max_bandwidth)
        return self._dask

    def check_source(self, probe: SourceProbe, expected: str | None = None) -> None:
        """Before any byte is sent: on a cluster run, every worker must see the source as this process does
        (:class:`~mpupload.errors.SourceMismatch` names the one that does not); nothing to do locally."""
        if self.cluster is not None:
            self.for_cluster().check(probe, expected)

    def started_fields(self) -> dict[str, Any]:
        """What the ``started`` event says about where the run sends from: ``hosts`` (and, on a cluster, its
        ``workers``)."""
        if self._dask is not None and self._dask.checked:
            return self._dask.started_fields()
        return {"hosts": 1}

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the run's executors were shut down")

    def shutdown(self, timeout_s: float = SHUTDOWN_JOIN_S) -> None:
        """Stop every executor (idempotent); their byte counts stay readable."""
        if self._closed:
            return
        self._closed = True
        for executor in (self._parts, self._put, self._dask):
            if executor is not None:
                executor.shutdown(timeout_s)
