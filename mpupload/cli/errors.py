"""The one table that maps exceptions to the contract's exit codes and one-line messages.

=====  =====================================================================================
code   meaning
=====  =====================================================================================
0      done
1      upload failed: store unreachable, retries exhausted, the store refused the data
2      bad usage or bad input (including a missing bucket and a source that changed)
3      authentication/authorization failed
130    stopped: Ctrl+C, SIGTERM, or a stop request
=====  =====================================================================================
"""

from __future__ import annotations

import os
import sys

from ..errors import Cancelled, MpuploadError

TYPE_CHECKING = False  # typing is not imported at run time (the CLI's --help loads this module)
if TYPE_CHECKING:
    from typing import TextIO

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_AUTH", "EXIT_STOPPED", "report_error", "debug_enabled"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_STOPPED = 130


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get("MPUPLOAD_DEBUG", "") not in ("", "0", "false", "no")


def report_error(exc: BaseException, *, debug: bool, stream: TextIO | None = None) -> int:
    """Print one clear line (a traceback too in debug mode) and return the exit code."""
    out = stream or sys.stderr
    if debug:
        import traceback

        traceback.print_exception(exc, file=out)
    if isinstance(exc, Cancelled):
        print(f"mpupload: stopped: {exc}", file=out)
        return EXIT_STOPPED
    if isinstance(exc, KeyboardInterrupt):
        print("mpupload: stopped", file=out)
        return EXIT_STOPPED
    if isinstance(exc, MpuploadError):
        print(f"mpupload: error: {exc}", file=out)
        return exc.exit_code
    print(
        f"mpupload: internal error: {type(exc).__name__}: {exc} "
        "(run again with --debug for the traceback, and please report it)",
        file=out,
    )
    return EXIT_FAILED
