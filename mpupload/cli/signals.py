"""Ctrl+C and SIGTERM for the CLI: the first one cancels cleanly, the second exits at once.

Only the parent handles signals (worker processes ignore SIGINT/SIGTERM sent to the process group).
The first signal cancels the token: the coordinator stops handing out parts, cancels in-flight parts
within one chunk, aborts the multipart upload (unless ``--keep-on-interrupt``) and exits 130. A second
signal exits immediately and says what was left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType

from ..engine.cancel import CancelToken

__all__ = ["cancel_on_signals"]

_NAMES = {signal.SIGINT: "interrupted (Ctrl+C)", signal.SIGTERM: "terminated (SIGTERM)"}


@contextlib.contextmanager
def cancel_on_signals(token: CancelToken, *, quiet: bool = False) -> Iterator[CancelToken]:
    def handler(signum: int, frame: FrameType | None) -> None:
        if token.cancelled:
            left = token.left_behind
            msg = "mpupload: stopped at once by a second signal"
            msg += f"; {left}" if left else "; nothing was left on the store"
            with contextlib.suppress(Exception):
                os.write(sys.stderr.fileno(), (msg + "\n").encode())
            os._exit(130)
        token.cancel(_NAMES.get(signal.Signals(signum), signal.Signals(signum).name))
        if not quiet:
            with contextlib.suppress(Exception):
                os.write(sys.stderr.fileno(), b"\nmpupload: stopping... (press Ctrl+C again to exit at once)\n")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield token
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
