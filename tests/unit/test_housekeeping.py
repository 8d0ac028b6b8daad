"""Pure logic of cleanup and resumable: durations, which journals are stale, summaries, bounded listings."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from mpupload import errors as E
from mpupload import housekeeping as hk
from mpupload.cli.cleanup import lifecycle_command, parse_bucket_url
from mpupload.cli.options import parse_duration
from mpupload.cli.resumable import format_line
from mpupload.journal import Journal, PartRecord, SourceFingerprint
from mpupload.storage import Boto3Store
from mpupload.storage.memory import MemoryStore

NOW = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)
GiB = 1024**3
MiB = 1024**2


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0), ("0s", 0), ("90", 90), ("90s", 90), ("30m", 1800), ("24h", 86400), ("24H", 86400),
    ("1.5h", 5400), (" 7d ", 7 * 86400), ("2w", 14 * 86400),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-1h", "5y", "1h30m", "h", "24 hours"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(E.UsageError, match="cannot read duration"):
        parse_duration(text)


@pytest.mark.parametrize(("url", "expected"), [
    ("s3://b", ("b", "")), ("s3://b/", ("b", "")), ("s3://b/data/", ("b", "data/")), ("s3://b/a/b", ("b", "a/b")),
])
def test_parse_bucket_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_bucket_url(url) == expected


@pytest.mark.parametrize("url", ["b/data", "s3://", "s3:///data", "s3://a b/x", "http://b/x"])
def test_parse_bucket_url_rejects(url: str) -> None:
    with pytest.raises(E.UsageError):
        parse_bucket_url(url)


def _journal(tmp: Path, *, key: str = "data/a.bin", upload_id: str = "u1", bucket: str = "b",
             endpoint: str | None = "http://127.0.0.1:9000", size: int = 120 * GiB, parts_total: int = 1920,
             parts_done: int = 0, created_at: str = "2026-11-26T10:00:00Z") -> Journal:
    part_size = size // parts_total
    return Journal(
        path=tmp / f"{upload_id}.json",
        source=SourceFingerprint("/data/a b.bin", size, 1, 2, 3, "0" * 64),
        endpoint=endpoint, bucket=bucket, key=key, upload_id=upload_id, part_size=part_size,
        parts_total=parts_total, checksum_algorithm="crc32c", md5=False, created_at=created_at,
        parts={n: PartRecord(part_size, f"e{n}") for n in range(1, parts_done + 1)},
    )


def test_stale_journals_selection(tmp_path: Path) -> None:
    ep = "http://127.0.0.1:9000"
    keep_live = _journal(tmp_path, upload_id="live")
    stale = _journal(tmp_path, upload_id="gone")
    other_prefix = _journal(tmp_path, upload_id="gone2", key="logs/x")
    other_bucket = _journal(tmp_path, upload_id="gone3", bucket="c")
    other_endpoint = _journal(tmp_path, upload_id="gone4", endpoint="http://10.0.0.1:9000")
    aws_default = _journal(tmp_path, upload_id="gone5", endpoint=None)
    journals = [keep_live, stale, other_prefix, other_bucket, other_endpoint, aws_default]
    assert hk.stale_journals(journals, "b", "data/", ep, ["live"]) == [stale]
    # the same endpoint written differently is the same store; no endpoint means AWS's default
    assert hk.stale_journals([stale], "b", "data/", "HTTP://127.0.0.1:9000/", []) == [stale]
    assert hk.stale_journals(journals, "b", "", None, []) == [aws_default]
    assert hk.stale_journals(journals, "b", "", ep, ["live", "gone"]) == [other_prefix]


def test_remove_journal_only_when_unchanged(tmp_path: Path) -> None:
    j = _journal(tmp_path, upload_id="gone")
    j.save()
    replaced = _journal(tmp_path, upload_id="gone")
    replaced.upload_id = "new"  # a resume started a new upload in the same file meanwhile
    replaced.save()
    assert hk.remove_journal(j) is False and j.path.exists()
    assert hk.remove_journal(replaced) is True and not j.path.exists()


def test_resumable_summary_and_line(tmp_path: Path) -> None:
    j = _journal(tmp_path, parts_done=720, endpoint="http://127.0.0.1:9000")
    s = hk.resumable_summary(j, NOW)
    assert s["percent"] == 37.5
    assert (s["bytes_done"], s["total_bytes"], s["parts_done"], s["parts_total"]) == (45 * GiB, 120 * GiB, 720, 1920)
    assert s["destination"] == "s3://b/data/a.bin" and s["age_seconds"] == 7200
    assert s["resume_command"] == ("mpupload upload '/data/a b.bin' s3://b/data/a.bin --resume "
                                   "--endpoint-url http://127.0.0.1:9000")
    line = format_line(s)
    assert "37.5% 45.0 GiB / 120.0 GiB, parts 720/1920" in line
    assert "age 2h 0m" in line and "upload u1" in line


def test_summary_without_endpoint_or_time(tmp_path: Path) -> None:
    j = _journal(tmp_path, endpoint=None, created_at="garbage", size=10 * MiB, parts_total=2, parts_done=2)
    s = hk.resumable_summary(j, NOW)
    assert "--endpoint-url" not in s["resume_command"]
    assert s["age_seconds"] is None and s["percent"] == 100.0


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (-1, "-"), (0, "0s"), (59, "59s"), (60, "1m"), (3599, "59m"), (3600, "1h 0m"),
    (12000, "3h 20m"), (190000, "2d 4h"),
])
def test_format_age(seconds: float | None, text: str) -> None:
    assert hk.format_age(seconds) == text


def test_lifecycle_command() -> None:
    cmd = lifecycle_command("b", "http://h:1")
    assert cmd.startswith("aws s3api put-bucket-lifecycle-configuration --bucket b --lifecycle-configuration '")
    assert '"AbortIncompleteMultipartUpload":{"DaysAfterInitiation":7}' in cmd
    assert cmd.endswith("--endpoint-url http://h:1")
    assert "--endpoint-url" not in lifecycle_command("b", None)


# -- the listings are bounded --------------------------------------------------------------------------------------
class _Answer(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


class AlwaysTruncated:
    """A store whose every listing says "there is more"; it counts the calls it gets."""

    def __init__(self, *, advance: bool = True) -> None:
        self.advance = advance
        self.list_calls = 0
        self.part_calls = 0

    def list_multipart_uploads(self, **kw: Any) -> dict[str, Any]:
        self.list_calls += 1
        n = self.list_calls if self.advance else 1
        return {"IsTruncated": True, "NextKeyMarker": f"k{n}", "NextUploadIdMarker": f"u{n}",
                "Uploads": [{"Key": f"k{n}", "UploadId": f"u{n}", "Initiated": NOW - dt.timedelta(days=2)}]}

    def list_parts(self, **kw: Any) -> dict[str, Any]:
        self.part_calls += 1
        return {"IsTruncated": True, "NextPartNumberMarker": self.part_calls,
                "Parts": [{"PartNumber": 1, "Size": 5, "LastModified": NOW - dt.timedelta(hours=1)}]}


def test_upload_listing_stops_at_the_page_bound() -> None:
    client = AlwaysTruncated()
    with pytest.raises(hk.ListingIncomplete) as info:
        hk.find_orphans(Boto3Store.over_client(client), "b", "", NOW, max_pages=7)
    assert client.list_calls == 7
    assert [o.key for o in info.value.partial] == [f"k{n}" for n in range(1, 8)]
    assert info.value.exit_code == 1 and "did not end after 7 page(s)" in str(info.value)
    # ListParts never ended either: size unknown, each bounded by MAX_PART_PAGES
    assert all(o.size is None and o.parts is None for o in info.value.partial)
    assert client.part_calls == 7 * hk.MAX_PART_PAGES


def test_upload_listing_stops_when_the_marker_does_not_move() -> None:
    client = AlwaysTruncated(advance=False)
    with pytest.raises(hk.ListingIncomplete):
        hk.find_orphans(Boto3Store.over_client(client), "b", "", NOW)
    assert client.list_calls == 2


class TwoPages:
    """A well-behaved store: two pages of uploads, each upload with two pages of parts."""

    def list_multipart_uploads(self, **kw: Any) -> dict[str, Any]:
        if "KeyMarker" not in kw:
            return {"IsTruncated": True, "NextKeyMarker": "a", "NextUploadIdMarker": "1",
                    "Uploads": [{"Key": "a", "UploadId": "1", "Initiated": NOW - dt.timedelta(days=3)}]}
        return {"IsTruncated": False,
                "Uploads": [{"Key": "b", "UploadId": "2", "Initiated": (NOW + dt.timedelta(seconds=5)).isoformat()}]}

    def list_parts(self, **kw: Any) -> dict[str, Any]:
        if kw["UploadId"] == "2":
            raise _Answer("NoSuchKey")  # Ceph's answer for an upload aborted meanwhile
        if not kw.get("PartNumberMarker"):  # the first page (marker 0)
            return {"IsTruncated": True, "NextPartNumberMarker": 1,
                    "Parts": [{"PartNumber": 1, "Size": 10, "LastModified": NOW - dt.timedelta(hours=30)}]}
        return {"IsTruncated": False,
                "Parts": [{"PartNumber": 2, "Size": 7, "LastModified": NOW - dt.timedelta(hours=2)}]}


def test_find_orphans_pages_and_measures() -> None:
    a, b = hk.find_orphans(Boto3Store.over_client(TwoPages()), "bk", "", NOW)
    assert (a.key, a.size, a.parts, a.age_s, a.idle_s) == ("a", 17, 2, 3 * 86400, 2 * 3600)
    assert (b.key, b.size, b.parts, b.age_s) == ("b", None, None, 0.0)  # a clock ahead is not a negative age


def test_abort_treats_gone_as_done() -> None:
    orphan = hk.Orphan("k", "u", NOW, 0.0, None, None)

    class Store:
        def __init__(self, code: str | None) -> None:
            self.code = code

        def abort_multipart_upload(self, **kw: Any) -> None:
            if self.code:
                raise _Answer(self.code)

    assert hk.abort(Boto3Store.over_client(Store(None)), "b", orphan) is True
    for code in ("NoSuchUpload", "NoSuchKey", "404"):
        assert hk.abort(Boto3Store.over_client(Store(code)), "b", orphan) is False


class Lifecycle:
    def __init__(self, answer: dict[str, Any] | None = None, code: str | None = None) -> None:
        self.answer, self.code = answer, code

    def get_bucket_lifecycle_configuration(self, **kw: Any) -> dict[str, Any]:
        if self.code:
            raise _Answer(self.code)
        return self.answer or {}


@pytest.mark.parametrize(("store", "expected"), [
    (Lifecycle({"Rules": [{"Status": "Enabled", "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}]}),
     True),
    (Lifecycle({"Rules": [{"Status": "Disabled", "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}]}),
     False),
    (Lifecycle({"Rules": [{"Status": "Enabled", "Expiration": {"Days": 30}}]}), False),
    (Lifecycle(code="NoSuchLifecycleConfiguration"), False),
    (Lifecycle(code="NotImplemented"), None),
    (Lifecycle(code="AccessDenied"), None),
])
def test_has_abort_lifecycle_rule(store: Lifecycle, expected: bool | None) -> None:
    assert hk.has_abort_lifecycle_rule(Boto3Store.over_client(store), "b") is expected


def test_abort_confirms_with_the_store() -> None:
    store = MemoryStore("b")
    upload_id = store.create_multipart_upload("b", "k")
    store.upload_part("b", "k", upload_id, 1, b"x", content_length=1)
    orphan = hk.Orphan("k", upload_id, NOW, 0.0, 1, 1)
    assert hk.abort(store, "b", orphan) is True
    assert store.calls["ListParts"] == 1 and store.uploads("b") == {}
    assert hk.abort(store, "b", orphan) is False  # already gone
    store.fail("AbortMultipartUpload", code="AccessDenied", status=403)
    with pytest.raises(E.AuthError):
        hk.abort(store, "b", orphan)


def test_abort_fails_while_parts_keep_landing() -> None:
    store = MemoryStore("b")
    upload_id = store.create_multipart_upload("b", "k")
    store.upload_part("b", "k", upload_id, 1, b"x", content_length=1)
    store.abort_multipart_upload = lambda bucket, key, upload_id: None  # type: ignore[method-assign]
    with pytest.raises(E.UploadFailed, match="still lists parts"):
        hk.abort(store, "b", hk.Orphan("k", upload_id, NOW, 0.0, 1, 1))


def test_find_orphans_over_small_pages() -> None:
    clock = iter(NOW - dt.timedelta(hours=h) for h in range(100, 0, -1))
    store = MemoryStore("b", parts_page_size=2, uploads_page_size=2, clock=lambda: next(clock))
    for key in ("a", "b", "c", "d", "e"):
        upload_id = store.create_multipart_upload("b", key)
        for number in range(1, 4):
            store.upload_part("b", key, upload_id, number, b"xy", content_length=2)
    orphans = hk.find_orphans(store, "b", "", NOW)
    assert [o.key for o in orphans] == ["a", "b", "c", "d", "e"]
    assert all(o.size == 6 and o.parts == 3 for o in orphans)
    assert orphans[0].age_s == 100 * 3600 and orphans[0].idle_s == 97 * 3600
    assert store.calls["ListMultipartUploads"] == 3 and store.calls["ListParts"] == 5 * 2
