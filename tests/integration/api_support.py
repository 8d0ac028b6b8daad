"""Helpers of the CLI <-> API server tests: a real ``mpupload serve`` on SQLite (restartable on its port),
users made with the real ``mpupload users add``, tokens, GraphQL over HTTP, and a server that never answers."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.server.support import REPO, cli, free_port

PASSWORD = "correct horse battery staple"
T = TypeVar("T")


def until(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(every)


@dataclass
class Api:
    """One ``mpupload serve`` process on a SQLite file; :meth:`kill` and :meth:`start` keep port and data."""

    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    #: another database than the SQLite file in ``tmp`` (a PostgreSQL one that replicas share)
    database: str | None = None

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.tmp / 'server.db'}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_user(self, name: str, password: str = PASSWORD) -> None:
        done = cli("users", "add", name, "--password-stdin", "--database-url", self.database_url,
                   stdin=password + "\n")
        assert done.returncode == 0, done.stderr

    def prepare(self, *users: str) -> Api:
        """Add ``users`` and start the server: the first user creates the schema, then the other users are added
        while the server starts (each is a process start-up)."""
        self.add_user(users[0])
        try:
            with ThreadPoolExecutor(len(users)) as pool:
                jobs = [pool.submit(self.add_user, name) for name in users[1:]] + [pool.submit(self.start)]
                for job in jobs:
                    job.result()
        except BaseException:
            self.stop()
            raise
        return self

    def start(self) -> Api:
        import os

        log = open(self.tmp / f"serve-{self.port}.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mpupload", "serve", "--port", str(self.port), "--database-url",
             self.database_url], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env})
        log.close()
        until(self._healthy, 60, "the API server answers /healthz")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited: {(self.tmp / f'serve-{self.port}.log').read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def token(self, user: str, password: str = PASSWORD) -> str:
        response = httpx.post(f"{self.url}/api/v1/auth/login", json={"username": user, "password": password},
                              timeout=30)
        assert response.status_code == 200, response.text
        return str(response.json()["token"])

    def get(self, path: str, token: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def uploads(self, token: str) -> list[dict[str, Any]]:
        response = self.get("/api/v1/uploads", token)
        assert response.status_code == 200, response.text
        return list(response.json())

    def record(self, token: str, record_id: str) -> dict[str, Any]:
        response = self.get(f"/api/v1/uploads/{record_id}", token)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def graphql(self, token: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}},
                              headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert response.status_code == 200, response.text
        return dict(response.json())


class SilentServer:
    """Accepts TCP connections and never answers (a hung API server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.close()
        for conn in self.accepted:
            with contextlib.suppress(OSError):
                conn.close()


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line.lower()]
