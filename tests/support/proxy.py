"""A TCP proxy in its own process, for putting faults between an S3 client and an S3 server.

Command line (run from the repository root)::

    python -m tests.support.proxy TARGET_HOST TARGET_PORT [--listen-port P]
        [--tls-cert server.pem --tls-key server-key.pem]   # terminate TLS; plain TCP to the target
        [--throttle-bps N]                                 # client->server at most N bytes/s per connection
        [--flip-part N [--flip-offset K]]                  # flip one bit in one request body, once
        [--reset-part N [--reset-after BYTES]]             # RST the first UploadPart of part N mid-body, once
                                                           # (N = 0: the first PutObject)
        [--slowdown COUNT]                                 # answer 503 SlowDown to the first COUNT UploadParts
        [--slowdown-puts COUNT]                            # ... and to the first COUNT PutObjects
        [--stall-part N [--stall-seconds S]]               # stop the first UploadPart of part N mid-body, once
        [--hold-part N [--hold-seconds S]]                 # hold the first UploadPart of part N's head S s, once
        [--truncate-response COUNT]                        # cut the first COUNT answers to UploadParts
        [--delay-complete-response S]                      # hold each CompleteMultipartUpload answer S s
        [--log requests.jsonl]                             # one JSON line per client->server request

It listens on 127.0.0.1 (port 0 = one the kernel picks), prints ``LISTENING <port>`` on stdout once it accepts
connections, and prints nothing else there (diagnostics go to stderr).  It exits 0 on SIGTERM or SIGINT,
dropping open connections.  Each client connection gets its own connection to the target.

When any of --flip-part, --log or a fault is given, the client->server stream is parsed as HTTP/1.1 requests
(head up to CRLFCRLF, forwarded once complete; body framed by Content-Length or chunked coding, chunked
bodies never altered); a stream that cannot be parsed is passed through untouched from then on.  The
server->client direction is a raw byte pipe (so ``100 Continue`` and keep-alive just work), except with
--truncate-response or --delay-complete-response: then its responses are parsed too and matched, in order,
with the requests sent on that connection (``1xx`` answers are interim: passed on, not counted).

``--flip-part N`` flips the lowest bit of the body byte at offset K (default 1000, clamped to the body's last
byte) of the first request that is

* for N >= 1, an UploadPart: ``PUT`` with query ``partNumber=N`` and ``uploadId``, body not empty, no
  ``x-amz-copy-source``;
* for N == 0, a PutObject: ``PUT /bucket/key`` (path-style) with no query parameter but ``x-id``, body not
  empty, no ``x-amz-copy-source``.

This happens once per proxy process; a matching request whose connection dies before byte K passes does
not count, and the next matching request is corrupted instead.

Faults.  An UploadPart here is any ``PUT`` whose query has ``partNumber`` and ``uploadId``; a
CompleteMultipartUpload is a ``POST`` whose query has ``uploadId`` and no ``uploads``.  Counts are taken over
all connections, in the order the request heads arrive.  All modes combine (with each other, --flip-part,
--throttle-bps, TLS and --log); one request gets at most one fault, tried in this order: slowdown, reset,
stall, hold, truncate (a request taken by one is not counted by the next ones), delay.

* ``--slowdown COUNT``: the first COUNT UploadParts are not forwarded.  The proxy answers
  ``HTTP/1.1 503 Slow Down`` (``Content-Type: application/xml``, ``Connection: close``, body
  ``<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>``) and closes
  the connection, as S3 does: right after the head when it has ``Expect: 100-continue`` (botocore then
  never sends the body), else after reading and dropping the whole body.  Then it half-closes and reads
  (and drops) what the client still sends for up to 5 s, so that the client reads the answer before the
  connection goes.
* ``--slowdown-puts COUNT``: the same for the first COUNT PutObjects (as ``--flip-part 0`` defines them).
* ``--reset-part N`` (``--reset-after BYTES``, default 1 MiB): the first UploadPart of part N (N = 0: the first
  PutObject) with a non-empty body: after BYTES bytes of its body (at most its length - 1) have been forwarded, both
  connections are closed with a RST (SO_LINGER 1, 0).  Once.
* ``--stall-part N`` (``--stall-seconds S``, default 3600): the first UploadPart of part N with a non-empty
  body: after 1 MiB of its body (at most its length - 1) has been forwarded, nothing is forwarded and the
  client socket is not read (its sends block once the socket buffers are full) for S seconds or until the
  proxy stops; then forwarding goes on.  Once.
* ``--hold-part N`` (``--hold-seconds S``, default 10): the head of the first UploadPart of part N is held S
  seconds, then forwarded with its body: the server sees the request S seconds late (a presigned URL that expires
  meanwhile is refused). Once.
* ``--truncate-response COUNT``: the answers to the first COUNT UploadParts (taken when their heads pass)
  are cut with a RST on both connections: after the middle of the body when it has a Content-Length > 0,
  right after the head for a chunked or read-until-close body, and one CRLF before the end of the head when
  there is no body (moto's and S3's UploadPart answers) -- never at a point where the answer looks whole.
* ``--delay-complete-response S``: every CompleteMultipartUpload is forwarded at once, but the server's
  answer is held S seconds before it is passed on (the object exists before the client knows it).

A reset or stall taken by a request that ends (or whose connection dies) before its point, and a truncation
taken by a request whose connection ends before the answer comes, go to the next matching request.

``--log`` lines look like ``{"method": "PUT", "path": "/b/k", "query": "partNumber=2&uploadId=x",
"content_length": 5242880, "flipped": true, "chunked": false, "fault": null, "bearer": null, "complete": true}``
(``bearer``: the SHA-256 of an ``Authorization: Bearer`` token, as the API server stores it), written
when the request's body has passed (or the connection ended mid-request: ``"complete": false``), flushed
each time.  ``fault`` is ``"reset"``, ``"slowdown"``, ``"stall"``, ``"hold"``, ``"truncate"``, ``"delay"`` or null.  The
line of a request whose answer is to be truncated waits for the cut (or for the connection's end, which
makes it null), so lines are not always in arrival order.  A request answered with SlowDown after its
``Expect: 100-continue`` head has ``"complete": false`` (its body never came); a reset or stalled request
is logged when its connection ends.

From Python, ``start_proxy(...)`` runs it as a child that dies with the calling thread (PR_SET_PDEATHSIG)
and returns a ``ProxyHandle``; the faults are keyword arguments named like the flags (``reset_part``,
``reset_after``, ``slowdown``, ``stall_part``, ``stall_seconds``, ``truncate_response``,
``delay_complete_response``)::

    proxy = start_proxy("127.0.0.1", moto_port, tls=make_tls(tmp), flip_part=2, log_path=tmp / "log.jsonl")
    try:
        url = proxy.url()            # "https://127.0.0.1:PORT"
        ...
        assert [r for r in proxy.requests() if r["flipped"]]
    finally:
        proxy.stop()                 # SIGTERM, wait; SIGKILL after the timeout; returns the exit status

Seen from botocore (1.44, urllib3 2): ``retries={"max_attempts": 1}`` means one *retry*; use
``{"total_max_attempts": 1}`` to see a fault.  A reset mostly arrives while the body is being sent: urllib3
swallows that ECONNRESET, then reads EOF -- ``ConnectionClosedError`` (RemoteDisconnected) in HTTP, an
``SSLError`` ("EOF occurred in violation of protocol") over TLS.  A stall gives ``ReadTimeoutError`` when
the rest of the body fits in the socket buffers; when the client's send blocks instead, the socket timeout in
force is the *connect* timeout and the error is ``ConnectionClosedError`` (TimeoutError).  A truncation gives
``ConnectionClosedError`` (ConnectionResetError).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import json
import os
import selectors
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from tests.support.s3server import S3Server
    from tests.support.tls import TlsFiles

#: bytes asked for per read in both directions
READ_SIZE = 256 * 1024
#: StreamReader buffer limit (reading pauses at twice this)
STREAM_LIMIT = 1024 * 1024
#: transport write buffer high-water mark before drain() waits
WRITE_HIGH_WATER = 1024 * 1024
#: a request head (request line + headers) longer than this stops the parsing for that connection
MAX_HEAD = 64 * 1024
#: a chunk-size or trailer line longer than this stops the parsing for that connection
MAX_LINE = 8 * 1024
#: seconds to wait for the target's answer after the client half-closed its side
HALF_CLOSE_WAIT = 300.0
#: slices per second of the throttle
THROTTLE_TICKS = 100
#: default body bytes forwarded before ``--reset-part`` resets the connection
RESET_AFTER = 1024 * 1024
#: body bytes forwarded before ``--stall-part`` stops forwarding
STALL_AFTER = 1024 * 1024
#: default length of the stall, seconds
STALL_SECONDS = 3600.0
#: default length of a --hold-part hold, seconds
HOLD_SECONDS = 10.0
#: seconds to keep reading (and dropping) what the client sends after the SlowDown answer
LINGER_SECONDS = 5.0
#: seconds to wait for written bytes to reach the kernel before a reset
FLUSH_TIMEOUT = 5.0

SLOWDOWN_BODY = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
SLOWDOWN_RESPONSE = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n"
    b"Connection: close\r\n\r\n" % len(SLOWDOWN_BODY)
) + SLOWDOWN_BODY

_REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------------
# Request and response parsing, the bit flip and the fault decisions (pure, no I/O: fed with whatever chunks
# the sockets return)


class RequestLog:
    """Appends one JSON object per line to a file, flushed after each line."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the proxy

    def write(self, entry: dict[str, Any]) -> None:
        self._file.write(json.dumps(entry, separators=(", ", ": ")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class FlipState:
    """Which request body gets its bit flipped; shared by all connections of one proxy."""

    def __init__(self, part: int | None, offset: int = 1000) -> None:
        if part is not None and part < 0:
            raise ValueError("flip part must be >= 0")
        if offset < 0:
            raise ValueError("flip offset must be >= 0")
        self.part = part
        self.offset = offset
        self.armed = False  # a request in flight has claimed the flip
        self.done = False  # the bit has been flipped

    def claim(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], length: int
    ) -> int | None:
        """If this request is the one to corrupt, claim the flip and return the body offset to flip."""
        if self.part is None or self.done or self.armed or method != "PUT" or length <= 0:
            return None
        if "x-amz-copy-source" in headers:
            return None
        if self.part == 0:
            if set(query) - {"x-id"}:
                return None
            bucket, _, key = path.lstrip("/").partition("/")
            if not bucket or not key:
                return None
        else:
            try:
                number = int(query.get("partNumber", [""])[0])
            except ValueError:
                return None
            if number != self.part or "uploadId" not in query:
                return None
        self.armed = True
        return min(self.offset, length - 1)

    def release(self) -> None:
        """The claiming request ended before the flip: let the next matching request have it."""
        self.armed = False

    def flipped(self) -> None:
        self.armed = False
        self.done = True


class OnceFault:
    """A fault for the first UploadPart of one part number that reaches the fault's point (reset, stall)."""

    def __init__(self, part: int | None) -> None:
        if part is not None and part < 0:
            raise ValueError("a part number is >= 1 (0: a PutObject)")
        self.part = part
        self.armed = False  # a request in flight has claimed it
        self.done = False  # it has happened

    def claim(self, part: int | None) -> bool:
        if self.part is None or self.done or self.armed or part != self.part:
            return False
        self.armed = True
        return True

    def release(self) -> None:
        self.armed = False

    def fired(self) -> None:
        self.armed = False
        self.done = True


class Faults:
    """The fault modes of one proxy process and their counters, shared by all its connections."""

    def __init__(
        self,
        *,
        reset_part: int | None = None,
        reset_after: int = RESET_AFTER,
        slowdown: int = 0,
        slowdown_puts: int = 0,
        stall_part: int | None = None,
        stall_seconds: float = STALL_SECONDS,
        hold_part: int | None = None,
        hold_seconds: float = HOLD_SECONDS,
        truncate_response: int = 0,
        delay_complete_response: float | None = None,
    ) -> None:
        if reset_after < 0 or slowdown < 0 or slowdown_puts < 0 or truncate_response < 0 or stall_seconds < 0 \
                or hold_seconds < 0:
            raise ValueError("fault counts, byte counts and durations must be >= 0")
        if delay_complete_response is not None and delay_complete_response < 0:
            raise ValueError("the Complete delay must be >= 0")
        self.reset = OnceFault(reset_part)
        self.reset_after = reset_after
        self.stall = OnceFault(stall_part)
        self.stall_seconds = stall_seconds
        self.hold = OnceFault(hold_part)
        self.hold_seconds = hold_seconds
        self.slowdown_left = slowdown
        self.slowdown_puts_left = slowdown_puts
        self.truncate_left = truncate_response
        self.delay = delay_complete_response

    @property
    def any(self) -> bool:
        return (
            self.reset.part is not None
            or self.stall.part is not None
            or self.hold.part is not None
            or self.slowdown_left > 0
            or self.slowdown_puts_left > 0
            or self.truncate_left > 0
            or self.delay is not None
        )

    @property
    def watch_responses(self) -> bool:
        """True when some fault needs to know which response answers which request."""
        return self.truncate_left > 0 or self.delay is not None

    def take_slowdown(self, kind: str = "upload_part") -> bool:
        if kind == "put_object":
            if self.slowdown_puts_left <= 0:
                return False
            self.slowdown_puts_left -= 1
            return True
        if kind != "upload_part" or self.slowdown_left <= 0:
            return False
        self.slowdown_left -= 1
        return True

    def take_truncate(self) -> bool:
        if self.truncate_left <= 0:
            return False
        self.truncate_left -= 1
        return True

    def give_back_truncate(self) -> None:
        self.truncate_left += 1

    def once(self, kind: str) -> OnceFault:
        return self.reset if kind == "reset" else self.stall


@dataclass(frozen=True)
class Fault:
    """An action for the pump, between the byte runs to forward: ``reset``, ``stall`` and ``slowdown``
    (client->server), ``truncate`` and ``delay`` (server->client)."""

    kind: str
    seconds: float = 0.0


Item = bytes | Fault


class Exchange:
    """One request sent to the server, waiting for its response; writes the request's log line.

    The line is written when the request has passed (or its connection ended), except while the request's
    response is to be truncated and has not been: then it waits for the cut or for the connection's end
    (which gives the truncation back to the next UploadPart and logs ``"fault": null``).
    """

    def __init__(self, method: str, entry: dict[str, Any], log: RequestLog | None, faults: Faults) -> None:
        self.method = method
        self.entry = entry
        self.log = log
        self.faults = faults
        self.truncate = False  # the response is to be cut and has not been yet
        self.delay: float | None = None  # hold the response this long
        self._request_done = False
        self._logged = False

    def request_done(self, complete: bool) -> None:
        self.entry["complete"] = complete
        self._request_done = True
        self._maybe_log()

    def truncated(self) -> None:
        self.truncate = False
        self._maybe_log()

    def drop(self) -> None:
        """The connection ended before the response came."""
        if self.truncate:
            self.truncate = False
            self.entry["fault"] = None
            self.faults.give_back_truncate()
        self._maybe_log()

    def _maybe_log(self) -> None:
        if self._request_done and not self.truncate and not self._logged:
            self._logged = True
            if self.log is not None:
                self.log.write(self.entry)


def request_kind(method: str, query: dict[str, list[str]], path: str = "",
                 headers: dict[str, str] | None = None) -> str:
    """``upload_part``, ``put_object`` (path-style ``PUT /bucket/key``, no query but ``x-id``, not a copy),
    ``complete`` (CompleteMultipartUpload) or ``""``."""
    if method == "PUT" and "partNumber" in query and "uploadId" in query:
        return "upload_part"
    bucket, _, key = path.lstrip("/").partition("/")
    if (method == "PUT" and not set(query) - {"x-id"} and bucket and key
            and "x-amz-copy-source" not in (headers or {})):
        return "put_object"
    if method == "POST" and "uploadId" in query and "uploads" not in query:
        return "complete"
    return ""


def _bearer_hash(headers: dict[str, str]) -> str | None:
    """The SHA-256 (hex, as the API server stores it) of an ``Authorization: Bearer`` token, or None."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return hashlib.sha256(token.strip().encode()).hexdigest()


def _part_number(query: dict[str, list[str]]) -> int | None:
    try:
        return int(query.get("partNumber", [""])[0])
    except ValueError:
        return None


def _parse_head(head: bytes) -> tuple[list[str], dict[str, str]] | None:
    """(first line split on blanks into at most 3 words, lower-cased headers) or None when malformed."""
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    return lines[0].split(" ", 2), headers


def _is_chunked(headers: dict[str, str]) -> bool:
    return "chunked" in [t.strip().lower() for t in headers.get("transfer-encoding", "").split(",")]


class BodyFraming:
    """Follows one message body: ``length`` bytes, chunked coding, or (length None) everything until EOF."""

    def __init__(self, length: int | None, chunked: bool) -> None:
        self.chunked = chunked
        self.state = "chunk_line" if chunked else "data"  # data | chunk_line | trailer
        self.remaining: int | None = 0 if chunked else length  # data bytes left (chunks: incl. their CRLF)
        self.line = bytearray()

    def advance(self, data: bytes | bytearray, pos: int, end: int) -> tuple[int, bool]:
        """Consume ``data[pos:end]`` up to the end of the body: (new pos, body ended).  ValueError: bad framing."""
        while pos < end:
            if self.state == "data":
                if self.remaining is None:
                    return end, False
                k = min(self.remaining, end - pos)
                pos += k
                self.remaining -= k
                if self.remaining == 0:
                    if not self.chunked:
                        return pos, True
                    self.state = "chunk_line"
                continue
            nl = data.find(b"\n", pos, end)
            if nl < 0:
                self.line += data[pos:end]
                if len(self.line) > MAX_LINE:
                    raise ValueError("chunk-size or trailer line too long")
                return end, False
            self.line += data[pos : nl + 1]
            pos = nl + 1
            line = bytes(self.line).rstrip(b"\r\n")
            self.line.clear()
            if len(line) > MAX_LINE:
                raise ValueError("chunk-size or trailer line too long")
            if self.state == "chunk_line":
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size < 0:
                    raise ValueError("negative chunk size")
                if size == 0:
                    self.state = "trailer"
                else:
                    self.state = "data"
                    self.remaining = size + 2  # the data and its CRLF
            elif line == b"":  # end of the trailer section
                return pos, True
        return pos, False


class _Out:
    """What one chunk turns into: runs of its bytes to forward, other bytes and faults, in order."""

    def __init__(self, data: bytes) -> None:
        self.src: bytes | bytearray = data
        self.items: list[Item] = []
        self.start = self.end = 0  # the run not yet added to items

    def fwd(self, a: int, b: int) -> None:
        if a == b:
            return
        if self.start == self.end or self.end != a:
            self._flush()
            self.start = a
        self.end = b

    def put(self, item: Item) -> None:
        self._flush()
        if not isinstance(item, bytes) or item:
            self.items.append(item)

    def mutable(self) -> bytearray:
        if not isinstance(self.src, bytearray):
            self.src = bytearray(self.src)
        return self.src

    def _flush(self) -> None:
        if self.end > self.start:
            src = self.src
            if isinstance(src, bytes) and self.start == 0 and self.end == len(src):
                self.items.append(src)
            else:
                self.items.append(bytes(src[self.start : self.end]))
        self.start = self.end = 0

    def result(self) -> list[Item]:
        self._flush()
        return self.items


class _HeadBuffer:
    """Collects one message head (up to CRLFCRLF) across chunks; holds its bytes until it is complete."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def take(self, data: bytes, pos: int) -> tuple[bytes | None, int, bool]:
        """(complete head or None, new pos, too long)."""
        start = len(self.buf)
        self.buf += data[pos : pos + MAX_HEAD + 4]
        idx = self.buf.find(b"\r\n\r\n", max(0, start - 3))
        if idx < 0:
            return None, min(len(data), pos + MAX_HEAD + 4), len(self.buf) > MAX_HEAD
        end = idx + 4
        head = bytes(self.buf[:end])
        self.buf.clear()
        return head, pos + end - start, False

    def held(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


class RequestStream:
    """Follows the HTTP/1.1 requests in one client->server byte stream; may flip one bit on the way and
    decides the client->server faults.

    ``process(chunk)`` returns what to do with the chunk: byte strings to forward and ``Fault`` actions in
    between.  A request head is forwarded once complete.  ``feed(chunk)`` returns only the bytes (the same
    object unless a bit was flipped in it or a head was held).  A stream that cannot be parsed (bad request
    line, bad framing, huge head) is passed through untouched from then on.  Each request sent on to the
    server is appended to ``pending`` (when given) for the matching ``ResponseStream``.
    """

    def __init__(
        self,
        flip: FlipState,
        log: RequestLog | None,
        faults: Faults | None = None,
        pending: deque[Exchange] | None = None,
    ) -> None:
        self.flip = flip
        self.log = log
        self.faults = faults if faults is not None else Faults()
        self.pending = pending
        self.state = "head"  # head | body | raw | stopped
        self.head = _HeadBuffer()
        self.body: BodyFraming | None = None
        self.body_pos = 0
        self.flip_at: int | None = None
        self.fault_at: int | None = None  # body offset of a claimed reset/stall
        self.fault_kind: str | None = None
        self.discard = False  # the body of a request answered with SlowDown
        self.exchange: Exchange | None = None
        self.request: dict[str, Any] | None = None

    # -- helpers

    def _start(self, head: bytes, out: _Out) -> None:
        parsed = _parse_head(head)
        if parsed is None or len(parsed[0]) != 3 or not parsed[0][2].startswith("HTTP/"):
            out.put(head)
            self.state = "raw"
            return
        (method, target, _version), headers = parsed
        path, _, query = target.partition("?")
        chunked = _is_chunked(headers)
        length: int | None = None
        if not chunked and "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                length = -1
            if length < 0:
                out.put(head)
                self.state = "raw"
                return
        entry: dict[str, Any] = {
            "method": method,
            "path": path,
            "query": query,
            "content_length": length,
            "flipped": False,
            "chunked": chunked,
            "fault": None,
            "bearer": _bearer_hash(headers),
        }
        q = parse_qs(query, keep_blank_values=True)
        kind = request_kind(method, q, path, headers)
        has_body = chunked or bool(length)
        self.exchange = Exchange(method, entry, self.log, self.faults)
        self.request = entry
        self.body = BodyFraming(length, chunked) if has_body else None
        self.body_pos = 0
        self.flip_at = self.fault_at = None
        self.fault_kind = None
        self.discard = False
        faults = self.faults
        if faults.take_slowdown(kind):
            entry["fault"] = "slowdown"  # the head is not forwarded
            if has_body and headers.get("expect", "").lower() != "100-continue":
                self.discard = True  # the client sends the body at once: take it all, then answer
                self.state = "body"
                return
            self._finish(complete=not has_body)
            out.put(Fault("slowdown"))
            self.state = "stopped"
            return
        if length:
            self.flip_at = self.flip.claim(method, path, q, headers, length)
        if kind in ("upload_part", "put_object") and has_body:
            number = _part_number(q) if kind == "upload_part" else 0
            for fault_kind, after in (("reset", faults.reset_after), ("stall", STALL_AFTER)):
                if faults.once(fault_kind).claim(number):
                    self.fault_kind = fault_kind
                    self.fault_at = after if length is None else min(after, length - 1)
                    break
        if kind == "upload_part" and has_body and self.fault_kind is None and faults.hold.claim(_part_number(q)):
            faults.hold.fired()
            entry["fault"] = "hold"
            out.put(Fault("hold", faults.hold_seconds))  # before the head: the server sees nothing meanwhile
        if kind == "upload_part" and self.fault_kind is None and entry["fault"] is None and faults.take_truncate():
            self.exchange.truncate = True
            entry["fault"] = "truncate"
        if kind == "complete" and faults.delay is not None:
            self.exchange.delay = faults.delay
            entry["fault"] = "delay"
        out.put(head)
        if self.pending is not None:
            self.pending.append(self.exchange)
        if has_body:
            self.state = "body"
        else:
            self._finish(complete=True)

    def _body(self, out: _Out, pos: int, n: int) -> int:
        assert self.body is not None and self.request is not None
        if self.fault_at is not None and self.body_pos >= self.fault_at:
            assert self.fault_kind is not None
            kind = self.fault_kind
            self.faults.once(kind).fired()
            self.fault_at = self.fault_kind = None
            self.request["fault"] = kind
            out.put(Fault(kind, self.faults.stall_seconds if kind == "stall" else 0.0))
            if kind == "reset":
                self.state = "stopped"
                return n
            return pos
        end = n if self.fault_at is None else min(n, pos + self.fault_at - self.body_pos)
        try:
            new, ended = self.body.advance(out.src, pos, end)
        except ValueError:
            if self.discard:
                self._finish(complete=False)
                out.put(Fault("slowdown"))
                self.state = "stopped"
            else:
                out.fwd(pos, n)
                self.state = "raw"
            return n
        k = new - pos
        if self.flip_at is not None and self.body_pos <= self.flip_at < self.body_pos + k:
            out.mutable()[pos + self.flip_at - self.body_pos] ^= 0x01
            self.flip_at = None
            self.flip.flipped()
            self.request["flipped"] = True
        if not self.discard:
            out.fwd(pos, new)
        self.body_pos += k
        if ended:
            discard = self.discard
            self._finish(complete=True)
            if discard:
                out.put(Fault("slowdown"))
                self.state = "stopped"
        return new

    def _finish(self, complete: bool) -> None:
        if self.flip_at is not None:  # claimed but the byte never passed
            self.flip.release()
            self.flip_at = None
        if self.fault_kind is not None:  # claimed but the point never came
            self.faults.once(self.fault_kind).release()
            self.fault_at = self.fault_kind = None
        if self.exchange is not None:
            self.exchange.request_done(complete)
        self.exchange = None
        self.request = None
        self.body = None
        self.discard = False
        self.state = "head"

    # -- the API

    def process(self, data: bytes) -> list[Item]:
        out = _Out(data)
        pos, n = 0, len(data)
        while pos < n:
            if self.state == "raw":
                out.fwd(pos, n)
                break
            if self.state == "stopped":
                break
            if self.state == "body":
                pos = self._body(out, pos, n)
                continue
            if not self.head.buf:  # empty lines before a request line are allowed
                start = pos
                while pos < n and data[pos] in (0x0D, 0x0A):
                    pos += 1
                out.fwd(start, pos)
                if pos == n:
                    break
            head, pos, too_long = self.head.take(data, pos)
            if head is not None:
                self._start(head, out)
            elif too_long:
                out.put(self.head.held())
                self.state = "raw"
        return out.result()

    def feed(self, data: bytes) -> bytes:
        """The bytes to forward for ``data`` (faults left out)."""
        items = [x for x in self.process(data) if isinstance(x, bytes)]
        return items[0] if len(items) == 1 else b"".join(items)

    def held(self) -> bytes:
        """At EOF: the bytes of an incomplete head, to be forwarded as they are."""
        return self.head.held() if self.state == "head" else b""

    def close(self) -> None:
        """The connection ended: log a request cut short, give back unused claims."""
        if self.request is not None:
            self._finish(complete=False)


class ResponseStream:
    """Follows the HTTP/1.1 responses in one server->client byte stream and applies ``truncate`` and
    ``delay`` to the answers of the requests queued in ``pending`` (in order; ``1xx`` answers are interim).

    A truncated response is forwarded up to the middle of its body (``Content-Length`` > 0), to the end of
    its head (chunked or read-until-close bodies) or, without a body, to its head minus the final CRLF; then
    a ``Fault("truncate")`` follows and nothing more.  A delayed response is preceded by ``Fault("delay")``.
    """

    def __init__(self, pending: deque[Exchange]) -> None:
        self.pending = pending
        self.state = "head"  # head | body | raw | stopped
        self.head = _HeadBuffer()
        self.body: BodyFraming | None = None
        self.body_pos = 0
        self.cut_at: int | None = None

    def _start(self, head: bytes, out: _Out) -> None:
        parsed = _parse_head(head)
        if parsed is None or len(parsed[0]) < 2 or not parsed[0][0].startswith("HTTP/") or not parsed[0][1].isdigit():
            out.put(head)
            self.state = "raw"
            return
        code, headers = int(parsed[0][1]), parsed[1]
        if 100 <= code < 200:  # interim: passed on, the final answer is still to come
            out.put(head)
            if code == 101:
                self.state = "raw"
            return
        ex = self.pending.popleft() if self.pending else None
        length: int | None = None
        chunked = False
        if (ex is not None and ex.method == "HEAD") or code in (204, 304):
            length = 0
        elif _is_chunked(headers):
            chunked = True
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                length = -1
            if length < 0:
                out.put(head)
                self.state = "raw"
                return
        self.body = BodyFraming(length, chunked) if length != 0 else None
        self.body_pos = 0
        self.cut_at = None
        if ex is not None and ex.delay is not None:
            out.put(Fault("delay", ex.delay))
        if ex is not None and ex.truncate:
            ex.truncated()
            if self.body is None:
                out.put(head[:-2])
                out.put(Fault("truncate"))
                self.state = "stopped"
                return
            out.put(head)
            self.cut_at = length // 2 if length is not None else 0
            if self.cut_at == 0:
                out.put(Fault("truncate"))
                self.state = "stopped"
                return
        else:
            out.put(head)
        self.state = "body" if self.body is not None else "head"

    def process(self, data: bytes) -> list[Item]:
        out = _Out(data)
        pos, n = 0, len(data)
        while pos < n:
            if self.state == "raw":
                out.fwd(pos, n)
                break
            if self.state == "stopped":
                break
            if self.state == "head":
                head, pos, too_long = self.head.take(data, pos)
                if head is not None:
                    self._start(head, out)
                elif too_long:
                    out.put(self.head.held())
                    self.state = "raw"
                continue
            assert self.body is not None
            end = n if self.cut_at is None else min(n, pos + self.cut_at - self.body_pos)
            try:
                new, ended = self.body.advance(out.src, pos, end)
            except ValueError:
                out.fwd(pos, n)
                self.state = "raw"
                break
            out.fwd(pos, new)
            self.body_pos += new - pos
            pos = new
            if self.cut_at is not None and self.body_pos >= self.cut_at:
                out.put(Fault("truncate"))
                self.state = "stopped"
            elif ended:
                self.body = None
                self.state = "head"
        return out.result()

    def held(self) -> bytes:
        """At EOF: the bytes of an incomplete head, to be forwarded as they are."""
        return self.head.held() if self.state == "head" else b""


class Throttle:
    """Paces one connection's writes to ``bps`` bytes/s in slices of 1/THROTTLE_TICKS s, with no burst."""

    def __init__(self, bps: int) -> None:
        if bps <= 0:
            raise ValueError("throttle must be > 0 bytes/s")
        self.bps = bps
        self.slice = max(1, bps // THROTTLE_TICKS)
        self.next_at = 0.0

    async def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        for i in range(0, len(data), self.slice):
            piece = data[i : i + self.slice]
            now = loop.time()
            if self.next_at < now:  # idle time earns no credit
                self.next_at = now
            elif self.next_at > now:
                await asyncio.sleep(self.next_at - now)
            writer.write(piece)
            self.next_at += len(piece) / self.bps
            await writer.drain()


@dataclass
class ProxyConfig:
    target_host: str
    target_port: int
    listen_port: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    throttle_bps: int | None = None
    flip_part: int | None = None
    flip_offset: int = 1000
    log: Path | None = None
    reset_part: int | None = None
    reset_after: int = RESET_AFTER
    slowdown: int = 0
    slowdown_puts: int = 0
    stall_part: int | None = None
    stall_seconds: float = STALL_SECONDS
    hold_part: int | None = None
    hold_seconds: float = HOLD_SECONDS
    truncate_response: int = 0
    delay_complete_response: float | None = None

    def faults(self) -> Faults:
        return Faults(
            reset_part=self.reset_part,
            reset_after=self.reset_after,
            slowdown=self.slowdown,
            slowdown_puts=self.slowdown_puts,
            stall_part=self.stall_part,
            stall_seconds=self.stall_seconds,
            hold_part=self.hold_part,
            hold_seconds=self.hold_seconds,
            truncate_response=self.truncate_response,
            delay_complete_response=self.delay_complete_response,
        )


class _Closed(Exception):
    """A fault ended the connection (raised by a pump so that the other one is dropped too)."""


class Proxy:
    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self.flip = FlipState(cfg.flip_part, cfg.flip_offset)
        self.faults = cfg.faults()
        self.log = RequestLog(cfg.log) if cfg.log is not None else None
        self.parse = cfg.flip_part is not None or self.log is not None or self.faults.any
        self.tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def _tune(writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    @staticmethod
    async def _flush(writer: asyncio.StreamWriter) -> None:
        """Wait (a bounded time) until everything written so far is handed to the kernel."""
        writer.transport.set_write_buffer_limits(high=0)
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(FLUSH_TIMEOUT):
                await writer.drain()

    @staticmethod
    def _rst(*writers: asyncio.StreamWriter) -> None:
        """Close abruptly: SO_LINGER (1, 0) makes close() send a RST instead of a FIN."""
        for writer in writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    async def _stall(self, transport: asyncio.BaseTransport, seconds: float) -> None:
        """Stop reading from the client for ``seconds`` (its sends block once the buffers are full)."""
        paused = isinstance(transport, asyncio.ReadTransport) and transport.is_reading()
        if paused:
            assert isinstance(transport, asyncio.ReadTransport)
            transport.pause_reading()
        try:
            await asyncio.sleep(seconds)
        finally:
            if paused and isinstance(transport, asyncio.ReadTransport) and not transport.is_closing():
                transport.resume_reading()

    @staticmethod
    async def _slowdown(creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        """Answer 503 SlowDown and close, reading (and dropping) what the client still sends meanwhile."""
        cwriter.write(SLOWDOWN_RESPONSE)
        await cwriter.drain()
        if cwriter.can_write_eof():
            cwriter.write_eof()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(LINGER_SECONDS):
                while await creader.read(READ_SIZE):
                    pass

    async def _downstream(
        self,
        sreader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        swriter: asyncio.StreamWriter,
        responses: ResponseStream | None,
    ) -> None:
        """server -> client: raw bytes (or parsed, for truncate/delay); EOF passed on where possible."""
        while data := await sreader.read(READ_SIZE):
            for item in responses.process(data) if responses is not None else (data,):
                if isinstance(item, bytes):
                    cwriter.write(item)
                    await cwriter.drain()
                elif item.kind == "delay":
                    await asyncio.sleep(item.seconds)
                else:  # truncate
                    await self._flush(cwriter)
                    self._rst(cwriter, swriter)
                    raise _Closed(item.kind)
        if responses is not None and (rest := responses.held()):
            cwriter.write(rest)
        if cwriter.can_write_eof():
            cwriter.write_eof()

    async def _upstream(
        self,
        creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        swriter: asyncio.StreamWriter,
        requests: RequestStream | None,
    ) -> None:
        """client -> server: parsed (flip, faults, log) and paced (throttle) as configured."""
        throttle = Throttle(self.cfg.throttle_bps) if self.cfg.throttle_bps else None

        async def send(data: bytes) -> None:
            if throttle is not None:
                await throttle.send(swriter, data)
            else:
                swriter.write(data)
                await swriter.drain()

        while data := await creader.read(READ_SIZE):
            for item in requests.process(data) if requests is not None else (data,):
                if isinstance(item, bytes):
                    await send(item)
                elif item.kind == "stall":
                    await self._stall(cwriter.transport, item.seconds)
                elif item.kind == "hold":
                    await asyncio.sleep(item.seconds)
                elif item.kind == "reset":
                    await self._flush(swriter)
                    self._rst(cwriter, swriter)
                    raise _Closed(item.kind)
                else:  # slowdown
                    await self._slowdown(creader, cwriter)
                    raise _Closed(item.kind)
        if requests is not None and (rest := requests.held()):
            await send(rest)
        if swriter.can_write_eof():
            swriter.write_eof()

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        swriter: asyncio.StreamWriter | None = None
        pumps: list[asyncio.Task[None]] = []
        pending: deque[Exchange] = deque()
        requests: RequestStream | None = None
        try:
            try:
                sreader, swriter = await asyncio.wait_for(
                    asyncio.open_connection(self.cfg.target_host, self.cfg.target_port, limit=STREAM_LIMIT),
                    timeout=10,
                )
            except (OSError, TimeoutError) as e:
                print(f"proxy: cannot reach target: {e!r}", file=sys.stderr, flush=True)
                return
            assert swriter is not None
            self._tune(cwriter)
            self._tune(swriter)
            watch = self.faults.watch_responses
            if self.parse:
                requests = RequestStream(self.flip, self.log, self.faults, pending if watch else None)
            responses = ResponseStream(pending) if watch else None
            up = asyncio.create_task(self._upstream(creader, cwriter, swriter, requests))
            down = asyncio.create_task(self._downstream(sreader, cwriter, swriter, responses))
            pumps = [up, down]
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            if up in done and down not in done and up.exception() is None:
                # the client half-closed: let the server finish its answer
                await asyncio.wait([down], timeout=HALF_CLOSE_WAIT)
        except asyncio.CancelledError:
            pass
        finally:
            for t in pumps:
                t.cancel()
            for t in pumps:  # collect the outcome so that nothing is reported as never retrieved
                with contextlib.suppress(BaseException):
                    await t
            if requests is not None:
                requests.close()
            while pending:
                pending.popleft().drop()
            for w in (cwriter, swriter):
                if w is not None:
                    w.close()
            self.tasks.discard(task)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.set_exception_handler(_quiet_exception_handler)
        ctx: ssl.SSLContext | None = None
        if self.cfg.tls_cert is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
        server = await asyncio.start_server(
            self.handle,
            "127.0.0.1",
            self.cfg.listen_port,
            ssl=ctx,
            ssl_handshake_timeout=10 if ctx is not None else None,
            limit=STREAM_LIMIT,
            backlog=512,
        )
        port = server.sockets[0].getsockname()[1]
        print(f"LISTENING {port}", flush=True)
        await stop.wait()
        server.close()
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=2)
        if self.log is not None:
            self.log.close()


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    print(f"proxy: {context.get('message')}: {exc!r}", file=sys.stderr, flush=True)


def _parse_args(argv: Sequence[str] | None) -> ProxyConfig:
    p = argparse.ArgumentParser(prog="python -m tests.support.proxy", description=__doc__.split("\n")[0])
    p.add_argument("target_host")
    p.add_argument("target_port", type=int)
    p.add_argument("--listen-port", type=int, default=0)
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--throttle-bps", type=int)
    p.add_argument("--flip-part", type=int)
    p.add_argument("--flip-offset", type=int, default=1000)
    p.add_argument("--log", type=Path)
    p.add_argument("--reset-part", type=int)
    p.add_argument("--reset-after", type=int, default=RESET_AFTER)
    p.add_argument("--slowdown", type=int, default=0)
    p.add_argument("--slowdown-puts", type=int, default=0)
    p.add_argument("--stall-part", type=int)
    p.add_argument("--stall-seconds", type=float, default=STALL_SECONDS)
    p.add_argument("--hold-part", type=int)
    p.add_argument("--hold-seconds", type=float, default=HOLD_SECONDS)
    p.add_argument("--truncate-response", type=int, default=0)
    p.add_argument("--delay-complete-response", type=float)
    a = p.parse_args(argv)
    if (a.tls_cert is None) != (a.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    if a.throttle_bps is not None and a.throttle_bps <= 0:
        p.error("--throttle-bps must be > 0")
    if (a.flip_part is not None and a.flip_part < 0) or a.flip_offset < 0:
        p.error("--flip-part and --flip-offset must be >= 0")
    if a.reset_part is not None and a.reset_part < 0:
        p.error("--reset-part must be >= 0")
    if a.stall_part is not None and a.stall_part < 1:
        p.error("--stall-part must be >= 1")
    if a.hold_part is not None and a.hold_part < 1:
        p.error("--hold-part must be >= 1")
    for name in ("reset_after", "slowdown", "slowdown_puts", "stall_seconds", "hold_seconds", "truncate_response"):
        if getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if a.delay_complete_response is not None and a.delay_complete_response < 0:
        p.error("--delay-complete-response must be >= 0")
    return ProxyConfig(
        target_host=a.target_host,
        target_port=a.target_port,
        listen_port=a.listen_port,
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
        throttle_bps=a.throttle_bps,
        flip_part=a.flip_part,
        flip_offset=a.flip_offset,
        log=a.log,
        reset_part=a.reset_part,
        reset_after=a.reset_after,
        slowdown=a.slowdown,
        slowdown_puts=a.slowdown_puts,
        stall_part=a.stall_part,
        stall_seconds=a.stall_seconds,
        hold_part=a.hold_part,
        hold_seconds=a.hold_seconds,
        truncate_response=a.truncate_response,
        delay_complete_response=a.delay_complete_response,
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = _parse_args(argv)
    asyncio.run(Proxy(cfg).run())
    return 0


# --------------------------------------------------------------------------------------------------------
# The wrapper used by the tests


@dataclass
class ProxyHandle:
    """A running proxy process started by ``start_proxy``."""

    port: int
    pid: int
    tls: bool
    log_path: Path | None
    _proc: subprocess.Popen[bytes] = field(repr=False)
    _stderr: IO[bytes] = field(repr=False)
    returncode: int | None = None

    def url(self, scheme: str | None = None) -> str:
        """``https://127.0.0.1:PORT`` with TLS, else ``http://...``; pass ``scheme`` to force one."""
        return f"{scheme or ('https' if self.tls else 'http')}://127.0.0.1:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        """The requests logged so far (needs ``log_path``), oldest first."""
        if self.log_path is None:
            raise RuntimeError("this proxy was started without log_path")
        if not self.log_path.exists():
            return []
        entries = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line being written right now
                entries.append(json.loads(line))
        return entries

    def stderr_text(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def s3server(self, base: S3Server, ca_bundle: Path | None = None) -> S3Server:
        """``base`` (credentials, region) reached through this proxy; stopping it stops the proxy only."""
        from tests.support.s3server import S3Server

        return S3Server(
            name=f"{base.name}+{'https' if self.tls else 'proxy'}",
            endpoint_url=self.url(),
            access_key=base.access_key,
            secret_key=base.secret_key,
            region=base.region,
            ca_bundle=str(ca_bundle) if ca_bundle is not None else None,
            stop_hook=self._stop_quietly,
        )

    def alive(self) -> bool:
        return self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; return the exit status (0 = clean exit)."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self.returncode = self._proc.returncode
        if not self._stderr.closed:
            self._stderr.close()
        return self.returncode

    def _stop_quietly(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def proxy_for(server: S3Server, **kwargs: Any) -> ProxyHandle:
    """``start_proxy`` in front of ``server``'s (plain-HTTP) endpoint; keyword arguments as for it."""
    from urllib.parse import urlsplit

    target = urlsplit(server.endpoint_url)
    if target.scheme != "http":
        raise ValueError(f"the proxy forwards to plain HTTP, not {server.endpoint_url}")
    return start_proxy(target.hostname or "127.0.0.1", int(target.port or 80), **kwargs)


def start_proxy(
    target_host: str,
    target_port: int,
    *,
    tls: TlsFiles | None = None,
    throttle_bps: int | None = None,
    flip_part: int | None = None,
    flip_offset: int = 1000,
    log_path: Path | None = None,
    reset_part: int | None = None,
    reset_after: int = RESET_AFTER,
    slowdown: int = 0,
    slowdown_puts: int = 0,
    stall_part: int | None = None,
    stall_seconds: float = STALL_SECONDS,
    hold_part: int | None = None,
    hold_seconds: float = HOLD_SECONDS,
    truncate_response: int = 0,
    delay_complete_response: float | None = None,
    listen_port: int = 0,
    timeout: float = 30.0,
) -> ProxyHandle:
    """Start ``python -m tests.support.proxy`` as a child process; return once it listens.

    The child dies with the calling thread (PR_SET_PDEATHSIG=SIGKILL).  Its stderr goes to a temporary file
    (``ProxyHandle.stderr_text()``).  Raises ``RuntimeError`` if it exits during start-up and
    ``TimeoutError`` if it does not report its port within ``timeout`` seconds.
    """
    from tests.support.s3server import die_with_parent

    cmd = [sys.executable, "-m", "tests.support.proxy", target_host, str(target_port)]
    if listen_port:  # e.g. a proxy restarted on the port of one that was stopped: the same endpoint URL
        cmd += ["--listen-port", str(listen_port)]
    if tls is not None:
        cmd += [
            "--tls-cert",
            str(Path(tls.cert_pem).resolve()),
            "--tls-key",
            str(Path(tls.key_pem).resolve()),
        ]
    if throttle_bps is not None:
        cmd += ["--throttle-bps", str(throttle_bps)]
    if flip_part is not None:
        cmd += ["--flip-part", str(flip_part), "--flip-offset", str(flip_offset)]
    if log_path is not None:
        log_path = Path(log_path).resolve()
        cmd += ["--log", str(log_path)]
    if reset_part is not None:
        cmd += ["--reset-part", str(reset_part), "--reset-after", str(reset_after)]
    if slowdown:
        cmd += ["--slowdown", str(slowdown)]
    if slowdown_puts:
        cmd += ["--slowdown-puts", str(slowdown_puts)]
    if stall_part is not None:
        cmd += ["--stall-part", str(stall_part), "--stall-seconds", repr(float(stall_seconds))]
    if hold_part is not None:
        cmd += ["--hold-part", str(hold_part), "--hold-seconds", repr(float(hold_seconds))]
    if truncate_response:
        cmd += ["--truncate-response", str(truncate_response)]
    if delay_complete_response is not None:
        cmd += ["--delay-complete-response", repr(float(delay_complete_response))]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    stderr = tempfile.TemporaryFile(prefix="proxy-stderr-")  # noqa: SIM115 - owned by the handle
    proc = subprocess.Popen(
        cmd,
        cwd=_REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        preexec_fn=die_with_parent(),  # noqa: PLW1509 - async-signal-safe enough: prctl + getppid
    )
    handle = ProxyHandle(
        port=0, pid=proc.pid, tls=tls is not None, log_path=log_path, _proc=proc, _stderr=stderr
    )
    assert proc.stdout is not None
    try:
        handle.port = _read_port(proc, proc.stdout, timeout)
    except (RuntimeError, TimeoutError) as e:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        text = _tail(stderr)
        handle.stop()
        raise type(e)(f"{e}; stderr:\n{text}") from None
    except BaseException:
        handle.stop(timeout=2)
        raise
    finally:
        proc.stdout.close()
    return handle


def _tail(f: IO[bytes], size: int = 4000) -> str:
    with contextlib.suppress(OSError, ValueError):
        f.seek(0)
        return f.read().decode(errors="replace")[-size:]
    return "(stderr not readable)"


def _read_port(proc: subprocess.Popen[bytes], stdout: IO[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"proxy did not print LISTENING within {timeout:.0f}s")
            if not sel.select(left):
                continue
            chunk = os.read(stdout.fileno(), 4096)
            if not chunk:
                proc.wait(5)
                raise RuntimeError(f"proxy exited during start-up with status {proc.returncode}")
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
    word, _, port = line.partition(" ")
    if word != "LISTENING" or not port.isdigit():
        raise RuntimeError(f"unexpected first line from the proxy: {line!r}")
    return int(port)


def _set_pdeathsig() -> None:
    """Get SIGKILL when the parent exits, also when started by hand or by another tool."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


if __name__ == "__main__":
    _set_pdeathsig()
    sys.exit(main())
