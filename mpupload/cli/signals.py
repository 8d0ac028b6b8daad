"""Ctrl+C and SIGTERM for the CLI: the first one cancels cleanly, the second exits at once.

Only the parent handles signals (worker processes ignore SIGINT/SIGTERM sent to the process group).
The first signal cancels the token: the coordinator stops handing out parts, cancels in-flight parts
within one chunk, aborts the multipart upload (unless it is kept: ``--keep-on-interrupt``, or a ``--resume``
run without ``--abort-on-interrupt``) and exits 130. A second signal exits immediately and says what was left
behind. Signals are counted here, not read off the token: a token already cancelled by a Stop from the
dashboard does not turn the user's first Ctrl+C into a second one. While the engine is in a step that cannot
be stopped (CompleteMultipartUpload), the first signal says so and the step finishes.
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
    received = 0

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        if received > 1:
            left = token.left_behind
            msg = "mpupload: stopped at once by a second signal"
            msg += f"; {left}" if left else "; nothing was left on the store"
            with contextlib.suppress(Exception):
                os.write(sys.stderr.fileno(), (msg + "\n").encode())
            os._exit(130)
        token.cancel(_NAMES.get(signal.Signals(signum), signal.Signals(signum).name))
        if not quiet:
            note = token.uninterruptible
            line = (f"\nmpupload: {note} (press Ctrl+C again to exit at once)\n" if note
                    else "\nmpupload: stopping... (press Ctrl+C again to exit at once)\n")
            with contextlib.suppress(Exception):
                os.write(sys.stderr.fileno(), line.encode())

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield token
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
