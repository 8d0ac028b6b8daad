"""Command-line options shared by the commands that talk to the store (upload, cleanup)."""

from __future__ import annotations

import argparse
import os

from .. import errors as E
from .. import units
from ..storage import StoreConfig

__all__ = ["add_store_arguments", "build_store", "parse_duration"]


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    s = parser.add_argument_group("store")
    s.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS, or AWS_ENDPOINT_URL[_S3])")
    s.add_argument("--region")
    s.add_argument("--profile", help="AWS profile from the shared config files")
    s.add_argument("--ca-bundle", help="CA bundle to verify TLS (default: AWS_CA_BUNDLE or the system store)")
    s.add_argument("--no-verify-ssl", action="store_true", help="do not verify TLS certificates (test endpoints)")
    s.add_argument("--addressing-style", choices=["auto", "path", "virtual"],
                   help="default: path for custom endpoints, auto for AWS")


def build_store(args: argparse.Namespace) -> StoreConfig:
    verify: bool | str | None = None
    if args.no_verify_ssl:
        verify = False
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    elif args.ca_bundle:
        if not os.path.isfile(args.ca_bundle):
            raise E.UsageError(f"--ca-bundle {args.ca_bundle}: no such file")
        verify = args.ca_bundle
    return StoreConfig(endpoint_url=args.endpoint_url, region=args.region, profile=args.profile, verify=verify,
                       addressing_style=args.addressing_style)


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``24h``, ``7d``, ``2w`` -> seconds; a clear ``UsageError`` otherwise."""
    try:
        return units.parse_duration(text)
    except ValueError as exc:
        raise E.UsageError(str(exc)) from None
