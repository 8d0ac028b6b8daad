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


# ---------------------------------------------------------------------------------------------- network faults


def fault_client(server: S3Server, endpoint_url: str, read_timeout: float = 60, verify: Any = None) -> Any:
    """Exactly one attempt per call.  botocore's ``retries={"max_attempts": 1}`` means one *retry* (two
    attempts), which hides a one-off fault; ``total_max_attempts`` counts the first attempt too."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        verify=verify if verify is not None else True,
        config=Config(
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"total_max_attempts": 1, "mode": "standard"},
            read_timeout=read_timeout,
            connect_timeout=10,
        ),
    )


def part_faults(proxy: Any) -> list[tuple[int | None, Any]]:
    """(part number or None, fault) of each logged request, in log order."""
    out = []
    for r in proxy.requests():
        q = dict(kv.partition("=")[::2] for kv in r["query"].split("&") if kv)
        out.append((int(q["partNumber"]) if "partNumber" in q else None, r["fault"]))
    return out


def uploaded_parts(direct: Any, key: str, upload_id: str) -> dict[int, str]:
    """Part number -> ETag as the server (asked directly, not through the proxy) has them."""
    parts = direct.list_parts(Bucket="tools", Key=key, UploadId=upload_id).get("Parts", [])
    return {p["PartNumber"]: p["ETag"].strip('"') for p in parts}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "tls"])
def test_reset_part_resets_the_first_upload_of_that_part_once(
    moto: S3Server, tls: TlsFiles, tmp_path: Path, use_tls: bool
) -> None:
    import io

    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, SSLError

    part1, part2 = os.urandom(5 * MiB), os.urandom(3 * MiB)
    # the RST mostly arrives while the body is being sent: urllib3 swallows ECONNRESET there and then reads
    # EOF -- RemoteDisconnected (ConnectionClosedError) in plain HTTP, "EOF occurred in violation of
    # protocol" (botocore SSLError) over TLS
    expected: tuple[type[Exception], ...] = (ConnectionClosedError, EndpointConnectionError)
    expected += (SSLError,) if use_tls else ()
    direct = fault_client(moto, moto.endpoint_url)
    with start_proxy(
        "127.0.0.1",
        moto_port(moto),
        tls=tls if use_tls else None,
        reset_part=2,
        reset_after=MiB,
        log_path=tmp_path / "reset.jsonl",
    ) as proxy:
        s3 = fault_client(moto, proxy.url(), verify=str(tls.ca_pem) if use_tls else None)
        upload_id = s3.create_multipart_upload(Bucket="tools", Key="reset")["UploadId"]
        etag1 = s3.upload_part(Bucket="tools", Key="reset", UploadId=upload_id, PartNumber=1, Body=part1)["ETag"]
        with pytest.raises(expected) as caught:
            s3.upload_part(Bucket="tools", Key="reset", UploadId=upload_id, PartNumber=2, Body=io.BytesIO(part2))
        assert any(word in str(caught.value).lower() for word in ("closed", "reset", "eof")), caught.value
        assert 2 not in uploaded_parts(direct, "reset", upload_id), "the server never got the whole part"
        # once: the new attempt (a new connection) goes through unchanged
        etag2 = s3.upload_part(Bucket="tools", Key="reset", UploadId=upload_id, PartNumber=2, Body=part2)["ETag"]
        assert etag2.strip('"') == md5(part2)
        s3.complete_multipart_upload(
            Bucket="tools",
            Key="reset",
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag1}, {"PartNumber": 2, "ETag": etag2}]},
        )
        assert direct.get_object(Bucket="tools", Key="reset")["Body"].read() == part1 + part2
        wait_until(lambda: len(proxy.requests()) >= 5, 10, "the log lines")
        resets = [r for r in proxy.requests() if r["fault"] == "reset"]
    assert len(resets) == 1 and resets[0]["complete"] is False
    assert resets[0]["content_length"] == len(part2) and "partNumber=2" in resets[0]["query"].split("&")
    assert sorted(part_faults(proxy), key=str) == sorted(
        [(None, None), (1, None), (2, "reset"), (2, None), (None, None)], key=str
    )
    assert proxy.returncode == 0


def test_slowdown_answers_503_to_the_first_uploads_without_forwarding_them(moto: S3Server, tmp_path: Path) -> None:
    import http.client
    import io

    from botocore.exceptions import ClientError

    body = os.urandom(2 * MiB)
    direct = fault_client(moto, moto.endpoint_url)
    with start_proxy("127.0.0.1", moto_port(moto), slowdown=3, log_path=tmp_path / "slow.jsonl") as proxy:
        s3 = fault_client(moto, proxy.url())
        upload_id = s3.create_multipart_upload(Bucket="tools", Key="slow")["UploadId"]  # not an UploadPart
        # a client that sends the body right after the head (no Expect): the proxy takes it all, then answers
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        try:
            conn.request("PUT", f"/tools/slow?partNumber=1&uploadId={upload_id}", body=body)
            raw = conn.getresponse()
            assert (raw.status, raw.reason) == (503, "Slow Down")
            assert raw.getheader("Content-Type") == "application/xml"
            assert raw.getheader("Connection") == "close"
            xml = raw.read()
            assert xml == b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            assert int(raw.getheader("Content-Length", "-1")) == len(xml)
            assert conn.sock is None or conn.sock.recv(1) == b"", "the proxy closed the connection"
        finally:
            conn.close()
        # boto3 sends every UploadPart body (bytes too) after "Expect: 100-continue": the proxy answers right
        # after the head, botocore takes that as the final answer and never sends the body
        for payload in (body, io.BytesIO(body)):
            with pytest.raises(ClientError) as caught:
                s3.upload_part(Bucket="tools", Key="slow", UploadId=upload_id, PartNumber=1, Body=payload)
            error = caught.value.response
            assert error["Error"]["Code"] == "SlowDown"
            assert error["Error"]["Message"] == "Please reduce your request rate."
            assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert uploaded_parts(direct, "slow", upload_id) == {}, "the server never saw them"
        # the fourth UploadPart is forwarded unchanged
        etag = s3.upload_part(Bucket="tools", Key="slow", UploadId=upload_id, PartNumber=1, Body=io.BytesIO(body))
        assert etag["ETag"].strip('"') == md5(body)
        assert uploaded_parts(direct, "slow", upload_id) == {1: md5(body)}
        log = proxy.requests()
    assert part_faults(proxy) == [(None, None), (1, "slowdown"), (1, "slowdown"), (1, "slowdown"), (1, None)]
    assert [r["complete"] for r in log] == [True, True, False, False, True], "only the raw client sent a body"
    assert proxy.returncode == 0


def test_stall_part_stops_one_upload_until_the_client_times_out(moto: S3Server, tmp_path: Path) -> None:
    from botocore.exceptions import ReadTimeoutError

    body = os.urandom(2 * MiB)  # 1 MiB passes, the rest fits in the socket buffers: the client waits to read
    direct = fault_client(moto, moto.endpoint_url)
    with start_proxy("127.0.0.1", moto_port(moto), stall_part=1, log_path=tmp_path / "stall.jsonl") as proxy:
        s3 = fault_client(moto, proxy.url(), read_timeout=2)
        upload_id = s3.create_multipart_upload(Bucket="tools", Key="stall")["UploadId"]
        t0 = time.monotonic()
        with pytest.raises(ReadTimeoutError):
            s3.upload_part(Bucket="tools", Key="stall", UploadId=upload_id, PartNumber=1, Body=body)
        assert time.monotonic() - t0 >= 2
        assert uploaded_parts(direct, "stall", upload_id) == {}
        # once: the next attempt of the same part passes
        etag = s3.upload_part(Bucket="tools", Key="stall", UploadId=upload_id, PartNumber=1, Body=body)["ETag"]
        assert etag.strip('"') == md5(body) and uploaded_parts(direct, "stall", upload_id) == {1: md5(body)}
    # the stalled request is logged when its connection ends (here: when the proxy stops)
    assert sorted(part_faults(proxy), key=str) == sorted([(None, None), (1, "stall"), (1, None)], key=str)
    assert [r["complete"] for r in proxy.requests() if r["fault"] == "stall"] == [False]
    assert proxy.returncode == 0


def test_stall_ends_after_stall_seconds(moto: S3Server, tmp_path: Path) -> None:
    body = os.urandom(3 * MiB)
    with start_proxy("127.0.0.1", moto_port(moto), stall_part=1, stall_seconds=1.5) as proxy:
        s3 = fault_client(moto, proxy.url())
        upload_id = s3.create_multipart_upload(Bucket="tools", Key="stall-ends")["UploadId"]
        t0 = time.monotonic()
        etag = s3.upload_part(Bucket="tools", Key="stall-ends", UploadId=upload_id, PartNumber=1, Body=body)
        assert time.monotonic() - t0 >= 1.5
        assert etag["ETag"].strip('"') == md5(body), "the body went on unchanged after the stall"


def test_truncate_response_cuts_the_first_upload_part_answers(moto: S3Server, tmp_path: Path) -> None:
    from botocore.exceptions import ConnectionClosedError

    body = os.urandom(MiB)
    direct = fault_client(moto, moto.endpoint_url)
    with start_proxy(
        "127.0.0.1", moto_port(moto), truncate_response=2, log_path=tmp_path / "cut.jsonl"
    ) as proxy:
        s3 = fault_client(moto, proxy.url())
        upload_id = s3.create_multipart_upload(Bucket="tools", Key="cut")["UploadId"]  # answered in full
        for number in (1, 2):
            with pytest.raises(ConnectionClosedError):
                s3.upload_part(Bucket="tools", Key="cut", UploadId=upload_id, PartNumber=number, Body=body)
            # the server did store the part: only its answer was lost
            assert uploaded_parts(direct, "cut", upload_id).get(number) == md5(body)
        etag = s3.upload_part(Bucket="tools", Key="cut", UploadId=upload_id, PartNumber=3, Body=body)["ETag"]
        assert etag.strip('"') == md5(body)
        assert s3.list_parts(Bucket="tools", Key="cut", UploadId=upload_id)["Parts"][0]["PartNumber"] == 1
        log = part_faults(proxy)
    assert log == [(None, None), (1, "truncate"), (2, "truncate"), (3, None), (None, None)]
    assert proxy.returncode == 0


def test_delay_complete_response_holds_the_answer_after_the_object_exists(
    moto: S3Server, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    delay = 2.0
    direct = fault_client(moto, moto.endpoint_url)
    with start_proxy(
        "127.0.0.1", moto_port(moto), delay_complete_response=delay, log_path=tmp_path / "delay.jsonl"
    ) as proxy:
        s3 = fault_client(moto, proxy.url())
        with ThreadPoolExecutor(1) as pool:
            for key in ("delayed-1", "delayed-2"):  # every CompleteMultipartUpload is held
                body = os.urandom(MiB)
                upload_id = s3.create_multipart_upload(Bucket="tools", Key=key)["UploadId"]
                etag = s3.upload_part(Bucket="tools", Key=key, UploadId=upload_id, PartNumber=1, Body=body)["ETag"]

                def complete(key: str = key, upload_id: str = upload_id, etag: str = etag) -> tuple[float, Any]:
                    t0 = time.monotonic()
                    answer = s3.complete_multipart_upload(
                        Bucket="tools",
                        Key=key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
                    )
                    return time.monotonic() - t0, answer

                future = pool.submit(complete)
                wait_until(lambda key=key: direct.head_object(Bucket="tools", Key=key) is not None, 30, key)
                assert not future.done(), "the object exists on the server, the client has no answer yet"
                elapsed, answer = future.result(timeout=60)
                assert elapsed >= delay
                assert answer["Key"] == key
                assert direct.get_object(Bucket="tools", Key=key)["Body"].read() == body
        faults = [(r["method"], r["query"].split("&")[0].split("=")[0], r["fault"]) for r in proxy.requests()]
    assert [f for f in faults if f[2] is not None] == [("POST", "uploadId", "delay")] * 2
    assert len(faults) == 6
    assert proxy.returncode == 0


def test_faults_combine_with_each_other_and_the_log(moto: S3Server, tmp_path: Path) -> None:
    from botocore.exceptions import ClientError, ConnectionClosedError

    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(2 * MiB)]
    with start_proxy(
        "127.0.0.1",
        moto_port(moto),
        slowdown=1,
        truncate_response=1,
        reset_part=2,
        reset_after=256 * 1024,
        stall_part=3,
        stall_seconds=1.0,
        delay_complete_response=1.0,
        flip_part=None,
        log_path=tmp_path / "all.jsonl",
    ) as proxy:
        s3 = fault_client(moto, proxy.url())
        upload_id = s3.create_multipart_upload(Bucket="tools", Key="all")["UploadId"]

        def put(number: int) -> str:
            answer = s3.upload_part(
                Bucket="tools", Key="all", UploadId=upload_id, PartNumber=number, Body=parts[number - 1]
            )
            return str(answer["ETag"])

        with pytest.raises(ClientError, match="SlowDown"):  # the first UploadPart
            put(1)
        with pytest.raises(ConnectionClosedError):  # the second one: its answer is cut
            put(1)
        etags = {1: put(1)}
        with pytest.raises(ConnectionClosedError):  # the first part 2: reset
            put(2)
        etags[2] = put(2)
        t0 = time.monotonic()
        etags[3] = put(3)  # stalled for a second, then on
        assert time.monotonic() - t0 >= 1.0
        t0 = time.monotonic()
        s3.complete_multipart_upload(
            Bucket="tools",
            Key="all",
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in etags.items()]},
        )
        assert time.monotonic() - t0 >= 1.0
        assert s3.get_object(Bucket="tools", Key="all")["Body"].read() == b"".join(parts)
        log = proxy.requests()
    assert sorted(part_faults(proxy), key=str) == sorted(
        [
            (None, None),
            (1, "slowdown"),
            (1, "truncate"),
            (1, None),
            (2, "reset"),
            (2, None),
            (3, "stall"),
            (None, "delay"),
            (None, None),
        ],
        key=str,
    )
    assert all(set(r) == {*log[0]} for r in log), "every line has the same keys"
    assert {"method", "path", "query", "content_length", "flipped", "chunked", "complete", "fault",
            "bearer"} == set(log[0])
    assert all(r["bearer"] is None for r in log)  # (S3's requests carry SigV4, not a bearer token)


def test_the_log_has_a_bearer_token_s_sha256_never_the_token() -> None:
    from tests.support.proxy import _bearer_hash

    assert _bearer_hash({"authorization": "Bearer abc "}) == hashlib.sha256(b"abc").hexdigest()
    assert _bearer_hash({"authorization": "bearer abc"}) == hashlib.sha256(b"abc").hexdigest()
    for headers in ({}, {"authorization": "AWS4-HMAC-SHA256 Credential=x"}, {"authorization": "Bearer "}):
        assert _bearer_hash(headers) is None, headers


# -- the parsers behind the faults, fed in chunks of every size


def _run(parser: Any, stream: bytes, size: int) -> tuple[bytes, list[tuple[str, int]]]:
    """(bytes forwarded, [(fault kind, forwarded bytes before it)])."""
    from tests.support.proxy import Fault

    out = bytearray()
    faults: list[tuple[str, int]] = []
    for i in range(0, len(stream), size):
        for item in parser.process(stream[i : i + size]):
            if isinstance(item, Fault):
                faults.append((item.kind, len(out)))
            else:
                out += item
    return bytes(out), faults


SIZES = (1, 2, 3, 7, 64, 1000, 10**6)


def test_request_faults_split_anywhere() -> None:
    from tests.support.proxy import Faults

    get = b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n"
    part1 = b"PUT /b/k?partNumber=1&uploadId=u HTTP/1.1\r\nContent-Length: 50\r\n\r\n" + b"1" * 50
    part2_head = b"PUT /b/k?uploadId=u&partNumber=2 HTTP/1.1\r\nContent-Length: 50\r\n\r\n"
    part2 = part2_head + b"2" * 50
    expect = b"PUT /b/k?partNumber=1&uploadId=u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 50\r\n\r\n"
    for size in SIZES:
        # slowdown: the request is swallowed whole, then the answer; nothing after it is forwarded
        log = ListLog()
        p = RequestStream(FlipState(None), log, Faults(slowdown=1))  # type: ignore[arg-type]
        assert _run(p, get + part1 + get, size) == (get, [("slowdown", len(get))]), size
        assert [(e["fault"], e["complete"]) for e in log.entries] == [(None, True), ("slowdown", True)]
        # with Expect: 100-continue the answer comes right after the head
        p = RequestStream(FlipState(None), None, Faults(slowdown=1))
        assert _run(p, expect, size) == (b"", [("slowdown", 0)]), size
        # reset: the first part 2 stops after reset_after body bytes, for good
        log = ListLog()
        p = RequestStream(FlipState(None), log, Faults(reset_part=2, reset_after=10))  # type: ignore[arg-type]
        cut = len(part1) + len(part2_head) + 10
        assert _run(p, part1 + part2 + part2, size) == ((part1 + part2)[:cut], [("reset", cut)]), size
        p.close()
        assert [(e["fault"], e["complete"]) for e in log.entries] == [(None, True), ("reset", False)]
        # stall: after min(1 MiB, length - 1) body bytes, then everything else (once)
        p = RequestStream(FlipState(None), None, Faults(stall_part=2, stall_seconds=7))
        at = len(part1) + len(part2) - 1
        assert _run(p, part1 + part2 + part2, size) == (part1 + part2 + part2, [("stall", at)]), size
    # the Fault carries the stall duration, and a request that ends before its point gives the fault back
    p = RequestStream(FlipState(None), None, Faults(stall_part=1, stall_seconds=7))
    assert [x.seconds for x in p.process(part1) if not isinstance(x, bytes)] == [7]
    p = RequestStream(FlipState(None), None, Faults(reset_part=1, reset_after=0))
    p.process(part1[:-50])
    p.close()
    p = RequestStream(FlipState(None), None, p.faults)
    assert _run(p, part1, 1000)[1] == [("reset", len(part1) - 50)]


def test_response_faults_split_anywhere() -> None:
    from collections import deque

    from tests.support.proxy import Exchange, Faults, ResponseStream

    cont = b"HTTP/1.1 100 Continue\r\n\r\n"
    ok_body = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"  # to a HEAD: no body
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    cut_body = b"HTTP/1.1 200 OK\r\nETag: x\r\nContent-Length: 10\r\n\r\n0123456789"
    cut_empty = b"HTTP/1.1 200 OK\r\nETag: y\r\nContent-Length: 0\r\n\r\n"
    stream = cont + ok_body + head_answer + chunked + cont + cut_body + cut_empty
    prefix = stream[: stream.index(b"0123456789") + 5]
    for size in SIZES:
        faults = Faults(truncate_response=2, delay_complete_response=3)
        log = ListLog()
        kinds = [("PUT", False, None), ("HEAD", False, None), ("POST", False, 3.0), ("PUT", True, None)]
        pending = deque()
        for method, truncate, delay in kinds:
            ex = Exchange(method, {"fault": "truncate" if truncate else None}, log, faults)  # type: ignore[arg-type]
            ex.truncate, ex.delay = truncate, delay
            ex.request_done(True)
            pending.append(ex)
        r = ResponseStream(pending)
        delay_at = len(cont + ok_body + head_answer)
        assert _run(r, stream, size) == (prefix, [("delay", delay_at), ("truncate", len(prefix))]), size
        assert not pending and [e["fault"] for e in log.entries] == [None, None, None, "truncate"]
        # no body: the head goes without its final CRLF
        ex = Exchange("PUT", {}, None, faults)
        ex.truncate = True
        r = ResponseStream(deque([ex]))
        assert _run(r, cut_empty, size) == (cut_empty[:-2], [("truncate", len(cut_empty) - 2)]), size


def test_fault_flags_on_the_command_line() -> None:
    from tests.support.proxy import _parse_args

    cfg = _parse_args(
        ["127.0.0.1", "9000", "--reset-part", "3", "--reset-after", "12", "--slowdown", "2", "--stall-part", "4",
         "--stall-seconds", "1.5", "--truncate-response", "5", "--delay-complete-response", "0.25"]
    )
    assert (cfg.reset_part, cfg.reset_after, cfg.slowdown, cfg.stall_part, cfg.stall_seconds) == (3, 12, 2, 4, 1.5)
    assert (cfg.truncate_response, cfg.delay_complete_response) == (5, 0.25)
    defaults = _parse_args(["127.0.0.1", "9000"])
    assert (defaults.reset_part, defaults.reset_after, defaults.slowdown, defaults.stall_part) == (None, MiB, 0, None)
    assert (defaults.stall_seconds, defaults.truncate_response, defaults.delay_complete_response) == (3600, 0, None)
    assert not defaults.faults().any
    puts = _parse_args(["127.0.0.1", "9000", "--reset-part", "0", "--slowdown-puts", "2"])
    assert (puts.reset_part, puts.slowdown_puts, puts.slowdown) == (0, 2, 0) and puts.faults().any
    for bad in (["--reset-part", "-1"], ["--stall-part", "0"], ["--slowdown", "-1"], ["--slowdown-puts", "-1"],
                ["--delay-complete-response", "-1"]):
        with pytest.raises(SystemExit):
            _parse_args(["127.0.0.1", "9000", *bad])
