"""Cluster benchmark (issue 14): hosts simulated with network namespaces, each with a shaped network card.

Usage (as root: it creates network namespaces, veth pairs and an address on ``lo``)::

    python -m benchmarks.cluster [--size 1GiB] [--hosts 1,2,3] [--rate 30MiB] [--servers discard,moto]
        [--runs 1] [--out benchmarks/results/cluster.json] [--readme README.md]
    python -m benchmarks.cluster --quick [--out F.json]            # 256 MiB, discard endpoint only
    python -m benchmarks.cluster --render F.json --readme README.md  # redo the README block only

What it builds, every name carrying the run's prefix ``mpub-<pid>`` (``mpub<pid>r<i>``/``mpub<pid>n<i>`` for
the links), and deletes again in a ``finally`` (also on Ctrl+C and SIGTERM):

* a *service address* ``10.B.0.1/32`` on the root namespace's ``lo`` (``10.B.0.0/16`` is the first of a few
  private /16s with no address or route on this machine). The S3 endpoint and the Dask scheduler listen on it,
  so one endpoint URL and one scheduler address work from the root namespace (the coordinator) and from every
  simulated host (the workers);
* per simulated host *i*: a network namespace ``mpub-<pid>-<i>`` joined to the root namespace by a veth pair
  (``10.B.i.1/30`` on the root side, ``10.B.i.2/30`` inside, the default route through the root side), ``lo``
  up, and a token bucket (``tc qdisc ... root tbf``) on the inner end's egress at ``--rate`` (30 MiB/s: a host's
  network card scaled down). Traffic only goes to those addresses;
* one ``dask worker --nthreads 4 --nworkers 1 --no-nanny`` per host, inside its namespace (and in a UTS
  namespace of its own with the hostname ``mpub-host<i>``, so the coordinator counts it as a host of its own),
  with the bench credentials in its environment (its own credential chain, as on a real host).

The file is written once on the root filesystem; the namespaces share the mount namespace, so every worker reads
the same file at the same path: a real shared filesystem. For each server (the discard endpoint, the
instrument: it drops the bodies; then moto, a real store that may itself be the limit) it measures:

* ``local (root, unshaped)``: ``mpupload upload`` with the local executor in the root namespace, unshaped
  (the client's own ceiling against that server);
* ``local (1 shaped host)``: the same CLI run inside namespace 1 (``ip netns exec``): the one-host rate the
  cluster multiplies. It is the *per-host rate* of the targets;
* ``cluster N`` for each N of ``--hosts``: the CLI in the root namespace with ``--cluster`` on the scheduler,
  N workers started for it (in namespaces 1..N), stopped after it.

Every upload is ``mpupload upload FILE s3://bench/KEY --endpoint-url URL --part-size 64MiB --progress json
--no-report`` (``--cluster`` on the cluster rows); its object's size is checked with HeadObject afterwards.
Figures per upload: the transfer (the ``started`` event's timestamp to the ``completed`` event's) and its
MiB/s, the whole command's wall time, the coordinator's CPU (user+sys from ``os.wait4`` of the CLI: the
coordinator and anything it forks; the Dask workers and the scheduler are not its descendants and are
counted apart, from ``/proc``), and the bytes each simulated host sent (the root-side veth's ``rx_bytes``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import ipaddress
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks import run as bench

MIB = bench.MIB
GIB = bench.GIB
BUCKET = bench.BUCKET
START = "<!-- cluster:start -->"
END = "<!-- cluster:end -->"
REPO_ROOT = bench.REPO_ROOT
CANDIDATE_NETS = ("10.231.0.0/16", "10.219.0.0/16", "10.187.0.0/16", "10.173.0.0/16", "172.29.0.0/16")
NTHREADS = 4
TBF_LATENCY = "50ms"
TARGET_RATIO = 0.85
TARGET_CPU_S_PER_GIB = 0.1


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def _pdeathsig() -> None:
    """In the child: die with the runner (PR_SET_PDEATHSIG; kept across exec of ``ip netns exec``)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def sh(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


# --------------------------------------------------------------------------------------------------
# The simulated hosts
# --------------------------------------------------------------------------------------------------


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 address and route on this machine (root namespace), as networks."""
    nets: list[ipaddress.IPv4Network] = []
    for line in sh("ip", "-4", "-o", "addr", "show").splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            nets.append(ipaddress.ip_interface(m.group(1)).network)
    for line in sh("ip", "-4", "route", "show", "table", "all").splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("broadcast", "local", "unreachable", "blackhole", "prohibit", "throw"):
            word = line.split()[1]
        if word == "default":
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(word, strict=False))
    return nets


def pick_network() -> ipaddress.IPv4Network:
    used = used_networks()
    for text in CANDIDATE_NETS:
        net = ipaddress.IPv4Network(text)
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError(f"every candidate network is in use here: {', '.join(CANDIDATE_NETS)}")


def rate_bits(rate_bytes: int) -> int:
    return rate_bytes * 8


@dataclass
class Host:
    index: int
    netns: str
    root_if: str
    ns_if: str
    root_ip: str
    ns_ip: str


@dataclass
class Topology:
    """The namespaces, links and the service address of one run; ``close()`` removes all of them."""

    prefix: str
    net: ipaddress.IPv4Network
    rate_bytes: int
    burst_bytes: int
    hosts: list[Host] = field(default_factory=list)
    service_ip: str = ""
    _service_added: bool = False

    @property
    def link_prefix(self) -> str:
        return self.prefix.replace("-", "")  # mpub<pid>: interface names hold at most 15 characters

    def create(self, count: int) -> None:
        base = int(self.net.network_address)
        self.service_ip = str(ipaddress.IPv4Address(base + 1))  # 10.B.0.1
        sh("ip", "addr", "add", f"{self.service_ip}/32", "dev", "lo")
        self._service_added = True
        for i in range(1, count + 1):
            sub = base + i * 256  # 10.B.i.0/30
            host = Host(i, f"{self.prefix}-{i}", f"{self.link_prefix}r{i}", f"{self.link_prefix}n{i}",
                        str(ipaddress.IPv4Address(sub + 1)), str(ipaddress.IPv4Address(sub + 2)))
            sh("ip", "netns", "add", host.netns)
            self.hosts.append(host)
            sh("ip", "link", "add", host.root_if, "type", "veth", "peer", "name", host.ns_if, "netns", host.netns)
            sh("ip", "addr", "add", f"{host.root_ip}/30", "dev", host.root_if)
            sh("ip", "link", "set", host.root_if, "up")
            ns = ("ip", "netns", "exec", host.netns)
            sh(*ns, "ip", "link", "set", "lo", "up")
            sh(*ns, "ip", "addr", "add", f"{host.ns_ip}/30", "dev", host.ns_if)
            sh(*ns, "ip", "link", "set", host.ns_if, "up")
            sh(*ns, "ip", "route", "add", "default", "via", host.root_ip, "dev", host.ns_if)
            sh(*ns, "tc", "qdisc", "add", "dev", host.ns_if, "root", "tbf", "rate", f"{rate_bits(self.rate_bytes)}bit",
               "burst", str(self.burst_bytes), "latency", TBF_LATENCY)
        log(f"{count} simulated host(s) {self.prefix}-1..{count}, service address {self.service_ip}, "
            f"egress {self.rate_bytes / MIB:g} MiB/s each")

    def qdisc(self, host: Host) -> str:
        return sh("ip", "netns", "exec", host.netns, "tc", "qdisc", "show", "dev", host.ns_if).strip()

    def sent_bytes(self, host: Host) -> int:
        """What the host sent: the root-side veth's received bytes (layer 2, headers included)."""
        return int(Path(f"/sys/class/net/{host.root_if}/statistics/rx_bytes").read_text())

    def close(self) -> None:
        for host in reversed(self.hosts):
            sh("ip", "link", "del", host.root_if, check=False)  # the peer inside goes with it
            sh("ip", "netns", "del", host.netns, check=False)
        if self._service_added:
            sh("ip", "addr", "del", f"{self.service_ip}/32", "dev", "lo", check=False)
            self._service_added = False
        self.hosts = []

    def leftovers(self) -> dict[str, list[str]]:
        netns = [line.split()[0] for line in sh("ip", "netns", "list", check=False).splitlines()
                 if line.split() and line.split()[0].startswith(self.prefix + "-")]
        links = [m.group(1) for m in re.finditer(r"^\d+: ([^:@]+)", sh("ip", "-o", "link", "show", check=False),
                                                re.M) if m.group(1).startswith(self.link_prefix)]
        addrs = [self.service_ip] if self.service_ip and f" {self.service_ip}/" in sh(
            "ip", "-4", "-o", "addr", "show", "dev", "lo", check=False) else []
        return {"netns": netns, "links": links, "addresses": addrs}

    def wait_gone(self, timeout: float = 15.0) -> dict[str, list[str]]:
        """Namespaces are torn down asynchronously by the kernel: wait (bounded) until nothing is left."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.leftovers()
            if not any(left.values()) or time.monotonic() > deadline:
                return left
            time.sleep(0.1)


# --------------------------------------------------------------------------------------------------
# Processes on the simulated hosts
# --------------------------------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    env = bench.peer_env()
    for name in list(env):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") or name.startswith("MPUPLOAD_"):
            env.pop(name)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RootServer(bench.ServerProcess):
    """The discard endpoint or moto, listening on the service address (not on 127.0.0.1)."""

    def __init__(self, kind: str, workdir: Path, host: str) -> None:
        super().__init__(kind, workdir)
        self.host = host

    def start(self, timeout: float = 60.0) -> None:
        with open(self._log, "ab") as log_f:
            if self.kind == "discard":
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.discard_server", "--host", self.host, "--port", "0"],
                    cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_f,
                    preexec_fn=_pdeathsig)
                port = self._read_listening(timeout)
            elif self.kind == "moto":
                port = free_port(self.host)
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(port)],
                    cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log_f, stderr=log_f, preexec_fn=_pdeathsig)
            else:
                raise ValueError(f"unknown server {self.kind!r}")
        self.url = f"http://{self.host}:{port}"
        self._wait_ready(timeout)
        self._ps = psutil.Process(self.proc.pid)


@contextlib.contextmanager
def root_server(kind: str, workdir: Path, host: str) -> Iterator[RootServer]:
    server = RootServer(kind, workdir, host)
    try:
        server.start()
        bench.ensure_bucket(server.url)
        yield server
    finally:
        server.stop()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: by pid, this process only."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)


def proc_cpu(pid: int) -> float | None:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)


def proc_rchar(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split(":")[1])
    return None


class Cluster:
    """A ``dask scheduler`` on the service address and ``dask worker`` processes inside the namespaces."""

    def __init__(self, topo: Topology, workdir: Path) -> None:
        self.topo = topo
        self.workdir = workdir
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.address = ""

    def start_scheduler(self, timeout: float = 60.0) -> None:
        port = free_port(self.topo.service_ip)
        self.address = f"tcp://{self.topo.service_ip}:{port}"
        log_path = self.workdir / "scheduler.log"
        with open(log_path, "wb") as out:
            self.scheduler = subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", self.topo.service_ip,
                 "--port", str(port), "--no-dashboard"],
                env=clean_env(), cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_pdeathsig)
        wait_for(lambda: b"Scheduler at" in log_path.read_bytes(), timeout, "the dask scheduler",
                 lambda: self.scheduler is not None and self.scheduler.poll() is not None)

    def start_workers(self, count: int, timeout: float = 90.0) -> None:
        for host in self.topo.hosts[:count]:
            self.workers[host.index] = self._start_worker(host)
        wait_for(lambda: self.connected() >= count, timeout, f"{count} dask worker(s)",
                 lambda: any(p.poll() is not None for p in self.workers.values()))

    def _start_worker(self, host: Host) -> subprocess.Popen[bytes]:
        worker = [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nworkers", "1",
                  "--nthreads", str(NTHREADS), "--no-nanny", "--no-dashboard", "--host", host.ns_ip,
                  "--name", f"host{host.index}", "--local-directory", str(self.workdir / f"w{host.index}")]
        script = f"hostname mpub-host{host.index} && exec " + " ".join(_quote(w) for w in worker)
        # ip netns exec and unshare (without --fork) exec in place: the pid held is the worker's own
        argv = ["ip", "netns", "exec", host.netns, "unshare", "--uts", "sh", "-c", script]
        with open(self.workdir / f"worker-{host.index}.log", "ab") as out:
            return subprocess.Popen(argv, env=clean_env(), cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_pdeathsig)

    def connected(self) -> int:
        from distributed import Client

        with Client(self.address, timeout=10, set_as_default=False) as client:
            return len(client.nthreads())

    def stop_workers(self) -> None:
        for proc in self.workers.values():
            stop_process(proc)
        self.workers = {}
        if self.scheduler is not None and self.scheduler.poll() is None:
            with contextlib.suppress(Exception):
                wait_for(lambda: self.connected() == 0, 15, "the workers to leave the scheduler")

    def stop(self) -> None:
        self.stop_workers()
        if self.scheduler is not None:
            stop_process(self.scheduler)
            self.scheduler = None

    def pids(self) -> set[int]:
        out = {p.pid for p in self.workers.values()}
        if self.scheduler is not None:
            out.add(self.scheduler.pid)
        return out

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted(self.workdir.glob("*.log")))


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


def wait_for(cond: Any, timeout: float, what: str, failed: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if cond():
                return
        if failed is not None and failed():
            raise RuntimeError(f"gave up waiting for {what}: a process exited")
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


# --------------------------------------------------------------------------------------------------
# One upload
# --------------------------------------------------------------------------------------------------


@dataclass
class Upload:
    row: str  # cluster-1, cluster-2, ..., local-ns, local-root
    server: str
    hosts: int
    run: int
    ok: bool
    exit_code: int | None
    wall_s: float
    command: list[str] = field(default_factory=list)
    transfer_s: float | None = None  # started event -> completed event (their timestamps)
    transfer_mib_s: float | None = None
    engine_elapsed_s: float | None = None  # elapsed_seconds of the completed event
    wall_mib_s: float | None = None
    coordinator_cpu_s: float | None = None  # wait4 of the CLI: it and what it forked
    coordinator_cpu_s_per_gib: float | None = None
    coordinator_transfer_cpu_s: float | None = None  # the CLI's own CPU between its started/completed events
    coordinator_transfer_cpu_s_per_gib: float | None = None
    coordinator_orphans: int | None = None  # descendants of the CLI reaped by the runner (counted in its CPU)
    workers_cpu_s: float | None = None
    scheduler_cpu_s: float | None = None
    server_cpu_s: float | None = None
    sent_bytes: dict[str, int] = field(default_factory=dict)  # per namespace: root-side veth rx_bytes
    read_bytes: dict[str, int] = field(default_factory=dict)  # per worker: /proc/PID/io rchar
    started_workers: int | None = None
    started_hosts: int | None = None
    part_size: int | None = None
    parts_total: int | None = None
    loadavg_1m: float | None = None
    error: str | None = None


def _events(stdout: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and isinstance(event.get("event"), str):
                out.setdefault(event["event"], event)
                if event["event"] == "completed":
                    out["completed"] = event
    return out


def _epoch(event: dict[str, Any] | None) -> float | None:
    stamp = (event or {}).get("timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_LIBC = ctypes.CDLL(None, use_errno=True)


def _own_cpu(pid: int) -> float | None:
    """User+sys of the process itself (every thread, those that ended included) and the children it reaped (not
    the live ones). The process's own CPU clock counts nanoseconds (``clock_getcpuclockid``); ``/proc``'s figures
    count 10 ms ticks, as coarse as the cost being measured (a window of ~0.1 CPU-s read twice)."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    own = float(t.user + t.system)
    clock, ts = ctypes.c_int(), _Timespec()
    if _LIBC.clock_getcpuclockid(pid, ctypes.byref(clock)) == 0 \
            and _LIBC.clock_gettime(clock.value, ctypes.byref(ts)) == 0:
        own = ts.tv_sec + ts.tv_nsec / 1e9
    return own + float(t.children_user + t.children_system)


def measure_cli(argv: list[str], env: dict[str, str], timeout: float, workdir: Path,
                known: set[int]) -> tuple[int | None, float, dict[str, Any], str]:
    """Run the CLI to its end, as ``benchmarks.run.measure`` does (``os.wait4`` rusage, orphans reaped), and also
    read its CPU at the moment each of its ``started`` and ``completed`` events is read from its stdout: the
    coordinator's CPU *during the transfer*, without its start-up (imports, connecting) and shutdown."""
    out_path, err_path = workdir / "peer.out", workdir / "peer.err"
    at: dict[str, float | None] = {}
    with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
        started = time.monotonic()
        proc = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err_f, start_new_session=True)
        assert proc.stdout is not None
        stdout = proc.stdout

        def read() -> None:
            for line in stdout:
                out_f.write(line)
                for name in ("started", "completed"):
                    if name not in at and line.startswith(b'{"event":"%s"' % name.encode()):
                        at[name] = _own_cpu(proc.pid)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        timer = threading.Timer(timeout, lambda: _killpg(proc.pid))
        timer.start()
        try:
            reader.join()  # EOF: the CLI closed its stdout (it exited)
            _, status, ru = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl+C or SIGTERM of the runner: the CLI (its own session) goes too
            _killpg(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.close()
    orphans, o_user, o_sys = bench._reap_orphans(known)
    cpu = float(ru.ru_utime + ru.ru_stime) + o_user + o_sys
    window = None
    if at.get("started") is not None and at.get("completed") is not None:
        window = max(0.0, (at["completed"] or 0.0) - (at["started"] or 0.0))
    tail = err_path.read_bytes()[-bench.TAIL_CHARS:].decode("utf-8", "replace").strip()
    return proc.returncode, wall, {"cpu_s": cpu, "cpu_transfer_s": window, "orphans": orphans}, tail


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def upload_argv(file: Path, url: str, key: str, part_size: str, cluster: str | None,
                netns: str | None) -> list[str]:
    argv = [sys.executable, "-m", "mpupload", "upload", str(file), f"s3://{BUCKET}/{key}", "--endpoint-url", url,
            "--part-size", part_size, "--progress", "json", "--no-report"]
    if cluster:
        argv += ["--cluster", cluster]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return argv


def run_upload(row: str, hosts: int, run: int, server: RootServer, topo: Topology, cluster: Cluster | None,
               netns: str | None, file: Path, size: int, part_size: str, timeout: float,
               workdir: Path, keep: set[int]) -> Upload:
    """One upload; ``keep``: the runner's own children that must outlive it (the scheduler, the workers)."""
    key = f"cluster-bench/{server.kind}/{row}/run-{run}"
    argv = upload_argv(file, server.url, key, part_size, cluster.address if cluster else None, netns)
    env = clean_env()
    env["MPUPLOAD_CONFIG_DIR"] = str(workdir / "config")
    known = {p for p in ({server.pid} | keep) if p is not None}
    worker_pids = {f"{topo.hosts[i - 1].netns}": p.pid for i, p in (cluster.workers.items() if cluster else [])}
    sent0 = {h.netns: topo.sent_bytes(h) for h in topo.hosts}
    read0 = {ns: proc_rchar(pid) for ns, pid in worker_pids.items()}
    wcpu0 = {ns: proc_cpu(pid) for ns, pid in worker_pids.items()}
    scpu0 = proc_cpu(cluster.scheduler.pid) if cluster and cluster.scheduler else None
    server0 = server.cpu_seconds()
    load = os.getloadavg()[0]
    code, wall, m, tail = measure_cli(argv, env, timeout, workdir, known)
    up = Upload(row, server.kind, hosts, run, code == 0, code, wall, command=argv, loadavg_1m=load)
    server1 = server.cpu_seconds()
    if server0 is not None and server1 is not None:
        up.server_cpu_s = server1 - server0
    if cluster and cluster.scheduler:
        scpu1 = proc_cpu(cluster.scheduler.pid)
        up.scheduler_cpu_s = scpu1 - scpu0 if scpu0 is not None and scpu1 is not None else None
    wcpu = [(proc_cpu(pid) or 0.0) - (wcpu0[ns] or 0.0) for ns, pid in worker_pids.items()]
    up.workers_cpu_s = sum(wcpu) if worker_pids else None
    up.sent_bytes = {h.netns: topo.sent_bytes(h) - sent0[h.netns] for h in topo.hosts}
    up.read_bytes = {ns: (proc_rchar(pid) or 0) - (read0[ns] or 0) for ns, pid in worker_pids.items()}
    up.coordinator_cpu_s = m["cpu_s"]
    up.coordinator_cpu_s_per_gib = m["cpu_s"] / (size / GIB)
    if m["cpu_transfer_s"] is not None:
        up.coordinator_transfer_cpu_s = m["cpu_transfer_s"]
        up.coordinator_transfer_cpu_s_per_gib = m["cpu_transfer_s"] / (size / GIB)
    up.coordinator_orphans = int(m.get("orphans") or 0)
    up.wall_mib_s = size / MIB / wall if wall > 0 else None
    stdout = (workdir / "peer.out").read_text(errors="replace")
    events = _events(stdout)
    started, done = events.get("started"), events.get("completed")
    if started:
        up.started_workers = started.get("workers")
        up.started_hosts = started.get("hosts")
        up.part_size = started.get("part_size")
        up.parts_total = started.get("parts_total")
    t0, t1 = _epoch(started), _epoch(done)
    if t0 is not None and t1 is not None and t1 > t0:
        up.transfer_s = t1 - t0
        up.transfer_mib_s = size / MIB / up.transfer_s
    if done and isinstance(done.get("elapsed_seconds"), (int, float)):
        up.engine_elapsed_s = float(done["elapsed_seconds"])
    if code != 0:
        up.ok, up.error = False, f"exit code {code}: {tail[-1500:]}"
        if cluster:
            up.error += "\n" + cluster.logs()[-3000:]
    elif done is None or up.transfer_s is None:
        up.ok, up.error = False, f"no started/completed events on stdout: {stdout[-500:]}"
    else:
        problem = bench.check_object(server.url, key, size)
        if problem:
            up.ok, up.error = False, problem
    shares = ""
    if cluster:
        shares = " sent " + ", ".join(f"{ns.rsplit('-', 1)[1]}:{b / MIB:.0f}" for ns, b in up.sent_bytes.items()
                                      if b > MIB) + " MiB"
    log(f"{server.kind} {row} run {run}: {'ok' if up.ok else 'FAILED'} transfer "
        f"{_num(up.transfer_mib_s, 1)} MiB/s ({_num(up.transfer_s, 2)} s), wall {wall:.2f} s, coordinator "
        f"{_num(up.coordinator_cpu_s_per_gib, 3)} CPU-s/GiB{shares}" + (f"\n{up.error}" if up.error else ""))
    return up


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------

FIGURES = ("transfer_s", "transfer_mib_s", "wall_s", "wall_mib_s", "coordinator_cpu_s", "coordinator_cpu_s_per_gib",
           "coordinator_transfer_cpu_s", "coordinator_transfer_cpu_s_per_gib",
           "workers_cpu_s", "scheduler_cpu_s", "server_cpu_s")


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(uploads: list[Upload], size: int) -> dict[str, Any]:
    good = [u for u in uploads if u.ok]
    out: dict[str, Any] = {
        "ok_runs": len(good), "failed_runs": len(uploads) - len(good),
        "runs": [asdict(u) for u in uploads],
        "median": {k: _median([getattr(u, k) for u in good]) for k in FIGURES} if good else None,
    }
    if good:
        names = sorted({ns for u in good for ns in u.sent_bytes})
        sent = {ns: _median([float(u.sent_bytes.get(ns, 0)) for u in good]) for ns in names}
        out["sent_bytes"] = {ns: int(v or 0) for ns, v in sent.items()}
        out["sent_share"] = {ns: (v or 0) / size for ns, v in sent.items()}
        out["hosts_seen"] = good[-1].started_hosts
        out["workers_seen"] = good[-1].started_workers
        out["part_size"] = good[-1].part_size
        out["parts_total"] = good[-1].parts_total
    return out


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """``a x = b`` by Gaussian elimination with partial pivoting (a few unknowns; None when singular)."""
    n = len(b)
    m = [row[:] + [v] for row, v in zip(a, b)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-12:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [x - f * y for x, y in zip(m[r], m[col])]
    return [m[i][n] / m[i][i] for i in range(n)]


def coordinator_model(rows: dict[str, Any]) -> dict[str, Any] | None:
    """Least squares of the coordinator's CPU during the transfer over the cluster runs, as
    ``cpu = per_object + per_part × parts + per_second × transfer seconds``: the cost of the object (complete,
    verify), of a part (submit, result, journal), and of a second (the bar's ticks, reading the workers' reports,
    Dask's own loop). It needs runs with different part counts (``--alt-part-size``) and different durations (host
    counts). The steady cost per GiB, which a large upload tends to, is ``per_part × parts per GiB + per_second ×
    seconds per GiB``: :func:`steady_cpu_per_gib`."""
    pts = [(float(r["parts_total"]), float(r["transfer_s"]), float(r["coordinator_transfer_cpu_s"]))
           for name, row in rows.items() if name.startswith("cluster-") for r in row["runs"]
           if r["ok"] and r["parts_total"] and r["transfer_s"] and r["coordinator_transfer_cpu_s"] is not None]
    if len({p for p, _, _ in pts}) < 2 or len(pts) < 3:
        return None
    xs = [(1.0, p, t) for p, t, _ in pts]
    a = [[sum(x[i] * x[j] for x in xs) for j in range(3)] for i in range(3)]
    b = [sum(x[i] * c for x, (_, _, c) in zip(xs, pts)) for i in range(3)]
    sol = _solve(a, b)
    if sol is None:
        return None
    per_object, per_part, per_second = sol
    return {"per_object_ms": per_object * 1000, "per_part_ms": per_part * 1000, "per_second_ms": per_second * 1000,
            "points": len(pts), "fit": "cpu_transfer_s = per_object + per_part × parts + per_second × transfer_s"}


def steady_cpu_per_gib(model: dict[str, Any], part_size: int, mib_s: float) -> float:
    """The fitted coordinator CPU-s per GiB of a large upload at this aggregate rate and part size (the per-object
    cost spread over many GiB)."""
    return (model["per_part_ms"] * (GIB / part_size) + model["per_second_ms"] * (GIB / MIB / mib_s)) / 1000


def evaluate(server: dict[str, Any], nominal: float) -> None:
    """Ratios and targets of the cluster rows, against the per-host rate measured in one shaped namespace."""
    rows = server["rows"]
    server["coordinator_model"] = coordinator_model(rows)
    per_host = ((rows.get("local-ns") or {}).get("median") or {}).get("transfer_mib_s")
    server["per_host_mib_s"] = per_host
    server["per_host_source"] = "local executor inside one shaped namespace (transfer MiB/s)"
    server["nominal_mib_s"] = nominal
    for name, row in rows.items():
        med = row.get("median")
        if not name.startswith("cluster-") or not med:
            continue
        n = int(name.split("-")[1])
        agg = med["transfer_mib_s"]
        row["ratio_vs_per_host"] = agg / (n * per_host) if per_host else None
        row["ratio_vs_nominal"] = agg / (n * nominal)
        cpu = med["coordinator_transfer_cpu_s_per_gib"]
        model = server["coordinator_model"]
        steady = steady_cpu_per_gib(model, int(row["part_size"]), agg) \
            if model and row.get("part_size") and agg else None
        row["steady_cpu_s_per_gib"] = steady
        row["targets"] = [
            {"name": f"aggregate ≥ {TARGET_RATIO} × {n} × per-host", "value": row["ratio_vs_per_host"],
             "limit": TARGET_RATIO, "met": row["ratio_vs_per_host"] is not None
             and row["ratio_vs_per_host"] >= TARGET_RATIO},
            {"name": f"coordinator < {TARGET_CPU_S_PER_GIB} CPU-s/GiB during the transfer", "value": cpu,
             "limit": TARGET_CPU_S_PER_GIB, "met": cpu is not None and cpu < TARGET_CPU_S_PER_GIB},
            {"name": f"coordinator < {TARGET_CPU_S_PER_GIB} CPU-s/GiB steady (fitted: a large upload at this rate, "
                     "the per-object cost spread out)", "value": steady,
             "limit": TARGET_CPU_S_PER_GIB, "met": steady is not None and steady < TARGET_CPU_S_PER_GIB},
            {"name": f"coordinator < {TARGET_CPU_S_PER_GIB} CPU-s/GiB, whole command (start-up included)",
             "value": med["coordinator_cpu_s_per_gib"], "limit": TARGET_CPU_S_PER_GIB,
             "met": med["coordinator_cpu_s_per_gib"] < TARGET_CPU_S_PER_GIB},
        ]


def run_benchmark(args: argparse.Namespace, topo: Topology, tmp: Path) -> dict[str, Any]:
    size = args.size
    hosts = args.hosts
    doc: dict[str, Any] = {
        "benchmark": "cluster",
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": bench.machine_info(),
        "load_average_at_start": list(os.getloadavg()),
        "tools": {name: bench._dist_version(name) for name in ("mpupload", "boto3", "distributed", "dask", "moto")},
        "config": {
            "size_bytes": size, "hosts": hosts, "runs": args.runs, "servers": args.servers, "quick": args.quick,
            "rate_bytes_s": args.rate, "rate_mib_s": args.rate / MIB, "tbf_burst_bytes": args.burst,
            "tbf_latency": TBF_LATENCY, "nthreads_per_worker": NTHREADS, "part_size": args.part_size,
            "alt_part_size": args.alt_part_size,
            "prefix": topo.prefix, "network": str(topo.net), "local_root": not args.no_local_root,
        },
        "servers": {},
    }
    log(f"writing a {bench.human_size(size)} random file")
    file = bench.make_file(tmp, size)
    topo.create(max(hosts))
    doc["config"]["service_ip"] = topo.service_ip
    doc["config"]["qdisc"] = topo.qdisc(topo.hosts[0])
    cluster = Cluster(topo, tmp / "dask")
    (tmp / "dask").mkdir()
    cluster.start_scheduler()
    timeout = max(300.0, size / (args.rate * 0.5) * 2)
    try:
        for kind in args.servers:
            uploads: dict[str, list[Upload]] = {}
            order = (["local-root"] if not args.no_local_root else []) + ["local-ns"] + [f"cluster-{n}" for n in hosts]
            if args.alt_part_size:  # the largest cluster again with other parts: the coordinator's cost per part
                order.append(f"cluster-{hosts[-1]}-parts{args.alt_part_size}")
            for run in range(1, args.runs + 1):
                for row in order:
                    wd = tmp / f"{kind}-{row}-{run}"
                    wd.mkdir()
                    # moto keeps what it stored in memory: a fresh one for every upload
                    with root_server(kind, wd, topo.service_ip) as server:
                        if row.startswith("cluster-"):
                            n = int(row.split("-")[1])
                            part_size = row.split("-parts")[1] if "-parts" in row else args.part_size
                            cluster.start_workers(n)
                            try:
                                up = run_upload(row, n, run, server, topo, cluster, None, file, size,
                                                part_size, timeout, wd, cluster.pids())
                            finally:
                                cluster.stop_workers()
                        else:
                            netns = topo.hosts[0].netns if row == "local-ns" else None
                            up = run_upload(row, 1 if netns else 0, run, server, topo, None, netns, file, size,
                                            args.part_size, timeout, wd, cluster.pids())
                    uploads.setdefault(row, []).append(up)
            entry = {"label": bench.SERVER_LABELS[kind], "rows": {r: summarize(u, size) for r, u in uploads.items()}}
            evaluate(entry, args.rate / MIB)
            doc["servers"][kind] = entry
    finally:
        cluster.stop()
    doc["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return doc


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


ROW_LABELS = {"local-root": "local executor, root namespace (unshaped)",
              "local-ns": "local executor, 1 shaped host (the per-host rate)"}


def row_label(name: str) -> str:
    if name.startswith("cluster-"):
        n = int(name.split("-")[1])
        parts = f", {name.split('-parts')[1]} parts" if "-parts" in name else ""
        return f"cluster, {n} host{'s' if n > 1 else ''}{parts}"
    return ROW_LABELS.get(name, name)


def server_table(kind: str, s: dict[str, Any], size: int) -> list[str]:
    loads = [r["loadavg_1m"] for row in s["rows"].values() for r in row["runs"] if r.get("loadavg_1m") is not None]
    load = (f"; 1-min load average {min(loads):.1f}–{max(loads):.1f} at the uploads' starts (this benchmark's own "
            "processes included)") if loads else ""
    out = [f"**{s['label']}** — per-host rate {_num(s.get('per_host_mib_s'), 1)} MiB/s "
           f"(measured: the local executor inside one shaped namespace; shaped at {s['nominal_mib_s']:g} MiB/s)"
           f"{load}",
           "",
           "| run | hosts seen | transfer MiB/s | × N × per-host | × N × shaped rate | wall s | MiB/s (wall) | "
           "coordinator CPU-s/GiB, transfer | CLI CPU-s/GiB, whole command | workers CPU-s/GiB | scheduler CPU-s | "
           "sent per host MiB | targets (speed; CPU) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    gib = size / GIB
    for name, row in s["rows"].items():
        med = row.get("median")
        if not med:
            out.append(f"| {row_label(name)} | failed ({row['failed_runs']} run(s)) | | | | | | | | | | | |")
            continue
        per_ns = list((row.get("sent_bytes") or {}).values())
        used = 0 if name == "local-root" else 1 if name == "local-ns" else int(name.split("-")[1])
        sent = " / ".join(f"{b / MIB:.0f}" for b in per_ns[:used]) if used else "– (no veth)"
        targets = "; ".join(f"{'met' if t['met'] else 'NOT met'}" for t in (row.get("targets") or [])[:2]) or "–"
        cluster = name.startswith("cluster-")
        workers = med.get("workers_cpu_s")  # None on the local rows
        wgib = workers / gib if workers is not None else None
        out.append(
            f"| {row_label(name)} | {row.get('hosts_seen') if name.startswith('cluster-') else '–'} | "
            f"{_num(med['transfer_mib_s'], 1)} | {_num(row.get('ratio_vs_per_host'), 2)} | "
            f"{_num(row.get('ratio_vs_nominal'), 2)} | {_num(med['wall_s'], 2)} | {_num(med['wall_mib_s'], 1)} | "
            f"{_num(med['coordinator_transfer_cpu_s_per_gib'] if cluster else None, 3)} | "
            f"{_num(med['coordinator_cpu_s_per_gib'], 2)} | {_num(wgib, 2)} | "
            f"{_num(med.get('scheduler_cpu_s'), 2)} | {sent} | {targets} |")
    return out


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    c = doc["config"]
    la = doc.get("load_average_at_start") or []
    tools = ", ".join(f"{k} {v}" for k, v in (doc.get("tools") or {}).items() if v)
    out = [
        (f"Machine: {m['cpu_model']}, {m['nproc']} vCPU, {m['memory_gib']} GiB RAM, {m.get('os', '')}, Linux "
         f"{m['kernel']}, Python {m['python']} — measured {doc.get('generated_at', '')[:16].replace('T', ' ')} UTC"
         + (f" (load average {la[0]:.2f} at the start)" if la else "") + f"; {tools}."),
        "",
        (f"One {bench.human_size(c['size_bytes'])} random file on the root filesystem (shared by every namespace), "
         f"`--part-size {c['part_size']}`, {c['runs']} run(s) per row (medians). Each simulated host is a network "
         f"namespace whose veth is shaped to {c['rate_mib_s']:g} MiB/s on egress (`tbf rate "
         f"{rate_bits(c['rate_bytes_s'])}bit burst {c['tbf_burst_bytes']} latency {c['tbf_latency']}`: layer-2 bytes,"
         f" so at most ~95 % of it is TCP payload) and runs one `dask worker --nthreads {c['nthreads_per_worker']}`; "
         "the coordinator (the CLI), the scheduler and the S3 endpoint run in the root namespace. *transfer MiB/s* is "
         "the file's size over the time from the CLI's `started` event to its `completed` event; *coordinator "
         "CPU-s/GiB, transfer* is the CLI process's own user+sys between those two events (its CPU clock, read "
         "as each event appears), *CLI CPU-s/GiB, whole command* its `os.wait4` user+sys from start to exit (start-up "
         "included; on the local rows the whole process tree, its worker processes included); the workers' and "
         "the scheduler's CPU are read apart from `/proc`; *sent per host* is what each namespace's veth carried "
         "(headers included). Method: "
         "[benchmarks/README.md](benchmarks/README.md#cluster-hosts-simulated-with-network-namespaces-benchmarksclusterpy)."),
    ]
    for kind, s in doc["servers"].items():
        out += [""] + server_table(kind, s, c["size_bytes"])
        model = s.get("coordinator_model")
        if model:
            out += ["", (f"Coordinator CPU during the transfer, fitted over the {model['points']} cluster runs as "
                         f"*per object + per part × parts + per second × transfer s*: "
                         + (f"{model['per_object_ms']:.0f} ms per object (complete, verify), "
                            if model["per_object_ms"] >= 0 else
                            f"no measurable cost per object (fitted {model['per_object_ms']:.0f} ms), ") +
                         f"{model['per_part_ms']:.2f} ms per part, {model['per_second_ms']:.2f} ms per second.")]
    lines = []
    for kind, s in doc["servers"].items():
        for name, row in s["rows"].items():
            for t in row.get("targets") or []:
                v = t["value"]
                lines.append(f"{kind} {row_label(name)}: {t['name']} — {_num(v, 3)}: "
                             f"{'met' if t['met'] else 'NOT met'}")
    if lines:
        out += ["", "Targets (issue 14; per-host = the measured one-host rate):", ""] + [f"* {x}" for x in lines]
    return "\n".join(out) + "\n"


def replace_block(readme: Path, block: str) -> None:
    text = readme.read_text()
    start = text.find(START)
    end = text.find(END, start + len(START)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise ValueError(f"{readme}: markers {START} … {END} not found")
    readme.write_text(text[: start + len(START)] + "\n" + block + text[end:])


def publish(doc: dict[str, Any], readme: Path | None, stream: Any) -> int:
    block = render(doc)
    print(block, end="", file=stream)
    if readme:
        try:
            replace_block(readme, block)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


def failures(doc: dict[str, Any]) -> list[str]:
    out = []
    for kind, s in doc.get("servers", {}).items():
        for name, row in s["rows"].items():
            for r in row["runs"]:
                if not r["ok"]:
                    out.append(f"{kind}/{name} run {r['run']}: {(r.get('error') or '')[:300]}")
    left = doc.get("leftovers") or {}
    if any(left.values()):
        out.append(f"left behind: {left}")
    return out


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def _hosts(text: str) -> list[int]:
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of host counts: {text!r}") from None
    if not values or values[0] < 1 or values[-1] > 16:
        raise argparse.ArgumentTypeError("host counts go from 1 to 16")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=bench.parse_size, default=None, help="file size (default 1GiB; --quick 256MiB)")
    parser.add_argument("--hosts", type=_hosts, default=[1, 2, 3], help="comma list of simulated host counts")
    parser.add_argument("--rate", type=bench.parse_size, default=30 * MIB,
                        help="egress rate of each simulated host per second (default 30MiB)")
    parser.add_argument("--burst", type=bench.parse_size, default=None,
                        help="tbf burst (default: 10 ms at the rate, at least 256 KiB)")
    parser.add_argument("--part-size", default="64MiB",
                        help="--part-size of every upload (default 64MiB, mpupload's own default)")
    parser.add_argument("--alt-part-size", default="16MiB",
                        help="the largest cluster once more with this part size (default 16MiB; '' skips it)")
    parser.add_argument("--servers", default=None, help="comma list of discard,moto (default both; --quick discard)")
    parser.add_argument("--runs", type=int, default=1, help="runs per row")
    parser.add_argument("--no-local-root", action="store_true", help="skip the unshaped local run")
    parser.add_argument("--quick", action="store_true", help="256 MiB, discard endpoint only")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    parser.add_argument("--readme", type=Path, help="replace the cluster block of this file with the table")
    parser.add_argument("--render", type=Path, help="only render this results file (with --readme: into it)")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the file is written")
    args = parser.parse_args(argv)
    if args.render:
        return publish(json.loads(args.render.read_text()), args.readme, sys.stdout)
    if os.geteuid() != 0:
        parser.error("must run as root (it creates network namespaces, veth pairs and tc qdiscs)")
    args.size = args.size or (256 * MIB if args.quick else GIB)
    args.servers = [s.strip() for s in (args.servers or ("discard" if args.quick else "discard,moto")).split(",")
                    if s.strip()]
    if any(s not in bench.SERVER_LABELS for s in args.servers) or args.runs < 1:
        parser.error(f"unknown server in {args.servers} (discard, moto) or --runs < 1")
    args.burst = args.burst or max(256 * 1024, args.rate // 100)

    # SIGTERM and SIGHUP unwind like Ctrl+C, so the finally below removes what was made
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    bench.become_subreaper()
    bench.warm_bytecode()
    topo = Topology(f"mpub-{os.getpid()}", pick_network(), args.rate, args.burst)
    started = time.monotonic()
    doc: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="mpupload-cluster-", dir=args.tmpdir) as tmp:
            try:
                doc = run_benchmark(args, topo, Path(tmp))
            finally:
                topo.close()
                left = topo.wait_gone()
                if any(left.values()):
                    log(f"LEFT BEHIND: {left}")
                else:
                    log(f"removed every namespace, link and address of {topo.prefix}")
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    doc["duration_s"] = round(time.monotonic() - started, 1)
    doc["leftovers"] = left
    if args.out:
        bench_write_json(args.out, doc)
    else:
        print(json.dumps(doc, indent=2))
    rc = publish(doc, args.readme, sys.stdout if args.out else sys.stderr)
    bad = failures(doc)
    for line in bad:
        log(f"FAILED {line}")
    return 1 if bad else rc


def bench_write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    log(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
