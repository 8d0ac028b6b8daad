"""``mpupload serve`` — run the API server: REST for the CLI, GraphQL at /graphql, the dashboard at /.

The database defaults to SQLite in the user's data directory; ``--database-url`` (or
``MPUPLOAD_DATABASE_URL``) takes ``sqlite:///PATH`` or ``postgresql://USER@HOST/DB``. Migrations run at start.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageError
from .errors import EXIT_OK

__all__ = ["add_parser", "run"]


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
    p.add_argument("--debug", action="store_true", help="debug logging and tracebacks; GraphQL introspection on")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..server.app import create_app
        from ..server.graphql.router import MAX_WS_MESSAGE_BYTES
        from ..server.settings import Settings
    except ImportError as exc:
        raise UsageError(f"the server needs the 'server' extra ({exc.name} is missing): "
                         "pip install 'mpupload[server]'") from None
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    if args.token_ttl is not None and args.token_ttl <= 0:
        raise UsageError(f"--token-ttl must be positive, got {args.token_ttl}")
    settings = Settings.from_env(database_url=args.database_url, broker_url=args.broker_url, host=args.host,
                                 port=args.port, token_ttl_s=args.token_ttl, debug=args.debug)
    app = create_app(settings)
    # No permessage-deflate: events are a few hundred bytes, and compressing every one of them for every
    # subscriber cost more CPU than it saved bytes.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="debug" if args.debug else "info",
                access_log=args.access_log, lifespan="on", ws_per_message_deflate=False,
                ws_max_size=MAX_WS_MESSAGE_BYTES)
    return EXIT_OK
