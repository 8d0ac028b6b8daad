"""A cancel request that can be made from a signal handler and waited on with ``select``.

The CLI's SIGINT/SIGTERM handlers (or a stop request from the API server) call :meth:`CancelToken.cancel`;
the coordinator waits on the token's file descriptor together with its worker pipes, so it wakes at once.
Flags linked with :meth:`CancelToken.link` (the workers' shared cancel flag) are set by the same call, so
work in any thread or process that checks its flag per chunk stops within a chunk: the parts in flight, and
the hashing of stored parts on ``--resume``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Protocol

__all__ = ["CancelToken"]


class _Flag(Protocol):
    def set(self) -> None: ...


class CancelToken:
    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self.reason: str | None = None
        #: set by the engine while a multipart upload exists: what an immediate exit would leave behind
        self.left_behind: str | None = None
        #: set by the engine while it is in a step a cancel cannot stop (CompleteMultipartUpload): what the
        #: CLI says when a signal comes then
        self.uninterruptible: str | None = None
        self._flags: list[_Flag] = []

    def link(self, flag: _Flag) -> None:
        """Set ``flag`` whenever this token is cancelled (at once if it already is)."""
        self._flags.append(flag)
        if self.reason is not None:
            flag.set()

    def cancel(self, reason: str = "interrupted") -> None:
        """Safe to call from a signal handler or another thread; later calls keep the first reason."""
        if self.reason is None:
            self.reason = reason
        for flag in list(self._flags):
            flag.set()
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._w, b"x")

    @property
    def cancelled(self) -> bool:
        return self.reason is not None

    def fileno(self) -> int:
        return self._r

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)
