"""``mpupload upload`` and the API server: authenticate first, register the upload, push progress.

Before a single byte goes to the store:

1. the token is checked (``GET /api/v1/me``, :data:`CHECK_TIMEOUT`): a server that answers 401 ends the
   command with exit 3 and nothing is created on the store; a server that does not answer (down, hanging)
   costs one warning line and the upload goes ahead — the sender keeps trying in the background;
2. the upload's set-up is done, once (:func:`~mpupload.api.prepare_upload`): its plan and the resume decision,
   which may change the plan;
3. the upload is registered from that final plan (``POST /api/v1/uploads``), or, with ``--resume``, the record
   id kept in the upload's journal is continued. The record id becomes the events' ``upload_id``.

Then a :class:`~mpupload.sinks.push.PushSink` reports every ``--report-interval`` seconds and on every status
change, and a ``{"action": "stop"}`` answer cancels the upload like Ctrl+C ("stopped from the dashboard").
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..client import ApiAuthError, ApiError, ApiNotFound, ApiTarget, resolve_target
from ..engine.cancel import CancelToken
from ..options import UploadOptions
from ..plan import UploadPlan

if TYPE_CHECKING:
    from ..source import Source
from ..sinks.base import TERMINAL_LOCK
from ..sinks.push import PushSink

__all__ = ["CHECK_TIMEOUT", "SENDER_TIMEOUT", "STOP_REASON", "Reporting", "check_reporting", "start_reporting",
           "warn_line", "registration_body", "dataset_registration_body"]

#: (connect, read) seconds for the checks before the upload starts
CHECK_TIMEOUT = (2.0, 3.0)
#: (connect, read) seconds for every request of the background sender
SENDER_TIMEOUT = (2.0, 3.0)
STOP_REASON = "stopped from the dashboard"


def warn_line(quiet: bool) -> Callable[[str], None]:
    def say(line: str) -> None:
        if not quiet:
            with TERMINAL_LOCK:  # never in the middle of the bar's redraw
                sys.stderr.write(f"mpupload: warning: {line}\n")
                sys.stderr.flush()
    return say


@dataclass
class Reporting:
    """The API server this upload reports to, checked before the store sees anything (see the module docstring)."""

    target: ApiTarget
    #: the server did not answer the check: one warning was printed, and the sender keeps trying
    warning: str | None = None


def check_reporting(args: argparse.Namespace) -> Reporting | None:
    """The API server to report to, its token checked (exit 3 when rejected); ``None`` without a server or with
    ``--no-report``."""
    if args.no_report:
        return None
    target = resolve_target(args.api_url)
    if target is None:
        return None
    if args.report_interval <= 0:
        from .. import errors as E

        raise E.UsageError("--report-interval must be a positive number of seconds")
    if not target.token:
        raise ApiAuthError(f"not logged in to the API server at {target.api_url}: run mpupload login "
                           "(or upload with --no-report)")
    from ..client import ApiClient  # requests: only when there is a server to report to

    client = ApiClient(target.api_url, target.token, connect_timeout_s=CHECK_TIMEOUT[0],
                       read_timeout_s=CHECK_TIMEOUT[1])
    try:
        client.me()
    except ApiAuthError as exc:
        raise ApiAuthError(f"the API server at {target.api_url} rejected the token: run mpupload login",
                           status=exc.status, detail=exc.detail) from None
    except ApiError as exc:
        return Reporting(target, _outage(exc))
    finally:
        client.close()
    return Reporting(target)


def start_reporting(args: argparse.Namespace, reporting: Reporting, *, bucket: str, key: str, source: Source | None,
                    plan: UploadPlan | None, record_id: str | None, options: UploadOptions,
                    token: CancelToken, registration: dict[str, Any] | None = None,
                    brokered: bool = False, run_id: str | None = None) -> PushSink:
    """Register the upload (its final plan, after the resume decision) and return the sink that reports it.

    ``record_id`` is the record an interrupted run kept in its journal: ``--resume`` continues it.
    ``registration`` is a directory run's body (else it is made from ``source`` and ``plan``). A ``brokered``
    upload registers nothing: the server makes its record when it creates the upload, and the sink reports to it
    (a brokered directory run's record is ``run_id``, made before the run starts).
    """
    target = reporting.target
    if registration is None:
        assert source is not None and plan is not None
        registration = registration_body(source, bucket, key, plan)
    say = warn_line(args.quiet)
    warning = reporting.warning
    if brokered:
        record_id = run_id  # the record is the upload's: else the sink takes its id from the started event
    elif warning is None:
        record_id, warning = _register(target, registration, record_id if options.resume else None)
    else:
        record_id = record_id if options.resume else None
    if warning:
        say(warning)
    from ..client import ApiClient

    transport = ApiClient(target.api_url, target.token, connect_timeout_s=SENDER_TIMEOUT[0],
                          read_timeout_s=SENDER_TIMEOUT[1])
    return PushSink(transport, record_id=record_id, registration=registration, interval_s=args.report_interval,
                    on_stop=lambda: token.cancel(STOP_REASON), say=say, api_url=target.api_url,
                    continuing=options.resume and record_id is not None, outage_reported=warning is not None,
                    adopt_upload_id=brokered)


def registration_body(source: Source, bucket: str, key: str, plan: UploadPlan) -> dict[str, Any]:
    """The body of ``POST /api/v1/uploads`` (:data:`mpupload.wire.REGISTRATION_FIELDS`), from the final plan."""
    body: dict[str, Any] = {
        "filename": os.path.basename(source.path), "bucket": bucket, "key": key, "total_bytes": source.size,
        "part_size": plan.part_size if plan.multipart else source.size, "parts_total": plan.parts_total,
        "host": socket.gethostname(),
    }
    return body


def dataset_registration_body(sources: Sequence[str], bucket: str, prefix: str, files_total: int,
                              total_bytes: int) -> dict[str, Any]:
    """The body of ``POST /api/v1/uploads`` for a directory run (:data:`mpupload.wire.REGISTRATION_FIELDS` and
    :data:`~mpupload.wire.REGISTRATION_DATASET_FIELDS`): one record for the whole run, named after its source
    (``"N sources"`` for several), its key the PREFIX, its parts its files."""
    name = os.path.basename(os.path.normpath(sources[0])) if len(sources) == 1 else f"{len(sources)} sources"
    return {
        "filename": name, "bucket": bucket, "key": prefix, "total_bytes": total_bytes, "part_size": 0,
        "parts_total": files_total, "host": socket.gethostname(), "files_total": files_total,
    }


def _outage(exc: ApiError) -> str:
    return f"{exc}: the upload goes ahead without progress reports for now (retrying in the background)"


def _register(target: ApiTarget, registration: dict[str, Any],
              record_id: str | None) -> tuple[str | None, str | None]:
    """(the record id to report to, a warning line); no record id: the sender registers it later."""
    from ..client import ApiClient

    client = ApiClient(target.api_url, target.token, connect_timeout_s=CHECK_TIMEOUT[0],
                       read_timeout_s=CHECK_TIMEOUT[1])
    try:
        if record_id is not None:
            try:
                client.get_upload(record_id)
                return record_id, None
            except ApiNotFound:
                pass  # gone, or someone else's: a new record
        return str(client.create_upload(registration)["id"]), None
    except ApiAuthError as exc:
        raise ApiAuthError(f"the API server at {target.api_url} rejected the token: run mpupload login",
                           status=exc.status, detail=exc.detail) from None
    except ApiError as exc:
        return record_id, _outage(exc)
    finally:
        client.close()
