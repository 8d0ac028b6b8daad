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
        # what each upload under way has at stake, by its owner (an object upload): several can run at once
        self._at_risk: dict[object, str] = {}
        self._busy: dict[object, str] = {}
        self._flags: list[_Flag] = []

    # -- what the CLI says when a signal comes ------------------------------------------------------------------
    def at_risk(self, owner: object, text: str | None) -> None:
        """What an immediate exit would leave behind because of ``owner`` (``None``: nothing any more)."""
        if text is None:
            self._at_risk.pop(owner, None)
        else:
            self._at_risk[owner] = text

    def busy(self, owner: object, text: str | None) -> None:
        """``owner`` is in a step a cancel cannot stop (CompleteMultipartUpload): what the CLI says then."""
        if text is None:
            self._busy.pop(owner, None)
        else:
            self._busy[owner] = text

    @property
    def left_behind(self) -> str | None:
        """What an immediate exit would leave behind, for every upload under way; ``None``: nothing."""
        return "; ".join(self._at_risk.values()) or None

    @property
    def uninterruptible(self) -> str | None:
        """Set while an upload is in a step a cancel cannot stop: what the CLI says when a signal comes then."""
        return "; ".join(self._busy.values()) or None

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
