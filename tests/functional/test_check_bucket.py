"""The check before the start (``check_bucket``): a 403 to HeadBucket is read again through ListObjectsV2, so that
wrong credentials end the run at once (exit 3) while credentials without s3:ListBucket go ahead."""

from __future__ import annotations

import pytest

from mpupload import errors as E
from mpupload.engine.object_upload import check_bucket
from mpupload.storage.memory import MemoryStore

BUCKET = "bkt"


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore(BUCKET)
    s.fail("HeadBucket", code="403", status=403, message="")  # HEAD answers carry no body: no code to read
    return s


@pytest.mark.parametrize("code", ["SignatureDoesNotMatch", "InvalidAccessKeyId", "ExpiredToken"])
def test_wrong_credentials_end_the_run_before_it_starts(store: MemoryStore, code: str) -> None:
    store.fail("ListObjectsV2", code=code, status=403, message="the request signature we calculated does not match")
    with pytest.raises(E.AuthError) as caught:
        check_bucket(store, BUCKET, "data/k.bin")
    assert caught.value.exit_code == 3 and caught.value.bucket == BUCKET


def test_no_list_permission_goes_ahead(store: MemoryStore) -> None:
    store.fail("ListObjectsV2", code="AccessDenied", status=403, message="Access Denied")
    check_bucket(store, BUCKET, "data/k.bin")  # may still write: the PUT will say


def test_a_listing_that_works_or_fails_otherwise_goes_ahead(store: MemoryStore) -> None:
    check_bucket(store, BUCKET, "data/k.bin")
    store.fail("HeadBucket", code="403", status=403, message="")
    store.fail("ListObjectsV2", code="InternalError", status=500)
    check_bucket(store, BUCKET, prefix="sets/")


def test_the_listing_is_of_the_key_or_the_prefix_only(store: MemoryStore) -> None:
    seen: list[str] = []
    store.before("ListObjectsV2", lambda op, params: seen.append(params["Prefix"]))
    check_bucket(store, BUCKET, "data/k.bin")
    store.fail("HeadBucket", code="403", status=403, message="")
    check_bucket(store, BUCKET, prefix="sets/imagenet/")
    assert seen == ["data/k.bin", "sets/imagenet/"]


def test_a_readable_bucket_costs_one_request() -> None:
    fresh = MemoryStore(BUCKET)
    check_bucket(fresh, BUCKET, "k")
    assert fresh.calls["HeadBucket"] == 1 and fresh.calls["ListObjectsV2"] == 0
