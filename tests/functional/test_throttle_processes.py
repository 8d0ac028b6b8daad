"""The bandwidth cap across real processes: a throttle handed to a spawned worker process reads the same counters
and the same floor as its parent (shared memory, no lock), and it never crosses a pipe by accident."""

from __future__ import annotations

import multiprocessing
import pickle
from typing import Any

import pytest

from mpupload.engine.counter import ByteCounter
from mpupload.engine.throttle import Throttle

MiB = 1024 * 1024


def _child(throttle: Throttle, counter: ByteCounter, out: Any) -> None:
    counter.add(1, 3 * MiB)  # the child's slot
    out.send((throttle.sent(), throttle.floor))
    throttle._floor.value = throttle.floor + 100.0  # what a raise in this process looks like to the others
    out.close()


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_a_worker_process_shares_the_counters_and_the_floor(method: str) -> None:
    counter = ByteCounter(2)
    throttle = Throttle(8 * MiB, [counter])
    counter.add(0, 5 * MiB)
    floor = throttle.floor
    ctx = multiprocessing.get_context(method)
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(throttle, counter, writer))
    child.start()
    writer.close()
    assert reader.poll(60), "the child never answered"
    sent, child_floor = reader.recv()
    child.join(30)
    assert child.exitcode == 0
    assert (sent, child_floor) == (8 * MiB, floor)  # the parent's bytes and its own, the parent's floor
    assert throttle.sent() == 8 * MiB
    assert throttle.floor == floor + 100.0  # the child's raise is seen here


def test_a_throttle_never_crosses_a_pipe() -> None:
    with pytest.raises((RuntimeError, pickle.PicklingError)):  # shared memory pickles only while a process starts
        pickle.dumps(Throttle(8 * MiB, [ByteCounter(1)]))
