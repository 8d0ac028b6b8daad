"""Where progress snapshots go: the terminal bar, plain lines, JSON lines, the API push.

Only the aggregator in the parent process calls sinks, always from the main thread, in order:
one ``started`` snapshot, any number of ``progress`` snapshots (one per tick), one final snapshot
(``completed``, ``stopped`` or ``failed``), then ``close()``. A sink never raises into the upload:
the aggregator logs and drops a sink that fails.

The local sinks, chosen by ``--progress`` through :func:`make_sinks`:

=========  ==========================================================  ========
mode       sink                                                        stream
=========  ==========================================================  ========
``auto``   ``bar`` when stderr is a TTY, else ``plain``                stderr
``bar``    :class:`TerminalSink`: enlighten bar, status line, outcome  stderr
``plain``  :class:`PlainSink`: a line every few seconds (logs, CI)     stderr
``json``   :class:`JsonLinesSink`: one snapshot object per line        stdout
``none``   nothing                                                     -
=========  ==========================================================  ========

``--quiet`` silences the bar and plain lines but keeps JSON lines: they are data, not chatter.

Every sink implements :class:`~mpupload.engine.aggregator.Sink`, the port the engine defines. The bar's module
(and enlighten under it) is loaded only when a bar is made, or when :class:`TerminalSink` is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, TextIO

from .base import Sink
from .jsonl import JsonLinesSink
from .plain import PlainSink

if TYPE_CHECKING:
    from .terminal import TerminalSink

__all__ = ["PROGRESS_MODES", "JsonLinesSink", "PlainSink", "Sink", "TerminalSink", "make_sinks"]

PROGRESS_MODES = ("auto", "bar", "plain", "json", "none")


def make_sinks(mode: str, *, stdout: TextIO, stderr: TextIO, quiet: bool) -> list[Sink]:
    """The local sinks for a ``--progress`` mode (the API push is added by the caller).

    Call it from the main thread: the bar's manager is created here. Raises ``ValueError`` for an
    unknown mode.
    """
    if mode not in PROGRESS_MODES:
        raise ValueError(f"unknown progress mode {mode!r}: use one of {', '.join(PROGRESS_MODES)}")
    if mode == "json":
        return [JsonLinesSink(stdout)]
    if quiet or mode == "none":
        return []
    if mode == "auto":
        mode = "bar" if stderr.isatty() else "plain"
    if mode == "bar":
        from .terminal import TerminalSink

        return [TerminalSink(stderr)]
    return [PlainSink(stderr)]


def __getattr__(name: str) -> Any:  # PEP 562: TerminalSink loads enlighten, so only on demand
    if name == "TerminalSink":
        return importlib.import_module(".terminal", __name__).TerminalSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
