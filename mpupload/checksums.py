"""Checksums S3 understands, computed locally, and how they combine across parts.

* ``crc32c`` (awscrt, ~0.06 CPU-s/GiB), ``crc32`` (zlib), ``sha256`` and ``md5`` (hashlib);
* S3 sends them base64-encoded in ``x-amz-checksum-<algo>``; ``Content-MD5`` carries the MD5;
* a multipart object's *composite* checksum is the checksum of the concatenated raw part checksums,
  followed by ``-N`` (N parts); its ETag, on stores that use MD5 ETags, is
  ``md5(concat(part md5s))-N`` in hex.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import zlib
from collections.abc import Iterable
from typing import Protocol

from awscrt import checksums as _crt

__all__ = [
    "Algorithm", "Hasher", "new_hasher", "b64", "unb64", "composite_checksum", "multipart_etag", "boto_checksum_param",
]


class Algorithm(enum.StrEnum):
    CRC32C = "crc32c"
    CRC32 = "crc32"
    SHA256 = "sha256"
    MD5 = "md5"


class Hasher(Protocol):
    def update(self, data: bytes | memoryview) -> None: ...
    def digest(self) -> bytes: ...


class _Crc32c:
    __slots__ = ("_crc",)

    def __init__(self) -> None:
        self._crc = 0

    def update(self, data: bytes | memoryview) -> None:
        self._crc = _crt.crc32c(data, self._crc)

    def digest(self) -> bytes:
        return self._crc.to_bytes(4, "big")


class _Crc32:
    __slots__ = ("_crc",)

    def __init__(self) -> None:
        self._crc = 0

    def update(self, data: bytes | memoryview) -> None:
        self._crc = zlib.crc32(data, self._crc)

    def digest(self) -> bytes:
        return self._crc.to_bytes(4, "big")


def new_hasher(algorithm: Algorithm) -> Hasher:
    if algorithm is Algorithm.CRC32C:
        return _Crc32c()
    if algorithm is Algorithm.CRC32:
        return _Crc32()
    if algorithm is Algorithm.SHA256:
        return hashlib.sha256()
    return hashlib.md5()  # noqa: S324 - S3's ETag/Content-MD5, not security


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def unb64(value: str | None) -> bytes:
    """The raw digest behind a base64 checksum (``b""`` for ``None``)."""
    return base64.b64decode(value or "")


def composite_checksum(algorithm: Algorithm, part_digests: Iterable[bytes]) -> str:
    """The checksum S3 reports for a multipart object built from parts with these raw digests."""
    parts = list(part_digests)
    hasher = new_hasher(algorithm)
    for digest in parts:
        hasher.update(digest)
    return f"{b64(hasher.digest())}-{len(parts)}"


def multipart_etag(part_md5s: Iterable[bytes]) -> str:
    """The ETag an MD5-ETag store gives a multipart object (without quotes)."""
    parts = list(part_md5s)
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"  # noqa: S324


def boto_checksum_param(algorithm: Algorithm) -> str:
    """The boto3 request parameter carrying this algorithm's value, e.g. ``ChecksumCRC32C``."""
    return {
        Algorithm.CRC32C: "ChecksumCRC32C",
        Algorithm.CRC32: "ChecksumCRC32",
        Algorithm.SHA256: "ChecksumSHA256",
        Algorithm.MD5: "ContentMD5",
    }[algorithm]
