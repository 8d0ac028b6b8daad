"""The port every progress sink implements, and the lock that keeps terminal output in one piece."""

from __future__ import annotations

import threading
from typing import Protocol

from ..wire import Snapshot

__all__ = ["Sink", "TERMINAL_LOCK"]

#: held while anything writes to the terminal from a thread of its own (the bar's renderer, the API push's
#: warnings, log records), so that a warning never lands in the middle of a bar's redraw
TERMINAL_LOCK = threading.RLock()


class Sink(Protocol):
    def emit(self, snapshot: Snapshot) -> None:
        """Take one snapshot. Called from the parent's main thread; must return quickly."""

    def close(self) -> None:
        """Flush and release the output (after the final snapshot)."""
