"""Fixtures of the server tests: one database per backend (SQLite file, fresh PostgreSQL database), users
created through the real ``mpupload users`` command, and a real ``mpupload serve`` process per backend."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .support import ServerProcess, cli, create_pg_database, drop_pg_database, start_server

#: environment of the shared server: small bounds so the tests reach them quickly
SERVER_ENV = {
    "MPUPLOAD_HISTORY_LIMIT": "5",
    "MPUPLOAD_LOGIN_MAX_PER_USER": "3",
    "MPUPLOAD_LOGIN_MAX_PER_ADDRESS": "1000",
    "MPUPLOAD_SUBSCRIBER_BUFFER": "16",
}
PASSWORD = "correct horse battery staple"
USERS = ("alice", "bob", "carol", "erin", "grace", "heidi", "ivan")  # heidi, ivan: directory runs


@dataclass
class Backend:
    name: str
    database_url: str
    tmp: Path


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """A fresh database of each kind, with the users of :data:`USERS` (password :data:`PASSWORD`)."""
    tmp = tmp_path_factory.mktemp(f"server-{request.param}")
    url = f"sqlite:///{tmp / 'server.db'}" if request.param == "sqlite" else create_pg_database()

    def add(name: str) -> None:
        done = cli("users", "add", name, "--password-stdin", "--database-url", url, stdin=PASSWORD + "\n")
        assert done.returncode == 0, done.stderr

    try:
        add(USERS[0])  # creates the schema; the other users are then added side by side
        with ThreadPoolExecutor(2) as pool:  # two cores
            list(pool.map(add, USERS[1:]))
        yield Backend(request.param, url, tmp)
    finally:
        if request.param == "postgresql":
            drop_pg_database(url)


@pytest.fixture(scope="session")
def server(backend: Backend) -> Iterator[ServerProcess]:
    """A real uvicorn process serving the backend's database."""
    proc = start_server(backend.database_url, backend.tmp, env=SERVER_ENV)
    try:
        yield proc
    finally:
        proc.stop()


def login(base_url: str, username: str, password: str = PASSWORD) -> httpx.Response:
    return httpx.post(f"{base_url}/api/v1/auth/login", json={"username": username, "password": password})


def token_for(base_url: str, username: str) -> dict[str, str]:
    """Authorization headers of a fresh token."""
    response = login(base_url, username)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}
