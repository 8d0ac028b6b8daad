"""The brokered store's pure parts: how the API server's and the store's refusals read as S3 errors, and the
HeadObject answer made of a completed record."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from mpupload import errors as E
from mpupload.storage.brokered import BrokerConfig, BrokeredStore, _api_error, _head_of, _s3_error
from mpupload.storage.errors import StoreError, classify, is_gone, is_retryable


class Answer:
    def __init__(self, status: int, body: Any = None, text: str = "", reason: str = "") -> None:
        self.status_code, self._body, self.reason = status, body, reason
        self.text = text
        self.content = text.encode()

    def json(self) -> Any:
        if self._body is None:
            raise ValueError("no JSON")
        return self._body


@pytest.mark.parametrize(("status", "detail", "expected"), [
    (404, "no upload 'x': check the id with mpupload list", "NoSuchUpload"),
    (409, "the storage no longer has upload x (aborted, or cleaned up)", "NoSuchUpload"),
    (409, "upload x is stopped: start a new upload", "NoSuchUpload"),
    (429, "too many part URLs signed in the last minute", "SlowDown"),
    (502, "the storage refused the request (SlowDown, HTTP 503): try again later", "502"),
])
def test_server_refusals_read_as_store_errors(status: int, detail: str, expected: str) -> None:
    error = _api_error(Answer(status, {"detail": detail}), "SignParts", "x")
    assert isinstance(error, StoreError) and error.code == expected and detail in error.message
    assert is_gone(error) is (expected == "NoSuchUpload")
    assert is_retryable(error) is (expected in ("SlowDown", "502"))


def test_a_bad_key_or_the_quota_is_bad_input_and_a_rejected_token_is_auth() -> None:
    refused = _api_error(Answer(422, {"detail": "key must not contain a '..' segment"}), "CreateMultipartUpload",
                         None)
    assert isinstance(refused, E.UsageError) and "'..' segment" in str(refused) and refused.exit_code == 2
    quota = _api_error(Answer(413, {"detail": "over your quota"}), "CreateMultipartUpload", None)
    assert isinstance(quota, E.UsageError) and "over your quota" in str(quota)
    auth = _api_error(Answer(401, {"detail": "invalid token"}), "SignParts", "x")
    assert isinstance(auth, E.AuthError) and auth.exit_code == 3 and "mpupload login" in str(auth)
    assert classify(auth) is auth


def test_the_store_s_xml_error_keeps_its_code() -> None:
    xml = ("<?xml version='1.0'?><Error><Code>BadDigest</Code><Message>The Content-MD5 you specified did not "
           "match what we received.</Message></Error>")
    error = _s3_error(400, xml.encode(), "Bad Request", "UploadPart")
    assert error.code == "BadDigest" and error.status == 400 and "Content-MD5" in error.message
    assert error.operation == "UploadPart"
    assert is_retryable(error)  # sent again: the worker hashes the part again, and a new URL is signed
    bare = _s3_error(503, b"", "Service Unavailable", "UploadPart")
    assert bare.code == "503" and is_retryable(bare)


def test_head_of_a_record_claims_a_checksum_only_when_the_server_verified_it() -> None:
    record = {"total_bytes": 12, "etag": "abc-2", "checksum_algorithm": "crc32c", "checksum": "AAAA-2",
              "verified": "crc32c"}
    assert _head_of(record) == {"ContentLength": 12, "ETag": '"abc-2"', "ChecksumCRC32C": "AAAA-2"}
    assert "ChecksumCRC32C" not in _head_of({**record, "verified": "size-only"})


def test_the_store_pickles_as_its_settings_and_never_shows_the_token() -> None:
    store = BrokeredStore(BrokerConfig("http://api", "secret-token", bucket="b", space="p/alice/"))
    store._completed["k"] = {"id": "x"}
    copy = pickle.loads(pickle.dumps(store))
    assert copy.config == store.config and copy._completed == {}
    assert "secret-token" not in repr(store) and "secret-token" not in repr(store.config)


def test_a_key_outside_the_user_s_space_is_refused_before_any_request() -> None:
    store = BrokeredStore(BrokerConfig("http://127.0.0.1:9", "t", bucket="b", space="p/alice/"))
    with pytest.raises(StoreError) as caught:
        store.create_multipart_upload("b", "p/bob/f.bin", size=1)
    assert caught.value.code == "AccessDenied"
    with pytest.raises(StoreError):
        store.head_bucket("other")


# -- parts signed ahead ---------------------------------------------------------------------------------------------

class SignRecorder:
    """``sign_parts`` of the store replaced: each request's part numbers, and URLs that say which request made
    them."""

    def __init__(self, expires_in: int = 900) -> None:
        self.requests: list[list[int]] = []
        self.expires_in = expires_in

    def __call__(self, upload_id: str, parts: Any) -> list[Any]:
        from mpupload.storage.port import PresignedRequest

        self.requests.append([number for number, *_ in parts])
        n = len(self.requests)
        return [PresignedRequest("PUT", f"https://store/{upload_id}/{number}?request={n}", {}, self.expires_in)
                for number, *_ in parts]


def signing_store(monkeypatch: pytest.MonkeyPatch, *, max_sign_batch: int = 100,
                  expires_in: int = 900) -> tuple[BrokeredStore, SignRecorder]:
    store = BrokeredStore(BrokerConfig("http://api", "t", bucket="b", space="p/alice/", max_sign_batch=max_sign_batch))
    recorder = SignRecorder(expires_in)
    monkeypatch.setattr(store, "sign_parts", recorder)
    return store, recorder


def test_the_sign_window_is_128_mib_of_parts_within_the_server_s_batch() -> None:
    store = BrokeredStore(BrokerConfig("http://api", "t", bucket="b", space="p/alice/"))
    MiB = 1024 * 1024
    assert store.sign_window(5 * MiB) == 25
    assert store.sign_window(64 * MiB) == 2
    assert store.sign_window(200 * MiB) == 1
    assert store.sign_window(1024) == 100  # the server's most per request
    small = BrokeredStore(BrokerConfig("http://api", "t", bucket="b", space="p/alice/", max_sign_batch=10))
    assert small.sign_window(5 * MiB) == 10


def test_a_url_signed_ahead_serves_its_own_body_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from mpupload.checksums import Algorithm
    from mpupload.storage.port import Checksum

    store, recorder = signing_store(monkeypatch)
    crc = {n: Checksum(Algorithm.CRC32C, f"c{n}==") for n in (1, 2, 3)}
    store.sign_ahead("u", [(n, 10, crc[n], f"m{n}") for n in (1, 2, 3)])
    assert recorder.requests == [[1, 2, 3]]

    assert store._signed_for("u", 1, 10, crc[1], "m1").url.endswith("/1?request=1")  # signed ahead: no request
    assert recorder.requests == [[1, 2, 3]]
    assert store._signed_for("u", 1, 10, crc[1], "m1").url.endswith("/1?request=2")  # used once: a retry signs
    # a body that differs from the one signed ahead (the file changed in between) is signed for what is sent
    other = Checksum(Algorithm.CRC32C, "zz==")
    assert store._signed_for("u", 2, 10, other, "m2").url.endswith("/2?request=3")
    assert store._signed_for("u", 3, 10, crc[3], "other-md5").url.endswith("/3?request=4")
    assert store._signed_for("v", 3, 10, crc[3], "m3").url.endswith("/3?request=5")  # another upload's part 3
    assert recorder.requests == [[1, 2, 3], [1], [2], [3], [3]]


def test_a_url_signed_ahead_is_signed_again_when_most_of_its_life_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    from mpupload.storage import brokered

    store, recorder = signing_store(monkeypatch, expires_in=100)
    clock = [1000.0]
    monkeypatch.setattr(brokered.time, "monotonic", lambda: clock[0])
    store.sign_ahead("u", [(1, 10, None, None), (2, 10, None, None)])
    clock[0] += 74  # three quarters of its 100 s not gone yet: used
    assert store._signed_for("u", 1, 10, None, None).url.endswith("request=1")
    clock[0] += 2
    assert store._signed_for("u", 2, 10, None, None).url.endswith("request=2")
    assert recorder.requests == [[1, 2], [2]]


def test_a_run_of_parts_longer_than_the_server_s_batch_goes_in_several_requests(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, recorder = signing_store(monkeypatch, max_sign_batch=2)
    store.sign_ahead("u", [(n, 10, None, None) for n in range(1, 6)])
    assert recorder.requests == [[1, 2], [3, 4], [5]]
