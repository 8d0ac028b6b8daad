"""A local S3-compatible endpoint that DISCARDS every body it receives.

This is a measuring instrument, not a store: it exists to find a client's ceiling (how fast, and at
what CPU cost, a client can push bytes when the server costs next to nothing). Bodies are read and
thrown away; only sizes, ETags and checksums of completed objects are remembered, in memory.

It speaks enough S3 for ``aws s3 cp``, boto3's ``upload_file``, s5cmd and mpupload:

* ListBuckets, CreateBucket, HeadBucket, GetBucketLocation, DeleteBucket, ListObjects(V2)
* CreateMultipartUpload, UploadPart, CompleteMultipartUpload, AbortMultipartUpload,
  ListMultipartUploads, ListParts
* PutObject, HeadObject, DeleteObject, DeleteObjects

Like real S3 it validates ``x-amz-checksum-crc32c`` / ``-crc32`` / ``-crc64nvme`` (header or aws-chunked
trailer) and ``Content-MD5`` over the received bytes, answers ``400 BadDigest`` on a mismatch and echoes
the checksum. ``Expect: 100-continue``, ``Transfer-Encoding: chunked`` and ``Content-Encoding: aws-chunked``
are handled. Any credentials and any signature are accepted.

Run it as its own process::

    python -m benchmarks.discard_server --port 0

It prints ``LISTENING <port>`` on stdout once it accepts connections. One thread serves each connection
(HTTP/1.1 keep-alive); bodies are read with ``recv_into`` into a 1 MiB buffer, so a single connection
sustains well over 1 GiB/s on loopback.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import ipaddress
import itertools
import os
import signal
import socket
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import NoReturn
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

from awscrt import checksums as crt

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
READ_SIZE = 1 << 20
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_LINE = 64 * 1024
MAX_HEADERS = 200
#: Bodies of requests that are not object data (XML documents) are kept up to this size.
MAX_XML_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class Algorithm:
    """A checksum algorithm S3 accepts in ``x-amz-checksum-<name>``."""

    name: str  # lower case, as in the header name
    update: Callable[[bytes, int], int]
    combine: Callable[[int, int, int], int]
    width: int  # bytes in the big-endian digest
    composite: bool  # whether S3 offers a checksum-of-checksums for multipart objects

    @property
    def header(self) -> str:
        return f"x-amz-checksum-{self.name}"

    @property
    def xml_name(self) -> str:
        return "Checksum" + self.name.upper()

    def encode(self, value: int) -> str:
        return base64.b64encode(value.to_bytes(self.width, "big")).decode("ascii")

    def decode(self, text: str) -> int:
        raw = base64.b64decode(text.strip(), validate=True)
        if len(raw) != self.width:
            raise ValueError(f"{self.name} digest must be {self.width} bytes")
        return int.from_bytes(raw, "big")


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("crc32c", crt.crc32c, crt.combine_crc32c, 4, True),
        Algorithm("crc32", crt.crc32, crt.combine_crc32, 4, True),
        Algorithm("crc64nvme", crt.crc64nvme, crt.combine_crc64nvme, 8, False),
    )
}


class S3Error(Exception):
    """An S3 error answer: HTTP status, S3 error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class ClientGone(Exception):
    """The peer closed the connection or sent something that is not HTTP."""


# --------------------------------------------------------------------------------------------------
# Byte streams: a socket, a length-limited body, a chunked body (HTTP chunked and aws-chunked share
# one framing: ``hex-size[;ext]\r\n data \r\n ... 0[;ext]\r\n trailers \r\n``).
# --------------------------------------------------------------------------------------------------


class Stream:
    """A byte source with pushback, so that lines can be read from it and the rest handed on.

    ``read_some`` returns a memoryview that is only valid until the next read on this stream.
    An empty result means the stream is exhausted.
    """

    def __init__(self) -> None:
        self._back = bytearray()

    def _read_raw(self, limit: int) -> memoryview:
        raise NotImplementedError

    def read_some(self, limit: int = READ_SIZE) -> memoryview:
        """Return up to ``limit`` bytes (at least one unless the stream is at its end)."""
        if self._back:
            n = min(limit, len(self._back))
            out = bytes(self._back[:n])
            del self._back[:n]
            return memoryview(out)
        return self._read_raw(limit)

    def readline(self) -> bytes:
        """Return one line including its ``\\n``; raise ``ClientGone`` at the end of the stream."""
        start = 0
        while True:
            i = self._back.find(b"\n", start)
            if i >= 0:
                line = bytes(self._back[: i + 1])
                del self._back[: i + 1]
                return line
            if len(self._back) > MAX_LINE:
                raise ClientGone("line too long")
            start = len(self._back)
            chunk = self._read_raw(MAX_LINE)
            if not chunk:
                raise ClientGone("end of stream inside a line")
            self._back += chunk

    def drain(self) -> int:
        """Read and discard everything left; return how many bytes that was."""
        total = 0
        while chunk := self.read_some():
            total += len(chunk)
        return total


class SocketStream(Stream):
    """The bytes of one TCP connection."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self._buf = bytearray(READ_SIZE)
        self._view = memoryview(self._buf)

    def _read_raw(self, limit: int) -> memoryview:
        n = self.sock.recv_into(self._buf, min(limit, READ_SIZE))
        return self._view[:n]


class LengthStream(Stream):
    """Exactly ``length`` bytes of a parent stream (a ``Content-Length`` body)."""

    def __init__(self, parent: Stream, length: int) -> None:
        super().__init__()
        self.parent = parent
        self.remaining = length

    def _read_raw(self, limit: int) -> memoryview:
        if self.remaining <= 0:
            return memoryview(b"")
        chunk = self.parent.read_some(min(limit, self.remaining))
        if not chunk:
            raise ClientGone("connection closed inside a body")
        self.remaining -= len(chunk)
        return chunk


class ChunkedStream(Stream):
    """The decoded payload of a chunked body; trailers are collected into ``trailers``."""

    def __init__(self, parent: Stream) -> None:
        super().__init__()
        self.parent = parent
        self.left_in_chunk = 0
        self.need_crlf = False
        self.done = False
        self.trailers: dict[str, str] = {}

    def _read_raw(self, limit: int) -> memoryview:
        if self.done:
            return memoryview(b"")
        if self.need_crlf:
            if self.parent.readline().strip():
                raise S3Error(400, "IncompleteBody", "chunk data not followed by CRLF")
            self.need_crlf = False
        if self.left_in_chunk == 0:
            size_text = self.parent.readline().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise S3Error(400, "IncompleteBody", f"bad chunk size {size_text[:40]!r}") from None
            if size == 0:
                self._read_trailers()
                self.done = True
                return memoryview(b"")
            self.left_in_chunk = size
        chunk = self.parent.read_some(min(limit, self.left_in_chunk))
        if not chunk:
            raise ClientGone("connection closed inside a chunk")
        self.left_in_chunk -= len(chunk)
        if self.left_in_chunk == 0:
            self.need_crlf = True
        return chunk

    def _read_trailers(self) -> None:
        for _ in range(MAX_HEADERS):
            line = self.parent.readline().strip()
            if not line:
                return
            name, _, value = line.decode("latin-1").partition(":")
            self.trailers[name.strip().lower()] = value.strip()
        raise S3Error(400, "InvalidRequest", "too many trailers")


# --------------------------------------------------------------------------------------------------
# What the server remembers (never the bodies)
# --------------------------------------------------------------------------------------------------


@dataclass
class Part:
    """One received part of a multipart upload."""

    number: int
    size: int
    etag: str
    checksums: dict[str, int]
    last_modified: float


@dataclass
class Upload:
    """An in-progress multipart upload."""

    upload_id: str
    bucket: str
    key: str
    algorithm: str | None  # from x-amz-checksum-algorithm at creation
    checksum_type: str  # COMPOSITE or FULL_OBJECT
    initiated: float
    parts: dict[int, Part] = field(default_factory=dict)


@dataclass
class ObjectMeta:
    """What is remembered of a completed object: no body, only its size, ETag and checksums."""

    size: int
    etag: str
    last_modified: float
    checksums: dict[str, str] = field(default_factory=dict)  # algorithm -> header value
    checksum_type: str | None = None
    parts_count: int | None = None


class State:
    """Buckets, in-progress uploads and the metadata of completed objects, guarded by one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buckets: dict[str, float] = {}
        self.objects: dict[str, dict[str, ObjectMeta]] = {}
        self.uploads: dict[str, Upload] = {}


# --------------------------------------------------------------------------------------------------
# HTTP + S3
# --------------------------------------------------------------------------------------------------


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def iso_date(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def xml_doc(root: str, inner: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NS}">{inner}</{root}>'.encode()


def tag(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def random_etag(*parts: object) -> str:
    """A quoted 32-hex ETag; the body's MD5 is not computed unless the client sent Content-MD5."""
    return '"' + hashlib.md5(repr((parts, uuid.uuid4().hex)).encode()).hexdigest() + '"'


@dataclass
class Request:
    """One parsed request line + headers."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    version: str

    def has(self, name: str) -> bool:
        return name in self.query


@dataclass
class Body:
    """What was learned from reading (and discarding) a request body."""

    size: int
    data: bytes | None  # kept only for small XML bodies
    checksums: dict[str, int]  # algorithm -> value the client stated (header or trailer), validated
    md5_hex: str | None


@dataclass
class Response:
    """An answer: status, headers and a (small) body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_length: int | None = None  # for HEAD: the length of the body a GET would send


REASONS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    412: "Precondition Failed",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
    501: "Not Implemented",
}


class Handler:
    """Serves the requests of one connection, one after another.

    The methods under "hooks" do nothing special here; they exist so that a test store can subclass this
    handler (tests/support/odd_store.py) without changing what the benchmark measures.
    """

    request_ids = itertools.count(1)
    #: the largest body ``read_body`` keeps in memory (see ``keeps_body``)
    max_kept_body = MAX_XML_BODY

    def __init__(self, state: State, sock: socket.socket, log: bool) -> None:
        self.state = state
        self.sock = sock
        self.stream = SocketStream(sock)
        self.log = log

    # -- hooks ------------------------------------------------------------------------------------

    def wants_md5(self, req: Request) -> bool:
        """Whether ``read_body`` computes the MD5 of the body (``Body.md5_hex``): only to check Content-MD5."""
        return "content-md5" in req.headers

    def keeps_body(self, req: Request) -> bool:
        """Whether ``read_body`` keeps the body in ``Body.data``: only XML documents, never object data."""
        return bool(req.method == "POST" or (req.method == "PUT" and not self._is_object_data(req)))

    def body_received(self, req: Request, size: int) -> None:
        """Called once a whole body (``size`` decoded bytes) was read, before it is validated."""

    def digest_mismatch(self, req: Request, message: str) -> None:
        """A stated checksum or Content-MD5 does not match the body: refuse it, as S3 does."""
        raise S3Error(400, "BadDigest", message)

    def completed_object(self, parts: list[Part], meta: ObjectMeta) -> ObjectMeta:
        """The object a CompleteMultipartUpload of ``parts`` stores (called under the state lock)."""
        return meta

    # -- connection loop --------------------------------------------------------------------------

    def serve(self) -> None:
        try:
            while self.serve_one():
                pass
        except (ClientGone, ConnectionError, TimeoutError, OSError):
            pass
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def serve_one(self) -> bool:
        """Serve one request; return whether the connection stays open."""
        try:
            line = self.stream.readline()
        except ClientGone:
            return False
        while line in (b"\r\n", b"\n"):  # tolerate stray CRLFs between requests
            line = self.stream.readline()
        try:
            method, target, version = line.decode("latin-1").split()
        except ValueError:
            raise ClientGone(f"bad request line {line[:80]!r}") from None
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            h = self.stream.readline()
            if h in (b"\r\n", b"\n"):
                break
            name, _, value = h.decode("latin-1").partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]},{value.strip()}" if key in headers else value.strip()
        else:
            raise ClientGone("too many headers")
        split = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        req = Request(method.upper(), unquote(split.path), query, headers, version.upper())
        keep_alive = self._keep_alive(req)
        request_id = f"{next(self.request_ids):016X}"
        started = time.monotonic()
        try:
            body = self.read_body(req)
            resp = self.dispatch(req, body)
        except S3Error as err:
            resp = self.error(req, err)
            if not self._body_consumed:
                keep_alive = False  # the rest of the body is still on the wire
        self.send(req, resp, request_id, keep_alive)
        if self.log:
            print(
                f"{req.method} {target} -> {resp.status} "
                f"({time.monotonic() - started:.3f}s) {sorted(req.headers)}",
                file=sys.stderr,
                flush=True,
            )
        return keep_alive

    @staticmethod
    def _keep_alive(req: Request) -> bool:
        conn = req.headers.get("connection", "").lower()
        if req.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn

    # -- bodies ------------------------------------------------------------------------------------

    _body_consumed = True

    def read_body(self, req: Request) -> Body:
        """Read the whole body (discarding object data), decode framing, validate checksums."""
        self._body_consumed = False
        h = req.headers
        chunked = "chunked" in h.get("transfer-encoding", "").lower()
        if not chunked and "content-length" not in h:
            self._body_consumed = True
            return Body(0, b"", {}, None)
        if h.get("expect", "").lower() == "100-continue":
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            length = 0 if chunked else int(h["content-length"])
        except ValueError:
            raise S3Error(400, "InvalidArgument", "bad Content-Length") from None
        outer: Stream = ChunkedStream(self.stream) if chunked else LengthStream(self.stream, length)
        aws_chunked = "aws-chunked" in h.get("content-encoding", "").lower()
        inner: Stream = ChunkedStream(outer) if aws_chunked else outer

        trailer_names = {t.strip().lower() for t in h.get("x-amz-trailer", "").split(",") if t.strip()}
        running = {
            name: 0
            for name, alg in ALGORITHMS.items()
            if alg.header in h or alg.header in trailer_names
        }
        md5 = hashlib.md5() if self.wants_md5(req) else None
        keep = self.keeps_body(req)
        kept = bytearray()
        size = 0
        updates = [(name, ALGORITHMS[name].update) for name in running]
        while chunk := inner.read_some():
            size += len(chunk)
            for name, update in updates:
                running[name] = update(chunk, running[name])  # type: ignore[arg-type]
            if md5 is not None:
                md5.update(chunk)
            if keep:
                if len(kept) + len(chunk) > self.max_kept_body:
                    raise S3Error(400, "MaxMessageLengthExceeded", "request document too large")
                kept += chunk
        if inner is not outer:
            outer.drain()
        self._body_consumed = True
        self.body_received(req, size)

        if aws_chunked:
            declared = h.get("x-amz-decoded-content-length")
            if declared is not None and declared.isdigit() and int(declared) != size:
                raise S3Error(400, "IncompleteBody", f"decoded {size} bytes, declared {declared}")
        elif not chunked and size != length:
            raise S3Error(400, "IncompleteBody", "body shorter than Content-Length")

        trailers: dict[str, str] = {}
        for s in (outer, inner):
            if isinstance(s, ChunkedStream):
                trailers.update(s.trailers)
        stated: dict[str, int] = {}
        for name, value in running.items():
            alg = ALGORITHMS[name]
            text = h.get(alg.header) or trailers.get(alg.header)
            if text is None:
                continue  # announced as a trailer that never came: nothing to check
            try:
                expected = alg.decode(text)
            except (ValueError, binascii.Error):
                raise S3Error(400, "InvalidRequest", f"Value for {alg.header} header is invalid.") from None
            if expected != value:
                self.digest_mismatch(req, f"The {name.upper()} you specified did not match the calculated checksum.")
            stated[name] = expected
        md5_hex = None
        if md5 is not None:
            if "content-md5" in h:
                try:
                    want = base64.b64decode(h["content-md5"], validate=True)
                except (ValueError, binascii.Error):
                    raise S3Error(400, "InvalidDigest", "The Content-MD5 you specified was invalid.") from None
                if want != md5.digest():
                    self.digest_mismatch(req, "The Content-MD5 you specified did not match what we received.")
            md5_hex = md5.hexdigest()
        return Body(size, bytes(kept) if keep else None, stated, md5_hex)

    @staticmethod
    def _is_object_data(req: Request) -> bool:
        return "/" in req.path.strip("/") or bool(req.headers.get("host", "").split(":")[0].endswith(".localhost"))

    # -- routing ----------------------------------------------------------------------------------

    def split_target(self, req: Request) -> tuple[str, str]:
        """Return (bucket, key) for path-style or ``<bucket>.localhost`` virtual-host requests."""
        host = req.headers.get("host", "").rsplit(":", 1)[0].strip("[]")
        path = req.path.lstrip("/")
        if host.endswith(".localhost") and not _is_ip(host):
            return host[: -len(".localhost")], path
        bucket, _, key = path.partition("/")
        return bucket, key

    def dispatch(self, req: Request, body: Body) -> Response:
        bucket, key = self.split_target(req)
        m = req.method
        if not bucket:
            if m == "GET":
                return self.list_buckets()
            raise S3Error(405, "MethodNotAllowed", "only ListBuckets is served at /")
        if not key:
            if m == "PUT":
                return self.create_bucket(bucket)
            self.require_bucket(bucket)
            if m == "HEAD":
                return Response(200, {"x-amz-bucket-region": "us-east-1"})
            if m == "GET" and req.has("location"):
                return Response(200, body=xml_doc("LocationConstraint", ""))
            if m == "GET" and req.has("uploads"):
                return self.list_uploads(bucket)
            if m == "GET" and not set(req.query) - {"list-type", "prefix", "max-keys", "delimiter",
                                                    "encoding-type", "continuation-token", "marker",
                                                    "start-after", "fetch-owner"}:
                return self.list_objects(bucket, req)
            if m == "POST" and req.has("delete"):
                return self.delete_objects(bucket, body)
            if m == "DELETE" and not req.query:
                return self.delete_bucket(bucket)
            raise S3Error(501, "NotImplemented", f"{m} on a bucket with {sorted(req.query)} is not served")
        self.require_bucket(bucket)
        if m == "POST" and req.has("uploads"):
            return self.create_upload(bucket, key, req)
        if m == "PUT" and req.has("partNumber") and req.has("uploadId"):
            return self.upload_part(bucket, key, req, body)
        if m == "POST" and req.has("uploadId"):
            return self.complete_upload(bucket, key, req, body)
        if m == "DELETE" and req.has("uploadId"):
            return self.abort_upload(bucket, key, req)
        if m == "GET" and req.has("uploadId"):
            return self.list_parts(bucket, key, req)
        if "x-amz-copy-source" in req.headers:
            raise S3Error(501, "NotImplemented", "copies are not served: bodies are discarded")
        if m == "PUT" and all(name.startswith("X-Amz-") for name in req.query):  # (a presigned URL's query)
            return self.put_object(bucket, key, req, body)
        if m == "HEAD" and not set(req.query) - {"versionId"}:
            return self.head_object(bucket, key, req)
        if m == "DELETE" and not set(req.query) - {"versionId"}:
            return self.delete_object(bucket, key)
        if m == "GET":
            raise S3Error(501, "NotImplemented", "GetObject is not served: this endpoint discards bodies")
        raise S3Error(501, "NotImplemented", f"{m} on an object with {sorted(req.query)} is not served")

    def require_bucket(self, bucket: str) -> None:
        with self.state.lock:
            if bucket not in self.state.buckets:
                raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist")

    def find_upload(self, bucket: str, key: str, req: Request) -> Upload:
        up = self.state.uploads.get(req.query["uploadId"])
        if up is None or up.bucket != bucket or up.key != key:
            raise S3Error(404, "NoSuchUpload", "The specified upload does not exist.")
        return up

    # -- bucket operations ------------------------------------------------------------------------

    def list_buckets(self) -> Response:
        with self.state.lock:
            items = "".join(
                f"<Bucket>{tag('Name', b)}{tag('CreationDate', iso_date(t))}</Bucket>"
                for b, t in sorted(self.state.buckets.items())
            )
        owner = "<Owner><ID>discard</ID><DisplayName>discard</DisplayName></Owner>"
        return Response(200, body=xml_doc("ListAllMyBucketsResult", f"{owner}<Buckets>{items}</Buckets>"))

    def create_bucket(self, bucket: str) -> Response:
        with self.state.lock:
            if bucket in self.state.buckets:
                raise S3Error(409, "BucketAlreadyOwnedByYou", "Your previous request to create the bucket succeeded.")
            self.state.buckets[bucket] = time.time()
            self.state.objects[bucket] = {}
        return Response(200, {"Location": f"/{bucket}"})

    def delete_bucket(self, bucket: str) -> Response:
        with self.state.lock:
            if self.state.objects.get(bucket):
                raise S3Error(409, "BucketNotEmpty", "The bucket you tried to delete is not empty")
            self.state.buckets.pop(bucket, None)
            self.state.objects.pop(bucket, None)
        return Response(204)

    def list_objects(self, bucket: str, req: Request) -> Response:
        prefix = req.query.get("prefix", "")
        v2 = req.query.get("list-type") == "2"
        with self.state.lock:
            items = sorted((k, o) for k, o in self.state.objects[bucket].items() if k.startswith(prefix))
        contents = "".join(
            "<Contents>"
            + tag("Key", k)
            + tag("LastModified", iso_date(o.last_modified))
            + tag("ETag", o.etag)
            + tag("Size", o.size)
            + tag("StorageClass", "STANDARD")
            + "</Contents>"
            for k, o in items
        )
        head = tag("Name", bucket) + tag("Prefix", prefix) + tag("MaxKeys", 1000) + tag("IsTruncated", "false")
        if v2:
            head += tag("KeyCount", len(items))
        return Response(200, body=xml_doc("ListBucketResult", head + contents))

    def list_uploads(self, bucket: str) -> Response:
        with self.state.lock:
            ups = sorted(
                (u for u in self.state.uploads.values() if u.bucket == bucket), key=lambda u: (u.key, u.initiated)
            )
        inner = tag("Bucket", bucket) + tag("MaxUploads", 1000) + tag("IsTruncated", "false")
        inner += "".join(
            "<Upload>" + tag("Key", u.key) + tag("UploadId", u.upload_id) + tag("Initiated", iso_date(u.initiated))
            + tag("StorageClass", "STANDARD") + "</Upload>"
            for u in ups
        )
        return Response(200, body=xml_doc("ListMultipartUploadsResult", inner))

    def delete_objects(self, bucket: str, body: Body) -> Response:
        root = parse_xml(body.data or b"")
        keys = [el.text or "" for el in root.iter() if _local(el.tag) == "Key"]
        with self.state.lock:
            for k in keys:
                self.state.objects[bucket].pop(k, None)
        return Response(200, body=xml_doc("DeleteResult", "".join(f"<Deleted>{tag('Key', k)}</Deleted>" for k in keys)))

    # -- object operations ------------------------------------------------------------------------

    def create_upload(self, bucket: str, key: str, req: Request) -> Response:
        algorithm = req.headers.get("x-amz-checksum-algorithm", "").lower() or None
        if algorithm is not None and algorithm not in ALGORITHMS:
            raise S3Error(400, "InvalidRequest", f"checksum algorithm {algorithm} is not served")
        ctype = req.headers.get("x-amz-checksum-type", "").upper()
        if not ctype:
            ctype = "FULL_OBJECT" if algorithm == "crc64nvme" else "COMPOSITE"
        if ctype == "COMPOSITE" and algorithm is not None and not ALGORITHMS[algorithm].composite:
            raise S3Error(400, "InvalidRequest", f"{algorithm} has no composite checksum")
        up = Upload(uuid.uuid4().hex, bucket, key, algorithm, ctype, time.time())
        with self.state.lock:
            self.state.uploads[up.upload_id] = up
        inner = tag("Bucket", bucket) + tag("Key", key) + tag("UploadId", up.upload_id)
        headers = {}
        if algorithm:
            headers["x-amz-checksum-algorithm"] = algorithm.upper()
            headers["x-amz-checksum-type"] = ctype
        return Response(200, headers, xml_doc("InitiateMultipartUploadResult", inner))

    def upload_part(self, bucket: str, key: str, req: Request, body: Body) -> Response:
        try:
            number = int(req.query["partNumber"])
        except ValueError:
            number = 0
        if not 1 <= number <= 10000:
            raise S3Error(400, "InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive")
        etag = f'"{body.md5_hex}"' if body.md5_hex else random_etag(req.query["uploadId"], number, body.size)
        headers = {"ETag": etag}
        with self.state.lock:
            up = self.find_upload(bucket, key, req)
            up.parts[number] = Part(number, body.size, etag, dict(body.checksums), time.time())
        for name, value in body.checksums.items():
            headers[ALGORITHMS[name].header] = ALGORITHMS[name].encode(value)
        return Response(200, headers)

    def complete_upload(self, bucket: str, key: str, req: Request, body: Body) -> Response:
        root = parse_xml(body.data or b"")
        listed: list[dict[str, str]] = []
        for el in root:
            if _local(el.tag) == "Part":
                listed.append({_local(c.tag): (c.text or "").strip() for c in el})
        if not listed:
            raise S3Error(400, "MalformedXML", "CompleteMultipartUpload lists no parts")
        with self.state.lock:
            up = self.find_upload(bucket, key, req)
            chosen: list[Part] = []
            last = 0
            for item in listed:
                try:
                    number = int(item.get("PartNumber", ""))
                except ValueError:
                    raise S3Error(400, "MalformedXML", "bad PartNumber") from None
                if number <= last:
                    raise S3Error(400, "InvalidPartOrder", "The list of parts was not in ascending order.")
                last = number
                part = up.parts.get(number)
                if part is None or item.get("ETag", "").strip('"') != part.etag.strip('"'):
                    raise S3Error(400, "InvalidPart", f"Part {number} was not uploaded or its ETag does not match.")
                for name, value in part.checksums.items():
                    alg = ALGORITHMS[name]
                    given = item.get(alg.xml_name)
                    if given is not None and given != alg.encode(value):
                        raise S3Error(400, "InvalidPart", f"Part {number}: {alg.xml_name} does not match.")
                chosen.append(part)
            for part in chosen[:-1]:
                if part.size < MIN_PART_SIZE:
                    raise S3Error(400, "EntityTooSmall", f"Part {part.number} is smaller than the minimum 5 MiB.")
            checksums = object_checksums(chosen, up)
            md5s = b"".join(binascii.unhexlify(p.etag.strip('"')) for p in chosen)
            meta = ObjectMeta(
                size=sum(p.size for p in chosen),
                etag=f'"{hashlib.md5(md5s).hexdigest()}-{len(chosen)}"',
                last_modified=time.time(),
                checksums=checksums,
                checksum_type=up.checksum_type if checksums else None,
                parts_count=len(chosen),
            )
            meta = self.completed_object(chosen, meta)
            del self.state.uploads[up.upload_id]
            self.state.objects[bucket][key] = meta
        inner = tag("Location", f"/{bucket}/{key}") + tag("Bucket", bucket) + tag("Key", key)
        inner += tag("ETag", meta.etag)
        for name, encoded in checksums.items():
            inner += tag(ALGORITHMS[name].xml_name, encoded)
        if checksums:
            inner += tag("ChecksumType", up.checksum_type)
        return Response(200, body=xml_doc("CompleteMultipartUploadResult", inner))

    def abort_upload(self, bucket: str, key: str, req: Request) -> Response:
        with self.state.lock:
            up = self.find_upload(bucket, key, req)
            del self.state.uploads[up.upload_id]
        return Response(204)

    def list_parts(self, bucket: str, key: str, req: Request) -> Response:
        with self.state.lock:
            up = self.find_upload(bucket, key, req)
            parts = sorted(up.parts.values(), key=lambda p: p.number)
        try:
            marker = int(req.query.get("part-number-marker") or 0)
            max_parts = int(req.query.get("max-parts") or 1000)
        except ValueError:
            raise S3Error(400, "InvalidArgument", "bad part-number-marker or max-parts") from None
        after = [p for p in parts if p.number > marker]
        page, truncated = after[:max_parts], len(after) > max_parts
        inner = tag("Bucket", bucket) + tag("Key", key) + tag("UploadId", up.upload_id)
        inner += tag("PartNumberMarker", marker) + tag("MaxParts", max_parts)
        inner += tag("IsTruncated", "true" if truncated else "false")
        if truncated:
            inner += tag("NextPartNumberMarker", page[-1].number)
        if up.algorithm:
            inner += tag("ChecksumAlgorithm", up.algorithm.upper()) + tag("ChecksumType", up.checksum_type)
        for p in page:
            inner += "<Part>" + tag("PartNumber", p.number) + tag("LastModified", iso_date(p.last_modified))
            inner += tag("ETag", p.etag) + tag("Size", p.size)
            for name, value in p.checksums.items():
                inner += tag(ALGORITHMS[name].xml_name, ALGORITHMS[name].encode(value))
            inner += "</Part>"
        return Response(200, body=xml_doc("ListPartsResult", inner))

    def put_object(self, bucket: str, key: str, req: Request, body: Body) -> Response:
        etag = f'"{body.md5_hex}"' if body.md5_hex else random_etag(bucket, key, body.size)
        checksums = {n: ALGORITHMS[n].encode(v) for n, v in body.checksums.items()}
        with self.state.lock:
            self.state.objects[bucket][key] = ObjectMeta(
                body.size, etag, time.time(), checksums, "FULL_OBJECT" if checksums else None
            )
        headers = {"ETag": etag}
        headers.update({ALGORITHMS[n].header: v for n, v in checksums.items()})
        return Response(200, headers)

    def head_object(self, bucket: str, key: str, req: Request) -> Response:
        with self.state.lock:
            obj = self.state.objects[bucket].get(key)
        if obj is None:
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.")
        headers = {
            "ETag": obj.etag,
            "Last-Modified": http_date(obj.last_modified),
            "Content-Type": "binary/octet-stream",
            "Accept-Ranges": "bytes",
        }
        if obj.parts_count:
            headers["x-amz-mp-parts-count"] = str(obj.parts_count)
        if req.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED" and obj.checksums:
            for name, value in obj.checksums.items():
                headers[ALGORITHMS[name].header] = value
            if obj.checksum_type:
                headers["x-amz-checksum-type"] = obj.checksum_type
        return Response(200, headers, content_length=obj.size)

    def delete_object(self, bucket: str, key: str) -> Response:
        with self.state.lock:
            self.state.objects[bucket].pop(key, None)
        return Response(204)

    # -- answers ----------------------------------------------------------------------------------

    def error(self, req: Request, err: S3Error) -> Response:
        if req.method == "HEAD":
            return Response(err.status, {"x-amz-error-code": err.code})
        inner = tag("Code", err.code) + tag("Message", err.message) + tag("Resource", req.path)
        body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>{inner}</Error>'.encode()
        return Response(err.status, body=body)

    def send(self, req: Request, resp: Response, request_id: str, keep_alive: bool) -> None:
        headers = {
            "Date": http_date(time.time()),
            "Server": "discard-s3",
            "x-amz-request-id": request_id,
            "x-amz-id-2": request_id,
        }
        if resp.body:
            headers["Content-Type"] = "application/xml"
        headers.update(resp.headers)
        length = resp.content_length if resp.content_length is not None else len(resp.body)
        if not (resp.status == 204 or (req.method == "HEAD" and resp.content_length is None and not resp.body)):
            headers["Content-Length"] = str(length)
        elif resp.status != 204:
            headers["Content-Length"] = "0"
        headers["Connection"] = "keep-alive" if keep_alive else "close"
        head = f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Status')}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        payload = head.encode("latin-1")
        if req.method != "HEAD":
            payload += resp.body
        self.sock.sendall(payload)


def object_checksums(parts: list[Part], up: Upload) -> dict[str, str]:
    """The object-level checksums S3 reports for a completed multipart upload.

    COMPOSITE: base64(crc(concat(raw part digests))) + "-N"; FULL_OBJECT: the parts' CRCs combined into
    the CRC of the whole object. Only algorithms that every part carried are reported.
    """
    out: dict[str, str] = {}
    common = set(ALGORITHMS)
    for p in parts:
        common &= set(p.checksums)
    for name in sorted(common):
        alg = ALGORITHMS[name]
        if up.algorithm is not None and name != up.algorithm:
            continue
        if up.checksum_type == "FULL_OBJECT":
            value = parts[0].checksums[name]
            for p in parts[1:]:
                value = alg.combine(value, p.checksums[name], p.size)
            out[name] = alg.encode(value)
        elif alg.composite:
            raw = b"".join(p.checksums[name].to_bytes(alg.width, "big") for p in parts)
            out[name] = f"{alg.encode(alg.update(raw, 0))}-{len(parts)}"
    return out


def parse_xml(data: bytes) -> ET.Element:
    try:
        return ET.fromstring(data)
    except ET.ParseError:
        raise S3Error(400, "MalformedXML", "The XML you provided was not well-formed.") from None


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------------


class DiscardServer:
    """Accepts connections and serves each on its own daemon thread."""

    #: the class that serves one connection (a hook for tests/support/odd_store.py)
    handler_class: type[Handler] = Handler

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log: bool = False) -> None:
        self.state = State()
        self.log = log
        self.sock = socket.create_server((host, port), backlog=512, reuse_port=False)
        self.port: int = self.sock.getsockname()[1]

    def serve_forever(self) -> NoReturn:
        while True:
            conn, _ = self.sock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            handler = self.handler_class(self.state, conn, self.log)
            threading.Thread(target=handler.serve, daemon=True, name="conn").start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.discard_server",
        description="S3-compatible endpoint that DISCARDS bodies (measures a client's ceiling; not a store).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket at start")
    parser.add_argument("--log", action="store_true", help="log each request to stderr")
    args = parser.parse_args(argv)
    server = DiscardServer(args.host, args.port, args.log)
    for b in args.bucket:
        server.state.buckets[b] = time.time()
        server.state.objects[b] = {}
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"LISTENING {server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
