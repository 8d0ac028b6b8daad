"""``mpupload serve`` — run the API server: REST for the CLI, GraphQL at /graphql, the dashboard at /.

The database defaults to SQLite in the user's data directory; ``--database-url`` (or
``MPUPLOAD_DATABASE_URL``) takes ``sqlite:///PATH`` or ``postgresql://USER@HOST/DB``. Migrations run at start.
Requests for other host names than loopback and --host are refused (--allowed-hosts); off loopback, serve
HTTPS (--certfile/--keyfile) or put a TLS proxy in front (--forwarded-allow-ips). See docs/server.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import UsageError
from .errors import EXIT_OK

__all__ = ["add_parser", "run", "wildcard_warning"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the API server", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--database-url", help="sqlite:///PATH or postgresql://... (env MPUPLOAD_DATABASE_URL)")
    p.add_argument("--broker-url", help="pub/sub backend for several replicas (env MPUPLOAD_BROKER_URL)")
    p.add_argument("--token-ttl", type=float, help="token lifetime in seconds (env MPUPLOAD_TOKEN_TTL)")
    p.add_argument("--access-log", action="store_true",
                   help="log every request (off by default: at 500 progress reports/s it costs a third of the CPU)")
    p.add_argument("--allowed-hosts", metavar="NAMES",
                   help="comma-separated Host names to answer, '*' for any (env MPUPLOAD_ALLOWED_HOSTS; default: "
                        "localhost, 127.0.0.1, ::1 and --host)")
    p.add_argument("--forwarded-allow-ips", metavar="ADDRESSES",
                   help="comma-separated proxy addresses or networks whose X-Forwarded-For/-Proto is trusted "
                        "(env MPUPLOAD_FORWARDED_ALLOW_IPS; default: none, the peer is the client)")
    p.add_argument("--limit-concurrency", type=int, metavar="N",
                   help="open connections before new requests get 503 (env MPUPLOAD_LIMIT_CONCURRENCY; "
                        "default 2048, less under a low open-file limit)")
    p.add_argument("--certfile", help="serve HTTPS with this certificate chain (PEM); needs --keyfile")
    p.add_argument("--keyfile", help="the private key (PEM) of --certfile")
    storage = p.add_argument_group("storage for brokered uploads (credentials: the server's own environment or "
                                   "profile, never a request's)")
    storage.add_argument("--storage", metavar="s3://BUCKET[/PREFIX]",
                         help="the server's storage; each user writes under PREFIX/<username>/ (env MPUPLOAD_STORAGE)")
    storage.add_argument("--storage-endpoint-url", metavar="URL",
                         help="the storage's endpoint (env MPUPLOAD_STORAGE_ENDPOINT_URL; default AWS_ENDPOINT_URL, "
                              "else AWS)")
    storage.add_argument("--storage-region", help="the storage's region (env MPUPLOAD_STORAGE_REGION)")
    storage.add_argument("--storage-ca-bundle", metavar="PATH",
                         help="CA bundle for the storage's TLS certificate (env MPUPLOAD_STORAGE_CA_BUNDLE)")
    storage.add_argument("--storage-addressing-style", choices=("auto", "path", "virtual"),
                         help="bucket in the path or in the host name (env MPUPLOAD_STORAGE_ADDRESSING_STYLE; "
                              "default: path for custom endpoints)")
    storage.add_argument("--storage-content-md5", action="store_true", default=None,
                         help="sign each part's Content-MD5 too, for stores that check it but not x-amz-checksum-* "
                              "(Ceph RGW 16) (env MPUPLOAD_STORAGE_CONTENT_MD5=1)")
    storage.add_argument("--stale-after", metavar="DURATION",
                         help="abort a brokered upload on the storage when nothing has touched it for this long "
                              "(no sign, complete or progress report), e.g. 24h, 90m (env MPUPLOAD_STALE_AFTER; "
                              "default 24h)")
    p.add_argument("--debug", action="store_true", help="debug logging and tracebacks; GraphQL introspection on")
    p.set_defaults(func=run)


def wildcard_warning(host: str, allowed_hosts: tuple[str, ...], chosen: str | None) -> str | None:
    """What to say when the server listens on every address but answers only the default host names."""
    if host not in ("0.0.0.0", "::") or chosen:
        return None
    return (f"listening on {host}, but answering only requests for {', '.join(allowed_hosts)}: "
            "pass --allowed-hosts with the names clients use")


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..server.app import create_app
        from ..server.edge import http_protocol
        from ..server.graphql.router import MAX_WS_MESSAGE_BYTES
        from ..server.settings import Settings
    except ImportError as exc:
        raise UsageError(f"the server needs the 'server' extra ({exc.name} is missing): "
                         "pip install 'mpupload[server]'") from None
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    if args.token_ttl is not None and args.token_ttl <= 0:
        raise UsageError(f"--token-ttl must be positive, got {args.token_ttl}")
    if args.limit_concurrency is not None and args.limit_concurrency <= 0:
        raise UsageError(f"--limit-concurrency must be positive, got {args.limit_concurrency}")
    if bool(args.certfile) != bool(args.keyfile):
        raise UsageError("--certfile and --keyfile go together")
    for tls_file in (args.certfile, args.keyfile):
        if tls_file and not os.path.isfile(tls_file):
            raise UsageError(f"{tls_file}: no such file")
    settings = Settings.from_env(database_url=args.database_url, broker_url=args.broker_url, host=args.host,
                                 port=args.port, token_ttl_s=args.token_ttl, allowed_hosts=args.allowed_hosts,
                                 forwarded_allow_ips=args.forwarded_allow_ips,
                                 limit_concurrency=args.limit_concurrency, debug=args.debug,
                                 storage=args.storage, storage_endpoint_url=args.storage_endpoint_url,
                                 storage_region=args.storage_region, storage_ca_bundle=args.storage_ca_bundle,
                                 storage_addressing_style=args.storage_addressing_style,
                                 storage_content_md5=args.storage_content_md5, stale_after=args.stale_after)
    warning = wildcard_warning(settings.host, settings.allowed_hosts,
                               args.allowed_hosts or os.environ.get("MPUPLOAD_ALLOWED_HOSTS"))
    if warning:
        print(f"mpupload: warning: {warning}", file=sys.stderr, flush=True)
    app = create_app(settings)
    # No permessage-deflate: events are a few hundred bytes, and compressing every one of them for every
    # subscriber cost more CPU than it saved bytes. proxy_headers is off here: create_app reads forwarded
    # headers itself, and only from --forwarded-allow-ips (uvicorn's own default trusts 127.0.0.1).
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="debug" if args.debug else "info",
                access_log=args.access_log, lifespan="on", ws_per_message_deflate=False,
                ws_max_size=MAX_WS_MESSAGE_BYTES,  # a GraphQL message is a query, never more than a record
                proxy_headers=False, server_header=False,
                http=http_protocol(settings.header_timeout_s), limit_concurrency=settings.limit_concurrency,
                timeout_keep_alive=5, ssl_certfile=args.certfile, ssl_keyfile=args.keyfile)
    return EXIT_OK
