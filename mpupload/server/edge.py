"""The HTTP edge: what every request must pass before any route sees it (a plain ASGI middleware).

* **Host**: a request whose ``Host`` is not in ``--allowed-hosts`` gets 400 (a WebSocket is refused), so a
  DNS-rebinding page cannot talk to a server on loopback, and no answer ever echoes a foreign host.
* **Body size**: at most :data:`AUTH_BODY_BYTES` for ``/api/v1/auth/*``, :data:`PROGRESS_BODY_BYTES` for
  progress reports, :data:`FILES_BODY_BYTES` for a directory run's files batch and :data:`RECORD_BODY_BYTES`
  for everything else. A ``Content-Length`` over the limit is
  answered 413 before a byte of the body is read; a chunked body is counted as it is read and answered 413
  when it goes over. Either way the connection is closed.
* **Body time**: the whole body must arrive within ``body_timeout_s`` of the first read, else 408 and the
  connection is closed (a client that sends half a body and waits ties up nothing for long).
* **Headers on every answer**: ``X-Content-Type-Options``, ``X-Frame-Options``, ``Referrer-Policy`` and a
  Content-Security-Policy (the dashboard's allows its own scripts, styles and same-origin fetch/WebSocket;
  the API's allows nothing).

Slow or endless request *headers* are handled below ASGI, in the HTTP protocol (:func:`http_protocol`).
The client address used by the login limiter is :func:`client_address`: the peer address, or the
``X-Forwarded-For`` address only when the peer is in ``--forwarded-allow-ips`` (see ``create_app``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Iterable
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..wire import FILES_BATCH_MAX_BYTES

__all__ = ["EdgeMiddleware", "AUTH_BODY_BYTES", "RECORD_BODY_BYTES", "PROGRESS_BODY_BYTES", "FILES_BODY_BYTES",
           "LOOPBACK_HOSTS",
           "body_limit", "client_address", "default_allowed_hosts", "host_allowed", "host_name", "http_protocol"]

log = logging.getLogger(__name__)

AUTH_BODY_BYTES = 8 * 1024
RECORD_BODY_BYTES = 64 * 1024
PROGRESS_BODY_BYTES = 1024 * 1024  # what the progress endpoint has always allowed (see api.ingest)
FILES_BODY_BYTES = FILES_BATCH_MAX_BYTES  # POST /api/v1/uploads/{id}/files: up to 1000 entries
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

_PROGRESS_PREFIX = "/api/v1/uploads/"
_PROGRESS_SUFFIX = "/progress"
_FILES_SUFFIX = "/files"
_AUTH_PREFIX = "/api/v1/auth/"

_COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_DASHBOARD_CSP = (b"content-security-policy",
                  b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                  b"font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                  b"frame-ancestors 'none'")
_API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_DASHBOARD_HEADERS = [*_COMMON_HEADERS, _DASHBOARD_CSP]
_API_HEADERS = [*_COMMON_HEADERS, _API_CSP]


def body_limit(path: str) -> int:
    """The most bytes a request body to ``path`` may have."""
    if path.startswith(_PROGRESS_PREFIX) and path.endswith(_PROGRESS_SUFFIX):
        return PROGRESS_BODY_BYTES
    if path.startswith(_PROGRESS_PREFIX) and path.endswith(_FILES_SUFFIX):
        return FILES_BODY_BYTES
    if path.startswith(_AUTH_PREFIX):
        return AUTH_BODY_BYTES
    return RECORD_BODY_BYTES


def default_allowed_hosts(listen_host: str) -> tuple[str, ...]:
    """Loopback names and addresses, plus the address the server listens on (unless it is a wildcard)."""
    extra = () if listen_host in ("", "0.0.0.0", "::") else (listen_host.strip("[]").lower(),)
    return tuple(dict.fromkeys((*LOOPBACK_HOSTS, *extra)))


def host_name(value: str) -> str:
    """``Host`` without its port, lower case, IPv6 without brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def host_allowed(host_header: str | None, allowed: Iterable[str]) -> bool:
    """Whether a request with this ``Host`` header may reach the app (``*`` allows any, ``*.x`` a domain)."""
    allowed = tuple(allowed)
    if "*" in allowed:
        return True
    if not host_header:
        return False
    name = host_name(host_header).rstrip(".")
    for pattern in allowed:
        if pattern.startswith("*.") and (name.endswith(pattern[1:]) or name == pattern[2:]):
            return True
        if name == pattern:
            return True
    return False


def client_address(conn: HTTPConnection) -> str:
    """The client's address for rate limits and logs.

    It is the peer address, unless the peer is a proxy listed in ``--forwarded-allow-ips``: then the app is
    wrapped in uvicorn's proxy-headers middleware and ``scope["client"]`` already holds the address the proxy
    saw. ``X-Forwarded-For`` from anybody else is never read.
    """
    return conn.client.host if conn.client else "unknown"


def _valid_forwarded_entry(entry: str) -> bool:
    if entry in ("*", "unix:"):
        return True
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return entry.startswith("unix:")
    return True


def check_forwarded_allow_ips(entries: Iterable[str]) -> tuple[str, ...]:
    """The ``--forwarded-allow-ips`` entries, checked: addresses, networks (CIDR), ``*`` or ``unix:``."""
    cleaned = tuple(e.strip() for e in entries if e.strip())
    bad = [e for e in cleaned if not _valid_forwarded_entry(e)]
    if bad:
        raise ValueError(f"not an address or network: {', '.join(bad)}")
    return cleaned


async def _refuse(send: Send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close"), *_API_HEADERS]})
    await send({"type": "http.response.body", "body": payload})


class EdgeMiddleware:
    """Host check, body size and time limits, and security headers, in front of the whole app."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = ("*",), body_timeout_s: float = 10.0) -> None:
        self.app = app
        self.allowed_hosts = tuple(h.lower() for h in allowed_hosts)
        self.any_host = "*" in self.allowed_hosts
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, send)
            return
        host: str | None = None
        length: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        if not self.any_host and not host_allowed(host, self.allowed_hosts):
            log.warning("refused a request for host %r (not in --allowed-hosts)", (host or "")[:100])
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": "host not allowed"})
            else:
                await _refuse(send, 400, "this server does not answer for that host name (see --allowed-hosts)")
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        extra = _DASHBOARD_HEADERS if path == "/" or path.startswith("/static/") else _API_HEADERS
        limit = body_limit(path)
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared > limit:
                await _refuse(send, 413, f"the request body is over {limit} bytes")
                return
            if declared <= 0 and not chunked:
                await self.app(scope, receive, _with_headers(send, extra))
                return
        elif not chunked:  # no body at all
            await self.app(scope, receive, _with_headers(send, extra))
            return
        await _BodyGuard(self.app, scope, receive, send, extra, limit, self.body_timeout_s).run()


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)
    return sender


class _BodyGuard:
    """One request with a body: counts its bytes, holds it to a deadline, answers 413/408 in the app's stead."""

    def __init__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]],
                 limit: int, timeout_s: float) -> None:
        self.app = app
        self.scope = scope
        self._receive = receive
        self._send = send
        self.extra = extra
        self.limit = limit
        self.timeout_s = timeout_s
        self.deadline: float | None = None
        self.size = 0
        self.body_done = False
        self.started = False  # the app began its answer
        self.refused = False  # we answered in its stead; the app's answer goes nowhere

    async def run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except Exception:
            if not self.refused:
                raise
            # the app saw a disconnect where it wanted a body: it may complain, but the client has its answer

    async def receive(self) -> Message:
        if self.body_done or self.refused:
            return await self._receive() if not self.refused else {"type": "http.disconnect"}
        loop = asyncio.get_running_loop()
        if self.deadline is None:
            self.deadline = loop.time() + self.timeout_s
        try:
            async with asyncio.timeout_at(self.deadline):
                message = await self._receive()
        except TimeoutError:
            await self._stop(408, f"the request body did not arrive within {self.timeout_s:g} s")
            return {"type": "http.disconnect"}
        if message["type"] != "http.request":
            return message
        self.size += len(message.get("body", b""))
        if self.size > self.limit:
            await self._stop(413, f"the request body is over {self.limit} bytes")
            return {"type": "http.disconnect"}
        if not message.get("more_body", False):
            self.body_done = True
        return message

    async def _stop(self, status: int, detail: str) -> None:
        self.refused = True
        if not self.started:
            log.info("%s %s answered %d: %s", self.scope["method"], self.scope["path"], status, detail)
            await _refuse(self._send, status, detail)

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
            message = {**message, "headers": [*message.get("headers", ()), *self.extra]}
        await self._send(message)


def http_protocol(header_timeout_s: float, max_header_bytes: int = 64 * 1024) -> Any:
    """uvicorn's httptools protocol with a deadline on request headers and a cap on their size.

    uvicorn arms no timer while a request's headers are arriving (its keep-alive timeout covers only the
    wait *between* requests), so a client that sends a header line every few seconds holds a connection for
    ever. Here a connection whose request line and headers are not complete within ``header_timeout_s`` of
    its first byte (or of the previous answer) is closed, and headers over ``max_header_bytes`` get 431.
    Returns ``"auto"`` when httptools is not installed (uvicorn's h11 then caps the header size itself).
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
        return "auto"

    class EdgeHttpToolsProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _header_bytes = 0
        _refused = False

        def _arm(self) -> None:
            self._disarm()
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                log.info("closed a connection from %s: no complete request headers within %g s",
                         self.client[0] if self.client else "?", header_timeout_s)
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()  # a pipelined request, or one after the keep-alive wait: its own deadline
            self._header_bytes = 0

        def _count(self, size: int) -> None:
            self._header_bytes += size
            if self._header_bytes > max_header_bytes and not self._refused:
                self._refused = True
                self._disarm()
                self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
                                     b"connection: close\r\n\r\n")
                self.transport.close()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            if not self._refused:
                super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            if not self._refused:
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            if not self._refused:
                super().on_headers_complete()

        def handle_websocket_upgrade(self) -> None:
            if not self._refused:  # headers cut off at the cap never become a WebSocket
                super().handle_websocket_upgrade()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._refused:
                super().on_message_complete()

    return EdgeHttpToolsProtocol
