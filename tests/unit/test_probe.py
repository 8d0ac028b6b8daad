"""The store probe against fake stores (pure decision logic), and the integrity plan it leads to."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import pytest
from botocore.exceptions import ClientError

from mpupload.checksums import Algorithm, b64, new_hasher
from mpupload.engine.probe import PROBE_BODY, IntegrityPlan, StoreTraits, clear_cache, integrity_plan, probe_store
from mpupload.options import ChecksumMode
from mpupload.storage import Boto3Store

_ids = itertools.count()


def _crc(data: bytes) -> str:
    h = new_hasher(Algorithm.CRC32C)
    h.update(data)
    return b64(h.digest())


MD5 = hashlib.md5(PROBE_BODY)  # noqa: S324


class FakeStore:
    """A store with switchable habits: checks checksums? Content-MD5? MD5 ETags? one damaged body?"""

    def __init__(self, *, checks_checksum: bool = False, checks_md5: bool = False, md5_etags: bool = True,
                 damage_first: bool = False, sse: str | None = None) -> None:
        self.checks_checksum, self.checks_md5, self.md5_etags = checks_checksum, checks_md5, md5_etags
        self.damage_first, self.sse = damage_first, sse
        self.parts: list[int] = []
        self.created: list[dict[str, Any]] = []

    def create_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self.created.append(kwargs)
        return {"UploadId": f"probe-{next(_ids)}"}

    def upload_part(self, **kwargs: Any) -> dict[str, Any]:
        self.parts.append(kwargs["PartNumber"])
        body: bytes = kwargs["Body"]
        if self.damage_first and len(self.parts) == 1:
            body = b"X" + body[1:]  # damaged in transit
        bad = ClientError({"Error": {"Code": "BadDigest", "Message": "x"}}, "UploadPart")
        if self.checks_checksum and kwargs.get("ChecksumCRC32C") not in (None, _crc(body)):
            raise bad
        if self.checks_md5 and kwargs.get("ContentMD5") not in (None, b64(hashlib.md5(body).digest())):  # noqa: S324
            raise bad
        etag = hashlib.md5(body).hexdigest() if self.md5_etags else "0f" * 16  # noqa: S324
        answer = {"ETag": f'"{etag}"'}
        if self.sse:
            answer["ServerSideEncryption"] = self.sse
        return answer


def _probe(store: FakeStore, algorithm: Algorithm | None = Algorithm.CRC32C, abort_ok: bool = True) \
        -> tuple[StoreTraits, str | None, list[str]]:
    clear_cache()
    aborted: list[str] = []

    def abort(upload_id: str) -> bool:
        aborted.append(upload_id)
        return abort_ok

    traits, left = probe_store(Boto3Store.over_client(store), bucket="b", key="k",
                               create_args={"ServerSideEncryption": "aws:kms"}, algorithm=algorithm,
                               cache_key=object(), abort=abort, cancelled=lambda: False)
    return traits, left, aborted


def test_aws_like_store_validates_checksums() -> None:
    store = FakeStore(checks_checksum=True, checks_md5=True)
    traits, left, aborted = _probe(store)
    assert traits.validates_checksum and left is None and len(aborted) == 1
    assert store.parts == [10_000]  # one wrong part told it all
    assert store.created[0]["ChecksumAlgorithm"] == "CRC32C" and store.created[0]["ServerSideEncryption"] == "aws:kms"


def test_moto_like_store_gives_md5_etags() -> None:
    traits, _, _ = _probe(FakeStore())
    assert (traits.validates_checksum, traits.etag_is_md5) == (False, True)


def test_a_body_damaged_in_transit_does_not_pass_for_non_md5_etags() -> None:
    store = FakeStore(damage_first=True)
    traits, _, _ = _probe(store)
    assert traits.etag_is_md5 is True and len(store.parts) == 2  # asked again before concluding anything


def test_random_etags_but_content_md5_checked() -> None:
    traits, _, _ = _probe(FakeStore(md5_etags=False, checks_md5=True, sse="aws:kms"))
    assert (traits.validates_checksum, traits.etag_is_md5, traits.validates_content_md5) == (False, False, True)
    assert traits.encryption == "aws:kms"


def test_a_store_that_checks_nothing() -> None:
    store = FakeStore(md5_etags=False)
    traits, _, _ = _probe(store)
    assert (traits.validates_checksum, traits.etag_is_md5, traits.validates_content_md5) == (False, False, False)
    assert len(set(store.parts)) == len(store.parts) and all(n > 9_990 for n in store.parts)


def test_md5_mode_asks_only_about_etags() -> None:
    store = FakeStore(checks_checksum=True)
    traits, _, _ = _probe(store, algorithm=None)
    assert traits.etag_is_md5 is True and store.parts == [10_000]
    assert "ChecksumAlgorithm" not in store.created[0]


def test_a_probe_whose_abort_fails_names_its_upload() -> None:
    traits, left, aborted = _probe(FakeStore(), abort_ok=False)
    assert left is not None and aborted == [left]


def test_the_answer_is_kept_for_the_process() -> None:
    clear_cache()
    store = FakeStore()
    key = ("endpoint", "bucket", (None, None))
    for _ in range(3):
        probe_store(Boto3Store.over_client(store), bucket="b", key="k", create_args={}, algorithm=Algorithm.CRC32C,
                    cache_key=key, abort=lambda _id: True, cancelled=lambda: False)
    assert len(store.created) == 1


@pytest.mark.parametrize(("mode", "algorithm", "traits", "plan"), [
    (ChecksumMode.AUTO, Algorithm.CRC32C, StoreTraits(True, None, None),
     IntegrityPlan(Algorithm.CRC32C, False, False, "crc32c", True)),
    (ChecksumMode.AUTO, Algorithm.CRC32C, StoreTraits(False, True, None),
     IntegrityPlan(Algorithm.CRC32C, True, True, "md5", False)),
    (ChecksumMode.AUTO, Algorithm.CRC32C, StoreTraits(False, False, True),
     IntegrityPlan(Algorithm.CRC32C, True, False, "md5", False)),
    (ChecksumMode.MD5, None, StoreTraits(False, True, None), IntegrityPlan(None, True, True, "md5", False)),
    (ChecksumMode.NONE, None, None, IntegrityPlan(None, False, False, None, False)),
], ids=["validates", "md5-etags", "content-md5-only", "md5-mode", "none"])
def test_integrity_plan(mode: ChecksumMode, algorithm: Algorithm | None, traits: StoreTraits | None,
                        plan: IntegrityPlan) -> None:
    assert integrity_plan(mode, algorithm, traits) == plan


def test_integrity_plan_for_a_store_that_checks_nothing_says_why() -> None:
    plan = integrity_plan(ChecksumMode.AUTO, Algorithm.CRC32C, StoreTraits(False, False, False))
    assert plan.parts_checked is None and not plan.content_md5 and not plan.etag_is_md5
    assert plan.warning is not None and "checks neither" in plan.warning
