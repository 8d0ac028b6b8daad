"""The login rate limiter against a real ``mpupload serve`` process: bounded memory whatever names clients
send, and a stranger's wrong passwords never lock the owner out from the owner's own address.

Two client addresses are two loopback source addresses (127.0.0.1 and 127.0.0.2): the server keys the limiter
by the socket's peer address. The limiter is in-process and database-independent, so these run on SQLite.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mpupload.server.auth import LoginRateLimiter

from .conftest import PASSWORD, Backend
from .support import ServerProcess, start_server

pytestmark = pytest.mark.integration

ONE_DB = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
OWNER_ADDRESS = "127.0.0.1"
STRANGER_ADDRESS = "127.0.0.2"
MAX_FAILURES = 5
#: what the server may grow by while answering the floods below (a leak of 1 KiB names x 1,000 plus their
#: deques and the 64 MiB of 1 MiB names is far above it)
RSS_GROWTH_LIMIT_KIB = 24 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def limited_server(backend: Backend) -> Iterator[ServerProcess]:
    proc = start_server(backend.database_url, backend.tmp, env={
        "MPUPLOAD_LOGIN_MAX_PER_USER": str(MAX_FAILURES), "MPUPLOAD_LOGIN_MAX_PER_ADDRESS": "5",
        "MPUPLOAD_LOGIN_WINDOW": "600"})
    try:
        yield proc
    finally:
        proc.stop()


def client(server: ServerProcess, address: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, transport=httpx.HTTPTransport(local_address=address),
                        timeout=30)


def login(http: httpx.Client, username: str, password: str) -> httpx.Response:
    return http.post("/api/v1/auth/login", json={"username": username, "password": password})


@ONE_DB
def test_a_strangers_failures_do_not_lock_the_owner_out(limited_server: ServerProcess) -> None:
    with client(limited_server, STRANGER_ADDRESS) as stranger, client(limited_server, OWNER_ADDRESS) as owner:
        for _ in range(MAX_FAILURES):
            assert login(stranger, "grace", "wrong").status_code == 401
        refused = login(stranger, "grace", PASSWORD)  # the sixth try from the stranger's address
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        # the owner, from the owner's address, still gets in: the failures were the stranger's pair
        assert login(owner, "grace", PASSWORD).status_code == 200


@ONE_DB
def test_logins_with_many_distinct_names_keep_the_server_small(limited_server: ServerProcess) -> None:
    pid = limited_server.proc.pid
    with client(limited_server, "127.0.0.3") as flood:
        assert login(flood, "warm-up", "x").status_code == 401
        before = rss_kib(pid)
        codes: set[int] = set()
        for _ in range(1000):  # 1 KiB names: refused before argon2 and before the limiter
            codes.add(login(flood, secrets.token_hex(512), "x").status_code)
        assert codes == {422}
        for _ in range(64):  # 1 MiB names: the same (or refused as a body too large)
            codes.add(login(flood, "n" * 1024**2 + secrets.token_hex(4), "x").status_code)
        assert codes <= {413, 422}
        for _ in range(1000):  # names within the limit: the address is over its cap, each answered 429
            codes.add(login(flood, secrets.token_hex(120), "x").status_code)
        assert 429 in codes and codes <= {401, 413, 422, 429}  # 413: the edge's body cap came first
        assert httpx.get(f"{limited_server.base_url}/healthz", timeout=5).status_code == 200
        grown = rss_kib(pid) - before
    assert grown < RSS_GROWTH_LIMIT_KIB, f"the server grew by {grown} KiB"


def test_limiter_size_is_capped_and_expires() -> None:
    now = [0.0]
    limiter = LoginRateLimiter(max_per_user=5, max_per_address=5, window_s=60, clock=lambda: now[0], max_keys=100)
    for i in range(10_000):
        limiter.failed(f"user-{i}", f"10.0.{i // 256}.{i % 256}")
        limiter.retry_after(f"other-{i}", f"10.1.{i // 256}.{i % 256}")  # asking stores nothing
    assert len(limiter) == 200  # 100 pairs and 100 addresses
    assert limiter.retry_after("user-9999", "10.0.39.15") is None  # one failure of five: still allowed
    for _ in range(4):
        limiter.failed("user-9999", "10.0.39.15")
    assert limiter.retry_after("user-9999", "10.0.39.15") == 60  # the newest keys are the ones kept
    now[0] += 61
    limiter.failed("late", "10.9.9.9")
    assert len(limiter) == 2  # everything older than the window is gone
