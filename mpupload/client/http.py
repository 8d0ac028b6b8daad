"""A small REST client for the API server: one ``requests.Session``, connect/read timeouts, typed errors.

Not thread-safe (neither is a ``requests.Session``): give each thread its own :class:`ApiClient`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

from .errors import ApiError, ApiUnreachable, error_for_status

__all__ = ["ApiClient", "CONNECT_TIMEOUT_S", "READ_TIMEOUT_S"]

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 15.0
Timeout = float | tuple[float, float]


class ApiClient:
    def __init__(self, base_url: str, token: str | None = None, *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 read_timeout_s: float = READ_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout: tuple[float, float] = (connect_timeout_s, read_timeout_s)
        self._session = requests.Session()
        # proxies from the environment apply as they do for the store; no retries here: callers decide
        self._session.headers["User-Agent"] = "mpupload"

    def close(self) -> None:
        self._session.close()

    # -- the contract's routes ----------------------------------------------------------------------------------
    def login(self, username: str, password: str) -> dict[str, Any]:
        return self._json(self._request("POST", "/api/v1/auth/login",
                                        body={"username": username, "password": password}, auth=False))

    def logout(self, timeout: Timeout | None = None) -> None:
        self._request("POST", "/api/v1/auth/logout", timeout=timeout)

    def me(self, timeout: Timeout | None = None) -> dict[str, Any]:
        return self._json(self._request("GET", "/api/v1/me", timeout=timeout))

    def create_upload(self, body: Mapping[str, Any], timeout: Timeout | None = None) -> dict[str, Any]:
        return self._json(self._request("POST", "/api/v1/uploads", body=body, timeout=timeout))

    def report(self, record_id: str, body: Mapping[str, Any], timeout: Timeout | None = None) -> dict[str, Any]:
        return self._json(self._request("POST", f"/api/v1/uploads/{record_id}/progress", body=body,
                                        timeout=timeout))

    def post_files(self, record_id: str, files: list[dict[str, Any]], timeout: Timeout | None = None
                   ) -> dict[str, Any]:
        """A directory run's files as they stand now (at most :data:`mpupload.wire.FILES_BATCH_MAX` entries of
        :data:`mpupload.wire.FILE_BATCH_FIELDS`): ``{"accepted": n}``."""
        return self._json(self._request("POST", f"/api/v1/uploads/{record_id}/files", body={"files": files},
                                        timeout=timeout))

    def list_uploads(self) -> list[dict[str, Any]]:
        data = self._request("GET", "/api/v1/uploads").json()
        if not isinstance(data, list):
            raise ApiError(f"the API server at {self.base_url} sent an unexpected answer to GET /api/v1/uploads")
        return data

    def get_upload(self, record_id: str) -> dict[str, Any]:
        return self._json(self._request("GET", f"/api/v1/uploads/{record_id}"))

    # -- plumbing -------------------------------------------------------------------------------------------------
    def _json(self, response: requests.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ApiError(f"the API server at {self.base_url} sent an answer that is not a JSON object",
                           status=response.status_code)
        return data

    def _request(self, method: str, path: str, *, body: Mapping[str, Any] | None = None, auth: bool = True,
                 timeout: Timeout | None = None) -> requests.Response:
        headers = {}
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = self.base_url + path
        try:
            response = self._session.request(method, url, json=None if body is None else dict(body),
                                             headers=headers, timeout=timeout or self.timeout)
        except requests.Timeout:
            raise ApiUnreachable(f"the API server at {self.base_url} did not answer in time") from None
        except requests.RequestException as exc:
            raise ApiUnreachable(f"cannot reach the API server at {self.base_url} "
                                 f"({_reason(exc)})") from None
        if response.status_code >= 400:
            raise error_for_status(response.status_code, _detail(response), self.base_url)
        return response


def _detail(response: requests.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(data, dict) and isinstance(data.get("detail"), str):
        return str(data["detail"])
    return str(data)[:200]


def _reason(exc: requests.RequestException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error"
    return type(exc).__name__
