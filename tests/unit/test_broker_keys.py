"""Brokered uploads: where a user may write (key confinement), the request checks, the plan, the signing limit."""

from __future__ import annotations

import pytest

from mpupload.server import broker as B
from mpupload.server.db.models import Upload
from mpupload.server.limits import InputError

MiB = 1024 * 1024


@pytest.mark.parametrize("key", ["a", "data/set/file.bin", "é/ü.txt", "a.b/c..d/...", "with space/x"])
def test_confined_keys(key: str) -> None:
    assert B.confine_key("pfx/in", "alice", key) == f"pfx/in/alice/{key}"
    assert B.confine_key("", "alice", key) == f"alice/{key}"


@pytest.mark.parametrize(("key", "reason"), [
    ("", "empty"), ("..", "'..' segment"), ("../bob/x", "'..' segment"), ("a/../../x", "'..' segment"),
    ("a/./b", "'.' segment"), ("/etc/passwd", "absolute"), ("a//b", "empty segment"), ("a\\b", "backslash"),
    ("a\x00b", "control"), ("a\nb", "control"), ("a\x7fb", "control"), ("a\x85b", "control"), ("dir/", "end with '/'"),
    ("x" * 1020, "too long"), ("\ud800", "Unicode"),
])
def test_refused_keys(key: str, reason: str) -> None:
    with pytest.raises(InputError, match=reason.replace(".", r"\.").replace("(", r"\(")):
        B.confine_key("pfx", "alice", key)


def test_key_length_counts_the_whole_key_in_utf8() -> None:
    room = 1024 - len("pfx/alice/")
    assert B.confine_key("pfx", "alice", "x" * room)
    with pytest.raises(InputError, match="1025 bytes"):
        B.confine_key("pfx", "alice", "x" * (room + 1))
    with pytest.raises(InputError, match="too long"):
        B.confine_key("pfx", "alice", "é" * (room // 2 + 1))


@pytest.mark.parametrize(("url", "expected"), [
    ("s3://bucket", ("bucket", "")), ("s3://bucket/", ("bucket", "")), ("s3://my.bucket/a/b/", ("my.bucket", "a/b")),
])
def test_parse_storage(url: str, expected: tuple[str, str]) -> None:
    assert B.parse_storage(url) == expected


@pytest.mark.parametrize("url", ["bucket", "http://bucket", "s3://", "s3://B", "s3://bucket/a/../b", "s3://ab"])
def test_parse_storage_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        B.parse_storage(url)


def test_plan() -> None:
    assert not B.plan_brokered(100, 0).multipart
    plan = B.plan_brokered(11 * MiB, 5 * MiB)
    assert (plan.multipart, plan.part_size, plan.parts_total) == (True, 5 * MiB, 3)
    for bad in (MiB, 6 * 1024 * MiB * 1024):
        with pytest.raises(InputError):
            B.plan_brokered(11 * MiB, bad)
    with pytest.raises(InputError, match="5 TiB"):
        B.plan_brokered(6 * 1024**4, 0)


def _upload(total: int, part_size: int, parts: int, multipart: bool = True, algorithm: str = "crc32c") -> Upload:
    return Upload(total_bytes=total, part_size=part_size, parts_total=parts,
                  store_upload_id="U" if multipart else None, checksum_algorithm=algorithm)


def test_check_part() -> None:
    upload = _upload(11 * MiB, 5 * MiB, 3)
    good = B.PartToSign(3, MiB, "AAAAAA==")
    assert B.check_part(upload, good, content_md5_required=False) is not None
    with pytest.raises(InputError, match="5242880 bytes in this upload's plan"):
        B.check_part(upload, B.PartToSign(1, MiB, "AAAAAA=="), content_md5_required=False)
    with pytest.raises(InputError, match="not in this upload's plan"):
        B.check_part(upload, B.PartToSign(4, MiB, "AAAAAA=="), content_md5_required=False)
    with pytest.raises(InputError, match="needs its crc32c"):
        B.check_part(upload, B.PartToSign(3, MiB), content_md5_required=False)
    with pytest.raises(InputError, match="not a crc32c value"):
        B.check_part(upload, B.PartToSign(3, MiB, "AAAA"), content_md5_required=False)
    with pytest.raises(InputError, match="not base64"):
        B.check_part(upload, B.PartToSign(3, MiB, "!!!!!!=="), content_md5_required=False)
    with pytest.raises(InputError, match="content_md5"):
        B.check_part(upload, good, content_md5_required=True)
    with pytest.raises(InputError, match="signs no checksum"):
        B.check_part(_upload(11 * MiB, 5 * MiB, 3, algorithm="none"), good, content_md5_required=False)
    single = _upload(100, 0, 1, multipart=False)
    assert B.check_part(single, B.PartToSign(1, 100, "AAAAAA=="), content_md5_required=False) is not None


def test_request_shapes() -> None:
    with pytest.raises(InputError, match="empty"):
        B.SignRequest([])
    with pytest.raises(InputError, match="at most 100"):
        B.SignRequest([B.PartToSign(n, 1) for n in range(1, 102)])
    with pytest.raises(InputError, match="twice"):
        B.SignRequest([B.PartToSign(1, 1), B.PartToSign(1, 1)])
    with pytest.raises(InputError):
        B.PartToSign(10_001, 1)
    with pytest.raises(InputError, match="md5"):
        B.PartToSign(1, 1, content_md5="AAAAAA==")
    with pytest.raises(InputError, match="checksum_algorithm"):
        B.BrokeredCreate(key="a", total_bytes=1, checksum_algorithm="md4")
    with pytest.raises(InputError, match="twice"):
        B.CompleteRequest([B.PartDone(1), B.PartDone(1)])


def test_sign_limiter() -> None:
    now = [120.0]
    limiter = B.SignLimiter(100, clock=lambda: now[0])
    assert limiter.take(1, 60) is None
    assert limiter.take(1, 40) is None
    assert limiter.take(1, 1) == 60.0
    assert limiter.take(2, 100) is None  # per user
    now[0] = 180.0
    assert limiter.take(1, 100) is None  # a new minute


@pytest.mark.parametrize("name", ["a/b", "..", ".", "", " ", "a\x01"])
def test_user_names_that_cannot_be_a_folder(name: str) -> None:
    with pytest.raises(InputError):
        B.confine_key("pfx", name, "k")
