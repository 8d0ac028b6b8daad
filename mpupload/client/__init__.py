"""The CLI's side of the API server: the token store (a 0600 file) and a small REST client (requests).

* :mod:`.credentials` — where ``mpupload login`` keeps the token and the server's URL, and how
  ``--api-url``, ``MPUPLOAD_API_URL`` and ``MPUPLOAD_TOKEN`` override it;
* :mod:`.http` — :class:`ApiClient`, one ``requests.Session`` with connect/read timeouts;
* :mod:`.errors` — what the client raises, each with its exit code.
"""

from __future__ import annotations

from .credentials import ApiTarget, Credentials, credentials_path, load_credentials, resolve_target
from .errors import ApiAuthError, ApiError, ApiNotFound, ApiRefused, ApiUnreachable
from .http import ApiClient

__all__ = ["ApiAuthError", "ApiClient", "ApiError", "ApiNotFound", "ApiRefused", "ApiTarget", "ApiUnreachable",
           "Credentials", "credentials_path", "load_credentials", "resolve_target"]
