"""Every spelling of the wire schema is checked against mpupload.wire: the snapshot, the push sink's report, the
server's report parser and record, the GraphQL types, the dashboard's and the CLI's GraphQL documents.

A failure names the missing or extra field and the place that disagrees with ``mpupload/wire.py``.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from graphql import GraphQLEnumType, GraphQLObjectType, parse, validate

from mpupload import wire
from mpupload.server.graphql.schema import schema
from mpupload.server.web import STATIC_DIR

APP_JS = STATIC_DIR / "app.js"
#: record fields the dashboard does not show, so it does not ask for them (anything else it must request)
DASHBOARD_UNUSED = {"partSize", "lastReportAt", "version"}


def same(what: str, expected: Collection[str], actual: Collection[str]) -> None:
    """``actual`` holds exactly ``expected``; the message names what is missing and what is extra."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert not missing and not extra, (
        f"{what} disagrees with mpupload/wire.py: missing {missing or 'nothing'}, extra {extra or 'nothing'}")


def graphql_type(name: str) -> Any:
    return schema._schema.type_map[name]


def selection(document: str, field: str) -> list[str]:
    """The names selected directly under ``field`` in a GraphQL document (one level, nested selections skipped)."""
    start = re.search(r"\b" + field + r"\b[^{]*\{", document)
    assert start is not None, f"no selection of {field} in {document!r}"
    names: list[str] = []
    depth, i = 1, start.end()
    for token in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*|[{}]", document[i:]):
        text = token.group()
        if text == "{":
            depth += 1
        elif text == "}":
            depth -= 1
            if depth == 0:
                return names
        elif depth == 1:
            names.append(text)
    raise AssertionError(f"unbalanced braces in {document!r}")


# -- the events -----------------------------------------------------------------------------------------------------
def test_snapshot_dict_has_the_wire_fields_in_order() -> None:
    snap = wire.Snapshot(event=wire.Event.PROGRESS, status=wire.Status.UPLOADING, upload_id=None, bucket="b",
                         key="k", total_bytes=10, bytes_done=5, speed_bps=1.0, avg_speed_bps=1.0, eta_seconds=5.0,
                         elapsed_seconds=1.0, parts_done=0, parts_total=1)
    same("Snapshot.to_dict()", wire.SNAPSHOT_FIELDS, snap.to_dict())
    assert tuple(snap.to_dict()) == wire.SNAPSHOT_FIELDS
    same("the Snapshot dataclass (percent is computed, extra holds the event's fields)",
         set(wire.SNAPSHOT_FIELDS) - {"percent"} | {"extra", "files"},
         [f.name for f in dataclasses.fields(wire.Snapshot)])


def test_a_directory_runs_snapshot_adds_the_file_counts_after_the_wire_fields() -> None:
    snap = wire.Snapshot(event=wire.Event.PROGRESS, status=wire.Status.UPLOADING, upload_id=None, bucket="b",
                         key="sets/", total_bytes=10, bytes_done=5, speed_bps=1.0, avg_speed_bps=1.0,
                         eta_seconds=5.0, elapsed_seconds=1.0, parts_done=3, parts_total=7,
                         files=wire.FileCounts(total=7, done=3, failed=1, skipped=2))
    data = snap.to_dict()
    assert tuple(data) == wire.SNAPSHOT_FIELDS + wire.FILES_FIELDS
    assert [data[n] for n in wire.FILES_FIELDS] == [7, 3, 1, 2]
    for event, names in wire.DATASET_EVENT_FIELDS.items():
        overlap = set(names) & (set(wire.SNAPSHOT_FIELDS) | set(wire.FILES_FIELDS) | set(wire.EVENT_FIELDS[event]))
        assert not overlap, f"{event.value} would overwrite fields {sorted(overlap)}"


def test_every_event_has_its_fields() -> None:
    same("EVENT_FIELDS' events", [e.value for e in wire.Event], [e.value for e in wire.EVENT_FIELDS])
    for event, names in wire.EVENT_FIELDS.items():
        overlap = set(names) & set(wire.SNAPSHOT_FIELDS)
        assert not overlap, f"{event.value} would overwrite snapshot fields {sorted(overlap)}"


def test_camel() -> None:
    assert [wire.camel(n) for n in ("id", "bytes_done", "avg_speed_bps", "last_report_at")] == [
        "id", "bytesDone", "avgSpeedBps", "lastReportAt"]


def test_active_statuses() -> None:
    assert wire.ACTIVE_STATUSES == {wire.Status.PENDING, wire.Status.UPLOADING, wire.Status.FINALIZING}


# -- the progress report: what the push sink sends, what the server reads ----------------------------------------
def test_the_push_sink_sends_every_report_field() -> None:
    sent = {"seq", *wire.SNAPSHOT_FIELDS, *wire.FILES_FIELDS,
            *(n for names in wire.EVENT_FIELDS.values() for n in names)}
    never_sent = sorted(set(wire.REPORT_FIELD_NAMES) - sent)
    assert not never_sent, f"the server reads report fields that no event carries: {never_sent}"
    assert [f.name for f in wire.REPORT_FIELDS if f.required] == ["seq", "status", "bytes_done"]
    assert all(f.name in wire.SNAPSHOT_FIELDS or f.name == "seq" for f in wire.REPORT_FIELDS if f.required)


class _Recorder:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def create_upload(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"id": "rec"}

    def report(self, record_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.bodies.append(dict(body))
        return {}


def test_the_push_sinks_own_final_report_uses_report_fields_only() -> None:
    from mpupload.sinks.push import PushSink

    transport = _Recorder()
    sink = PushSink(transport, record_id="rec", registration={}, final_wait_s=5.0)
    sink.fail(wire.Status.FAILED, "the bucket does not exist")
    assert transport.bodies, "the final report was not delivered"
    body = transport.bodies[-1]
    unknown = sorted(set(body) - set(wire.REPORT_FIELD_NAMES))
    assert not unknown, f"PushSink.fail sends fields the server does not read: {unknown}"
    required = [f.name for f in wire.REPORT_FIELDS if f.required]
    assert set(required) <= set(body)


def test_the_servers_report_is_the_wire_report() -> None:
    from mpupload.server.uploads import ProgressReport

    names = tuple(f.name for f in dataclasses.fields(ProgressReport))
    same("mpupload.server.uploads.ProgressReport", wire.REPORT_FIELD_NAMES, names)
    assert names == wire.REPORT_FIELD_NAMES, "ProgressReport's fields are not in wire.REPORT_FIELDS' order"


def test_the_servers_registration_is_the_wire_registration() -> None:
    from mpupload.server.uploads import NewUpload

    same("mpupload.server.uploads.NewUpload", [*wire.REGISTRATION_FIELDS, *wire.REGISTRATION_DATASET_FIELDS],
         [f.name for f in dataclasses.fields(NewUpload)])


def test_the_report_reads_a_directory_runs_counts_as_32_bit_integers() -> None:
    specs = {f.name: f for f in wire.REPORT_FIELDS}
    for name in wire.FILES_FIELDS:
        assert specs[name].kind is int and not specs[name].required and specs[name].maximum == wire.INT32_MAX, name
    assert set(wire.FILES_FIELDS) <= set(wire.RECORD_FIELDS)


# -- a directory run's files batch ---------------------------------------------------------------------------------
def test_the_servers_files_batch_entry_is_the_wire_entry() -> None:
    import datetime as dt

    from mpupload.server.db.models import UploadFile
    from mpupload.server.files import FileEntry, file_dict

    same("mpupload.server.files.FileEntry", wire.FILE_BATCH_FIELD_NAMES,
         [f.name for f in dataclasses.fields(FileEntry)])
    row = UploadFile(upload_id="u", path="a/b.bin", key="p/a/b.bin", size=3, bytes_done=1,
                     status=wire.FileStatus.UPLOADING, error=None, updated_at=dt.datetime.now(dt.UTC))
    same("mpupload.server.files.file_dict()", [*wire.FILE_BATCH_FIELD_NAMES, "updated_at"], file_dict(row))
    assert [f.name for f in wire.FILE_BATCH_FIELDS if f.required] == ["path", "key", "size", "bytes_done", "status"]
    assert wire.FILES_BATCH_MAX == 1000 and wire.FILES_PAGE_MAX == 500


def test_the_server_refuses_a_batch_over_the_wire_bounds() -> None:
    from mpupload.server.files import BatchError, parse_batch

    entry = {"path": "a", "key": "p/a", "size": 2, "bytes_done": 1, "status": "uploading", "error": None}
    assert len(parse_batch({"files": [entry] * wire.FILES_BATCH_MAX})) == wire.FILES_BATCH_MAX
    for body, status, words in (
        ({"files": [entry] * (wire.FILES_BATCH_MAX + 1)}, 413, "at most 1000 entries"),
        ({"files": [{**entry, "path": "x" * 1025}]}, 422, "files[0].path is at most 1024 bytes"),
        ({"files": [entry, {**entry, "error": "a\x00b"}]}, 422, "files[1].error must not contain a NUL"),
        ({"files": [{**entry, "status": "done"}]}, 422, "files[0].status must be one of"),
        ({"files": [{**entry, "bytes_done": 3}]}, 422, "exceeds its size"),
        ({"files": [{**entry, "size": True}]}, 422, "files[0].size must be an integer"),
        ({"files": [{**entry, "key": "\ud800"}]}, 422, "not valid Unicode"),
        ({"files": {}}, 422, "a files batch is a JSON object"),
    ):
        try:
            parse_batch(body)
        except BatchError as exc:
            assert exc.status_code == status and words in str(exc), (str(exc), words)
        else:
            raise AssertionError(f"accepted a batch that should be refused: {words}")


# -- the record: REST, GraphQL ----------------------------------------------------------------------------------------
def test_the_rest_record_is_the_wire_record() -> None:
    import datetime as dt

    from mpupload.server.db.models import Upload
    from mpupload.server.uploads import upload_dict

    now = dt.datetime.now(dt.UTC)
    upload = Upload(id="abc", owner_id=1, filename="f", bucket="b", key="k", host="h", status=wire.Status.UPLOADING,
                    total_bytes=10, bytes_done=5, part_size=5, parts_total=2, parts_done=1, speed_bps=1.0,
                    avg_speed_bps=1.0, eta_seconds=None, elapsed_seconds=1.0, seq=1, stop_requested=False, version=2,
                    created_at=now, updated_at=now, last_report_at=now)
    record = upload_dict(upload, live_after_s=30.0)
    same("mpupload.server.uploads.upload_dict()", wire.RECORD_FIELDS, record)
    assert record["status"] == "uploading"


def test_the_history_samples_are_the_wire_samples() -> None:
    import asyncio
    import datetime as dt

    from sqlalchemy.ext.asyncio import create_async_engine

    from mpupload.server.db.engine import make_sessionmaker
    from mpupload.server.db.models import Base, Sample
    from mpupload.server.uploads import history

    async def read() -> list[dict[str, Any]]:
        engine = create_async_engine("sqlite+aiosqlite://")
        try:
            async with engine.begin() as connection:
                await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                await connection.run_sync(Base.metadata.create_all)
            async with make_sessionmaker(engine)() as session:
                session.add(Sample(upload_id="abc", at=dt.datetime.now(dt.UTC), bytes_done=5, speed_bps=1.0))
                await session.commit()
                return await history(session, "abc", 10)
        finally:
            await engine.dispose()

    samples = asyncio.run(read())
    assert len(samples) == 1
    same("mpupload.server.uploads.history()", wire.SAMPLE_FIELDS, samples[0])


def test_the_graphql_upload_type_is_the_wire_record() -> None:
    upload = graphql_type("Upload")
    assert isinstance(upload, GraphQLObjectType)
    same("the GraphQL Upload type (mpupload/server/graphql/types.py)",
         [*wire.GRAPHQL_UPLOAD_FIELDS, "history", "files"], upload.fields)
    same("the GraphQL UploadFile type", wire.GRAPHQL_UPLOAD_FILE_FIELDS, graphql_type("UploadFile").fields)
    same("the GraphQL UploadFilePage type", ["items", "endCursor", "hasNextPage"],
         graphql_type("UploadFilePage").fields)
    files = upload.fields["files"]
    assert set(files.args) == {"status", "first", "after"}
    assert files.args["first"].default_value == wire.FILES_PAGE_DEFAULT
    sample = graphql_type("Sample")
    same("the GraphQL Sample type", [wire.camel(n) for n in wire.SAMPLE_FIELDS], sample.fields)


def test_the_graphql_status_is_the_wire_status() -> None:
    status = graphql_type("UploadStatus")
    assert isinstance(status, GraphQLEnumType)
    same("the GraphQL UploadStatus enum", [s.name for s in wire.Status], status.values)
    file_status = graphql_type("FileStatus")
    assert isinstance(file_status, GraphQLEnumType)
    same("the GraphQL FileStatus enum", [s.name for s in wire.FileStatus], file_status.values)


# -- the documents the dashboard and the CLI send ---------------------------------------------------------------------
def _dashboard_documents() -> dict[str, str]:
    """The GraphQL documents of app.js (``const NAME = `...```, with ``${FIELDS}`` filled in)."""
    source = APP_JS.read_text()
    constants = dict(re.findall(r"const ([A-Z_]+) = `([^`]*)`;", source))
    assert "FIELDS" in constants, f"no FIELDS constant in {APP_JS}"
    documents = {}
    for name, text in constants.items():
        text = re.sub(r"\$\{([A-Z_]+)\}", lambda m: constants[m.group(1)], text)
        if re.match(r"\s*(query|mutation|subscription)\b", text):
            documents[name] = text
    return documents


def test_the_dashboard_asks_for_every_field_it_shows() -> None:
    fields = APP_JS.read_text()
    requested = re.search(r"const FIELDS = `([^`]*)`;", fields)
    assert requested is not None
    names = requested.group(1).split()
    same(f"the dashboard's FIELDS ({APP_JS}, besides {sorted(DASHBOARD_UNUSED)})",
         set(wire.GRAPHQL_UPLOAD_FIELDS) - DASHBOARD_UNUSED, names)
    documents = _dashboard_documents()
    assert {"UPLOADS_QUERY", "REFRESH_QUERY", "EVENTS_SUBSCRIPTION", "STOP_MUTATION"} <= set(documents)
    same("the dashboard's history selection", [wire.camel(n) for n in wire.SAMPLE_FIELDS],
         selection(documents["UPLOADS_QUERY"], "history"))
    assert {"FILES_QUERY", "FAILED_PAGE_QUERY"} <= set(documents)
    same("the dashboard's files selection", wire.GRAPHQL_UPLOAD_FILE_FIELDS,
         selection(documents["FILES_QUERY"], "items"))


def test_the_dashboards_documents_are_valid_against_the_schema() -> None:
    for name, document in _dashboard_documents().items():
        errors = validate(schema._schema, parse(document))
        assert not errors, f"app.js {name} is refused by the schema: {[e.message for e in errors]}"


def test_the_dashboards_active_statuses_are_the_wire_ones() -> None:
    active = re.search(r"const ACTIVE = new Set\(\[([^\]]*)\]\)", APP_JS.read_text())
    assert active is not None, f"no ACTIVE set in {APP_JS}"
    same("the dashboard's ACTIVE", [s.name for s in wire.ACTIVE_STATUSES], re.findall(r'"([A-Z]+)"', active.group(1)))


def test_the_cli_watch_subscription_is_valid_against_the_schema() -> None:
    from mpupload.cli import listing

    errors = validate(schema._schema, parse(listing.SUBSCRIPTION))
    assert not errors, f"mpupload status --watch's subscription is refused: {[e.message for e in errors]}"
    requested = selection(listing.SUBSCRIPTION, "uploadProgress")
    same("mpupload status --watch's subscription", wire.GRAPHQL_UPLOAD_FIELDS, requested)
    used = ("id", "bucket", "key", "status", "totalBytes", "bytesDone", "speedBps", "avgSpeedBps", "etaSeconds",
            "elapsedSeconds", "partsDone", "partsTotal", "checksum", "etag", "error", "resumeCommand")
    not_requested = sorted(set(used) - set(requested))
    assert not not_requested, f"snapshot_from_record reads fields the subscription does not ask for: {not_requested}"


def test_wire_loads_only_the_standard_library() -> None:
    """wire.py on its own (not through ``mpupload/__init__``, which is another matter) loads only stdlib modules."""
    path = Path(wire.__file__)
    code = (
        "import importlib.util, sys\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('wire_alone', {str(path)!r})\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['wire_alone'] = module\n"
        "spec.loader.exec_module(module)\n"
        "new = set(sys.modules) - before - {'wire_alone'}\n"
        "print(sorted(m for m in new if m.split('.')[0] not in sys.stdlib_module_names))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]", f"mpupload/wire.py loads modules beyond the standard library: {result.stdout}"


def test_the_server_reaches_only_wire_and_errors() -> None:
    """Outside ``mpupload/server/`` the server imports only the wire schema and the error tree: never the engine,
    the sinks, boto3 or enlighten. ``mpupload/__init__`` is skipped (a bare package stands in for it): what it
    loads is its own business (the lazy public surface)."""
    root = Path(wire.__file__).resolve().parent
    code = (
        "import sys, types\n"
        f"package = types.ModuleType('mpupload'); package.__path__ = [{str(root)!r}]\n"
        "sys.modules['mpupload'] = package\n"
        "import mpupload.server.app\n"
        "print(sorted(m for m in sys.modules if m.startswith('mpupload.') and not m.startswith('mpupload.server')"
        " or m.split('.')[0] in ('boto3', 'botocore', 'enlighten')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "['mpupload.errors', 'mpupload.wire']", (
        f"the server imports more than mpupload.wire and mpupload.errors: {result.stdout}")


def test_the_cli_registers_exactly_the_wire_registration_fields(tmp_path: Path) -> None:
    from mpupload.cli.reporting import registration_body
    from mpupload.plan import plan_upload
    from mpupload.source import Source

    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    body = registration_body(Source.from_path(str(path)), "b", "k", plan_upload(100))
    same("the CLI's registration", list(wire.REGISTRATION_FIELDS), list(body))


def test_the_cli_registers_a_directory_run_with_the_dataset_fields(tmp_path: Path) -> None:
    from mpupload.cli.reporting import dataset_registration_body

    body = dataset_registration_body([str(tmp_path / "data")], "b", "sets/x/", files_total=7, total_bytes=99)
    same("the CLI's dataset registration", [*wire.REGISTRATION_FIELDS, *wire.REGISTRATION_DATASET_FIELDS], list(body))
    assert (body["filename"], body["key"], body["parts_total"], body["part_size"], body["files_total"]) == (
        "data", "sets/x/", 7, 0, 7)
    several = dataset_registration_body(["a/", "b.bin", "c"], "b", "p/", files_total=3, total_bytes=1)
    assert several["filename"] == "3 sources"
