"""The lean PutObject: a whole small object sent with one signed HTTP request, without botocore's pipeline.

Why: a directory run sends thousands of small objects, and for a 64 KiB PutObject about 85 % of the client's
CPU is botocore's request pipeline (event hooks, request objects, the CRT signer, urllib3), about 2 CPU-ms per
object. This path does only what that request needs: it signs with :mod:`.sigv4`, writes the request on a
persistent :mod:`http.client` connection of the thread, streams the body, and reads the answer's headers.

What it takes from the boto3 client (:class:`~mpupload.storage.boto3_store.Boto3Store`'s own), so both paths
send the same request to the same place:

* the **endpoint** and addressing style, per bucket, from botocore's endpoint rules (path style for custom
  endpoints, virtual-hosted on AWS, path style for bucket names with dots), with the **signing region** of
  the rules' ``sigv4`` scheme; any other scheme (SigV4a, S3 Express sessions) stays with botocore;
* the **credentials** object, frozen anew for every request, so refreshable (role, SSO) credentials keep
  working; a session token goes in ``x-amz-security-token``;
* the **TLS** verification botocore would use (a CA bundle, ``AWS_CA_BUNDLE``, certifi's bundle, or none),
  the timeouts, TCP keep-alive; a proxy botocore would use for the endpoint keeps that bucket on botocore;
* the **headers** botocore sends for these arguments (their names come from the service model):
  ``Content-Length``, ``Content-MD5``, ``x-amz-checksum-<algorithm>`` (alone, as botocore sends it with
  ``request_checksum_calculation="when_required"``), ``Content-Type``, ``x-amz-meta-*``, storage class, SSE,
  ACL, tagging, ``If-None-Match``; the payload is ``UNSIGNED-PAYLOAD``, as botocore sends it with
  ``payload_signing_enabled: False`` (over HTTP too; moto, Ceph RGW and the discard server accept it).

What it answers: a dict shaped as botocore's PutObject answer (``ETag``, ``Checksum*``, ``VersionId``,
``ServerSideEncryption``, ``SSEKMSKeyId``, ... and ``ResponseMetadata`` with ``HTTPStatusCode`` and
``HTTPHeaders``). Errors: an error answer is :class:`~mpupload.storage.errors.StoreError` (code and message
from S3's XML error body; an empty body: the status as the code, as botocore does); a network failure is
botocore's own exception for it (``EndpointConnectionError``, ``ConnectionClosedError``, ``ReadTimeoutError``,
``SSLError``), so :func:`~mpupload.storage.errors.classify` and ``is_retryable`` read both paths alike. After any
error the connection is dropped. botocore's retries do not run here: the worker's retry loop is the one that
retries (throttling, 5xx, resets); a reused keep-alive connection that the server had closed is retried once
at once, on a new one. A redirect to another region (301/307, ``AuthorizationHeaderMalformed``) raises
:class:`UseBotocore`: the store sends that request again through botocore, which follows it, and keeps the
bucket there.

Differences from botocore's request, on purpose: no ``Expect: 100-continue`` (the body follows the head at
once: a refusal costs the body's bytes, which is why only bodies up to :data:`LEAN_MAX_BYTES` come here); no
``amz-sdk-*`` headers; a shorter User-Agent.

Connections are per process and per thread: a forked child never writes on its parent's socket (the pid is
checked), and each thread of a worker's batch has its own.

``MPUPLOAD_LEAN_PUT=0`` turns it off (every PutObject then goes through botocore).
"""

from __future__ import annotations

import datetime as _dt
import http.client
import io
import logging
import os
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import StoreError
from .port import Checksum
from .sigv4 import Credentials, amz_date, quote_key, sign

__all__ = ["LeanPut", "Wire", "UseBotocore", "parse_error", "lean_enabled", "LEAN_PUT_ENV", "LEAN_MAX_BYTES",
           "LEAN_ARGS"]

log = logging.getLogger("mpupload")

#: the switch: ``0`` (or ``false``, ``no``, ``off``) sends every PutObject through botocore
LEAN_PUT_ENV = "MPUPLOAD_LEAN_PUT"
#: bodies up to this size take the lean path (it sends no ``Expect: 100-continue``)
LEAN_MAX_BYTES = 8 * 1024 * 1024
#: the PutObject arguments the lean path sends itself (their header names come from the service model); any
#: other argument (SSE-C keys, Expires, object-lock dates ...) sends that object through botocore
LEAN_ARGS = frozenset({
    "ContentType", "ContentEncoding", "ContentLanguage", "ContentDisposition", "CacheControl", "StorageClass",
    "ServerSideEncryption", "SSEKMSKeyId", "BucketKeyEnabled", "ACL", "Tagging", "WebsiteRedirectLocation",
    "Metadata", "ExpectedBucketOwner", "RequestPayer", "GrantFullControl", "GrantRead", "GrantReadACP",
    "GrantWriteACP", "ObjectLockMode", "ObjectLockLegalHoldStatus",
})
_CHECKSUM_ARGS = ("ChecksumCRC32C", "ChecksumCRC32", "ChecksumSHA256", "ChecksumSHA1", "ChecksumCRC64NVME")
#: the body is read (and sent) in chunks of this size
_CHUNK = 1024 * 1024
#: an error body is read up to this size
_MAX_ERROR_BODY = 64 * 1024
#: error codes and statuses that mean "another region": botocore knows how to follow them
_REDIRECT_CODES = frozenset({"PermanentRedirect", "TemporaryRedirect", "AuthorizationHeaderMalformed",
                             "IllegalLocationConstraintException"})
_REDIRECT_STATUSES = frozenset({301, 302, 307, 308})


class UseBotocore(Exception):
    """The lean path cannot finish this request (the bucket lives in another region): send it with botocore."""


def lean_enabled(environ: Mapping[str, str] | None = None) -> bool:
    value = (os.environ if environ is None else environ).get(LEAN_PUT_ENV, "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def _printable(value: str) -> bool:
    """A header value http.client sends as is and botocore would accept: printable ASCII (spaces and tabs
    allowed), no line breaks."""
    return value.isascii() and all(c == "\t" or " " <= c <= "~" for c in value)


def parse_error(status: int, body: bytes, reason: str = "") -> StoreError:
    """The :class:`StoreError` of an error answer: S3's ``<Error><Code/><Message/></Error>``; a body that is
    empty or not S3's XML gives the status as the code and the HTTP reason as the message (as botocore)."""
    code = message = ""
    text = body.strip()
    if text.startswith(b"<"):
        try:
            root = ET.fromstring(text)  # noqa: S314 - the store's own answer, size-capped
        except ET.ParseError:
            root = None
        if root is not None:
            # S3 answers <Error>; some stores wrap it (<ErrorResponse><Error>) or use a namespace
            error = root if _local(root.tag) == "Error" else next(
                (e for e in root.iter() if _local(e.tag) == "Error"), root)
            for child in error:
                if _local(child.tag) == "Code":
                    code = (child.text or "").strip()
                elif _local(child.tag) == "Message":
                    message = (child.text or "").strip()
    if not code:
        code = str(status)
        message = message or reason or http.client.responses.get(status, "")
    return StoreError(code, status, message, operation="PutObject")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


@dataclass(frozen=True)
class _Target:
    """Where one bucket's objects go: botocore's endpoint for it, and the signing scope."""

    scheme: str
    host: str
    port: int
    #: the ``Host`` header (the port only when it is not the scheme's default)
    host_header: str
    #: the URI path before the key: ``/bucket`` (path style) or empty (virtual-hosted)
    base_path: str
    region: str
    service: str


class _Connection(http.client.HTTPConnection):
    """A plain connection: the connect timeout while connecting, the read timeout once connected."""

    def __init__(self, host: str, port: int, *, connect_timeout: float, read_timeout: float,
                 keepalive: bool) -> None:
        super().__init__(host, port, timeout=connect_timeout)
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.used = 0

    def connect(self) -> None:
        super().connect()
        _tune(self.sock, self.read_timeout, self.keepalive)


class _TLSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, connect_timeout: float, read_timeout: float, keepalive: bool,
                 context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=connect_timeout, context=context)
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.used = 0

    def connect(self) -> None:
        super().connect()
        _tune(self.sock, self.read_timeout, self.keepalive)


def _tune(sock: socket.socket, read_timeout: float, keepalive: bool) -> None:
    sock.settimeout(read_timeout)
    if keepalive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def ssl_context(verify: bool | str | None) -> ssl.SSLContext:
    """The TLS context for botocore's ``verify`` as its HTTP session resolved it: ``False`` checks nothing; a
    path is a CA bundle (a directory: a CA path); ``True``/``None`` is botocore's default bundle (certifi's)."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if verify is True or verify is None:
        from botocore.httpsession import get_cert_path

        verify = get_cert_path(True)
    if isinstance(verify, str) and os.path.isdir(verify):
        context = ssl.create_default_context(capath=verify)
    else:
        context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


Conn = _Connection | _TLSConnection


class LeanPut:
    """The lean PutObject of one boto3 S3 client, in the process that built it (see the module docstring).

    Built by :meth:`for_client`, which answers ``None`` when the client's configuration is one this path does
    not fully support; :meth:`accepts` then says, per request, whether this one can go this way.
    """

    def __init__(self, client: Any, credentials: Any, http_session: Any) -> None:
        from botocore import __version__ as botocore_version

        from .. import __version__

        config = client.meta.config
        self._client = client
        self._credentials = credentials
        self._http_session = http_session
        self._wire = Wire(connect_timeout=float(config.connect_timeout), read_timeout=float(config.read_timeout),
                          keepalive=bool(getattr(config, "tcp_keepalive", False)),
                          verify=getattr(http_session, "_verify", True))
        self._pid = os.getpid()
        self._targets: dict[str, _Target | None] = {}
        self._user_agent = f"mpupload/{__version__} lean-put botocore/{botocore_version}"
        model = client.meta.service_model.operation_model("PutObject")
        self._operation = model
        inputs = model.input_shape.members
        self._arg_headers = {name: str(inputs[name].serialization["name"]) for name in LEAN_ARGS
                             if name != "Metadata" and name in inputs}
        self._meta_prefix = str(inputs["Metadata"].serialization.get("name", "x-amz-meta-"))
        self._checksum_headers = {name: str(inputs[name].serialization["name"]) for name in _CHECKSUM_ARGS
                                  if name in inputs}
        self._answer_fields: list[tuple[str, str, str]] = [
            (str(shape.serialization["name"]).lower(), name, shape.type_name)
            for name, shape in model.output_shape.members.items()
            if shape.serialization.get("location") == "header"]

    # -- when ------------------------------------------------------------------------------------------------
    @classmethod
    def for_client(cls, client: Any) -> LeanPut | None:
        """The lean path for ``client``, or ``None`` when it stays with botocore: switched off
        (``MPUPLOAD_LEAN_PUT=0``), another signature version than SigV4 (unsigned requests too), a client
        certificate, proxies in the client's config, botocore plugins, no credentials, or a botocore whose
        internals this module does not recognise."""
        reason = cls._unsupported(client)
        if reason is not None:
            log.debug("PutObject goes through botocore: %s", reason)
            return None
        try:
            return cls(client, client._request_signer._credentials, client._endpoint.http_session)
        except (AttributeError, KeyError, TypeError) as exc:
            log.debug("PutObject goes through botocore: this botocore is not understood (%s)", exc)
            return None

    @staticmethod
    def _unsupported(client: Any) -> str | None:
        if not lean_enabled():
            return f"{LEAN_PUT_ENV}=0"
        if os.environ.get("BOTOCORE_EXPERIMENTAL__PLUGINS"):
            return "botocore plugins are configured"
        try:
            config = client.meta.config
            signer = client._request_signer
            credentials = signer._credentials
            http_session = client._endpoint.http_session
        except AttributeError:
            return "not a botocore client"
        if config.signature_version not in (None, "s3v4", "v4"):
            return f"signature version {config.signature_version}"
        if credentials is None:
            return "no credentials"
        if getattr(config, "client_cert", None):
            return "a client certificate is configured"
        if getattr(config, "proxies", None):
            return "proxies are configured"
        if not hasattr(http_session, "_proxy_config") or not hasattr(http_session, "_verify"):
            return "botocore's HTTP session is not understood"
        return None

    def accepts(self, bucket: str, content_length: int, object_args: Mapping[str, Any] | None) -> bool:
        """Whether this PutObject can go the lean way: a known length up to :data:`LEAN_MAX_BYTES`, arguments
        from :data:`LEAN_ARGS` with printable ASCII values, and a bucket whose endpoint is plain SigV4."""
        if not 0 <= content_length <= LEAN_MAX_BYTES:
            return False
        for name, value in (object_args or {}).items():
            if name not in LEAN_ARGS or value is None:
                return False
            if name == "Metadata":
                if not isinstance(value, Mapping) or not all(
                        isinstance(k, str) and isinstance(v, str) and k and _printable(k) and _printable(v)
                        and ":" not in k and " " not in k for k, v in value.items()):
                    return False
            elif name == "BucketKeyEnabled":
                if not isinstance(value, bool):
                    return False
            elif not isinstance(value, str) or not _printable(value):
                return False
        return self._target(bucket) is not None

    def forget(self, bucket: str) -> None:
        """Send this bucket's objects through botocore from now on (it redirected us)."""
        self._targets[bucket] = None

    def _target(self, bucket: str) -> _Target | None:
        if bucket in self._targets:
            return self._targets[bucket]
        target = self._resolve(bucket)
        self._targets[bucket] = target
        return target

    def _resolve(self, bucket: str) -> _Target | None:
        """botocore's endpoint for the bucket (its endpoint rules: addressing style, region, FIPS,
        dual-stack ...), when it is plain SigV4 over HTTP(S) without a proxy."""
        if not bucket or bucket.startswith("arn:") or bucket.endswith("--x-s3"):
            return None
        try:
            endpoint = self._client._ruleset_resolver.construct_endpoint(
                self._operation, {"Bucket": bucket, "Key": "k"}, {})
        except Exception as exc:  # noqa: BLE001 - botocore raises its own for a bad bucket name: its path
            log.debug("no lean endpoint for bucket %s: %s", bucket, exc)
            return None
        schemes = (endpoint.properties or {}).get("authSchemes") or []
        scheme = schemes[0] if schemes else {}
        if scheme.get("name") != "sigv4" or endpoint.headers:
            return None
        url = urlsplit(endpoint.url)
        if url.scheme not in ("http", "https") or not url.hostname or url.query:
            return None
        if self._http_session._proxy_config.proxy_url_for(endpoint.url):
            return None
        default_port = 443 if url.scheme == "https" else 80
        port = url.port or default_port
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        host_header = host if port == default_port else f"{host}:{port}"
        region = scheme.get("signingRegion") or self._client.meta.region_name or "us-east-1"
        return _Target(url.scheme, url.hostname, port, host_header, url.path.rstrip("/"), str(region),
                       str(scheme.get("signingName") or "s3"))

    # -- the request -----------------------------------------------------------------------------------------
    def put(self, bucket: str, key: str, body: Any, *, content_length: int, checksum: Checksum | None = None,
            content_md5: str | None = None, if_none_match: bool = False,
            object_args: Mapping[str, Any] | None = None,
            now: Callable[[], _dt.datetime] | None = None) -> dict[str, Any]:
        """One PutObject (call :meth:`accepts` first). ``body`` is bytes or a file-like object read in chunks
        (a :class:`~mpupload.engine.reader.PartReader`: it counts what is sent and checks the cancel flag)."""
        target = self._target(bucket)
        if target is None:
            raise UseBotocore(f"bucket {bucket!r} has no lean endpoint")
        if isinstance(body, (bytes, bytearray, memoryview)):
            body = io.BytesIO(bytes(body))
        path = f"{target.base_path}/{quote_key(key)}"
        headers = self._headers(target, content_length, checksum, content_md5, if_none_match, object_args)
        attempt = 0
        while True:
            attempt += 1
            conn = self._wire.connection(target.scheme, target.host, target.port)
            reused = conn.sock is not None and conn.used > 0
            frozen = self._credentials.get_frozen_credentials()
            signed = sign("PUT", path, headers, Credentials(frozen.access_key, frozen.secret_key, frozen.token),
                          region=target.region, service=target.service,
                          timestamp=amz_date(now() if now is not None else _dt.datetime.now(_dt.UTC)))
            try:
                status, reason, answer_headers, error_body = self._wire.exchange(conn, "PUT", path, headers,
                                                                                 signed.headers, body)
            except _Stale:
                # the server closed an idle keep-alive connection just as we wrote on it: once more, on a new one
                self._wire.drop(target.scheme, target.host, target.port)
                if attempt == 1 and reused and _rewind(body):
                    continue
                raise _Stale.botocore_error(target) from None
            except BaseException:
                self._wire.drop(target.scheme, target.host, target.port)
                raise
            conn.used += 1
            if 200 <= status < 300:
                return self._answer(status, answer_headers)
            self._wire.drop(target.scheme, target.host, target.port)
            error = parse_error(status, error_body, reason)
            if status in _REDIRECT_STATUSES or error.code in _REDIRECT_CODES:
                raise UseBotocore(f"{error.code}: {error.message}") from error
            raise error

    def _headers(self, target: _Target, content_length: int, checksum: Checksum | None, content_md5: str | None,
                 if_none_match: bool, object_args: Mapping[str, Any] | None) -> dict[str, str]:
        headers: dict[str, str] = {"Host": target.host_header, "Content-Length": str(content_length)}
        for name, value in (object_args or {}).items():
            if name == "Metadata":
                for meta_key, meta_value in value.items():
                    headers[f"{self._meta_prefix}{meta_key}"] = meta_value
            elif name == "BucketKeyEnabled":
                headers[self._arg_headers[name]] = "true" if value else "false"
            else:
                headers[self._arg_headers[name]] = value
        if checksum is not None:
            from ..checksums import boto_checksum_param

            headers[self._checksum_headers[boto_checksum_param(checksum.algorithm)]] = checksum.value
        if content_md5 is not None:
            headers["Content-MD5"] = content_md5
        if if_none_match:
            headers["If-None-Match"] = "*"
        headers["User-Agent"] = self._user_agent
        return headers

    def _answer(self, status: int, headers: list[tuple[str, str]]) -> dict[str, Any]:
        lowered = {name.lower(): value for name, value in headers}
        answer: dict[str, Any] = {}
        for header, name, type_name in self._answer_fields:
            value = lowered.get(header)
            if value is None:
                continue
            if type_name == "boolean":
                answer[name] = value.strip().lower() == "true"
            elif type_name in ("long", "integer"):
                try:
                    answer[name] = int(value)
                except ValueError:
                    continue
            else:
                answer[name] = value
        answer["ResponseMetadata"] = {
            "RequestId": lowered.get("x-amz-request-id", ""), "HostId": lowered.get("x-amz-id-2", ""),
            "HTTPStatusCode": status, "HTTPHeaders": lowered, "RetryAttempts": 0}
        return answer

    def close(self) -> None:
        """Close this thread's connections (others close when their threads end)."""
        self._wire.close()


class Wire:
    """Persistent HTTP(S) connections, per process and per thread, and one request written on them: what the lean
    PutObject and a brokered client's PUT to a URL the API server signed share (the request is theirs, signed or
    presigned; this writes it and reads the answer).

    Errors: a refused TLS certificate, a timeout and a failed connect as botocore's exceptions (so
    :mod:`.errors` reads them as it reads botocore's own); a connection that failed while the request was written
    or before an answer came as :class:`_Stale` (the caller decides whether to send it again, on a new one)."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, keepalive: bool,
                 verify: bool | str | None) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keepalive = keepalive
        self._verify = verify
        self._context: ssl.SSLContext | None = None
        self._local = threading.local()

    def exchange(self, conn: Conn, method: str, path: str, headers: Mapping[str, str], signed: Mapping[str, str],
                 body: Any) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Write the request, read the answer: (status, reason, headers, the body of an error answer).

        Only the network's errors are translated here; the body's own (a file that cannot be read or that
        changed, a cancel) pass through as they are."""
        if conn.sock is None:
            self._connect(conn)
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        for name, value in signed.items():
            conn.putheader(name, value)
        failed: OSError | None = None
        first = _read(body)
        try:
            conn.endheaders(first)  # the head and the first chunk in one write
        except OSError as exc:
            failed = exc
        while failed is None:
            chunk = _read(body)
            if not chunk:
                break
            try:
                conn.send(chunk)
            except OSError as exc:
                failed = exc
        if failed is not None:
            if isinstance(failed, TimeoutError):
                raise self._timeout(conn, path, failed) from failed
            if isinstance(failed, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
                # the server may have answered (a refusal) and closed: read what it said, if anything
                early = _early_answer(conn)
                if early is not None:
                    return self._finish(conn, path, early)
            raise _Stale(failed) from failed
        try:
            response = conn.getresponse()
        except TimeoutError as exc:
            raise self._timeout(conn, path, exc) from exc
        except (http.client.HTTPException, OSError) as exc:
            raise _Stale(exc) from exc
        return self._finish(conn, path, response)

    def _finish(self, conn: Conn, path: str,
                response: http.client.HTTPResponse) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Read the rest of the answer: all of an error body (up to a cap), nothing else kept."""
        try:
            status = response.status
            error_body = b""
            if 200 <= status < 300:
                response.read()
            else:
                error_body = response.read(_MAX_ERROR_BODY)
            return status, response.reason, response.getheaders(), error_body
        except TimeoutError as exc:
            raise self._timeout(conn, path, exc) from exc
        except (http.client.HTTPException, OSError) as exc:
            raise _Stale(exc) from exc

    def _timeout(self, conn: Conn, path: str, exc: BaseException) -> Exception:
        from botocore.exceptions import ReadTimeoutError

        error: Exception = ReadTimeoutError(endpoint_url=self._url(conn, path), error=exc)
        return error

    def _connect(self, conn: Conn) -> None:
        from botocore import exceptions as bx

        url = f"{'https' if isinstance(conn, _TLSConnection) else 'http'}://{conn.host}:{conn.port}"
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:
            raise bx.SSLError(endpoint_url=url, error=exc) from exc
        except TimeoutError as exc:
            raise bx.ConnectTimeoutError(endpoint_url=url, error=exc) from exc
        except OSError as exc:
            raise bx.EndpointConnectionError(endpoint_url=url, error=exc) from exc

    @staticmethod
    def _url(conn: Conn, path: str) -> str:
        return f"{'https' if isinstance(conn, _TLSConnection) else 'http'}://{conn.host}:{conn.port}{path}"


    def _pool(self) -> dict[tuple[str, str, int], Conn]:
        local = self._local
        pid = os.getpid()
        if getattr(local, "pid", None) != pid:
            # a forked child: its copy of the parent's connections is never written on (nor closed: the TLS
            # state is the parent's); only its own are used
            local.pid = pid
            local.conns = {}
        pool: dict[tuple[str, str, int], Conn] = local.conns
        return pool

    def connection(self, scheme: str, host: str, port: int) -> Conn:
        """This thread's connection to ``scheme://host:port`` (made, not connected, when there is none)."""
        pool = self._pool()
        key = (scheme, host, port)
        conn = pool.get(key)
        if conn is None:
            if scheme == "https":
                if self._context is None:
                    self._context = ssl_context(self._verify)
                conn = _TLSConnection(host, port, connect_timeout=self._connect_timeout,
                                      read_timeout=self._read_timeout, keepalive=self._keepalive,
                                      context=self._context)
            else:
                conn = _Connection(host, port, connect_timeout=self._connect_timeout,
                                   read_timeout=self._read_timeout, keepalive=self._keepalive)
            pool[key] = conn
        return conn

    def drop(self, scheme: str, host: str, port: int) -> None:
        """Close this thread's connection to ``scheme://host:port`` (after any error: its state is unknown)."""
        conn = self._pool().pop((scheme, host, port), None)
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        """Close this thread's connections (others close when their threads end)."""
        for conn in self._pool().values():
            try:
                conn.close()
            except OSError:
                pass
        self._local.conns = {}


class _Stale(Exception):
    """The connection failed while the request was written or before an answer came (reset, closed)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause

    @staticmethod
    def botocore_error(target: _Target) -> Exception:
        from botocore.exceptions import ConnectionClosedError

        error: Exception = ConnectionClosedError(endpoint_url=f"{target.scheme}://{target.host_header}")
        return error


def _read(body: Any) -> bytes:
    data = body.read(_CHUNK)
    return bytes(data) if data else b""


def _rewind(body: Any) -> bool:
    """Put a file-like body back at its start (a PartReader takes back what it counted)."""
    seek = getattr(body, "seek", None)
    if seek is None:
        return False
    seek(0)
    return True


def _early_answer(conn: Conn) -> http.client.HTTPResponse | None:
    try:
        return conn.getresponse()
    except (http.client.HTTPException, OSError):
        return None
