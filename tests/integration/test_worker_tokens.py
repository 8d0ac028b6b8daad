"""Worker tokens (issue 15): what a brokered upload's cluster workers sign with, instead of the user's login.

A real ``mpupload serve --storage`` on moto. A worker token signs its own upload's URLs (a run's: its objects and
its large files' parts) and nothing else: every other REST route, GraphQL over HTTP and its WebSocket, and the
progress reports refuse it as an unknown token; another upload of the same user is 404; it dies when its upload
ends and when the login it was made with logs out; the server keeps only its SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
from typing import Any

import httpx
import pytest

from tests.integration.api_support import Api
from tests.integration.test_brokered import PREFIX, Client, crc32c, md5, parts_of, put, served, store_uploads
from tests.server.gqlws import connect_rejected
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
__all__ = ["served"]


def stored_tokens(api: Api) -> list[tuple[str, str | None, int | None, int]]:
    """(hash, upload id, parent id, revoked) of every token row in the server's database."""
    with sqlite3.connect(api.tmp / "server.db") as db:
        return list(db.execute("SELECT token_hash, upload_id, parent_id, revoked FROM tokens"))


def refused_everywhere_else(api: Api, worker: str, login: str, upload_id: str) -> None:
    """Every way in but the sign routes refuses the worker token as it refuses an unknown one."""
    w = Client(api, worker)
    # a valid progress report (the login's is taken: the fast path of the reports was asked first)
    report = {"status": "uploading", "bytes_done": 1, "seq": 1}
    assert w.post(f"/uploads/{upload_id}/progress", report).status_code == 401
    accepted = Client(api, login).post(f"/uploads/{upload_id}/progress", report)
    assert accepted.status_code == 200 and accepted.json()["ignored"] is False, accepted.text
    for path in ("/me", "/uploads", f"/uploads/{upload_id}", f"/uploads/{upload_id}/parts", "/storage",
                 "/storage/objects?prefix="):
        assert w.get(path).status_code == 401, path
    for path, body in ((f"/uploads/{upload_id}/complete", {"parts": []}), (f"/uploads/{upload_id}/abort", {}),
                       (f"/uploads/{upload_id}/worker-token", {}), ("/auth/logout", {}),
                       ("/uploads", {"brokered": True, "key": "elsewhere.bin", "total_bytes": 1}),
                       ("/uploads", {"filename": "x", "bucket": "b", "key": "k", "total_bytes": 1})):
        answer = w.post(path, body)
        assert answer.status_code == 401, (path, answer.text)
    def query(token: str) -> httpx.Response:
        return httpx.post(f"{api.url}/graphql", json={"query": "{ uploads { id } }"},
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)

    assert query(api.token("alice")).json().get("data", {}).get("uploads"), "alice's login sees her uploads"
    asked = query(worker)
    assert (asked.status_code, asked.json()) == ((unknown := query("not-a-token")).status_code, unknown.json())
    assert asyncio.run(connect_rejected(api.url, {"token": worker})).code == 4403


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_a_worker_token_signs_its_upload_and_nothing_else(served: tuple[Api, S3Server, str]) -> None:
    api, s3, bucket = served
    login = api.token("alice")
    alice, bob = Client(api, login), Client(api, api.token("bob"))
    data = os.urandom(6 * MiB)
    made = alice.post("/uploads", {"brokered": True, "key": "w/a.bin", "total_bytes": len(data),
                                   "part_size": 5 * MiB, "checksum_algorithm": "crc32c", "worker_token": True})
    assert made.status_code == 200, made.text
    plan = made.json()
    worker, upload_id = plan["worker_token"], plan["id"]
    assert worker and worker != login and plan["worker_token_expires_at"]
    # stored as its SHA-256 only, scoped to the upload, made with alice's login
    rows = stored_tokens(api)
    assert all(worker not in str(row) for row in rows)
    [(_, scope, parent, revoked)] = [r for r in rows if r[0] == hashlib.sha256(worker.encode()).hexdigest()]
    assert scope == upload_id and parent is not None and revoked == 0

    other = alice.create("w/other.bin", 6 * MiB)
    w = Client(api, worker)
    parts = parts_of(data, 5 * MiB)
    for signed, (_, body) in zip(w.signed(upload_id, parts), parts, strict=True):
        assert put(signed, body).status_code == 200  # the worker's URLs work on the store
    assert w.sign(other["id"], parts[:1]).status_code == 404  # alice's, but not its upload
    refused_everywhere_else(api, worker, login, upload_id)
    # only a login mints one, for its own upload (bob: 404)
    assert bob.post(f"/uploads/{upload_id}/worker-token", {}).status_code == 404
    again = alice.post(f"/uploads/{upload_id}/worker-token", {})
    assert again.status_code == 200 and again.json()["token"] not in (worker, login), again.text
    # ... and it replaces the upload's earlier one (a coordinator resumed: the workers of the killed one stop)
    assert w.sign(upload_id, parts[:1]).status_code == 401
    assert Client(api, again.json()["token"]).sign(upload_id, parts[:1]).status_code == 200
    # a large file's upload inside a run has none of its own
    refused = alice.post("/uploads", {"brokered": True, "key": "w/c.bin", "total_bytes": 1, "worker_token": True,
                                      "parent_id": other["id"]})
    assert refused.status_code == 422, refused.text

    done = alice.post(f"/uploads/{upload_id}/complete", {"parts": [
        {"number": n, "checksum": crc32c(body), "content_md5": md5(body)} for n, body in parts]})
    assert done.status_code == 200, done.text
    assert s3.client().get_object(Bucket=bucket, Key=f"{PREFIX}/alice/w/a.bin")["Body"].read() == data
    # it dies with its upload: both of the upload's worker tokens
    for token in (worker, again.json()["token"]):
        assert Client(api, token).sign(upload_id, parts[:1]).status_code == 401
    assert alice.post(f"/uploads/{upload_id}/worker-token", {}).status_code == 409  # completed

    # aborted: dead too; and logging out revokes what the login made
    w2 = Client(api, alice.post(f"/uploads/{other['id']}/worker-token", {}).json()["token"])
    assert w2.sign(other["id"], parts[:1]).status_code == 200
    assert alice.post("/auth/logout", {}).status_code == 200
    assert w2.sign(other["id"], parts[:1]).status_code == 401
    relogged = Client(api, api.token("alice"))
    assert relogged.post(f"/uploads/{other['id']}/abort", {}).status_code == 200
    assert store_uploads(s3, bucket) == []


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_a_run_s_worker_token_signs_its_objects_and_its_large_files_parts(served: tuple[Api, S3Server, str]
                                                                          ) -> None:
    api, s3, bucket = served
    alice = Client(api, api.token("alice"))

    def run(key: str, **extra: Any) -> dict[str, Any]:
        made = alice.post("/uploads", {"brokered": True, "dataset": True, "key": key, "total_bytes": 20 * MiB,
                                       "files_total": 3, "checksum_algorithm": "none", **extra})
        assert made.status_code == 200, made.text
        return dict(made.json())

    mine, theirs = run("r1/", worker_token=True), run("r2/")
    w = Client(api, mine["worker_token"])
    assert "worker_token" not in theirs
    small = b"x" * 100
    signed = w.post(f"/uploads/{mine['id']}/objects/sign", {"objects": [
        {"key": "r1/small", "size": len(small), "content_md5": md5(small)}]})
    assert signed.status_code == 200, signed.text
    assert put(signed.json()["objects"][0], small).status_code == 200
    assert w.post(f"/uploads/{theirs['id']}/objects/sign", {"objects": [
        {"key": "r2/small", "size": 1, "content_md5": md5(b"x")}]}).status_code == 404

    def child(run_id: str, key: str) -> dict[str, Any]:
        made = alice.post("/uploads", {"brokered": True, "key": key, "total_bytes": 6 * MiB, "part_size": 5 * MiB,
                                       "multipart": True, "checksum_algorithm": "crc32c", "parent_id": run_id})
        assert made.status_code == 200, made.text
        return dict(made.json())

    inside, outside = child(mine["id"], "r1/big"), child(theirs["id"], "r2/big")
    part = parts_of(os.urandom(6 * MiB), 5 * MiB)[:1]
    assert w.sign(inside["id"], part).status_code == 200  # a large file of its run
    assert w.sign(outside["id"], part).status_code == 404  # of another run
    assert alice.post(f"/uploads/{inside['id']}/worker-token", {}).status_code == 409  # (the run's signs for it)
    # stopping the run ends its token
    assert alice.post(f"/uploads/{mine['id']}/abort", {}).status_code == 200
    assert w.sign(inside["id"], part).status_code == 401
    assert alice.post(f"/uploads/{theirs['id']}/abort", {}).status_code == 200
    assert store_uploads(s3, bucket) == []

