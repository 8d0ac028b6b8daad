"""One object's upload (the ObjectUpload state machine) run in this process against the in-memory Store.

Fakes only for the store: the engine, its executors (threads: an in-memory store cannot go to worker processes),
the journal and the aggregator are the real ones. What is checked is what a user relies on: the Ctrl+C phases,
retries by error code, resume decisions and verification outcomes, counted in requests the store received.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mpupload import errors as E
from mpupload.api import upload_file
from mpupload.engine import probe
from mpupload.engine.cancel import CancelToken
from mpupload.options import ChecksumMode, UploadOptions, UploadResult
from mpupload.storage.memory import MemoryStore
from mpupload.storage.port import CompletedPart
from mpupload.wire import Event, Snapshot

MiB = 1024 * 1024
BUCKET = "fn"
PART = 5 * MiB


class Recorder:
    """A sink that keeps every snapshot."""

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []

    def emit(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)

    def close(self) -> None:
        pass

    @property
    def events(self) -> list[Event]:
        return [s.event for s in self.snapshots]

    @property
    def final(self) -> Snapshot:
        return self.snapshots[-1]


@pytest.fixture(autouse=True)
def fresh_probe_cache() -> Iterator[None]:
    probe.clear_cache()  # what a store checks is learned once per process: each test has its own store
    yield
    probe.clear_cache()


class Parts:
    """The UploadPart calls a store received for real parts (the store probe's small throwaway parts aside)."""

    def __init__(self, store: MemoryStore) -> None:
        self.calls = 0
        self.numbers: list[int] = []
        store.before("UploadPart", self._count)

    def _count(self, op: str, params: dict[str, Any]) -> None:
        if params["ContentLength"] != len(probe.PROBE_BODY):
            self.calls += 1
            self.numbers.append(params["PartNumber"])


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(BUCKET)


@pytest.fixture
def parts(store: MemoryStore) -> Parts:
    return Parts(store)


def make(tmp_path: Path, size: int, name: str = "f.bin") -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def run(path: Path, store: MemoryStore, recorder: Recorder | None = None, *, cancel: CancelToken | None = None,
        **options: Any) -> UploadResult:
    options.setdefault("part_size", PART)
    options.setdefault("workers", 2)
    options.setdefault("resume_command", "mpupload upload f.bin s3://fn/k --resume")
    return upload_file(str(path), BUCKET, "k", store=store, options=UploadOptions(**options),
                       sinks=[recorder] if recorder else (), cancel=cancel)


def stored(store: MemoryStore) -> bytes | None:
    obj = store.object(BUCKET, "k")
    return None if obj is None else obj.data


def cancel_before(store: MemoryStore, operation: str, token: CancelToken, *, after: int = 0) -> None:
    """Cancel ``token`` just before the (after+1)-th call of ``operation`` (the store probe's parts not counted)."""
    seen = {"n": 0}

    def hook(op: str, params: dict[str, Any]) -> None:
        if params.get("ContentLength") == len(probe.PROBE_BODY):
            return
        seen["n"] += 1
        if seen["n"] == after + 1:
            token.cancel("interrupted")

    store.before(operation, hook)


# -- the happy paths ------------------------------------------------------------------------------------------------
def test_a_multipart_upload_is_sent_completed_and_verified(tmp_path: Path, store: MemoryStore, parts: Parts) -> None:
    path, data = make(tmp_path, 12 * MiB)
    rec = Recorder()
    result = run(path, store, rec)
    assert stored(store) == data
    assert result.verified == "crc32c" and result.parts_total == 3
    assert rec.events[0] is Event.STARTED and rec.final.event is Event.COMPLETED
    assert rec.final.bytes_done == len(data) and rec.final.parts_done == 3
    assert max(s.bytes_done for s in rec.snapshots) <= len(data)  # progress never exceeds the size
    assert parts.calls == 3
    assert store.uploads(BUCKET) == {}  # the probe's throwaway upload is gone too


def test_a_small_file_is_one_put_through_the_same_checks(tmp_path: Path, store: MemoryStore) -> None:
    path, data = make(tmp_path, 100_000)
    rec = Recorder()
    result = run(path, store, rec)
    assert stored(store) == data and result.parts_total == 1
    assert store.calls["PutObject"] == 1 and store.calls["CreateMultipartUpload"] == 0
    assert result.verified in ("crc32c", "md5")
    assert rec.final.event is Event.COMPLETED


# -- retries by error code ----------------------------------------------------------------------------------------
def test_a_part_refused_with_a_server_error_is_sent_again(tmp_path: Path, store: MemoryStore, parts: Parts) -> None:
    path, data = make(tmp_path, 12 * MiB)
    store.fail("UploadPart", 2, code="InternalError", status=500)
    run(path, store, checksum=ChecksumMode.NONE)  # no probe: the first UploadParts are the parts'
    assert stored(store) == data
    assert parts.calls == 3 + 2


def test_a_put_throttled_is_sent_again(tmp_path: Path, store: MemoryStore) -> None:
    path, data = make(tmp_path, 1000)
    store.fail("PutObject", 1, code="SlowDown", status=503)
    run(path, store)
    assert stored(store) == data and store.calls["PutObject"] == 2


def test_access_denied_is_not_retried_and_the_upload_is_aborted(tmp_path: Path, store: MemoryStore,
                                                                 parts: Parts) -> None:
    path, _ = make(tmp_path, 12 * MiB)
    store.fail("UploadPart", 1, code="AccessDenied", status=403)
    rec = Recorder()
    with pytest.raises(E.AuthError):
        run(path, store, rec, checksum=ChecksumMode.NONE)
    assert sorted(set(parts.numbers)) == sorted(parts.numbers)  # no part was sent twice: a 403 is not retried
    assert store.uploads(BUCKET) == {} and stored(store) is None
    assert rec.final.event is Event.FAILED and "resume_command" not in rec.final.extra


def test_a_store_error_that_can_pass_keeps_the_upload_for_resume(tmp_path: Path, store: MemoryStore) -> None:
    path, _ = make(tmp_path, 12 * MiB)
    store.fail("UploadPart", 50, code="InternalError", status=500)
    rec = Recorder()
    with pytest.raises(E.UploadFailed) as caught:
        run(path, store, rec, checksum=ChecksumMode.NONE)
    err = caught.value
    assert err.resume_command and str(err).endswith(f"continue it with {err.resume_command}")
    assert len(store.uploads(BUCKET)) == 1  # kept, to be resumed
    assert rec.final.extra["resume_command"] == err.resume_command


def test_an_upload_aborted_behind_our_back_is_gone_not_kept(tmp_path: Path, store: MemoryStore) -> None:
    path, _ = make(tmp_path, 12 * MiB)

    def abort_it(op: str, params: dict[str, Any]) -> None:
        store.abort_multipart_upload(BUCKET, "k", params["UploadId"])

    store.before("UploadPart", abort_it, once=True)
    rec = Recorder()
    with pytest.raises(E.UploadGone):
        run(path, store, rec, checksum=ChecksumMode.NONE)
    assert store.uploads(BUCKET) == {} and "store_upload_id" not in rec.final.extra


# -- Ctrl+C, phase by phase -------------------------------------------------------------------------------------
def test_ctrl_c_before_the_upload_exists_creates_nothing(tmp_path: Path, store: MemoryStore) -> None:
    path, _ = make(tmp_path, 12 * MiB)
    token = CancelToken()
    token.cancel("interrupted")
    rec = Recorder()
    with pytest.raises(E.Cancelled, match="nothing was sent"):
        run(path, store, rec, cancel=token)
    assert store.calls["CreateMultipartUpload"] == 0 and store.calls["UploadPart"] == 0
    assert rec.final.event is Event.STOPPED and rec.final.extra["kept"] is False


def test_ctrl_c_during_the_parts_aborts_and_confirms(tmp_path: Path, store: MemoryStore) -> None:
    path, _ = make(tmp_path, 12 * MiB)
    token = CancelToken()
    cancel_before(store, "UploadPart", token, after=1)
    rec = Recorder()
    with pytest.raises(E.Cancelled, match="the multipart upload was aborted"):
        run(path, store, rec, cancel=token, checksum=ChecksumMode.NONE)
    assert store.uploads(BUCKET) == {} and stored(store) is None
    assert store.calls["ListParts"] >= 1  # the abort was confirmed
    assert rec.final.extra["aborted"] is True and rec.final.extra["kept"] is False
    assert token.left_behind is None  # nothing at stake any more


def test_ctrl_c_with_keep_on_interrupt_keeps_it_and_says_how_to_resume(tmp_path: Path, store: MemoryStore) -> None:
    path, _ = make(tmp_path, 12 * MiB)
    token = CancelToken()
    cancel_before(store, "UploadPart", token, after=1)
    rec = Recorder()
    with pytest.raises(E.Cancelled, match="kept: continue it with mpupload upload"):
        run(path, store, rec, cancel=token, keep_on_interrupt=True, checksum=ChecksumMode.NONE)
    assert len(store.uploads(BUCKET)) == 1 and store.calls["AbortMultipartUpload"] == 0
    assert rec.final.extra["kept"] is True and rec.final.extra["store_upload_id"]


def test_ctrl_c_during_complete_is_too_late_to_stop_it(tmp_path: Path, store: MemoryStore) -> None:
    path, data = make(tmp_path, 12 * MiB)
    token = CancelToken()
    cancel_before(store, "CompleteMultipartUpload", token)
    result = run(path, store, cancel=token)
    assert stored(store) == data and result.verified == "crc32c"
    assert any("too late to stop it" in w for w in result.warnings)


def test_an_abort_the_store_refuses_is_reported_with_its_cleanup_command(tmp_path: Path, store: MemoryStore) -> None:
    path, _ = make(tmp_path, 12 * MiB)
    token = CancelToken()
    cancel_before(store, "UploadPart", token, after=1)
    store.fail("AbortMultipartUpload", 10, code="AccessDenied", status=403)
    rec = Recorder()
    with pytest.raises(E.Cancelled, match="could NOT be aborted.*left on the store"):
        run(path, store, rec, cancel=token, checksum=ChecksumMode.NONE)
    (left,) = rec.final.extra["left_behind"]
    assert left["upload_id"] in store.uploads(BUCKET) and "abort-multipart-upload" in left["cleanup_command"]
    assert rec.final.extra["aborted"] is False


def test_two_uploads_in_one_process_keep_their_own_stakes(tmp_path: Path) -> None:
    """N object uploads in one process: nothing is per process (the cancel token keeps stakes per upload)."""
    first, second = MemoryStore(BUCKET), MemoryStore(BUCKET)
    (p1, d1), (p2, d2) = make(tmp_path, 12 * MiB, "a.bin"), make(tmp_path, 6 * MiB, "b.bin")
    token = CancelToken()
    run(p1, first, cancel=token)
    run(p2, second, cancel=token)
    assert stored(first) == d1 and stored(second) == d2 and token.left_behind is None


# -- resume decisions --------------------------------------------------------------------------------------------
def _interrupted_run(path: Path, store: MemoryStore, parts_sent: int) -> None:
    token = CancelToken()
    cancel_before(store, "UploadPart", token, after=parts_sent)
    with pytest.raises(E.Cancelled):
        run(path, store, cancel=token, keep_on_interrupt=True, workers=1, checksum=ChecksumMode.CRC32C)


def test_resume_sends_only_the_missing_parts(tmp_path: Path, store: MemoryStore) -> None:
    path, data = make(tmp_path, 17 * MiB)  # four parts
    _interrupted_run(path, store, parts_sent=2)
    sent_before = store.calls["UploadPart"]
    result = run(path, store, resume=True, checksum=ChecksumMode.CRC32C)
    assert stored(store) == data
    assert result.resumed_parts == 2 and store.calls["UploadPart"] - sent_before == 2
    assert store.uploads(BUCKET) == {}


def test_resume_after_the_file_changed_refuses_and_keeps_the_upload(tmp_path: Path, store: MemoryStore) -> None:
    path, _ = make(tmp_path, 17 * MiB)
    _interrupted_run(path, store, parts_sent=1)
    path.write_bytes(os.urandom(17 * MiB))
    with pytest.raises(E.SourceChanged, match="changed since the interrupted upload"):
        run(path, store, resume=True)
    assert len(store.uploads(BUCKET)) == 1


def test_resume_of_an_upload_completed_meanwhile_reports_it_done(tmp_path: Path, store: MemoryStore) -> None:
    """The interrupted run's Complete went through (its answer was lost): the object is shown to be this file."""
    path, data = make(tmp_path, 12 * MiB)
    store.fail("CompleteMultipartUpload", 1, code="InternalError", status=500)
    with pytest.raises(E.UploadFailed):  # every part sent; Complete failed: the upload and its journal are kept
        run(path, store, checksum=ChecksumMode.CRC32C)
    (upload_id, numbers), = store.uploads(BUCKET).items()
    listing = store.list_parts(BUCKET, "k", upload_id)
    from mpupload.checksums import Algorithm
    from mpupload.storage.port import Checksum

    store.complete_multipart_upload(BUCKET, "k", upload_id, [
        CompletedPart(n, p.etag, Checksum(Algorithm.CRC32C, p.checksum) if p.checksum else None)
        for n, p in sorted(listing.parts.items())])
    sent_before = store.calls["UploadPart"]
    rec = Recorder()
    result = run(path, store, rec, resume=True)
    assert result.verified == "crc32c" and result.resumed_parts == 3 and stored(store) == data
    assert store.calls["UploadPart"] == sent_before and rec.final.event is Event.COMPLETED


def test_resume_never_takes_another_object_of_the_same_size_for_this_file(tmp_path: Path,
                                                                          store: MemoryStore) -> None:
    path, data = make(tmp_path, 12 * MiB)
    _interrupted_run(path, store, parts_sent=1)
    (upload_id, _), = store.uploads(BUCKET).items()
    store.abort_multipart_upload(BUCKET, "k", upload_id)
    other = os.urandom(12 * MiB)
    store.put_object(BUCKET, "k", other, content_length=len(other))
    result = run(path, store, resume=True)
    assert stored(store) == data and result.resumed_parts == 0
    assert any("cannot be shown to be this file" in w for w in result.warnings)


# -- verification outcomes ---------------------------------------------------------------------------------------
def test_a_lost_complete_answer_is_recovered_by_identifying_the_object(tmp_path: Path, store: MemoryStore) -> None:
    path, data = make(tmp_path, 12 * MiB)

    def complete_then_lose_the_answer(op: str, params: dict[str, Any]) -> None:
        store.complete_multipart_upload(params["Bucket"], params["Key"], params["UploadId"], params["Parts"])
        store.fail("CompleteMultipartUpload", 1, code="InternalError", status=500)

    store.before("CompleteMultipartUpload", complete_then_lose_the_answer, once=True)
    result = run(path, store)
    assert stored(store) == data and result.verified == "crc32c"


def test_a_store_that_checks_nothing_is_verified_by_size_with_one_note(tmp_path: Path) -> None:
    store = MemoryStore(BUCKET, checks_checksums=False, checks_content_md5=False, md5_etags=False)
    path, data = make(tmp_path, 12 * MiB)
    result = run(path, store)
    assert stored(store) == data and result.verified == "size-only"
    assert sum("only the object's size was checked" in w for w in result.warnings) == 1


def test_read_back_verifies_the_bytes_when_the_store_checks_nothing(tmp_path: Path) -> None:
    store = MemoryStore(BUCKET, checks_checksums=False, checks_content_md5=False, md5_etags=False)
    path, data = make(tmp_path, 12 * MiB)
    result = run(path, store, verify="read-back")
    assert stored(store) == data and result.verified == "read-back" and store.calls["GetObject"] >= 1


class SigningStore(MemoryStore):
    """An in-memory store that, like the brokered one, signs each part's URL for its body: a worker gets runs of
    at most ``window`` parts, hashes them and has them signed in one request; each part's PUT then names the
    checksum it was signed for (checked here against what the store received)."""

    def __init__(self, window: int) -> None:
        super().__init__(BUCKET)
        self.window = window
        self.requests: list[list[int]] = []
        self.signed: dict[int, str | None] = {}

    def sign_window(self, part_size: int) -> int:
        return self.window

    def sign_ahead(self, upload_id: str, parts: Any) -> None:
        with self._lock:
            self.requests.append([number for number, *_ in parts])
            for number, _size, checksum, _md5 in parts:
                self.signed[number] = checksum.value if checksum is not None else None

    def upload_part(self, bucket: str, key: str, upload_id: str, part_number: int, body: Any, *,
                    content_length: int, checksum: Any = None, content_md5: str | None = None) -> dict[str, Any]:
        value = checksum.value if checksum is not None else None
        with self._lock:
            if content_length == len(probe.PROBE_BODY):  # the store probe's throwaway upload
                pass
            elif part_number not in self.signed:  # not signed ahead: signed alone, as it goes (a request of its own)
                self.requests.append([part_number])
                self.signed[part_number] = value
            signed = self.signed.pop(part_number, value)
        assert signed == value, (part_number, signed)
        return super().upload_part(bucket, key, upload_id, part_number, body, content_length=content_length,
                                   checksum=checksum, content_md5=content_md5)


def test_a_store_that_signs_parts_gets_them_in_runs_signed_ahead(tmp_path: Path) -> None:
    """17 parts, 2 workers, a window of 4: each part's URL was signed once, for the body it then sent, in runs of
    at most 4 (guided: the last runs are single parts, signed as they go): in far fewer requests than parts."""
    store = SigningStore(window=4)
    path, data = make(tmp_path, 16 * PART + 123)
    result = run(path, store, checksum=ChecksumMode.CRC32C)
    assert stored(store) == data and result.parts_total == 17
    assert sorted(n for request in store.requests for n in request) == list(range(1, 18)), store.requests
    assert all(len(request) <= 4 for request in store.requests), store.requests
    assert sum(len(request) == 4 for request in store.requests) >= 3, store.requests
    assert len(store.requests) <= 9, store.requests
