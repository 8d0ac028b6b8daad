"""A throw-away single-node Ceph RADOS Gateway (Debian's Ceph 16.2.x) for the integration tests.

``start_ceph(workdir)`` builds a whole cluster from nothing inside ``workdir`` and returns an
:class:`~tests.support.s3server.S3Server` for it.  Nothing outside ``workdir`` is written (the daemons
only read their binaries, object-class plugins and ``/etc/mime.types``), so two test sessions on one
machine cannot collide: every program gets ``--cluster ceph --conf workdir/ceph.conf``, the config
points every path option into ``workdir``, and the mon and radosgw listen on free 127.0.0.1 ports.
Layout of ``workdir``::

    ceph.conf          the only config: fsid, mon address, all paths, fast-start tuning
    keyring            keys of mon., client.admin, osd.0 and client.rgw.gw (imported by the mon mkfs)
    monmap             the initial monitor map
    mon/ceph-a/        monitor store (RocksDB)
    osd/ceph-0/        OSD data dir; ``block`` is a sparse file with BlueStore in it
    run/               admin sockets (*.asok) and pid files
    log/               daemon logs (ceph-*.log), their stderr (*.out), the cluster log (ceph.log)
    crash/ tmp/ rgw/   crash dumps, scratch, radosgw data dir

Start-up, each step waiting on a condition with a deadline (never a bare sleep):

1. keyring, monmap, ``ceph-mon --mkfs``; start ``ceph-mon -f``; wait until its admin socket says it
   is the leader (the quorum of one);
2. ``ceph osd new``, ``ceph-osd --mkfs``; start ``ceph-osd -f``; wait until its admin socket says
   ``active`` (booted and marked up);
3. ``radosgw-admin user create`` (this also creates the default zone and its pools); start
   ``radosgw -f`` with the beast frontend (HTTP, or HTTPS with ``tls=(cert, key)``); wait until it
   answers HTTP.

The OSD uses BlueStore on a sparse file: memory stays bounded (peak RSS of the three daemons ~375 MiB
after 1 GiB in 16 MiB parts, 8 at a time), where MemStore keeps every stored byte in the OSD's RSS.
MemStore is the fallback when ``workdir`` is on a file system without ``O_DIRECT`` (which BlueStore needs).

Daemons run in the foreground as children of the test process, each in its own session, with
``PR_SET_PDEATHSIG=SIGKILL`` so that they die with the test process even when it is SIGKILLed.  The
death signal follows the *thread* that started them: call ``start_ceph`` from the main thread (or a
thread that outlives the cluster).  ``python -m tests.support.ceph [workdir]`` starts one and times it.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import string
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.support.s3server import S3Server, free_port

CLUSTER = "ceph"
MON_ID = "a"
OSD_ID = 0
RGW_NAME = "client.rgw.gw"
S3_USER = "mpupload"
BINARIES = ("ceph", "ceph-authtool", "monmaptool", "ceph-mon", "ceph-osd", "radosgw", "radosgw-admin")
#: size of BlueStore's sparse block file (only what is written takes disk space)
BLUESTORE_BYTES = 16 * 1024**3
#: MemStore's capacity; the OSD refuses writes ("full") near it
MEMSTORE_BYTES = 1024**3

ObjectStore = Literal["auto", "bluestore", "memstore"]

_PR_SET_PDEATHSIG = 1


class CephStartError(RuntimeError):
    """The cluster did not come up; the message carries the tail of the relevant daemon log."""


def missing_binaries() -> list[str]:
    """The Ceph programs this module needs that are not on PATH (empty when all are installed)."""
    return [name for name in BINARIES if shutil.which(name) is None]


# --------------------------------------------------------------------------------------------------
# layout and configuration


@dataclass(frozen=True)
class _Layout:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "ceph.conf"

    @property
    def keyring(self) -> Path:
        return self.root / "keyring"

    @property
    def monmap(self) -> Path:
        return self.root / "monmap"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "log"

    def asok(self, name: str) -> Path:
        return self.run / f"{CLUSTER}-{name}.asok"

    def logfile(self, name: str) -> Path:
        return self.log / f"{CLUSTER}-{name}.log"

    def outfile(self, name: str) -> Path:
        return self.log / f"{name}.out"

    def make_dirs(self) -> None:
        for sub in ("mon", f"osd/{CLUSTER}-{OSD_ID}", "rgw", "run", "log", "crash", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)


def _supports_o_direct(directory: Path) -> bool:
    probe = directory / ".o_direct_probe"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | getattr(os, "O_DIRECT", 0), 0o600)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True


def _objectstore_options(objectstore: ObjectStore) -> str:
    if objectstore == "memstore":
        return f"osd objectstore = memstore\nmemstore device bytes = {MEMSTORE_BYTES}\n"
    return f"""\
osd objectstore = bluestore
bluestore block create = true
bluestore block size = {BLUESTORE_BYTES}
bluestore fsck on mkfs = false
bluestore fsck on mount = false
bluestore cache autotune = false
bluestore cache size = 64M
bluestore rocksdb options = compression=kNoCompression,max_write_buffer_number=2,\
min_write_buffer_number_to_merge=1,recycle_log_file_num=2,write_buffer_size=16777216
"""


def _frontend(port: int, tls: tuple[str, str] | None) -> str:
    if tls is None:
        return f"beast endpoint=127.0.0.1:{port}"
    cert, key = tls
    return f"beast ssl_endpoint=127.0.0.1:{port} ssl_certificate={cert} ssl_private_key={key}"


@dataclass(frozen=True)
class _Settings:
    fsid: str
    mon_port: int
    rgw_port: int
    tls: tuple[str, str] | None
    objectstore: ObjectStore


def _config(lay: _Layout, s: _Settings) -> str:
    root = lay.root
    return f"""\
[global]
fsid = {s.fsid}
mon host = v2:127.0.0.1:{s.mon_port}
mon initial members = {MON_ID}
public addr = 127.0.0.1
ms bind msgr1 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {lay.keyring}
run dir = {lay.run}
admin socket = $run_dir/$cluster-$name.asok
pid file = $run_dir/$cluster-$name.pid
log file = {lay.log}/$cluster-$name.log
log to stderr = false
err to stderr = true
mon cluster log file = {lay.log}/$cluster.log
mon debug dump location = {lay.log}/$cluster-$name.tdump
crash dir = {root}/crash
tmp dir = {root}/tmp
mon data = {root}/mon/$cluster-$id
osd data = {root}/osd/$cluster-$id
osd journal = {root}/osd/$cluster-$id/journal
mgr data = {root}/mgr/$cluster-$id
mds data = {root}/mds/$cluster-$id
rgw data = {root}/rgw/$cluster-$id
# one OSD: no replication and no warnings about it; few PGs (fast peering, little memory)
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
# fast start: commit paxos proposals at once instead of batching them for a second
paxos propose interval = 0.01
paxos min wait = 0.001
mon client hunt interval = 0.5

[mon]
# never shut the mon down because the disk of a CI runner is nearly full
mon data avail warn = 1
mon data avail crit = 0

[osd]
{_objectstore_options(s.objectstore)}\
osd op num shards = 2
osd op num threads per shard = 1
osd mon report interval = 1
osd scrub min interval = 31536000
osd scrub max interval = 31536000
osd deep scrub interval = 31536000

[client.admin]
admin socket =
log file = {lay.log}/$cluster-$name.$pid.log

[{RGW_NAME}]
rgw frontends = {_frontend(s.rgw_port, s.tls)}
rgw thread pool size = 64
rgw init timeout = 120
rgw enable usage log = false
rgw run sync thread = false
rgw dynamic resharding = false
rgw crypt require ssl = false
# give the space of deleted objects back within a minute rather than after two hours
rgw gc obj min wait = 30
rgw gc processor period = 30
"""


# --------------------------------------------------------------------------------------------------
# processes


def kill_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: SIGKILL the child when its parent dies, even if the parent was SIGKILLed."""

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _child_env() -> dict[str, str]:
    # /usr/bin/ceph is a Python script for the system interpreter: keep the venv's settings away from it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CEPH_"))}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def _common_args(lay: _Layout) -> list[str]:
    return ["--cluster", CLUSTER, "--conf", str(lay.conf)]


def _run(lay: _Layout, argv: Sequence[str], timeout: float, what: str) -> str:
    """Run a Ceph command line tool to completion; raise CephStartError with its output on failure."""
    try:
        proc = subprocess.run(
            list(argv),
            check=False,
            cwd=lay.root,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=kill_with_parent(os.getpid()),
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise CephStartError(f"{what}: timed out after {exc.timeout:.0f}s: {' '.join(argv)}") from exc
    if proc.returncode != 0:
        raise CephStartError(
            f"{what}: exit status {proc.returncode}: {' '.join(argv)}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        )
    return proc.stdout


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


@dataclass
class _Daemon:
    name: str  # Ceph entity name: mon.a, osd.0, client.rgw.gw
    proc: subprocess.Popen[bytes]
    logfile: Path
    outfile: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.outfile, self.logfile):  # stderr first: it holds the errors
            text = _tail(path, lines)
            if text:
                parts.append(f"--- {path} (last {lines} lines) ---\n{text}")
        return "\n".join(parts) or f"(no log output from {self.name})"

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL to the whole process group after ``timeout`` s; always reaps."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # also anything the daemon forked
        self.proc.wait()


def _spawn(lay: _Layout, name: str, argv: Sequence[str]) -> _Daemon:
    outfile = lay.outfile(name)
    with outfile.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            cwd=lay.root,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=kill_with_parent(os.getpid()),  # noqa: PLW1509 - PR_SET_PDEATHSIG
            start_new_session=True,
        )
    return _Daemon(name=name, proc=proc, logfile=lay.logfile(name), outfile=outfile)


@dataclass
class _Cluster:
    """The daemons started so far, in start order; each is added as soon as it is spawned."""

    lay: _Layout
    daemons: list[_Daemon] = field(default_factory=list)
    stopped: bool = False

    def spawn(self, name: str, argv: Sequence[str]) -> _Daemon:
        daemon = _spawn(self.lay, name, argv)
        self.daemons.append(daemon)
        return daemon

    def stop(self, timeout: float = 10.0) -> None:
        """Stop in reverse start order, so the OSD can still tell the mon it is going down."""
        if self.stopped:
            return
        self.stopped = True
        for daemon in reversed(self.daemons):
            daemon.stop(timeout)


# --------------------------------------------------------------------------------------------------
# readiness probes


def _asok(path: Path, prefix: str, timeout: float = 2.0) -> Any:
    """Send one command to a daemon's admin socket and decode its JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"prefix": prefix, "format": "json"}).encode() + b"\0")
        (size,) = struct.unpack(">I", _recv_exactly(s, 4))
        return json.loads(_recv_exactly(s, size))


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("admin socket closed early")
        buf += chunk
    return bytes(buf)


def _http_answers(port: int, tls: bool) -> bool:
    conn: http.client.HTTPConnection
    if tls:  # only "is it up": the caller checks the certificate with its own CA bundle
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=ctx)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status < 500
    finally:
        conn.close()


def _wait_for(daemon: _Daemon, predicate: Callable[[], bool], deadline: float, what: str) -> None:
    """Poll ``predicate`` until true; fail with the daemon's log if it exits or the deadline passes."""
    while True:
        if not daemon.alive():
            raise CephStartError(
                f"{daemon.name} exited with status {daemon.proc.returncode} while waiting for {what}\n"
                + daemon.log_tail()
            )
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise CephStartError(f"timed out waiting for {what}\n" + daemon.log_tail())
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------------
# the steps


def _remaining(deadline: float) -> float:
    return max(1.0, deadline - time.monotonic())


_CAPS: dict[str, list[tuple[str, str]]] = {
    "mon.": [("mon", "allow *")],
    "client.admin": [("mon", "allow *"), ("osd", "allow *"), ("mgr", "allow *"), ("mds", "allow *")],
    f"osd.{OSD_ID}": [("mon", "allow profile osd"), ("mgr", "allow profile osd"), ("osd", "allow *")],
    RGW_NAME: [("mon", "allow rw"), ("mgr", "allow rw"), ("osd", "allow rwx")],
}


def _make_keyring(lay: _Layout) -> None:
    """One keyring for every entity; the mon mkfs imports all of it into the auth database."""
    for i, (entity, caps) in enumerate(_CAPS.items()):
        argv = ["ceph-authtool", *(["--create-keyring"] if i == 0 else []), str(lay.keyring)]
        argv += ["--gen-key", "-n", entity]
        for kind, cap in caps:
            argv += ["--cap", kind, cap]
        _run(lay, argv, 10, "ceph-authtool")


def _start_mon(cluster: _Cluster, s: _Settings, deadline: float) -> None:
    lay = cluster.lay
    addr = f"[v2:127.0.0.1:{s.mon_port}]"
    _run(
        lay,
        ["monmaptool", "--create", "--fsid", s.fsid, "--addv", MON_ID, addr, str(lay.monmap)],
        10,
        "monmaptool",
    )
    args = [*_common_args(lay), "-i", MON_ID]
    mkfs = ["--mkfs", "--monmap", str(lay.monmap), "--keyring", str(lay.keyring)]
    _run(lay, ["ceph-mon", *args, *mkfs], _remaining(deadline), "ceph-mon --mkfs")
    mon = cluster.spawn(f"mon.{MON_ID}", ["ceph-mon", *args, "-f"])
    asok = lay.asok(f"mon.{MON_ID}")
    _wait_for(
        mon, lambda: _asok(asok, "mon_status").get("state") == "leader", deadline, "the mon to form a quorum"
    )


def _ceph(lay: _Layout, deadline: float, *cmd: str) -> str:
    timeout = _remaining(deadline)
    argv = ["ceph", *_common_args(lay), "--connect-timeout", str(int(timeout)), *cmd]
    return _run(lay, argv, timeout + 5, "ceph " + " ".join(cmd))


def _start_osd(cluster: _Cluster, deadline: float) -> None:
    lay = cluster.lay
    osd_uuid = str(uuid.uuid4())
    _ceph(lay, deadline, "osd", "new", osd_uuid, str(OSD_ID))
    args = [*_common_args(lay), "-i", str(OSD_ID)]
    _run(lay, ["ceph-osd", *args, "--mkfs", "--osd-uuid", osd_uuid], _remaining(deadline), "ceph-osd --mkfs")
    osd = cluster.spawn(f"osd.{OSD_ID}", ["ceph-osd", *args, "-f"])
    asok = lay.asok(f"osd.{OSD_ID}")
    _wait_for(osd, lambda: _asok(asok, "status").get("state") == "active", deadline, "the OSD to boot")


def _random_key(n: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _create_user(lay: _Layout, deadline: float) -> tuple[str, str]:
    access = _random_key(20, string.ascii_uppercase + string.digits)
    secret = _random_key(40, string.ascii_letters + string.digits)
    argv = ["radosgw-admin", *_common_args(lay), "-n", RGW_NAME, "user", "create", "--uid", S3_USER]
    argv += ["--display-name", "mpupload tests", "--access-key", access, "--secret-key", secret]
    keys = json.loads(_run(lay, argv, _remaining(deadline), "radosgw-admin user create"))["keys"][0]
    return str(keys["access_key"]), str(keys["secret_key"])


def _rgw_ready(rgw: _Daemon, s: _Settings) -> bool:
    # with an unusable certificate radosgw runs on and fails every handshake: fail fast instead
    if s.tls is not None and "ssl_" in _tail(rgw.outfile, 20):
        raise CephStartError("radosgw cannot use the TLS certificate or key\n" + rgw.log_tail())
    return _http_answers(s.rgw_port, s.tls is not None)


def _start_rgw(cluster: _Cluster, s: _Settings, deadline: float) -> None:
    rgw = cluster.spawn(RGW_NAME, ["radosgw", *_common_args(cluster.lay), "-n", RGW_NAME, "-f"])
    _wait_for(rgw, lambda: _rgw_ready(rgw, s), deadline, f"radosgw on 127.0.0.1:{s.rgw_port}")


def _tls_paths(tls: tuple[str, str] | None) -> tuple[str, str] | None:
    """Absolute paths; checked here because radosgw runs on without them and just fails handshakes."""
    if tls is None:
        return None
    paths = (Path(tls[0]).resolve(), Path(tls[1]).resolve())
    for path in paths:
        if not os.access(path, os.R_OK):
            raise CephStartError(f"TLS file not readable: {path}")
    return str(paths[0]), str(paths[1])


def _settings(lay: _Layout, tls: tuple[str, str] | None, objectstore: ObjectStore) -> _Settings:
    if objectstore == "auto":
        objectstore = "bluestore" if _supports_o_direct(lay.root) else "memstore"
    mon_port = free_port()
    rgw_port = free_port()
    while rgw_port == mon_port:  # each port's probe socket is closed before the next is picked
        rgw_port = free_port()
    return _Settings(str(uuid.uuid4()), mon_port, rgw_port, _tls_paths(tls), objectstore)


def start_ceph(
    workdir: Path,
    *,
    tls: tuple[str, str] | None = None,
    timeout: float = 120,
    objectstore: ObjectStore = "auto",
) -> S3Server:
    """Start mon + OSD + radosgw inside ``workdir``; return its S3 endpoint and a fresh user's keys.

    ``tls=(cert_path, key_path)`` serves HTTPS; the caller sets ``ca_bundle`` on the result.  The
    result's ``stop()`` stops every daemon and may be called twice; ``workdir`` stays for inspection.
    Raises :class:`CephStartError` (with the failing daemon's log tail) after stopping what started.
    """
    missing = missing_binaries()
    if missing:
        raise CephStartError(
            f"Ceph programs not found: {', '.join(missing)}; run scripts/ensure-system-deps.sh"
        )
    deadline = time.monotonic() + timeout
    lay = _Layout(Path(workdir).resolve())
    lay.make_dirs()
    settings = _settings(lay, tls, objectstore)
    lay.conf.write_text(_config(lay, settings))
    cluster = _Cluster(lay)
    try:
        _make_keyring(lay)
        _start_mon(cluster, settings, deadline)
        _start_osd(cluster, deadline)
        access, secret = _create_user(lay, deadline)
        _start_rgw(cluster, settings, deadline)
    except BaseException:
        cluster.stop()
        raise
    return _server(cluster, settings, access, secret)


def _server(cluster: _Cluster, s: _Settings, access: str, secret: str) -> S3Server:
    server = S3Server(
        name="ceph" if s.tls is None else "ceph+https",
        endpoint_url=f"{'http' if s.tls is None else 'https'}://127.0.0.1:{s.rgw_port}",
        access_key=access,
        secret_key=secret,
        region="us-east-1",
        ca_bundle=None,
        pids=[d.proc.pid for d in cluster.daemons],
    )

    def stop_hook() -> None:
        cluster.stop()
        server.pids = []  # all reaped: S3Server.stop() then signals no (possibly reused) PID

    server.stop_hook = stop_hook
    return server


def _main(argv: Sequence[str]) -> None:
    import tempfile

    where = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="ceph-"))
    started = time.monotonic()
    server = start_ceph(where)
    print(
        f"up in {time.monotonic() - started:.1f}s: {server.endpoint_url} (workdir {where}, pids {server.pids})"
    )
    try:
        print("buckets:", server.client().list_buckets()["Buckets"])
    finally:
        server.stop()


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
