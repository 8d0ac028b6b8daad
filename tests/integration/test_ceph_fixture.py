"""The Ceph RADOS Gateway fixture (tests/support/ceph.py): a real multipart upload over HTTP and HTTPS,
clean stops, daemons that die with a SIGKILLed test process, and a start failure that explains itself.

``ceph_s3`` (HTTP) and ``ceph_s3_tls`` (HTTPS, self-made CA) are session-scoped: each cluster starts once
for this file, and ``test_store_behaviour.py`` imports them.  Without the Ceph packages the tests skip,
except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import SSLError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.ceph import CephStartError, missing_binaries, start_ceph
from tests.support.s3server import S3Server, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.ceph]

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


def require_ceph() -> None:
    """Skip when the Ceph programs are missing; under CI=true, fail instead."""
    missing = missing_binaries()
    if not missing:
        return
    message = f"Ceph programs missing: {', '.join(missing)} (scripts/ensure-system-deps.sh installs them)"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(message)
    pytest.skip(message)


# --------------------------------------------------------------------------------------------------
# a throw-away CA and server certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(_name("mpupload test CA"))
        .issuer_name(_name("mpupload test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf(
    key: ec.EllipticCurvePrivateKey, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime
) -> x509.Certificate:
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    return (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(_name("mpupload test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """Write ``(ca.pem, cert.pem, key.pem)``: a fresh CA and a server cert for 127.0.0.1/localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_pem, cert_pem, key_pem = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_pem.write_bytes(_ca(ca_key, now).public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(_leaf(key, ca_key, now).public_bytes(serialization.Encoding.PEM))
    key_pem.touch(mode=0o600)
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_pem, cert_pem, key_pem


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def ceph_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One Ceph RGW over plain HTTP for the session."""
    require_ceph()
    server = start_ceph(tmp_path_factory.mktemp("ceph"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ceph_s3_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One Ceph RGW over HTTPS (certificate from a self-made CA, in ``ca_bundle``) for the session."""
    require_ceph()
    root = tmp_path_factory.mktemp("ceph-tls")
    ca_pem, cert_pem, key_pem = make_certificates(root / "tls")
    server = start_ceph(root / "ceph", tls=(str(cert_pem), str(key_pem)))
    server.ca_bundle = str(ca_pem)
    try:
        yield server
    finally:
        server.stop()


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
