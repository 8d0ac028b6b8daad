"""Brokered uploads, server half (issue 15): a real ``mpupload serve --storage`` against moto and Ceph RGW over
HTTP; the client side is plain HTTP here (sign, PUT to the presigned URLs, complete), as a brokered CLI will do."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mpupload.checksums import Algorithm, b64, new_hasher
from tests.conftest import SERVERS
from tests.integration.api_support import Api, until
from tests.server.support import cli
from tests.support.s3server import S3Server

MiB = 1024 * 1024
PREFIX = "platform/data"
EXPIRES_S = 5


def crc32c(data: bytes) -> str:
    hasher = new_hasher(Algorithm.CRC32C)
    hasher.update(data)
    return b64(hasher.digest())


def md5(data: bytes) -> str:
    return b64(hashlib.md5(data).digest())  # noqa: S324 - Content-MD5


class Client:
    """What a brokered client does, in plain HTTP."""

    def __init__(self, api: Api, token: str) -> None:
        self.api, self.headers = api, {"Authorization": f"Bearer {token}"}

    def post(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(f"{self.api.url}/api/v1{path}", json=body, headers=self.headers, timeout=60)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.api.url}/api/v1{path}", headers=self.headers, timeout=60)

    def create(self, key: str, size: int, part_size: int = 5 * MiB) -> dict[str, Any]:
        answer = self.post("/uploads", {"brokered": True, "key": key, "total_bytes": size, "part_size": part_size,
                                        "checksum_algorithm": "crc32c", "filename": key})
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def sign(self, upload_id: str, parts: list[tuple[int, bytes]]) -> httpx.Response:
        return self.post(f"/uploads/{upload_id}/parts/sign", {"parts": [
            {"number": n, "size": len(data), "checksum": crc32c(data), "content_md5": md5(data)}
            for n, data in parts]})

    def signed(self, upload_id: str, parts: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
        answer = self.sign(upload_id, parts)
        assert answer.status_code == 200, answer.text
        return list(answer.json()["parts"])


def put(signed: dict[str, Any], data: bytes) -> httpx.Response:
    return httpx.request(signed["method"], signed["url"], headers=signed["headers"], content=data, timeout=60)


def serve(s3: S3Server, bucket: str, tmp_path: Path, **extra: str) -> Api:
    return Api(tmp_path, env=serve_env(s3, bucket, **extra)).prepare("alice", "bob")


def serve_env(s3: S3Server, bucket: str, **extra: str) -> dict[str, str]:
    return {**s3.env(), "MPUPLOAD_STORAGE": f"s3://{bucket}/{PREFIX}",
            "MPUPLOAD_STORAGE_ENDPOINT_URL": s3.endpoint_url, "MPUPLOAD_STORAGE_REGION": s3.region,
            "MPUPLOAD_STORAGE_CONTENT_MD5": "1", "MPUPLOAD_SIGN_EXPIRES": str(EXPIRES_S),
            "MPUPLOAD_SIGN_MAX_PER_MINUTE": "30", **extra}


@pytest.fixture
def served(s3: S3Server, bucket: str, tmp_path: Path) -> Iterator[tuple[Api, S3Server, str]]:
    api = serve(s3, bucket, tmp_path)
    try:
        yield api, s3, bucket
    finally:
        api.stop()


def store_uploads(s3: S3Server, bucket: str) -> list[str]:
    """The keys of the multipart uploads the store holds under the server's prefix."""
    listed = s3.client().list_multipart_uploads(Bucket=bucket, Prefix=f"{PREFIX}/").get("Uploads", [])
    return [u["Key"] for u in listed]


def parts_of(data: bytes, part_size: int) -> list[tuple[int, bytes]]:
    return [(i // part_size + 1, data[i:i + part_size]) for i in range(0, len(data), part_size)]


def one_part_sent(alice: Client, key: str) -> dict[str, Any]:
    """A 6 MiB brokered upload with its first part on the store and its second never sent (a CLI gone)."""
    data = os.urandom(6 * MiB)
    plan = alice.create(key, len(data))
    first = parts_of(data, 5 * MiB)[0]
    assert put(alice.signed(plan["id"], [first])[0], first[1]).status_code == 200
    return plan


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_brokered_multipart_upload(served: tuple[Api, S3Server, str]) -> None:
    """create -> sign -> PUT -> complete gives the same object under PREFIX/<user>/; a body that differs from the
    signed checksums is refused, an expired URL is refused and a fresh one works; others get 404."""
    api, s3, bucket = served
    alice, bob = Client(api, api.token("alice")), Client(api, api.token("bob"))
    data = os.urandom(11 * MiB)
    plan = alice.create("sets/a.bin", len(data))
    assert plan["storage_key"] == f"{PREFIX}/alice/sets/a.bin" and plan["key"] == plan["storage_key"]
    assert (plan["multipart"], plan["part_size"], plan["parts_total"]) == (True, 5 * MiB, 3)
    assert plan["checksum_algorithm"] == "crc32c" and plan["brokered"] is True
    upload_id, parts = plan["id"], parts_of(data, 5 * MiB)

    # someone else's upload is 404 everywhere, as one that does not exist
    assert bob.sign(upload_id, parts[:1]).status_code == 404
    assert bob.get(f"/uploads/{upload_id}/parts").status_code == 404
    assert bob.post(f"/uploads/{upload_id}/complete", {"parts": []}).status_code == 404
    assert bob.post(f"/uploads/{upload_id}/abort", {}).status_code == 404

    # a body that differs from what was signed (same size): Ceph RGW refuses it (it checks the signed
    # Content-MD5); moto's server checks neither Content-MD5 nor x-amz-checksum-* and keeps it (the part is
    # sent again below, as a client does after a refusal)
    first = alice.signed(upload_id, parts[:1])[0]
    # a sign records the upload's activity for the reaper at most every 30 s, not once a request (no database
    # write for each): the signs just after the create leave the create's time
    alice.signed(upload_id, parts[1:2])
    created, touched = (dt.datetime.fromisoformat(value).replace(tzinfo=None) for value in (
        plan["last_activity_at"], alice.get(f"/uploads/{upload_id}").json()["last_activity_at"]))
    assert touched == created
    assert set(first["headers"]) == {"x-amz-checksum-crc32c", "Content-MD5"}
    assert "content-md5%3Bhost%3Bx-amz-checksum-crc32c" in first["url"]  # both signed into the URL
    tampered = put(first, bytes(len(parts[0][1])))
    if s3.name.startswith("ceph"):
        assert tampered.status_code == 400 and "BadDigest" in tampered.text, tampered.text
    else:
        assert tampered.status_code == 200

    # an expired URL is refused by Ceph RGW (it checks SigV4 and X-Amz-Expires); moto's server checks no
    # signature at all, so there the URL keeps working. A fresh URL works everywhere.
    last_number, last_data = parts[-1]
    stale = alice.signed(upload_id, [(last_number, last_data)])[0]
    if s3.name.startswith("ceph"):
        refused = until(lambda: (r := put(stale, last_data)).status_code == 403 and r, EXPIRES_S + 20,
                        "the store refuses the expired URL", every=0.5)
        assert "AccessDenied" in refused.text or "Expired" in refused.text, refused.text
    for signed, (_, body) in zip(alice.signed(upload_id, parts[1:]), parts[1:], strict=True):
        answer = put(signed, body)
        assert answer.status_code == 200, answer.text
    # complete refuses while part 1 is missing (Ceph refused it) or is not the body signed (moto kept it: its
    # ETag is not the MD5 the client sends)
    attempt = alice.post(f"/uploads/{upload_id}/complete", {"parts": [
        {"number": n, "checksum": crc32c(body), "content_md5": md5(body)} for n, body in parts]})
    assert attempt.status_code == 409, attempt.text
    assert ("holds no part 1" if s3.name.startswith("ceph") else "not the body") in attempt.json()["detail"]
    assert put(alice.signed(upload_id, parts[:1])[0], parts[0][1]).status_code == 200

    listed = alice.get(f"/uploads/{upload_id}/parts")
    assert listed.status_code == 200, listed.text
    held = {p["number"]: p for p in listed.json()["parts"]}
    assert sorted(held) == [1, 2, 3] and [held[n]["size"] for n in (1, 2, 3)] == [5 * MiB, 5 * MiB, MiB]

    done = alice.post(f"/uploads/{upload_id}/complete", {"parts": [
        {"number": n, "etag": held[n]["etag"], "checksum": crc32c(body), "content_md5": md5(body)}
        for n, body in parts]})
    assert done.status_code == 200, done.text
    record = done.json()
    # neither store reports a comparable composite CRC32C: the ETag (MD5 of the part MD5s) verifies the object
    assert record["status"] == "completed" and record["verified"] == "md5"
    assert api.record(alice.headers["Authorization"].split()[1], upload_id)["verified"] == record["verified"]
    stored = s3.client().get_object(Bucket=bucket, Key=f"{PREFIX}/alice/sets/a.bin")["Body"].read()
    assert stored == data
    # a completed upload signs nothing more
    assert alice.sign(upload_id, parts[:1]).status_code == 409


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_brokered_single_put_abort_and_bad_keys(served: tuple[Api, S3Server, str]) -> None:
    api, s3, bucket = served
    alice = Client(api, api.token("alice"))
    # a small object: one PutObject with its checksum signed in, then HEAD verifies it
    small = os.urandom(100_000)
    plan = alice.create("small.bin", len(small), part_size=0)
    assert (plan["multipart"], plan["parts_total"]) == (False, 1)
    signed = alice.signed(plan["id"], [(1, small)])[0]
    assert put(signed, small).status_code == 200
    done = alice.post(f"/uploads/{plan['id']}/complete", {"parts": [
        {"number": 1, "checksum": crc32c(small), "content_md5": md5(small)}]})
    assert done.status_code == 200, done.text
    assert done.json()["verified"] in ("crc32c", "md5")
    assert s3.client().get_object(Bucket=bucket, Key=f"{PREFIX}/alice/small.bin")["Body"].read() == small

    # abort leaves nothing on the store
    data = os.urandom(6 * MiB)
    plan = alice.create("gone.bin", len(data))
    parts = parts_of(data, 5 * MiB)
    assert put(alice.signed(plan["id"], parts[:1])[0], parts[0][1]).status_code == 200
    aborted = alice.post(f"/uploads/{plan['id']}/abort", {})
    assert aborted.status_code == 200, aborted.text
    assert aborted.json()["status"] == "stopped" and aborted.json()["outcome"] == "aborted"
    left = s3.client().list_multipart_uploads(Bucket=bucket, Prefix=f"{PREFIX}/").get("Uploads", [])
    assert left == []
    assert alice.sign(plan["id"], parts[:1]).status_code == 409

    # keys that leave the user's space, or are odd, are refused with one reason
    for key in ("../bob/x", "a/../../x", "/etc/passwd", "a//b", "a\\b", "a\x01b", "dir/", "x" * 1020):
        answer = alice.post("/uploads", {"brokered": True, "key": key, "total_bytes": 10})
        assert answer.status_code == 422, (key, answer.text)
        assert isinstance(answer.json()["detail"], str)
    # a wrong size or a missing checksum is refused before anything is signed
    plan = alice.create("c.bin", 6 * MiB)
    bad = alice.post(f"/uploads/{plan['id']}/parts/sign", {"parts": [{"number": 1, "size": 4, "checksum": "AAAAAA=="}]})
    assert bad.status_code == 422 and "5242880" in bad.text
    bad = alice.post(f"/uploads/{plan['id']}/parts/sign", {"parts": [{"number": 1, "size": 5 * MiB}]})
    assert bad.status_code == 422 and "checksum" in bad.text

    # signing is rate-limited per user (30 part URLs a minute here): then 429 with Retry-After. Twice 20 URLs in
    # two requests: the second goes over whatever the time between them (one URL at a time, a slow machine could
    # spread them over more than a minute)
    many = alice.create("many.bin", 40 * 5 * MiB)
    zero = bytes(5 * MiB)
    first = alice.sign(many["id"], [(n, zero) for n in range(1, 21)])
    assert first.status_code == 200, first.text
    limited = alice.sign(many["id"], [(n, zero) for n in range(21, 41)])
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1, limited.text
    for upload in (plan, many):
        assert alice.post(f"/uploads/{upload['id']}/abort", {}).status_code == 200


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_brokered_quota(served: tuple[Api, S3Server, str]) -> None:
    """In flight plus stored brokered bytes stay within the quota; an aborted upload frees its bytes."""
    api, _, _ = served
    done = cli("users", "set", "alice", "--quota", "12MiB", "--database-url", api.database_url)
    assert done.returncode == 0, done.stderr
    alice = Client(api, api.token("alice"))
    first = alice.create("q1.bin", 6 * MiB)
    second = alice.create("q2.bin", 6 * MiB)
    over = alice.post("/uploads", {"brokered": True, "key": "q3.bin", "total_bytes": 1})
    assert over.status_code == 413 and "quota" in over.json()["detail"], over.text
    assert alice.post(f"/uploads/{second['id']}/abort", {}).status_code == 200
    assert alice.create("q3.bin", 6 * MiB)["id"]
    assert alice.post(f"/uploads/{first['id']}/abort", {}).status_code == 200
    listed = cli("users", "list", "--database-url", api.database_url)
    assert f"quota {12 * MiB}" in listed.stdout


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
@pytest.mark.parametrize("replicas", ["sqlite", "postgresql"])
def test_creates_at_once_cannot_both_pass_the_quota(s3: S3Server, bucket: str, tmp_path: Path,
                                                    replicas: str) -> None:
    """Eight creates of 7 MiB at the same moment against a 12 MiB quota: exactly one passes (the check and the
    record it allows are one step per user), the others are 413; only that one is on the store. On SQLite, one
    server; on PostgreSQL, two replicas of one database, the creates spread over both."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.server.support import create_pg_database, drop_pg_database

    database = create_pg_database() if replicas == "postgresql" else None
    servers: list[Api] = []
    try:
        first = Api(tmp_path / "a", env=serve_env(s3, bucket), database=database)
        first.tmp.mkdir()
        servers.append(first.prepare("alice"))
        if database is not None:
            second = Api(tmp_path / "b", env=serve_env(s3, bucket), database=database)
            second.tmp.mkdir()
            servers.append(second.start())
        done = cli("users", "set", "alice", "--quota", "12MiB", "--database-url", first.database_url)
        assert done.returncode == 0, done.stderr
        token = first.token("alice")
        clients = [Client(api, token) for api in servers]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda n: clients[n % len(clients)].post("/uploads", {
                "brokered": True, "key": f"race-{n}.bin", "total_bytes": 7 * MiB, "part_size": 5 * MiB,
                "checksum_algorithm": "crc32c"}), range(8)))
        assert sorted(a.status_code for a in answers) == [200] + [413] * 7, [(a.status_code, a.text)
                                                                               for a in answers]
        assert len(store_uploads(s3, bucket)) == 1
        [won] = [a.json() for a in answers if a.status_code == 200]
        assert clients[0].post(f"/uploads/{won['id']}/abort", {}).status_code == 200
    finally:
        for api in servers:
            api.stop()
        if database is not None:
            drop_pg_database(database)


def test_server_without_storage_refuses_brokered(tmp_path: Path) -> None:
    api = Api(tmp_path).prepare("alice")
    try:
        token = api.token("alice")
        answer = httpx.post(f"{api.url}/api/v1/uploads", json={"brokered": True, "key": "a", "total_bytes": 1},
                            headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 409 and "no storage" in answer.json()["detail"]
        # a record of a direct upload still works as before
        answer = httpx.post(f"{api.url}/api/v1/uploads", json={
            "filename": "f", "bucket": "b", "key": "k", "total_bytes": 5, "part_size": 0, "parts_total": 1,
            "host": "h"}, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 200 and answer.json()["brokered"] is False
        assert "storage_key" not in answer.json()  # the brokered fields are a brokered record's only
        bad = httpx.post(f"{api.url}/api/v1/uploads", json={"filename": "f", "bucket": "b", "key": "k"},
                         headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert bad.status_code == 422
    finally:
        api.stop()




STOP_MUTATION = "mutation Stop($id: ID!) { stopUpload(id: $id) { id status stopRequested } }"


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_stop_from_the_dashboard_aborts_on_the_store(served: tuple[Api, S3Server, str]) -> None:
    """The CLI is gone (nothing but the server touches the upload): Stop aborts on the store itself."""
    api, s3, bucket = served
    token = api.token("alice")
    alice = Client(api, token)
    plan = one_part_sent(alice, "stopped.bin")
    assert store_uploads(s3, bucket) == [f"{PREFIX}/alice/stopped.bin"]
    # someone else's Stop finds nothing, and changes nothing
    denied = api.graphql(api.token("bob"), STOP_MUTATION, {"id": plan["id"]})
    assert denied.get("errors"), denied
    assert store_uploads(s3, bucket) == [f"{PREFIX}/alice/stopped.bin"]
    answer = api.graphql(token, STOP_MUTATION, {"id": plan["id"]})
    assert not answer.get("errors"), answer
    assert store_uploads(s3, bucket) == []
    record = api.record(token, plan["id"])
    assert record["status"] == "stopped", record
    assert alice.sign(plan["id"], [(2, bytes(MiB))]).status_code == 409  # a CLI that comes back is refused


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_the_reaper_aborts_idle_brokered_uploads(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """``--stale-after``: an upload nothing touched for that long is aborted on the store and recorded stopped,
    with the reason; a completed one is left alone."""
    api = serve(s3, bucket, tmp_path, MPUPLOAD_STALE_AFTER="3s")
    try:
        token = api.token("alice")
        alice = Client(api, token)
        small = os.urandom(1000)
        done = alice.create("kept.bin", len(small), part_size=0)
        assert put(alice.signed(done["id"], [(1, small)])[0], small).status_code == 200
        assert alice.post(f"/uploads/{done['id']}/complete", {"parts": [
            {"number": 1, "checksum": crc32c(small), "content_md5": md5(small)}]}).status_code == 200
        idle = one_part_sent(alice, "idle.bin")
        assert store_uploads(s3, bucket) == [f"{PREFIX}/alice/idle.bin"]

        record = until(lambda: (r := api.record(token, idle["id"]))["status"] == "stopped" and r, 60,
                       "the reaper to stop the idle upload", every=0.25)
        assert "idle for more than 3 s" in record["error"], record
        assert store_uploads(s3, bucket) == []
        assert api.record(token, done["id"])["status"] == "completed"
        assert s3.client().get_object(Bucket=bucket, Key=f"{PREFIX}/alice/kept.bin")["Body"].read() == small
    finally:
        api.stop()


def test_stale_after_is_checked(tmp_path: Path) -> None:
    bad = cli("serve", "--stale-after", "soon", "--port", "1", "--database-url", f"sqlite:///{tmp_path}/db.sqlite")
    assert bad.returncode == 2 and "--stale-after 'soon'" in bad.stderr, bad.stderr
    assert bad.stderr.count("\n") == 1, bad.stderr


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_dashboard_marks_brokered_uploads_and_stops_one_whose_cli_is_gone(
        served: tuple[Api, S3Server, str]) -> None:
    """The row of a brokered upload says so; its Stop button shows although no CLI reports (the CLI is gone),
    and pressing it leaves nothing on the store. A direct upload's row has no marker."""
    from playwright.sync_api import expect

    from tests.integration.api_support import PASSWORD
    from tests.integration.dashboard_page import DashboardPage, launch_chromium

    api, s3, bucket = served
    token = api.token("alice")
    alice = Client(api, token)
    plan = one_part_sent(alice, "orphan.bin")
    direct = alice.post("/uploads", {"filename": "d.bin", "bucket": bucket, "key": "d.bin", "total_bytes": 5,
                                     "part_size": 0, "parts_total": 1, "host": "h"})
    assert direct.status_code == 200, direct.text
    with launch_chromium() as browser:
        board = DashboardPage.open(browser, api.url)
        try:
            board.sign_in("alice", PASSWORD)
            row = board.row(plan["id"])
            expect(row.locator(".name .brokered")).to_be_visible()
            expect(board.row(direct.json()["id"]).locator(".name .brokered")).to_be_hidden()
            stop = row.locator(".actions button.stop")
            expect(stop).to_be_visible()
            stop.click()
            expect(row.locator(".status")).to_have_text("STOPPED")
        finally:
            board.close()
        assert board.errors == []
    assert store_uploads(s3, bucket) == []
    assert api.record(token, plan["id"])["status"] == "stopped"
