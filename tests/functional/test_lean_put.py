"""The lean PutObject (mpupload/storage/lean.py) against a scripted HTTP server in this process
(tests/support/scripted_http.py): the request it writes compared with botocore's for the same arguments, its
answer and its errors compared with botocore's, its connections (kept alive, per thread, per process, dropped
after an error), and the worker's retries over it."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mpupload import errors as E
from mpupload.checksums import Algorithm, b64, new_hasher
from mpupload.engine.counter import ByteCounter, CancelFlag
from mpupload.engine.reader import PartReader
from mpupload.engine.worker import PartJob, PartTarget, WorkerConfig, upload_one_part
from mpupload.plan import Part
from mpupload.storage.boto3_store import Boto3Store
from mpupload.storage.config import StoreConfig
from mpupload.storage.errors import StoreError, classify, error_code, http_status, is_retryable
from mpupload.storage.port import Checksum
from tests.support.scripted_http import Reply, ScriptedServer, Seen, s3_error

KEY = "dir with space/ünï+cödé=~ (1).txt"
BODY = os.urandom(65536)
#: headers that differ between the two paths by design (or by the clock)
NOT_COMPARED = {"user-agent", "expect", "amz-sdk-invocation-id", "amz-sdk-request", "authorization", "x-amz-date",
                "accept-encoding"}


def _crc(data: bytes) -> Checksum:
    h = new_hasher(Algorithm.CRC32C)
    h.update(data)
    return Checksum(Algorithm.CRC32C, b64(h.digest()))


def _md5(data: bytes) -> str:
    h = new_hasher(Algorithm.MD5)
    h.update(data)
    return b64(h.digest())


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDLEAN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "lean-secret")
    monkeypatch.delenv("MPUPLOAD_LEAN_PUT", raising=False)


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    started: list[ScriptedServer] = []

    def start(script: Callable[[int, Seen], Reply] | None = None) -> ScriptedServer:
        server = ScriptedServer(script)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _store(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, *, lean: bool = True,
           **config: Any) -> Boto3Store:
    monkeypatch.setenv("MPUPLOAD_LEAN_PUT", "1" if lean else "0")
    store = Boto3Store(StoreConfig(endpoint_url=server.url, region="us-east-1", max_attempts=1, **config))
    assert (store.lean_put() is not None) is lean
    return store


ARGS: dict[str, Any] = {"ContentType": "text/plain; charset=utf-8", "Metadata": {"owner": "me", "Mixed-Case": "v"},
                        "StorageClass": "STANDARD_IA", "ServerSideEncryption": "AES256", "CacheControl": "no-cache",
                        "ContentDisposition": 'attachment; filename="x.txt"', "Tagging": "a=b&c=d"}


def _put(store: Boto3Store, body: Any = BODY, key: str = KEY, **kw: Any) -> dict[str, Any]:
    kw.setdefault("content_length", len(BODY))
    return store.put_object("bkt", key, body, **kw)


def test_the_lean_request_is_botocores_request(scripted: Callable[..., ScriptedServer],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    server = scripted()
    kw: dict[str, Any] = {"checksum": _crc(BODY), "content_md5": _md5(BODY), "if_none_match": True,
                          "object_args": ARGS}
    _put(_store(server, monkeypatch, lean=False), **kw)
    _put(_store(server, monkeypatch), **kw)
    theirs, ours = server.requests
    assert ours.method == theirs.method == "PUT"
    assert ours.path == theirs.path == "/bkt/dir%20with%20space/%C3%BCn%C3%AF%2Bc%C3%B6d%C3%A9%3D~%20%281%29.txt"
    assert ours.body == theirs.body == BODY
    assert {k: v for k, v in ours.headers.items() if k not in NOT_COMPARED} == {
        k: v for k, v in theirs.headers.items() if k not in NOT_COMPARED}
    assert "x-amz-sdk-checksum-algorithm" not in ours.headers  # botocore sends none with when_required

    def signed(seen: Seen) -> str:
        return seen.headers["authorization"].split("SignedHeaders=")[1].split(",")[0]

    assert signed(ours) == signed(theirs)
    assert ours.headers["authorization"].split("Credential=")[1].split("/")[2:4] == ["us-east-1", "s3"]


ANSWER_HEADERS = {"x-amz-checksum-crc32c": "AAAAAA==", "x-amz-version-id": "v-123",
                  "x-amz-server-side-encryption": "aws:kms", "x-amz-server-side-encryption-aws-kms-key-id": "k-1",
                  "x-amz-server-side-encryption-bucket-key-enabled": "true", "x-amz-object-size": "65536",
                  "x-amz-id-2": "host-2"}


def test_the_answer_is_shaped_as_botocores(scripted: Callable[..., ScriptedServer],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    server = scripted(lambda i, seen: Reply(headers={**ANSWER_HEADERS, "x-amz-request-id": "same"}))
    theirs = _put(_store(server, monkeypatch, lean=False))
    ours = _put(_store(server, monkeypatch))
    meta_theirs, meta_ours = theirs.pop("ResponseMetadata"), ours.pop("ResponseMetadata")
    assert ours == theirs
    assert ours["BucketKeyEnabled"] is True and ours["Size"] == 65536 and ours["VersionId"] == "v-123"
    for field in ("RequestId", "HostId", "HTTPStatusCode"):
        assert meta_ours[field] == meta_theirs[field]
    assert meta_ours["HTTPHeaders"]["etag"] == meta_theirs["HTTPHeaders"]["etag"]


@pytest.mark.parametrize("status, body, code, retryable, kind", [
    (503, s3_error("SlowDown", "Please reduce your request rate."), "SlowDown", True, E.UploadFailed),
    (500, s3_error("InternalError", "We encountered an internal error."), "InternalError", True, E.UploadFailed),
    (500, b"", "500", True, E.UploadFailed),
    (400, s3_error("BadDigest", "The Content-MD5 you specified did not match"), "BadDigest", True, E.UploadFailed),
    (404, s3_error("NoSuchBucket", "The specified bucket does not exist"), "NoSuchBucket", False, E.BucketNotFound),
    (412, s3_error("PreconditionFailed", "At least one of the pre-conditions failed"), "PreconditionFailed", False,
     E.ObjectExists),
    (403, s3_error("AccessDenied", "Access Denied"), "AccessDenied", False, E.AuthError),
    (403, b"", "403", False, E.AuthError),
    (400, b"<html>a proxy's page</html>", "400", False, E.UploadFailed),
])
def test_error_answers_read_as_botocores(scripted: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch,
                                         status: int, body: bytes, code: str, retryable: bool,
                                         kind: type[E.MpuploadError]) -> None:
    server = scripted(lambda i, seen: Reply(status, {"Content-Type": "application/xml"}, body))
    seen: list[BaseException] = []
    for lean in (False, True):
        with pytest.raises(Exception) as caught:
            _put(_store(server, monkeypatch, lean=lean))
        seen.append(caught.value)
    theirs, ours = seen
    assert isinstance(ours, StoreError) and ours.operation == "PutObject"
    assert error_code(ours) == error_code(theirs) == code
    assert http_status(ours) == http_status(theirs) == status
    assert is_retryable(ours) is is_retryable(theirs) is retryable
    assert type(classify(ours, bucket="bkt", key=KEY)) is type(classify(theirs, bucket="bkt", key=KEY)) is kind


def test_one_connection_is_kept_alive_and_dropped_after_an_error(scripted: Callable[..., ScriptedServer],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    server = scripted(lambda i, seen: Reply(503, body=s3_error("SlowDown")) if i == 3 else Reply())
    store = _store(server, monkeypatch)
    for n in range(3):
        _put(store, key=f"k{n}")
    assert server.connections == 1
    with pytest.raises(StoreError):
        _put(store, key="k3")
    _put(store, key="k4")
    assert server.connections == 2
    assert [r.connection for r in server.requests] == [0, 0, 0, 0, 1]


def test_a_keep_alive_connection_the_server_dropped_is_retried_once_on_a_new_one(
        scripted: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch) -> None:
    server = scripted(lambda i, seen: Reply(hangup=i == 0))
    store = _store(server, monkeypatch)
    counter = ByteCounter(1)
    _put(store, key="first")
    fd = os.memfd_create("body")
    os.write(fd, BODY)
    reader = PartReader(fd, 0, len(BODY), counter=counter)
    answer = _put(store, reader, key="second")
    os.close(fd)
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert [r.path for r in server.requests] == ["/bkt/first", "/bkt/second"]
    assert server.connections == 2
    assert counter.get(0) == reader.counted == len(BODY)  # the rewind took back the first try's bytes


def test_a_reset_on_a_new_connection_is_a_retryable_connection_error(scripted: Callable[..., ScriptedServer],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ConnectionClosedError

    server = scripted(lambda i, seen: Reply(reset=True))
    with pytest.raises(ConnectionClosedError) as caught:
        _put(_store(server, monkeypatch))
    assert is_retryable(caught.value)
    assert isinstance(classify(caught.value), E.StoreUnreachable)
    assert server.connections == 1  # not retried here: the worker's loop retries it


def test_read_timeout_and_refused_connection(scripted: Callable[..., ScriptedServer],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    server = scripted(lambda i, seen: Reply(delay_s=1.0))
    with pytest.raises(ReadTimeoutError) as timed_out:
        _put(_store(server, monkeypatch, read_timeout_s=0.2))
    assert is_retryable(timed_out.value) and isinstance(classify(timed_out.value), E.StoreUnreachable)
    with socket.socket() as bound:  # bound, never listening: a connection to it is refused, and no other test
        bound.bind(("127.0.0.1", 0))  # can take the port meanwhile
        nobody = SimpleNamespace(url=f"http://127.0.0.1:{bound.getsockname()[1]}")
        with pytest.raises(EndpointConnectionError) as refused:
            _put(_store(nobody, monkeypatch))  # type: ignore[arg-type]
    assert is_retryable(refused.value) and isinstance(classify(refused.value), E.StoreUnreachable)


def test_a_redirect_goes_back_to_botocore_for_that_bucket(scripted: Callable[..., ScriptedServer],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    server = scripted(lambda i, seen: Reply(301, body=s3_error("PermanentRedirect", "use another endpoint"))
                      if i == 0 else Reply())
    store = _store(server, monkeypatch)
    answer = _put(store, PartReader(_fd(BODY), 0, len(BODY)))
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    first, second = server.requests
    assert "expect" not in first.headers and second.headers.get("expect") == "100-continue"  # botocore's
    assert second.body == BODY  # the body was rewound for botocore
    lean = store.lean_put()
    assert lean is not None and not lean.accepts("bkt", 10, None)


def _fd(data: bytes) -> int:
    fd = os.memfd_create("body")
    os.write(fd, data)
    return fd


def test_connections_are_per_thread(scripted: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch) -> None:
    server = scripted()
    store = _store(server, monkeypatch)
    barrier = threading.Barrier(4)

    def work(n: int) -> None:
        barrier.wait()
        for i in range(3):
            _put(store, key=f"t{n}/{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(server.requests) == 12 and server.connections == 4
    by_connection: dict[int, set[str]] = {}
    for r in server.requests:
        by_connection.setdefault(r.connection, set()).add(r.path.split("/")[2])
    assert all(len(prefixes) == 1 for prefixes in by_connection.values())


def test_a_forked_child_never_uses_its_parents_connection(scripted: Callable[..., ScriptedServer],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    server = scripted()
    store = _store(server, monkeypatch)
    _put(store, key="parent-1")
    pid = os.fork()
    if pid == 0:  # the child: one PutObject through the inherited store, then out without cleanup
        try:
            _put(store, key="child")
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    _put(store, key="parent-2")
    assert [(r.path, r.connection) for r in server.requests] == [
        ("/bkt/parent-1", 0), ("/bkt/child", 1), ("/bkt/parent-2", 0)]


def test_a_cancel_mid_body_drops_the_connection(scripted: Callable[..., ScriptedServer],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    server = scripted()
    store = _store(server, monkeypatch)
    _put(store, key="before")
    big = os.urandom(3 * 1024 * 1024)
    flag = CancelFlag()
    counter = ByteCounter(1)

    class CancelAfterFirstChunk(PartReader):
        def read(self, amt: int | None = -1) -> bytes:
            data = super().read(amt)
            flag.set()
            return data

    reader = CancelAfterFirstChunk(_fd(big), 0, len(big), counter=counter, cancel=flag)
    with pytest.raises(E.Cancelled):
        store.put_object("bkt", "cancelled", reader, content_length=len(big))
    reader.rollback()
    assert counter.get(0) == 0
    flag.clear()
    _put(store, key="after")
    assert [r.path for r in server.requests] == ["/bkt/before", "/bkt/after"]
    assert server.connections == 2


def _job(path: Path, key: str = "k") -> PartJob:
    target = PartTarget(str(path), "bkt", key, None, Algorithm.CRC32C, md5=True, etag_is_md5=True)
    return PartJob(target, Part(1, 0, path.stat().st_size))


@pytest.mark.parametrize("first, ok, attempts", [
    (Reply(503, body=s3_error("SlowDown", "Please reduce your request rate.")), True, 2),
    (Reply(500, body=b""), True, 2),
    (Reply(reset=True), True, 2),
    (Reply(400, body=s3_error("BadDigest", "The Content-MD5 you specified did not match")), True, 2),
    (Reply(403, body=s3_error("AccessDenied", "Access Denied")), False, 1),
    (Reply(404, body=s3_error("NoSuchBucket", "The specified bucket does not exist")), False, 1),
    (Reply(412, body=s3_error("PreconditionFailed", "At least one of the pre-conditions failed")), False, 1),
])
def test_the_worker_retries_what_a_retry_can_fix(scripted: Callable[..., ScriptedServer],
                                                 monkeypatch: pytest.MonkeyPatch, tmp_path: Path, first: Reply,
                                                 ok: bool, attempts: int) -> None:
    server = scripted(lambda i, seen: first if i == 0 else Reply())
    path = tmp_path / "small.bin"
    path.write_bytes(BODY)
    config = WorkerConfig(_store(server, monkeypatch), backoff_base_s=0.01, backoff_max_s=0.02)
    counter = ByteCounter(1)
    fd = os.open(path, os.O_RDONLY)
    try:
        result = upload_one_part(config.store, fd, config, _job(path), counter, 0, CancelFlag())
    finally:
        os.close(fd)
    assert (result.ok, result.attempts) == (ok, attempts), result.error
    assert counter.get(0) == (len(BODY) if ok else 0)
    if ok:
        assert result.answer is not None and result.etag == result.md5
        assert result.answer["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_the_switch_and_foreign_clients_keep_botocore(scripted: Callable[..., ScriptedServer],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    server = scripted()
    assert _store(server, monkeypatch, lean=False).lean_put() is None  # MPUPLOAD_LEAN_PUT=0
    monkeypatch.setenv("MPUPLOAD_LEAN_PUT", "1")
    store = Boto3Store(StoreConfig(endpoint_url=server.url))
    assert Boto3Store.over_client(store.client).lean_put() is None
