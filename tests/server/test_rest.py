"""REST API against a real ``mpupload serve`` process, on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from .conftest import Backend, login, token_for
from .support import ServerProcess, start_server

pytestmark = pytest.mark.integration

GiB = 1024**3


def _create(server: ServerProcess, headers: dict[str, str], total: int = 100 * 1024**2) -> dict[str, Any]:
    body = {"filename": "data.bin", "bucket": "b", "key": "k/data.bin", "total_bytes": total,
            "part_size": 8 * 1024**2, "parts_total": 13, "host": "box"}
    response = httpx.post(f"{server.base_url}/api/v1/uploads", json=body, headers=headers)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def _report(server: ServerProcess, headers: dict[str, str], upload_id: str, seq: int, status: str,
            bytes_done: int, **extra: Any) -> httpx.Response:
    body = {"seq": seq, "status": status, "bytes_done": bytes_done, "speed_bps": 1e6, "avg_speed_bps": 9e5,
            "eta_seconds": 3.5, "parts_done": 1, "elapsed_seconds": 1.0, "event": "progress", **extra}
    return httpx.post(f"{server.base_url}/api/v1/uploads/{upload_id}/progress", json=body, headers=headers)


def test_login_me_logout(server: ServerProcess) -> None:
    response = login(server.base_url, "alice")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expires_at"} and body["expires_at"].endswith("Z")
    headers = {"Authorization": f"Bearer {body['token']}"}
    me = httpx.get(f"{server.base_url}/api/v1/me", headers=headers)
    assert me.status_code == 200 and me.json()["username"] == "alice" and me.json()["created_at"].endswith("Z")
    assert httpx.post(f"{server.base_url}/api/v1/auth/logout", headers=headers).status_code == 200
    assert httpx.get(f"{server.base_url}/api/v1/me", headers=headers).status_code == 401


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nope", "Basic YWxpY2U6eA==", "bearer x y"])
def test_missing_or_bad_token_is_401(server: ServerProcess, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    for method, path in (("GET", "/api/v1/me"), ("GET", "/api/v1/uploads"), ("POST", "/api/v1/auth/logout"),
                         ("GET", "/api/v1/uploads/x"), ("POST", "/api/v1/uploads/x/progress")):
        response = httpx.request(method, f"{server.base_url}{path}", headers=headers, json={})
        assert response.status_code == 401, (method, path, response.text)
        assert "detail" in response.json()


def test_wrong_password_and_unknown_user_are_401(server: ServerProcess) -> None:
    assert login(server.base_url, "bob", "wrong").status_code == 401
    assert login(server.base_url, "nobody", "wrong").status_code == 401


def test_login_rate_limit_per_user(server: ServerProcess) -> None:
    for _ in range(3):  # MPUPLOAD_LOGIN_MAX_PER_USER=3
        assert login(server.base_url, "carol", "wrong").status_code == 401
    limited = login(server.base_url, "carol")  # even the right password waits now
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0
    assert login(server.base_url, "bob").status_code == 200  # other users are not affected


def test_revoked_token_is_401(server: ServerProcess, backend: Backend) -> None:
    from .support import cli

    headers = token_for(server.base_url, "erin")
    assert httpx.get(f"{server.base_url}/api/v1/me", headers=headers).status_code == 200
    done = cli("users", "revoke", "erin", "--database-url", backend.database_url)
    assert done.returncode == 0, done.stderr
    assert "revoked 1 token" in done.stdout
    assert httpx.get(f"{server.base_url}/api/v1/me", headers=headers).status_code == 401


def test_expired_token_is_401(backend: Backend) -> None:
    short = start_server(backend.database_url, backend.tmp, "--token-ttl", "1")
    try:
        issued = time.monotonic()
        headers = token_for(short.base_url, "bob")
        assert httpx.get(f"{short.base_url}/api/v1/me", headers=headers).status_code == 200
        # the TTL is 1 s: the same token is refused once it has passed (polled, with a deadline)
        while (status := httpx.get(f"{short.base_url}/api/v1/me", headers=headers).status_code) == 200:
            assert time.monotonic() - issued < 3.0, "the token outlived its 1 s TTL"
            time.sleep(0.05)
        assert status == 401
    finally:
        short.stop()


def test_uploads_create_list_get(server: ServerProcess) -> None:
    headers = token_for(server.base_url, "alice")
    record = _create(server, headers)
    assert record["status"] == "pending" and record["bytes_done"] == 0 and record["id"]
    assert record["live"] is True and record["eta_seconds"] is None
    listed = httpx.get(f"{server.base_url}/api/v1/uploads", headers=headers).json()
    assert record["id"] in [u["id"] for u in listed]
    got = httpx.get(f"{server.base_url}/api/v1/uploads/{record['id']}", headers=headers).json()
    assert got["key"] == "k/data.bin" and got["history"] == []


def test_someone_elses_upload_is_404_everywhere(server: ServerProcess) -> None:
    alice, bob = token_for(server.base_url, "alice"), token_for(server.base_url, "bob")
    upload_id = _create(server, alice)["id"]
    assert httpx.get(f"{server.base_url}/api/v1/uploads/{upload_id}", headers=bob).status_code == 404
    assert _report(server, bob, upload_id, 1, "uploading", 1).status_code == 404
    assert upload_id not in [u["id"] for u in httpx.get(f"{server.base_url}/api/v1/uploads", headers=bob).json()]
    assert httpx.get(f"{server.base_url}/api/v1/uploads/no-such-id", headers=bob).status_code == 404
    untouched = httpx.get(f"{server.base_url}/api/v1/uploads/{upload_id}", headers=alice).json()
    assert untouched["status"] == "pending" and untouched["seq"] is None


def test_progress_seq_transitions_and_bad_payloads(server: ServerProcess) -> None:
    headers = token_for(server.base_url, "alice")
    upload_id = _create(server, headers, total=1000)["id"]
    ok = _report(server, headers, upload_id, 5, "uploading", 400)
    assert ok.status_code == 200 and ok.json()["ignored"] is False and "action" not in ok.json()
    assert ok.json()["upload"]["bytes_done"] == 400
    for stale in (5, 4):  # duplicate and stale: ignored, nothing changes
        answer = _report(server, headers, upload_id, stale, "uploading", 10)
        assert answer.status_code == 200 and answer.json()["ignored"] is True
        assert answer.json()["upload"]["bytes_done"] == 400
    for bad, fragment in ((dict(bytes_done=-1), "negative"), (dict(bytes_done=1001), "exceeds total_bytes"),
                          (dict(status="paused"), "unknown status"), (dict(seq=-3), "seq")):
        body: dict[str, Any] = {"seq": 6, "status": "uploading", "bytes_done": 1, **bad}
        answer = httpx.post(f"{server.base_url}/api/v1/uploads/{upload_id}/progress", json=body, headers=headers)
        assert answer.status_code == 422 and fragment in answer.json()["detail"], answer.text
    missing = httpx.post(f"{server.base_url}/api/v1/uploads/{upload_id}/progress", json={"status": "uploading"},
                         headers=headers)
    assert missing.status_code == 422
    assert _report(server, headers, upload_id, 6, "stopped", 500, resume_command="mpupload upload --resume x"
                   ).json()["upload"]["resumable"] is True
    resumed = _report(server, headers, upload_id, 7, "uploading", 500)  # resume: stopped -> uploading
    assert resumed.status_code == 200 and resumed.json()["upload"]["status"] == "uploading"
    assert _report(server, headers, upload_id, 8, "failed", 600, error="network down").status_code == 200
    assert _report(server, headers, upload_id, 9, "uploading", 600).status_code == 200
    done = _report(server, headers, upload_id, 10, "completed", 1000, etag='"abc"', checksum="crc32c:xyz")
    assert done.json()["upload"]["status"] == "completed" and done.json()["upload"]["etag"] == '"abc"'
    illegal = _report(server, headers, upload_id, 11, "uploading", 10)
    assert illegal.status_code == 409 and "completed -> uploading" in illegal.json()["detail"]


def test_200_gib_record_round_trips_exactly(server: ServerProcess) -> None:
    headers = token_for(server.base_url, "alice")
    total = 200 * GiB
    record = _create(server, headers, total=total)
    assert record["total_bytes"] == total
    assert _report(server, headers, record["id"], 1, "uploading", total - 1).status_code == 200
    got = httpx.get(f"{server.base_url}/api/v1/uploads/{record['id']}", headers=headers).json()
    assert got["total_bytes"] == total and got["bytes_done"] == total - 1
    assert got["history"][-1]["bytes_done"] == total - 1
    assert _report(server, headers, record["id"], 2, "completed", total).json()["upload"]["bytes_done"] == total


def test_history_is_bounded(server: ServerProcess) -> None:
    headers = token_for(server.base_url, "alice")
    upload_id = _create(server, headers, total=10_000)["id"]
    for seq in range(1, 9):
        assert _report(server, headers, upload_id, seq, "uploading", seq * 100).status_code == 200
    history = httpx.get(f"{server.base_url}/api/v1/uploads/{upload_id}", headers=headers).json()["history"]
    assert [h["bytes_done"] for h in history] == [400, 500, 600, 700, 800]  # MPUPLOAD_HISTORY_LIMIT=5


def test_create_rejects_bad_records(server: ServerProcess) -> None:
    headers = token_for(server.base_url, "alice")
    bad = httpx.post(f"{server.base_url}/api/v1/uploads", headers=headers,
                     json={"filename": "f", "bucket": "b", "key": "k", "total_bytes": -5})
    assert bad.status_code == 422 and "negative" in bad.json()["detail"]
    assert httpx.post(f"{server.base_url}/api/v1/uploads", headers=headers, json={"filename": "f"}
                      ).status_code == 422
