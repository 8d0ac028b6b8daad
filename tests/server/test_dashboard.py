"""The web dashboard in a real browser (Debian's Chromium driven by Playwright) against a real ``mpupload serve``.

Uploads are driven through the REST routes the CLI uses; the page must follow them live through the GraphQL
subscription, catch up after its WebSocket was down, stop an upload, and never show anyone else's uploads.
SQLite only (the GraphQL and bus behaviour on PostgreSQL and Redis is covered by the API tests).

A screenshot of the dashboard is saved as ``dashboard.png`` in ``$MPUPLOAD_ARTIFACTS_DIR`` (default: the
test's ``tmp_path``).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, WebSocketRoute, expect, sync_playwright

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, require_chromium

from .conftest import PASSWORD, token_for
from .support import ServerProcess, cli, start_server

pytestmark = pytest.mark.integration

MiB = 1024**2
GiB = 1024**3
TIMEOUT_MS = 10_000  # deadline of each DOM condition


@pytest.fixture(scope="module", autouse=True)
def chromium_present() -> None:
    require_chromium()


@dataclass
class DashServer:
    proc: ServerProcess
    database_url: str

    @property
    def base_url(self) -> str:
        return self.proc.base_url


@pytest.fixture(scope="module")
def dash_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashServer]:
    """A server of its own (SQLite) with the users alice, bob, dave and erin; it re-checks the token of an open
    WebSocket every second (so a revoked token closes the page's socket with 4403 quickly)."""
    tmp = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{tmp / 'server.db'}"

    def add(name: str) -> None:
        done = cli("users", "add", name, "--password-stdin", "--database-url", url, stdin=PASSWORD + "\n")
        assert done.returncode == 0, done.stderr

    add("alice")  # creates the schema; then the others and the server start side by side
    proc = start_server(url, tmp, env={"MPUPLOAD_TOKEN_RECHECK": "1"}, wait=False)
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(add, ("bob", "dave", "erin")))
        proc.wait_healthy()
    except BaseException:
        proc.stop()
        raise
    try:
        yield DashServer(proc, url)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Dashboard:
    """One browser tab on the dashboard, with the console errors it logged."""

    page: Page
    base_url: str
    errors: list[str] = field(default_factory=list)
    expected: list[re.Pattern[str]] = field(default_factory=list)

    def sign_in(self, username: str, password: str = PASSWORD) -> None:
        from playwright.sync_api import expect

        self.page.fill("#username", username)
        self.page.fill("#password", password)
        self.page.click("#signin-button")
        expect(self.page.locator("#user")).to_have_text(username, timeout=TIMEOUT_MS)

    def row(self, upload_id: str) -> Locator:
        return self.page.locator(f'tr[data-upload-id="{upload_id}"]')

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.expected)]


@pytest.fixture()
def dash(browser: Browser, dash_server: DashServer) -> Iterator[Dashboard]:
    context = browser.new_context(viewport={"width": 1440, "height": 720})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    board = Dashboard(page, dash_server.base_url)
    page.on("console", lambda m: board.errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: board.errors.append(f"pageerror: {e}"))
    try:
        yield board
    finally:
        context.close()
    assert board.unexpected_errors() == []


class Uploads:
    """Uploads driven over REST as the CLI does, with a rising ``seq`` per upload."""

    def __init__(self, server: DashServer, username: str) -> None:
        self.base_url = server.base_url
        self.headers = token_for(server.base_url, username)
        self._seq: dict[str, Iterator[int]] = {}

    def create(self, total: int, filename: str = "data.bin", key: str = "datasets/data.bin") -> str:
        body = {
            "filename": filename,
            "bucket": "training",
            "key": key,
            "total_bytes": total,
            "part_size": 64 * MiB,
            "parts_total": max(1, -(-total // (64 * MiB))),
            "host": "gpu-box-7",
        }
        response = httpx.post(f"{self.base_url}/api/v1/uploads", json=body, headers=self.headers)
        assert response.status_code == 200, response.text
        upload_id: str = response.json()["id"]
        self._seq[upload_id] = itertools.count(1)
        return upload_id

    def report(self, upload_id: str, status: str, bytes_done: int, **extra: Any) -> dict[str, Any]:
        body = {
            "seq": next(self._seq[upload_id]),
            "status": status,
            "bytes_done": bytes_done,
            "speed_bps": 85.3 * MiB,
            "avg_speed_bps": 80 * MiB,
            "eta_seconds": 1800.0,
            "parts_done": 1,
            "elapsed_seconds": 60.0,
            **extra,
        }
        response = httpx.post(f"{self.base_url}/api/v1/uploads/{upload_id}/progress", json=body, headers=self.headers)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        assert not answer["ignored"], answer
        return answer


def _artifacts_dir(tmp_path: Path) -> Path:
    path = Path(os.environ.get("MPUPLOAD_ARTIFACTS_DIR") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_sign_in_live_progress_and_completion(dash: Dashboard, dash_server: DashServer, tmp_path: Path) -> None:
    """Wrong password, then the live table: a 200 GiB upload moves, completes; a failed one shows its error
    and resume command; user text is shown as text. Saves ``dashboard.png`` (see the module docstring)."""
    page = dash.page
    page.goto(dash_server.base_url)
    dash.expected.append(re.compile(r"status of 401"))  # the browser logs the refused login by itself
    page.fill("#username", "alice")
    page.fill("#password", "wrong")
    page.click("#signin-button")
    expect(page.locator("#signin-message")).to_contain_text("wrong user name or password")
    expect(page.locator("#dashboard")).to_be_hidden()
    dash.sign_in("alice")
    expect(page.locator("#conn")).to_have_text("live")
    alice = Uploads(dash_server, "alice")
    if not httpx.get(f"{dash_server.base_url}/api/v1/uploads", headers=alice.headers).json():
        expect(page.locator("#empty")).to_have_text("No uploads yet")

    total = 200 * GiB
    upload_id = alice.create(total, filename="imagenet-shard-0001.tar", key="imagenet/shard-0001.tar")
    row = dash.row(upload_id)  # appears through the subscription alone
    expect(row.locator(".status")).to_have_text("PENDING")
    expect(row.locator(".bytes")).to_have_text("0 B / 200.0 GiB")
    expect(row.locator(".name")).to_contain_text("imagenet-shard-0001.tar")
    expect(row.locator(".name")).to_contain_text("s3://training/imagenet/shard-0001.tar")
    expect(row.locator(".host")).to_have_text("gpu-box-7")
    expect(page.locator("#empty")).to_be_hidden()

    alice.report(upload_id, "uploading", 50 * GiB)
    expect(row.locator(".percent")).to_have_text("25.0 %")
    expect(row.locator(".bytes")).to_have_text("50.0 GiB / 200.0 GiB")
    expect(row.locator(".bar progress")).to_have_attribute("value", "25")
    expect(row.locator(".speed")).to_have_text("85.3 MiB/s")
    expect(row.locator(".avg-speed")).to_have_text("80.0 MiB/s")
    expect(row.locator(".eta")).to_have_text("30 min 00 s")
    expect(row.locator(".status")).to_have_text("UPLOADING")
    expect(row.locator(".status")).to_have_attribute("data-status", "UPLOADING")
    expect(row.locator(".live")).to_have_text("live")
    expect(row.locator(".live")).to_have_attribute("data-live", "true")
    expect(row.locator(".actions button.stop")).to_be_visible()

    alice.report(upload_id, "uploading", total - 1024, eta_seconds=None, speed_bps=1.5 * GiB)
    expect(row.locator(".percent")).to_have_text("100.0 %")
    expect(row.locator(".bytes")).to_have_text("200.0 GiB / 200.0 GiB")
    expect(row.locator(".bytes")).to_have_attribute("title", re.compile(rf"^{total - 1024} / {total} bytes"))  # exact
    expect(row.locator(".speed")).to_have_text("1.5 GiB/s")
    expect(row.locator(".eta")).to_have_text("—")  # unknown
    expect(row.locator(".chart canvas")).to_have_count(1)
    assert page.evaluate("() => document.querySelectorAll('.chart .uplot').length") >= 1

    alice.report(upload_id, "completed", total, eta_seconds=0.0, checksum="crc32c:AAAAAA==", etag='"abc-3200"')
    expect(row.locator(".status")).to_have_text("COMPLETED")
    expect(row.locator(".status")).to_have_attribute("data-status", "COMPLETED")
    expect(row.locator(".bar progress")).to_have_attribute("value", "100")
    expect(row.locator(".live")).to_have_text("idle")
    expect(row.locator(".live")).to_have_attribute("data-live", "false")
    expect(row.locator("button.stop")).to_be_hidden()

    # user-provided text is text, never markup; a failed upload shows its error and how to resume
    hostile = '<img src=x onerror="window.__pwned=1">.bin'
    failed_id = alice.create(3 * GiB, filename=hostile, key="<b>bold</b>/x.bin")
    alice.report(failed_id, "uploading", 1 * GiB)
    alice.report(
        failed_id,
        "failed",
        1 * GiB,
        error="<i>connection reset</i> by peer",
        resume_command="mpupload upload --resume data.bin s3://training/x.bin",
    )
    failed = dash.row(failed_id)
    expect(failed.locator(".status")).to_have_text("FAILED")
    expect(failed.locator(".name .filename")).to_have_text(hostile)
    expect(failed.locator(".name .dest")).to_have_text("s3://training/<b>bold</b>/x.bin")
    expect(failed.locator(".name .error")).to_have_text("<i>connection reset</i> by peer")
    expect(failed.locator(".resume-command")).to_have_text("mpupload upload --resume data.bin s3://training/x.bin")
    assert failed.locator("img, b, i").count() == 0
    assert page.evaluate("() => window.__pwned") is None
    # newest first
    order = page.eval_on_selector_all("#uploads tbody tr", "rows => rows.map(r => r.dataset.uploadId)")
    assert order.index(failed_id) < order.index(upload_id)

    # a live one for the picture
    busy_id = alice.create(48 * GiB, filename="laion-subset.parquet", key="laion/subset.parquet")
    alice.report(busy_id, "uploading", 12 * GiB, speed_bps=92 * MiB)
    alice.report(busy_id, "uploading", 19 * GiB, speed_bps=97 * MiB)
    expect(dash.row(busy_id).locator(".percent")).to_have_text("39.6 %")
    page.screenshot(path=str(_artifacts_dir(tmp_path) / "dashboard.png"), full_page=True)


def test_stop_button(dash: Dashboard, dash_server: DashServer) -> None:
    alice = Uploads(dash_server, "alice")
    upload_id = alice.create(10 * GiB)
    alice.report(upload_id, "uploading", 1 * GiB)
    dash.page.goto(dash_server.base_url)
    dash.sign_in("alice")
    row = dash.row(upload_id)
    stop = row.locator("button.stop")
    expect(row.locator(".live")).to_have_text("live")
    expect(stop).to_have_text("Stop")
    expect(stop).to_be_enabled()
    with dash.page.expect_response(
        lambda r: r.url.endswith("/graphql") and "stopUpload" in (r.request.post_data or "")
    ) as answer:
        stop.click()
    assert answer.value.status == 200
    assert json.loads(answer.value.text())["data"]["stopUpload"]["stopRequested"] is True
    expect(stop).to_have_text("stopping…")
    expect(stop).to_be_disabled()

    assert alice.report(upload_id, "uploading", 2 * GiB).get("action") == "stop"
    expect(stop).to_be_disabled()  # still stopping until the CLI says it stopped
    alice.report(upload_id, "stopped", 2 * GiB, eta_seconds=None)
    expect(row.locator(".status")).to_have_text("STOPPED")
    expect(row.locator(".live")).to_have_text("idle")
    expect(stop).to_be_hidden()


def test_reconnect_catches_up(dash: Dashboard, dash_server: DashServer) -> None:
    """The page's WebSocket is cut (and refused) by a Playwright route while reports arrive; once it may
    connect again the page re-reads the query and shows the latest values."""
    offline = False
    routes: list[WebSocketRoute] = []

    def handle(ws: WebSocketRoute) -> None:
        if offline:
            ws.close(code=1012, reason="test: offline")
            return
        routes.append(ws)
        ws.connect_to_server()

    page = dash.page
    page.route_web_socket(re.compile(r"/graphql$"), handle)
    alice = Uploads(dash_server, "alice")
    upload_id = alice.create(8 * GiB)
    alice.report(upload_id, "uploading", 1 * GiB)
    done_id = alice.create(2 * GiB, filename="finishes-offline.bin")
    alice.report(done_id, "uploading", 1 * GiB)
    page.goto(dash_server.base_url)
    dash.sign_in("alice")
    conn = page.locator("#conn")
    row = dash.row(upload_id)
    expect(conn).to_have_text("live")
    expect(row.locator(".percent")).to_have_text("12.5 %")
    alice.report(upload_id, "uploading", 2 * GiB)
    expect(row.locator(".percent")).to_have_text("25.0 %")  # through the socket

    offline = True
    for ws in routes:
        ws.close(code=1012, reason="test: offline")
    expect(conn).to_have_text("reconnecting…")
    expect(conn).to_have_attribute("data-state", "reconnecting")
    alice.report(upload_id, "uploading", 3 * GiB)
    alice.report(upload_id, "uploading", 6 * GiB, speed_bps=120 * MiB)
    alice.report(done_id, "completed", 2 * GiB)  # not active any more: only the re-fetched query tells
    new_id = alice.create(1 * GiB, filename="while-offline.bin")
    expect(row.locator(".percent")).to_have_text("25.0 %")  # nothing arrives while the socket is down
    expect(dash.row(done_id).locator(".status")).to_have_text("UPLOADING")
    assert dash.row(new_id).count() == 0

    offline = False
    expect(conn).to_have_text("live", timeout=20_000)
    expect(row.locator(".percent")).to_have_text("75.0 %")
    expect(row.locator(".speed")).to_have_text("120.0 MiB/s")
    expect(dash.row(new_id).locator(".status")).to_have_text("PENDING")
    expect(dash.row(done_id).locator(".status")).to_have_text("COMPLETED")
    alice.report(upload_id, "uploading", 7 * GiB)  # and the new socket streams again
    expect(row.locator(".percent")).to_have_text("87.5 %")


def test_isolation_and_sign_out(dash: Dashboard, dash_server: DashServer) -> None:
    page = dash.page
    page.goto(dash_server.base_url)
    dash.sign_in("alice")
    expect(page.locator("#conn")).to_have_text("live")
    bob = Uploads(dash_server, "bob")
    bob_id = bob.create(5 * GiB, filename="bobs-secret.bin")
    bob.report(bob_id, "uploading", 1 * GiB)
    alice = Uploads(dash_server, "alice")
    alice_id = alice.create(5 * GiB, filename="alices.bin")
    alice.report(alice_id, "uploading", 2 * GiB)
    expect(dash.row(alice_id).locator(".percent")).to_have_text("40.0 %")  # alice's later event arrived
    expect(dash.row(bob_id)).to_have_count(0)
    expect(page.locator("#uploads")).not_to_contain_text("bobs-secret.bin")
    page.reload()  # the query (not only the subscription) is the viewer's own too
    expect(dash.row(alice_id).locator(".percent")).to_have_text("40.0 %")
    expect(dash.row(bob_id)).to_have_count(0)

    token = page.evaluate("() => sessionStorage.getItem('mpupload.token')")
    page.click("#signout")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#signin-message")).to_have_text("Signed out.")
    expect(page.locator("#uploads tbody tr")).to_have_count(0)
    assert page.evaluate("() => sessionStorage.getItem('mpupload.token')") is None
    me = httpx.get(f"{dash_server.base_url}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 401  # the token was revoked, not only forgotten


def test_revoked_token_returns_to_sign_in(dash: Dashboard, dash_server: DashServer) -> None:
    """The token dies while the page is open: the subscription is closed with 4403 and the page shows the
    sign-in form with a message, without any user action."""
    page = dash.page
    page.goto(dash_server.base_url)
    dash.sign_in("dave")
    expect(page.locator("#conn")).to_have_text("live")
    page.reload()  # the token survives a reload (sessionStorage)
    expect(page.locator("#user")).to_have_text("dave")
    expect(page.locator("#conn")).to_have_text("live")
    done = cli("users", "revoke", "dave", "--database-url", dash_server.database_url)
    assert done.returncode == 0, done.stderr
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#signin-message")).to_contain_text("sign in again")
    expect(page.locator("#dashboard")).to_be_hidden()
    assert page.evaluate("() => sessionStorage.getItem('mpupload.token')") is None


def test_rate_limited_sign_in_shows_the_detail(dash: Dashboard, dash_server: DashServer) -> None:
    for _ in range(5):  # the server's default: 5 failed logins per user per minute
        response = httpx.post(
            f"{dash_server.base_url}/api/v1/auth/login", json={"username": "erin", "password": "wrong"}
        )
        assert response.status_code == 401
    page = dash.page
    page.goto(dash_server.base_url)
    dash.expected.append(re.compile(r"status of 429"))
    page.fill("#username", "erin")
    page.fill("#password", PASSWORD)
    page.click("#signin-button")
    expect(page.locator("#signin-message")).to_contain_text(re.compile(r"too many failed logins; try again in \d+ s"))
    expect(page.locator("#dashboard")).to_be_hidden()


def test_a_directory_run_shows_its_counts_and_its_files(dash: Dashboard, dash_server: DashServer) -> None:
    """A dataset record driven by real REST reports and files batches: the row's file counts, and the details
    panel (opened by a click) with the file in flight and the failed files with their errors, read again as
    the record changes but at most once a second."""
    alice = Uploads(dash_server, "alice")
    body = {"filename": "imagenet", "bucket": "training", "key": "sets/imagenet/", "total_bytes": 300 * MiB,
            "part_size": 0, "parts_total": 4, "host": "gpu-box-7", "files_total": 4}
    response = httpx.post(f"{dash_server.base_url}/api/v1/uploads", json=body, headers=alice.headers)
    assert response.status_code == 200, response.text
    upload_id = response.json()["id"]
    alice._seq[upload_id] = itertools.count(1)

    def files(*entries: dict[str, Any]) -> None:
        answer = httpx.post(f"{dash_server.base_url}/api/v1/uploads/{upload_id}/files", json={"files": list(entries)},
                            headers=alice.headers)
        assert answer.status_code == 200 and answer.json() == {"accepted": len(entries)}, answer.text

    def entry(path: str, status: str, size: int, done: int, error: str | None = None) -> dict[str, Any]:
        return {"path": path, "key": f"sets/imagenet/{path}", "size": size, "bytes_done": done, "status": status,
                "error": error}

    page = dash.page
    page.goto(dash_server.base_url)
    dash.sign_in("alice")
    row = dash.row(upload_id)
    expect(row.locator(".files")).to_have_text("files 0 / 4")
    alice.report(upload_id, "uploading", 110 * MiB, parts_done=2, files_done=1, files_failed=1)
    expect(row.locator(".files")).to_have_text("files 1 / 4 (1 failed)")
    expect(row.locator(".files")).to_have_attribute("data-failed", "true")
    files(entry("train/0001.jpg", "completed", 10 * MiB, 10 * MiB),
          entry("train/big.tar", "uploading", 100 * MiB, 40 * MiB),
          entry("train/<b>bad</b>.jpg", "failed", 5 * MiB, 0, error="<i>permission denied</i>: train/<b>bad</b>.jpg"))

    row.locator(".name .filename").click()
    details = page.locator(f'tr.details[data-details-for="{upload_id}"]')
    expect(details).to_be_visible()
    expect(row).to_have_attribute("aria-expanded", "true")
    in_flight = details.locator("ul.in-flight li.file")
    expect(in_flight).to_have_count(1)
    expect(in_flight.locator(".path")).to_have_text("train/big.tar")
    expect(in_flight.locator(".file-bytes")).to_have_text("40.0 MiB / 100.0 MiB")
    bad = details.locator("ul.failed-files li.file")
    expect(bad).to_have_count(1)
    expect(bad.locator(".path")).to_have_text("train/<b>bad</b>.jpg")
    expect(bad.locator(".file-error")).to_have_text("<i>permission denied</i>: train/<b>bad</b>.jpg")
    assert details.locator("b, i").count() == 0  # text, never markup

    # the run goes on: reports and batches arrive quickly; the panel follows, at most one query a second
    start_queries = page.evaluate("id => window.__mpupload.detailsQueries(id)", upload_id)
    started = time.monotonic()
    for done in range(41, 61):
        files(entry("train/big.tar", "uploading", 100 * MiB, done * MiB))
        alice.report(upload_id, "uploading", (70 + done) * MiB, parts_done=2, files_done=1, files_failed=1)
    files(entry("train/big.tar", "completed", 100 * MiB, 100 * MiB),
          entry("val/broken.png", "failed", MiB, 0, error="file changed while it was read"))
    alice.report(upload_id, "failed", 300 * MiB, parts_done=2, files_done=2, files_failed=2,
                 error="2 of 4 files failed")
    expect(row.locator(".files")).to_have_text("files 2 / 4 (2 failed)")
    expect(details.locator("ul.in-flight li.file")).to_have_count(0)
    expect(details.locator("ul.in-flight")).to_have_text("none right now")
    expect(bad).to_have_count(2)
    expect(details.locator('li[data-path="val/broken.png"] .file-error')).to_have_text("file changed while it was read")
    elapsed = time.monotonic() - started
    queries = page.evaluate("id => window.__mpupload.detailsQueries(id)", upload_id) - start_queries
    assert 1 <= queries <= elapsed / 1.0 + 2, (queries, elapsed)  # 44 changes, a query per second at most

    row.locator(".name .filename").click()  # a second click closes it
    expect(details).to_have_count(0)
    expect(row).to_have_attribute("aria-expanded", "false")
