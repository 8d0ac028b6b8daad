"""``mpupload resumable`` — the resumable uploads recorded on this machine, and how to resume each.

Reads the journals in the state directory (``$MPUPLOAD_STATE_DIR``, else ``$XDG_STATE_HOME/mpupload``, else
``~/.local/state/mpupload``). A journal records what this machine knows; the store decides on ``--resume``
which parts are really there. Unreadable journals are listed by path and left alone.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from typing import Any

from .. import housekeeping as hk
from ..journal import CorruptJournal, Journal, list_journals, state_dir
from ..units import format_bytes
from .errors import EXIT_OK

__all__ = ["add_parser", "run", "format_line"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("resumable", help="list the resumable uploads recorded on this machine",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    p.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    p.set_defaults(func=run)


def format_line(summary: dict[str, Any]) -> str:
    """One journal summary (:func:`mpupload.housekeeping.resumable_summary`) as one line for people."""
    progress = (f"{summary['percent']:.1f}% {format_bytes(summary['bytes_done'])} / "
                f"{format_bytes(summary['total_bytes'])}, parts {summary['parts_done']}/{summary['parts_total']}")
    return (f"{summary['source']} -> {summary['destination']}  {progress}  age {hk.format_age(summary['age_seconds'])}"
            f"  upload {summary['upload_id']}  resume: {summary['resume_command']}")


def run(args: argparse.Namespace) -> int:
    directory = state_dir()
    now = _dt.datetime.now(_dt.UTC)
    journals: list[Journal] = []
    corrupt: list[tuple[str, CorruptJournal]] = []
    for entry in list_journals(directory):
        if isinstance(entry, Journal):
            journals.append(entry)
        else:
            corrupt.append((str(entry[0]), entry[1]))
    summaries = [hk.resumable_summary(j, now) for j in sorted(journals, key=lambda j: (j.created_at, str(j.path)))]
    if args.json:
        print(json.dumps({"state_dir": str(directory), "uploads": summaries,
                          "corrupt": [{"path": path, "error": str(exc)} for path, exc in corrupt]}, indent=2))
        return EXIT_OK
    if not summaries and not corrupt:
        print(f"no resumable uploads recorded on this machine (state directory: {directory})")
        return EXIT_OK
    for summary in summaries:
        print(format_line(summary))
    for path, exc in corrupt:
        print(f"{path}: corrupt journal, cannot be resumed ({exc}); delete it once you no longer need it")
    return EXIT_OK
