"""Issue 5 end to end, everything real: a real CLI process uploads to moto's S3 server and to Ceph RGW (through a
throttling proxy, so an upload lasts a few seconds) and reports to a real ``mpupload serve``, while the dashboard
in Debian's Chromium and a GraphQL subscriber follow it.

* the dashboard row appears, its percent goes through values strictly between 0 and 100 to ``100.0 %`` and
  ``COMPLETED``, while a subscriber sees UPLOADING (growing bytes), FINALIZING, COMPLETED with the checksum;
  the object's SHA-256 is the file's (moto and Ceph);
* Stop pressed in the dashboard: the CLI exits 130 within a few report intervals, the multipart upload is gone
  and the row shows STOPPED (moto and Ceph);
* Ctrl+C (SIGINT to the CLI's process group) on Ceph: the subscriber sees STOPPED and nothing is left on the
  store (moto is covered by tests/integration/test_report.py);
* a directory run (issue 13): one record with its file counts, its large file in flight in the dashboard's
  details panel, then the failed file there and in GraphQL ``Upload.files``, every file in that list.

One API server, one browser and one throttling proxy per S3 server for the whole module. A screenshot of the
completed row is saved as ``dashboard-cli-upload.png`` in ``$MPUPLOAD_ARTIFACTS_DIR`` (default: the test's
``tmp_path``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.integration.dashboard_page import DashboardPage, launch_chromium
from tests.server.gqlws import GqlWs, gql_http
from tests.server.support import ServerProcess, cli, start_server
from tests.support.cli import (
    CliProcess,
    cli_env,
    events,
    make_file,
    multipart_uploads,
    sha256_file,
    sha256_object,
    signal_group,
    start_cli,
)
from tests.support.proxy import ProxyHandle, proxy_for
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
USER = "alice"
PASSWORD = "correct horse battery staple"
REPORT_INTERVAL_S = 0.2
ARGS = ["--report-interval", str(REPORT_INTERVAL_S), "--part-size", "5MiB", "--workers", "2", "--progress", "json"]
#: each connection to the store may send this many bytes per second: a 24 MiB upload with 2 workers takes ~3 s
THROTTLE_BPS = 4 * MiB
#: Stop pressed (or Ctrl+C) to the CLI's exit: a few report intervals, plus the abort, the final report and the
#: workers' exit; measured 0.6-1.2 s on a 2-core box at load average 7
STOP_DEADLINE_S = 10.0  # measured 0.6-1.2 s under load; the issue asks for "within a few report intervals"
FINAL = ("COMPLETED", "STOPPED", "FAILED")
EVENTS = "subscription { uploadEvents { id bucket key status bytesDone percent checksum } }"

BOTH = ["moto", pytest.param("ceph", marks=pytest.mark.ceph)]
CEPH = [pytest.param("ceph", marks=pytest.mark.ceph)]


# -- module fixtures: one API server, one browser, one throttling proxy per S3 server ------------------------------
@dataclass
class ApiServer:
    proc: ServerProcess

    @property
    def url(self) -> str:
        return self.proc.base_url

    def token(self) -> str:
        response = httpx.post(f"{self.url}/api/v1/auth/login", json={"username": USER, "password": PASSWORD},
                              timeout=30)
        assert response.status_code == 200, response.text
        return str(response.json()["token"])

    def record(self, token: str, record_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/uploads/{record_id}", headers={"Authorization": f"Bearer {token}"},
                             timeout=10)
        assert response.status_code == 200, response.text
        return dict(response.json())


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    tmp = tmp_path_factory.mktemp("api-e2e")
    url = f"sqlite:///{tmp / 'server.db'}"
    done = cli("users", "add", USER, "--password-stdin", "--database-url", url, stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    proc = start_server(url, tmp)
    try:
        yield ApiServer(proc)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def throttled() -> Iterator[Callable[[S3Server], S3Server]]:
    """``throttled(server)``: ``server`` behind a proxy that slows each connection to THROTTLE_BPS (one per server)."""
    proxies: dict[str, tuple[ProxyHandle, S3Server]] = {}

    def through_proxy(server: S3Server) -> S3Server:
        if server.endpoint_url not in proxies:
            proxy = proxy_for(server, throttle_bps=THROTTLE_BPS)
            proxies[server.endpoint_url] = (proxy, proxy.s3server(server))
        return proxies[server.endpoint_url][1]

    yield through_proxy
    for proxy, _ in proxies.values():
        proxy.stop()


@pytest.fixture
def board(browser: Browser, api: ApiServer) -> Iterator[DashboardPage]:
    """A fresh tab on the dashboard, signed in; no console error allowed."""
    page = DashboardPage.open(browser, api.url)
    try:
        page.sign_in(USER, PASSWORD)
        yield page
    finally:
        page.close()
    assert page.errors == []


# -- helpers -------------------------------------------------------------------------------------------------------
def start_upload(api: ApiServer, store: S3Server, src: Path, dest: str, tmp: Path) -> tuple[CliProcess, str, str]:
    """The CLI uploading ``src`` to ``dest`` with progress reports; (the process, its token, the record id)."""
    token = api.token()
    (tmp / "state").mkdir(exist_ok=True)
    env = cli_env(store, MPUPLOAD_API_URL=api.url, MPUPLOAD_TOKEN=token, MPUPLOAD_STATE_DIR=str(tmp / "state"),
                  MPUPLOAD_CONFIG_DIR=str(tmp / "config"))
    proc = start_cli("upload", str(src), dest, *ARGS, env=env)
    try:
        started = json.loads(proc.wait_line(lambda line: line.startswith("{"), 60))
    except BaseException:
        proc.kill_group()
        raise
    assert started["event"] == "started" and started["upload_id"], started
    return proc, token, str(started["upload_id"])


def first_progress(proc: CliProcess, at_least: int, timeout: float = 60) -> dict[str, Any]:
    def is_progress(line: str) -> bool:
        if not line.startswith("{"):
            return False
        event = json.loads(line)
        return bool(event["event"] == "progress" and event["bytes_done"] >= at_least)

    return dict(json.loads(proc.wait_line(is_progress, timeout)))


class Subscriber:
    """``uploadEvents`` for one bucket over a real WebSocket, followed in a thread of its own (so it runs beside
    the CLI and the browser) until the upload reaches a final status."""

    def __init__(self, base_url: str, token: str, bucket: str) -> None:
        self.base_url, self.token, self.bucket = base_url, token, bucket
        self.seen: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gql-subscriber", daemon=True)

    def __enter__(self) -> Subscriber:
        self._thread.start()
        assert self._subscribed.wait(20), "the subscription was not sent within 20 s"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(0)  # a daemon thread: it ends at its own deadline at the latest

    def _run(self) -> None:
        try:
            asyncio.run(self._follow())
        except BaseException as exc:  # noqa: BLE001 - handed to the test by result()
            self.error = exc
        finally:
            self._subscribed.set()

    async def _follow(self) -> None:
        async with GqlWs(self.base_url, self.token) as ws:
            op = await ws.subscribe(EVENTS)
            self._subscribed.set()
            while not self.seen or self.seen[-1]["status"] not in FINAL:
                event = (await ws.next(op, timeout=60))["uploadEvents"]
                if event["bucket"] == self.bucket:  # the current state of earlier uploads comes first
                    self.seen.append(event)

    def result(self, timeout: float = 30) -> list[dict[str, Any]]:
        """The events seen, once a final status arrived (or the failure of the subscriber)."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        assert not self._thread.is_alive(), f"no final status within {timeout} s; seen {self.seen}"
        return self.seen


def artifacts_dir(tmp_path: Path) -> Path:
    path = Path(os.environ.get("MPUPLOAD_ARTIFACTS_DIR") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- 1. a CLI upload, live in the dashboard and in a subscription ------------------------------------------------------
@pytest.mark.parametrize("s3", BOTH, indirect=True)
def test_cli_upload_live_in_dashboard_and_subscription(api: ApiServer, board: DashboardPage, s3: S3Server,
                                                        bucket: str, throttled: Callable[[S3Server], S3Server],
                                                        tmp_path: Path) -> None:
    size = 24 * MiB
    src = make_file(tmp_path / "dataset.bin", size, seed=11)
    key = "e2e/dataset.bin"
    with Subscriber(api.url, api.token(), bucket) as subscriber:
        proc, token, upload_id = start_upload(api, throttled(s3), src, f"s3://{bucket}/{key}", tmp_path)
        try:
            row = board.row(upload_id)
            expect(row).to_have_count(1)  # through the subscription alone: no reload
            expect(row.locator(".name .filename")).to_have_text("dataset.bin")
            expect(row.locator(".name .dest")).to_have_text(f"s3://{bucket}/{key}")
            board.wait_for_intermediate_percent(upload_id, timeout_ms=30_000)
            expect(row.locator(".percent")).to_have_text("100.0 %", timeout=60_000)
            expect(row.locator(".status")).to_have_text("COMPLETED")
            expect(row.locator(".status")).to_have_attribute("data-status", "COMPLETED")
            expect(row.locator(".bar progress")).to_have_attribute("value", "100")
            expect(row.locator(".bytes")).to_have_text("24.0 MiB / 24.0 MiB")
            expect(row.locator(".actions button.stop")).to_be_hidden()
            assert proc.wait(30) == 0, proc.stderr
        finally:
            proc.kill_group()
        seen = subscriber.result()
    row.screenshot(path=str(artifacts_dir(tmp_path) / "dashboard-cli-upload.png"))

    percents = board.percents(upload_id)
    assert any(0 < p < 100 for p in percents), percents
    assert percents == sorted(percents) and percents[-1] == 100.0, percents
    statuses = board.seen(upload_id, "status")
    assert "UPLOADING" in statuses and statuses[-1] == "COMPLETED", statuses

    # the subscriber: UPLOADING with growing bytes, then FINALIZING, then COMPLETED with the CLI's checksum
    assert {e["id"] for e in seen} == {upload_id}, seen
    kinds = [e["status"] for e in seen]
    uploading = [e["bytesDone"] for e in seen if e["status"] == "UPLOADING"]
    assert len(set(uploading)) >= 2 and uploading == sorted(uploading), seen
    assert kinds[-1] == "COMPLETED" and "FINALIZING" in kinds, kinds
    assert kinds.index("UPLOADING") < kinds.index("FINALIZING"), kinds
    completed = events(proc.stdout)[-1]
    assert completed["event"] == "completed" and completed["checksum"], completed
    assert seen[-1]["checksum"] == completed["checksum"] and seen[-1]["bytesDone"] == size, seen[-1]
    assert {e["upload_id"] for e in events(proc.stdout)} == {upload_id}
    assert api.record(token, upload_id)["status"] == "completed"

    client = s3.client()
    assert sha256_object(client, bucket, key) == sha256_file(src)
    assert multipart_uploads(client, bucket) == []


# -- 2. Stop pressed in the dashboard -------------------------------------------------------------------------------
@pytest.mark.parametrize("s3", BOTH, indirect=True)
def test_stop_pressed_in_the_dashboard(api: ApiServer, board: DashboardPage, s3: S3Server, bucket: str,
                                       throttled: Callable[[S3Server], S3Server], tmp_path: Path) -> None:
    src = make_file(tmp_path / "big.bin", 40 * MiB, seed=12)
    key = "e2e/stopped.bin"
    proc, token, upload_id = start_upload(api, throttled(s3), src, f"s3://{bucket}/{key}", tmp_path)
    try:
        row = board.row(upload_id)
        board.wait_for_intermediate_percent(upload_id, timeout_ms=30_000)
        stop = row.locator(".actions button.stop")
        expect(stop).to_be_visible()
        expect(stop).to_be_enabled()
        assert multipart_uploads(s3.client(), bucket, key), "a multipart upload is under way"
        clicked = time.monotonic()
        stop.click()
        code = proc.wait(STOP_DEADLINE_S + 10)
        took = time.monotonic() - clicked
    finally:
        proc.kill_group()
    assert code == 130, proc.stderr
    assert took < STOP_DEADLINE_S, f"the CLI took {took:.1f} s to stop"
    assert "stopped from the dashboard" in proc.stderr
    last = events(proc.stdout)[-1]
    assert last["event"] == "stopped" and last["aborted"] is True and last["bytes_done"] < last["total_bytes"], last

    expect(row.locator(".status")).to_have_text("STOPPED")
    expect(row.locator(".status")).to_have_attribute("data-status", "STOPPED")
    expect(stop).to_be_hidden()
    assert any(0 < p < 100 for p in board.percents(upload_id))
    record = api.record(token, upload_id)
    assert record["status"] == "stopped" and not record["stop_requested"] and not record["resumable"], record

    client = s3.client()
    assert multipart_uploads(client, bucket, key) == []
    assert client.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 0


# -- 3. Ctrl+C on Ceph -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("s3", CEPH, indirect=True)
def test_ctrl_c_on_ceph_reports_stopped(api: ApiServer, s3: S3Server, bucket: str,
                                        throttled: Callable[[S3Server], S3Server], tmp_path: Path) -> None:
    src = make_file(tmp_path / "c.bin", 40 * MiB, seed=13)
    key = "e2e/interrupted.bin"
    with Subscriber(api.url, api.token(), bucket) as subscriber:
        proc, token, upload_id = start_upload(api, throttled(s3), src, f"s3://{bucket}/{key}", tmp_path)
        try:
            first_progress(proc, at_least=6 * MiB)  # past the first part: the store holds a part
            assert multipart_uploads(s3.client(), bucket, key)
            interrupted = time.monotonic()
            signal_group(proc, signal.SIGINT)
            code = proc.wait(STOP_DEADLINE_S + 10)
            took = time.monotonic() - interrupted
        finally:
            proc.kill_group()
        seen = subscriber.result()
    assert code == 130, proc.stderr
    assert took < STOP_DEADLINE_S, f"the CLI took {took:.1f} s to stop"
    kinds = [e["status"] for e in seen]
    assert kinds[-1] == "STOPPED" and "UPLOADING" in kinds and "COMPLETED" not in kinds, kinds
    assert {e["id"] for e in seen} == {upload_id}
    last = events(proc.stdout)[-1]
    assert last["event"] == "stopped" and last["aborted"] is True, last
    # the STOPPED status reached the server before the CLI exited
    assert api.record(token, upload_id)["status"] == "stopped"
    client = s3.client()
    assert multipart_uploads(client, bucket) == []
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


# -- 4. A directory run: one record, its counts, its files in the dashboard and in GraphQL -----------------------------
FILES_QUERY = """query($id: ID!, $status: FileStatus, $after: String) { upload(id: $id) {
  id status filesTotal filesDone filesFailed
  files(status: $status, first: 500, after: $after) { items { path key size bytesDone status error }
                                                      endCursor hasNextPage } } }"""


def graphql_files(api: ApiServer, token: str, upload_id: str, status: str | None = None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = None
    for _ in range(20):
        response = gql_http(api.url, FILES_QUERY, {"id": upload_id, "status": status, "after": after},
                            {"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        data = response.json()
        assert not data.get("errors"), data
        page = data["data"]["upload"]["files"]
        items += page["items"]
        if not page["hasNextPage"]:
            return items
        after = page["endCursor"]
    raise AssertionError("more than 20 pages of files")


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_cli_directory_run_in_dashboard_and_graphql(api: ApiServer, board: DashboardPage, s3: S3Server,
                                                    bucket: str, throttled: Callable[[S3Server], S3Server],
                                                    tmp_path: Path) -> None:
    """The real CLI uploads a tree (30 small files, one 40 MiB file that lasts ~5 s through the throttle, and one
    file whose key is over S3's 1024-byte limit) to a real API server: one record, the large file in flight in
    the details panel, then ``files 31 / 32 (1 failed)``, the failed file with its error in the panel and in
    GraphQL, and every file of the run in ``Upload.files``."""
    tree = tmp_path / "tree"
    small = {f"shard-{i:02d}/part-{i:04d}.bin": 1000 + 37 * i for i in range(30)}
    for rel, size in small.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        make_file(tree / rel, size, seed=size)
    big = make_file(tree / "big.bin", 40 * MiB, seed=5)
    long_dir = tree.joinpath(*["d" * 250] * 4)
    long_dir.mkdir(parents=True)
    (long_dir / "too-long.txt").write_text("the key of this file is over 1024 bytes")
    long_rel = str((long_dir / "too-long.txt").relative_to(tree))
    prefix = "e2e-dataset/"

    proc, token, upload_id = start_upload(api, throttled(s3), tree, f"s3://{bucket}/{prefix}", tmp_path)
    try:
        row = board.row(upload_id)
        expect(row).to_have_count(1)
        expect(row.locator(".name .dest")).to_have_text(f"s3://{bucket}/{prefix}")
        row.locator(".name .filename").click()
        details = board.page.locator(f'tr.details[data-details-for="{upload_id}"]')
        expect(details).to_be_visible()
        in_flight = details.locator('ul.in-flight li.file[data-path="big.bin"]')
        expect(in_flight).to_have_count(1, timeout=30_000)  # the large file goes first and lasts ~5 s
        expect(row.locator(".status")).to_have_text("FAILED", timeout=90_000)
        assert proc.wait(30) == 1, proc.stderr
    finally:
        proc.kill_group()
    expect(row.locator(".files")).to_have_text("files 31 / 32 (1 failed)")
    expect(details.locator("ul.in-flight li.file")).to_have_count(0)
    failed = details.locator("ul.failed-files li.file")
    expect(failed).to_have_count(1)
    expect(failed.locator(".path")).to_have_text(long_rel)
    expect(failed.locator(".file-error")).to_contain_text("1024 bytes")

    record = api.record(token, upload_id)
    assert record["status"] == "failed", record
    assert (record["files_total"], record["files_done"], record["files_failed"]) == (32, 31, 1), record
    [bad] = graphql_files(api, token, upload_id, status="FAILED")
    assert bad["path"] == long_rel and "1024 bytes" in bad["error"], bad
    assert bad["key"] == (prefix + long_rel)[:1024], bad  # the wire's bound on a key: the part S3 would take
    files = {f["path"]: f for f in graphql_files(api, token, upload_id)}
    expected = {**small, "big.bin": 40 * MiB}
    assert set(files) == {*expected, long_rel}, sorted(files)
    for rel, size in expected.items():
        entry = files[rel]
        assert (entry["status"], entry["size"], entry["bytesDone"], entry["key"]) == (
            "COMPLETED", size, size, prefix + rel), entry
    final = events(proc.stdout)[-1]
    assert final["event"] == "failed" and [f["path"] for f in final["failed_files"]] == [long_rel], final

    client = s3.client()
    assert sha256_object(client, bucket, prefix + "big.bin") == sha256_file(big)
    assert multipart_uploads(client, bucket) == []
