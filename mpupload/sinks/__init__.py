"""Where progress snapshots go: the terminal bar, plain lines, JSON lines, the API push.

Only the aggregator in the parent process calls sinks, always from the main thread, in order:
one ``started`` snapshot, any number of ``progress`` snapshots (one per tick), one final snapshot
(``completed``, ``stopped`` or ``failed``), then ``close()``. A sink never raises into the upload:
the aggregator logs and drops a sink that fails.
"""

from __future__ import annotations

from .base import Sink

__all__ = ["Sink"]
