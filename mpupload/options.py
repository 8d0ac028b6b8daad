"""Typed options and result of one upload: what the library API takes and returns."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ChecksumMode", "VerifyMode", "UploadOptions", "UploadResult"]


class ChecksumMode(enum.StrEnum):
    AUTO = "auto"
    CRC32C = "crc32c"
    CRC32 = "crc32"
    SHA256 = "sha256"
    MD5 = "md5"
    NONE = "none"


class VerifyMode(enum.StrEnum):
    #: the strongest check the store offers: its checksum or ETag, else the object's size (and a warning)
    AUTO = "auto"
    #: also read the object back and compare it with the file, part by part
    READ_BACK = "read-back"


@dataclass(frozen=True)
class UploadOptions:
    part_size: int | None = None
    workers: int | None = None
    checksum: ChecksumMode = ChecksumMode.AUTO
    keep_on_interrupt: bool = False
    #: abort on Ctrl+C even on a ``--resume`` run (which otherwise keeps the upload it resumed)
    abort_on_interrupt: bool = False
    verify: VerifyMode = VerifyMode.AUTO
    #: None: guessed from the file name
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    storage_class: str | None = None
    #: ``AES256``, ``aws:kms`` or ``aws:kms:dsse``
    sse: str | None = None
    sse_kms_key_id: str | None = None
    no_overwrite: bool = False
    #: cap the whole run at this many bytes per second, every worker and thread together (``--max-bandwidth``; at
    #: least 64 KiB/s; None: no cap). See :mod:`mpupload.engine.throttle`
    max_bandwidth: int | None = None
    #: multiprocessing start method for the workers: fork, forkserver or spawn (None: the platform's)
    start_method: str | None = None
    #: continue the interrupted upload of this file to this key (journal, else the store's newest one)
    resume: bool = False
    #: keep a resume journal (``mpupload.journal``) while a multipart upload runs
    journal: bool = True
    #: the command that resumes this upload, reported when the multipart upload is kept
    resume_command: str | None = None
    #: the command that aborts one multipart upload of this destination, with ``{upload_id}`` in it; reported for
    #: every upload left on the store (None: an ``aws s3api abort-multipart-upload`` command)
    cleanup_command: str | None = None
    #: run the parts and small files on this Dask cluster's workers (``--cluster tcp://HOST:8786``); None: locally
    cluster: str | None = None
    #: hand this process's credentials to the cluster's workers with every task (``--cluster-pass-credentials``);
    #: otherwise the workers use their own credential chain and nothing secret travels
    cluster_pass_credentials: bool = False

    @property
    def keeps_on_interrupt(self) -> bool:
        """Whether Ctrl+C keeps the multipart upload: ``--keep-on-interrupt``, or a ``--resume`` run (it must
        not destroy the parts of the run it continues) unless ``--abort-on-interrupt``."""
        return self.keep_on_interrupt or (self.resume and not self.abort_on_interrupt)


@dataclass(frozen=True)
class UploadResult:
    bucket: str
    key: str
    size: int
    etag: str | None
    #: ``"<algorithm>:<value>"`` of the stored object, when known
    checksum: str | None
    #: how the object was verified against the file: ``crc32c``, ``crc32``, ``sha256``, ``md5``, ``read-back``,
    #: ``size-only``
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
