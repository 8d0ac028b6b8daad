"""A real Dask cluster for the tests: a ``dask scheduler`` process and ``dask worker`` processes (no nanny: the pid
the test holds is the worker itself), on free 127.0.0.1 ports, started with this suite's Python and stopped by pid.

Workers get the environment the test gives them (their own credential chain: the S3 server's keys), never the
coordinator's. ``start_worker(prefix=[...])`` runs a worker under a wrapper command (``unshare -m ... sh -c``), for
a worker that sees a different file at the same path.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.s3server import die_with_parent, free_port, stop_pids, wait_until


def proc_io(pid: int) -> dict[str, int]:
    """``/proc/PID/io`` of a process: ``rchar`` counts every byte it read (its source parts among them)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/io") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            out[name.strip()] = int(value)
    return out


@dataclass
class DaskWorker:
    pid: int
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class DaskCluster:
    address: str
    scheduler: subprocess.Popen[bytes]
    workdir: Path
    workers: list[DaskWorker] = field(default_factory=list)

    def client_workers(self) -> dict[str, int]:
        """The scheduler's workers (address -> threads), asked with a short-lived client."""
        from distributed import Client

        with Client(self.address, timeout=10, set_as_default=False) as client:
            return dict(client.nthreads())

    def start_worker(self, env: dict[str, str], *, private_mount: tuple[Path, Path] | None = None,
                     nthreads: int = 2, prefix: list[str] | None = None) -> DaskWorker:
        """One more worker; ``private_mount=(other, source)``: it runs in a mount namespace of its own where
        ``other`` is bind-mounted over ``source`` (it sees another file at the same path; needs root); ``prefix``:
        a command it runs under (``setpriv ...``)."""
        n = len(self.workers)
        log = self.workdir / f"worker-{n}.log"
        cmd = [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nworkers", "1", "--nthreads",
               str(nthreads), "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{n}",
               "--local-directory", str(self.workdir / f"w{n}")]
        if private_mount is not None:
            other, source = private_mount
            script = f"mount --bind {_quote(str(other))} {_quote(str(source))} && exec {' '.join(map(_quote, cmd))}"
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        if prefix:
            cmd = [*prefix, *cmd]
        with open(log, "wb") as out:
            popen = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=str(Path(__file__).resolve().parents[2]), preexec_fn=die_with_parent())
        worker = DaskWorker(popen.pid, popen, log)
        self.workers.append(worker)
        return worker

    def wait_workers(self, count: int, timeout: float = 60) -> None:
        wait_until(lambda: len(self.client_workers()) >= count, timeout, f"{count} dask workers")

    def worker_pid(self, worker: DaskWorker) -> int:
        """The pid of the worker's Python process (under a wrapper, its child that exec'd last)."""
        import psutil

        proc = psutil.Process(worker.pid)
        while True:
            if "distributed.cli.dask_worker" in " ".join(proc.cmdline()) and proc.name().startswith("python"):
                return proc.pid
            children = proc.children()
            if not children:
                return worker.pid
            proc = children[0]

    def kill_scheduler(self) -> None:
        self.scheduler.send_signal(signal.SIGKILL)
        self.scheduler.wait(10)

    def stop(self) -> None:
        stop_pids([w.pid for w in self.workers] + [self.scheduler.pid], timeout=10)
        for w in self.workers:
            w.popen.wait(5)
        self.scheduler.wait(5)

    def logs(self) -> str:
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


def worker_env(base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_cluster(workdir: Path, env: dict[str, str], *, workers: int = 3, nthreads: int = 2,
                  timeout: float = 90) -> DaskCluster:
    """A scheduler and ``workers`` worker processes; waits until they are all connected."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = workdir / "scheduler.log"
    with open(log, "wb") as out:
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--no-dashboard"],
            env=worker_env(env), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent())
    cluster = DaskCluster(address, scheduler, workdir)
    try:
        deadline = time.monotonic() + timeout
        wait_until(lambda: b"Scheduler at" in log.read_bytes(), timeout, "the dask scheduler")
        for _ in range(workers):
            cluster.start_worker(worker_env(env), nthreads=nthreads)
        cluster.wait_workers(workers, max(5.0, deadline - time.monotonic()))
    except BaseException:
        cluster.stop()
        raise
    return cluster


__all__ = ["DaskCluster", "DaskWorker", "start_cluster", "worker_env", "proc_io"]
