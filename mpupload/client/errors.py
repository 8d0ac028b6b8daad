"""What the API client raises: a branch of :class:`~mpupload.errors.MpuploadError` with its exit code.

::

    ApiError             (1)   the server answered with an error (5xx, or something unexpected)
    ├── ApiUnreachable   (1)   no answer: connection refused, DNS, TLS, or a timeout
    ├── ApiAuthError     (3)   401 (bad, expired or revoked token; wrong password), 403, 429 at login
    ├── ApiNotFound      (2)   404: no such upload for this user
    └── ApiRefused       (2)   409/422: the server refused the request's content
"""

from __future__ import annotations

from ..errors import MpuploadError

__all__ = ["ApiError", "ApiUnreachable", "ApiAuthError", "ApiNotFound", "ApiRefused", "error_for_status"]


class ApiError(MpuploadError):
    exit_code = 1

    def __init__(self, message: str, *, status: int | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        #: the HTTP status (``None`` when there was no answer)
        self.status = status
        #: the server's own message (FastAPI's ``detail``), when it sent one
        self.detail = detail


class ApiUnreachable(ApiError):
    pass


class ApiAuthError(ApiError):
    exit_code = 3


class ApiNotFound(ApiError):
    exit_code = 2


class ApiRefused(ApiError):
    exit_code = 2


def error_for_status(status: int, detail: str, url: str) -> ApiError:
    """The exception for an HTTP error answer; ``detail`` is the server's message."""
    text = detail or f"HTTP {status}"
    if status in (401, 403, 429):
        return ApiAuthError(text, status=status, detail=detail)
    if status == 404:
        return ApiNotFound(text, status=status, detail=detail)
    if status in (400, 409, 422):
        return ApiRefused(f"the API server refused the request: {text}", status=status, detail=detail)
    return ApiError(f"the API server at {url} answered HTTP {status}: {text}", status=status, detail=detail)
