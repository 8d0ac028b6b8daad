"""Issue 5's benchmark: does reporting to the API server slow the upload?

Usage::

    python -m benchmarks.push [--size 2GiB] [--rounds 5] [--servers discard[,moto]] [--slow-delay 1.5]
                              [--out benchmarks/results/push.json] [--readme benchmarks/README.md]
    python -m benchmarks.push --smoke [--out FILE]        # 16 MiB, 1 round: checks that every variant runs
    python -m benchmarks.push --render FILE.json          # the markdown table of an earlier run

The same ``mpupload upload FILE s3://bench/KEY --endpoint-url URL --checksum crc32c --progress json`` runs in
five variants, on the same random file and the same S3 endpoint:

``no-report``       ``--no-report``: the baseline.
``healthy``         a real ``python -m mpupload serve`` (SQLite in the temporary directory, a user made with
                    ``mpupload users add``, a token from ``POST /api/v1/auth/login``, handed over in
                    ``MPUPLOAD_API_URL``/``MPUPLOAD_TOKEN``), the default ``--report-interval`` (2 s).
``healthy-0.25s``   the same with ``--report-interval 0.25`` (stress: eight times the reports).
``slow``            a proxy in front of that same server that holds every answer for ``--slow-delay`` seconds
                    (1.5 s: below the CLI's 3 s read timeout, so every request succeeds, slowly).
``hanging``         a server that accepts TCP connections and never answers: the CLI's ``GET /me`` check times
                    out (3 s), it warns once, uploads unreported, and its sender keeps retrying.

The variants run interleaved, the order rotated every round and reversed on odd rounds, so drift on a shared
machine spreads over all of them. The servers (the S3 endpoint, the API server, the proxy, the hanging
server) are started once, before the first round: their start-up is never timed.

Per run: wall time of the whole command (monotonic clock, interpreter start-up included), CPU-seconds of the
whole client process tree and its peak RSS (``benchmarks.run.measure``: ``os.wait4`` rusage plus reaped
orphans; psutil sampling of RSS), the *transfer* speed the CLI itself reports (``avg_speed_bps`` and
``elapsed_seconds`` of the ``completed`` JSON event: the bytes over the time the engine spent moving them,
so it leaves out start-up, the authentication before the first byte and the wait for the final status),
the object's size on the store (HeadObject), and, for ``healthy*`` and ``slow``, the record on the API
server (``GET /api/v1/uploads/{id}``: did it end ``completed``, how many progress reports the server got).

Nothing is asserted: the issue's target (each reporting variant within 5 % of ``--no-report``'s speed) is
evaluated for the report only, both on wall-clock speed and on transfer speed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import http.server
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks.run import (
    BUCKET,
    GIB,
    MIB,
    REPO_ROOT,
    SMOKE_SIZE,
    ServerProcess,
    _dist_version,
    become_subreaper,
    check_object,
    free_port,
    human_size,
    machine_info,
    make_file,
    measure,
    parse_size,
    peer_env,
    running_server,
    warm_bytecode,
)

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "push.json"
DEFAULT_SIZE = 2 * GIB
DEFAULT_ROUNDS = 5
SLOW_DELAY_S = 1.5
SMOKE_SLOW_DELAY_S = 0.5  # the smoke run checks that the variant works, quickly
TARGET_RATIO = 0.95
USER = "bench"
PASSWORD = "push-benchmark-password"
README_START = "<!-- push:start -->"
README_END = "<!-- push:end -->"


_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[push-bench {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    api: str | None  # None (no reporting), "healthy", "slow", "hanging"
    interval_s: float | None  # --report-interval passed on the command line; None: the CLI's default
    note: str

    @property
    def expects_record(self) -> bool:
        """The server records the upload (the hanging one never answers, the baseline never reports)."""
        return self.api in ("healthy", "slow")


VARIANTS: tuple[Variant, ...] = (
    Variant("no-report", None, None, "--no-report (the baseline)"),
    Variant("healthy", "healthy", None, "real mpupload serve (SQLite), default --report-interval (2 s)"),
    Variant("healthy-0.25s", "healthy", 0.25, "the same server, --report-interval 0.25 (stress)"),
    Variant("slow", "slow", None, "every answer of the same server held {delay} s by a proxy, default interval"),
    Variant("hanging", "hanging", None, "accepts TCP connections, never answers, default interval"),
)


def round_order(variants: tuple[Variant, ...], rnd: int) -> tuple[Variant, ...]:
    """Round ``rnd``'s order: rotated by ``rnd``, and reversed on odd rounds, so that no variant always
    follows the same one (whatever a run leaves behind — a server still busy with its last report, a
    process still exiting — would otherwise always land on the same successor)."""
    shift = rnd % len(variants)
    order = variants[shift:] + variants[:shift]
    return order[::-1] if rnd % 2 else order


def upload_argv(variant: Variant, file: Path, endpoint: str, key: str) -> list[str]:
    argv = [sys.executable, "-m", "mpupload", "upload", str(file), f"s3://{BUCKET}/{key}", "--endpoint-url",
            endpoint, "--checksum", "crc32c", "--progress", "json"]
    if variant.api is None:
        argv.append("--no-report")
    elif variant.interval_s is not None:
        argv += ["--report-interval", f"{variant.interval_s:g}"]
    return argv


# --------------------------------------------------------------------------------------------------
# The API servers: a real one, a slow proxy in front of it, and one that never answers
# --------------------------------------------------------------------------------------------------


def _http_json(method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


class ApiServer:
    """``python -m mpupload serve`` on a SQLite file in ``workdir``, one user, one token."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "api"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.database_url = f"sqlite:///{self.dir / 'server.db'}"
        self.log_path = self.dir / "serve.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""
        self._ps: psutil.Process | None = None

    def launch(self) -> None:
        """Start the process (it runs the migrations); :meth:`ready` waits for it."""
        with open(self.log_path, "ab") as log_f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mpupload", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--database-url", self.database_url, "--access-log"],  # "reports received" counts its lines
                cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log_f, stderr=subprocess.STDOUT,
            )
        self._ps = psutil.Process(self.proc.pid)

    def ready(self, timeout: float = 90.0) -> None:
        """Wait until it answers, add the user (the schema exists by then), log in."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mpupload serve exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mpupload serve not ready after {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.1)
        done = subprocess.run(
            [sys.executable, "-m", "mpupload", "users", "add", USER, "--password-stdin", "--database-url",
             self.database_url], input=PASSWORD + "\n", capture_output=True, text=True, cwd=REPO_ROOT,
            timeout=120, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mpupload users add failed: {done.stderr.strip()}")
        self.token = _http_json("POST", self.url + "/api/v1/auth/login",
                                {"username": USER, "password": PASSWORD})["token"]

    def record(self, record_id: str) -> dict[str, Any] | None:
        try:
            answer = _http_json("GET", f"{self.url}/api/v1/uploads/{record_id}", token=self.token)
        except (OSError, ValueError):
            return None
        return answer if isinstance(answer, dict) else None

    def records_by_key(self) -> dict[str, dict[str, Any]]:
        try:
            answer = _http_json("GET", self.url + "/api/v1/uploads", token=self.token)
        except (OSError, ValueError):
            return {}
        return {r["key"]: r for r in answer if isinstance(r, dict)} if isinstance(answer, list) else {}

    def progress_posts(self, record_id: str) -> int:
        """Progress reports the server answered for this record (uvicorn's access log)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return len(re.findall(rf"POST /api/v1/uploads/{re.escape(record_id)}/progress HTTP", text))

    def cpu_seconds(self) -> float | None:
        if self._ps is None:
            return None
        try:
            t = self._ps.cpu_times()
        except psutil.Error:
            return None
        return float(t.user + t.system)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-2000:].decode("utf-8", "replace")
        return ""

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
        self.proc = None


_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


class SlowProxy:
    """An HTTP/1.1 proxy (threads, in this process) that holds every answer ``delay_s`` seconds, then forwards
    the request to the real server with ``http.client`` and relays the answer. Counts the requests it served."""

    def __init__(self, upstream_port: int, delay_s: float) -> None:
        proxy = self
        self.delay_s = delay_s
        self.requests = 0
        self._lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real server offers

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    proxy.requests += 1
                time.sleep(proxy.delay_s)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP_BY_HOP and k.lower() not in ("content-length", "date", "server"):
                            self.send_header(k, v)
                except OSError as exc:
                    data = json.dumps({"detail": f"proxy: upstream failed: {exc}"}).encode()
                    self.send_response(502)
                    self.send_header("Content-Type", "application/json")
                finally:
                    conn.close()
                self.send_header("Content-Length", str(len(data)))
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up waiting (its read timeout, or it exited): its choice
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward  # noqa: N815 - http.server's names

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="slow-proxy", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class HangingServer:
    """Accepts TCP connections and never answers (nor closes them, until :meth:`stop`)."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hanging-server", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)  # held open, never read, never answered

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()
        self._sock.close()


@dataclass
class ApiSet:
    """The API-side servers of one benchmark run."""

    healthy: ApiServer
    slow: SlowProxy
    hanging: HangingServer

    def url(self, kind: str) -> str:
        return {"healthy": self.healthy.url, "slow": self.slow.url, "hanging": self.hanging.url}[kind]


@contextlib.contextmanager
def api_servers(workdir: Path, slow_delay_s: float, meanwhile: Callable[[], None] | None = None) -> Iterator[ApiSet]:
    """The real API server, the slow proxy in front of it, the hanging server; ``meanwhile`` runs while the
    API server starts up (the S3 endpoint starts then, in parallel)."""
    healthy = ApiServer(workdir)
    slow: SlowProxy | None = None
    hanging: HangingServer | None = None
    try:
        healthy.launch()
        if meanwhile is not None:
            meanwhile()
        healthy.ready()
        slow = SlowProxy(healthy.port, slow_delay_s)
        slow.start()
        hanging = HangingServer()
        hanging.start()
        yield ApiSet(healthy, slow, hanging)
    finally:
        if hanging is not None:
            hanging.stop()
        if slow is not None:
            slow.stop()
        healthy.stop()


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------


@dataclass
class PushRun:
    variant: str
    server: str
    round: int
    position: int  # place in its round (0 = first)
    ok: bool
    exit_code: int | None
    wall_s: float
    mib_s: float = 0.0  # file size / wall
    transfer_s: float | None = None  # elapsed_seconds of the completed event
    transfer_mib_s: float | None = None  # avg_speed_bps of the completed event, in MiB/s
    outside_transfer_s: float | None = None  # wall - transfer_s: start-up, auth, registration, final wait
    before_start_s: float | None = None  # process start -> the started event (start-up, auth, registration)
    after_completed_s: float | None = None  # the completed event -> process exit (final report wait, shutdown)
    cpu_user_s: float = 0.0
    cpu_sys_s: float = 0.0
    cpu_s: float = 0.0
    cpu_source: str = "wait4"
    cpu_s_per_gib: float = 0.0
    peak_rss_mib: float = 0.0
    s3_server_cpu_s: float | None = None
    api_server_cpu_s: float | None = None
    upload_id: str | None = None
    verified: str | None = None
    record_status: str | None = None  # the API server's record at the end (None: no record expected)
    record_completed: bool | None = None
    reports_received: int | None = None  # progress POSTs the API server answered for this record
    warnings: list[str] = field(default_factory=list)
    loadavg_1m: float | None = None
    error: str | None = None
    command: list[str] = field(default_factory=list)


def _events(stdout: str) -> dict[str, dict[str, Any]]:
    """The last JSON event of each kind on the CLI's stdout."""
    out: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and isinstance(event.get("event"), str):
                out[event["event"]] = event
    return out


def _epoch(event: dict[str, Any] | None) -> float | None:
    """The event's ISO-8601 UTC timestamp (milliseconds) as seconds since the epoch."""
    stamp = (event or {}).get("timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def run_one(variant: Variant, s3: ServerProcess, server_kind: str, apis: ApiSet | None, rnd: int, position: int,
            file: Path, size: int, timeout: float, workdir: Path) -> PushRun:
    key = f"push/{variant.name}/{server_kind}/round-{rnd}"
    argv = upload_argv(variant, file, s3.url, key)
    env = peer_env()
    env["MPUPLOAD_CONFIG_DIR"] = str(workdir / "config")  # no stored login anywhere else can leak in
    for name in ("MPUPLOAD_API_URL", "MPUPLOAD_TOKEN", "MPUPLOAD_DEBUG"):
        env.pop(name, None)
    if variant.api is not None:
        assert apis is not None
        env["MPUPLOAD_API_URL"] = apis.url(variant.api)
        env["MPUPLOAD_TOKEN"] = apis.healthy.token
    known = {pid for pid in (s3.pid, apis.healthy.pid if apis else None) if pid is not None}
    s3_before = s3.cpu_seconds()
    api_before = apis.healthy.cpu_seconds() if apis else None
    load = os.getloadavg()[0]
    t_start = time.time()  # measure() starts the process right away: the wall-clock origin of the events
    try:
        code, wall, m, tail = measure(argv, env, False, timeout, workdir, known)
    except OSError as exc:
        return PushRun(variant.name, server_kind, rnd, position, False, None, 0.0, error=f"could not start: {exc}",
                       command=argv)
    s3_after = s3.cpu_seconds()
    api_after = apis.healthy.cpu_seconds() if apis else None
    stdout = (workdir / "peer.out").read_text(errors="replace")
    stderr = (workdir / "peer.err").read_text(errors="replace")
    run = PushRun(variant.name, server_kind, rnd, position, code == 0, code, wall, command=argv, loadavg_1m=load,
                  cpu_user_s=m["cpu_user_s"], cpu_sys_s=m["cpu_sys_s"], cpu_s=m["cpu_s"],
                  cpu_source=m["cpu_source"], peak_rss_mib=m["peak_rss_mib"])
    run.warnings = [line.strip() for line in stderr.splitlines() if "warning" in line.lower()]
    if s3_before is not None and s3_after is not None:
        run.s3_server_cpu_s = s3_after - s3_before
    if api_before is not None and api_after is not None:
        run.api_server_cpu_s = api_after - api_before
    run.mib_s = size / MIB / wall if wall > 0 else 0.0
    run.cpu_s_per_gib = run.cpu_s / (size / GIB)
    events = _events(stdout)
    done = events.get("completed")
    t_started, t_done = _epoch(events.get("started")), _epoch(done)
    if t_started is not None:
        run.before_start_s = t_started - t_start
    if t_done is not None:
        run.after_completed_s = t_start + wall - t_done
    if done is not None:
        run.upload_id = done.get("upload_id")
        run.verified = done.get("verified")
        if isinstance(done.get("elapsed_seconds"), (int, float)):
            run.transfer_s = float(done["elapsed_seconds"])
            run.outside_transfer_s = wall - run.transfer_s
        if isinstance(done.get("avg_speed_bps"), (int, float)):
            run.transfer_mib_s = float(done["avg_speed_bps"]) / MIB
    if code != 0:
        run.ok, run.error = False, f"exit code {code}: {tail}"
    elif done is None:
        run.ok, run.error = False, f"no completed event on stdout: {stdout[-500:]}"
    else:
        problem = check_object(s3.url, key, size)
        if problem:
            run.ok, run.error = False, problem
    if variant.expects_record and apis is not None:
        record = apis.healthy.record(run.upload_id) if run.upload_id else None
        if record is None:  # registered late: the events kept the store's UploadId; find it by key
            record = apis.healthy.records_by_key().get(key)
        if record is not None:
            run.record_status = str(record.get("status"))
            run.reports_received = apis.healthy.progress_posts(str(record["id"]))
        run.record_completed = (run.record_status or "").lower() == "completed"
    return run


# --------------------------------------------------------------------------------------------------
# Summary and report
# --------------------------------------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


def summarize(runs: list[PushRun], size: int, delay_s: float,
              chosen: tuple[Variant, ...] = VARIANTS) -> dict[str, Any]:
    variants: dict[str, Any] = {}
    for variant in chosen:
        mine = [r for r in runs if r.variant == variant.name]
        good = [r for r in mine if r.ok]
        entry: dict[str, Any] = {
            "note": variant.note.format(delay=f"{delay_s:g}"),
            "api": variant.api,
            "report_interval_s": variant.interval_s if variant.interval_s is not None else 2.0,
            "ok_runs": len(good),
            "failed_runs": len(mine) - len(good),
            "records_expected": variant.expects_record,
            "records_completed": sum(1 for r in mine if r.record_completed) if variant.expects_record else None,
            "runs": [asdict(r) for r in mine],
            "median": None,
            "error": next((r.error for r in mine if not r.ok), None),
        }
        if good:
            wall = statistics.median(r.wall_s for r in good)
            entry["median"] = {
                "wall_s": wall,
                "mib_s": size / MIB / wall,
                "transfer_s": _median([r.transfer_s for r in good]),
                "transfer_mib_s": _median([r.transfer_mib_s for r in good]),
                "outside_transfer_s": _median([r.outside_transfer_s for r in good]),
                "before_start_s": _median([r.before_start_s for r in good]),
                "after_completed_s": _median([r.after_completed_s for r in good]),
                "cpu_s_per_gib": statistics.median(r.cpu_s_per_gib for r in good),
                "peak_rss_mib": statistics.median(r.peak_rss_mib for r in good),
                "peak_rss_mib_max": max(r.peak_rss_mib for r in good),
                "api_server_cpu_s": _median([r.api_server_cpu_s for r in good]),
                "reports_received": _median([r.reports_received for r in good]),
            }
        variants[variant.name] = entry
    base_entry = variants.get("no-report", {"median": None, "runs": []})
    base = base_entry["median"]
    base_by_round = {r["round"]: r for r in base_entry["runs"] if r["ok"]}
    for name, entry in variants.items():
        med = entry["median"]
        if not (base and med):
            entry["ratio_vs_no_report"] = None
            continue
        paired_wall, paired_transfer = [], []
        for r in entry["runs"]:
            b = base_by_round.get(r["round"])
            if r["ok"] and b:
                paired_wall.append(b["wall_s"] / r["wall_s"])
                if r["transfer_mib_s"] and b["transfer_mib_s"]:
                    paired_transfer.append(r["transfer_mib_s"] / b["transfer_mib_s"])
        ratio = {
            "mib_s": med["mib_s"] / base["mib_s"],
            "transfer_mib_s": (med["transfer_mib_s"] / base["transfer_mib_s"]
                               if med["transfer_mib_s"] and base["transfer_mib_s"] else None),
            "cpu_s_per_gib": med["cpu_s_per_gib"] / base["cpu_s_per_gib"] if base["cpu_s_per_gib"] else None,
            "peak_rss_mib": med["peak_rss_mib"] / base["peak_rss_mib"] if base["peak_rss_mib"] else None,
            # the same ratios taken round by round (each run against the baseline of its own round), then
            # the median: less sensitive to a slow minute on a shared machine
            "paired_mib_s": _median(paired_wall),
            "paired_transfer_mib_s": _median(paired_transfer),
        }
        entry["ratio_vs_no_report"] = ratio
        if name != "no-report":
            entry["target"] = {
                "limit": TARGET_RATIO,
                "wall_met": ratio["mib_s"] >= TARGET_RATIO,
                "transfer_met": ratio["transfer_mib_s"] is not None and ratio["transfer_mib_s"] >= TARGET_RATIO,
            }
    return variants


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def render(doc: dict[str, Any]) -> str:
    """Markdown: one table per S3 server, and where the figures came from."""
    cfg = doc["config"]
    machine = doc["machine"]
    out = [
        f"{cfg['size']} random file, {cfg['rounds']} round(s) × {len(cfg['variants'])} variants, interleaved and "
        f"rotated; slow server: every answer held {cfg['slow_delay_s']:g} s. Generated "
        f"{doc['generated_at'][:10]} on {machine['cpu_model']} ({machine['nproc']} vCPU), mpupload "
        f"{doc['tools'].get('mpupload')}; medians of successful runs. Load average (1 min) during the runs: "
        f"{doc.get('loadavg_1m_range', '?')}.",
        "",
    ]
    for server in doc["servers"].values():
        out += [
            f"**{server['label']}**",
            "",
            "| variant | runs ok | wall s | MiB/s (wall) | × no-report | transfer MiB/s | × no-report | "
            "before start s | after completed s | CPU-s/GiB | peak RSS MiB | reports received | record COMPLETED |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, e in server["variants"].items():
            med, ratio = e["median"], e.get("ratio_vs_no_report") or {}
            runs = e["ok_runs"] + e["failed_runs"]
            if med is None:
                out.append(f"| {name} | 0/{runs} | failed: {(e.get('error') or '').splitlines()[0][:80]} |"
                           + " |" * 10)
                continue
            rec = "n/a" if e["records_completed"] is None else f"{e['records_completed']}/{runs}"
            out.append(
                f"| {name} | {e['ok_runs']}/{runs} | {med['wall_s']:.2f} | {med['mib_s']:.0f} | "
                f"{_fmt(ratio.get('mib_s'), '.3f')} | {_fmt(med['transfer_mib_s'], '.0f')} | "
                f"{_fmt(ratio.get('transfer_mib_s'), '.3f')} | {_fmt(med['before_start_s'], '.2f')} | "
                f"{_fmt(med['after_completed_s'], '.2f')} | "
                f"{med['cpu_s_per_gib']:.2f} | {med['peak_rss_mib']:.0f} | "
                f"{_fmt(med['reports_received'], '.0f')} | {rec} |"
            )
        out.append("")
        verdicts = []
        for name, e in server["variants"].items():
            t = e.get("target")
            if t:
                verdicts.append(f"{name}: wall {'met' if t['wall_met'] else 'NOT met'}, "
                                f"transfer {'met' if t['transfer_met'] else 'NOT met'}")
        if verdicts:
            out += [f"Target ≥ {TARGET_RATIO:.2f}× of `--no-report` — " + "; ".join(verdicts) + ".", ""]
    return "\n".join(out).rstrip() + "\n"


def replace_readme_block(readme: Path, block: str) -> bool:
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    readme.write_text(text[: start + len(README_START)] + "\n" + block + text[end:])
    return True


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------

S3_LABELS = {
    "discard": "discard endpoint (client-bound: the upload runs at the client's ceiling, where any slowdown shows)",
    "moto": "moto server (server-bound: moto stores the bytes and is the bottleneck; a fresh one per upload)",
}


def run_benchmark(size: int, rounds: int, servers: list[str], slow_delay_s: float, timeout: float,
                  tmp_parent: Path | None, smoke: bool,
                  variants: tuple[Variant, ...] = VARIANTS) -> dict[str, Any]:
    subreaper = become_subreaper()
    warm_bytecode()
    doc: dict[str, Any] = {
        "schema": 1,
        "benchmark": "push",
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "tools": {n: _dist_version(n) for n in ("mpupload", "boto3", "botocore", "requests", "fastapi", "uvicorn",
                                                 "moto")},
        "config": {
            "smoke": smoke,
            "size_bytes": size,
            "size": human_size(size),
            "rounds": rounds,
            "servers": servers,
            "variants": [v.name for v in variants],
            "slow_delay_s": slow_delay_s,
            "order": "interleaved; rotated by one variant every round, reversed on odd rounds",
            "command": "python -m mpupload upload FILE s3://bench/KEY --endpoint-url URL --checksum crc32c "
                       "--progress json [--no-report | --report-interval S]",
            "cpu_measure": "os.wait4 rusage of the client (includes reaped descendants)"
                           + ("; runner is a child subreaper" if subreaper else ""),
            "transfer_measure": "avg_speed_bps and elapsed_seconds of the CLI's completed JSON event",
        },
        "servers": {},
    }
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mpupload-push-bench-", dir=tmp_parent) as tmp:
        workdir = Path(tmp)
        (workdir / "config").mkdir(mode=0o700)
        log(f"writing {human_size(size)} of random data under {workdir}")
        file = make_file(workdir, size)
        log(f"starting the API server (mpupload serve, SQLite), the slow proxy ({slow_delay_s:g} s), the "
            "hanging server and the S3 endpoint")
        with contextlib.ExitStack() as stack:
            shared_s3: dict[str, ServerProcess] = {}

            def start_shared_s3() -> None:  # the discard endpoint keeps nothing: one process for all runs
                for kind in servers:
                    if kind != "moto":
                        shared_s3[kind] = stack.enter_context(running_server(kind, workdir))

            apis = stack.enter_context(api_servers(workdir, slow_delay_s, meanwhile=start_shared_s3))
            log("servers up")
            for kind in servers:
                runs: list[PushRun] = []
                shared = shared_s3.get(kind)
                for rnd in range(rounds):
                    for pos, variant in enumerate(round_order(variants, rnd)):
                        if shared is not None:
                            r = run_one(variant, shared, kind, apis, rnd, pos, file, size, timeout, workdir)
                        else:  # moto keeps every byte in memory: a fresh one for every upload
                            try:
                                with running_server(kind, workdir) as fresh:
                                    r = run_one(variant, fresh, kind, apis, rnd, pos, file, size, timeout,
                                                workdir)
                            except RuntimeError as exc:
                                r = PushRun(variant.name, kind, rnd, pos, False, None, 0.0,
                                            error=f"server: {exc}")
                        runs.append(r)
                        if r.loadavg_1m is not None:
                            loads.append(r.loadavg_1m)
                        status = "ok" if r.ok else f"FAILED ({(r.error or '').splitlines()[0][:160]})"
                        rec = "" if r.record_completed is None else f" record={r.record_status}"
                        log(f"{kind:7} round {rnd + 1}/{rounds} {variant.name:14} {r.wall_s:6.2f}s "
                            f"{r.mib_s:7.1f} MiB/s wall {_fmt(r.transfer_mib_s, '7.1f')} MiB/s transfer "
                            f"{r.cpu_s_per_gib:5.2f} CPU-s/GiB {r.peak_rss_mib:6.1f} MiB{rec}  {status}")
                doc["servers"][kind] = {"label": S3_LABELS[kind],
                                        "variants": summarize(runs, size, slow_delay_s, variants)}
            doc["api_server"] = {"slow_proxy_requests": apis.slow.requests,
                                 "hanging_connections_accepted": apis.hanging.accepted}
    if loads:
        doc["loadavg_1m_range"] = f"{min(loads):.1f}–{max(loads):.1f}"
    return doc


def failures(doc: dict[str, Any]) -> list[str]:
    """Variants whose upload did not succeed every time (the exit status of the benchmark)."""
    return [f"{kind}/{name}: {e.get('error')}" for kind, server in doc["servers"].items()
            for name, e in server["variants"].items() if e["failed_runs"] or not e["ok_runs"]]


def stale_records(doc: dict[str, Any]) -> list[str]:
    """Variants whose record on the API server did not always end completed: a finding, not a failure."""
    out = []
    for kind, server in doc["servers"].items():
        for name, e in server["variants"].items():
            runs = e["ok_runs"] + e["failed_runs"]
            if e["records_expected"] and e["records_completed"] != runs:
                statuses = sorted({str(r["record_status"]) for r in e["runs"] if not r["record_completed"]})
                out.append(f"{kind}/{name}: {e['records_completed']} of {runs} records ended completed "
                           f"(others: {', '.join(statuses)})")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.push", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=None, help=f"file size (default {human_size(DEFAULT_SIZE)})")
    p.add_argument("--rounds", type=int, default=None, help=f"rounds of all variants (default {DEFAULT_ROUNDS})")
    p.add_argument("--servers", default="discard", help="comma list of S3 servers: discard, moto")
    p.add_argument("--variants", default=",".join(v.name for v in VARIANTS),
                   help="comma list of variants (default: all; the ratios need no-report)")
    p.add_argument("--slow-delay", type=float, default=None,
                   help=f"seconds the slow server holds every answer (default {SLOW_DELAY_S:g}; "
                        f"with --smoke {SMOKE_SLOW_DELAY_S:g})")
    p.add_argument("--timeout", type=float, default=None, help="seconds one upload may take")
    p.add_argument("--tmpdir", type=Path, default=None, help="where the random file is written")
    p.add_argument("--smoke", action="store_true", help="16 MiB, 1 round: exits 1 if any variant failed")
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON results (default {DEFAULT_OUT.relative_to(REPO_ROOT)}; with --smoke: stdout)")
    p.add_argument("--readme", type=Path, default=None,
                   help=f"also replace the text between {README_START} and {README_END} in this file")
    p.add_argument("--render", type=Path, default=None, help="print the markdown of an earlier JSON and exit")
    args = p.parse_args(argv)

    if args.render is not None:
        block = render(json.loads(args.render.read_text()))
        if args.readme is not None and not replace_readme_block(args.readme, block):
            log(f"{args.readme} has no {README_START} ... {README_END} block")
            return 1
        print(block, end="")
        return 0

    size = args.size if args.size is not None else (SMOKE_SIZE if args.smoke else DEFAULT_SIZE)
    rounds = args.rounds if args.rounds is not None else (1 if args.smoke else DEFAULT_ROUNDS)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    by_name = {v.name: v for v in VARIANTS}
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    if not names or any(n not in by_name for n in names):
        p.error(f"--variants: choose from {', '.join(by_name)}")
    variants = tuple(v for v in VARIANTS if v.name in names)
    unknown = [s for s in servers if s not in S3_LABELS]
    if unknown or not servers or rounds < 1:
        p.error(f"unknown server(s) {unknown}; choose from {sorted(S3_LABELS)}" if unknown
                else "need at least one server and one round")
    timeout = args.timeout if args.timeout is not None else max(300.0, 600.0 * size / GIB)
    started = time.monotonic()
    delay = args.slow_delay if args.slow_delay is not None else (SMOKE_SLOW_DELAY_S if args.smoke else SLOW_DELAY_S)
    doc = run_benchmark(size, rounds, servers, delay, timeout, args.tmpdir, args.smoke, variants)
    doc["duration_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(doc, indent=2) + "\n"
    out = args.out if args.out is not None else (None if args.smoke else DEFAULT_OUT)
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        log(f"wrote {out}")
    block = render(doc)
    print(block, file=sys.stderr)
    if args.readme is not None and not replace_readme_block(args.readme, block):
        log(f"{args.readme} has no {README_START} ... {README_END} block")
        return 1
    for line in stale_records(doc):
        log(f"NOTE {line}")
    problems = failures(doc)
    for line in problems:
        log(f"FAILED {line}")
    log(f"done in {doc['duration_s']:.0f}s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
