"""``mpupload`` — entry point and sub-command dispatch.

Only the module of the command being run is imported (and parses its own options): ``mpupload --version``,
``mpupload --help`` and a mistyped command load none of them, and ``mpupload upload --help`` loads only
:mod:`.upload`, whose heavy imports (the engine, boto3's loader, the sinks, the API client) wait for its
``run``. :func:`build_parser` without a command still builds every sub-parser.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Collection, Sequence

from .. import __version__
from .errors import EXIT_USAGE, debug_enabled, report_error

TYPE_CHECKING = False  # typing is not imported at run time: --version and --help stay cheap
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = ["main", "build_parser", "COMMANDS"]

#: module of :mod:`mpupload.cli` -> the commands it adds (its ``add_parser`` or ``add_parsers``) and the help
#: line of each, in the order ``mpupload --help`` lists them; ``tests/unit/test_cli_main.py`` checks that these
#: lines are the ones the modules register
COMMANDS: dict[str, dict[str, str]] = {
    "upload": {"upload": "upload a file, or directories, to S3"},
    "demo": {"demo": "local API server + S3 server + a sample upload with the live bar and dashboard"},
    "cleanup": {"cleanup": "abort orphaned multipart uploads and remove stale resume journals"},
    "resumable": {"resumable": "list the resumable uploads recorded on this machine"},
    "serve": {"serve": "run the API server"},
    "users": {"users": "manage the API server's user accounts"},
    "login": {"login": "sign in to the API server and keep the token", "logout": "revoke the token and forget it",
              "whoami": "who the API server thinks you are"},
    "listing": {"list": "the uploads the API server knows about (yours)",
                "status": "one upload as the API server knows it; --watch follows it live"},
}


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, sized as it sizes itself (``COLUMNS``, else the terminal, else 80 columns) but
    without importing shutil for it: ``mpupload --help`` stays cheap."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = _columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _columns() -> int:
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        self.exit(EXIT_USAGE, f"mpupload: error: {message} (see mpupload {self.prog.split()[-1]} --help)\n"
                  if " " in self.prog else f"mpupload: error: {message} (see mpupload --help)\n")


class _Version(argparse.Action):
    """``--version``: argparse's own action builds a help formatter first (which imports shutil, bz2, lzma)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        sys.stdout.write(f"mpupload {__version__}\n")
        parser.exit()


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given ``commands``, only their modules are imported and build their sub-parsers (the
    other commands are listed by name and help line, and parse nothing)."""
    parser = _Parser(prog="mpupload", description="Parallel, resumable, verified S3 multipart uploads.")
    parser.add_argument("--version", action=_Version, help="show program's version number and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module_name, names in COMMANDS.items():
        if commands is None or not names.keys().isdisjoint(commands):
            module = importlib.import_module(f".{module_name}", __package__)
            add = getattr(module, "add_parsers", None) or module.add_parser
            add(sub)
        else:
            for name, help_line in names.items():
                sub.add_parser(name, help=help_line)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The command named on the command line: the first word that is not an option (the top level has no
    option that takes a value), or ``None``."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if any(word in commands for commands in COMMANDS.values()) else None
    return None


def _setup_logging(debug: bool, quiet: bool) -> None:
    import logging  # once a command runs: --version and --help never load logging

    from ..sinks.base import TERMINAL_LOCK

    class TerminalHandler(logging.StreamHandler):  # type: ignore[type-arg]
        """Log records on stderr, never in the middle of the bar's redraw."""

        def emit(self, record: logging.LogRecord) -> None:
            with TERMINAL_LOCK:
                super().emit(record)

    handler = TerminalHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mpupload: %(levelname)s: %(message)s"))
    root = logging.getLogger("mpupload")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else (logging.ERROR if quiet else logging.WARNING))
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    command = _command(words)
    parser = build_parser([] if command is None else [command])
    args = parser.parse_args(words)
    if args.command is not None and not hasattr(args, "func"):  # named in a way _command did not see
        parser = build_parser()
        args = parser.parse_args(words)
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
