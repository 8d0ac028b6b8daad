"""The API server's presigned part and PutObject URLs, signed by mpupload's own SigV4 (``sigv4.presign``) at the
lean path's endpoint, against botocore's ``generate_presigned_url`` with the clock fixed: the same URL, parameter
for parameter, signature included, for path-style and virtual-hosted endpoints, odd keys and session tokens.
(Ceph RGW checks these signatures in the integration tests.)"""

from __future__ import annotations

import datetime as _dt
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore import auth as bauth

from mpupload.checksums import Algorithm
from mpupload.storage import boto3_store
from mpupload.storage.boto3_store import Boto3Store
from mpupload.storage.config import StoreConfig
from mpupload.storage.port import Checksum

NOW = _dt.datetime(2026, 11, 3, 4, 5, 6, tzinfo=_dt.UTC)
KEYS = ["plain", "a b/c d.txt", "ünïcödé/ß/日本語.bin", "a+b=c~d&e?f#g%h", "dir//double/./dot/../x",
        "semi;colon,comma:colon@at!bang$dollar'q(p)*s", "~tilde_under-dash.dot"]
TOKEN = "FwoGZXIvYXdzEJr//////////wEaDtoken+with/slash="


def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bauth, "get_current_datetime",
                        lambda remove_tzinfo=True: NOW.replace(tzinfo=None) if remove_tzinfo else NOW)
    monkeypatch.setattr(boto3_store, "_now", lambda: NOW)
    try:  # botocore presigns with the CRT signer when awscrt is installed (it is: a dependency)
        from botocore.crt import auth as crt_auth

        monkeypatch.setattr(crt_auth, "get_current_datetime",
                            lambda remove_tzinfo=True: NOW.replace(tzinfo=None) if remove_tzinfo else NOW)
    except ImportError:  # pragma: no cover
        pass


def parsed(url: str) -> tuple[str, str, str, dict[str, list[str]]]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc, parts.path, parse_qs(parts.query, keep_blank_values=True)


@pytest.mark.parametrize("where", ["path-style", "virtual-hosted"])
@pytest.mark.parametrize("token", [None, TOKEN])
@pytest.mark.parametrize("key", KEYS)
def test_presigned_urls_equal_botocores(where: str, token: str | None, key: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fixed_clock(monkeypatch)
    config = StoreConfig(endpoint_url="http://127.0.0.1:9000", region="us-east-1") if where == "path-style" \
        else StoreConfig(region="eu-west-1")
    store = Boto3Store(StoreConfig(**{**config.__dict__, "credentials": ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG",
                                                                         token)}))
    checksum = Checksum(Algorithm.CRC32C, "YXFUyQ==")
    cases: list[tuple[str, dict[str, Any]]] = [
        ("upload_part", {"Bucket": "bkt", "Key": key, "UploadId": "2~abc/def+g==", "PartNumber": 7}),
        ("put_object", {"Bucket": "bkt", "Key": key}),
    ]
    for operation, params in cases:
        for sent, md5 in ((checksum, "OYUz1IER6fZksfZMsQxLYw=="), (checksum, None), (None, None)):
            headers: dict[str, str] = {}
            theirs_params = dict(params)
            if sent is not None:
                theirs_params["ChecksumCRC32C"] = sent.value
                headers["x-amz-checksum-crc32c"] = sent.value
            if md5 is not None:
                theirs_params["ContentMD5"] = md5
                headers["Content-MD5"] = md5
            ours = store._fast_presign("PUT", dict(params), dict(headers), 900)
            assert ours is not None, "the fast presign must serve a plain SigV4 endpoint"
            theirs = store.presign_client.generate_presigned_url(operation, Params=theirs_params, ExpiresIn=900,
                                                                 HttpMethod="PUT")
            assert resigned(ours, headers, token, store) == ours  # botocore's own query signer agrees
            if where == "path-style":
                assert parsed(ours) == parsed(theirs), (operation, sent, md5)
            else:
                # botocore presigns at the global name (bkt.s3.amazonaws.com, signed for eu-west-1: AWS may
                # answer a PUT there with a redirect); ours is the regional name its own requests use
                ours_p, theirs_p = parsed(ours), parsed(theirs)
                assert ours_p[1] == "bkt.s3.eu-west-1.amazonaws.com" and theirs_p[1] == "bkt.s3.amazonaws.com"
                drop = ("X-Amz-Signature",)
                assert ours_p[2] == theirs_p[2]
                assert {k: v for k, v in ours_p[3].items() if k not in drop} == \
                    {k: v for k, v in theirs_p[3].items() if k not in drop}


def resigned(url: str, headers: dict[str, str], token: str | None, store: Boto3Store) -> str:
    """``url`` signed again by botocore's pure-Python ``S3SigV4QueryAuth`` (its own authentication parameters
    taken out first), with the same headers, credentials, region and time."""
    from urllib.parse import urlencode

    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    scheme, netloc, path, query = parsed(url)
    plain = {k: v[0] for k, v in query.items() if not k.startswith("X-Amz-")}
    region = query["X-Amz-Credential"][0].split("/")[2]
    request = AWSRequest(method="PUT", url=f"{scheme}://{netloc}{path}" + (f"?{urlencode(plain)}" if plain else ""),
                         headers=dict(headers))
    bauth.S3SigV4QueryAuth(BotoCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", token), "s3", region,
                           expires=900).add_auth(request)
    mine, theirs = parsed(url), parsed(request.prepare().url)
    return url if mine[3]["X-Amz-Signature"] == theirs[3]["X-Amz-Signature"] else request.prepare().url


def test_botocore_signs_where_the_lean_path_would_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPUPLOAD_LEAN_PUT", "0")
    store = Boto3Store(StoreConfig(endpoint_url="http://127.0.0.1:9000", region="us-east-1",
                                   credentials=("AKIDEXAMPLE", "secret", None)))
    assert store._fast_presign("PUT", {"Bucket": "bkt", "Key": "k"}, {}, 900) is None
    request = store.presign_put_object("bkt", "k", expires_in=900)
    assert "X-Amz-Signature=" in request.url and request.url.startswith("http://127.0.0.1:9000/bkt/k?")
