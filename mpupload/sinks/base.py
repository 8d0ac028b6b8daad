"""The port every progress sink implements, and the lock that keeps terminal output in one piece.

:class:`Sink` is defined by the engine (:mod:`mpupload.engine.aggregator`), which feeds it; it is re-exported
here for the sinks and their callers. The dependency points from the sinks to the engine, never back.
"""

from __future__ import annotations

import threading

from ..engine.aggregator import Sink

__all__ = ["Sink", "TERMINAL_LOCK"]

#: held while anything writes to the terminal from a thread of its own (the bar's renderer, the API push's
#: warnings, log records), so that a warning never lands in the middle of a bar's redraw
TERMINAL_LOCK = threading.RLock()

