"""``mpupload list`` and ``mpupload status UPLOAD_ID [--watch]``: what the API server knows.

``list`` prints a table of the viewer's uploads (``--json``: the server's records as a JSON array).
``status`` prints one record; ``--watch`` follows it live through the GraphQL subscription
``uploadProgress`` over WebSocket (``graphql-transport-ws``, the token in ``connection_init``) and draws it
with the same bar or plain lines as ``upload``, until the upload ends: exit 0 completed, 1 failed,
130 stopped (or Ctrl+C). ``--watch`` needs the ``websockets`` package.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from .. import errors as E
from ..client import ApiAuthError, ApiNotFound, resolve_target
from ..sinks import PROGRESS_MODES, Sink, make_sinks
from ..units import format_bytes, format_duration, format_rate
from ..wire import ACTIVE_STATUSES, GRAPHQL_UPLOAD_FIELDS, Event, Snapshot, Status
from .errors import EXIT_FAILED, EXIT_OK, EXIT_STOPPED

if TYPE_CHECKING:
    from ..client import ApiClient

__all__ = ["add_parsers", "snapshot_from_record", "table"]

#: every field of the GraphQL ``Upload`` (``history`` aside), from the wire schema
GQL_FIELDS = " ".join(GRAPHQL_UPLOAD_FIELDS)
SUBSCRIPTION = "subscription($id: ID!) { uploadProgress(id: $id) { " + GQL_FIELDS + " } }"
WS_OPEN_TIMEOUT_S = 10.0
#: how long a quiet subscription waits before checking that the connection is still alive
WS_RECV_TIMEOUT_S = 30.0
FINAL = {Status.COMPLETED: Event.COMPLETED, Status.STOPPED: Event.STOPPED, Status.FAILED: Event.FAILED}


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("list", help="the uploads the API server knows about (yours)")
    p.add_argument("--api-url", metavar="URL")
    p.add_argument("--json", action="store_true", help="the records as a JSON array")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=run_list)

    p = sub.add_parser("status", help="one upload as the API server knows it; --watch follows it live")
    p.add_argument("upload_id", metavar="UPLOAD_ID")
    p.add_argument("--api-url", metavar="URL")
    p.add_argument("--json", action="store_true", help="the record as JSON")
    p.add_argument("--watch", "-w", action="store_true", help="follow it live until it ends")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto", help="how --watch draws it")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=run_status)


def _client(args: argparse.Namespace) -> ApiClient:
    from ..client import ApiClient  # requests: only when a command talks to the server

    target = resolve_target(args.api_url)
    if target is None:
        raise ApiAuthError("no API server: run mpupload login --api-url URL")
    if not target.token:
        raise ApiAuthError(f"not logged in to {target.api_url}: run mpupload login")
    return ApiClient(target.api_url, target.token)


def _auth(exc: ApiAuthError, url: str) -> ApiAuthError:
    return ApiAuthError(f"the API server at {url} rejected the token ({exc.detail or exc}): run mpupload login",
                        status=exc.status)


def table(records: list[dict[str, Any]]) -> str:
    """The ``list`` table: one line per upload, newest first (as the server sends them)."""
    header = ("ID", "STATUS", "DONE", "SIZE", "SPEED", "ETA", "HOST", "DESTINATION", "UPDATED")
    rows = [header]
    for r in records:
        total = int(r.get("total_bytes") or 0)
        done = int(r.get("bytes_done") or 0)
        percent = 100.0 if total == 0 else 100.0 * done / total
        active = r.get("status") in ACTIVE_STATUSES  # a StrEnum: its members equal their values
        rows.append((
            str(r.get("id")), str(r.get("status")) + ("" if r.get("live") or not active else " (quiet)"),
            f"{percent:.1f}%", format_bytes(total),
            format_rate(r.get("speed_bps")) if active else "-",
            format_duration(r.get("eta_seconds")) if active else "-",
            str(r.get("host") or "-"), f"s3://{r.get('bucket')}/{r.get('key')}",
            str(r.get("updated_at") or "-"),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def run_list(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        records = client.list_uploads()
    except ApiAuthError as exc:
        raise _auth(exc, client.base_url) from None
    finally:
        client.close()
    if args.json:
        print(json.dumps(records, indent=2))
    elif records:
        print(table(records))
    else:
        print("no uploads yet")
    return EXIT_OK


def _describe(r: dict[str, Any]) -> str:
    total = int(r.get("total_bytes") or 0)
    done = int(r.get("bytes_done") or 0)
    lines = [
        f"upload {r.get('id')}: s3://{r.get('bucket')}/{r.get('key')} ({r.get('filename')}) from {r.get('host')}",
        f"  status {r.get('status')}{'' if r.get('live') else ' (not live)'}  "
        f"{(100.0 if total == 0 else 100.0 * done / total):.1f}%  {format_bytes(done)} / {format_bytes(total)}"
        f"  parts {r.get('parts_done')}/{r.get('parts_total')}",
        f"  speed {format_rate(r.get('speed_bps'))} (avg {format_rate(r.get('avg_speed_bps'))})"
        f"  ETA {format_duration(r.get('eta_seconds'))}  elapsed {format_duration(r.get('elapsed_seconds'))}",
        f"  created {r.get('created_at')}  updated {r.get('updated_at')}",
    ]
    for name in ("checksum", "etag", "error", "resume_command"):
        if r.get(name):
            lines.append(f"  {name.replace('_', ' ')}: {r[name]}")
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        record = client.get_upload(args.upload_id)
    except ApiAuthError as exc:
        raise _auth(exc, client.base_url) from None
    except ApiNotFound:
        raise E.UsageError(f"no upload {args.upload_id!r} on {client.base_url}: check the id with "
                           "mpupload list") from None
    finally:
        client.close()
    if not args.watch:
        print(json.dumps(record, indent=2) if args.json else _describe(record))
        return EXIT_OK
    assert client.token is not None
    return _watch(client.base_url, client.token, args)


# -- --watch ------------------------------------------------------------------------------------------------------
def snapshot_from_record(r: dict[str, Any], event: Event) -> Snapshot:
    """A GraphQL ``Upload`` (camelCase) as the snapshot the sinks draw."""
    status = Status(str(r["status"]).lower())
    extra: dict[str, Any] = {}
    for name, key in (("checksum", "checksum"), ("etag", "etag"), ("error", "error"),
                      ("resumeCommand", "resume_command")):
        if r.get(name):
            extra[key] = r[name]
    if status is Status.COMPLETED and r.get("checksum"):
        extra["verified"] = str(r["checksum"]).split(":", 1)[0]
    if status is Status.STOPPED:
        extra["aborted"] = not r.get("resumeCommand")
    return Snapshot(
        event=event, status=status, upload_id=str(r["id"]), bucket=str(r["bucket"]), key=str(r["key"]),
        total_bytes=int(r.get("totalBytes") or 0), bytes_done=int(r.get("bytesDone") or 0),
        speed_bps=r.get("speedBps"), avg_speed_bps=float(r.get("avgSpeedBps") or 0.0),
        eta_seconds=r.get("etaSeconds"), elapsed_seconds=float(r.get("elapsedSeconds") or 0.0),
        parts_done=int(r.get("partsDone") or 0), parts_total=int(r.get("partsTotal") or 0), extra=extra,
    )


def _watch(base_url: str, token: str, args: argparse.Namespace) -> int:
    try:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect
    except ImportError:
        raise E.UsageError("mpupload status --watch needs the websockets package: pip install websockets") \
            from None
    url = ("wss://" + base_url[len("https://"):] if base_url.startswith("https://")
           else "ws://" + base_url[len("http://"):]) + "/graphql"
    sinks: list[Sink] = make_sinks(args.progress, stdout=sys.stdout, stderr=sys.stderr, quiet=args.quiet)
    started = False
    try:
        with connect(url, subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                     open_timeout=WS_OPEN_TIMEOUT_S) as ws:
            ws.send(json.dumps({"type": "connection_init", "payload": {"token": token}}))
            ack = json.loads(ws.recv(WS_OPEN_TIMEOUT_S))
            if ack.get("type") != "connection_ack":
                raise ApiAuthError(f"the API server at {base_url} refused the subscription: run mpupload login")
            ws.send(json.dumps({"id": "1", "type": "subscribe",
                                "payload": {"query": SUBSCRIPTION, "variables": {"id": args.upload_id}}}))
            while True:
                message = json.loads(ws.recv(WS_RECV_TIMEOUT_S))
                kind = message.get("type")
                if kind == "ping":
                    ws.send(json.dumps({"type": "pong"}))
                    continue
                if kind == "complete":
                    raise E.UploadFailed(f"the API server ended the subscription to {args.upload_id}")
                if kind == "error" or (kind == "next" and message["payload"].get("errors")):
                    errors = message["payload"] if kind == "error" else message["payload"]["errors"]
                    raise E.UsageError(f"no upload {args.upload_id!r}: {errors[0].get('message')}")
                if kind != "next":
                    continue
                record = message["payload"]["data"]["uploadProgress"]
                status = Status(str(record["status"]).lower())
                if status in FINAL:
                    if not started:
                        _emit(sinks, snapshot_from_record(record, Event.STARTED))
                    _emit(sinks, snapshot_from_record(record, FINAL[status]))
                    return {Status.COMPLETED: EXIT_OK, Status.FAILED: EXIT_FAILED}.get(status, EXIT_STOPPED)
                _emit(sinks, snapshot_from_record(record, Event.PROGRESS if started else Event.STARTED))
                started = True
    except TimeoutError:
        raise E.UploadFailed(f"the API server at {base_url} went quiet: run mpupload status again") from None
    except ConnectionClosed as exc:
        if exc.rcvd is not None and exc.rcvd.code == 4403:
            raise ApiAuthError(f"the API server at {base_url} rejected the token: run mpupload login") from None
        raise E.UploadFailed(f"the connection to {base_url} closed: run mpupload status again") from None
    except OSError as exc:
        raise E.UploadFailed(f"cannot reach the API server at {base_url} ({exc})") from None
    finally:
        for sink in sinks:
            sink.close()


def _emit(sinks: list[Sink], snapshot: Snapshot) -> None:
    for sink in sinks:
        sink.emit(snapshot)
