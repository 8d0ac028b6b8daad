"""A TCP proxy in its own process, for putting faults between an S3 client and an S3 server.

Command line (run from the repository root)::

    python -m tests.support.proxy TARGET_HOST TARGET_PORT [--listen-port P]
        [--tls-cert server.pem --tls-key server-key.pem]   # terminate TLS; plain TCP to the target
        [--throttle-bps N]                                 # client->server at most N bytes/s per connection
        [--flip-part N [--flip-offset K]]                  # flip one bit in one request body, once
        [--log requests.jsonl]                             # one JSON line per client->server request

It listens on 127.0.0.1 (port 0 = one the kernel picks), prints ``LISTENING <port>`` on stdout once it accepts
connections, and prints nothing else there (diagnostics go to stderr).  It exits 0 on SIGTERM or SIGINT,
dropping open connections.  Each client connection gets its own connection to the target; the
server->client direction is always a raw byte pipe (so ``100 Continue`` and keep-alive just work).

``--flip-part N`` parses the client->server stream as HTTP/1.1 requests (head up to CRLFCRLF, body framed by
Content-Length; chunked bodies are followed but never altered) and flips the lowest bit of the body byte at
offset K (default 1000, clamped to the body's last byte) of the first request that is

* for N >= 1, an UploadPart: ``PUT`` with query ``partNumber=N`` and ``uploadId``, body not empty, no
  ``x-amz-copy-source``;
* for N == 0, a PutObject: ``PUT /bucket/key`` (path-style) with no query parameter but ``x-id``, body not
  empty, no ``x-amz-copy-source``.

This happens once per proxy process; a matching request whose connection dies before byte K passes does
not count, and the next matching request is corrupted instead.  ``--log`` lines look like
``{"method": "PUT", "path": "/b/k", "query": "partNumber=2&uploadId=x", "content_length": 5242880,
"flipped": true, "chunked": false, "complete": true}``, written when the request's body has passed (or the
connection ended mid-request: ``"complete": false``), flushed each time.

From Python, ``start_proxy(...)`` runs it as a child that dies with the calling thread (PR_SET_PDEATHSIG)
and returns a ``ProxyHandle``::

    proxy = start_proxy("127.0.0.1", moto_port, tls=make_tls(tmp), flip_part=2, log_path=tmp / "log.jsonl")
    try:
        url = proxy.url()            # "https://127.0.0.1:PORT"
        ...
        assert [r for r in proxy.requests() if r["flipped"]]
    finally:
        proxy.stop()                 # SIGTERM, wait; SIGKILL after the timeout; returns the exit status
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import selectors
import signal
import ssl
import subprocess
import sys
import tempfile
import time
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

_REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------------
# Request parsing and the bit flip (pure, no I/O: fed with whatever chunks the socket returns)


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


class RequestStream:
    """Follows the HTTP/1.1 requests in one client->server byte stream; may flip one bit on the way.

    ``feed(chunk)`` returns the chunk to forward (the same object unless a bit was flipped in it).  A stream
    that cannot be parsed (bad request line, bad framing, huge head) is passed through untouched from then on.
    """

    def __init__(self, flip: FlipState, log: RequestLog | None) -> None:
        self.flip = flip
        self.log = log
        self.state = "head"  # head | body | chunk_line | chunk_data | trailer | raw
        self.buf = bytearray()
        self.remaining = 0  # body bytes (state body) or chunk bytes incl. CRLF (state chunk_data) left
        self.body_pos = 0
        self.flip_at: int | None = None
        self.request: dict[str, Any] | None = None

    # -- helpers

    def _start(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self.state = "raw"
            return
        method, target, _version = parts
        path, _, query = target.partition("?")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                self.state = "raw"
                return
            headers[name.strip().lower()] = value.strip()
        chunked = "chunked" in [t.strip().lower() for t in headers.get("transfer-encoding", "").split(",")]
        length: int | None = None
        if not chunked and "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                self.state = "raw"
                return
            if length < 0:
                self.state = "raw"
                return
        self.request = {
            "method": method,
            "path": path,
            "query": query,
            "content_length": length,
            "flipped": False,
            "chunked": chunked,
        }
        self.body_pos = 0
        self.flip_at = None
        if chunked:
            self.state = "chunk_line"
        elif length:
            self.flip_at = self.flip.claim(
                method, path, parse_qs(query, keep_blank_values=True), headers, length
            )
            self.state = "body"
            self.remaining = length
        else:
            self._finish(complete=True)

    def _finish(self, complete: bool) -> None:
        if self.flip_at is not None:  # claimed but the byte never passed
            self.flip.release()
            self.flip_at = None
        if self.request is not None and self.log is not None:
            self.log.write({**self.request, "complete": complete})
        self.request = None
        self.state = "head"

    def _take_line(self, data: bytes, pos: int) -> tuple[bytes | None, int]:
        """Accumulate up to and including LF; return (line without CRLF, new pos) or (None, len)."""
        nl = data.find(b"\n", pos)
        if nl < 0:
            self.buf += data[pos:]
            if len(self.buf) > MAX_LINE:
                self.state = "raw"
            return None, len(data)
        self.buf += data[pos : nl + 1]
        line = bytes(self.buf).rstrip(b"\r\n")
        self.buf.clear()
        return line, nl + 1

    # -- the API

    def feed(self, data: bytes) -> bytes:
        out: bytearray | None = None
        pos, n = 0, len(data)
        while pos < n and self.state != "raw":
            if self.state == "head":
                if not self.buf:  # empty lines before a request line are allowed
                    while pos < n and data[pos] in (0x0D, 0x0A):
                        pos += 1
                    if pos == n:
                        break
                start = len(self.buf)
                self.buf += data[pos : pos + MAX_HEAD + 4]
                idx = self.buf.find(b"\r\n\r\n", max(0, start - 3))
                if idx < 0:
                    if len(self.buf) > MAX_HEAD:
                        self.state = "raw"
                    pos = min(n, pos + MAX_HEAD + 4)
                    continue
                end = idx + 4
                pos += end - start
                head = bytes(self.buf[:end])
                self.buf.clear()
                self._start(head)
            elif self.state == "body":
                k = min(self.remaining, n - pos)
                if self.flip_at is not None and self.body_pos <= self.flip_at < self.body_pos + k:
                    if out is None:
                        out = bytearray(data)
                    out[pos + self.flip_at - self.body_pos] ^= 0x01
                    self.flip_at = None
                    self.flip.flipped()
                    assert self.request is not None
                    self.request["flipped"] = True
                self.body_pos += k
                self.remaining -= k
                pos += k
                if self.remaining == 0:
                    self._finish(complete=True)
            elif self.state == "chunk_data":
                k = min(self.remaining, n - pos)
                self.remaining -= k
                pos += k
                if self.remaining == 0:
                    self.state = "chunk_line"
            else:  # chunk_line | trailer
                line, pos = self._take_line(data, pos)
                if line is None:
                    continue
                if self.state == "chunk_line":
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        self.state = "raw"
                        continue
                    if size < 0:
                        self.state = "raw"
                    elif size == 0:
                        self.state = "trailer"
                    else:
                        self.state = "chunk_data"
                        self.remaining = size + 2  # the data and its CRLF
                elif line == b"":  # end of the trailer section
                    self._finish(complete=True)
        return data if out is None else bytes(out)

    def close(self) -> None:
        """The connection ended: log a request cut short, give back an unused flip."""
        if self.request is not None:
            self._finish(complete=False)


# --------------------------------------------------------------------------------------------------------
# The proxy process


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


class Proxy:
    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self.flip = FlipState(cfg.flip_part, cfg.flip_offset)
        self.log = RequestLog(cfg.log) if cfg.log is not None else None
        self.parse = cfg.flip_part is not None or self.log is not None
        self.tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def _tune(writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """server -> client: raw bytes, EOF passed on where the transport can half-close."""
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def _upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """client -> server: parsed (flip, log) and paced (throttle) as configured."""
        stream = RequestStream(self.flip, self.log) if self.parse else None
        throttle = Throttle(self.cfg.throttle_bps) if self.cfg.throttle_bps else None
        try:
            while data := await reader.read(READ_SIZE):
                if stream is not None:
                    data = stream.feed(data)
                if throttle is not None:
                    await throttle.send(writer, data)
                else:
                    writer.write(data)
                    await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        finally:
            if stream is not None:
                stream.close()

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        swriter: asyncio.StreamWriter | None = None
        pumps: list[asyncio.Task[None]] = []
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
            up = asyncio.create_task(self._upstream(creader, swriter))
            down = asyncio.create_task(self._pipe(sreader, cwriter))
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
    a = p.parse_args(argv)
    if (a.tls_cert is None) != (a.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    if a.throttle_bps is not None and a.throttle_bps <= 0:
        p.error("--throttle-bps must be > 0")
    if (a.flip_part is not None and a.flip_part < 0) or a.flip_offset < 0:
        p.error("--flip-part and --flip-offset must be >= 0")
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


def start_proxy(
    target_host: str,
    target_port: int,
    *,
    tls: TlsFiles | None = None,
    throttle_bps: int | None = None,
    flip_part: int | None = None,
    flip_offset: int = 1000,
    log_path: Path | None = None,
    timeout: float = 30.0,
) -> ProxyHandle:
    """Start ``python -m tests.support.proxy`` as a child process; return once it listens.

    The child dies with the calling thread (PR_SET_PDEATHSIG=SIGKILL).  Its stderr goes to a temporary file
    (``ProxyHandle.stderr_text()``).  Raises ``RuntimeError`` if it exits during start-up and
    ``TimeoutError`` if it does not report its port within ``timeout`` seconds.
    """
    from tests.support.s3server import die_with_parent

    cmd = [sys.executable, "-m", "tests.support.proxy", target_host, str(target_port)]
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
