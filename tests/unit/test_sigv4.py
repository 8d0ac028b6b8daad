"""mpupload's own SigV4 (mpupload/storage/sigv4.py) against independent signers: botocore's pure-Python
``S3SigV4Auth`` and its CRT signer (``CrtS3SigV4Auth``, what botocore really uses when awscrt is installed), both
run here with the clock fixed, and the GET example of AWS's S3 SigV4 documentation."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import pytest
from botocore import auth as bauth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials

from mpupload.storage.sigv4 import Credentials, amz_date, canonical_query, quote_key, sign, signing_key

NOW = _dt.datetime(2026, 11, 3, 4, 5, 6, tzinfo=_dt.UTC)
KEYS = ["plain", "a b/c d.txt", "ünïcödé/ß/日本語.bin", "a+b=c~d&e?f#g%h", "dir//double/./dot/../x",
        "/leading-slash", "semi;colon,comma:colon@at!bang$dollar'q(p)*s", "tab\tand\nnewline", "~tilde_under-dash.dot"]


def _botocore_sign(signer_cls: Any, monkeypatch: pytest.MonkeyPatch, url: str, headers: dict[str, str],
                   creds: BotoCredentials, region: str) -> dict[str, str]:
    monkeypatch.setattr(bauth, "get_current_datetime",
                        lambda remove_tzinfo=True: NOW.replace(tzinfo=None) if remove_tzinfo else NOW)
    try:
        from botocore.crt import auth as crt_auth

        monkeypatch.setattr(crt_auth, "get_current_datetime",
                            lambda remove_tzinfo=True: NOW.replace(tzinfo=None) if remove_tzinfo else NOW)
    except ImportError:  # pragma: no cover - awscrt is a dependency
        pass
    request = AWSRequest(method="PUT", url=url, headers=dict(headers), data=b"body")
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    request.context["payload_signing_enabled"] = False
    signer_cls(creds, "s3", region).add_auth(request)
    return {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()}


def _signers() -> list[Any]:
    signers: list[Any] = [bauth.S3SigV4Auth]
    try:
        from botocore.crt.auth import CrtS3SigV4Auth

        signers.append(CrtS3SigV4Auth)
    except ImportError:  # pragma: no cover
        pass
    return signers


@pytest.mark.parametrize("signer_cls", _signers(), ids=lambda c: c.__name__)
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//////////wEaDtoken+with/slash="])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_put_object_signature_equals_botocores(signer_cls: Any, key: str, token: str | None, scheme: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    host = "127.0.0.1:9000" if scheme == "http" else "bkt.s3.eu-west-1.amazonaws.com"
    path = f"/bkt/{quote_key(key)}" if scheme == "http" else f"/{quote_key(key)}"
    region = "us-east-1" if scheme == "http" else "eu-west-1"
    headers = {"Content-Length": "65536", "Content-Type": "text/plain; charset=utf-8",
               "Content-MD5": "OYUz1IER6fZksfZMsQxLYw==", "x-amz-checksum-crc32c": "YXFUyQ==",
               "x-amz-meta-owner": "  two   spaces  ", "x-amz-meta-mpupload-crc32c": "YXFUyQ==",
               "x-amz-storage-class": "STANDARD_IA", "x-amz-server-side-encryption": "AES256",
               "If-None-Match": "*", "User-Agent": "mpupload test", "host": host}
    creds = BotoCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    theirs = _botocore_sign(signer_cls, monkeypatch, f"{scheme}://{host}{path}", headers, creds, region)
    ours = sign("PUT", path, headers, Credentials(creds.access_key, creds.secret_key, token), region=region,
                timestamp=amz_date(NOW))
    assert ours.headers["authorization"] == theirs["authorization"]
    assert ours.headers["x-amz-date"] == theirs["x-amz-date"] == "20261103T040506Z"
    assert ours.headers["x-amz-content-sha256"] == theirs["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert ours.headers.get("x-amz-security-token") == theirs.get("x-amz-security-token")


def test_keys_are_encoded_as_s3_wants() -> None:
    assert quote_key("a b/ü+=~.txt") == "a%20b/%C3%BC%2B%3D~.txt"
    assert quote_key("x//y/./z") == "x//y/./z"  # never normalised
    assert quote_key("100%") == "100%25"  # never left as if it were encoded already
    assert quote_key("*'()!") == "%2A%27%28%29%21"


def test_aws_documentation_example_get_object() -> None:
    """The "GET Object" example of AWS's "Signature Calculations for the Authorization Header" (S3)."""
    headers = {"Host": "examplebucket.s3.amazonaws.com", "Range": "bytes=0-9"}
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    signed = sign("GET", "/test.txt", headers,
                  Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
                  region="us-east-1", timestamp="20130524T000000Z", payload_hash=empty)
    assert signed.headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_signing_key_is_cached_per_day_region_service() -> None:
    signing_key.cache_clear()
    first = signing_key("secret", "20261103", "us-east-1", "s3")
    assert signing_key("secret", "20261103", "us-east-1", "s3") is first
    assert signing_key("secret", "20261104", "us-east-1", "s3") != first
    assert signing_key("secret", "20261103", "eu-west-1", "s3") != first
    assert signing_key("other", "20261103", "us-east-1", "s3") != first
    info = signing_key.cache_info()
    assert (info.hits, info.misses) == (1, 4)


def test_canonical_query_sorts_and_encodes() -> None:
    assert canonical_query({"uploadId": "a/b+c", "partNumber": "2", "x y": "é"}) == (
        "partNumber=2&uploadId=a%2Fb%2Bc&x%20y=%C3%A9")


def test_amz_date_is_utc() -> None:
    eastern = _dt.timezone(_dt.timedelta(hours=-5))
    assert amz_date(_dt.datetime(2026, 1, 1, 19, 0, 0, tzinfo=eastern)) == "20260102T000000Z"
