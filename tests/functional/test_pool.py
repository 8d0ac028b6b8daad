"""The worker pool with real worker processes: a worker that dies while idle is found when a part is handed to
it (its pipe is broken), and the part is not lost."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from mpupload.engine.executor import WorkerLost
from mpupload.engine.pool import LocalProcessExecutor
from mpupload.engine.worker import PartJob, PartTarget, WorkerConfig
from mpupload.plan import Part
from mpupload.storage import StoreConfig
from mpupload.storage.boto3_store import Boto3Store
from tests.support.s3server import wait_until


def test_a_worker_that_died_while_idle_is_handed_back_with_its_part(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1024)
    # the endpoint is never called before the assertions: nothing listens there
    target = PartTarget(str(src), "b", "k", "U", None, False)
    executor = LocalProcessExecutor(WorkerConfig(Boto3Store(StoreConfig(endpoint_url="http://127.0.0.1:9"))), 2,
                                    start_method="fork")
    try:
        victim = executor.handles[0]
        os.kill(victim.process.pid, signal.SIGKILL)
        wait_until(lambda: not victim.process.is_alive(), 10, "the worker to die")
        first, second = PartJob(target, Part(1, 0, 512)), PartJob(target, Part(2, 512, 512))
        executor.submit(first)
        executor.submit(second)
        events = executor.events(0)
        # the dead worker held no job: its part went back to the front of the line, and the live worker took it
        assert [e for e in events if isinstance(e, WorkerLost)] == [WorkerLost(None, 0, victim.process.pid, -9)]
        assert executor.handles[1].job == first
        assert list(executor.pending) == [second]
        replacement = executor.handles[0]
        assert replacement is not victim and replacement.process.is_alive()
        executor.events(0)
        assert replacement.job == second and not executor.pending
    finally:
        executor.cancel()
        executor.shutdown(2.0)
