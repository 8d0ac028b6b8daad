"""Typed options and result of one upload: what the library API takes and returns."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ChecksumMode", "UploadOptions", "UploadResult"]


class ChecksumMode(enum.StrEnum):
    AUTO = "auto"
    CRC32C = "crc32c"
    CRC32 = "crc32"
    SHA256 = "sha256"
    MD5 = "md5"
    NONE = "none"


@dataclass(frozen=True)
class UploadOptions:
    part_size: int | None = None
    workers: int | None = None
    checksum: ChecksumMode = ChecksumMode.AUTO
    keep_on_interrupt: bool = False
    #: None: guessed from the file name
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    storage_class: str | None = None
    #: ``AES256``, ``aws:kms`` or ``aws:kms:dsse``
    sse: str | None = None
    sse_kms_key_id: str | None = None
    no_overwrite: bool = False
    #: multiprocessing start method for the workers: fork, forkserver or spawn (None: the platform's)
    start_method: str | None = None
    #: continue the interrupted upload of this file to this key (journal, else the store's newest one)
    resume: bool = False
    #: keep a resume journal (``mpupload.journal``) while a multipart upload runs
    journal: bool = True
    #: the command that resumes this upload, reported when the multipart upload is kept
    resume_command: str | None = None


@dataclass(frozen=True)
class UploadResult:
    bucket: str
    key: str
    size: int
    etag: str | None
    #: ``"<algorithm>:<value>"`` of the stored object, when known
    checksum: str | None
    #: how the object was verified against the file: ``crc32c``, ``crc32``, ``sha256``, ``md5``, ``size-only``
    verified: str
    location: str
    #: the store's multipart UploadId, None for a single PutObject
    upload_id: str | None
    parts_total: int
    elapsed_seconds: float
    avg_speed_bps: float
    warnings: tuple[str, ...] = ()
    resumed_bytes: int = 0
    resumed_parts: int = 0
