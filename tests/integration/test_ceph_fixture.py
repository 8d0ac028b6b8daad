"""The Ceph RADOS Gateway fixture (tests/support/ceph.py): a real multipart upload over HTTP and HTTPS,
clean stops, daemons that die with a SIGKILLed test process, and a start failure that explains itself.

``ceph_s3`` (HTTP) and ``ceph_s3_tls`` (HTTPS, our own CA) are the session's clusters from conftest, shared
with every other test; ``test_store_behaviour.py`` imports them.  Without the Ceph packages the tests skip,
except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import SSLError

from tests.conftest import require_ceph
from tests.support.ceph import CephStartError, start_ceph
from tests.support.s3server import S3Server, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.ceph]

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------
# fixtures: the session's clusters from conftest (one HTTP, one HTTPS with our own CA), under these names


@pytest.fixture(scope="session")
def ceph_s3(ceph_server: S3Server) -> S3Server:
    return ceph_server


@pytest.fixture(scope="session")
def ceph_s3_tls(ceph_https: S3Server) -> S3Server:
    return ceph_https


# --------------------------------------------------------------------------------------------------
# helpers


def _alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _processes_using(workdir: Path) -> list[str]:
    """Live processes whose command line mentions ``workdir`` (each daemon gets ``--conf workdir/...``)."""
    found = []
    needle = str(workdir.resolve()).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and _alive(int(entry.name)):
            found.append(entry.name + ": " + cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def _round_trip(server: S3Server) -> None:
    """Multipart upload (3 x 5 MiB + 1 byte) with the plain boto3 API, then read it back."""
    s3: Any = server.client()
    bucket, key = f"fixture-{uuid.uuid4().hex[:12]}", "dir/object.bin"
    s3.create_bucket(Bucket=bucket)
    chunks = [os.urandom(5 * MiB) for _ in range(3)] + [b"!"]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for number, chunk in enumerate(chunks, start=1):
        answer = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk)
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert len(body) == 15 * MiB + 1
    assert hashlib.sha256(body).digest() == hashlib.sha256(b"".join(chunks)).digest()
    assert s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"').endswith("-4")


# --------------------------------------------------------------------------------------------------
# tests


def test_multipart_upload_round_trip_over_http(ceph_s3: S3Server) -> None:
    assert ceph_s3.name == "ceph"
    assert ceph_s3.endpoint_url.startswith("http://127.0.0.1:")
    assert ceph_s3.region == "us-east-1" and ceph_s3.ca_bundle is None
    assert len(ceph_s3.pids) == 3 and all(_alive(pid) for pid in ceph_s3.pids)
    _round_trip(ceph_s3)


def test_multipart_upload_round_trip_over_https(ceph_s3_tls: S3Server) -> None:
    assert ceph_s3_tls.name == "ceph+https"
    assert ceph_s3_tls.endpoint_url.startswith("https://127.0.0.1:")
    _round_trip(ceph_s3_tls)


def test_https_certificate_is_checked(ceph_s3_tls: S3Server) -> None:
    """Without our CA bundle the client refuses the server: the TLS is real, not just tolerated."""
    s3: Any = boto3.session.Session().client(
        "s3",
        endpoint_url=ceph_s3_tls.endpoint_url,
        aws_access_key_id=ceph_s3_tls.access_key,
        aws_secret_access_key=ceph_s3_tls.secret_key,
        region_name=ceph_s3_tls.region,
        config=Config(retries={"max_attempts": 1}),
    )
    with pytest.raises(SSLError):
        s3.list_buckets()


def test_stop_leaves_no_process_and_can_be_repeated(tmp_path: Path) -> None:
    require_ceph()
    server = start_ceph(tmp_path / "ceph")
    pids = list(server.pids)
    assert len(pids) == 3 and all(_alive(pid) for pid in pids)
    server.stop()
    assert not [pid for pid in pids if _alive(pid)]
    assert _processes_using(tmp_path) == []
    server.stop()  # a second stop is a no-op
    assert server.pids == []


_CHILD = """
import json, signal, sys
from pathlib import Path
from tests.support.ceph import start_ceph
server = start_ceph(Path(sys.argv[1]))
print(json.dumps(server.pids), flush=True)
signal.pause()
"""


def test_daemons_die_with_a_sigkilled_parent(tmp_path: Path) -> None:
    require_ceph()
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path / "ceph")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            _kill_parent_and_watch(child, tmp_path)
        finally:
            child.kill()


def _kill_parent_and_watch(child: subprocess.Popen[str], tmp_path: Path) -> None:
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, "the child process did not start Ceph"
    pids = json.loads(line)
    assert len(pids) == 3 and all(_alive(pid) for pid in pids)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    wait_until(lambda: not any(_alive(pid) for pid in pids), 15, "the orphaned Ceph daemons to die")
    assert _processes_using(tmp_path) == []


def test_failed_start_explains_itself_and_cleans_up(tmp_path: Path) -> None:
    require_ceph()
    cert = tmp_path / "not-a-certificate.pem"
    cert.write_text("this is not PEM\n")
    with pytest.raises(CephStartError) as failure:
        start_ceph(tmp_path / "ceph", tls=(str(cert), str(cert)), timeout=60)
    message = str(failure.value)
    assert "ssl_certificate" in message  # radosgw's own complaint, from the tail of its log
    assert str(tmp_path) in message  # names the log file
    assert _processes_using(tmp_path) == []
