"""Peer for the benchmark: boto3's ``upload_file``, at s3transfer's defaults or tuned.

Usage: ``python benchmarks/peers/boto3_upload.py [--tuned] ENDPOINT_URL FILE BUCKET KEY``

Without ``--tuned``: ``boto3.client("s3", endpoint_url=URL).upload_file(...)``, nothing changed. Over plain
HTTP botocore then hashes every body with SHA-256 for the SigV4 signature, and boto3 >= 1.36 adds a CRC32
to every request ("when_supported").

With ``--tuned``, the strongest boto3 set-up for a single large file on this kind of machine:
``TransferConfig(max_concurrency=4, multipart_chunksize=32 MiB, use_threads=True)`` (the multipart
threshold stays at s3transfer's 8 MiB), and a client with
``Config(s3={"payload_signing_enabled": False}, request_checksum_calculation="when_required",
response_checksum_validation="when_required")``: ``UNSIGNED-PAYLOAD`` instead of a SHA-256 of the body,
and no CRC (UploadPart and PutObject do not require one), so nothing hashes the bytes.
"""

from __future__ import annotations

import argparse
import sys

import boto3

MIB = 1024 * 1024


def main(argv: list[str]) -> int:
    """Upload ``FILE`` to ``s3://BUCKET/KEY`` at ``ENDPOINT_URL``; credentials come from the environment."""
    parser = argparse.ArgumentParser(prog="boto3_upload.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuned", action="store_true",
                        help="4 threads, 32 MiB parts, unsigned payload, no checksums")
    parser.add_argument("endpoint_url")
    parser.add_argument("file")
    parser.add_argument("bucket")
    parser.add_argument("key")
    args = parser.parse_args(argv)
    if not args.tuned:
        boto3.client("s3", endpoint_url=args.endpoint_url).upload_file(args.file, args.bucket, args.key)
        return 0

    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=args.endpoint_url,
        config=Config(
            s3={"payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    # "classic": s3transfer itself. boto3's CRT transfer manager (which "auto" may pick on some EC2 instance
    # types) ignores endpoint_url; awscrt's client is measured on its own (peers/awscrt_upload.py).
    transfer = TransferConfig(max_concurrency=4, multipart_chunksize=32 * MIB, use_threads=True,
                              preferred_transfer_client="classic")
    client.upload_file(args.file, args.bucket, args.key, Config=transfer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
