"""Peer for the benchmark: boto3's ``upload_file`` with s3transfer's defaults, nothing tuned.

Usage: ``python benchmarks/peers/boto3_upload.py ENDPOINT_URL FILE BUCKET KEY``
"""

from __future__ import annotations

import sys

import boto3


def main(argv: list[str]) -> int:
    """Upload ``FILE`` to ``s3://BUCKET/KEY`` at ``ENDPOINT_URL``; credentials come from the environment."""
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    endpoint_url, path, bucket, key = argv
    boto3.client("s3", endpoint_url=endpoint_url).upload_file(path, bucket, key)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
