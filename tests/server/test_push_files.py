"""The push sink of a directory run against a real ``mpupload serve`` (SQLite and PostgreSQL) through the real
API client: the counts in its reports, the file list in batches of at most 1000, the flush at finish, the
bound of its pending map while the files route does not answer, and the Stop answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from mpupload import wire
from mpupload.cli.reporting import dataset_registration_body
from mpupload.client import ApiClient
from mpupload.client.errors import ApiUnreachable
from mpupload.sinks.push import PushSink

from .conftest import token_for
from .gqlws import gql_http
from .support import ServerProcess

pytestmark = pytest.mark.integration

FILES = """query($id: ID!, $status: FileStatus, $after: String) { upload(id: $id) { status filesTotal filesDone
  filesFailed filesSkipped files(status: $status, first: 500, after: $after) { items { path status bytesDone error }
  endCursor hasNextPage } } }"""


class Client(ApiClient):
    """The real client, recording the size of every files batch; ``files_down`` makes the files route look
    unreachable (the reports still go through)."""

    def __init__(self, base_url: str, token: str) -> None:
        super().__init__(base_url, token)
        self.batches: list[int] = []
        self.files_down = threading.Event()

    def post_files(self, record_id: str, files: list[dict[str, Any]], timeout: Any = None) -> dict[str, Any]:
        if self.files_down.is_set():
            raise ApiUnreachable("test: the files route is down")
        answer = super().post_files(record_id, files, timeout)
        self.batches.append(len(files))
        return answer


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


def snap(event: wire.Event, counts: wire.FileCounts, status: wire.Status = wire.Status.UPLOADING,
         key: str = "sets/x/", **extra: Any) -> wire.Snapshot:
    return wire.Snapshot(event=event, status=status, upload_id=None, bucket="b", key=key, total_bytes=10**9,
                         bytes_done=10**6, speed_bps=1e6, avg_speed_bps=1e6, eta_seconds=None, elapsed_seconds=1.0,
                         parts_done=counts.done, parts_total=counts.total or 0, extra=extra, files=counts)


def completed(path: str, counts: wire.FileCounts) -> wire.Snapshot:
    return snap(wire.Event.FILE_COMPLETED, counts, key=f"sets/x/{path}", prefix="sets/x/", path=path, size=100,
                verified="crc32c", etag='"e"', checksum="c", skipped=None)


def failed(path: str, counts: wire.FileCounts, error: str = "permission denied") -> wire.Snapshot:
    return snap(wire.Event.FILE_FAILED, counts, key=f"sets/x/{path}", prefix="sets/x/", path=path, size=100,
                error=f"{error}: {path}", error_type="SourceError")


def start(server: ServerProcess, user: str, files_total: int, **kw: Any) -> tuple[PushSink, Client, str, list[str]]:
    token = token_for(server.base_url, user)["Authorization"].split()[1]
    client = Client(server.base_url, token)
    registration = dataset_registration_body(["data/"], "b", "sets/x/", files_total, 10**9)
    record_id = str(client.create_upload(registration)["id"])
    said: list[str] = []
    kw.setdefault("interval_s", 0.2)
    push = PushSink(client, record_id=record_id, registration=registration, say=said.append,
                    api_url=server.base_url, **kw)
    push.emit(snap(wire.Event.STARTED, wire.FileCounts(files_total, 0, 0), bytes_total=10**9, prefix="sets/x/",
                   sources=["data/"], put_threads=8, part_size=0, workers=2))
    return push, client, record_id, said


def listed(server: ServerProcess, headers: dict[str, str], record_id: str, status: str | None = None
           ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    files: list[dict[str, Any]] = []
    after = None
    while True:
        response = gql_http(server.base_url, FILES, {"id": record_id, "status": status, "after": after}, headers)
        upload = response.json()["data"]["upload"]
        files += upload["files"]["items"]
        if not upload["files"]["hasNextPage"]:
            return upload, files
        after = upload["files"]["endCursor"]


def test_the_file_list_goes_in_bounded_batches_and_the_rest_at_finish(server: ServerProcess) -> None:
    total = 3500
    push, client, record_id, said = start(server, "ivan", total, files_batches_per_report=1, interval_s=60.0)
    headers = token_for(server.base_url, "ivan")
    wait_for(lambda: push.accepted >= 1, "the started report")
    for i in range(total - 2):
        push.emit(completed(f"train/{i:05d}.jpg", wire.FileCounts(total, i + 1, 0)))
    push.emit(failed("bad/one.bin", wire.FileCounts(total, total - 2, 1)))
    push.emit(snap(wire.Event.PROGRESS, wire.FileCounts(total, total - 2, 1), in_flight=[
        {"path": "big/last.bin", "key": "sets/x/big/last.bin", "size": 1000, "bytes_done": 400}]))
    # one report per interval (60 s here) and one batch after each: the file list waits for the end
    assert sum(client.batches) <= 1000
    push.emit(completed("big/last.bin", wire.FileCounts(total, total - 1, 1)))
    started = time.monotonic()
    push.emit(snap(wire.Event.FAILED, wire.FileCounts(total, total - 1, 1), wire.Status.FAILED,
                   error="1 of 3500 files failed", failed_files=[{"path": "bad/one.bin", "key": "sets/x/bad/one.bin",
                                                                   "size": 100, "error": "permission denied"}],
                   warnings=[]))
    push.close()
    assert time.monotonic() - started < 15
    assert push.final_delivered and said == []
    # each file once (big/last.bin's in-flight state was replaced by its completion before it went)
    assert client.batches == [1000, 1000, 1000, 500]
    upload, files = listed(server, headers, record_id)
    assert upload["status"] == "FAILED"
    assert (upload["filesTotal"], upload["filesDone"], upload["filesFailed"]) == (total, total - 1, 1)
    assert len(files) == total and {f["status"] for f in files} == {"COMPLETED", "FAILED"}
    _, bad = listed(server, headers, record_id, "FAILED")
    assert bad == [{"path": "bad/one.bin", "status": "FAILED", "bytesDone": 0,
                    "error": "permission denied: bad/one.bin"}]
    last = next(f for f in files if f["path"] == "big/last.bin")
    assert (last["status"], last["bytesDone"]) == ("COMPLETED", 100)  # the newest state won
    client.close()


def test_the_pending_map_is_bounded_while_the_files_route_is_down(server: ServerProcess) -> None:
    push, client, record_id, said = start(server, "ivan", 400, pending_files_max=100, files_flush_s=10.0)
    headers = token_for(server.base_url, "ivan")
    wait_for(lambda: push.accepted >= 1, "the started report")
    client.files_down.set()
    for i in range(50):
        push.emit(failed(f"bad/{i:03d}", wire.FileCounts(400, 0, i + 1)))
    for i in range(300):
        push.emit(completed(f"ok/{i:03d}", wire.FileCounts(400, i + 1, 50)))
    reports = push.accepted
    push.emit(snap(wire.Event.PROGRESS, wire.FileCounts(400, 300, 50)))
    wait_for(lambda: push.accepted > reports, "a report while the files route is down")
    stored = gql_http(server.base_url, FILES, {"id": record_id}, headers).json()["data"]["upload"]
    assert (stored["filesDone"], stored["filesFailed"]) == (300, 50)  # the counts travel with the reports
    client.files_down.clear()  # the server takes files again: the flush sends what the map kept
    push.emit(snap(wire.Event.FAILED, wire.FileCounts(400, 300, 50), wire.Status.FAILED,
                   error="50 of 400 files failed"))
    push.close()
    _, files = listed(server, headers, record_id)
    statuses = [f["status"] for f in files]
    assert statuses.count("FAILED") == 50 and statuses.count("COMPLETED") == 50  # failed files were kept first
    assert len(said) == 1 and "misses 250 file states" in said[0] and "250 completed" in said[0], said
    assert "at most 100" in said[0]
    client.close()


def test_a_flush_that_cannot_finish_is_bounded_and_said_once(server: ServerProcess) -> None:
    push, client, record_id, said = start(server, "ivan", 20, files_flush_s=1.5)
    wait_for(lambda: push.accepted >= 1, "the started report")
    client.files_down.set()
    for i in range(20):
        push.emit(completed(f"f{i}", wire.FileCounts(20, i + 1, 0)))
    push.emit(snap(wire.Event.COMPLETED, wire.FileCounts(20, 20, 0), wire.Status.COMPLETED))
    began = time.monotonic()
    push.close()
    assert time.monotonic() - began < 1.5 + 3.0  # the final wait is not needed: the final report went at once
    assert push.final_delivered
    assert len(said) == 1 and "misses 20 file states" in said[0] and "20 not sent when the run ended" in said[0]
    assert "the files route is down" in said[0]
    client.close()


def test_a_stop_answer_still_cancels_a_directory_run(server: ServerProcess) -> None:
    stopped = threading.Event()
    push, client, record_id, said = start(server, "ivan", 10, on_stop=stopped.set)
    headers = token_for(server.base_url, "ivan")
    wait_for(lambda: push.accepted >= 1, "the started report")
    answer = gql_http(server.base_url, "mutation($id: ID!) { stopUpload(id: $id) { stopRequested } }",
                      {"id": record_id}, headers).json()
    assert answer["data"]["stopUpload"]["stopRequested"] is True
    for i in range(3):
        push.emit(completed(f"f{i}", wire.FileCounts(10, i + 1, 0)))
        push.emit(snap(wire.Event.PROGRESS, wire.FileCounts(10, i + 1, 0)))
    wait_for(stopped.is_set, "on_stop after the stop answer")
    push.emit(snap(wire.Event.STOPPED, wire.FileCounts(10, 3, 0), wire.Status.STOPPED))
    push.close()
    upload, files = listed(server, headers, record_id)
    assert upload["status"] == "STOPPED" and [f["path"] for f in files] == ["f0", "f1", "f2"]
    assert said == []
    client.close()
