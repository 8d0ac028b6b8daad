"""Resume decisions with fake S3 clients: ListParts paging, which upload to resume, which parts to reuse."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from mpupload.checksums import Algorithm, b64, new_hasher
from mpupload.engine import resume as R
from mpupload.engine.resume import (
    AlreadyComplete,
    ListedPart,
    ResumeState,
    find_resume,
    list_parts,
    verify_parts,
)
from mpupload.errors import UploadFailed
from mpupload.journal import Journal, PartRecord, SourceFingerprint
from mpupload.plan import MAX_PARTS, UploadPlan, plan_upload
from mpupload.storage import Boto3Store

MiB = 1024 * 1024


def _client_error(code: str, op: str = "ListParts") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "x"}}, op)


def _raw_part(n: int, size: int, etag: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"PartNumber": n, "Size": size, "ETag": f'"{etag or f"etag{n}"}"', **extra}


class FakeClient:
    """Answers ListParts from a list of pages (or a function), ListMultipartUploads and HeadObject."""

    def __init__(self, pages: Any = None, *, uploads: list[dict[str, Any]] | None = None,
                 head: int | Exception | None = None, list_error: Exception | None = None) -> None:
        self.pages = pages
        self.uploads = uploads or []
        self.head = head
        self.list_error = list_error
        self.list_calls: list[dict[str, Any]] = []
        self.upload_calls: list[dict[str, Any]] = []
        self.head_calls: list[dict[str, Any]] = []

    def list_parts(self, **kwargs: Any) -> dict[str, Any]:
        self.list_calls.append(kwargs)
        if self.list_error is not None:
            raise self.list_error
        if callable(self.pages):
            return self.pages(len(self.list_calls), kwargs)  # type: ignore[no-any-return]
        return self.pages[len(self.list_calls) - 1]  # type: ignore[no-any-return,index]

    def list_multipart_uploads(self, **kwargs: Any) -> dict[str, Any]:
        self.upload_calls.append(kwargs)
        return {"Uploads": [u for u in self.uploads if str(u["Key"]).startswith(kwargs.get("Prefix", ""))],
                "IsTruncated": False}

    def head_object(self, **kwargs: Any) -> dict[str, Any]:
        self.head_calls.append(kwargs)
        if self.head is None:
            raise _client_error("404", "HeadObject")
        if isinstance(self.head, Exception):
            raise self.head
        return {"ContentLength": self.head}


# -- list_parts ---------------------------------------------------------------------------------------------------


def test_list_parts_follows_three_pages() -> None:
    pages = [
        {"Parts": [_raw_part(1, 8 * MiB), _raw_part(2, 8 * MiB)], "IsTruncated": True, "NextPartNumberMarker": 2},
        {"Parts": [_raw_part(3, 8 * MiB), _raw_part(5, 8 * MiB)], "IsTruncated": True, "NextPartNumberMarker": 5},
        {"Parts": [_raw_part(6, 3)], "IsTruncated": False},
    ]
    client = FakeClient(pages)
    got = list_parts(Boto3Store.over_client(client), "b", "k", "up-1")
    assert got is not None and sorted(got) == [1, 2, 3, 5, 6]
    assert got[6] == ListedPart(6, 3, "etag6", None)  # quotes stripped, no checksum asked for
    assert [c["PartNumberMarker"] for c in client.list_calls] == [0, 2, 5]
    assert all(c["Bucket"] == "b" and c["Key"] == "k" and c["UploadId"] == "up-1" for c in client.list_calls)


def test_list_parts_of_an_empty_upload() -> None:
    client = FakeClient([{"IsTruncated": False}])
    assert list_parts(Boto3Store.over_client(client), "b", "k", "up") == {}


@pytest.mark.parametrize(("algorithm", "field"), [
    (Algorithm.CRC32C, "ChecksumCRC32C"), (Algorithm.CRC32, "ChecksumCRC32"), (Algorithm.SHA256, "ChecksumSHA256"),
])
def test_list_parts_picks_the_checksum_of_the_algorithm(algorithm: Algorithm, field: str) -> None:
    part = _raw_part(1, 10, ChecksumCRC32C="c32c", ChecksumCRC32="c32", ChecksumSHA256="sha")
    got = list_parts(Boto3Store.over_client(FakeClient([{"Parts": [part]}])), "b", "k", "u", algorithm)
    assert got == {1: ListedPart(1, 10, "etag1", part[field])}


def test_list_parts_gives_up_on_a_store_that_is_always_truncated() -> None:
    def always_truncated(call: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        n = call * 1000
        return {"Parts": [_raw_part(n, 1)], "IsTruncated": True, "NextPartNumberMarker": n}

    client = FakeClient(always_truncated)
    with pytest.raises(UploadFailed, match="truncated") as info:
        list_parts(Boto3Store.over_client(client), "b", "k", "up-9")
    # the marker advanced every time: the listing stops where S3's part numbers end (10,000), not earlier
    assert len(client.list_calls) == MAX_PARTS // 1000
    assert info.value.upload_id == "up-9"
    assert not info.value.abort_upload  # the upload is kept


def test_list_parts_reads_a_store_with_small_pages_to_the_end() -> None:
    """A store that answers 100 parts a page (not S3's 1,000): 2,000 parts take 20 pages, all of them read
    (a fixed page bound of 12 used to cap the resume at 1,200 parts)."""
    def small_pages(call: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        start = kwargs["PartNumberMarker"] + 1
        numbers = range(start, min(start + 100, 2001))
        return {"Parts": [_raw_part(n, 5 * MiB) for n in numbers], "IsTruncated": numbers[-1] < 2000,
                "NextPartNumberMarker": numbers[-1]}

    client = FakeClient(small_pages)
    got = list_parts(Boto3Store.over_client(client), "b", "k", "up")
    assert got is not None and sorted(got) == list(range(1, 2001))
    assert len(client.list_calls) == 20
    assert all(c["MaxParts"] == 1000 for c in client.list_calls)  # S3's largest page is asked for


@pytest.mark.parametrize("next_marker", [1, None, 0], ids=["stuck", "missing", "zero"])
def test_list_parts_stops_when_the_marker_does_not_advance(next_marker: int | None) -> None:
    def stuck(call: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        page: dict[str, Any] = {"Parts": [_raw_part(1, 1)], "IsTruncated": True}
        if next_marker is not None:
            page["NextPartNumberMarker"] = next_marker
        return page

    client = FakeClient(stuck)
    with pytest.raises(UploadFailed):
        list_parts(Boto3Store.over_client(client), "b", "k", "up")
    assert len(client.list_calls) <= 2  # no spinning up to the page limit on the same marker


@pytest.mark.parametrize("code", ["NoSuchUpload", "NoSuchKey", "404"])
def test_list_parts_of_a_gone_upload_is_none(code: str) -> None:
    client = FakeClient(list_error=_client_error(code))
    assert list_parts(Boto3Store.over_client(client), "b", "k", "up") is None
    assert len(client.list_calls) == 1


def test_list_parts_gone_on_a_later_page_is_none() -> None:
    def gone_later(call: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        if call == 2:
            raise _client_error("NoSuchUpload")
        return {"Parts": [_raw_part(1, 1)], "IsTruncated": True, "NextPartNumberMarker": 1}

    assert list_parts(Boto3Store.over_client(FakeClient(gone_later)), "b", "k", "up") is None


@pytest.mark.parametrize("exc", [_client_error("AccessDenied"), _client_error("InternalError"), OSError("net")])
def test_list_parts_other_errors_propagate(exc: Exception) -> None:
    with pytest.raises(type(exc)):
        list_parts(Boto3Store.over_client(FakeClient(list_error=exc)), "b", "k", "up")


# -- _infer_part_size ---------------------------------------------------------------------------------------------


def _listed(*sizes: int) -> dict[int, ListedPart]:
    return {n: ListedPart(n, s, f"e{n}", None) for n, s in enumerate(sizes, start=1)}


def test_infer_part_size() -> None:
    assert R._infer_part_size({}, 100 * MiB) is None
    assert R._infer_part_size(_listed(8 * MiB, 8 * MiB, 3 * MiB), 19 * MiB) == 8 * MiB
    # parts listed out of order / with gaps: the biggest is the part size
    assert R._infer_part_size({3: ListedPart(3, 2 * MiB, "e", None), 1: ListedPart(1, 16 * MiB, "e", None)},
                              34 * MiB) == 16 * MiB
    # too small to cover the file in MAX_PARTS parts: not this file's upload
    assert R._infer_part_size(_listed(5 * MiB), 5 * MiB * MAX_PARTS + 1) is None
    assert R._infer_part_size(_listed(5 * MiB), 5 * MiB * MAX_PARTS) == 5 * MiB
    assert R._infer_part_size(_listed(0, 0), 10) is None


# -- find_resume ----------------------------------------------------------------------------------------------------

SIZE = 20 * MiB + 5


def _journal(tmp_path: Path, *, part_size: int = 8 * MiB, algorithm: str | None = "crc32c") -> Journal:
    fp = SourceFingerprint(str(tmp_path / "src"), SIZE, 1, 2, 3, "0" * 64)
    return Journal(tmp_path / "j.json", fp, None, "b", "k", "up-journal", part_size,
                   -(-SIZE // part_size), algorithm, True)


def _default_plan() -> UploadPlan:
    return plan_upload(SIZE, part_size=5 * MiB, workers=2)


def test_find_resume_with_a_journal_and_listed_parts(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    pages = [{"Parts": [_raw_part(1, 8 * MiB, ChecksumCRC32C="AAAAAA=="), _raw_part(2, 8 * MiB)],
              "IsTruncated": False}]
    client = FakeClient(pages)
    got = find_resume(Boto3Store.over_client(client), "b", "k", SIZE, _default_plan(), j)
    assert isinstance(got, ResumeState)
    assert got.upload_id == "up-journal" and got.journal is j
    assert got.plan.part_size == 8 * MiB and got.plan.parts_total == 3 and got.plan.total_bytes == SIZE
    assert got.plan.workers == 2
    assert got.algorithm is Algorithm.CRC32C
    assert got.listed == {1: ListedPart(1, 8 * MiB, "etag1", "AAAAAA=="), 2: ListedPart(2, 8 * MiB, "etag2", None)}
    assert got.reusable == {} and got.resumed_bytes == 0
    assert client.list_calls[0]["UploadId"] == "up-journal"
    assert client.upload_calls == []  # the journal names the upload: no need to look for one


def test_find_resume_with_a_journal_whose_upload_completed(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    client = FakeClient(list_error=_client_error("NoSuchUpload"), head=SIZE)
    got = find_resume(Boto3Store.over_client(client), "b", "k", SIZE, _default_plan(), j)
    assert got == AlreadyComplete(j)
    assert client.head_calls == [{"Bucket": "b", "Key": "k"}]


@pytest.mark.parametrize("head", [None, SIZE - 1, _client_error("AccessDenied", "HeadObject")],
                         ids=["no-object", "other-size", "head-fails"])
def test_find_resume_with_a_journal_whose_upload_is_gone(tmp_path: Path, head: Any) -> None:
    j = _journal(tmp_path)
    client = FakeClient(list_error=_client_error("NoSuchUpload"), head=head)
    assert find_resume(Boto3Store.over_client(client), "b", "k", SIZE, _default_plan(), j) is None


def _upload(key: str, upload_id: str, minute: int) -> dict[str, Any]:
    return {"Key": key, "UploadId": upload_id,
            "Initiated": _dt.datetime(2024, 1, 1, 12, minute, tzinfo=_dt.UTC)}


def test_find_resume_without_a_journal_picks_the_newest_upload_of_the_key() -> None:
    uploads = [
        _upload("k", "older", 1),
        _upload("k", "newest", 30),
        _upload("k2", "other-key-even-newer", 59),  # same prefix, another key
        _upload("k", "middle", 10),
    ]

    def pages(call: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        assert kwargs["UploadId"] == "newest"
        return {"Parts": [_raw_part(1, 16 * MiB), _raw_part(2, 4 * MiB + 5)], "IsTruncated": False}

    client = FakeClient(pages, uploads=uploads)
    got = find_resume(Boto3Store.over_client(client), "b", "k", SIZE, _default_plan(), None)
    assert isinstance(got, ResumeState)
    assert got.upload_id == "newest" and got.journal is None and got.algorithm is None
    assert got.plan.part_size == 16 * MiB and got.plan.parts_total == 2  # inferred from the listed parts
    assert sorted(got.listed) == [1, 2]
    assert client.upload_calls[0]["Bucket"] == "b" and client.upload_calls[0]["Prefix"] == "k"


def test_find_resume_without_a_journal_and_an_empty_upload_uses_the_plan() -> None:
    client = FakeClient([{"IsTruncated": False}], uploads=[_upload("k", "u1", 1)])
    got = find_resume(Boto3Store.over_client(client), "b", "k", SIZE, _default_plan(), None)
    assert isinstance(got, ResumeState)
    assert got.upload_id == "u1" and got.listed == {} and got.plan.part_size == 5 * MiB


@pytest.mark.parametrize("uploads", [[], [_upload("k2", "other", 1), _upload("k/x", "deeper", 2)]],
                         ids=["none", "other-keys-only"])
def test_find_resume_without_a_journal_or_an_upload_is_none(uploads: list[dict[str, Any]]) -> None:
    client = FakeClient(uploads=uploads)
    assert find_resume(Boto3Store.over_client(client), "b", "k", SIZE, _default_plan(), None) is None
    assert client.list_calls == []


# -- verify_parts ---------------------------------------------------------------------------------------------------

PART = 4096
FILE_SIZE = 2 * PART + 1808  # three parts: 4096, 4096, 1808


@pytest.fixture
def src(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(FILE_SIZE)
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    return path, data


def _plan() -> UploadPlan:
    # built directly: verify_parts only needs the part boundaries (plan_upload would insist on 5 MiB parts)
    return UploadPlan(FILE_SIZE, PART, 3, 1, True)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324


def _chunk(data: bytes, n: int) -> bytes:
    return data[(n - 1) * PART: n * PART]


def _state(listed: dict[int, ListedPart], journal: Journal | None = None,
           algorithm: Algorithm | None = None) -> ResumeState:
    return ResumeState("up", _plan(), algorithm, listed, journal)


def test_verify_parts_reuses_parts_whose_md5_matches(src: tuple[Path, bytes]) -> None:
    path, data = src
    listed = {
        1: ListedPart(1, PART, _md5(_chunk(data, 1)).upper(), None),  # ETag case does not matter
        2: ListedPart(2, PART, _md5(b"something else"), None),  # other bytes
        3: ListedPart(3, FILE_SIZE - 2 * PART, _md5(_chunk(data, 3)), None),  # the short last part
    }
    state = _state(listed)
    verify_parts(state, str(path), trust_journal=False, etag_is_md5=True, threads=3)
    assert sorted(state.reusable) == [1, 3]
    assert state.reusable[1] is listed[1]
    assert state.resumed_bytes == FILE_SIZE - PART


def test_verify_parts_skips_parts_of_another_size_or_outside_the_plan(src: tuple[Path, bytes]) -> None:
    path, data = src
    listed = {
        1: ListedPart(1, PART - 1, _md5(_chunk(data, 1)[:-1]), None),  # digest of its own bytes, wrong size
        2: ListedPart(2, PART, _md5(_chunk(data, 2)), None),
        3: ListedPart(3, PART, _md5(data[2 * PART:]), None),  # a full-size part 3: not this plan's last part
        4: ListedPart(4, 10, _md5(b"x"), None),  # beyond the plan
    }
    state = _state(listed)
    verify_parts(state, str(path), trust_journal=False, etag_is_md5=True, threads=2)
    assert sorted(state.reusable) == [2]


def test_verify_parts_with_checksums(src: tuple[Path, bytes]) -> None:
    path, data = src

    def crc(b: bytes) -> str:
        h = new_hasher(Algorithm.CRC32C)
        h.update(b)
        return b64(h.digest())

    listed = {
        1: ListedPart(1, PART, "not-an-md5", crc(_chunk(data, 1))),
        2: ListedPart(2, PART, _md5(_chunk(data, 2)), crc(b"other")),  # the checksum decides
        3: ListedPart(3, FILE_SIZE - 2 * PART, "not-an-md5", crc(_chunk(data, 3))),
    }
    state = _state(listed, algorithm=Algorithm.CRC32C)
    verify_parts(state, str(path), trust_journal=False, etag_is_md5=False, threads=1)
    assert sorted(state.reusable) == [1, 3]


def test_an_etag_that_is_the_local_md5_proves_a_part_on_any_store(src: tuple[Path, bytes]) -> None:
    """A store not known to give MD5 ETags (a brokered upload's, which cannot be probed): a part whose ETag is
    the MD5 of the local bytes is the same part; one whose ETag is another MD5, or opaque, is sent again."""
    path, data = src
    listed = {
        1: ListedPart(1, PART, _md5(_chunk(data, 1)), None),
        2: ListedPart(2, PART, _md5(b"other bytes"), None),
        3: ListedPart(3, FILE_SIZE - 2 * PART, "opaque-etag", None),
    }
    state = _state(listed)
    verify_parts(state, str(path), trust_journal=False, etag_is_md5=False, threads=2)
    assert sorted(state.reusable) == [1]


def test_verify_parts_without_md5_etags_or_checksums_reuses_nothing(tmp_path: Path) -> None:
    listed = {1: ListedPart(1, PART, "opaque", None)}
    state = _state(listed)
    # nothing can be checked, so nothing is read (the path does not even exist)
    verify_parts(state, str(tmp_path / "missing"), trust_journal=False, etag_is_md5=False, threads=1)
    assert state.reusable == {}


def _journal_for_verify(tmp_path: Path, records: dict[int, PartRecord]) -> Journal:
    fp = SourceFingerprint(str(tmp_path / "src.bin"), FILE_SIZE, 1, 2, 3, "0" * 64)
    j = Journal(tmp_path / "j.json", fp, None, "b", "k", "up", PART, 3, None, True)
    j.parts.update(records)
    return j


def test_verify_parts_trusts_the_journal_without_reading(src: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = src
    listed = {
        1: ListedPart(1, PART, _md5(_chunk(data, 1)), None),
        2: ListedPart(2, PART, "ABCDEF", None),
        3: ListedPart(3, FILE_SIZE - 2 * PART, "x", "CRC=="),
    }
    journal = _journal_for_verify(tmp_path, {
        1: PartRecord(PART, _md5(_chunk(data, 1))),
        2: PartRecord(PART, "abcdef"),  # ETag compared without case
        3: PartRecord(FILE_SIZE - 2 * PART, "", checksum="CRC=="),  # or by checksum
    })
    path.unlink()  # any read would raise FileNotFoundError
    state = _state(listed, journal)
    verify_parts(state, str(path), trust_journal=True, etag_is_md5=True, threads=2)
    assert sorted(state.reusable) == [1, 2, 3]

    # the same state without trusting the journal has to read the (now missing) file
    state = _state(listed, journal)
    with pytest.raises(FileNotFoundError):
        verify_parts(state, str(path), trust_journal=False, etag_is_md5=True, threads=2)


def test_verify_parts_checks_the_file_when_the_journal_disagrees(src: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = src
    listed = {
        1: ListedPart(1, PART, _md5(_chunk(data, 1)), None),
        2: ListedPart(2, PART, _md5(b"stale"), None),
    }
    journal = _journal_for_verify(tmp_path, {
        1: PartRecord(PART, "0" * 32),  # the journal says another ETag: read and verify
        2: PartRecord(PART - 1, _md5(b"stale")),  # same ETag, other size: not trusted, and the bytes differ
    })
    state = _state(listed, journal)
    verify_parts(state, str(path), trust_journal=True, etag_is_md5=True, threads=2)
    assert sorted(state.reusable) == [1]
