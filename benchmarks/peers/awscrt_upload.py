"""Peer for the benchmark: awscrt's own S3 client (``awscrt.s3.S3Client``), driven directly.

Usage: ``python benchmarks/peers/awscrt_upload.py [--part-size BYTES] ENDPOINT_URL FILE BUCKET KEY``

boto3's CRT transfer manager ignores ``endpoint_url`` (it always targets AWS), so this drives the CRT
client itself: one ``PUT_OBJECT`` meta request with ``send_filepath``, which the client splits into a
multipart upload (CreateMultipartUpload, UploadPart × N in parallel, CompleteMultipartUpload) when the
file is larger than the part size.

How the endpoint is given: the Python binding of awscrt (0.38) has no endpoint option. The C client takes
the host to connect to from the request's ``Host`` header and the port from it too when it carries one
(``Host: 127.0.0.1:PORT``; without a port it uses 80, or 443 with TLS). TLS is off
(``S3RequestTlsMode.DISABLED``), so the endpoint must be ``http://``. Requests are path-style
(``/BUCKET/KEY``).

Configuration: part size 32 MiB unless ``--part-size`` says otherwise (0: the client's own default, which
in awscrt 0.38.1 on this kind of machine is 8 MiB: a 256 MiB file went up in 32 parts);
everything else at the client's defaults (throughput target, connections, memory limit). Requests are
signed with SigV4 from static credentials (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, region
``AWS_DEFAULT_REGION``), with ``UNSIGNED-PAYLOAD`` (the client's default S3 signing config: the body is
not hashed). No checksum is requested (``checksum_config`` is not set), so none is computed.

Exits 0 only when the meta request finished without error and its final response was 200.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from urllib.parse import urlsplit

MIB = 1024 * 1024
DEFAULT_PART_SIZE = 32 * MIB


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="awscrt_upload.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--part-size", type=int, default=DEFAULT_PART_SIZE,
                        help="part size in bytes (default 32 MiB; 0: awscrt's default)")
    parser.add_argument("endpoint_url")
    parser.add_argument("file")
    parser.add_argument("bucket")
    parser.add_argument("key")
    args = parser.parse_args(argv)

    url = urlsplit(args.endpoint_url)
    if url.scheme != "http" or not url.hostname:
        parser.error(f"expected http://HOST[:PORT], got {args.endpoint_url!r} (TLS is disabled in this peer)")
    host = url.netloc  # HOST:PORT, as the Host header: the CRT connects to what it names

    # Imported after the arguments are checked, like any peer: the import is part of the measured cost.
    from awscrt.auth import AwsCredentialsProvider
    from awscrt.http import HttpHeaders, HttpRequest
    from awscrt.s3 import S3Client, S3RequestTlsMode, S3RequestType, create_default_s3_signing_config

    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    credentials = AwsCredentialsProvider.new_static(
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    )
    client = S3Client(
        region=region,
        tls_mode=S3RequestTlsMode.DISABLED,
        signing_config=create_default_s3_signing_config(region=region, credential_provider=credentials),
        part_size=args.part_size or None,
    )
    size = os.stat(args.file).st_size
    headers = HttpHeaders([("Host", host), ("Content-Length", str(size)),
                           ("Content-Type", "application/octet-stream")])
    request = HttpRequest("PUT", f"/{args.bucket}/{args.key}", headers)

    done: dict[str, object] = {}
    finished = threading.Event()

    def on_done(error: BaseException | None = None, status_code: int | None = None,
                error_body: bytes | None = None, **_: object) -> None:
        done.update(error=error, status=status_code, body=error_body)
        finished.set()

    meta = client.make_request(type=S3RequestType.PUT_OBJECT, request=request, send_filepath=args.file,
                               on_done=on_done)
    finished.wait()  # on_done runs after the request's future is set: wait for it, not for the future
    del meta
    error, status, body = done.get("error"), done.get("status"), done.get("body")
    if error is not None:
        detail = body.decode("utf-8", "replace")[:500] if isinstance(body, bytes) else ""
        print(f"awscrt upload failed (status {status}): {error!r} {detail}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"awscrt upload ended with status {status}, expected 200", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
