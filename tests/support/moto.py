"""moto's S3 server as a separate process, for the integration tests.

Usage::

    from tests.support.moto import start_moto

    server = start_moto(tmp_path)        # S3Server(name="moto", endpoint_url="http://127.0.0.1:PORT", ...)
    try:
        s3 = server.client()
        s3.create_bucket(Bucket="b")
    finally:
        server.stop()                    # SIGTERM by pid, SIGKILL after 10 s

The server runs as ``sys.executable -m moto.server -H 127.0.0.1 -p PORT`` on a free loopback port, with its
output in ``workdir/moto-PORT.log``.  It is started with ``PR_SET_PDEATHSIG=SIGKILL``, so it dies with the
thread that started it even when the test process is SIGKILLed.  moto accepts any credentials; it keeps
memory after DeleteObject, so start a fresh one for large uploads.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
from pathlib import Path

from tests.support.s3server import S3Server, die_with_parent, free_port, stop_pids, wait_until

#: attempts at picking a free port (another process may take it between ``free_port`` and moto's bind)
_ATTEMPTS = 3


def _answers(port: int) -> bool:
    """True when an HTTP server answers on 127.0.0.1:port (any status)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    finally:
        conn.close()


def start_moto(workdir: Path, *, timeout: float = 60.0) -> S3Server:
    """Start moto's S3 server in its own process and return once it answers HTTP requests.

    Raises ``RuntimeError`` if the process exits during start-up (its log is quoted) and ``TimeoutError`` if
    it does not answer within ``timeout`` seconds (the process is stopped first).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _ in range(_ATTEMPTS):
        port = free_port()
        log_path = workdir / f"moto-{port}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - prctl + getppid only
            )

        def up_or_exited(proc: subprocess.Popen[bytes] = proc, port: int = port) -> bool:
            return proc.poll() is not None or _answers(port)

        try:
            wait_until(up_or_exited, timeout, f"moto on port {port}")
        except TimeoutError:
            stop_pids([proc.pid])
            proc.poll()
            raise
        if proc.poll() is None:

            def reap(proc: subprocess.Popen[bytes] = proc) -> None:
                # stop by pid, then let the Popen object see that its child is gone
                stop_pids([proc.pid])
                proc.poll()

            return S3Server(
                name="moto",
                endpoint_url=f"http://127.0.0.1:{port}",
                access_key="testing",
                secret_key="testing",
                pids=[proc.pid],
                stop_hook=reap,
            )
        last_error = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"moto server exited during start-up ({_ATTEMPTS} attempts); last log:\n{last_error}")
