"""The worker pool with real worker processes: a worker that dies while idle is found when a part is handed to
it (its pipe is broken), and the part is not lost."""

from __future__ import annotations

import os
import signal
from collections import deque
from pathlib import Path

from mpupload.engine.counter import ByteCounter, CancelFlag
from mpupload.engine.pool import WorkerPool
from mpupload.engine.worker import PartJob, WorkerSpec
from mpupload.storage import StoreConfig
from tests.support.s3server import wait_until


def test_a_worker_that_died_while_idle_is_handed_back_with_its_part(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1024)
    # the endpoint is never called: no part is uploaded in this test
    spec = WorkerSpec(StoreConfig(endpoint_url="http://127.0.0.1:9"), str(src), "b", "k", "U", None, False)
    pool = WorkerPool(spec, 2, ByteCounter(2), CancelFlag(), start_method="fork")
    try:
        victim = pool.workers[0]
        os.kill(victim.process.pid, signal.SIGKILL)
        wait_until(lambda: not victim.process.is_alive(), 10, "the worker to die")
        pending = deque([PartJob(1, 0, 512), PartJob(2, 512, 512)])
        dead = pool.dispatch(pending)
        assert dead == [victim]
        assert victim.job is None
        # the dead worker's part went back to the front of the line, and the live worker took it
        assert pool.workers[1].job == PartJob(1, 0, 512)
        assert list(pending) == [PartJob(2, 512, 512)]
        replacement = pool.replace(victim)
        assert replacement.process.is_alive() and pool.workers[0] is replacement
        assert pool.dispatch(pending) == [] and replacement.job == PartJob(2, 512, 512) and not pending
    finally:
        pool.cancel.set()
        pool.shutdown(2.0)
