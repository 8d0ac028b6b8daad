"""The port every progress sink implements."""

from __future__ import annotations

from typing import Protocol

from ..events import Snapshot


class Sink(Protocol):
    def emit(self, snapshot: Snapshot) -> None:
        """Take one snapshot. Called from the parent's main thread; must return quickly."""

    def close(self) -> None:
        """Flush and release the output (after the final snapshot)."""
