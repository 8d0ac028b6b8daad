"""Checksums as S3 computes them, including the composite checksum and the multipart ETag."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest

from mpupload.checksums import (
    Algorithm,
    b64,
    boto_checksum_param,
    composite_checksum,
    multipart_etag,
    new_hasher,
)


@pytest.mark.parametrize(("algorithm", "data", "expected"), [
    (Algorithm.CRC32C, b"123456789", "4waSgw=="),  # the CRC-32C check value 0xE3069283
    (Algorithm.CRC32, b"123456789", base64.b64encode(zlib.crc32(b"123456789").to_bytes(4, "big")).decode()),
    (Algorithm.SHA256, b"abc", base64.b64encode(hashlib.sha256(b"abc").digest()).decode()),
    (Algorithm.MD5, b"", "1B2M2Y8AsgTpgAmY7PhCfg=="),
])
def test_hashers(algorithm: Algorithm, data: bytes, expected: str) -> None:
    h = new_hasher(algorithm)
    h.update(data[:3])
    h.update(memoryview(data)[3:])
    assert b64(h.digest()) == expected


def test_composite_and_etag() -> None:
    parts = [b"a" * 10, b"b" * 7]
    digests = []
    for p in parts:
        h = new_hasher(Algorithm.CRC32C)
        h.update(p)
        digests.append(h.digest())
    outer = new_hasher(Algorithm.CRC32C)
    outer.update(b"".join(digests))
    assert composite_checksum(Algorithm.CRC32C, digests) == b64(outer.digest()) + "-2"
    md5s = [hashlib.md5(p).digest() for p in parts]
    assert multipart_etag(md5s) == hashlib.md5(b"".join(md5s)).hexdigest() + "-2"


def test_boto_params() -> None:
    assert boto_checksum_param(Algorithm.CRC32C) == "ChecksumCRC32C"
    assert boto_checksum_param(Algorithm.SHA256) == "ChecksumSHA256"
