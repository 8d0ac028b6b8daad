"""Trust on stores that differ from AWS in ways moto and Ceph cannot show: ETags that are not MD5s, stores that
check nothing, bucket-default SSE-KMS, write-only credentials, aborts that are refused, credentials that expire
mid-upload, bytes corrupted at rest. The store is ``tests/support/odd_store.py`` (the discard endpoint with
flags), a real process; the CLI is the real one. Each test failed on the code before the trust fixes.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.cli import (
    CliProcess,
    cli_env,
    events,
    make_file,
    multipart_uploads,
    run_cli,
    sha256_file,
    start_cli,
)
from tests.support.odd_store import OddStore
from tests.support.proxy import proxy_for
from tests.support.s3server import wait_until

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
BUCKET = "odd"
Factory = Callable[..., OddStore]


def _store(odd_store: Factory, *flags: str) -> OddStore:
    store = odd_store(*flags)
    store.client().create_bucket(Bucket=BUCKET)
    return store


def _upload(store: Any, src: Path, key: str, *args: str, state: Path | None = None) -> Any:
    env = cli_env(store, **({"MPUPLOAD_STATE_DIR": str(state)} if state else {}))
    return run_cli("upload", str(src), f"s3://{BUCKET}/{key}", "--progress", "json", *args, env=env)


def _object_sha256(store: OddStore, key: str) -> str:
    import hashlib

    body = store.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return hashlib.sha256(body).hexdigest()


def _real_part_counts(store: OddStore, upload_id: str) -> dict[str, int]:
    counts: dict[str, int] = store.stats()["part_uploads"].get(upload_id, {})
    return counts


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "WARNING" in line or "warning:" in line]


# -- 2. a multipart ETag of another form is not corruption ------------------------------------------------------------
@pytest.mark.parametrize("form", ["random", "object-md5"])
def test_a_multipart_etag_of_another_form_never_deletes_a_correct_object(odd_store: Factory, tmp_path: Path,
                                                                         form: str) -> None:
    """Parts get MD5 ETags, the store checks no checksum header, the object's ETag is not md5(part md5s)-N:
    the object was deleted and the run failed. Now: kept, verified by the parts' MD5 ETags."""
    store = _store(odd_store, "--checks-nothing", "--keep-bodies", "--multipart-etag", form)
    src = make_file(tmp_path / "f.bin", 12 * MiB, seed=1)
    proc = _upload(store, src, "k", "--part-size", "5MiB")
    assert proc.returncode == 0, proc.stderr
    final = events(proc.stdout)[-1]
    assert final["event"] == "completed" and final["verified"] == "md5", final
    assert _object_sha256(store, "k") == sha256_file(src)
    assert store.stats()["requests"]["DeleteObject"] == 0
    assert _warnings(proc.stderr) == [], proc.stderr


# -- 3. a store that checks nothing: one warning, each part sent once; or --verify read-back ---------------------------
@pytest.mark.parametrize("echo", [False, True], ids=["silent", "echoes-checksums"])
@pytest.mark.parametrize("size", [12 * MiB, 3 * MiB], ids=["multipart", "single-put"])
def test_a_store_that_checks_nothing(odd_store: Factory, tmp_path: Path, echo: bool, size: int) -> None:
    flags = ["--checks-nothing", "--etags", "random", "--multipart-etag", "random", "--keep-bodies"]
    store = _store(odd_store, *flags, *(["--echo-checksums"] if echo else []))
    src = make_file(tmp_path / "f.bin", size, seed=2)
    proc = _upload(store, src, "k", "--part-size", "5MiB")
    assert proc.returncode == 0, proc.stderr
    final = events(proc.stdout)[-1]
    # an echoed checksum is what we sent, not what the store computed: no evidence of anything
    assert final["verified"] == "size-only", final
    lines = _warnings(proc.stderr)
    assert len(lines) == 1 and "only the object's size" in lines[0] and "--verify read-back" in lines[0], lines
    stats = store.stats()
    if size > 5 * MiB:
        assert _real_part_counts(store, final["store_upload_id"]) == {"1": 1, "2": 1, "3": 1}  # each part once
    else:
        assert stats["requests"]["PutObject"] == 1
    assert _object_sha256(store, "k") == sha256_file(src)

    proc = _upload(store, src, "k2", "--part-size", "5MiB", "--verify", "read-back")
    assert proc.returncode == 0, proc.stderr
    assert events(proc.stdout)[-1]["verified"] == "read-back"
    assert _warnings(proc.stderr) == [], proc.stderr
    assert store.stats()["requests"]["GetObject"] >= (3 if size > 5 * MiB else 1)


@pytest.mark.parametrize("size", [12 * MiB, 3 * MiB], ids=["multipart", "single-put"])
def test_read_back_catches_bytes_corrupted_at_rest(odd_store: Factory, tmp_path: Path, size: int) -> None:
    """ETags and checksums look right, the stored bytes are not: only the read-back sees it. The object is
    deleted (only the version verified: If-Match) and the run fails."""
    store = _store(odd_store, "--keep-bodies", "--corrupt-stored")
    src = make_file(tmp_path / "f.bin", size, seed=3)
    proc = _upload(store, src, "k", "--part-size", "5MiB", "--verify", "read-back")
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "differ from the file" in line and "the object was deleted" in line, line
    assert store.stats()["responses"]["DeleteObject"] == {"204": 1}
    assert store.client().list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0
    assert events(proc.stdout)[-1]["event"] == "failed"


# -- 4. bucket-default SSE-KMS: ETags are not MD5s, the store says so ------------------------------------------------
@pytest.mark.parametrize("checksum", ["auto", "md5"])
@pytest.mark.parametrize("size", [12 * MiB, 3 * MiB], ids=["multipart", "single-put"])
def test_bucket_default_sse_kms(odd_store: Factory, tmp_path: Path, checksum: str, size: int) -> None:
    """No --sse, but the bucket encrypts with KMS: ETags are not MD5s. A single PUT used to be sent 5 times
    and fail. Now each body goes once and the object is verified by what the store does check."""
    store = _store(odd_store, "--sse-kms-default")
    src = make_file(tmp_path / "f.bin", size, seed=4)
    proc = _upload(store, src, "k", "--part-size", "5MiB", "--checksum", checksum)
    assert proc.returncode == 0, proc.stderr
    final = events(proc.stdout)[-1]
    assert final["verified"] == ("crc32c" if checksum == "auto" else "md5"), final
    stats = store.stats()
    if size > 5 * MiB:
        assert _real_part_counts(store, final["store_upload_id"]) == {"1": 1, "2": 1, "3": 1}
    else:
        assert stats["requests"]["PutObject"] == 1
    assert _warnings(proc.stderr) == [], proc.stderr


# -- 6. write-only credentials: HeadObject denied -------------------------------------------------------------------
@pytest.mark.parametrize("size", [12 * MiB, 3 * MiB], ids=["multipart", "single-put"])
def test_write_only_credentials_verify_from_the_uploads_answer(odd_store: Factory, tmp_path: Path,
                                                               size: int) -> None:
    store = _store(odd_store, "--deny-head")
    src = make_file(tmp_path / "f.bin", size, seed=5)
    proc = _upload(store, src, "k", "--part-size", "5MiB")
    assert proc.returncode == 0, proc.stderr
    final = events(proc.stdout)[-1]
    # multipart: the Complete answer's composite checksum, on a store that validates checksums; a single PUT: its
    # answer's ETag, the MD5 the store computed (no need to ask the store anything more)
    assert final["event"] == "completed", final
    assert final["verified"] == ("crc32c" if size > 5 * MiB else "md5"), final
    assert "HeadObject is denied" in proc.stderr, proc.stderr
    listed = store.client().list_objects_v2(Bucket=BUCKET)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("k", size)]


# -- 7. an abort that is refused: reported, never called a success -----------------------------------------------------
def test_refused_abort_of_the_probe_is_reported(odd_store: Factory, tmp_path: Path) -> None:
    store = _store(odd_store, "--deny-abort")
    src = make_file(tmp_path / "f.bin", 12 * MiB, seed=6)
    proc = _upload(store, src, "k", "--part-size", "5MiB")
    assert proc.returncode == 0, proc.stderr
    final = events(proc.stdout)[-1]
    left = final["left_behind"]
    assert len(left) == 1 and left[0]["upload_id"] != final["store_upload_id"], left
    assert "probe" in left[0]["reason"]
    assert left[0]["cleanup_command"].startswith(f"mpupload cleanup s3://{BUCKET}/k --upload-id ")
    assert left[0]["cleanup_command"] in proc.stderr
    assert [u["UploadId"] for u in multipart_uploads(store.client(), BUCKET)] == [left[0]["upload_id"]]


def test_refused_abort_on_ctrl_c_lists_every_upload_left(odd_store: Factory, tmp_path: Path) -> None:
    store = _store(odd_store, "--deny-abort")
    state = tmp_path / "state"
    proxy = proxy_for(store, throttle_bps=3 * MiB)
    try:
        src = make_file(tmp_path / "f.bin", 13 * 5 * MiB, seed=7)
        cli = start_cli("upload", str(src), f"s3://{BUCKET}/k", "--part-size", "5MiB", "--workers", "2",
                        "--progress", "json", env=cli_env(proxy.s3server(store), MPUPLOAD_STATE_DIR=str(state)))
        _wait_progress(cli)
        os.killpg(cli.pid, signal.SIGINT)
        rc = cli.wait(60)
    finally:
        cli.kill_group()
        proxy.stop()
    assert rc == 130, cli.stderr
    stopped = events(cli.stdout)[-1]
    assert stopped["aborted"] is False and stopped["kept"] is False, stopped
    ids = {entry["upload_id"] for entry in stopped["left_behind"]}
    assert ids == {u["UploadId"] for u in multipart_uploads(store.client(), BUCKET)} and len(ids) == 2
    assert stopped["store_upload_id"] in ids
    last = cli.stderr.strip().splitlines()[-1]
    assert "could NOT be aborted" in last and all(i in last for i in ids), last
    assert list(state.glob("*.json")), "the journal stays while its upload is on the store"


# -- 9. credentials that expire mid-upload: the journal is kept when the abort fails too -------------------------------
def test_expired_credentials_keep_the_journal_when_the_abort_fails(odd_store: Factory, tmp_path: Path) -> None:
    store = _store(odd_store, "--expire-after", "5")
    state = tmp_path / "state"
    src = make_file(tmp_path / "f.bin", 13 * 5 * MiB, seed=8)
    proc = _upload(store, src, "k", "--part-size", "5MiB", "--workers", "1", state=state)
    assert proc.returncode == 3, proc.stderr
    failed = events(proc.stdout)[-1]
    assert failed["event"] == "failed" and failed["error_type"] == "AuthError", failed
    assert [e["upload_id"] for e in failed["left_behind"]] == [failed["store_upload_id"]]
    assert failed["left_behind"][0]["cleanup_command"] in proc.stderr
    assert list(state.glob("*.json")), "the upload is still on the store: its journal stays"


# -- 5. Ctrl+C while a --resume run checks the stored parts ----------------------------------------------------------
@pytest.mark.parametrize("flag", [None, "--abort-on-interrupt"], ids=["keeps", "abort-on-interrupt"])
def test_ctrl_c_while_resume_checks_stored_parts_stops_at_once(odd_store: Factory, tmp_path: Path,
                                                              flag: str | None) -> None:
    """No journal: every stored part is read back from the file and hashed before anything is sent (2 GiB
    here). Ctrl+C used to wait for all of it and then abort the upload being resumed. Now it stops within a
    chunk and keeps the upload as it was (or aborts it, when asked to)."""
    store = _store(odd_store)  # the discard endpoint: lists sizes and checksums, keeps no bytes
    size, part = 2048 * MiB, 32 * MiB
    src = tmp_path / "sparse.bin"
    with open(src, "wb") as fh:
        fh.truncate(size)
    client = store.client()
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key="k", ChecksumAlgorithm="CRC32C")["UploadId"]
    zeros = bytes(part)
    from mpupload.checksums import Algorithm, b64, new_hasher

    crc = new_hasher(Algorithm.CRC32C)
    crc.update(zeros)
    for number in range(1, size // part + 1):
        client.upload_part(Bucket=BUCKET, Key="k", UploadId=upload_id, PartNumber=number, Body=zeros,
                           ChecksumCRC32C=b64(crc.digest()))
    cli = start_cli("upload", str(src), f"s3://{BUCKET}/k", "--resume", "--workers", "2", "--progress", "json",
                    *([flag] if flag else []), env=cli_env(store, MPUPLOAD_STATE_DIR=str(tmp_path / "state")))
    try:
        proc = psutil.Process(cli.pid)
        wait_until(lambda: proc.io_counters().read_chars > 64 * MiB, 60, "the stored parts to be checked")
        os.killpg(cli.pid, signal.SIGINT)
        most = 0
        while cli.popen.poll() is None:
            try:
                most = max(most, proc.io_counters().read_chars)
            except psutil.Error:
                break
        rc = cli.wait(30)
    finally:
        cli.kill_group()
    assert rc == 130, cli.stderr
    assert most < size // 2, f"{most} bytes read: the check went on after Ctrl+C"
    stopped = events(cli.stdout)[-1]
    if flag:
        assert stopped["event"] == "stopped" and stopped["aborted"] is True and stopped["kept"] is False, stopped
        assert "the multipart upload was aborted" in cli.stderr.strip().splitlines()[-1]
        assert multipart_uploads(client, BUCKET) == []
        return
    assert stopped["event"] == "stopped" and stopped["kept"] is True and stopped["aborted"] is False, stopped
    assert stopped["store_upload_id"] == upload_id
    assert "is kept as it was" in cli.stderr.strip().splitlines()[-1]
    assert [u["UploadId"] for u in multipart_uploads(client, BUCKET)] == [upload_id]
    assert len(client.list_parts(Bucket=BUCKET, Key="k", UploadId=upload_id)["Parts"]) == size // part


def _wait_progress(cli: CliProcess, parts: int = 1) -> None:
    cli.wait_line(lambda l: l.startswith("{") and json.loads(l)["parts_done"] >= parts, 90)
