"""Boto3Store: its client is built lazily, once per process, and it crosses a process boundary as its config."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from mpupload.checksums import Algorithm
from mpupload.storage import Boto3Store, StoreConfig
from mpupload.storage.port import Checksum, CompletedPart

CONFIG = StoreConfig(endpoint_url="http://127.0.0.1:9", region="us-east-1")


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")


def test_the_client_is_built_on_first_use_and_never_pickled() -> None:
    store = Boto3Store(CONFIG)
    assert store._client is None
    store.connect()
    client = store.client
    assert client is not None and store.client is client
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    again = pickle.loads(pickle.dumps(store))
    assert again == store and hash(again) == hash(store) and again._client is None
    assert len(pickle.dumps(store)) < 1000  # the config, not a client
    short = store.short_lived()
    assert short.config == CONFIG.short_lived() and short._client is None
    assert store.endpoint_url == "http://127.0.0.1:9"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def call(**kwargs: Any) -> dict[str, Any]:
            self.calls.append((name, kwargs))
            return {"UploadId": "u", "ETag": '"e"'}
        return call


def test_requests_carry_s3_parameters() -> None:
    client = Recorder()
    store = Boto3Store.over_client(client)
    store.create_multipart_upload("b", "k", algorithm=Algorithm.CRC32C, object_args={"ContentType": "x/y"})
    store.upload_part("b", "k", "u", 3, b"body", content_length=4, checksum=Checksum(Algorithm.CRC32C, "c"),
                      content_md5="m")
    store.complete_multipart_upload("b", "k", "u", [CompletedPart(1, "e1", Checksum(Algorithm.CRC32C, "c1")),
                                                    CompletedPart(2, "e2")], if_none_match=True)
    store.put_object("b", "k", b"x", content_length=1, if_none_match=True, object_args={"Metadata": {"a": "b"}})
    store.delete_object("b", "k", if_match="e")
    store.delete_object("b", "k", version_id="v", if_match="e")
    store.head_object("b", "k", checksum_mode=True)
    assert client.calls == [
        ("create_multipart_upload", {"ContentType": "x/y", "Bucket": "b", "Key": "k", "ChecksumAlgorithm": "CRC32C"}),
        ("upload_part", {"Bucket": "b", "Key": "k", "UploadId": "u", "PartNumber": 3, "ContentLength": 4,
                         "ChecksumCRC32C": "c", "ContentMD5": "m", "Body": b"body"}),
        ("complete_multipart_upload", {"Bucket": "b", "Key": "k", "UploadId": "u", "IfNoneMatch": "*",
                                       "MultipartUpload": {"Parts": [
                                           {"PartNumber": 1, "ETag": '"e1"', "ChecksumCRC32C": "c1"},
                                           {"PartNumber": 2, "ETag": '"e2"'}]}}),
        ("put_object", {"Bucket": "b", "Key": "k", "ContentLength": 1, "Metadata": {"a": "b"}, "IfNoneMatch": "*",
                        "Body": b"x"}),
        ("delete_object", {"Bucket": "b", "Key": "k", "IfMatch": '"e"'}),
        ("delete_object", {"Bucket": "b", "Key": "k", "VersionId": "v"}),
        ("head_object", {"Bucket": "b", "Key": "k", "ChecksumMode": "ENABLED"}),
    ]
