"""The suite's own environment: nothing the user running it has configured may change a result.

Every pytest process calls :func:`isolate` before it imports anything else of the suite's (``tests/conftest.py``):
it gets a fresh HOME and XDG directories of its own, and the variables that would point the CLI, boto3 or httpx
at the user's servers, credentials or proxies are dropped. Every process a test starts inherits this
environment, so a user who once ran ``mpupload login`` to a server that is down, or exported ``AWS_PROFILE``,
``MPUPLOAD_API_URL`` or ``https_proxy``, gets the same results as a clean CI machine. A test that needs one of
these variables sets it itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, MutableMapping

__all__ = ["KEPT", "isolate", "isolated_environ", "remove"]

#: the suite's own knobs (set by scripts/run-tests.sh or a developer on purpose), kept as they are
KEPT = ("MPUPLOAD_TEST_", "MPUPLOAD_ARTIFACTS_DIR")

#: prefixes of variables that configure a client or a server: the user's, never the suite's
DROPPED_PREFIXES = ("MPUPLOAD_", "AWS_", "BOTO_")

#: single variables with the same effect: proxies (httpx and botocore honour them), CA bundles, boto config
DROPPED_NAMES = frozenset({
    "http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "BOTO_CONFIG",
})

#: the per-user directories every XDG-aware program (the CLI, the server's default database, Chromium) uses
XDG_DIRS = {"XDG_CONFIG_HOME": "config", "XDG_DATA_HOME": "data", "XDG_STATE_HOME": "state",
            "XDG_CACHE_HOME": "cache", "XDG_RUNTIME_DIR": "runtime"}


def isolated_environ(environ: Mapping[str, str], home: str) -> dict[str, str]:
    """``environ`` without the user's configuration, with HOME and the XDG directories under ``home``."""
    env = {
        name: value for name, value in environ.items()
        if name.startswith(KEPT) or not (name.startswith(DROPPED_PREFIXES) or name in DROPPED_NAMES)
    }
    env["HOME"] = home
    for name, sub in XDG_DIRS.items():
        env[name] = os.path.join(home, sub)
    env["MPUPLOAD_STATE_DIR"] = os.path.join(home, "state", "mpupload")
    return env


def isolate(environ: MutableMapping[str, str] | None = None) -> str:
    """Replace ``environ`` (the process's own by default) by :func:`isolated_environ` over a new private HOME;
    return that HOME (removed by :func:`remove` when the process is done with it)."""
    environ = os.environ if environ is None else environ
    home = tempfile.mkdtemp(prefix="mpupload-test-home-")  # 0700
    _made.add(home)
    env = isolated_environ(environ, home)
    for sub in XDG_DIRS.values():
        os.makedirs(os.path.join(home, sub), mode=0o700, exist_ok=True)
    environ.clear()
    environ.update(env)
    return home


def remove(home: str) -> None:
    """Remove a HOME that :func:`isolate` made in this process, and nothing else (never a real home)."""
    if home in _made:
        _made.discard(home)
        shutil.rmtree(home, ignore_errors=True)


_made: set[str] = set()
