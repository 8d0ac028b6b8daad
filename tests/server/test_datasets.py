"""A directory run's record against a real ``mpupload serve`` (SQLite and PostgreSQL): registration with
``files_total``, the ``files_*`` counts of progress reports and their bounds, ``POST /uploads/{id}/files``
(upsert, bounds, owner), GraphQL ``Upload.files`` (pages, cursor, status filter, owner) and the subscription
seeing a files batch."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
import pytest

from mpupload import wire

from .conftest import token_for
from .gqlws import GqlWs, gql_http
from .support import ServerProcess

pytestmark = pytest.mark.integration

MiB = 1024**2
FILE_FIELDS = " ".join(wire.GRAPHQL_UPLOAD_FILE_FIELDS)
FILES = f"""query($id: ID!, $status: FileStatus, $first: Int, $after: String) {{ upload(id: $id) {{
  id filesTotal filesDone filesFailed filesSkipped
  files(status: $status, first: $first, after: $after) {{ items {{ {FILE_FIELDS} }} endCursor hasNextPage }} }} }}"""
_seq = itertools.count(1)


def register(server: ServerProcess, headers: dict[str, str], files_total: int | None = 3,
             **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"filename": "imagenet", "bucket": "b", "key": "sets/imagenet/", "total_bytes": 10 * MiB,
                            "part_size": 0, "parts_total": 0 if files_total is None else files_total, "host": "box",
                            **extra}
    if files_total is not None:
        body["files_total"] = files_total
    return httpx.post(f"{server.base_url}/api/v1/uploads", json=body, headers=headers)


def dataset(server: ServerProcess, headers: dict[str, str], files_total: int = 3) -> dict[str, Any]:
    response = register(server, headers, files_total)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def report(server: ServerProcess, headers: dict[str, str], upload_id: str, status: str = "uploading",
           bytes_done: int = MiB, **counts: Any) -> httpx.Response:
    body = {"seq": next(_seq), "status": status, "bytes_done": bytes_done, "speed_bps": 1e6, "avg_speed_bps": 1e6,
            "eta_seconds": 3.0, "elapsed_seconds": 1.0, "event": "progress", **counts}
    return httpx.post(f"{server.base_url}/api/v1/uploads/{upload_id}/progress", json=body, headers=headers)


def entry(path: str, status: str = "completed", size: int = 100, bytes_done: int | None = None,
          error: str | None = None) -> dict[str, Any]:
    return {"path": path, "key": f"sets/imagenet/{path}", "size": size,
            "bytes_done": size if bytes_done is None else bytes_done, "status": status, "error": error}


def post_files(server: ServerProcess, headers: dict[str, str], upload_id: str, files: list[Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}/api/v1/uploads/{upload_id}/files", json={"files": files}, headers=headers,
                      timeout=30)


def files_page(server: ServerProcess, headers: dict[str, str], upload_id: str, **variables: Any) -> dict[str, Any]:
    response = gql_http(server.base_url, FILES, {"id": upload_id, **variables}, headers)
    assert response.status_code == 200, response.text
    data = response.json()
    assert not data.get("errors"), data
    upload: dict[str, Any] = data["data"]["upload"]
    return upload


def all_files(server: ServerProcess, headers: dict[str, str], upload_id: str, first: int,
              status: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """Every file through the pages of ``first``: the files and the number of pages read."""
    files: list[dict[str, Any]] = []
    after = None
    for pages in itertools.count(1):
        page = files_page(server, headers, upload_id, first=first, after=after, status=status)["files"]
        files += page["items"]
        if not page["hasNextPage"]:
            return files, pages
        assert page["endCursor"] and pages < 100
        after = page["endCursor"]
    raise AssertionError("unreachable")


def test_a_dataset_registration_and_its_counts(server: ServerProcess) -> None:
    headers = token_for(server.base_url, "heidi")
    record = dataset(server, headers, files_total=3)
    assert [record[n] for n in wire.FILES_FIELDS] == [3, 0, 0, 0]
    assert (record["parts_total"], record["part_size"], record["key"]) == (3, 0, "sets/imagenet/")
    one_file = register(server, headers, None, filename="one.bin", key="k/one.bin", part_size=8 * MiB, parts_total=2)
    assert one_file.status_code == 200 and [one_file.json()[n] for n in wire.FILES_FIELDS] == [None] * 4

    answer = report(server, headers, record["id"], files_done=1, files_failed=1, files_skipped=1, parts_done=1)
    assert answer.status_code == 200 and answer.json()["ignored"] is False, answer.text
    got = answer.json()["upload"]
    assert [got[n] for n in wire.FILES_FIELDS] == [3, 1, 1, 1]
    # the walk found more files: the total rises, and the dataset's parts follow it
    answer = report(server, headers, record["id"], files_total=5, files_done=3, files_failed=1, files_skipped=1,
                    parts_done=3)
    assert answer.status_code == 200, answer.text
    got = answer.json()["upload"]
    assert [got[n] for n in wire.FILES_FIELDS] == [5, 3, 1, 1] and got["parts_total"] == 5
    stored = httpx.get(f"{server.base_url}/api/v1/uploads/{record['id']}", headers=headers).json()
    assert [stored[n] for n in wire.FILES_FIELDS] == [5, 3, 1, 1]

    refused = [
        (dict(files_done=5, files_failed=1), "files_done + files_failed (6) exceeds the record's files_total (5)"),
        (dict(files_total=2, files_done=2, files_failed=1), "exceeds files_total (2)"),
        (dict(files_done=1, files_skipped=2), "files_skipped 2 exceeds files_done 1"),
        (dict(files_done=-1), "files_done must not be negative"),
        (dict(files_total=wire.INT32_MAX + 1), "files_total is at most 2147483647"),
        (dict(files_failed="1"), "files_failed must be a number"),
    ]
    for counts, words in refused:
        response = report(server, headers, record["id"], **counts)
        assert response.status_code == 422 and words in response.json()["detail"], (counts, response.text)
    after = httpx.get(f"{server.base_url}/api/v1/uploads/{record['id']}", headers=headers).json()
    assert [after[n] for n in wire.FILES_FIELDS] == [5, 3, 1, 1]  # nothing refused moved the record
    # a report without counts leaves them as they were
    assert report(server, headers, record["id"], status="failed", error="1 of 5 files failed").status_code == 200
    final = httpx.get(f"{server.base_url}/api/v1/uploads/{record['id']}", headers=headers).json()
    assert final["status"] == "failed" and [final[n] for n in wire.FILES_FIELDS] == [5, 3, 1, 1]


def test_a_dataset_registration_is_bounded(server: ServerProcess) -> None:
    headers = token_for(server.base_url, "heidi")
    for files_total, parts_total, words in ((-1, 0, "files_total must not be negative"),
                                            (wire.INT32_MAX + 1, 0, "files_total is at most"),
                                            (4, 9, "parts_total of a directory run is its files_total (4), got 9")):
        response = register(server, headers, files_total, parts_total=parts_total)
        assert response.status_code == 422 and words in str(response.json()["detail"]), response.text
    response = register(server, headers, 4, parts_total=0)
    assert response.status_code == 200 and response.json()["parts_total"] == 4


def test_files_batches_upsert_and_pages(server: ServerProcess) -> None:
    headers = token_for(server.base_url, "heidi")
    record = dataset(server, headers, files_total=1203)
    upload_id = record["id"]
    # 1,200 files in two full-size batches and a small one; names in byte order differ from a locale's order
    paths = [f"train/{i:04d}.jpg" for i in range(1190)] + ["B.txt", "a.txt", "Zebra/x", "é/ü.bin", "z y/ä b.txt",
                                                           "_/1", "ß", "a", "A", "~"]
    batches = [[entry(p) for p in paths[:1000]], [entry(p) for p in paths[1000:]]]
    for batch in batches:
        response = post_files(server, headers, upload_id, batch)
        assert response.status_code == 200 and response.json() == {"accepted": len(batch)}, response.text

    # the newest state wins: across batches, and within one batch the last entry of a path
    update = [entry("train/0007.jpg", "uploading", size=100, bytes_done=10),
              entry("train/0007.jpg", "uploading", size=100, bytes_done=40),
              entry("train/0011.jpg", "failed", bytes_done=0, error="permission denied: train/0011.jpg"),
              entry("train/0012.jpg", "skipped"),
              entry("new/one.bin", "uploading", size=5 * MiB, bytes_done=MiB)]
    assert post_files(server, headers, upload_id, update).json() == {"accepted": 5}

    files, pages = all_files(server, headers, upload_id, first=500)
    assert pages == 3 and len(files) == len(paths) + 1
    listed = [f["path"] for f in files]
    assert listed == sorted(set(paths) | {"new/one.bin"}, key=lambda p: p.encode())  # byte order, everywhere
    by_path = {f["path"]: f for f in files}
    assert (by_path["train/0007.jpg"]["status"], by_path["train/0007.jpg"]["bytesDone"]) == ("UPLOADING", 40)
    failed = by_path["train/0011.jpg"]
    assert (failed["status"], failed["error"], failed["key"]) == (
        "FAILED", "permission denied: train/0011.jpg", "sets/imagenet/train/0011.jpg")
    assert by_path["train/0012.jpg"]["status"] == "SKIPPED" and by_path["train/0001.jpg"]["error"] is None
    assert by_path["new/one.bin"]["size"] == 5 * MiB and by_path["new/one.bin"]["updatedAt"]

    # the status filter, with small pages (the cursor is the same across filters)
    uploading, pages = all_files(server, headers, upload_id, first=1, status="UPLOADING")
    assert [f["path"] for f in uploading] == ["new/one.bin", "train/0007.jpg"] and pages == 2
    assert [f["path"] for f in all_files(server, headers, upload_id, first=50, status="FAILED")[0]] == [
        "train/0011.jpg"]
    assert all_files(server, headers, upload_id, first=50, status="SKIPPED")[0][0]["path"] == "train/0012.jpg"
    # default page size, and an empty page
    page = files_page(server, headers, upload_id)["files"]
    assert len(page["items"]) == wire.FILES_PAGE_DEFAULT and page["hasNextPage"] is True
    empty = files_page(server, headers, upload_id, first=0)["files"]
    assert empty == {"items": [], "endCursor": None, "hasNextPage": True}
    # a one-file upload has no files
    other = register(server, headers, None, filename="one.bin", key="k/one.bin", parts_total=1).json()
    assert files_page(server, headers, other["id"])["files"] == {"items": [], "endCursor": None, "hasNextPage": False}


def test_files_batch_bounds(server: ServerProcess) -> None:
    headers = token_for(server.base_url, "heidi")
    upload_id = dataset(server, headers, files_total=2000)["id"]
    too_many = post_files(server, headers, upload_id, [entry(f"f{i}") for i in range(wire.FILES_BATCH_MAX + 1)])
    assert too_many.status_code == 413 and "at most 1000 entries, got 1001" in too_many.json()["detail"]
    for bad, status, words in (
        ([entry("ok"), entry("nul\x00here")], 422, "files[1].path must not contain a NUL character"),
        ([entry("x" * 1025)], 422, "files[0].path is at most 1024 bytes"),
        ([entry("é" * 513)], 422, "files[0].path is at most 1024 bytes (UTF-8), got 1026"),
        ([entry("e", error="x" * 4097)], 422, "files[0].error is at most 4096 bytes"),
        ([entry("s", status="done")], 422, "files[0].status must be one of: uploading, completed, failed, skipped"),
        ([entry("b", size=1, bytes_done=2)], 422, "files[0].bytes_done 2 exceeds its size 1"),
        ([entry("n", size=wire.INT64_MAX + 1)], 422, "files[0].size is at most"),
        ([{"path": "p"}], 422, "files[0].key is missing"),
        (["not an object"], 422, "files[0] must be an object"),
    ):
        response = post_files(server, headers, upload_id, bad)
        assert response.status_code == status and words in response.json()["detail"], (words, response.text)
    not_json = httpx.post(f"{server.base_url}/api/v1/uploads/{upload_id}/files", content=b"{nope", headers=headers)
    assert not_json.status_code == 422
    huge = httpx.post(f"{server.base_url}/api/v1/uploads/{upload_id}/files", headers=headers,
                      content=b'{"files": [' + b" " * wire.FILES_BATCH_MAX_BYTES + b"]}")
    assert huge.status_code == 413
    # nothing of a refused batch was stored
    assert files_page(server, headers, upload_id)["files"]["items"] == []
    # exactly at the bounds is fine
    edge = [{**entry("x" * 1024, error="e" * 4096), "key": "k" * 1024}]
    edge += [entry(f"f{i}") for i in range(wire.FILES_BATCH_MAX - 1)]
    assert post_files(server, headers, upload_id, edge).json() == {"accepted": wire.FILES_BATCH_MAX}


def test_someone_elses_files_are_not_found(server: ServerProcess) -> None:
    owner = token_for(server.base_url, "heidi")
    bob = token_for(server.base_url, "bob")
    upload_id = dataset(server, owner, files_total=2)["id"]
    assert post_files(server, owner, upload_id, [entry("secret/plan.txt", "failed", error="boom")]).status_code == 200
    stranger = post_files(server, bob, upload_id, [entry("mine.txt")])
    assert stranger.status_code == 404 and "no upload" in stranger.json()["detail"]
    nobody = post_files(server, bob, "doesnotexist", [entry("mine.txt")])
    assert nobody.status_code == 404 and nobody.json()["detail"] == stranger.json()["detail"].replace(
        upload_id, "doesnotexist")
    assert post_files(server, {}, upload_id, [entry("x")]).status_code == 401
    assert report(server, bob, upload_id, files_done=1).status_code == 404
    # GraphQL: bob sees nothing of it, not even through a cursor
    seen = gql_http(server.base_url, FILES, {"id": upload_id}, bob).json()
    assert seen == {"data": {"upload": None}}
    listed = gql_http(server.base_url, "{ uploads { id files { items { path } } } }", None, bob).json()
    assert upload_id not in [u["id"] for u in listed["data"]["uploads"]]
    assert "secret/plan.txt" not in str(listed)
    # owner's own list is untouched by bob's attempt
    mine = files_page(server, owner, upload_id)["files"]["items"]
    assert [(f["path"], f["error"]) for f in mine] == [("secret/plan.txt", "boom")]


def test_files_page_arguments_are_bounded(server: ServerProcess) -> None:
    headers = token_for(server.base_url, "heidi")
    upload_id = dataset(server, headers, files_total=1)["id"]
    for variables, code, words in (({"first": wire.FILES_PAGE_MAX + 1}, "BAD_USER_INPUT", "first is 0 .. 500"),
                                   ({"first": -1}, "BAD_USER_INPUT", "first is 0 .. 500"),
                                   ({"after": "!!not-a-cursor"}, "BAD_USER_INPUT", "after is not a cursor")):
        data = gql_http(server.base_url, FILES, {"id": upload_id, **variables}, headers).json()
        assert data["errors"][0]["extensions"]["code"] == code and words in data["errors"][0]["message"], data
    assert files_page(server, headers, upload_id, first=wire.FILES_PAGE_MAX)["files"]["items"] == []


def test_a_files_batch_reaches_subscribers(server: ServerProcess) -> None:
    """Subscribers see the counts of a report, and a files batch raises the record's version (the dashboard
    then reads the files again)."""
    headers = token_for(server.base_url, "heidi")
    tok = headers["Authorization"].split()[1]
    upload_id = dataset(server, headers, files_total=4)["id"]
    query = ("subscription($id: ID!) { uploadProgress(id: $id) { id version filesTotal filesDone filesFailed "
             "filesSkipped files(status: FAILED) { items { path error } } } }")

    async def body() -> None:
        async with GqlWs(server.base_url, tok) as ws:
            op = await ws.subscribe(query, {"id": upload_id})
            first = (await ws.next(op))["uploadProgress"]
            assert (first["filesTotal"], first["filesDone"], first["files"]["items"]) == (4, 0, [])
            assert (await asyncio.to_thread(report, server, headers, upload_id, files_done=2, files_failed=1)
                    ).status_code == 200
            counted = (await ws.next(op))["uploadProgress"]
            assert (counted["filesDone"], counted["filesFailed"]) == (2, 1) and counted["version"] > first["version"]
            response = await asyncio.to_thread(post_files, server, headers, upload_id,
                                               [entry("bad.bin", "failed", bytes_done=0, error="gone")])
            assert response.status_code == 200
            listed = (await ws.next(op))["uploadProgress"]
            assert listed["version"] > counted["version"]
            assert listed["files"]["items"] == [{"path": "bad.bin", "error": "gone"}]

    asyncio.run(body())
