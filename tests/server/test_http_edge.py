"""The HTTP edge of a real ``mpupload serve``: body size and time limits, header deadlines, the connection cap,
allowed hosts, forwarded headers, security headers, TLS and the SQLite file's mode.

Raw sockets where a client library would hide the point (a body never sent, headers sent halfway, a foreign
``Host``); each wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mpupload.cli.serve import wildcard_warning
from mpupload.server.api import ingest
from mpupload.server.app import create_app
from mpupload.server.edge import AUTH_BODY_BYTES, LOOPBACK_HOSTS, PROGRESS_BODY_BYTES, RECORD_BODY_BYTES, host_allowed
from mpupload.server.settings import Settings
from tests.support.tls import make_tls

from .conftest import PASSWORD
from .support import ServerProcess, cli, start_server

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
MAX_PER_ADDRESS = 3
CONCURRENCY = 12
EDGE_ENV = {
    "MPUPLOAD_HEADER_TIMEOUT": str(HEADER_TIMEOUT_S),
    "MPUPLOAD_BODY_TIMEOUT": str(BODY_TIMEOUT_S),
    "MPUPLOAD_LOGIN_MAX_PER_ADDRESS": str(MAX_PER_ADDRESS),
    "MPUPLOAD_LOGIN_MAX_PER_USER": "1000",
}


@pytest.fixture(scope="module")
def edge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("edge")


@pytest.fixture(scope="module")
def edge_server(edge_dir: Path) -> Iterator[ServerProcess]:
    """A server on a fresh SQLite file in a directory that does not exist yet (the server creates both), with
    short edge timeouts."""
    url = f"sqlite:///{edge_dir / 'data' / 'server.db'}"
    proc = start_server(url, edge_dir, "--limit-concurrency", str(CONCURRENCY), env=EDGE_ENV)
    try:
        added = cli("users", "add", "alice", "--password-stdin", "--database-url", url, stdin=PASSWORD + "\n")
        assert added.returncode == 0, added.stderr
        yield proc
    finally:
        proc.stop()


def _port(server: ServerProcess) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def _connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=10)
    return sock


def _read_answer(sock: socket.socket, deadline_s: float) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 answer (the server closes or sends content-length)."""
    sock.settimeout(deadline_s)
    data = b""
    end = time.monotonic() + deadline_s
    while b"\r\n\r\n" not in data:
        assert time.monotonic() < end, f"no answer within {deadline_s} s: {data!r}"
        chunk = sock.recv(65536)
        assert chunk, f"closed without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def _closed_within(sock: socket.socket, deadline_s: float) -> float:
    """Seconds until the server closed ``sock`` (reading and dropping whatever it sent before)."""
    start = time.monotonic()
    sock.settimeout(deadline_s)
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return time.monotonic() - start
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open past {deadline_s} s") from None
        if not chunk:
            return time.monotonic() - start


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _healthy(server: ServerProcess) -> None:
    response = httpx.get(f"{server.base_url}/healthz", timeout=2)
    assert response.status_code == 200


def _request_head(server: ServerProcess, method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{_port(server)}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- body size ---------------------------------------------------------------------------------------------------


def _send_body(sock: socket.socket, pieces: Iterator[bytes]) -> int:
    """Send until done or until the server stops listening; the bytes sent."""
    sent = 0
    try:
        for piece in pieces:
            sock.sendall(piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def _answer_or_reset(sock: socket.socket) -> int | None:
    """The status the server sent, or None when its close reset the connection before we read it (the kernel
    drops what it received unread when the peer closes with our body still arriving)."""
    try:
        return _read_answer(sock, 5)[0]
    except (ConnectionResetError, AssertionError):
        return None


def test_a_64_mib_password_is_refused_before_it_is_read(edge_server: ServerProcess) -> None:
    _healthy(edge_server)
    before = _rss_kib(edge_server.proc.pid)
    size = 64 * 1024 * 1024
    login_head = {"Content-Type": "application/json", "Content-Length": str(size)}

    # the answer comes from Content-Length alone, before a byte of the body
    sock = _connect(edge_server)
    started = time.monotonic()
    sock.sendall(_request_head(edge_server, "POST", "/api/v1/auth/login", login_head))
    status, headers, body = _read_answer(sock, 5)
    assert status == 413, body
    assert time.monotonic() - started < 1
    assert headers.get("connection") == "close"
    assert str(AUTH_BODY_BYTES) in json.loads(body)["detail"]
    _closed_within(sock, 5)
    sock.close()

    mib = b"x" * (1024 * 1024)
    for head, pieces in (
        (login_head, (b'{"username": "alice", "password": "', *(mib for _ in range(64)))),
        # chunked: no Content-Length to refuse early, so the body is counted as it arrives
        ({"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
         (f"{len(mib):x}\r\n".encode() + mib + b"\r\n" for _ in range(64))),
    ):
        sock = _connect(edge_server)
        started = time.monotonic()
        sock.sendall(_request_head(edge_server, "POST", "/api/v1/auth/login", head))
        sent = _send_body(sock, iter(pieces))
        assert sent < size, "the server took the whole 64 MiB"
        assert _answer_or_reset(sock) in (413, None)
        assert time.monotonic() - started < 3
        sock.close()
    _healthy(edge_server)
    grown_mib = (_rss_kib(edge_server.proc.pid) - before) / 1024
    assert grown_mib < 20, f"server RSS grew by {grown_mib:.0f} MiB"


def test_a_1_gb_content_length_with_no_body_is_refused_at_once(edge_server: ServerProcess) -> None:
    for path in ("/api/v1/auth/login", "/api/v1/uploads", "/api/v1/uploads/x/progress", "/graphql"):
        sock = _connect(edge_server)
        started = time.monotonic()
        sock.sendall(_request_head(edge_server, "POST", path, {"Content-Type": "application/json",
                                                               "Content-Length": str(10**9)}))
        status, _, _ = _read_answer(sock, 5)
        assert status == 413, path
        assert time.monotonic() - started < 1, path
        sock.close()
    _healthy(edge_server)


def test_record_bodies_are_capped_and_small_ones_pass(edge_server: ServerProcess) -> None:
    login = httpx.post(f"{edge_server.base_url}/api/v1/auth/login", json={"username": "alice", "password": PASSWORD})
    assert login.status_code == 200, login.text
    auth = {"Authorization": f"Bearer {login.json()['token']}"}
    record = {"filename": "f", "bucket": "b", "key": "k", "total_bytes": 1}
    created = httpx.post(f"{edge_server.base_url}/api/v1/uploads", headers=auth, json=record)
    assert created.status_code == 200, created.text
    big = httpx.post(f"{edge_server.base_url}/api/v1/uploads", headers=auth,
                     json={**record, "filename": "f" * RECORD_BODY_BYTES})
    assert big.status_code == 413, big.text[:200]
    big_query = httpx.post(f"{edge_server.base_url}/graphql", headers=auth,
                           json={"query": "{ __typename }" + " " * RECORD_BODY_BYTES})
    assert big_query.status_code == 413
    # a progress report keeps its own, larger limit (1 MiB): 100 KiB is still read and judged on its content
    assert PROGRESS_BODY_BYTES == ingest.MAX_BODY_BYTES
    report = httpx.post(f"{edge_server.base_url}/api/v1/uploads/{created.json()['id']}/progress", headers=auth,
                        json={"seq": 1, "status": "running", "bytes_done": 0, "pad": "x" * 100_000})
    assert report.status_code != 413, report.text


# -- slow clients ------------------------------------------------------------------------------------------------


def test_half_sent_bodies_and_headers_are_cut_off(edge_server: ServerProcess) -> None:
    half_body = _connect(edge_server)
    half_body.sendall(_request_head(edge_server, "POST", "/api/v1/auth/login",
                                    {"Content-Type": "application/json", "Content-Length": "100"}))
    half_body.sendall(b'{"username": "ali')
    silent = _connect(edge_server)
    half_headers = _connect(edge_server)
    started = time.monotonic()
    half_headers.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    _healthy(edge_server)  # all three hold a connection; the server still answers

    # headers trickling in, one byte every half second, do not keep the connection past the deadline
    cut_off_after: float | None = None
    while cut_off_after is None and time.monotonic() - started < HEADER_TIMEOUT_S + 3:
        try:
            half_headers.sendall(b"x")
        except (BrokenPipeError, ConnectionResetError):
            cut_off_after = time.monotonic() - started
            break
        time.sleep(0.5)
    assert cut_off_after is not None, "the server kept reading headers past the deadline"
    assert cut_off_after >= HEADER_TIMEOUT_S - 0.5  # and not before it

    status, headers, body = _read_answer(half_body, BODY_TIMEOUT_S + 3)
    assert status == 408, body
    assert headers.get("connection") == "close"
    assert _closed_within(half_body, 3) < 3
    assert _closed_within(silent, HEADER_TIMEOUT_S + 3) <= HEADER_TIMEOUT_S + 3
    for sock in (half_body, half_headers, silent):
        sock.close()
    _healthy(edge_server)


def test_oversized_headers_get_431(edge_server: ServerProcess) -> None:
    upgrade = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n")
    host = b"Host: 127.0.0.1\r\n"
    for head in (b"GET /healthz HTTP/1.1\r\n" + host, b"GET /graphql HTTP/1.1\r\n" + host + upgrade):
        sock = _connect(edge_server)
        try:
            sock.sendall(head)
            for _ in range(200):  # up to 200 headers of 4 KiB: 800 KiB
                sock.sendall(b"X-Pad: " + b"p" * 4096 + b"\r\n")
            sock.sendall(b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _answer_or_reset(sock) in (431, None)
        _closed_within(sock, 5)
        sock.close()
    _healthy(edge_server)
    assert "Traceback" not in edge_server.log.read_text()


def test_connections_over_the_cap_get_503(edge_server: ServerProcess) -> None:
    held = [_connect(edge_server) for _ in range(CONCURRENCY)]
    try:
        # uvicorn counts a connection once it is accepted: wait until it has seen them all
        end = time.monotonic() + 5
        while True:
            answer = httpx.get(f"{edge_server.base_url}/healthz", timeout=2)
            if answer.status_code == 503 or time.monotonic() > end:
                break
        assert answer.status_code == 503
    finally:
        for sock in held:
            sock.close()
    end = time.monotonic() + 5
    while httpx.get(f"{edge_server.base_url}/healthz", timeout=2).status_code != 200:
        assert time.monotonic() < end, "still 503 after the held connections closed"


def test_a_websocket_message_is_capped_like_a_record(edge_server: ServerProcess) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url = edge_server.base_url.replace("http://", "ws://") + "/graphql"
    with connect(url, subprotocols=["graphql-transport-ws"], open_timeout=5) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "connection_init", "payload": {"token": "x" * (RECORD_BODY_BYTES + 1)}}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
    _healthy(edge_server)


# -- hosts, forwarded headers, security headers ------------------------------------------------------------------


def test_a_foreign_host_is_refused_and_never_echoed(edge_server: ServerProcess) -> None:
    for path in ("/healthz", "/api/v1/uploads/", "/"):
        sock = _connect(edge_server)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: rebind.attacker.example\r\n\r\n".encode())
        status, headers, body = _read_answer(sock, 5)
        sock.close()
        assert status == 400, (path, body)
        assert b"attacker" not in body and "attacker" not in json.dumps(headers)
    # a name it answers for: the trailing-slash redirect points at that name
    sock = _connect(edge_server)
    sock.sendall(f"GET /api/v1/uploads/ HTTP/1.1\r\nHost: localhost:{_port(edge_server)}\r\n\r\n".encode())
    status, headers, _ = _read_answer(sock, 5)
    sock.close()
    assert status == 307, headers
    assert headers["location"] == f"http://localhost:{_port(edge_server)}/api/v1/uploads"
    # and a WebSocket from a rebinding page is refused before any GraphQL
    sock = _connect(edge_server)
    sock.sendall(b"GET /graphql HTTP/1.1\r\nHost: rebind.attacker.example\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n")
    status, _, _ = _read_answer(sock, 5)
    sock.close()
    assert status == 403


def test_host_patterns() -> None:
    allowed = ("localhost", "127.0.0.1", "::1", "*.example.org")
    assert host_allowed("LOCALHOST:8000", allowed)
    assert host_allowed("[::1]:8000", allowed)
    assert host_allowed("127.0.0.1", allowed)
    assert host_allowed("api.example.org", allowed) and host_allowed("example.org.", allowed)
    assert not host_allowed("evil-example.org", allowed)
    assert not host_allowed("127.0.0.1.attacker.example", allowed)
    assert not host_allowed(None, allowed) and not host_allowed("", allowed)
    assert host_allowed("anything", ("*",))
    env = {"MPUPLOAD_DATABASE_URL": "sqlite:///x.db"}
    assert Settings.from_env(host="10.1.2.3", env=env).allowed_hosts == ("localhost", "127.0.0.1", "::1", "10.1.2.3")
    assert Settings.from_env(host="0.0.0.0", env=env).allowed_hosts == ("localhost", "127.0.0.1", "::1")
    chosen = Settings.from_env(env={**env, "MPUPLOAD_ALLOWED_HOSTS": "A.example:8000, b, [::1]"})
    assert chosen.allowed_hosts == ("a.example", "b", "::1")
    # listening everywhere with only the loopback names allowed: serve says so at start
    assert "--allowed-hosts" in (wildcard_warning("0.0.0.0", LOOPBACK_HOSTS, None) or "")
    assert wildcard_warning("0.0.0.0", ("a.example",), "a.example") is None
    assert wildcard_warning("127.0.0.1", LOOPBACK_HOSTS, None) is None


def test_forwarded_for_does_not_dodge_the_per_address_limit(edge_server: ServerProcess) -> None:
    codes = []
    for n in range(MAX_PER_ADDRESS + 2):
        answer = httpx.post(f"{edge_server.base_url}/api/v1/auth/login",
                            json={"username": f"nobody{n}", "password": "wrong"},
                            headers={"X-Forwarded-For": f"203.0.113.{n + 1}", "X-Real-IP": f"198.51.100.{n + 1}"})
        codes.append(answer.status_code)
    assert codes[:MAX_PER_ADDRESS] == [401] * MAX_PER_ADDRESS
    assert 429 in codes[MAX_PER_ADDRESS:], codes


def test_forwarded_for_is_read_only_from_allowed_proxies(tmp_path: Path) -> None:
    """In process: the peer is 127.0.0.1; X-Forwarded-For counts only when that peer is an allowed proxy."""
    async def addresses(forwarded_allow_ips: str | None) -> list[int]:
        settings = Settings.from_env(database_url=f"sqlite:///{tmp_path / f'{forwarded_allow_ips}.db'}",
                                     forwarded_allow_ips=forwarded_allow_ips, env=EDGE_ENV)
        app = create_app(settings)
        codes = []
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                for n in range(MAX_PER_ADDRESS + 1):
                    answer = await client.post("/api/v1/auth/login", json={"username": f"u{n}", "password": "p"},
                                               headers={"X-Forwarded-For": f"203.0.113.{n + 1}"})
                    codes.append(answer.status_code)
        return codes

    assert asyncio.run(addresses(None))[-1] == 429  # the forwarded header is ignored: one address
    assert asyncio.run(addresses("127.0.0.1")) == [401] * (MAX_PER_ADDRESS + 1)  # each forwarded address counts
    with pytest.raises(Exception, match="not an address"):
        Settings.from_env(database_url="sqlite:///x.db", forwarded_allow_ips="proxy.example", env={})


def test_security_headers(edge_server: ServerProcess) -> None:
    page = httpx.get(f"{edge_server.base_url}/")
    api = httpx.get(f"{edge_server.base_url}/api/v1/me")
    assert page.status_code == 200 and api.status_code == 401
    for answer in (page, api, httpx.get(f"{edge_server.base_url}/healthz")):
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    assert api.headers["content-security-policy"].startswith("default-src 'none'")


# -- TLS, the database file -------------------------------------------------------------------


def test_login_over_https(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    url = f"sqlite:///{tmp_path / 'tls.db'}"
    assert cli("users", "add", "alice", "--password-stdin", "--database-url", url,
               stdin=PASSWORD + "\n").returncode == 0
    server = start_server(url, tmp_path, "--certfile", str(tls.cert_pem), "--keyfile", str(tls.key_pem), wait=False)
    https_url = server.base_url.replace("http://", "https://")
    trusted = ssl.create_default_context(cafile=str(tls.ca_pem))
    try:
        end = time.monotonic() + 60
        while True:
            assert server.proc.poll() is None, server.log.read_text()[-2000:]
            try:
                if httpx.get(f"{https_url}/healthz", verify=trusted, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < end, server.log.read_text()[-2000:]
            time.sleep(0.1)
        env = {"REQUESTS_CA_BUNDLE": str(tls.ca_pem), "XDG_CONFIG_HOME": str(tmp_path / "config"),
               "MPUPLOAD_API_URL": "", "MPUPLOAD_TOKEN": ""}
        done = cli("login", "--api-url", https_url, "-u", "alice", "--password-stdin", stdin=PASSWORD + "\n", env=env)
        assert done.returncode == 0, done.stderr
        assert "logged in" in done.stdout and "warning" not in done.stderr
        with pytest.raises(httpx.ConnectError):  # an untrusted client is refused, and plain http is not served
            httpx.get(f"{https_url}/healthz", timeout=2)
    finally:
        server.stop()


def test_the_sqlite_database_is_private(edge_server: ServerProcess, edge_dir: Path) -> None:
    _healthy(edge_server)
    data = edge_dir / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in data.iterdir() if p.name.startswith("server.db") and not p.name.endswith(".lock")]
    assert {p.name for p in files} >= {"server.db", "server.db-wal", "server.db-shm"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # a database file made readable to others earlier is narrowed when the server (or users) opens it
    old = edge_dir / "old.db"
    old.touch()
    os.chmod(old, 0o644)
    assert cli("users", "list", "--database-url", f"sqlite:///{old}").returncode == 0
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
