"""What the server accepts: every size, length and range limit of a request, in one place.

Everything a client sends is checked here before it reaches argon2, the login limiter or the database, so
that no input can produce a 500 (PostgreSQL refuses a NUL in text, a 33-bit number in an ``INTEGER`` column
or a 256-character ``VARCHAR(255)``; Python's JSON parser turns ``1e400`` into ``inf`` and accepts ``NaN``)
and nothing unbounded is kept. A refusal raises :class:`InputError` (a ``ValueError``) whose message names
the field and the limit; the routes answer it with 422. The progress report's fields and bounds (the rows
marked *wire*) are defined once, with the report, in :data:`mpupload.wire.REPORT_FIELDS`.

==========================  =================  =====================================================
field                       limit              why
==========================  =================  =====================================================
user name                   256 bytes (UTF-8)  longer names cannot exist; checked before the limiter
password                    4096 bytes         plenty for argon2; checked before hashing
upload id                   64 characters      ids are 16; a longer one is simply not found (404)
``filename``                4096 bytes         a path (Linux ``PATH_MAX``)
``key``                     1024 bytes         S3's own key limit
``bucket``, ``host``        255 characters     their columns
``checksum``, ``etag``      1024 bytes         *wire*
``error``                   64 KiB             *wire*: room for a store's whole error answer
``resume_command``          8192 bytes         *wire*
every text                  no NUL, valid      PostgreSQL cannot store either
                            Unicode
byte counts, ``seq``        0 .. 2^63 - 1      *wire*: ``BIGINT``
part counts                 0 .. 2^31 - 1      *wire*: ``INTEGER``
speeds, times               finite             *wire*: NaN and infinities are refused
uploads per user            10,000             ``MPUPLOAD_MAX_UPLOADS_PER_USER``; then 409
==========================  =================  =====================================================
"""

from __future__ import annotations

import math

from ..wire import INT32_MAX, INT64_MAX, REPORT_FIELDS

__all__ = ["InputError", "MAX_USERNAME_BYTES", "MAX_USER_NAME_CHARS", "MAX_PASSWORD_BYTES", "MAX_UPLOAD_ID_CHARS",
           "MAX_FILENAME_BYTES",
           "MAX_KEY_BYTES", "MAX_BUCKET_CHARS", "MAX_HOST_CHARS", "MAX_TEXT_BYTES", "INT64_MAX", "INT32_MAX",
           "DEFAULT_MAX_UPLOADS_PER_USER", "check_text", "check_int", "check_float", "valid_upload_id"]

MAX_USERNAME_BYTES = 256
#: what ``mpupload users add`` accepts: the ``users.name`` column
MAX_USER_NAME_CHARS = 150
MAX_PASSWORD_BYTES = 4096
MAX_UPLOAD_ID_CHARS = 64
MAX_FILENAME_BYTES = 4096
MAX_KEY_BYTES = 1024
MAX_BUCKET_CHARS = 255
MAX_HOST_CHARS = 255
#: the free-text fields of a progress report, in bytes (defined with the report in :mod:`mpupload.wire`)
MAX_TEXT_BYTES = {f.name: f.maximum for f in REPORT_FIELDS if f.kind is str and f.maximum is not None}
DEFAULT_MAX_UPLOADS_PER_USER = 10_000


class InputError(ValueError):
    """A value outside what the server accepts; the message names the field and the limit (answered 422)."""


def check_text(name: str, value: str, *, max_bytes: int | None = None, max_chars: int | None = None) -> str:
    """``value`` when it is valid Unicode without NUL within the limits, else :class:`InputError`."""
    if max_chars is not None and len(value) > max_chars:
        raise InputError(f"{name} is at most {max_chars} characters, got {len(value)}")
    if max_bytes is not None and len(value) > max_bytes:  # a character is at least one byte
        raise InputError(f"{name} is at most {max_bytes} bytes, got {len(value)} characters or more")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InputError(f"{name} is not valid Unicode (a lone surrogate)") from None
    if max_bytes is not None and size > max_bytes:
        raise InputError(f"{name} is at most {max_bytes} bytes (UTF-8), got {size}")
    if "\x00" in value:
        raise InputError(f"{name} must not contain a NUL character")
    return value


def check_int(name: str, value: int, maximum: int = INT64_MAX) -> int:
    """``value`` when it is in ``0 .. maximum``, else :class:`InputError`."""
    if value < 0:
        raise InputError(f"{name} must not be negative, got {value}")
    if value > maximum:
        raise InputError(f"{name} is at most {maximum}, got a larger number")
    return value


def check_float(name: str, value: float) -> float:
    """``value`` when it is a finite, non-negative number, else :class:`InputError`."""
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r} (NaN and infinities are refused)")
    if value < 0:
        raise InputError(f"{name} must not be negative, got {value}")
    return value


def valid_upload_id(upload_id: str) -> bool:
    """Whether ``upload_id`` could name an upload at all (anything else is simply not found)."""
    return 0 < len(upload_id) <= MAX_UPLOAD_ID_CHARS and upload_id.isascii() and "\x00" not in upload_id
