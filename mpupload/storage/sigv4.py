"""AWS Signature Version 4 for S3 requests, header-based, written from the public algorithm.

The lean PutObject (:mod:`.lean`) signs its own requests with it. S3's flavour of SigV4 differs from the
generic one in two ways, both kept here:

* the **canonical URI** is the path exactly as it is sent: each segment URI-encoded once (RFC 3986 unreserved
  characters ``A-Z a-z 0-9 - _ . ~`` kept, every other byte of the UTF-8 key as ``%XX``), ``/`` kept, never
  normalised (``a//b`` and ``./`` stay as they are) and never encoded twice: :func:`quote_key` builds it;
* the **payload hash** goes in ``x-amz-content-sha256`` and is signed: ``UNSIGNED-PAYLOAD`` (what botocore
  sends with ``payload_signing_enabled: False``, over HTTP and HTTPS alike), or the hex SHA-256 of the body.

The algorithm (AWS's "Create a signed AWS API request"):

1. canonical request = method, canonical URI, canonical query string, canonical headers (lower-case names,
   sorted, values trimmed with inner runs of spaces folded to one), signed header names, payload hash, each on
   its own line;
2. string to sign = ``AWS4-HMAC-SHA256``, the request time (``YYYYMMDDTHHMMSSZ``), the scope
   (``date/region/service/aws4_request``), the hex SHA-256 of the canonical request;
3. signing key = HMAC-SHA256 chain over ``"AWS4" + secret``, date, region, service, ``aws4_request``: cached
   per (secret, date, region, service), so a run signs each request with two hashes and one HMAC;
4. ``Authorization: AWS4-HMAC-SHA256 Credential=<access key>/<scope>, SignedHeaders=<names>,
   Signature=<hex HMAC of the string to sign>``.

:func:`presign` is the query-string form of the same signature (a presigned URL, for the API server's brokered
uploads): the ``X-Amz-*`` parameters go in the query and are part of the canonical query string, the payload
is ``UNSIGNED-PAYLOAD`` and is not a header, and the signature is appended as ``X-Amz-Signature``.

Time comes in as an argument (:func:`amz_date`), so a signature is a pure function of its inputs.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

__all__ = ["Credentials", "SignedRequest", "UNSIGNED_PAYLOAD", "ALGORITHM", "amz_date", "quote_key",
           "canonical_query", "signing_key", "sign", "presign"]

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
ALGORITHM = "AWS4-HMAC-SHA256"
#: headers never signed (as botocore: a proxy or the HTTP layer may change them)
_UNSIGNED_HEADERS = frozenset({"user-agent", "expect", "connection", "keep-alive", "transfer-encoding",
                               "proxy-authorization", "te", "x-amzn-trace-id", "authorization"})


@dataclass(frozen=True)
class Credentials:
    """One frozen set of credentials (a session token for temporary ones)."""

    access_key: str
    secret_key: str
    token: str | None = None


@dataclass(frozen=True)
class SignedRequest:
    """The headers a signature adds to a request (``x-amz-date``, ``x-amz-content-sha256``, the token when
    there is one, ``authorization``), and the canonical request behind it (for debugging a refusal)."""

    headers: dict[str, str]
    canonical_request: str


def amz_date(now: _dt.datetime) -> str:
    """``YYYYMMDDTHHMMSSZ`` of an aware datetime (its UTC time)."""
    return now.astimezone(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def quote_key(key: str) -> str:
    """An S3 object key as a URI path (no leading ``/``): every byte but the unreserved ones and ``/``
    percent-encoded, once. ``a b/ü+=~`` becomes ``a%20b/%C3%BC%2B%3D~``."""
    return quote(key, safe="/~")


def canonical_query(params: Mapping[str, str]) -> str:
    """The canonical query string: names and values URI-encoded (``/`` too), sorted by name then value."""
    return _canonical_query(tuple(params.items()))


@functools.lru_cache(maxsize=256)
def _canonical_query(items: tuple[tuple[str, str], ...]) -> str:
    # the URLs of one signing batch share theirs (a presigned PutObject's has no per-object parameter)
    return "&".join(f"{k}={v}" for k, v in sorted((quote(k, safe="~"), quote(v, safe="~")) for k, v in items))


@functools.lru_cache(maxsize=32)
def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """The derived key of one day, region and service (``date`` is ``YYYYMMDD``)."""
    key = hmac.digest(f"AWS4{secret_key}".encode(), date.encode(), "sha256")
    for part in (region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def _trim(value: str) -> str:
    return " ".join(value.split())


def sign(
    method: str,
    path: str,
    headers: Mapping[str, str],
    credentials: Credentials,
    *,
    region: str,
    timestamp: str,
    service: str = "s3",
    query: str = "",
    payload_hash: str = UNSIGNED_PAYLOAD,
) -> SignedRequest:
    """Sign a request whose URI path is ``path`` (already encoded: :func:`quote_key`) and whose headers are
    ``headers`` (``host`` among them); ``timestamp`` is :func:`amz_date`'s form, ``query`` is canonical
    (:func:`canonical_query`). Every header but the few a proxy may change is signed, with the ones the
    signature adds."""
    added = {"x-amz-date": timestamp, "x-amz-content-sha256": payload_hash}
    if credentials.token:
        added["x-amz-security-token"] = credentials.token
    to_sign: dict[str, str] = {}
    for name, value in headers.items():
        lname = name.lower()
        if lname not in _UNSIGNED_HEADERS:
            to_sign[lname] = _trim(str(value))
    to_sign.update(added)
    names = sorted(to_sign)
    signed_headers = ";".join(names)
    scope = f"{timestamp[:8]}/{region}/{service}/aws4_request"
    canonical, signature = _signature(method, path, query, to_sign, payload_hash, credentials.secret_key,
                                      timestamp=timestamp, region=region, service=service)
    added["authorization"] = (f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
                              f"SignedHeaders={signed_headers}, Signature={signature}")
    return SignedRequest(added, canonical)


def presign(
    method: str,
    path: str,
    headers: Mapping[str, str],
    credentials: Credentials,
    *,
    region: str,
    timestamp: str,
    expires: int,
    params: Mapping[str, str] | None = None,
    service: str = "s3",
) -> str:
    """The query string of a presigned request: ``params`` (e.g. ``partNumber``, ``uploadId``), the ``X-Amz-*``
    authentication parameters, and ``X-Amz-Signature``. ``path`` is already encoded (:func:`quote_key`);
    ``headers`` are the ones the request must then carry (``host`` among them), all signed."""
    scope = f"{timestamp[:8]}/{region}/{service}/aws4_request"
    to_sign = {name.lower(): _trim(str(value)) for name, value in headers.items()
               if name.lower() not in _UNSIGNED_HEADERS}
    signed_headers = ";".join(sorted(to_sign))
    query = dict(params or {})
    query.update({"X-Amz-Algorithm": ALGORITHM, "X-Amz-Credential": f"{credentials.access_key}/{scope}",
                  "X-Amz-Date": timestamp, "X-Amz-Expires": str(int(expires)), "X-Amz-SignedHeaders": signed_headers})
    if credentials.token:
        query["X-Amz-Security-Token"] = credentials.token
    canonical_qs = canonical_query(query)
    _, signature = _signature(method, path, canonical_qs, to_sign, UNSIGNED_PAYLOAD, credentials.secret_key,
                              timestamp=timestamp, region=region, service=service)
    return f"{canonical_qs}&X-Amz-Signature={signature}"


def _signature(method: str, path: str, query: str, headers: Mapping[str, str], payload_hash: str, secret_key: str,
               *, timestamp: str, region: str, service: str) -> tuple[str, str]:
    """The canonical request of a request whose signed ``headers`` are lower-case and trimmed, and its
    signature (hex)."""
    names = sorted(headers)
    canonical = "\n".join((
        method,
        path,
        query,
        "".join(f"{n}:{headers[n]}\n" for n in names),
        ";".join(names),
        payload_hash,
    ))
    date = timestamp[:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = f"{ALGORITHM}\n{timestamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.digest(signing_key(secret_key, date, region, service), string_to_sign.encode(), "sha256").hex()
    return canonical, signature
