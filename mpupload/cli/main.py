"""``mpupload`` — entry point and sub-command dispatch."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import __version__
from ..sinks.base import TERMINAL_LOCK
from . import cleanup, demo, listing, login, resumable, serve, upload, users
from .errors import EXIT_USAGE, debug_enabled, report_error

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        self.exit(EXIT_USAGE, f"mpupload: error: {message} (see mpupload {self.prog.split()[-1]} --help)\n"
                  if " " in self.prog else f"mpupload: error: {message} (see mpupload --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mpupload", description="Parallel, resumable, verified S3 multipart uploads.")
    parser.add_argument("--version", action="version", version=f"mpupload {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    upload.add_parser(sub)
    demo.add_parser(sub)
    cleanup.add_parser(sub)
    resumable.add_parser(sub)
    serve.add_parser(sub); users.add_parser(sub)  # noqa: E702 - the server commands
    login.add_parsers(sub)
    listing.add_parsers(sub)
    return parser


class _TerminalHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log records on stderr, never in the middle of the bar's redraw."""

    def emit(self, record: logging.LogRecord) -> None:
        with TERMINAL_LOCK:
            super().emit(record)


def _setup_logging(debug: bool, quiet: bool) -> None:
    handler = _TerminalHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mpupload: %(levelname)s: %(message)s"))
    root = logging.getLogger("mpupload")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else (logging.ERROR if quiet else logging.WARNING))
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = debug_enabled(getattr(args, "debug", False))
    _setup_logging(debug, getattr(args, "quiet", False))
    try:
        return int(args.func(args))
    except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
        if isinstance(exc, SystemExit):
            raise
        return report_error(exc, debug=debug)
