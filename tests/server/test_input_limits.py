"""What the server accepts, against a real ``mpupload serve`` process on SQLite and on PostgreSQL: a table of
oversized and malformed bodies and fields, each answered with its 4xx (never a 500), while ``/healthz`` keeps
answering, the server's memory stays within a bound, and its log carries no traceback and no token hash.

Also: the uploads-per-user cap, and a non-finite number already stored (before reports were checked) that
must not break the dashboard's ``uploads`` query or the REST list.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from mpupload.server.db import make_engine
from mpupload.server.settings import normalize_database_url

from .conftest import PASSWORD, Backend, login, token_for
from .gqlws import gql_http
from .support import ServerProcess, cli, start_server

pytestmark = pytest.mark.integration

MAX_UPLOADS = 3
#: what the server may grow by while answering the whole table a second time (nothing is kept)
RSS_GROWTH_LIMIT_KIB = 16 * 1024
#: and in all (the first round reads a 20 MiB body whole: that high-water mark stays with the process)
PEAK_GROWTH_LIMIT_KIB = 128 * 1024
ONE_DB = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
BOGUS_TOKEN = "bogus-" + secrets.token_urlsafe(24)
# deeper than Python's recursion limit (about 1,000), yet under every body cap (8 KiB for login): the parser's
# refusal is what is checked here, not the edge's size limit
NESTED = b"[" * 3_000 + b"]" * 3_000
NESTED_OBJECT = b'{"a":' * 1_300 + b"1" + b"}" * 1_300


@dataclass
class Limits:
    server: ServerProcess
    backend: Backend
    headers: dict[str, str]
    upload_id: str
    token_hashes: list[str]


def new_user(backend: Backend) -> str:
    name = f"limits-{secrets.token_hex(4)}"
    done = cli("users", "add", name, "--password-stdin", "--database-url", backend.database_url,
               stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    return name


def new_upload(base_url: str, headers: dict[str, str], **fields: Any) -> httpx.Response:
    body = {"filename": "data.bin", "bucket": "b", "key": "k/data.bin", "total_bytes": 1000, "part_size": 100,
            "parts_total": 10, "host": "box", **fields}
    return httpx.post(f"{base_url}/api/v1/uploads", json=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def limits(backend: Backend) -> Iterator[Limits]:
    server = start_server(backend.database_url, backend.tmp,
                          env={"MPUPLOAD_MAX_UPLOADS_PER_USER": str(MAX_UPLOADS)})
    try:
        headers = token_for(server.base_url, new_user(backend))
        created = new_upload(server.base_url, headers)
        assert created.status_code == 200, created.text
        token = headers["Authorization"].split()[1]
        yield Limits(server, backend, headers, created.json()["id"],
                     [hashlib.sha256(t.encode()).hexdigest() for t in (token, BOGUS_TOKEN)])
    finally:
        server.stop()


def report(**fields: Any) -> dict[str, Any]:
    return {"seq": 1, "status": "uploading", "bytes_done": 10, **fields}


def raw_report(field: str, literal: str) -> bytes:
    """A report whose ``field`` is a raw JSON literal (``NaN``, ``Infinity`` and ``1e400`` as Python parses)."""
    return (json.dumps(report())[:-1] + f', "{field}": {literal}}}').encode()


#: (name, method, path, token: "none" | "bogus" | "valid", body: JSON value or raw bytes, expected status or
#: statuses: a body over a size cap may be refused as such, 413). ``{id}`` in a path is the fixture's upload.
CASES: list[tuple[str, str, str, str, Any, int | tuple[int, ...]]] = [
    ("login: NUL in the user name", "POST", "/auth/login", "none", {"username": "al\x00ice", "password": "x"}, 422),
    ("login: lone surrogate in the user name", "POST", "/auth/login", "none",
     b'{"username": "\\ud800", "password": "x"}', 422),
    ("login: 1 KiB user name", "POST", "/auth/login", "none", {"username": "u" * 1024, "password": "x"}, 422),
    ("login: 257-byte user name (multibyte)", "POST", "/auth/login", "none",
     {"username": "\u00e9" * 128 + "x", "password": "x"}, 422),
    ("login: 4097-byte password", "POST", "/auth/login", "none", {"username": "alice", "password": "p" * 4097}, 422),
    ("login: NUL in the password", "POST", "/auth/login", "none", {"username": "alice", "password": "p\x00"}, 422),
    ("login: deeply nested JSON", "POST", "/auth/login", "none", NESTED, 400),
    ("create: bucket of 256 characters", "POST", "/uploads", "valid", {"bucket": "b" * 256}, 422),
    ("create: host of 256 characters", "POST", "/uploads", "valid", {"host": "h" * 256}, 422),
    ("create: key of 1025 bytes", "POST", "/uploads", "valid", {"key": "k" * 1025}, 422),
    ("create: key of 1026 bytes in 513 characters", "POST", "/uploads", "valid", {"key": "\u00e9" * 513}, 422),
    ("create: filename of 4097 bytes", "POST", "/uploads", "valid", {"filename": "f" * 4097}, 422),
    ("create: filename of 20 MiB", "POST", "/uploads", "valid", {"filename": "f" * 20 * 1024**2}, (413, 422)),
    ("create: NUL in the filename", "POST", "/uploads", "valid", {"filename": "a\x00b"}, 422),
    ("create: NUL in the bucket", "POST", "/uploads", "valid", {"bucket": "a\x00b"}, 422),
    ("create: NUL in the key", "POST", "/uploads", "valid", {"key": "a\x00b"}, 422),
    ("create: NUL in the host", "POST", "/uploads", "valid", {"host": "a\x00b"}, 422),
    ("create: lone surrogate in the key", "POST", "/uploads", "valid",
     b'{"filename": "f", "bucket": "b", "key": "\\udc80", "total_bytes": 1}', 422),
    ("create: total_bytes = 2^63", "POST", "/uploads", "valid", {"total_bytes": 2**63}, 422),
    ("create: part_size = 2^63", "POST", "/uploads", "valid", {"part_size": 2**63}, 422),
    ("create: parts_total = 2^31", "POST", "/uploads", "valid", {"parts_total": 2**31}, 422),
    ("create: total_bytes NaN", "POST", "/uploads", "valid",
     b'{"filename": "f", "bucket": "b", "key": "k", "total_bytes": NaN}', 422),
    ("create: total_bytes 1e400", "POST", "/uploads", "valid",
     b'{"filename": "f", "bucket": "b", "key": "k", "total_bytes": 1e400}', 422),
    ("create: deeply nested JSON", "POST", "/uploads", "valid", NESTED, 400),
    ("progress, bogus token: deeply nested array", "POST", "/uploads/{id}/progress", "bogus", NESTED, 401),
    ("progress, bogus token: deeply nested object", "POST", "/uploads/{id}/progress", "bogus", NESTED_OBJECT, 401),
    ("progress, bogus token: seq = 2^63", "POST", "/uploads/{id}/progress", "bogus", report(seq=2**63), 401),
    ("progress, bogus token: speed NaN", "POST", "/uploads/{id}/progress", "bogus", raw_report("speed_bps", "NaN"),
     401),
    ("progress, bogus token: NUL in the id", "POST", "/uploads/ab%00cd/progress", "bogus", report(), 401),
    ("progress: deeply nested array", "POST", "/uploads/{id}/progress", "valid", NESTED, 400),
    ("progress: deeply nested object", "POST", "/uploads/{id}/progress", "valid", NESTED_OBJECT, 400),
    ("progress: seq = 2^63", "POST", "/uploads/{id}/progress", "valid", report(seq=2**63), 422),
    ("progress: bytes_done = 2^63", "POST", "/uploads/{id}/progress", "valid", report(bytes_done=2**63), 422),
    ("progress: parts_done = 2^31", "POST", "/uploads/{id}/progress", "valid", report(parts_done=2**31), 422),
    ("progress: speed_bps NaN", "POST", "/uploads/{id}/progress", "valid", raw_report("speed_bps", "NaN"), 422),
    ("progress: speed_bps Infinity", "POST", "/uploads/{id}/progress", "valid",
     raw_report("speed_bps", "Infinity"), 422),
    ("progress: avg_speed_bps -Infinity", "POST", "/uploads/{id}/progress", "valid",
     raw_report("avg_speed_bps", "-Infinity"), 422),
    ("progress: speed_bps 1e400", "POST", "/uploads/{id}/progress", "valid", raw_report("speed_bps", "1e400"), 422),
    ("progress: eta_seconds 10^400 (an integer)", "POST", "/uploads/{id}/progress", "valid",
     raw_report("eta_seconds", "1" + "0" * 400), 422),
    ("progress: elapsed_seconds NaN", "POST", "/uploads/{id}/progress", "valid",
     raw_report("elapsed_seconds", "NaN"), 422),
    ("progress: NUL in the error", "POST", "/uploads/{id}/progress", "valid", report(error="a\x00b"), 422),
    ("progress: NUL in the checksum", "POST", "/uploads/{id}/progress", "valid", report(checksum="\x00"), 422),
    ("progress: NUL in the etag", "POST", "/uploads/{id}/progress", "valid", report(etag="\x00"), 422),
    ("progress: NUL in the resume command", "POST", "/uploads/{id}/progress", "valid",
     report(resume_command="mpupload \x00"), 422),
    ("progress: NUL in the status", "POST", "/uploads/{id}/progress", "valid", report(status="uploading\x00"), 422),
    ("progress: lone surrogate in the error", "POST", "/uploads/{id}/progress", "valid",
     raw_report("error", '"\\ud800"'), 422),
    ("progress: error of 65537 bytes", "POST", "/uploads/{id}/progress", "valid", report(error="e" * 65537), 422),
    ("progress: status of 100 KiB", "POST", "/uploads/{id}/progress", "valid", report(status="s" * 102400), 422),
    ("progress: seq a 100 KiB string", "POST", "/uploads/{id}/progress", "valid", report(seq="9" * 102400), 422),
    ("progress: NUL in the id", "POST", "/uploads/ab%00cd/progress", "valid", report(), 404),
    ("progress: id of 200 characters", "POST", "/uploads/" + "i" * 200 + "/progress", "valid", report(), 404),
    ("progress: 2 MiB body", "POST", "/uploads/{id}/progress", "valid", report(error="e" * 2 * 1024**2), 413),
    ("progress: invalid UTF-8 in the id", "POST", "/uploads/%ED%A0%80/progress", "valid", report(), 404),
    ("get: NUL in the id", "GET", "/uploads/ab%00cd", "valid", None, 404),
    ("get: invalid UTF-8 in the id", "GET", "/uploads/%ED%A0%80%FF", "valid", None, 404),
    ("get: id of 200 characters", "GET", "/uploads/" + "i" * 200, "valid", None, 404),
]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def send(http: httpx.Client, limits: Limits, method: str, path: str, token: str, body: Any) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if token == "valid":
        headers.update(limits.headers)
    elif token == "bogus":
        headers["Authorization"] = f"Bearer {BOGUS_TOKEN}"
    if isinstance(body, dict) and path == "/uploads":
        body = {"filename": "f", "bucket": "b", "key": "k", "total_bytes": 1, **body}
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return http.request(method, f"/api/v1{path.replace('{id}', limits.upload_id)}", content=content,
                        headers=headers)


def test_malformed_and_oversized_input_is_refused_with_a_4xx(limits: Limits) -> None:
    pid = limits.server.proc.pid
    wrong: list[str] = []
    with httpx.Client(base_url=limits.server.base_url, timeout=30) as http:
        start = rss_kib(pid)
        for _ in range(2):  # the first round sets the high-water mark (a 20 MiB body is read whole)
            before = rss_kib(pid)
            for name, method, path, token, body, expected in CASES:
                response = send(http, limits, method, path, token, body)
                if response.status_code not in (expected if isinstance(expected, tuple) else (expected,)):
                    wrong.append(f"{name}: {response.status_code} {response.text[:200]} (expected {expected})")
                assert http.get("/healthz", timeout=5).status_code == 200, f"/healthz after {name}"
        grown, grown_in_all = rss_kib(pid) - before, rss_kib(pid) - start
        # the record was left alone and still takes a good report
        good = http.post(f"/api/v1/uploads/{limits.upload_id}/progress", json=report(speed_bps=1e6),
                         headers=limits.headers)
        assert good.status_code == 200 and good.json()["ignored"] is False, good.text
        assert login(limits.server.base_url, "alice").status_code == 200  # nothing above counted as a failure
    assert not wrong, "\n".join(wrong)
    assert grown < RSS_GROWTH_LIMIT_KIB, f"the server grew by {grown} KiB in the second round"
    assert grown_in_all < PEAK_GROWTH_LIMIT_KIB, f"the server grew by {grown_in_all} KiB"
    log = limits.server.log.read_text(errors="replace")
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]
    for token_hash in limits.token_hashes:
        assert token_hash not in log


def test_graphql_ids_that_cannot_exist_are_not_found(limits: Limits) -> None:
    for upload_id in ("ab\x00cd", "i" * 200):
        answer = gql_http(limits.server.base_url, "mutation($id: ID!) { stopUpload(id: $id) { id } }",
                          {"id": upload_id}, limits.headers)
        assert answer.status_code == 200
        errors = answer.json()["errors"]
        assert [error["extensions"]["code"] for error in errors] == ["NOT_FOUND"], errors


def test_uploads_per_user_are_capped_with_409(limits: Limits) -> None:
    headers = token_for(limits.server.base_url, new_user(limits.backend))
    for _ in range(MAX_UPLOADS):
        assert new_upload(limits.server.base_url, headers).status_code == 200
    refused = new_upload(limits.server.base_url, headers)
    assert refused.status_code == 409, refused.text
    assert "MPUPLOAD_MAX_UPLOADS_PER_USER=3" in refused.json()["detail"]
    listed = httpx.get(f"{limits.server.base_url}/api/v1/uploads", headers=headers, timeout=30)
    assert len(listed.json()) == MAX_UPLOADS


@ONE_DB
def test_a_stored_non_finite_number_does_not_break_the_lists(limits: Limits) -> None:
    """A sample stored before reports were checked (``speed_bps: 1e400`` was accepted) is shown as 0."""
    base = limits.server.base_url
    headers = token_for(base, new_user(limits.backend))
    upload_id = new_upload(base, headers).json()["id"]
    accepted = httpx.post(f"{base}/api/v1/uploads/{upload_id}/progress", json=report(), headers=headers)
    assert accepted.status_code == 200, accepted.text
    path = limits.backend.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE uploads SET speed_bps = ?, avg_speed_bps = ?, eta_seconds = ?, elapsed_seconds = ? "
                   "WHERE id = ?", (float("inf"), float("-inf"), float("inf"), float("inf"), upload_id))
        db.execute("UPDATE samples SET speed_bps = ? WHERE upload_id = ?", (float("inf"), upload_id))
    db.close()
    answer = gql_http(base, "{ uploads { id speedBps avgSpeedBps etaSeconds elapsedSeconds history { speedBps } } }",
                      headers=headers)
    assert answer.status_code == 200
    payload = answer.json()
    assert "errors" not in payload, payload
    assert payload["data"]["uploads"] == [{"id": upload_id, "speedBps": 0.0, "avgSpeedBps": 0.0, "etaSeconds": None,
                                           "elapsedSeconds": 0.0, "history": [{"speedBps": 0.0}]}]
    listed = httpx.get(f"{base}/api/v1/uploads", headers=headers, timeout=30)
    assert listed.status_code == 200 and listed.json()[0]["speed_bps"] == 0.0, listed.text
    one = httpx.get(f"{base}/api/v1/uploads/{upload_id}", headers=headers, timeout=30)
    assert one.status_code == 200 and one.json()["history"][0]["speed_bps"] == 0.0, one.text


def test_database_errors_never_carry_their_parameters(backend: Backend) -> None:
    """What an SQL error would put in a log line: the statement, never a parameter (a token hash)."""
    secret = hashlib.sha256(b"a token").hexdigest()

    async def failing_statement() -> str:
        engine = make_engine(normalize_database_url(backend.database_url))
        try:
            async with engine.connect() as conn:
                with pytest.raises(DBAPIError) as failed:
                    await conn.execute(text("SELECT id FROM no_such_table WHERE token_hash = :h"), {"h": secret})
            return str(failed.value)
        finally:
            await engine.dispose()

    message = asyncio.run(failing_statement())
    assert "no_such_table" in message and secret not in message, message
