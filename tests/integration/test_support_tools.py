"""The test-support tools themselves: moto in a process, the throwaway CA, the fault-injecting proxy."""

from __future__ import annotations

import hashlib
import os
import signal
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.moto import start_moto
from tests.support.proxy import FlipState, RequestStream, start_proxy
from tests.support.s3server import S3Server, wait_until
from tests.support.tls import TlsFiles, make_tls

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[2]


def s3_client(server: S3Server, endpoint_url: str | None = None, verify: Any = None) -> Any:
    """A client built like ``S3Server.client()``, plus unsigned payloads so that no body hash is sent."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url or server.endpoint_url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        verify=verify if verify is not None else True,
        config=Config(
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting for a reaper counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def diff_offsets(a: bytes, b: bytes) -> list[int]:
    assert len(a) == len(b)
    return [i for i in range(len(a)) if a[i] != b[i]] if a != b else []


def one_bit_apart(a: bytes, b: bytes) -> list[int]:
    """Offsets where ``a`` and ``b`` differ, checking that each differing byte differs in exactly one bit."""
    offsets = _fast_diff(a, b)
    for i in offsets:
        assert (a[i] ^ b[i]).bit_count() == 1, f"byte {i}: {a[i]:#x} vs {b[i]:#x}"
    return offsets


def _fast_diff(a: bytes, b: bytes, block: int = 64 * 1024) -> list[int]:
    assert len(a) == len(b)
    out: list[int] = []
    for start in range(0, len(a), block):
        if a[start : start + block] != b[start : start + block]:
            out += [start + i for i in diff_offsets(a[start : start + block], b[start : start + block])]
    return out


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        server.client().create_bucket(Bucket="tools")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


def moto_port(server: S3Server) -> int:
    return int(server.endpoint_url.rsplit(":", 1)[1])


# ---------------------------------------------------------------------------------------------- moto, TLS


def test_moto_starts_answers_and_stops(tmp_path: Path) -> None:
    server = start_moto(tmp_path)
    pid = server.pids[0]
    try:
        assert server.name == "moto" and server.endpoint_url.startswith("http://127.0.0.1:")
        s3 = server.client()
        s3.create_bucket(Bucket="alive")
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["alive"]
        assert list(tmp_path.glob("moto-*.log")), "moto's log file is in the workdir"
        assert not gone(pid)
    finally:
        server.stop()
    assert gone(pid)


def test_tls_files(tls: TlsFiles) -> None:
    from cryptography import x509

    assert (tls.key_pem.stat().st_mode & 0o777) == 0o600
    cert = x509.load_pem_x509_certificate(tls.cert_pem.read_bytes())
    ca = x509.load_pem_x509_certificate(tls.ca_pem.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert cert.issuer == ca.subject and cert.issuer != cert.subject
    cert.verify_directly_issued_by(ca)
    # and OpenSSL accepts the pair, strict checks included
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls.cert_pem, tls.key_pem)
    client_ctx = ssl.create_default_context(cafile=str(tls.ca_pem))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    assert client_ctx.cert_store_stats()["x509_ca"] == 1


# ---------------------------------------------------------------------------------------------- forwarding


def test_upload_through_forwarding_proxy(moto: S3Server, tmp_path: Path) -> None:
    body = os.urandom(3 * MiB + 17)
    with start_proxy("127.0.0.1", moto_port(moto), log_path=tmp_path / "req.jsonl") as proxy:
        s3 = s3_client(moto, proxy.url())
        assert proxy.url().startswith("http://127.0.0.1:")
        s3.put_object(Bucket="tools", Key="fwd", Body=body)
        assert s3.get_object(Bucket="tools", Key="fwd")["Body"].read() == body
        puts = [r for r in proxy.requests() if r["method"] == "PUT"]
        assert [(r["path"], r["content_length"], r["flipped"], r["complete"]) for r in puts] == [
            ("/tools/fwd", len(body), False, True)
        ]
        assert any(r["method"] == "GET" and r["path"] == "/tools/fwd" for r in proxy.requests())
    assert proxy.returncode == 0, "SIGTERM ends the proxy cleanly"
    assert gone(proxy.pid)


def test_concurrent_connections_through_the_proxy(moto: S3Server, tls: TlsFiles, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    bodies = {f"c{i}": os.urandom(MiB + i) for i in range(12)}
    with start_proxy("127.0.0.1", moto_port(moto), tls=tls, log_path=tmp_path / "c.jsonl") as proxy:
        s3 = s3_client(moto, proxy.url(), verify=str(tls.ca_pem))
        s3.meta.config.max_pool_connections = 8

        def roundtrip(key: str) -> bytes:
            s3.put_object(Bucket="tools", Key=key, Body=bodies[key])
            return bytes(s3.get_object(Bucket="tools", Key=key)["Body"].read())

        with ThreadPoolExecutor(8) as pool:
            got = dict(zip(bodies, pool.map(roundtrip, bodies), strict=True))
        assert got == bodies
        puts = {r["path"]: r["content_length"] for r in proxy.requests() if r["method"] == "PUT"}
        assert puts == {f"/tools/{k}": len(v) for k, v in bodies.items()}
    assert proxy.returncode == 0


def test_upload_through_tls_proxy(moto: S3Server, tls: TlsFiles) -> None:
    import botocore.exceptions

    body = os.urandom(2 * MiB)
    with start_proxy("127.0.0.1", moto_port(moto), tls=tls) as proxy:
        assert proxy.url().startswith("https://127.0.0.1:")
        s3 = s3_client(moto, proxy.url(), verify=str(tls.ca_pem))
        s3.put_object(Bucket="tools", Key="tls", Body=body)
        assert s3.get_object(Bucket="tools", Key="tls")["Body"].read() == body
        # the name "localhost" is in the certificate too
        s3_local = s3_client(moto, proxy.url().replace("127.0.0.1", "localhost"), verify=str(tls.ca_pem))
        assert s3_local.head_object(Bucket="tools", Key="tls")["ContentLength"] == len(body)
        # and it is really TLS with our own CA: the system trust store refuses it
        with pytest.raises(botocore.exceptions.SSLError):
            s3_client(moto, proxy.url()).head_object(Bucket="tools", Key="tls")
        via = proxy.s3server(moto, ca_bundle=tls.ca_pem)
        assert via.client().get_object(Bucket="tools", Key="tls")["Body"].read() == body
    assert proxy.returncode == 0


# ---------------------------------------------------------------------------------------------- bit flips


def test_flip_corrupts_one_put_object_once(moto: S3Server, tmp_path: Path) -> None:
    body = os.urandom(64 * 1024)
    with start_proxy(
        "127.0.0.1", moto_port(moto), flip_part=0, flip_offset=1000, log_path=tmp_path / "flip.jsonl"
    ) as proxy:
        s3 = s3_client(moto, proxy.url())
        put = s3.put_object(Bucket="tools", Key="flipped", Body=body)
        stored = s3.get_object(Bucket="tools", Key="flipped")["Body"].read()
        assert stored != body and one_bit_apart(body, stored) == [1000]
        # the server saw the corrupted bytes: its ETag is their MD5
        assert put["ETag"].strip('"') == hashlib.md5(stored).hexdigest() != hashlib.md5(body).hexdigest()
        # once per proxy lifetime: the next PutObject passes unchanged
        s3.put_object(Bucket="tools", Key="second", Body=body)
        assert s3.get_object(Bucket="tools", Key="second")["Body"].read() == body
        puts = [r for r in proxy.requests() if r["method"] == "PUT"]
        assert [(r["path"], r["flipped"]) for r in puts] == [
            ("/tools/flipped", True),
            ("/tools/second", False),
        ]
        assert puts[0]["content_length"] == len(body)


def test_flip_offset_is_clamped_to_the_last_byte(moto: S3Server, tmp_path: Path) -> None:
    body = os.urandom(100)
    with start_proxy("127.0.0.1", moto_port(moto), flip_part=0, flip_offset=10**9) as proxy:
        s3 = s3_client(moto, proxy.url())
        s3.put_object(Bucket="tools", Key="short", Body=body)
        stored = s3.get_object(Bucket="tools", Key="short")["Body"].read()
    assert one_bit_apart(body, stored) == [99]


def test_flip_part_2_of_a_multipart_upload(moto: S3Server, tmp_path: Path) -> None:
    part = 5 * MiB
    source = os.urandom(2 * part + MiB)
    with start_proxy("127.0.0.1", moto_port(moto), flip_part=2, log_path=tmp_path / "mpu.jsonl") as proxy:
        s3 = s3_client(moto, proxy.url())
        upload_id = s3.create_multipart_upload(Bucket="tools", Key="mpu")["UploadId"]
        parts = []
        for number, start in enumerate(range(0, len(source), part), start=1):
            r = s3.upload_part(
                Bucket="tools",
                Key="mpu",
                UploadId=upload_id,
                PartNumber=number,
                Body=source[start : start + part],
            )
            parts.append({"PartNumber": number, "ETag": r["ETag"]})
        s3.complete_multipart_upload(
            Bucket="tools", Key="mpu", UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
        stored = s3.get_object(Bucket="tools", Key="mpu")["Body"].read()
        log = [r for r in proxy.requests() if r["method"] == "PUT"]
    assert len(stored) == len(source)
    assert one_bit_apart(source, stored) == [part + 1000]
    flipped = [r["query"] for r in log if r["flipped"]]
    assert len(flipped) == 1 and "partNumber=2" in flipped[0].split("&")
    assert sum(1 for r in log if "partNumber=" in r["query"]) == 3


class ListLog:
    """Stands in for the proxy's RequestLog."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def write(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)


def test_request_stream_parser_split_anywhere() -> None:
    """The parser finds the same request, whatever the chunk boundaries (down to single bytes)."""
    body1 = b"a" * 50
    chunked = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
    target = bytes(range(256)) * 8
    stream = (
        b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"PUT /b/k?partNumber=2&uploadId=u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked
        + b"PUT /b/k?partNumber=1&uploadId=u HTTP/1.1\r\nContent-Length: 50\r\n\r\n"
        + body1
        + b"\r\nPUT /b/k?uploadId=u&partNumber=2 HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % len(target)
        + target
        + b"PUT /b/k?partNumber=2&uploadId=u HTTP/1.1\r\nContent-Length: 4\r\n\r\nzzzz"
    )
    flip_pos = stream.index(target) + 1000
    for size in (1, 2, 3, 7, 64, 1000, len(stream)):
        log = ListLog()
        entries = log.entries
        parser = RequestStream(FlipState(2, 1000), log)  # type: ignore[arg-type]
        out = b"".join(parser.feed(stream[i : i + size]) for i in range(0, len(stream), size))
        parser.close()
        assert _fast_diff(stream, out) == [flip_pos], size
        assert [(e["method"], e["flipped"], e["chunked"], e["complete"]) for e in entries] == [
            ("GET", False, False, True),
            ("PUT", False, True, True),
            ("PUT", False, False, True),
            ("PUT", True, False, True),
            ("PUT", False, False, True),
        ], size


# ---------------------------------------------------------------------------------------------- throttle


def test_throttle_slows_a_put(moto: S3Server) -> None:
    body = os.urandom(2 * MiB)
    with start_proxy("127.0.0.1", moto_port(moto), throttle_bps=MiB) as proxy:
        s3 = s3_client(moto, proxy.url())
        s3.head_bucket(Bucket="tools")  # connection set up outside the timed part
        t0 = time.monotonic()
        s3.put_object(Bucket="tools", Key="slow", Body=body)
        elapsed = time.monotonic() - t0
        assert s3.get_object(Bucket="tools", Key="slow")["Body"].read() == body
    assert elapsed >= 1.5, f"2 MiB at 1 MiB/s took only {elapsed:.2f}s"


def test_sigterm_mid_transfer_exits_cleanly(moto: S3Server) -> None:
    import socket

    proxy = start_proxy("127.0.0.1", moto_port(moto), throttle_bps=64 * 1024)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(
                b"PUT /tools/cut HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n" + b"x" * 65536
            )
            wait_until(
                lambda: len(psutil.Process(proxy.pid).net_connections()) >= 3, 10, "proxied connection"
            )
            assert proxy.stop() == 0
            sock.settimeout(10)
            assert sock.recv(100) == b"", "the client connection is closed by the proxy"
    finally:
        proxy.stop()
    assert gone(proxy.pid)


# ---------------------------------------------------------------------------------------------- parent death


def test_children_die_with_their_parent(tmp_path: Path) -> None:
    """moto and the proxy are SIGKILLed by the kernel when the process that started them dies."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from tests.support.moto import start_moto
        from tests.support.proxy import start_proxy
        server = start_moto(Path({str(tmp_path)!r}))
        proxy = start_proxy("127.0.0.1", int(server.endpoint_url.rsplit(":", 1)[1]))
        print(server.pids[0], proxy.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline().decode()
        pids = [int(x) for x in line.split()]
        moto_pid, proxy_pid = pids
        assert not gone(moto_pid) and not gone(proxy_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        wait_until(lambda: gone(moto_pid) and gone(proxy_pid), 15, "orphans to die")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        for pid in pids:  # never leave an orphan behind, even when the test fails
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert gone(moto_pid) and gone(proxy_pid)
