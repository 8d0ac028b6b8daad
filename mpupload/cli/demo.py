"""``mpupload demo`` — the embedded default, end to end on this machine.

It starts the API server (SQLite in a scratch directory) and moto's S3 server as processes of their own,
creates a demo user and signs in, prints the dashboard's address and the demo credentials, makes a sample
file and uploads it with ``mpupload upload`` — the live bar here, the live row in the dashboard. Then it keeps
serving the dashboard until Ctrl+C (or exits at once with ``--exit-after-upload``); everything it started is
stopped by PID on the way out. Ctrl+C during the upload stops the upload (the dashboard shows STOPPED) and
then the demo.

With ``--dataset`` it makes a directory tree instead (a few hundred small files in nested directories with
unicode and space-containing names, and two files of about 40 MiB) and uploads the directory with
``mpupload upload DIR s3://demo/dataset/``: one total bar, a line per file in flight, one dataset record in the
dashboard.

With ``--cluster N`` the upload runs on a Dask cluster of this machine: the demo starts a ``dask scheduler`` on a
free 127.0.0.1 port and N ``dask worker`` processes (no nanny, 2 threads each, the demo S3 server's keys in their
own environment: their own credential chain), waits until the scheduler sees all N, and uploads with
``--cluster tcp://127.0.0.1:PORT``. It needs ``mpupload[cluster]``. The scheduler and the workers are stopped by
PID with everything else.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from .. import errors as E
from ..storage import Boto3Store, StoreConfig
from ..units import MiB, format_bytes, parse_size
from .errors import EXIT_OK

__all__ = ["add_parser", "run"]

START_DEADLINE_S = 60.0
#: the generated tree of ``--dataset``: small files spread over nested directories, plus two large files
DATASET_SMALL_FILES = 300
DATASET_LARGE_FILES = 2
DATASET_LARGE_SIZE = 40 * MiB
DATASET_PREFIX = "dataset/"
#: directory and file names of the tree: nested, with unicode, spaces and a few scripts
_DIRS = ("train", "val", "test")
_SUBDIRS = ("chats", "café crème", "日本語", "données", "ελληνικά", "emoji 🚀")
#: ``--cluster N``: at most this many local Dask workers, each with this many threads
MAX_CLUSTER_WORKERS = 16
CLUSTER_THREADS = 2


def _cluster_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (use 1 to {MAX_CLUSTER_WORKERS} Dask "
                                         "workers)") from None
    if not 1 <= value <= MAX_CLUSTER_WORKERS:
        raise argparse.ArgumentTypeError(f"{value} Dask workers is out of range (use 1 to {MAX_CLUSTER_WORKERS})")
    return value


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="local API server + S3 server + a sample upload with the live bar and dashboard",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1GiB", help="sample file size (default 1GiB)")
    p.add_argument("--dataset", action="store_true",
                   help="upload a generated directory tree instead of one file (mpupload upload DIR s3://demo/dataset/)")
    p.add_argument("--files", type=int, default=DATASET_SMALL_FILES,
                   help=f"--dataset: how many small files (default {DATASET_SMALL_FILES})")
    p.add_argument("--part-size", default="16MiB")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--port", type=int, default=8000, help="the dashboard's port (default 8000, else a free one)")
    p.add_argument("--progress", choices=["auto", "bar", "plain", "json", "none"], default="auto")
    p.add_argument("--cluster", type=_cluster_size, metavar="N",
                   help=f"start a local Dask scheduler and N worker processes (1-{MAX_CLUSTER_WORKERS}) and upload "
                        "from them with --cluster (needs mpupload[cluster])")
    p.add_argument("--exit-after-upload", action="store_true", help="stop everything after the upload (for CI)")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=run)


def _port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise E.UploadFailed("no free port on 127.0.0.1")


def _wait_up(proc: subprocess.Popen[bytes], url: str, what: str, log: str) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()  # noqa: S310 - loopback
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise E.UploadFailed(f"{what} did not start; see {log}") from None
            time.sleep(0.1)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl+C and SIGTERM wait until the block is done: a process started in it is recorded before the
    interruption that stops it arrives."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _unblock_signals() -> None:
    """In the child, before it runs its program: it does not inherit the signals :func:`_signals_held` holds
    (the demo starts its processes before any thread of its own, so this runs safely between fork and exec)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _spawn(args: list[str], log_path: str, env: dict[str, str] | None = None,
           cwd: str | None = None) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        # its own session: Ctrl+C in this terminal reaches the upload, not the servers (stopped by PID)
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=cwd, preexec_fn=_unblock_signals)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every one at once, then SIGKILL to those still running 10 s later."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        proc.terminate()
    deadline = time.monotonic() + 10
    for proc in live:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            lines = [line.strip() for line in fh.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


class LocalCluster:
    """``--cluster N``: a ``dask scheduler`` and N ``dask worker`` processes of this machine, started with this
    Python, on 127.0.0.1 only, and stopped by PID. Every process is recorded as soon as it is started, so
    :meth:`stop` stops whatever a failed or interrupted start left running."""

    def __init__(self, count: int, workdir: str, env: dict[str, str]) -> None:
        self.count = count
        self.workdir = workdir
        self.env = {**env, "PYTHONUNBUFFERED": "1"}
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.address = ""
        #: the scheduler's Dask dashboard when bokeh is installed (it is off otherwise)
        self.dashboard_url: str | None = None

    def _dask(self, command: str) -> list[str]:
        return [sys.executable, "-m", f"distributed.cli.dask_{command}"]

    def start(self, deadline: float) -> None:
        """Starts the scheduler, waits for its address and starts the workers (not waiting for them)."""
        dashboard = importlib.util.find_spec("bokeh") is not None
        log = os.path.join(self.workdir, "dask-scheduler.log")
        # the scheduler's HTTP server listens on loopback, on a free port (and serves no dashboard without bokeh)
        cmd = self._dask("scheduler") + ["--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
                                         "--dashboard" if dashboard else "--no-dashboard"]
        with _signals_held():
            self.scheduler = _spawn(cmd, log, self.env, cwd=self.workdir)
        while True:
            with open(log, "rb") as fh:
                text = fh.read().decode(errors="replace")
            found = re.search(r"Scheduler at:\s+(tcp://\S+)", text)
            if found:
                self.address = found.group(1)
                shown = re.search(r"dashboard at:\s+(http://\S+)", text)
                self.dashboard_url = shown.group(1) if dashboard and shown else None
                break
            if self.scheduler.poll() is not None or time.monotonic() > deadline:
                raise E.UploadFailed(f"the Dask scheduler did not start ({_last_line(log)})")
            time.sleep(0.05)
        for i in range(self.count):
            cmd = self._dask("worker") + [self.address, "--nthreads", str(CLUSTER_THREADS), "--no-nanny",
                                          "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--host",
                                          "127.0.0.1", "--name", f"demo-{i}", "--local-directory",
                                          os.path.join(self.workdir, "dask")]
            with _signals_held():
                self.workers.append(_spawn(cmd, os.path.join(self.workdir, f"dask-worker-{i}.log"), self.env,
                                           cwd=self.workdir))

    def wait(self, deadline: float) -> None:
        """Until the scheduler sees every worker (a worker that exits, or the deadline, is an error)."""
        import warnings

        distributed: Any = importlib.import_module("distributed")  # untyped
        with warnings.catch_warnings():  # Dask's version table, should the versions differ: not the demo's concern
            warnings.simplefilter("ignore")
            client = distributed.Client(self.address, timeout=max(1.0, deadline - time.monotonic()),
                                        set_as_default=False)
        try:
            while True:
                joined = len(client.nthreads())
                if joined >= self.count:
                    return
                gone = [i for i, w in enumerate(self.workers) if w.poll() is not None]
                if gone or time.monotonic() > deadline:
                    why = (_last_line(os.path.join(self.workdir, f"dask-worker-{gone[0]}.log")) if gone
                           else "no answer in time")
                    raise E.UploadFailed(f"the local Dask cluster did not start: {joined} of {self.count} workers "
                                         f"joined ({why})")
                time.sleep(0.1)
        finally:
            client.close()

    def pids(self) -> str:
        return ", ".join(str(w.pid) for w in self.workers)

    def stop(self) -> None:
        """The workers first (they leave the scheduler), then the scheduler."""
        _stop_all(self.workers)
        if self.scheduler is not None:
            _stop_all([self.scheduler])


def _post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback
        data: dict[str, Any] = json.load(answer)
    return data


def _get_json(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback
        return json.load(answer)


def _make_sample(path: str, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 4 * MiB)
            fh.write(os.urandom(n))
            left -= n


def make_dataset(root: str, small_files: int = DATASET_SMALL_FILES, large_files: int = DATASET_LARGE_FILES,
                 large_size: int = DATASET_LARGE_SIZE, seed: int = 13) -> tuple[int, int]:
    """Write the demo's tree under ``root`` (made if missing): ``small_files`` files of 0..256 KiB spread over
    nested directories with unicode and space-containing names, and ``large_files`` files of ``large_size``
    bytes (multipart) under ``shards/``. Answers ``(files, bytes)``. The sizes are random but reproducible."""
    import random

    rng = random.Random(seed)
    files = total = 0
    for i in range(small_files):
        top = _DIRS[i % len(_DIRS)]
        sub = _SUBDIRS[(i // len(_DIRS)) % len(_SUBDIRS)]
        folder = os.path.join(root, top, sub, f"batch {i // 50:02d}")
        os.makedirs(folder, exist_ok=True)
        size = 0 if i % 97 == 0 else rng.randint(1, 256 * 1024)
        with open(os.path.join(folder, f"échantillon-{i:04d}.bin"), "wb") as fh:
            fh.write(rng.randbytes(size))
        files += 1
        total += size
    if large_files:
        os.makedirs(os.path.join(root, "shards"), exist_ok=True)
    for i in range(large_files):
        _make_sample(os.path.join(root, "shards", f"shard-{i:02d}.bin"), large_size)
        files += 1
        total += large_size
    return files, total


def _say(message: str) -> None:
    print(f"mpupload demo: {message}", file=sys.stderr, flush=True)


def _run_upload(cmd: list[str], env: dict[str, str]) -> int:
    """Run the upload in the foreground; Ctrl+C and SIGTERM reach it (it stops cleanly and reports it)."""
    # Its own process group: a terminal's Ctrl+C reaches only the demo, which forwards each signal exactly
    # once (the upload's second signal means "exit at once"). It still draws on this terminal.
    child = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, process_group=0)

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    handlers: dict[signal.Signals, Callable[[int, Any], Any] | int | None] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handlers[sig] = signal.signal(sig, forward)
    try:
        return child.wait()
    finally:
        # From the upload's end on, Ctrl+C and SIGTERM are held, not lost and not taken by the default handler:
        # one that arrives while the demo reads the server's record or switches to serving means "stop
        # everything", exactly like one that arrives while it serves (``run`` waits for it with sigwait).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        _stop_child(child)


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _terminated(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM while the demo starts its servers: stop them all, as Ctrl+C does


def run(args: argparse.Namespace) -> int:
    size = parse_size(args.size)
    part_size = parse_size(args.part_size)
    try:
        import moto.server  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise E.UsageError(f"the demo needs the 'demo' and 'server' extras ({exc.name} is missing): "
                           "pip install 'mpupload[demo,server]'") from None
    if args.cluster:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise E.UsageError("demo --cluster needs Dask distributed, which is not installed: "
                               "pip install 'mpupload[cluster]'") from None
    workdir = tempfile.mkdtemp(prefix="mpupload-demo-")
    os.chmod(workdir, 0o700)
    s3: subprocess.Popen[bytes] | None = None
    api: subprocess.Popen[bytes] | None = None
    cluster: LocalCluster | None = None
    previous_term = signal.signal(signal.SIGTERM, _terminated)
    try:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
               "AWS_DEFAULT_REGION": "us-east-1", "MPUPLOAD_CONFIG_DIR": os.path.join(workdir, "config"),
               "MPUPLOAD_STATE_DIR": os.path.join(workdir, "state")}
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                     "MPUPLOAD_API_URL", "MPUPLOAD_TOKEN", "MPUPLOAD_DATABASE_URL", "MPUPLOAD_BROKER_URL",
                     "MPUPLOAD_CLUSTER"):
            env.pop(name, None)
        s3_port, api_port = _port(0), _port(args.port)
        s3_url, api_url = f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{api_port}"
        database = f"sqlite:///{os.path.join(workdir, 'server.db')}"
        password = secrets.token_urlsafe(12)
        added = subprocess.run([sys.executable, "-m", "mpupload", "users", "add", "demo", "--password-stdin",
                                "--database-url", database], input=password + "\n", text=True,
                               capture_output=True, env=env)
        if added.returncode != 0:
            raise E.UploadFailed(f"could not create the demo user: {added.stderr.strip()}")
        with _signals_held():
            s3 = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                        os.path.join(workdir, "moto.log"))
        with _signals_held():
            api = _spawn([sys.executable, "-m", "mpupload", "serve", "--port", str(api_port), "--database-url",
                          database], os.path.join(workdir, "server.log"), env)
        deadline = time.monotonic() + START_DEADLINE_S
        if args.cluster:
            # the workers' own credential chain: the demo S3 server's keys in their environment; the endpoint
            # comes from the upload (the coordinator) with the tasks
            cluster = LocalCluster(args.cluster, workdir, env)
            cluster.start(deadline)
        _wait_up(s3, s3_url + "/", "moto's S3 server", os.path.join(workdir, "moto.log"))
        _wait_up(api, api_url + "/healthz", "the API server", os.path.join(workdir, "server.log"))
        token = _post_json(api_url + "/api/v1/auth/login", {"username": "demo", "password": password})["token"]
        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
        Boto3Store(StoreConfig(endpoint_url=s3_url, region="us-east-1")).create_bucket("demo")
        _say(f"dashboard {api_url}/  (user demo, password {password})")
        sender = ""
        if cluster is not None:
            cluster.wait(deadline)
            assert cluster.scheduler is not None
            _say(f"Dask scheduler at {cluster.address} (pid {cluster.scheduler.pid}) with {cluster.count} "
                 f"{'worker' if cluster.count == 1 else 'workers'} of {CLUSTER_THREADS} threads (pids "
                 f"{cluster.pids()})")
            if cluster.dashboard_url:
                _say(f"Dask dashboard {cluster.dashboard_url}")
            sender = f" from {cluster.count} Dask {'worker' if cluster.count == 1 else 'workers'}"
        if args.dataset:
            tree = os.path.join(workdir, "dataset")
            count, total = make_dataset(tree, small_files=max(0, args.files))
            _say(f"S3 server (moto) at {s3_url}; uploading a tree of {count} files ({format_bytes(total)}) to "
                 f"s3://demo/{DATASET_PREFIX}{sender}")
            source, destination = tree + os.sep, f"s3://demo/{DATASET_PREFIX}"
        else:
            source = os.path.join(workdir, "sample.bin")
            _make_sample(source, size)
            _say(f"S3 server (moto) at {s3_url}; uploading a {format_bytes(size)} sample to s3://demo/sample.bin"
                 f"{sender}")
            destination = "s3://demo/sample.bin"
        cmd = [sys.executable, "-m", "mpupload", "upload", source, destination, "--endpoint-url", s3_url,
               "--part-size", str(part_size), "--progress", args.progress, "--api-url", api_url]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        if cluster is not None:
            cmd += ["--cluster", cluster.address]
        if args.debug:
            cmd.append("--debug")
        rc = _run_upload(cmd, {**env, "MPUPLOAD_TOKEN": token})
        records = _get_json(api_url + "/api/v1/uploads", token)
        status = records[0]["status"].upper() if records else "not recorded"
        _say(f"the server recorded the upload as {status}")
        if rc != EXIT_OK:
            return rc
        if args.exit_after_upload:
            return EXIT_OK
        _say(f"the dashboard stays at {api_url}/ (user demo, password {password}); Ctrl+C stops everything")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return EXIT_OK
    finally:
        # the clean-up runs to its end: a second Ctrl+C (or a SIGTERM) must not leave a server or worker behind
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        if cluster is not None:
            cluster.stop()
        _stop(api)
        _stop(s3)
        shutil.rmtree(workdir, ignore_errors=True)

