"""Group commit: many small writes that arrive together share one transaction.

A thousand CLIs each post a progress report every 2 s. Written one transaction each, a report pays for its
own ``BEGIN`` and ``COMMIT``, a pool checkout and, on SQLite through aiosqlite, a thread hop per statement —
more than the two statements cost. Here a writer takes whatever has queued up while it was busy and
writes it in one transaction: under light load a batch is one item and nothing waits for a timer; under
heavy load the batches grow and each write gets cheaper.

* :class:`ThreadedGroupCommit` (SQLite): one thread with its own synchronous connection (SQLite has one
  writer anyway); a batch costs one thread hop in each direction, whatever its size.
* :class:`AsyncGroupCommit` (PostgreSQL): a few writer tasks on the async engine, each writing one batch at a
  time, so round trips overlap.

Within a batch the items are written in order of their ``key`` (stable, so one key's items keep their order):
concurrent batches then lock rows in the same order and cannot deadlock. With one writer, one key's items are
written in the order they came; with several writer tasks that holds within a batch only (progress reports
carry a ``seq`` for that). If the batch's transaction fails,
every item is written again in a transaction of its own, so one bad item fails alone and the others succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["GroupCommit", "ThreadedGroupCommit", "AsyncGroupCommit", "MAX_BATCH"]

T = TypeVar("T")
R = TypeVar("R")

#: the most items one transaction takes (bounds how long a batch holds the write lock)
MAX_BATCH = 256
_STOP = object()


class GroupCommit(Generic[T, R]):
    """``await write(item)`` returns what the write function returned for it, or raises what it raised."""

    async def write(self, item: T) -> R:
        raise NotImplementedError

    async def close(self) -> None:
        """Write what is queued, then stop."""


def _in_key_order(items: list[T], key: Callable[[T], Any]) -> list[int]:
    return sorted(range(len(items)), key=lambda i: key(items[i]))


class ThreadedGroupCommit(GroupCommit[T, R]):
    """One thread, one synchronous connection, one transaction per batch."""

    def __init__(self, engine: Engine, write_one: Callable[[Connection, T], R], key: Callable[[T], Any],
                 *, max_batch: int = MAX_BATCH, name: str = "group-commit") -> None:
        self._engine = engine
        self._write_one = write_one
        self._key = key
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False

    async def write(self, item: T) -> R:
        if self._closed:
            raise RuntimeError("the writer is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._thread.start()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put((item, future))
        return await future

    async def close(self) -> None:
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        conn: Connection | None = None
        try:
            while True:
                batch, stop = self._next_batch()
                if batch:
                    items = [item for item, _ in batch]
                    try:
                        if conn is None:
                            conn = self._engine.connect()
                        outcomes = self._write_batch(conn, items)
                    except Exception as exc:  # noqa: BLE001 - no connection: every item fails with it
                        outcomes = [(False, exc)] * len(items)
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(_deliver, [future for _, future in batch], outcomes)
                if stop:
                    return
        finally:
            if conn is not None:
                conn.close()
            self._engine.dispose()  # in this thread: SQLite connections belong to the thread that made them

    def _next_batch(self) -> tuple[list[Any], bool]:
        """Block for the first entry, then take what else is queued (up to the batch size); and whether to stop."""
        batch: list[Any] = []
        entry = self._queue.get()
        while entry is not _STOP:
            batch.append(entry)
            if len(batch) >= self._max_batch:
                return batch, False
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True

    def _write_batch(self, conn: Connection, items: list[T]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = [(False, None)] * len(items)
        try:
            with conn.begin():
                for i in _in_key_order(items, self._key):
                    outcomes[i] = (True, self._write_one(conn, items[i]))
            return outcomes
        except Exception as exc:  # noqa: BLE001 - one at a time, so that only the bad item fails
            if len(items) == 1:
                return [(False, exc)]
        for i in range(len(items)):
            try:
                with conn.begin():
                    outcomes[i] = (True, self._write_one(conn, items[i]))
            except Exception as exc:  # noqa: BLE001 - handed to the item's caller
                outcomes[i] = (False, exc)
        return outcomes


def _deliver(futures: list[asyncio.Future[Any]], outcomes: list[tuple[bool, Any]]) -> None:
    for future, (ok, value) in zip(futures, outcomes, strict=True):
        if future.done():  # the caller went away
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class AsyncGroupCommit(GroupCommit[T, R]):
    """``writers`` tasks on an async engine, each writing one batch per transaction."""

    def __init__(self, engine: AsyncEngine, write_one: Callable[[AsyncConnection, T], Awaitable[R]],
                 key: Callable[[T], Any], *, writers: int = 4, max_batch: int = MAX_BATCH) -> None:
        self._engine = engine
        self._write_one = write_one
        self._key = key
        self._max_batch = max_batch
        self._writers = writers
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def write(self, item: T) -> R:
        if self._closed:
            raise RuntimeError("the writer is closed")
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._run(), name=f"group-commit-{n}") for n in range(self._writers)]
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def close(self) -> None:
        self._closed = True
        if self._tasks:
            await self._queue.join()
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                outcomes = await self._write_batch([item for item, _ in batch])
                _deliver([future for _, future in batch], outcomes)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write_batch(self, items: list[T]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = [(False, None)] * len(items)
        try:
            async with self._engine.begin() as conn:
                for i in _in_key_order(items, self._key):
                    outcomes[i] = (True, await self._write_one(conn, items[i]))
            return outcomes
        except Exception as exc:  # noqa: BLE001 - one at a time, so that only the bad item fails
            if len(items) == 1:
                return [(False, exc)]
        for i in range(len(items)):
            try:
                async with self._engine.begin() as conn:
                    outcomes[i] = (True, await self._write_one(conn, items[i]))
            except Exception as exc:  # noqa: BLE001 - handed to the item's caller
                outcomes[i] = (False, exc)
        return outcomes
