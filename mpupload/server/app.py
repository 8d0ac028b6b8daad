"""The application factory: ``create_app(settings)`` builds a FastAPI app with no module-level state.

The lifespan creates the engine, runs the migrations (safe with several replicas), builds the session
factory, the progress writer (group commit), the login rate limiter and the bus, and at shutdown writes
what is queued and disposes of the engine. A test or another
component may pass its own ``bus``. It also keys the bus with the database's signing key and runs the
sessions watcher that ends revoked or expired WebSockets (:mod:`.graphql.sessions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketState

from .api import build_router
from .api.deps import ServerState
from .api.ingest import RETRY_AFTER_S, UNAVAILABLE_DETAIL, ProgressEndpoint
from .auth import LoginRateLimiter, prepare_dummy_hash
from .broker import SignLimiter
from .bus import Bus, make_bus
from .bus.signing import attach_signer, load_signer
from .db import make_engine, make_sessionmaker, upgrade
from .db.engine import UNAVAILABLE, unavailable_reason
from .edge import EdgeMiddleware
from .graphql import build_graphql_router
from .graphql.sessions import Sessions
from .limits import InputError
from .reaper import run_reaper
from .settings import Settings
from .uploads import progress_writer
from .web import mount_dashboard

__all__ = ["create_app"]

log = logging.getLogger(__name__)


async def _database_unavailable(conn: Request | WebSocket, exc: Exception) -> Response | None:
    """503 with ``Retry-After`` while the database cannot be reached (a WebSocket is closed with 1013, "try
    again later", which clients retry); any other database error stays a 500."""
    reason = unavailable_reason(exc)
    if reason is None:
        raise exc
    if isinstance(conn, WebSocket):
        log.warning("database unavailable (%s): WebSocket %s closed with 1013 (try again later)", reason,
                    conn.url.path)
        if conn.application_state != WebSocketState.DISCONNECTED:
            await conn.close(1013, "the database is unavailable right now: try again later")
        return None
    log.warning("database unavailable (%s): %s %s answered 503", reason, conn.method, conn.url.path)
    return JSONResponse({"detail": UNAVAILABLE_DETAIL}, status_code=503, headers={"Retry-After": RETRY_AFTER_S})


async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    """422 naming each wrong field (``loc``, ``msg``, ``type``) without echoing what was sent: FastAPI's own
    answer repeats the input, which may be a password, megabytes, or a lone surrogate that cannot be encoded
    (a 500). ASCII JSON, so nothing in it can fail to encode. A refusal by :mod:`.limits` (an
    :class:`~.limits.InputError` from a request dataclass) is a plain message, as the CLI shows it."""
    errors = exc.errors()
    ours = [error.get("ctx", {}).get("error") for error in errors]
    detail: str | list[dict[str, Any]]
    for error in ours:
        if isinstance(error, BaseException):  # its frames hold the whole input until the cyclic GC runs
            error.__traceback__ = None
    if errors and all(isinstance(error, InputError) for error in ours):
        detail = "; ".join(str(error) for error in ours)
    else:
        detail = [{"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")),
                   "type": str(error.get("type", ""))} for error in errors]
    return Response(json.dumps({"detail": detail}, default=str), status_code=422, media_type="application/json")


def _storage(settings: Settings) -> Any:
    """The server's :class:`~mpupload.storage.port.Store` for brokered uploads (``None``: no ``--storage``).
    Credentials come from the server's own environment or profile, never from a request."""
    if settings.storage is None:
        return None
    from ..storage.boto3_store import Boto3Store
    from ..storage.config import StoreConfig

    return Boto3Store(StoreConfig(endpoint_url=settings.storage_endpoint_url, region=settings.storage_region,
                                  verify=settings.storage_ca_bundle, addressing_style=settings.storage_addressing_style,
                                  max_pool_connections=16))


def _warm_signer(store: Any) -> None:
    """Build the storage's presigning client (a failure is the first sign request's to report)."""
    with contextlib.suppress(Exception):
        store.presign_client  # noqa: B018 - built on first use


def create_app(settings: Settings, *, bus: Bus | None = None) -> FastAPI:
    """A ready-to-serve ASGI app for ``settings`` (FastAPI, with the progress endpoint in front, and the HTTP
    edge checks of :mod:`.edge` in front of that; forwarded headers are read only from trusted proxies)."""
    app = _build(settings, bus)
    app.add_middleware(ProgressEndpoint, fastapi_app=app)
    app.add_middleware(EdgeMiddleware, allowed_hosts=settings.allowed_hosts, body_timeout_s=settings.body_timeout_s)
    if settings.forwarded_allow_ips:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        # outermost, so the Host check and the login limiter see the client the proxy saw
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.forwarded_allow_ips))
    return app


def _build(settings: Settings, bus: Bus | None) -> FastAPI:
    chosen_bus = bus if bus is not None else make_bus(settings.broker_url, settings.subscriber_buffer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        writer = progress_writer(engine)
        started = False
        watcher: asyncio.Task[None] | None = None
        reaper: asyncio.Task[None] | None = None
        warm: asyncio.Task[None] | None = None
        # the login's dummy hash, off the event loop and not at import (a login that needs it first waits)
        dummy = asyncio.create_task(asyncio.to_thread(prepare_dummy_hash), name="dummy-hash")
        try:
            await upgrade(engine)
            sessionmaker = make_sessionmaker(engine)
            async with sessionmaker() as session:
                attach_signer(chosen_bus, await load_signer(session))
            start = getattr(chosen_bus, "start", None)
            if start is not None:
                await start()
            started = True
            app.state.server = ServerState(
                settings=settings, sessionmaker=sessionmaker,
                limiter=LoginRateLimiter(settings.login_max_per_user, settings.login_max_per_address,
                                         settings.login_window_s, max_keys=settings.login_max_keys),
                bus=chosen_bus, writer=writer, store=_storage(settings),
                sign_limiter=SignLimiter(settings.sign_max_per_minute))
            app.state.bus = chosen_bus
            app.state.sessions = sessions = Sessions(sessionmaker, settings.token_recheck_s,
                                                     settings.ws_max_per_user)
            watcher = asyncio.create_task(sessions.run(chosen_bus), name="sessions-watcher")
            if app.state.server.store is not None:  # brokered uploads left idle are aborted (see .reaper)
                reaper = asyncio.create_task(run_reaper(app.state.server), name="reaper")
                # the signing client, built now off the event loop: not by the first sign request (about a
                # second of CPU; every sign request of that moment would wait for it)
                warm = asyncio.create_task(asyncio.to_thread(_warm_signer, app.state.server.store), name="signer")
            # Everything imported and built so far lives as long as the process: keep it out of the cyclic
            # collector's generations, and collect less often (every report allocates; pauses show in p99).
            gc.freeze()
            gc.set_threshold(50_000, 20, 100)
            yield
        finally:
            with contextlib.suppress(Exception):
                await dummy
            for task in (watcher, reaper, warm):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await writer.close()
            close = getattr(chosen_bus, "close", None)
            if started and close is not None:
                await close()
            await engine.dispose()

    # No /docs or /redoc: they load their scripts from a CDN (the OpenAPI schema stays at /openapi.json)
    app = FastAPI(title="mpupload", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_exception_handler(RequestValidationError, cast(Any, _invalid_request))
    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, cast(Any, _database_unavailable))  # one handler for HTTP and WebSocket
    app.include_router(build_router())
    app.include_router(build_graphql_router(settings), prefix="/graphql")
    mount_dashboard(app)
    return app
