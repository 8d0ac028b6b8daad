"""A local S3 endpoint that behaves like the S3-compatible stores that differ from AWS, for integration tests.

mpupload decides whether an upload arrived intact from what the store answers: the part and object ETags
(MD5s on AWS without KMS), the ``x-amz-checksum-*`` values it echoes, and, optionally, a read-back. Each of
those signals is missing or misleading on some real store, and moto and Ceph only show one behaviour each.
This store is the discard endpoint (``benchmarks/discard_server.py``: same HTTP and S3 parsing, same
checksum arithmetic) with flags that switch on the odd behaviours, one at a time or together:

``--keep-bodies``
    keep object bytes in memory (PutObject bodies; parts, assembled at CompleteMultipartUpload in the listed
    order) and serve GetObject, with ``Range: bytes=a-b`` (206 + Content-Range). Without it GetObject is
    501, as on the discard endpoint. Meant for test sizes (up to a few hundred MiB).
``--checks-nothing``
    a store that validates neither ``x-amz-checksum-*`` (header or aws-chunked trailer) nor ``Content-MD5``:
    wrong values are accepted. Alone, checksum headers are ignored altogether and none are ever answered
    (like Ceph RGW 16); with ``--echo-checksums`` the values the client stated are stored as given and
    echoed back by UploadPart, PutObject, ListParts, Complete and HeadObject with ChecksumMode=ENABLED
    (like moto).
``--etags {md5,random}``
    part and PutObject ETags: the hex MD5 of the received bytes (always computed, Content-MD5 or not) or
    random 32-hex values (a store whose ETags are not MD5s). Default md5.
``--multipart-etag {md5-of-md5s,random,object-md5}``
    the ETag of a completed multipart object: the AWS form ``md5(concat(binary part MD5s))-N`` (from the
    true part MD5s, whatever the part ETags are), a random 32-hex followed by ``-N``, or the MD5 of the
    whole object without suffix (the parts' bytes are then kept until completion). Default md5-of-md5s.
``--sse-kms-default``
    a bucket whose default encryption is SSE-KMS on AWS: object write and read answers carry
    ``x-amz-server-side-encryption: aws:kms`` and a key id, and ETags are not MD5s (``--etags`` and
    ``--multipart-etag`` default to random), while checksums ARE validated, as on AWS.
``--deny-head``
    write-only credentials: HeadObject and GetObject answer 403 AccessDenied; everything else works.
``--deny-abort``
    credentials without ``s3:AbortMultipartUpload`` (a common IAM policy gap): every
    AbortMultipartUpload answers 403 AccessDenied.
``--expire-after N``
    credentials that expire mid-upload: after N UploadPart requests every request answers
    400 ExpiredToken (aborts included), as AWS does for an expired session token.
``--corrupt-stored``
    with ``--keep-bodies``: silent corruption at rest. One byte in the middle of every stored body is
    flipped AFTER its ETag and checksums were computed, so they look right while the bytes are wrong; only a
    read-back that checks the bytes notices.

Always on: DeleteObject honours ``If-Match`` (412 PreconditionFailed when the object's ETag differs, 404
when there is no object, 204 when it matches or no If-Match was sent), and ``GET /_stats`` answers JSON
counters (see ``Stats.snapshot``) so that tests can assert what the client sent, e.g. that no part was
sent twice.

Run it as its own process (``LISTENING <port>`` on stdout once it accepts connections)::

    python -m tests.support.odd_store --port 0 --keep-bodies --etags random

or from a test::

    store = start_odd_store(tmp_path, "--keep-bodies")   # an S3Server, plus .stats()
    try:
        store.client().create_bucket(Bucket="b")
    finally:
        store.stop()

In tests, the ``odd_store`` fixture (tests/conftest.py) is a factory, ``odd_store(*flags)``, that stops every
store it started at teardown.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.discard_server import (
    ALGORITHMS,
    Body,
    DiscardServer,
    Handler,
    ObjectMeta,
    Part,
    Request,
    Response,
    S3Error,
    State,
)
from tests.support.s3server import S3Server, die_with_parent, stop_pids

REPO_ROOT = Path(__file__).resolve().parents[2]
STATS_PATH = "/_stats"
ETAG_MODES = ("md5", "random")
MULTIPART_ETAG_MODES = ("md5-of-md5s", "random", "object-md5")
KMS_KEY_ID = "arn:aws:kms:us-east-1:000000000000:key/test"
SSE_HEADERS = {
    "x-amz-server-side-encryption": "aws:kms",
    "x-amz-server-side-encryption-aws-kms-key-id": KMS_KEY_ID,
}
#: the answers that carry the SSE headers under --sse-kms-default (as on AWS)
SSE_OPERATIONS = frozenset(
    {"CreateMultipartUpload", "UploadPart", "PutObject", "CompleteMultipartUpload", "HeadObject", "GetObject"}
)
#: operations that always appear in the counters of /_stats, with 0 until they are seen
COUNTED_OPERATIONS = (
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "ListParts",
    "ListMultipartUploads",
    "PutObject",
    "HeadObject",
    "GetObject",
    "DeleteObject",
)
DATA_OPERATIONS = ("UploadPart", "PutObject")
#: bodies kept in memory may be this large (object data under --keep-bodies)
MAX_KEPT_BODY = 1 << 30


@dataclass(frozen=True)
class Options:
    """The odd behaviours one store process simulates (see the module docstring)."""

    keep_bodies: bool = False
    checks_nothing: bool = False
    echo_checksums: bool = False
    etags: str = "md5"
    multipart_etag: str = "md5-of-md5s"
    sse_kms_default: bool = False
    deny_head: bool = False
    corrupt_stored: bool = False
    deny_abort: bool = False
    #: after this many UploadPart requests every request answers 400 ExpiredToken (None: never)
    expire_after: int | None = None

    @property
    def ignores_checksums(self) -> bool:
        """Checksum headers are not looked at, stored or answered (Ceph RGW 16)."""
        return self.checks_nothing and not self.echo_checksums


@dataclass
class OddPart(Part):
    """A part, with the MD5 of its bytes (whatever its ETag is) and, when needed, the bytes."""

    md5: bytes = b""
    data: bytes | None = None


@dataclass
class OddObject(ObjectMeta):
    """A completed object, with its (possibly corrupted) bytes under --keep-bodies."""

    data: bytes | None = None


class Stats:
    """Counters served at ``GET /_stats``; updated before the answer is sent, so a client that has its
    answer sees its request counted."""

    def __init__(self, options: Options) -> None:
        self.lock = threading.Lock()
        self.options = options
        self.requests: Counter[str] = Counter({op: 0 for op in COUNTED_OPERATIONS})
        self.responses: dict[str, Counter[str]] = {}
        self.bytes_received: Counter[str] = Counter({op: 0 for op in DATA_OPERATIONS})
        self.part_uploads: dict[str, Counter[str]] = {}

    def request(self, op: str, req: Request) -> None:
        with self.lock:
            self.requests[op] += 1
            if op == "UploadPart":
                upload_id = req.query.get("uploadId", "")
                self.part_uploads.setdefault(upload_id, Counter())[req.query.get("partNumber", "")] += 1

    def received(self, op: str, size: int) -> None:
        with self.lock:
            self.bytes_received[op] += size

    def answered(self, op: str, status: int) -> None:
        with self.lock:
            self.responses.setdefault(op, Counter())[str(status)] += 1

    def snapshot(self) -> dict[str, Any]:
        """``requests``: requests received per operation (refused ones included; every operation in
        ``COUNTED_OPERATIONS`` is present); ``responses``: per operation, answers per HTTP status;
        ``bytes_received``: decoded body bytes of UploadPart and PutObject requests (refused ones included);
        ``part_uploads``: per upload id, how many UploadPart requests each part number got;
        ``options``: the flags this store runs with."""
        with self.lock:
            return {
                "requests": dict(self.requests),
                "responses": {op: dict(c) for op, c in self.responses.items()},
                "bytes_received": dict(self.bytes_received),
                "part_uploads": {u: dict(c) for u, c in self.part_uploads.items()},
                "options": dataclasses.asdict(self.options),
            }


class OddState(State):
    """The discard endpoint's state, plus the options and the counters."""

    def __init__(self, options: Options) -> None:
        super().__init__()
        self.options = options
        self.stats = Stats(options)


def random_hex() -> str:
    return secrets.token_hex(16)


def corrupted(data: bytes) -> bytes:
    """``data`` with its middle byte flipped (empty data stays empty: there is nothing to flip)."""
    if not data:
        return data
    out = bytearray(data)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


def etag_matches(condition: str, etag: str) -> bool:
    """Whether an ``If-Match`` value (``*`` or a list of ETags, quoted or not) matches ``etag``."""
    if condition.strip() == "*":
        return True
    return any(c.strip().strip('"') == etag.strip('"') for c in condition.split(","))


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) of a ``Range: bytes=...`` header on a body of ``size`` bytes.

    ``None`` when the header is not a single byte range (the whole object is then served, as S3 does);
    ``S3Error`` 416 when the range starts past the end.
    """
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if m is None or not (m.group(1) or m.group(2)):
        return None
    if m.group(1):
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else size - 1
        if m.group(2) and last < first:
            return None  # not a valid range: ignored, as HTTP says
        if first >= size:
            raise S3Error(416, "InvalidRange", "The requested range is not satisfiable")
        return first, min(last, size - 1)
    suffix = int(m.group(2))
    if suffix == 0 or size == 0:
        raise S3Error(416, "InvalidRange", "The requested range is not satisfiable")
    return max(0, size - suffix), size - 1


class OddHandler(Handler):
    """The discard endpoint's handler with the odd behaviours of ``Options``."""

    max_kept_body = MAX_KEPT_BODY

    def __init__(self, state: State, sock: socket.socket, log: bool) -> None:
        super().__init__(state, sock, log)
        if not isinstance(state, OddState):
            raise TypeError("OddHandler needs an OddState")
        self.odd = state
        self.options = state.options

    # -- what a request is ------------------------------------------------------------------------

    def operation(self, req: Request) -> str:
        """The S3 operation name of a request (as the discard endpoint routes it), for the counters."""
        if req.path == STATS_PATH:
            return "Stats"
        bucket, key = self.split_target(req)
        m = req.method
        if not bucket:
            return "ListBuckets" if m == "GET" else "Other"
        if not key:
            if m == "PUT":
                return "CreateBucket"
            if m == "HEAD":
                return "HeadBucket"
            if m == "GET":
                if req.has("location"):
                    return "GetBucketLocation"
                if req.has("uploads"):
                    return "ListMultipartUploads"
                return "ListObjectsV2" if req.query.get("list-type") == "2" else "ListObjects"
            if m == "POST" and req.has("delete"):
                return "DeleteObjects"
            if m == "DELETE" and not req.query:
                return "DeleteBucket"
            return "Other"
        copy = "x-amz-copy-source" in req.headers
        if m == "POST" and req.has("uploads"):
            return "CreateMultipartUpload"
        if m == "PUT" and req.has("partNumber") and req.has("uploadId"):
            return "UploadPartCopy" if copy else "UploadPart"
        if m == "POST" and req.has("uploadId"):
            return "CompleteMultipartUpload"
        if m == "DELETE" and req.has("uploadId"):
            return "AbortMultipartUpload"
        if m == "GET" and req.has("uploadId"):
            return "ListParts"
        if copy:
            return "CopyObject"
        if m == "PUT" and not req.query:
            return "PutObject"
        if m == "HEAD" and not set(req.query) - {"versionId"}:
            return "HeadObject"
        if m == "DELETE" and not set(req.query) - {"versionId"}:
            return "DeleteObject"
        if m == "GET" and all(q == "versionId" or q.startswith("response-") for q in req.query):
            return "GetObject"
        return "Other"

    # -- hooks of the discard endpoint ------------------------------------------------------------

    def read_body(self, req: Request) -> Body:
        op = self.operation(req)
        if op != "Stats":
            self.odd.stats.request(op, req)
        if self.options.ignores_checksums:
            # a store that does not know these headers: nothing is validated, stored or answered
            for name in [n for n in req.headers if n.startswith("x-amz-checksum-") or n == "x-amz-trailer"]:
                del req.headers[name]
        return super().read_body(req)

    def wants_md5(self, req: Request) -> bool:
        return True  # every part's MD5 is needed: for md5 ETags and for md5-of-md5s

    def keeps_body(self, req: Request) -> bool:
        if super().keeps_body(req):
            return True
        op = self.operation(req)
        if op == "PutObject":
            return self.options.keep_bodies
        if op == "UploadPart":
            return self.options.keep_bodies or self.options.multipart_etag == "object-md5"
        return False

    def body_received(self, req: Request, size: int) -> None:
        op = self.operation(req)
        if op in DATA_OPERATIONS:
            self.odd.stats.received(op, size)

    def digest_mismatch(self, req: Request, message: str) -> None:
        if not self.options.checks_nothing:
            super().digest_mismatch(req, message)

    def completed_object(self, parts: list[Part], meta: ObjectMeta) -> ObjectMeta:
        odd = [p for p in parts if isinstance(p, OddPart)]
        assert len(odd) == len(parts), "parts are made by OddHandler.upload_part"
        mode = self.options.multipart_etag
        if mode == "md5-of-md5s":
            etag = f'"{hashlib.md5(b"".join(p.md5 for p in odd)).hexdigest()}-{len(odd)}"'
        elif mode == "random":
            etag = f'"{random_hex()}-{len(odd)}"'
        else:
            whole = hashlib.md5()
            for p in odd:
                whole.update(p.data or b"")
            etag = f'"{whole.hexdigest()}"'
        data = b"".join(p.data or b"" for p in odd) if self.options.keep_bodies else None
        return OddObject(
            size=meta.size,
            etag=etag,
            last_modified=meta.last_modified,
            checksums=meta.checksums,
            checksum_type=meta.checksum_type,
            parts_count=meta.parts_count,
            data=self.at_rest(data),
        )

    def send(self, req: Request, resp: Response, request_id: str, keep_alive: bool) -> None:
        op = self.operation(req)
        if op != "Stats":
            self.odd.stats.answered(op, resp.status)
        super().send(req, resp, request_id, keep_alive)

    # -- routing ----------------------------------------------------------------------------------

    def dispatch(self, req: Request, body: Body) -> Response:
        op = self.operation(req)
        if op == "Stats":
            if req.method != "GET":
                raise S3Error(405, "MethodNotAllowed", f"only GET is served at {STATS_PATH}")
            payload = json.dumps(self.odd.stats.snapshot(), sort_keys=True).encode()
            return Response(200, {"Content-Type": "application/json"}, payload)
        if self.options.deny_head and op in ("HeadObject", "GetObject"):
            raise S3Error(403, "AccessDenied", "Access Denied")
        if self.options.deny_abort and op == "AbortMultipartUpload":
            raise S3Error(403, "AccessDenied", "Access Denied")
        if self.options.expire_after is not None:
            with self.odd.stats.lock:
                parts_seen = self.odd.stats.requests["UploadPart"]
            if parts_seen > self.options.expire_after:
                raise S3Error(400, "ExpiredToken", "The provided token has expired.")
        bucket, key = self.split_target(req)
        if op == "GetObject" and self.options.keep_bodies:
            self.require_bucket(bucket)
            resp = self.get_object(bucket, key, req)
        elif op == "DeleteObject":
            self.require_bucket(bucket)
            resp = self.delete_object_if_match(bucket, key, req)
        else:
            resp = super().dispatch(req, body)
        if self.options.sse_kms_default and op in SSE_OPERATIONS and resp.status < 300:
            resp.headers.update(SSE_HEADERS)
        return resp

    # -- object operations ------------------------------------------------------------------------

    def new_etag(self, md5: bytes) -> str:
        """The ETag of a part or of a PutObject whose bytes have this MD5."""
        return f'"{md5.hex() if self.options.etags == "md5" else random_hex()}"'

    def at_rest(self, data: bytes | None) -> bytes | None:
        """What is stored of a body: nothing without --keep-bodies; corrupted under --corrupt-stored."""
        if data is None or not self.options.keep_bodies:
            return None
        return corrupted(data) if self.options.corrupt_stored else data

    def upload_part(self, bucket: str, key: str, req: Request, body: Body) -> Response:
        try:
            number = int(req.query["partNumber"])
        except ValueError:
            number = 0
        if not 1 <= number <= 10000:
            raise S3Error(400, "InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive")
        md5 = bytes.fromhex(body.md5_hex) if body.md5_hex else hashlib.md5(b"").digest()
        etag = self.new_etag(md5)
        data = body.data if self.keeps_body(req) else None
        part = OddPart(number, body.size, etag, dict(body.checksums), time.time(), md5=md5, data=data)
        with self.state.lock:
            up = self.find_upload(bucket, key, req)
            up.parts[number] = part
        headers = {"ETag": etag}
        for name, value in body.checksums.items():
            headers[ALGORITHMS[name].header] = ALGORITHMS[name].encode(value)
        return Response(200, headers)

    def put_object(self, bucket: str, key: str, req: Request, body: Body) -> Response:
        md5 = bytes.fromhex(body.md5_hex) if body.md5_hex else hashlib.md5(b"").digest()
        etag = self.new_etag(md5)
        checksums = {n: ALGORITHMS[n].encode(v) for n, v in body.checksums.items()}
        obj = OddObject(
            size=body.size,
            etag=etag,
            last_modified=time.time(),
            checksums=checksums,
            checksum_type="FULL_OBJECT" if checksums else None,
            data=self.at_rest(body.data if body.data is not None else b""),
        )
        with self.state.lock:
            self.state.objects[bucket][key] = obj
        headers = {"ETag": etag}
        headers.update({ALGORITHMS[n].header: v for n, v in checksums.items()})
        return Response(200, headers)

    def get_object(self, bucket: str, key: str, req: Request) -> Response:
        """GetObject under --keep-bodies: HeadObject's headers and the stored bytes (or a range of them)."""
        while True:  # HeadObject's headers and the bytes must be of the same object (it may be replaced)
            resp = self.head_object(bucket, key, req)
            with self.state.lock:
                obj = self.state.objects[bucket].get(key)
            if obj is not None and obj.etag == resp.headers["ETag"] and obj.size == resp.content_length:
                break
        if not isinstance(obj, OddObject) or obj.data is None:
            raise S3Error(501, "NotImplemented", "this object was stored without its bytes")
        data = obj.data
        resp.content_length = None  # the body is sent: its own length
        span = byte_range(req.headers["range"], len(data)) if "range" in req.headers else None
        if span is None:
            resp.body = data
            return resp
        first, last = span
        resp.status = 206
        resp.body = data[first : last + 1]
        resp.headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        for name in [h for h in resp.headers if h.lower().startswith("x-amz-checksum-")]:
            del resp.headers[name]  # object checksums do not describe a range
        return resp

    def delete_object_if_match(self, bucket: str, key: str, req: Request) -> Response:
        condition = req.headers.get("if-match")
        if condition is None:
            return self.delete_object(bucket, key)
        with self.state.lock:
            obj = self.state.objects[bucket].get(key)
            if obj is None:
                raise S3Error(404, "NoSuchKey", "The specified key does not exist.")
            if not etag_matches(condition, obj.etag):
                raise S3Error(
                    412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold"
                )
            del self.state.objects[bucket][key]
        return Response(204)


class OddServer(DiscardServer):
    """The discard endpoint's server, serving connections with ``OddHandler``."""

    handler_class = OddHandler

    def __init__(self, options: Options, host: str = "127.0.0.1", port: int = 0, log: bool = False) -> None:
        super().__init__(host, port, log)
        self.state = OddState(options)


def parse_options(argv: list[str] | None = None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.odd_store",
        description="S3 endpoint for tests that behaves like S3-compatible stores that differ from AWS.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket at start")
    parser.add_argument("--log", action="store_true", help="log each request to stderr")
    parser.add_argument("--keep-bodies", action="store_true", help="keep object bytes and serve GetObject")
    parser.add_argument("--checks-nothing", action="store_true",
                        help="accept wrong x-amz-checksum-* and Content-MD5 values")
    parser.add_argument("--echo-checksums", action="store_true",
                        help="with --checks-nothing: store and echo the checksums the client stated")
    parser.add_argument("--etags", choices=ETAG_MODES, default=None,
                        help="part and PutObject ETags (default md5; random under --sse-kms-default)")
    parser.add_argument("--multipart-etag", choices=MULTIPART_ETAG_MODES, default=None,
                        help="ETag of a completed multipart object (default md5-of-md5s; random under "
                             "--sse-kms-default)")
    parser.add_argument("--sse-kms-default", action="store_true",
                        help="answer as a bucket with default SSE-KMS encryption (random ETags)")
    parser.add_argument("--deny-head", action="store_true", help="HeadObject and GetObject answer 403")
    parser.add_argument("--corrupt-stored", action="store_true",
                        help="with --keep-bodies: flip one byte of every stored body after hashing it")
    parser.add_argument("--deny-abort", action="store_true", help="AbortMultipartUpload answers 403")
    parser.add_argument("--expire-after", type=int, default=None, metavar="N",
                        help="after N UploadPart requests, answer every request 400 ExpiredToken")
    args = parser.parse_args(argv)
    if args.echo_checksums and not args.checks_nothing:
        parser.error("--echo-checksums needs --checks-nothing (a checking store always echoes)")
    if args.corrupt_stored and not args.keep_bodies:
        parser.error("--corrupt-stored needs --keep-bodies (there are no stored bytes to corrupt)")
    default = "random" if args.sse_kms_default else None
    options = Options(
        keep_bodies=args.keep_bodies,
        checks_nothing=args.checks_nothing,
        echo_checksums=args.echo_checksums,
        etags=args.etags or default or "md5",
        multipart_etag=args.multipart_etag or default or "md5-of-md5s",
        sse_kms_default=args.sse_kms_default,
        deny_head=args.deny_head,
        corrupt_stored=args.corrupt_stored,
        deny_abort=args.deny_abort,
        expire_after=args.expire_after,
    )
    return options, args


def main(argv: list[str] | None = None) -> int:
    options, args = parse_options(argv)
    server = OddServer(options, args.host, args.port, args.log)
    for b in args.bucket:
        server.state.buckets[b] = time.time()
        server.state.objects[b] = {}
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"LISTENING {server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        return 0


# --------------------------------------------------------------------------------------------------
# The test side: start a store process and talk to it
# --------------------------------------------------------------------------------------------------


@dataclass
class OddStore(S3Server):
    """An ``S3Server`` for an odd store process, plus its flags and its counters."""

    flags: tuple[str, ...] = ()

    def stats(self) -> dict[str, Any]:
        """The store's ``GET /_stats`` document (see ``Stats.snapshot``)."""
        url = urlsplit(self.endpoint_url)
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
        try:
            conn.request("GET", STATS_PATH)
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"{STATS_PATH} answered {resp.status}: {payload[:500]!r}")
        doc: dict[str, Any] = json.loads(payload)
        return doc


#: a factory of odd stores, as the ``odd_store`` fixture returns it: ``odd_store(*flags)``
OddStoreFactory = Callable[..., OddStore]


def _read_port(proc: subprocess.Popen[bytes], timeout: float, log_path: Path) -> int:
    """The port of the ``LISTENING <port>`` line the store prints; waits at most ``timeout`` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"odd store did not print LISTENING within {timeout:.0f}s (log: {log_path})")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            proc.wait(timeout=10)
            log = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"odd store exited with {proc.returncode} during start-up:\n{log}")
        seen += chunk
    m = re.fullmatch(rb"LISTENING (\d+)\s*", seen.split(b"\n", 1)[0] + b"\n")
    if m is None:
        raise RuntimeError(f"odd store printed {seen[:200]!r} instead of LISTENING <port>")
    return int(m.group(1))


def start_odd_store(tmp_dir: Path, *flags: str, timeout: float = 30.0) -> OddStore:
    """Start ``python -m tests.support.odd_store --port 0 *flags`` and return once it accepts connections.

    The process picks a free loopback port itself and dies with the thread that started it
    (``PR_SET_PDEATHSIG``); its stderr is in ``tmp_dir/odd-store-*.log``. Raises ``RuntimeError`` when it
    exits during start-up (bad flags: its log is quoted) and ``TimeoutError`` after ``timeout`` seconds.
    ``stop()`` on the result stops it by PID.
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    log_path = tmp_dir / f"odd-store-{uuid.uuid4().hex[:8]}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.odd_store", "--host", "127.0.0.1", "--port", "0", *flags],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 - prctl + getppid only
        )

    def reap() -> None:
        stop_pids([proc.pid])
        proc.poll()
        if proc.stdout is not None:
            proc.stdout.close()

    try:
        port = _read_port(proc, timeout, log_path)
    except BaseException:
        reap()
        raise
    return OddStore(
        name="odd-store",
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key="testing",
        secret_key="testing",
        pids=[proc.pid],
        stop_hook=reap,
        flags=tuple(flags),
    )


if __name__ == "__main__":
    sys.exit(main())
