"""``POST /api/v1/uploads/{id}/progress`` as a plain ASGI endpoint in front of the FastAPI app: the hot path.

Every CLI posts a report every 2 s, so a server with a thousand uploads takes 500 a second. Through FastAPI's
routing, dependency injection, validation and encoder a report cost about three times its database work;
here it is: parse the body (:func:`..uploads.parse_report`), one ``UPDATE`` that also checks the token and
one ``INSERT``, committed together with the reports that arrive at the same time (:func:`..uploads.ingest`,
group commit), publish, answer. Every other request goes on to FastAPI.
The answers are the same as the REST API's: JSON ``{"detail": ...}`` errors, 401 with ``WWW-Authenticate``.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from .. import uploads as svc
from ..auth import token_user
from ..db.engine import UNAVAILABLE, unavailable_reason
from .deps import ServerState

__all__ = ["ProgressEndpoint", "MAX_BODY_BYTES", "UNAVAILABLE_DETAIL", "RETRY_AFTER_S"]

log = logging.getLogger(__name__)
UNAVAILABLE_DETAIL = "the database is unavailable right now: retry in a moment"
RETRY_AFTER_S = "1"

MAX_BODY_BYTES = 1024 * 1024
_PATH = re.compile(r"/api/v1/uploads/([^/]+)/progress")
_JSON = (b"content-type", b"application/json")
_BEARER = (b"www-authenticate", b"Bearer")


class _Refused(Exception):
    def __init__(self, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or []


class ProgressEndpoint:
    """Answers progress reports itself; passes everything else (and the lifespan) to ``app``."""

    def __init__(self, app: ASGIApp, fastapi_app: Any) -> None:
        self.app = app
        self._fastapi = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _answer(send, 405, {"detail": "Method Not Allowed"}, [(b"allow", b"POST")])
            return
        try:
            answer = await self._progress(match.group(1), scope, receive)
        except _Refused as refused:
            extra = [_BEARER] if refused.status == 401 else []
            await _answer(send, refused.status, {"detail": refused.detail}, [*extra, *refused.headers])
            return
        await _answer(send, 200, answer)

    async def _progress(self, upload_id: str, scope: Scope, receive: Receive) -> dict[str, Any]:
        state: ServerState = self._fastapi.state.server
        token = _bearer(scope)
        try:
            report = _report(await _body(receive))
        except _Refused:
            await _require_token(state, token)  # a bad token is a 401 whatever the body says
            raise
        try:
            upload, accepted = await svc.ingest(state.sessionmaker, state.writer, token, upload_id, report,
                                                state.settings.history_limit)
        except svc.Unauthorized:
            raise _Refused(401, "invalid, expired or revoked token: sign in again with mpupload login") from None
        except svc.NotFound:
            raise _Refused(404, f"no upload {upload_id!r}: check the id with mpupload list") from None
        except svc.ProgressError as exc:
            raise _Refused(exc.status_code, str(exc)) from None
        except UNAVAILABLE as exc:
            reason = unavailable_reason(exc)
            if reason is None:
                raise
            log.warning("database unavailable (%s): progress report for %s answered 503", reason, upload_id)
            raise _Refused(503, UNAVAILABLE_DETAIL, [(b"retry-after", RETRY_AFTER_S.encode())]) from None
        record = svc.upload_dict(upload, state.settings.live_after_s)
        if accepted and state.bus is not None:
            await state.bus.publish(str(upload.owner_id), record)
        answer: dict[str, Any] = {"ignored": not accepted, "upload": record}
        if upload.stop_requested:
            answer["action"] = "stop"
        return answer


async def _require_token(state: ServerState, token: str) -> None:
    async with state.sessionmaker() as session:
        if await token_user(session, token) is None:
            raise _Refused(401, "invalid, expired or revoked token: sign in again with mpupload login")


def _bearer(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            break
    raise _Refused(401, "missing bearer token: sign in with mpupload login")


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Refused(400, "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _Refused(413, f"a progress report is at most {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _report(body: bytes) -> svc.ProgressReport:
    try:
        data = json.loads(body)
    except ValueError:
        raise _Refused(422, "the body is not JSON: send a progress snapshot object") from None
    except RecursionError:  # nested deeper than the interpreter's recursion limit
        raise _Refused(400, "the body is nested too deeply: send a flat progress snapshot object") from None
    try:
        return svc.parse_report(data)
    except svc.ProgressError as exc:
        raise _Refused(exc.status_code, str(exc)) from None


async def _answer(send: Send, status: int, body: dict[str, Any],
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [_JSON, (b"content-length", str(len(payload)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})
