"""Helpers for the server tests: throwaway PostgreSQL databases, real ``mpupload serve`` processes, the CLI."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
PG_ADMIN_DSN = os.environ.get("MPUPLOAD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
START_DEADLINE_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_pg_database() -> str:
    """A fresh database ``mpupload_test_<random>``; returns its plain URL."""
    name = f"mpupload_test_{secrets.token_hex(6)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    assert name.startswith("mpupload_test_")
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mpupload ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "mpupload", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


@dataclass
class ServerProcess:
    """A running ``mpupload serve``; stop it by its PID."""

    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def wait_healthy(self, deadline_s: float = START_DEADLINE_S) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not healthy within {deadline_s} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(
    database_url: str, log_dir: Path, *extra: str, env: dict[str, str] | None = None, wait: bool = True
) -> ServerProcess:
    """Start ``python -m mpupload serve`` on a free port (waits for ``/healthz`` unless ``wait=False``)."""
    port = free_port()
    log = log_dir / f"serve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mpupload", "serve", "--port", str(port), "--database-url", database_url, *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
        )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log)
    if wait:
        server.wait_healthy()
    return server
