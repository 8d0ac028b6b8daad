"""The CLI's side of the API server: the token store (a 0600 file) and a small REST client (requests).

* :mod:`.credentials` — where ``mpupload login`` keeps the token and the server's URL, and how
  ``--api-url``, ``MPUPLOAD_API_URL`` and ``MPUPLOAD_TOKEN`` override it;
* :mod:`.http` — :class:`ApiClient`, one ``requests.Session`` with connect/read timeouts;
* :mod:`.errors` — what the client raises, each with its exit code.

:class:`ApiClient` (and ``requests`` under it) is loaded on first use, so that the errors and the token store
cost nothing to import (the push sink and the CLI's argument parsing need them, not HTTP).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .credentials import ApiTarget, Credentials, credentials_path, load_credentials, resolve_target
from .errors import ApiAuthError, ApiError, ApiNotFound, ApiRefused, ApiUnreachable

if TYPE_CHECKING:
    from .http import ApiClient

__all__ = ["ApiAuthError", "ApiClient", "ApiError", "ApiNotFound", "ApiRefused", "ApiTarget", "ApiUnreachable",
           "Credentials", "credentials_path", "load_credentials", "resolve_target"]


def __getattr__(name: str) -> Any:  # PEP 562: requests is loaded with the first ApiClient
    if name == "ApiClient":
        return importlib.import_module(".http", __name__).ApiClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
