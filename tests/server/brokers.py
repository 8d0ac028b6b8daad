"""Private PostgreSQL and Redis instances for tests that kill and restart the broker.

Each runs as a child process in its own session on a free loopback port, with its data in a temporary
directory; ``restart()`` kills the whole process group with SIGKILL and starts again on the same port and
data directory. The machine's shared PostgreSQL (5432) and Redis (6379) are never touched.

PostgreSQL's ``initdb`` and ``postgres`` refuse to run as root, so when we are root they run as the
``postgres`` OS user through ``setpriv`` (which execs, so the child's pid is the postmaster's).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], deadline: float, what: str) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on {port} within {deadline}s")


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (PostgreSQL backends call setsid(), so a process group kill misses them)."""
    kids: list[int] = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError):
            kids.extend(int(x) for x in Path(task).read_text().split())
    return kids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, just not reaped yet


def _kill_tree(proc: subprocess.Popen[bytes] | None, deadline: float = 10.0) -> None:
    """kill -9 the process, its process group and its direct children, and wait until they are all dead."""
    if proc is None:
        return
    pids = [proc.pid, *_children(proc.pid)]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=deadline)
    end = time.monotonic() + deadline
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > end:
            raise TimeoutError(f"processes {pids} survived SIGKILL")
        time.sleep(0.02)


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PrivatePostgres:
    """A PostgreSQL of its own. ``durable=False`` (a broker) does not wait for the WAL at commit, so a
    ``kill -9`` can lose the last commits; ``durable=True`` (a database whose rows must survive) does."""

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bindir = bindir
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="mpupload-pg-"))
        self.data = self.tmp / "data"
        self.sock = self.tmp / "sock"
        self.sock.mkdir()
        self.log = self.tmp / "postgres.log"
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for path in (self.tmp, self.sock):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            self._prefix = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [*self._prefix, str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
             "--no-sync", "-E", "UTF8"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.tmp,
        )  # fmt: skip
        self.start()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self._prefix, str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.sock}",
                 "-c", "fsync=off", "-c", "full_page_writes=off",
                 "-c", f"synchronous_commit={'on' if self.durable else 'off'}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.tmp,
            )  # fmt: skip
        _wait_port(self.port, self.proc, 60, "postgres")
        # Listening is not accepting: wait for a real query to succeed (crash recovery after a restart).
        end = time.monotonic() + 60
        while True:
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            if ready.returncode == 0:
                return
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError(f"postgres not ready; log:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """kill -9 the postmaster and every backend."""
        _kill_tree(self.proc)

    def ensure_running(self) -> None:
        """Start it again if a test killed it and failed before restarting it (the next test must not inherit an
        outage)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        self.proc = None
        shutil.rmtree(self.tmp, ignore_errors=True)


class PrivateRedis:
    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.exe = exe
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="mpupload-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with open(self.tmp / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.tmp)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.tmp,
            )  # fmt: skip
        _wait_port(self.port, self.proc, 30, "redis-server")

    def kill(self) -> None:
        _kill_tree(self.proc)

    def ensure_running(self) -> None:
        """Start it again if a test killed it and failed before restarting it (the next test must not inherit an
        outage)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        self.proc = None
        shutil.rmtree(self.tmp, ignore_errors=True)
