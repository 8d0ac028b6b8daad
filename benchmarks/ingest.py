"""The API server's ingest benchmark: progress reports per second, and report-to-subscriber latency.

Usage::

    python -m benchmarks.ingest [--backend sqlite|postgresql|both] [--uploads 1000] [--interval 2.0]
                                [--subscribers 200] [--duration 30] [--out benchmarks/results/ingest.json]
                                [--smoke]

For each backend a real ``python -m mpupload serve`` process is started on a free loopback port (SQLite in
a temporary directory, or a fresh PostgreSQL database ``mpupload_bench_<random>`` that is dropped at the
end). Users are added to its database, each logs in once over REST, and ``--uploads`` records are created
(20 per user by default). Then, with the load generator in ``--generators`` worker processes and all
WebSocket subscribers in one more process (all using ``time.monotonic``, which is system-wide on Linux):

1. **open loop** — every upload reports every ``--interval`` seconds (random phase, +-10 % jitter), as the CLI
   does, so ``uploads / interval`` reports per second are *offered* whatever the server does;
   ``--subscribers`` of the uploads have one ``uploadProgress`` subscription each (its own connection,
   signed in as the upload's owner). A report of ``seq`` n carries ``bytes_done = n * 1000``, so every event
   a subscriber receives maps back to the report that caused it and to that report's send time.
2. **closed loop with subscribers** — ``--concurrency`` connections send reports back to back (each on
   its own uploads): the rate the server sustains.
3. **closed loop without subscribers** — the same after the subscribers disconnect.

Only what happens inside each phase's measurement window (after its warm-up) counts. Per phase: offered and
accepted reports per second, HTTP errors, the report's round trip (p50/p99), event latency (receive time
minus the report's send time: p50/p99/max), events received against expected, CPU-seconds per 1,000
reports of the server process tree (``/proc/PID/stat`` via psutil) and, on PostgreSQL, of the database's
backend processes; the generator's and the subscribers' own CPU, the whole machine's CPU use
(``/proc/stat``), and the server's peak RSS. Nothing is asserted: the issue's target (>= 500 reports/s
with event p99 < 250 ms) is evaluated for the report only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "ingest.json"
SMOKE_OUT = REPO_ROOT / "artifacts" / "ingest-smoke.json"
PG_ADMIN_DSN = os.environ.get("MPUPLOAD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
PASSWORD = "ingest-bench-password"
BYTES_PER_SEQ = 1000
TOTAL_BYTES = 10**13
PART_SIZE = 64 * 2**20
TARGET_RATE = 500.0
TARGET_P99_MS = 250.0
JITTER = 0.10
SUBSCRIPTION = "subscription($id: ID!) { uploadProgress(id: $id) { id bytesDone version updatedAt } }"


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    import sqlite3

    return {
        "nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "cpu_model": model,
        "memory_gib": mem_gib, "os": platform.platform(), "python": platform.python_version(),
        "loadavg_at_start": list(os.getloadavg()), "sqlite": sqlite3.sqlite_version,
        "packages": {name: _version(name) for name in ("mpupload", "uvicorn", "fastapi", "starlette", "sqlalchemy",
                                                      "aiosqlite", "asyncpg", "strawberry-graphql", "httpx",
                                                      "websockets", "uvloop")},
    }


def system_cpu_busy_s() -> float:
    """Busy CPU-seconds of the whole machine since boot (``/proc/stat``: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------------------------
# The worker processes: load generator and subscribers (each runs its own asyncio loop)
# ----------------------------------------------------------------------------------------------------


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.new_event_loop()


def _report_body(seq: int, elapsed: float) -> dict[str, Any]:
    return {"seq": seq, "status": "uploading", "bytes_done": seq * BYTES_PER_SEQ, "speed_bps": 1.0e8,
            "avg_speed_bps": 9.0e7, "eta_seconds": 120.0, "parts_done": min(seq // 10, 10_000),
            "elapsed_seconds": elapsed}


class _Http:
    """One keep-alive HTTP/1.1 connection that posts JSON, on asyncio streams.

    A general-purpose client (httpx) costs ~2.4 ms of CPU per request here: 500 reports/s would need more
    than a core for the load generator alone on a 2-core machine, and the benchmark would measure the
    client. This one writes the request in one call and reads the answer by its Content-Length.
    """

    def __init__(self, host: str, port: int, token: str, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.head = (f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\nContent-Length: ").encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        request = b"POST " + path.encode() + b" HTTP/1.1\r\n" + self.head + str(len(body)).encode() + b"\r\n\r\n" + body
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    reused = self.writer is not None
                    if self.writer is None:
                        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                    assert self.reader is not None
                    self.writer.write(request)
                    line = await self.reader.readline()
                    if line or not reused:
                        break
                    await self.aclose()  # the server closed an idle keep-alive connection: reconnect once
                status = int(line.split(b" ", 2)[1])
                length = 0
                while (line := await self.reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                return status, await self.reader.readexactly(length)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class Generator:
    """One load-generator process: its share of the uploads, one seq counter per upload.

    Each upload has its own keep-alive connection, like the CLIs it stands for (a shared pool would queue
    requests inside the client under overload, where the server should see them), and at most one report in
    flight, with the CLI's timeout.
    """

    def __init__(self, base_url: str, uploads: list[tuple[int, str, str]], timeout: float) -> None:
        from urllib.parse import urlsplit

        # several replicas: "URL1,URL2"; upload i reports to replica i mod N
        places = [(w.hostname or "127.0.0.1", w.port or 80) for w in map(urlsplit, base_url.split(","))]
        self.uploads = uploads  # (index, id, token)
        self.seq = {index: 0 for index, _, _ in uploads}
        self.clients = {index: _Http(*places[index % len(places)], token, timeout) for index, _, token in uploads}
        self.records: list[tuple[int, int, float, float, int, bool]] = []
        self.lags: list[float] = []
        self.errors: dict[str, int] = {}

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()

    async def _send(self, index: int, upload_id: str, token: str) -> None:
        self.seq[index] += 1
        seq = self.seq[index]
        sent = time.monotonic()
        body = json.dumps(_report_body(seq, float(seq)), separators=(",", ":")).encode()
        try:
            status, content = await self.clients[index].post(f"/api/v1/uploads/{upload_id}/progress", body)
            accepted = b'"ignored":false' in content
        except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            status, accepted = 0, False
            name = type(exc).__name__
            self.errors[name] = self.errors.get(name, 0) + 1
        self.records.append((index, seq, sent, time.monotonic(), status, accepted))

    async def open_loop(self, t0: float, t_stop: float, interval: float, seed: int) -> None:
        rng = random.Random(seed)

        async def one(index: int, upload_id: str, token: str) -> None:
            due = t0 + rng.uniform(0.0, interval)
            while due < t_stop:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.lags.append(time.monotonic() - due)
                await self._send(index, upload_id, token)
                due += interval * (1.0 + rng.uniform(-JITTER, JITTER))

        await asyncio.gather(*(one(*u) for u in self.uploads))

    async def closed_loop(self, t0: float, t_stop: float, concurrency: int) -> None:
        lanes = [self.uploads[i::concurrency] for i in range(concurrency)]

        async def lane(mine: list[tuple[int, str, str]]) -> None:
            position = 0
            while time.monotonic() < t_stop:
                await self._send(*mine[position % len(mine)])
                position += 1

        delay = t0 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await asyncio.gather(*(lane(m) for m in lanes if m))

    async def run(self, command: dict[str, Any]) -> dict[str, Any]:
        self.records, self.lags, self.errors = [], [], {}
        cpu0, wall0 = _cpu_self(), time.monotonic()
        if command["mode"] == "open":
            await self.open_loop(command["t0"], command["t_stop"], command["interval"], command["seed"])
        else:
            await self.closed_loop(command["t0"], command["t_stop"], command["concurrency"])
        return {"records": self.records, "lags": self.lags, "errors": self.errors,
                "cpu_s": _cpu_self() - cpu0, "wall_s": time.monotonic() - wall0}


def generator_main(conn: Connection, base_url: str, uploads: list[tuple[int, str, str]], timeout: float) -> None:
    """Entry point of a generator process: ``ready``, then one answer per command until ``quit``."""
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    gen = Generator(base_url, uploads, timeout)
    conn.send({"ready": True})
    try:
        while True:
            command = conn.recv()
            if command["mode"] == "quit":
                break
            conn.send(loop.run_until_complete(gen.run(command)))
    finally:
        loop.run_until_complete(gen.aclose())
        loop.close()


class Subscribers:
    """Every subscriber connection of the run, in one process; records what each receives and when."""

    def __init__(self, ws_url: str, targets: list[tuple[int, str, str]]) -> None:
        self.ws_url = ws_url
        self.targets = targets
        self.events: list[tuple[int, int, int, float]] = []  # (index, bytes_done, version, received)
        self.initial: dict[int, int] = {}
        self.failures: list[tuple[float, str]] = []  # (when, what): a subscription that got an error
        self.closed_early: list[tuple[float, str]] = []  # a subscription the server ended
        self.ready = 0
        self._all_ready: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None

    async def _one(self, index: int, upload_id: str, token: str) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        assert self._stop is not None and self._all_ready is not None
        try:
            urls = self.ws_url.split(",")  # several replicas: watch on another one than the upload reports to
            async with connect(urls[(index + 1) % len(urls)], subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                               open_timeout=60, max_queue=None, ping_interval=None) as ws:
                await ws.send(json.dumps({"type": "connection_init", "payload": {"token": token}}))
                first = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if first.get("type") != "connection_ack":
                    raise RuntimeError(f"expected connection_ack, got {first}")
                await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                          "payload": {"query": SUBSCRIPTION, "variables": {"id": upload_id}}}))
                got_first = False
                stop = asyncio.ensure_future(self._stop.wait())
                try:
                    while True:
                        receive = asyncio.ensure_future(ws.recv())
                        done, _ = await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
                        if receive not in done:
                            receive.cancel()
                            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                                await receive
                            return
                        try:
                            raw = receive.result()
                        except ConnectionClosed as exc:
                            self.closed_early.append((time.monotonic(), f"upload {index}: {exc}"))
                            return
                        received = time.monotonic()
                        message = json.loads(raw)
                        kind = message.get("type")
                        if kind == "ping":
                            await ws.send(json.dumps({"type": "pong"}))
                            continue
                        if kind == "complete":
                            self.closed_early.append((received, f"upload {index}: completed by the server"))
                            return
                        if kind != "next" or message["payload"].get("errors"):
                            self.failures.append((received, f"upload {index}: {str(message)[:300]}"))
                            if kind == "error":
                                return
                            continue
                        record = message["payload"]["data"]["uploadProgress"]
                        if not got_first:
                            got_first = True
                            self.initial[index] = int(record["version"])
                            self.ready += 1
                            if self.ready == len(self.targets):
                                self._all_ready.set()
                            continue
                        self.events.append((index, int(record["bytesDone"]), int(record["version"]), received))
                finally:
                    stop.cancel()
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal to the others
            self.failures.append((time.monotonic(), f"upload {index}: {type(exc).__name__}: {exc}"))
            if self._all_ready is not None and len(self.failures) + self.ready >= len(self.targets):
                self._all_ready.set()

    async def main(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        self._stop, self._all_ready = asyncio.Event(), asyncio.Event()
        if not self.targets:
            self._all_ready.set()
        cpu0 = _cpu_self()
        # Connect in small waves: 200 simultaneous handshakes would only measure the connect storm.
        tasks = []
        for start in range(0, len(self.targets), 20):
            tasks += [asyncio.ensure_future(self._one(*t)) for t in self.targets[start:start + 20]]
            await asyncio.sleep(0.05)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_ready.wait(), 120)
        conn.send({"ready": self.ready, "failures": list(self.failures), "connect_cpu_s": _cpu_self() - cpu0})
        cpu1 = _cpu_self()
        command = await loop.run_in_executor(None, conn.recv)
        assert command["mode"] == "stop", command
        self._stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn.send({"events": self.events, "initial": self.initial, "failures": self.failures,
                   "closed_early": self.closed_early, "cpu_s": _cpu_self() - cpu1})


def subscribers_main(conn: Connection, ws_url: str, targets: list[tuple[int, str, str]]) -> None:
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(Subscribers(ws_url, targets).main(conn))
    finally:
        loop.close()


# ----------------------------------------------------------------------------------------------------
# The server under test
# ----------------------------------------------------------------------------------------------------


async def _pg_admin(sql: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    """A fresh database URL for ``backend``; a PostgreSQL database is dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'ingest.db'}"
        return
    name = f"mpupload_bench_{secrets.token_hex(6)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Server:
    """One ``mpupload serve``, or several replicas under one supervising shell (so that the process tree,
    its CPU and its memory cover them all)."""

    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path
    base_urls: list[str]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(database_url: str, workdir: Path, broker_url: str | None, replicas: int = 1) -> Server:
    import shlex

    import httpx

    ports = [free_port() for _ in range(replicas)]
    log = workdir / f"serve-{ports[0]}.log"
    env = {**os.environ, "MPUPLOAD_LOGIN_MAX_PER_ADDRESS": "100000", "MPUPLOAD_LOGIN_MAX_PER_USER": "100000",
           "XDG_DATA_HOME": str(workdir)}
    env.pop("MPUPLOAD_BROKER_URL", None)
    commands = []
    for port in ports:
        args = [sys.executable, "-m", "mpupload", "serve", "--port", str(port), "--database-url", database_url]
        if broker_url:
            args += ["--broker-url", broker_url]
        commands.append(args)
    if replicas > 1:  # a shell that starts them all and stops them all on SIGTERM
        script = "trap 'kill $(jobs -p) 2>/dev/null; wait' TERM; " + " & ".join(map(shlex.join, commands)) + " & wait"
        command = ["bash", "-c", script]
    else:
        command = commands[0]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=REPO_ROOT, env=env)
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    server = Server(proc, urls[0], log, urls)
    deadline = time.monotonic() + 90
    pending = list(urls)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{pending[0]}/healthz", timeout=2).status_code == 200:
                pending.pop(0)
                if not pending:
                    return server
                continue
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not healthy within 90 s: {log.read_text()[-2000:]}")


def _tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_s(pid: int) -> float:
    import psutil

    total = 0.0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def tree_rss(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS = VmHWM) of the tree, in MiB."""
    current = peak = 0.0
    for proc in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    current += int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak += int(line.split()[1]) / 1024
    return current, peak


def wait_idle(pid: int, limit_s: float, busy_below: float = 0.15) -> float:
    """Wait until the server's tree uses less than ``busy_below`` of a core over 0.5 s (at most ``limit_s``);
    the seconds waited: how long an overloaded server still works off requests its clients gave up on."""
    start = time.monotonic()
    last = tree_cpu_s(pid)
    while time.monotonic() - start < limit_s:
        time.sleep(0.5)
        now = tree_cpu_s(pid)
        if now - last < busy_below * 0.5:
            break
        last = now
    return time.monotonic() - start


def pg_backends_cpu(db_name: str | None) -> dict[int, float]:
    """CPU-seconds of each PostgreSQL backend connected to ``db_name`` (the server's pool)."""
    if db_name is None:
        return {}
    import psutil

    rows = asyncio.run(_pg_admin(f"SELECT pid FROM pg_stat_activity WHERE datname = '{db_name}'"))
    out: dict[int, float] = {}
    for row in rows:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(int(row["pid"])).cpu_times()
            out[int(row["pid"])] = times.user + times.system
    return out


class CpuWindow:
    """CPU of the server tree, its PostgreSQL backends and the whole machine between ``start`` and ``stop``."""

    def __init__(self, server_pid: int, db_name: str | None) -> None:
        self.server_pid, self.db_name = server_pid, db_name

    def start(self) -> None:
        self.t0, self.server0, self.system0 = time.monotonic(), tree_cpu_s(self.server_pid), system_cpu_busy_s()
        self.pg0 = pg_backends_cpu(self.db_name)

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        server, system = tree_cpu_s(self.server_pid) - self.server0, system_cpu_busy_s() - self.system0
        pg1 = pg_backends_cpu(self.db_name)
        # A backend seen only at the end counts from 0; one that exited meanwhile is lost (a lower bound).
        pg = sum(cpu - self.pg0.get(pid, 0.0) for pid, cpu in pg1.items()) if self.db_name else None
        return {"wall_s": wall, "server_cpu_s": server, "db_cpu_s": pg, "machine_busy_cpu_s": system,
                "db_backends": len(pg1) if self.db_name else None}


# ----------------------------------------------------------------------------------------------------
# Set-up over the real API
# ----------------------------------------------------------------------------------------------------


async def add_users(database_url: str, names: list[str]) -> None:
    """Add the users with the project's own admin code (``mpupload users add`` does the same, per process)."""
    from mpupload.server.db import make_engine, make_sessionmaker
    from mpupload.server.settings import normalize_database_url
    from mpupload.server.users_admin import add_user

    engine = make_engine(normalize_database_url(database_url))
    try:
        maker = make_sessionmaker(engine)
        for name in names:
            async with maker() as session:
                await add_user(session, name, PASSWORD)
    finally:
        await engine.dispose()


async def login_and_create(base_url: str, names: list[str], uploads: int) -> list[tuple[int, str, str]]:
    """Log every user in once and create ``uploads`` records round-robin; (index, id, token) per upload."""
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        async def login(name: str) -> str:
            response = await client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
            response.raise_for_status()
            return str(response.json()["token"])

        tokens = await asyncio.gather(*(login(n) for n in names))
        limit = asyncio.Semaphore(16)

        async def create(index: int) -> tuple[int, str, str]:
            token = tokens[index % len(tokens)]
            body = {"filename": f"shard-{index:05d}.bin", "bucket": "datasets", "key": f"bench/shard-{index:05d}.bin",
                    "total_bytes": TOTAL_BYTES, "part_size": PART_SIZE, "parts_total": 10_000, "host": "ingest-bench"}
            async with limit:
                response = await client.post("/api/v1/uploads", json=body, headers={"Authorization": f"Bearer {token}"})
            response.raise_for_status()
            return index, str(response.json()["id"]), token

        return list(await asyncio.gather(*(create(i) for i in range(uploads))))


# ----------------------------------------------------------------------------------------------------
# One backend
# ----------------------------------------------------------------------------------------------------


@dataclass
class Workers:
    gens: list[tuple[Any, Connection]]
    subs: tuple[Any, Connection] | None

    def command_all(self, command: dict[str, Any]) -> list[dict[str, Any]]:
        for _, conn in self.gens:
            conn.send(command)
        return [conn.recv() for _, conn in self.gens]

    def close(self) -> None:
        for proc, conn in self.gens:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send({"mode": "quit"})
            proc.join(20)
            if proc.is_alive():
                proc.kill()
        if self.subs is not None and self.subs[0].is_alive():
            self.subs[0].kill()


def run_phase(workers: Workers, cpu: CpuWindow, server_pid: int, *, mode: str, warmup: float, duration: float,
              **params: Any) -> dict[str, Any]:
    """Send one command to every generator and measure the window [t0 + warmup, t0 + warmup + duration]."""
    import threading

    t_begin = time.monotonic()
    t0 = t_begin + 0.5
    w0, w1 = t0 + warmup, t0 + warmup + duration
    for i, (_, conn) in enumerate(workers.gens):
        conn.send({"mode": mode, "t0": t0, "t_stop": w1, "seed": 1000 + i, **params})
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:  # the server's RSS every 100 ms while the phase runs
        while not stop.wait(0.1):
            peak[0] = max(peak[0], tree_rss(server_pid)[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(max(0.0, w0 - time.monotonic()))
    cpu.start()
    time.sleep(max(0.0, w1 - time.monotonic()))
    window = cpu.stop()
    answers = [conn.recv() for _, conn in workers.gens]
    stop.set()
    sampler.join()
    records = [r for a in answers for r in a["records"]]
    errors: dict[str, int] = {}
    for a in answers:
        for k, v in a["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {"t_begin": t_begin, "t_end": time.monotonic(), "w0": w0, "w1": w1, "window": window,
            "records": records, "lags": [x for a in answers for x in a["lags"]],
            "transport_errors": errors, "gen_cpu_s": sum(a["cpu_s"] for a in answers),
            "gen_wall_s": max(a["wall_s"] for a in answers), "peak_rss_mib": peak[0],
            "lifetime_peak_rss_mib": tree_rss(server_pid)[1]}


def summarize(phase: dict[str, Any], events: list[tuple[int, int, int, float]] | None,
              subscribed: set[int], *, offered_per_s: float | None) -> dict[str, Any]:
    """The figures of one phase (``events``: every subscriber event of the run, or None without subscribers)."""
    w0, w1 = phase["w0"], phase["w1"]
    duration = w1 - w0
    records = phase["records"]
    done_in = [r for r in records if w0 <= r[3] < w1]
    sent_in = [r for r in records if w0 <= r[2] < w1]
    accepted = [r for r in done_in if r[4] == 200 and r[5]]
    http_errors: dict[str, int] = {}
    for r in done_in:
        if r[4] != 200:
            key = str(r[4]) if r[4] else "transport"
            http_errors[key] = http_errors.get(key, 0) + 1
    ignored = sum(1 for r in done_in if r[4] == 200 and not r[5])
    rtts = [r[3] - r[2] for r in sent_in if r[4] == 200]
    window = phase["window"]
    n_acc = len(accepted)
    per_k = (lambda cpu: None if cpu is None or n_acc == 0 else round(cpu / n_acc * 1000.0, 3))
    out: dict[str, Any] = {
        "window_s": round(duration, 3),
        "offered_per_s": None if offered_per_s is None else round(offered_per_s, 1),
        "sent_per_s": round(len(sent_in) / duration, 1),
        "accepted_per_s": round(n_acc / duration, 1),
        "accepted_reports": n_acc,
        "ignored_reports": ignored,
        "http_errors": sum(http_errors.values()),
        "http_errors_by_kind": http_errors,
        "transport_errors_by_exception": phase["transport_errors"],
        "report_rtt_ms": {"p50": ms(percentile(rtts, 50)), "p99": ms(percentile(rtts, 99)),
                          "max": ms(max(rtts) if rtts else None)},
        "server_cpu_s_per_1k_reports": per_k(window["server_cpu_s"]),
        "server_cpu_share_of_one_core": round(window["server_cpu_s"] / window["wall_s"], 3),
        "db_cpu_s_per_1k_reports": per_k(window["db_cpu_s"]),
        "db_cpu_share_of_one_core": (None if window["db_cpu_s"] is None
                                     else round(window["db_cpu_s"] / window["wall_s"], 3)),
        "machine_busy_cores": round(window["machine_busy_cpu_s"] / window["wall_s"], 3),
        "generator_cpu_s_per_1k_sent": (round(phase["gen_cpu_s"] / len(records) * 1000.0, 3) if records else None),
        "generator_cpu_share_of_one_core": round(phase["gen_cpu_s"] / phase["gen_wall_s"], 3),
        "server_peak_rss_mib": round(phase["peak_rss_mib"], 1),
        "server_lifetime_peak_rss_mib": round(phase["lifetime_peak_rss_mib"], 1),
    }
    if phase["lags"]:
        lags = phase["lags"]
        out["schedule_lag_ms"] = {"p50": ms(percentile(lags, 50)), "p99": ms(percentile(lags, 99)),
                                  "max": ms(max(lags))}
    if events is not None:
        send_time = {(r[0], r[1]): r[2] for r in sent_in if r[0] in subscribed}
        expected = {(r[0], r[1]) for r in sent_in if r[0] in subscribed and r[4] == 200 and r[5]}
        # The first event carrying a report's bytes_done is that report's; the stream may send the same
        # version again later (with ``live`` false once the upload has been quiet for live_after_s).
        first: dict[tuple[int, int], float] = {}
        for index, bytes_done, _version, received in events:
            key = (index, bytes_done // BYTES_PER_SEQ)
            if key in send_time and (key not in first or received < first[key]):
                first[key] = received
        latencies = [received - send_time[key] for key, received in first.items()]
        matched = set(first)
        per_sub: dict[int, int] = {}
        for index, _b, _v, received in events:
            if w0 <= received < w1 + 5.0:
                per_sub[index] = per_sub.get(index, 0) + 1
        out.update({
            "events_expected": len(expected),
            "events_received": len(matched & expected),
            "events_missing": len(expected - matched),
            "event_latency_ms": {"p50": ms(percentile(latencies, 50)), "p99": ms(percentile(latencies, 99)),
                                 "max": ms(max(latencies) if latencies else None)},
            "subscribers_with_events": sum(1 for i in subscribed if per_sub.get(i)),
        })
    return out


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"ingest-{backend}-"))
    ctx = mp.get_context("spawn")
    result: dict[str, Any] = {"backend": backend, "broker": args.broker_url or "in-process",
                              "replicas": args.replicas}
    try:
        with database(backend, workdir) as url:
            db_name = url.rsplit("/", 1)[1] if backend == "postgresql" else None
            server = start_server(url, workdir, args.broker_url, args.replicas)
            workers: Workers | None = None
            try:
                t_setup = time.monotonic()
                names = [f"bench{i:03d}" for i in range(args.users)]
                with ThreadPoolExecutor(2) as pool:  # argon2 hashing releases the GIL: both cores
                    list(pool.map(lambda part: asyncio.run(add_users(url, part)), [names[0::2], names[1::2]]))
                uploads = asyncio.run(login_and_create(server.base_url, names, args.uploads))
                step = max(1, len(uploads) // max(1, args.subscribers))  # spread over all users
                subscribed = uploads[::step][:args.subscribers]
                sub_set = {u[0] for u in subscribed}
                gens = []
                for g in range(args.generators):
                    parent, child = ctx.Pipe()
                    proc = ctx.Process(target=generator_main, daemon=True,
                                       args=(child, ",".join(server.base_urls), uploads[g::args.generators],
                                             args.timeout))
                    proc.start()
                    gens.append((proc, parent))
                parent, child = ctx.Pipe()
                sub_proc = ctx.Process(target=subscribers_main, daemon=True,
                                       args=(child, ",".join(u.replace("http://", "ws://") + "/graphql"
                                                             for u in server.base_urls), subscribed))
                sub_proc.start()
                workers = Workers(gens, (sub_proc, parent))
                for _, conn in gens:
                    assert conn.recv()["ready"]
                ready = parent.recv()
                if ready["failures"]:
                    log(f"[{backend}] subscriber failures: {ready['failures'][:5]}")
                setup_s = time.monotonic() - t_setup
                log(f"[{backend}] set-up {setup_s:.1f} s: {len(names)} users, {len(uploads)} uploads, "
                    f"{ready['ready']}/{len(subscribed)} subscribers")

                cpu = CpuWindow(server.proc.pid, db_name)
                pid = server.proc.pid
                offered = args.uploads / args.interval
                phases: dict[str, Any] = {}
                # The order matters: the closed loop first, on a server that has never been overloaded, then
                # the open loop at a load it can carry, then at the load (which may overload it).
                phases["closed_loop_with_subscribers"] = run_phase(
                    workers, cpu, pid, mode="closed", warmup=args.closed_warmup, duration=args.closed_duration,
                    concurrency=args.concurrency)
                closed = phases["closed_loop_with_subscribers"]
                sustained = sum(1 for r in closed["records"] if closed["w0"] <= r[3] < closed["w1"]
                                and r[4] == 200 and r[5]) / (closed["w1"] - closed["w0"])
                log(f"[{backend}] closed loop with subscribers: {sustained:.0f}/s")
                time.sleep(args.drain)
                below = args.sustainable_fraction * sustained
                if args.sustainable_fraction > 0 and 0 < below < offered:
                    phases["open_loop_sustainable"] = run_phase(
                        workers, cpu, pid, mode="open", warmup=args.warmup / 2, duration=args.sustainable_duration,
                        interval=args.uploads / below)
                    phases["open_loop_sustainable"]["offered"] = below
                    log(f"[{backend}] open loop at {below:.0f}/s done")
                    time.sleep(args.drain)
                phases["open_loop"] = run_phase(workers, cpu, pid, mode="open", warmup=args.warmup,
                                                duration=args.duration, interval=args.interval)
                phases["open_loop"]["offered"] = offered
                recovery = wait_idle(pid, args.recovery_max)
                log(f"[{backend}] open loop at {offered:.0f}/s done; server idle again after {recovery:.1f} s")
                time.sleep(args.drain)
                parent.send({"mode": "stop"})
                subs = parent.recv()
                sub_proc.join(20)
                workers.subs = None
                phases["closed_loop_without_subscribers"] = run_phase(
                    workers, cpu, pid, mode="closed", warmup=args.closed_warmup, duration=args.closed_duration,
                    concurrency=args.concurrency)
                log(f"[{backend}] closed loop without subscribers done")
                events = subs["events"]
                result.update({
                    "setup_s": round(setup_s, 1),
                    "users": len(names), "uploads": len(uploads), "subscribers": len(subscribed),
                    "subscribers_connected": ready["ready"],
                    "subscriber_failures": [m for _, m in ready["failures"] + subs["failures"]][:10],
                    "subscriber_failures_total": len(ready["failures"]) + len(subs["failures"]),
                    "subscriber_connections_ended_early": len(subs["closed_early"]),
                    "subscriber_events_total": len(events),
                    "every_subscriber_got_events": ready["ready"] == len(subscribed) and all(
                        any(e[0] == i for e in events) for i in sub_set),
                    "subscribers_cpu_s": round(subs["cpu_s"], 2),
                })
                # (when, which upload): an error and the server's ``complete`` after it are one subscription
                troubles = [(t, m.split(":", 1)[0])
                            for t, m in ready["failures"] + subs["failures"] + subs["closed_early"]]
                for name in ("open_loop", "open_loop_sustainable", "closed_loop_with_subscribers",
                             "closed_loop_without_subscribers"):
                    if name not in phases:
                        continue
                    phase = phases[name]
                    with_subs = name != "closed_loop_without_subscribers"
                    fig = summarize(phase, events if with_subs else None, sub_set, offered_per_s=phase.get("offered"))
                    if name.startswith("closed"):
                        fig["concurrency"] = args.concurrency
                    if with_subs:
                        fig["subscriptions_failed_or_ended"] = len(
                            {who for t, who in troubles if phase["t_begin"] <= t < phase["t_end"] + args.drain})
                    if name == "open_loop":
                        fig["server_busy_after_phase_s"] = round(recovery, 1)
                    result[name] = fig
                open_fig = result["open_loop"]
                p99 = open_fig["event_latency_ms"]["p99"]
                result["target"] = {
                    "reports_per_s": TARGET_RATE, "event_p99_ms": TARGET_P99_MS,
                    "offered_meets_rate": offered >= TARGET_RATE,
                    "met": bool(offered >= TARGET_RATE and open_fig["accepted_per_s"] >= 0.98 * TARGET_RATE
                                and p99 is not None and p99 < TARGET_P99_MS and open_fig["http_errors"] == 0),
                }
            finally:
                if workers is not None:
                    workers.close()
                server.stop()
                result["server_log_tail"] = _log_errors(server.log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _log_errors(log: Path) -> list[str]:
    """Lines of the server log that are not access-log lines (errors, warnings), the last 20."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    keep = [ln for ln in lines if '" 200' not in ln and "HTTP/1.1" not in ln and "WebSocket" not in ln
            and "connection open" not in ln and "connection closed" not in ln]
    return keep[-20:]


# ----------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(doc: dict[str, Any]) -> str:
    """One row per backend and open-loop phase, plus the closed-loop maxima."""
    rows = [
        "| backend | open loop offered/s | accepted/s | HTTP errors | report RTT p50 / p99 ms "
        "| event latency p50 / p99 / max ms | events recv / expected | server CPU-s per 1k reports "
        "| DB CPU-s per 1k | server peak RSS MiB | closed-loop max/s (200 subs / none) | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        if "open_loop" not in r:
            rows.append(f"| {r['backend']} | failed: {r.get('error', '?')} |" + " |" * 10)
            continue
        cs, cb = r["closed_loop_with_subscribers"], r["closed_loop_without_subscribers"]
        for name in ("open_loop", "open_loop_sustainable"):
            o = r.get(name)
            if o is None:
                continue
            lat = o["event_latency_ms"]
            target = ("met" if r["target"]["met"] else "not met") if name == "open_loop" else "–"
            rows.append(
                f"| {r['backend']} | {_fmt(o['offered_per_s'])} | {_fmt(o['accepted_per_s'])} | {o['http_errors']} "
                f"| {_fmt(o['report_rtt_ms']['p50'], 1)} / {_fmt(o['report_rtt_ms']['p99'], 1)} "
                f"| {_fmt(lat['p50'], 1)} / {_fmt(lat['p99'], 1)} / {_fmt(lat['max'], 1)} "
                f"| {_fmt(o['events_received'])} / {_fmt(o['events_expected'])} "
                f"| {_fmt(o['server_cpu_s_per_1k_reports'], 2)} | {_fmt(o['db_cpu_s_per_1k_reports'], 2)} "
                f"| {_fmt(o['server_peak_rss_mib'])} | {_fmt(cs['accepted_per_s'])} / {_fmt(cb['accepted_per_s'])} "
                f"| {target} |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--uploads", type=int, default=1000, help="uploads reporting in the open loop (default 1000)")
    p.add_argument("--users", type=int, default=None, help="users owning them (default: one per 20 uploads)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between one upload's reports (default 2)")
    p.add_argument("--subscribers", type=int, default=200, help="uploadProgress subscribers (default 200)")
    p.add_argument("--duration", type=float, default=30.0, help="open-loop measurement window, s (default 30)")
    p.add_argument("--warmup", type=float, default=5.0, help="open-loop warm-up before the window, s (default 5)")
    p.add_argument("--closed-duration", type=float, default=10.0, help="closed-loop window, s (default 10)")
    p.add_argument("--closed-warmup", type=float, default=2.0, help="closed-loop warm-up, s (default 2)")
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop connections (default 32)")
    p.add_argument("--generators", type=int, default=2, help="load-generator processes (default 2)")
    p.add_argument("--timeout", type=float, default=3.0,
                   help="a report's timeout, s, as the CLI's (default 3); a timed-out report is an error")
    p.add_argument("--sustainable-fraction", type=float, default=0.7,
                   help="also run the open loop at this fraction of the closed-loop rate, when that is below the "
                        "offered rate: latency at a load the server can carry (default 0.7; 0 skips it)")
    p.add_argument("--sustainable-duration", type=float, default=12.0,
                   help="that phase's measurement window, s (default 12)")
    p.add_argument("--recovery-max", type=float, default=30.0,
                   help="after the open loop, wait at most this long for the server to go idle, s (default 30)")
    p.add_argument("--drain", type=float, default=1.5, help="pause after each phase, s (default 1.5)")
    p.add_argument("--broker-url", default=None, help="pass --broker-url to the server (default: in-process bus)")
    p.add_argument("--replicas", type=int, default=1,
                   help="server processes sharing the database and the broker (needs --broker-url when > 1); "
                        "uploads report to replica i mod N and are watched on another one")
    p.add_argument("--out", type=Path, default=None, help=f"JSON result (default {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run on SQLite (20 uploads, 5 subscribers, 3 s) to check that everything works")
    args = p.parse_args(argv)
    if args.smoke:
        args.backend, args.uploads, args.subscribers, args.interval = "sqlite", 20, 5, 0.5
        args.duration, args.warmup, args.closed_duration, args.closed_warmup = 3.0, 1.0, 1.5, 0.5
        args.concurrency, args.generators, args.drain, args.sustainable_duration = 4, 1, 0.5, 1.5
        args.users = args.users or 2
    if args.users is None:
        args.users = max(1, min(50, args.uploads // 20))
    if args.out is None:
        args.out = SMOKE_OUT if args.smoke else DEFAULT_OUT
    for name in ("uploads", "users", "concurrency", "generators"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.replicas < 1 or (args.replicas > 1 and not args.broker_url):
        p.error("--replicas must be at least 1, and more than one needs --broker-url (redis://... or postgresql://...)")
    if args.subscribers < 0 or args.subscribers > args.uploads:
        p.error("--subscribers must be between 0 and --uploads")
    if args.interval <= 0 or args.duration <= 0:
        p.error("--interval and --duration must be positive")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds: servers stopped, PostgreSQL database dropped


def busy_cores(window_s: float = 2.0) -> float:
    """How many cores the machine keeps busy over ``window_s`` (``/proc/stat``): other work that will compete.

    ``/proc/stat`` counts in clock ticks, so a short window on a saturated machine can read a tick or two over
    the number of cores; the figure is capped at the core count (it cannot be more busy than that)."""
    before, t0 = system_cpu_busy_s(), time.monotonic()
    time.sleep(window_s)  # a measurement window, not a wait for a condition
    busy = (system_cpu_busy_s() - before) / (time.monotonic() - t0)
    return min(busy, float(os.cpu_count() or 1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    machine = machine_info()
    machine["busy_cores_before_start"] = round(busy_cores(0.5 if args.smoke else 2.0), 2)
    if machine["busy_cores_before_start"] > 0.25:
        print(f"warning: {machine['busy_cores_before_start']:.2f} cores were busy before the benchmark started: "
              "the server will compete with that work, so rates and latencies will be worse than on a quiet "
              "machine (CPU per report is still comparable)", file=sys.stderr)
    started = time.monotonic()
    doc: dict[str, Any] = {
        "benchmark": "ingest", "smoke": args.smoke,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "machine": machine,
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "load_model": {
            "offered_per_s": args.uploads / args.interval, "jitter": JITTER,
            "generators": f"{args.generators} process(es), asyncio streams on uvloop, HTTP/1.1 keep-alive, "
                          "one connection per upload",
            "subscribers": "one process, one graphql-transport-ws connection per subscribed upload (websockets)",
            "latency": "receive time of the event minus send time of the report (time.monotonic, system-wide)",
        },
        "target": {"reports_per_s": TARGET_RATE, "event_p99_ms": TARGET_P99_MS},
        "results": [],
    }
    failed = False
    for backend in backends:
        try:
            doc["results"].append(run_backend(backend, args))
        except Exception as exc:  # noqa: BLE001 - the other backend still runs; exit status says it failed
            failed = True
            print(f"[{backend}] failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            doc["results"].append({"backend": backend, "error": f"{type(exc).__name__}: {exc}"})
    doc["wall_s"] = round(time.monotonic() - started, 1)
    table = markdown(doc)
    doc["markdown"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(args.out)
    print(table)
    print(f"\nwrote {args.out} ({doc['wall_s']} s)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
