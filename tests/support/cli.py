"""Run the real ``mpupload`` CLI as a child process, and small file/store helpers for the tests."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


#: resume journals of the test runs go here, never into the real user's state directory
STATE_DIR = tempfile.mkdtemp(prefix="mpupload-test-state-")


def cli_env(server: Any = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("MPUPLOAD_")}
    env["MPUPLOAD_STATE_DIR"] = STATE_DIR
    env["PYTHONUNBUFFERED"] = "1"
    env["HOME"] = env.get("HOME", "/tmp")
    if server is not None:
        env.update(server.env())
    env.update(extra)
    return env


def mpupload_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mpupload", *args]


def run_cli(*args: str, env: dict[str, str], timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(mpupload_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, stdin=subprocess.DEVNULL, **kw)


class CliProcess:
    """A running CLI with stdout and stderr collected by reader threads, lines awaitable with a deadline."""

    def __init__(self, popen: subprocess.Popen[str]) -> None:
        import threading

        self.popen = popen
        self.pid = popen.pid
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._pump, args=(popen.stdout, self.stdout_lines), daemon=True),
            threading.Thread(target=self._pump, args=(popen.stderr, self.stderr_lines), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream: Any, sink: list[str]) -> None:
        for line in iter(stream.readline, ""):
            with self._cond:
                sink.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, predicate: Any, timeout: float, *, stream: str = "stdout") -> str:
        lines = self.stdout_lines if stream == "stdout" else self.stderr_lines
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not any(t.is_alive() for t in self._threads)):
                    raise TimeoutError(
                        f"no matching {stream} line within {timeout}s (exit {self.popen.poll()}); "
                        f"stdout tail {self.stdout_lines[-3:]!r}; stderr tail {self.stderr_lines[-5:]!r}")
                self._cond.wait(min(left, 0.5))

    def wait(self, timeout: float) -> int:
        rc = self.popen.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc

    @property
    def stdout(self) -> str:
        return "".join(self.stdout_lines)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def held(self) -> Any:
        """A context in which the whole CLI (main process and workers) is frozen with SIGSTOP, resumed with
        SIGCONT on the way out: a test can then change the world around a running upload (restart a server,
        attach a watcher) however slowly a busy machine does it, and the upload is still running afterwards."""
        import contextlib

        @contextlib.contextmanager
        def frozen() -> Any:
            os.killpg(self.pid, signal.SIGSTOP)
            try:
                yield self
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGCONT)

        return frozen()

    def kill_group(self) -> None:
        import contextlib

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.popen.wait(10)


def start_cli(*args: str, env: dict[str, str], **kw: Any) -> CliProcess:
    """The CLI in its own session and process group, as a terminal would run it."""
    return CliProcess(subprocess.Popen(mpupload_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, cwd=ROOT, start_new_session=True, stdin=subprocess.DEVNULL, **kw))


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def make_file(path: Path, size: int, seed: int = 0) -> Path:
    """A file of pseudo-random bytes (fast and reproducible; incompressible enough for S3 servers)."""
    import random

    rng = random.Random(seed)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 1 << 22)
            fh.write(rng.randbytes(n))
            left -= n
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256_object(client: Any, bucket: str, key: str) -> str:
    h = hashlib.sha256()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def multipart_uploads(client: Any, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = client.list_multipart_uploads(**kwargs)
        out.extend(page.get("Uploads", []))
        if not page.get("IsTruncated"):
            return out
        kwargs["KeyMarker"] = page.get("NextKeyMarker")
        kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker")


def signal_group(proc: Any, sig: int = signal.SIGINT) -> None:
    """Send ``sig`` to the CLI's whole process group, as a terminal's Ctrl+C does."""
    os.killpg(proc.pid, sig)
