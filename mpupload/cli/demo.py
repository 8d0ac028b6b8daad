"""``mpupload demo`` — the embedded default: moto's S3 server as its own process, a sample file, an
upload with the live bar. (The API server and the dashboard join the demo when they exist.)"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

from .. import errors as E
from ..api import upload_file
from ..engine.cancel import CancelToken
from ..options import UploadOptions
from ..sinks import make_sinks
from ..storage import StoreConfig
from ..units import MiB, format_bytes, parse_size
from .errors import EXIT_OK
from .signals import cancel_on_signals

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="local S3 server + sample upload with the live bar", description=__doc__)
    p.add_argument("--size", default="256MiB", help="sample file size (default 256MiB)")
    p.add_argument("--part-size", default="16MiB")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--progress", choices=["auto", "bar", "plain", "json", "none"], default="auto")
    p.add_argument("--exit-after-upload", action="store_true", help="stop everything after the upload (for CI)")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=run)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_moto(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        raise E.UsageError("the demo needs moto's server: pip install 'mpupload[demo]'") from None
    port = _free_port()
    log = open(os.path.join(workdir, "moto.log"), "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=1).close()  # noqa: S310 - loopback
            return proc, url
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise E.UploadFailed(f"moto's S3 server did not start; see {workdir}/moto.log") from None
            time.sleep(0.1)


def _make_sample(path: str, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 4 * MiB)
            fh.write(os.urandom(n))
            left -= n


def run(args: argparse.Namespace) -> int:
    size = parse_size(args.size)
    workdir = tempfile.mkdtemp(prefix="mpupload-demo-")
    proc = None
    try:
        proc, url = _start_moto(workdir)
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
        store = StoreConfig(endpoint_url=url, region="us-east-1")
        store.make_client().create_bucket(Bucket="demo")
        sample = os.path.join(workdir, "sample.bin")
        _make_sample(sample, size)
        print(f"mpupload demo: S3 server (moto) at {url}, uploading a {format_bytes(size)} sample to s3://demo/",
              file=sys.stderr)
        token = CancelToken()
        with cancel_on_signals(token):
            upload_file(sample, "demo", "sample.bin", store=store,
                        options=UploadOptions(part_size=parse_size(args.part_size), workers=args.workers),
                        sinks=make_sinks(args.progress, stdout=sys.stdout, stderr=sys.stderr, quiet=False),
                        cancel=token)
        print("mpupload demo: done (the API server and dashboard come with the server issue)", file=sys.stderr)
        return EXIT_OK
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
