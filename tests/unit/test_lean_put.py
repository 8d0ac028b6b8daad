"""The lean PutObject's pure parts: S3's XML error bodies, the switch, which requests it takes, and the endpoint
it resolves per bucket through botocore's endpoint rules (no request is sent here)."""

from __future__ import annotations

from typing import Any

import pytest

from mpupload.storage.config import StoreConfig
from mpupload.storage.errors import is_retryable
from mpupload.storage.lean import LEAN_MAX_BYTES, LeanPut, lean_enabled, parse_error


@pytest.mark.parametrize("status, body, code, message", [
    (503, b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your '
          b"request rate.</Message><RequestId>1</RequestId></Error>", "SlowDown", "Please reduce your request rate."),
    (400, b"<Error><Code>BadDigest</Code><Message>The Content-MD5 you specified did not match</Message></Error>",
     "BadDigest", "The Content-MD5 you specified did not match"),
    (404, b'<Error xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Code>NoSuchBucket</Code>'
          b"<Message>no bucket</Message></Error>", "NoSuchBucket", "no bucket"),
    (403, b"<ErrorResponse><Error><Code>InvalidAccessKeyId</Code><Message>who?</Message></Error></ErrorResponse>",
     "InvalidAccessKeyId", "who?"),
    (500, b"", "500", "Internal Server Error"),
    (412, b"", "412", "Precondition Failed"),
    (502, b"<html><body>Bad Gateway</body></html>", "502", "Bad Gateway"),
    (400, b"<Error><Code>Trunc", "400", "Bad Request"),
    (400, b"not xml at all", "400", "Bad Request"),
])
def test_error_bodies(status: int, body: bytes, code: str, message: str) -> None:
    error = parse_error(status, body)
    assert (error.code, error.status, error.message, error.operation) == (code, status, message, "PutObject")


def test_error_retryability_follows_the_code_and_status() -> None:
    assert is_retryable(parse_error(503, b"<Error><Code>SlowDown</Code></Error>"))
    assert is_retryable(parse_error(500, b""))
    assert is_retryable(parse_error(400, b"<Error><Code>BadDigest</Code></Error>"))
    assert not is_retryable(parse_error(403, b"<Error><Code>AccessDenied</Code></Error>"))
    assert not is_retryable(parse_error(404, b""))
    assert not is_retryable(parse_error(501, b"<Error><Code>NotImplemented</Code></Error>"))


@pytest.mark.parametrize("value, on", [(None, True), ("1", True), ("yes", True), ("0", False), ("false", False),
                                       ("OFF", False), (" no ", False)])
def test_the_switch(value: str | None, on: bool) -> None:
    assert lean_enabled({} if value is None else {"MPUPLOAD_LEAN_PUT": value}) is on


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUNIT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit-secret")
    monkeypatch.delenv("MPUPLOAD_LEAN_PUT", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


def _lean(**config: Any) -> LeanPut:
    lean = LeanPut.for_client(StoreConfig(**config).make_client())
    assert lean is not None
    return lean


@pytest.mark.parametrize("args, accepted", [
    (None, True),
    ({"ContentType": "text/plain", "Metadata": {"a": "b"}, "StorageClass": "STANDARD_IA"}, True),
    ({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "k", "BucketKeyEnabled": True}, True),
    ({"Metadata": {"note": "ünïcödé"}}, False),  # botocore refuses non-ASCII metadata itself: its error, its path
    ({"Metadata": {"bad key": "v"}}, False),
    ({"ContentType": "text/plain\r\nX-Injected: 1"}, False),
    ({"SSECustomerKey": "k" * 32, "SSECustomerAlgorithm": "AES256"}, False),  # botocore encodes the key
    ({"Expires": "2030-01-01"}, False),
    ({"ContentType": None}, False),
])
def test_which_arguments_go_lean(keys: None, args: dict[str, Any] | None, accepted: bool) -> None:
    assert _lean(endpoint_url="http://127.0.0.1:9000").accepts("bkt", 1024, args) is accepted


def test_only_small_objects_of_known_length_go_lean(keys: None) -> None:
    lean = _lean(endpoint_url="http://127.0.0.1:9000")
    assert lean.accepts("bkt", 0, None) and lean.accepts("bkt", LEAN_MAX_BYTES, None)
    assert not lean.accepts("bkt", LEAN_MAX_BYTES + 1, None) and not lean.accepts("bkt", -1, None)


@pytest.mark.parametrize("config, bucket, where", [
    ({"endpoint_url": "http://127.0.0.1:9000"}, "bkt", ("http", "127.0.0.1", 9000, "127.0.0.1:9000", "/bkt",
                                                        "us-east-1")),
    ({"endpoint_url": "https://s3.example.test", "region": "eu-central-1"}, "my.bkt",
     ("https", "s3.example.test", 443, "s3.example.test", "/my.bkt", "eu-central-1")),
    ({"region": "eu-west-1"}, "bkt", ("https", "bkt.s3.eu-west-1.amazonaws.com", 443,
                                      "bkt.s3.eu-west-1.amazonaws.com", "", "eu-west-1")),
    ({"region": "eu-west-1"}, "dotted.bucket.name", ("https", "s3.eu-west-1.amazonaws.com", 443,
                                                     "s3.eu-west-1.amazonaws.com", "/dotted.bucket.name",
                                                     "eu-west-1")),
])
def test_the_endpoint_is_botocores(keys: None, config: dict[str, Any], bucket: str,
                                   where: tuple[Any, ...]) -> None:
    target = _lean(**config)._target(bucket)
    assert target is not None
    assert (target.scheme, target.host, target.port, target.host_header, target.base_path, target.region) == where


def test_what_stays_with_botocore(keys: None, monkeypatch: pytest.MonkeyPatch) -> None:
    lean = _lean(region="us-west-2")
    assert not lean.accepts("arn:aws:s3:us-west-2:123456789012:accesspoint/ap", 10, None)
    assert not lean.accepts("bucket--usw2-az1--x-s3", 10, None)  # S3 Express: session auth
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert not _lean(region="us-west-2").accepts("bkt", 10, None)  # botocore would use the proxy
    monkeypatch.setenv("MPUPLOAD_LEAN_PUT", "0")
    assert LeanPut.for_client(StoreConfig(region="us-west-2").make_client()) is None


def test_unsigned_clients_stay_with_botocore(keys: None) -> None:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    anonymous = boto3.session.Session().client("s3", endpoint_url="http://127.0.0.1:9000",
                                               config=Config(signature_version=UNSIGNED))
    assert LeanPut.for_client(anonymous) is None
