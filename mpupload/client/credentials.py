"""Where ``mpupload login`` keeps the token, and which API server and token a command uses.

The file is ``$MPUPLOAD_CONFIG_DIR/credentials.json``, else ``$XDG_CONFIG_HOME/mpupload/credentials.json``,
else ``~/.config/mpupload/credentials.json``::

    {"version": 1, "api_url": "http://127.0.0.1:8000", "token": "...", "username": "ada",
     "expires_at": "2026-12-03T10:00:00Z", "saved_at": "2026-11-26T10:00:00Z"}

The directory is 0700 and the file 0600. It is written atomically: a temporary file created 0600 in the same
directory, fsynced, renamed over the old one, then the directory fsynced — a crash leaves the old file or
the new one, never half of one. A file that other users can read (group or world bits) is refused and never
used: the one-line error says to ``chmod 600`` it. (A headless Linux machine has no keyring backend, so a
0600 file is the real token store.)

Precedence: ``--api-url`` > ``MPUPLOAD_API_URL`` > the stored URL; ``MPUPLOAD_TOKEN`` > the stored token
(the stored token is used only for the URL it was issued by).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import errors as E
from ..fsutil import write_atomic

__all__ = ["ApiTarget", "Credentials", "config_dir", "credentials_path", "load_credentials", "save_credentials",
           "remove_credentials", "resolve_target", "normalize_url"]

CREDENTIALS_VERSION = 1
FILE_NAME = "credentials.json"


def config_dir() -> Path:
    env = os.environ.get("MPUPLOAD_CONFIG_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "mpupload"


def credentials_path() -> Path:
    return config_dir() / FILE_NAME


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise E.UsageError(f"API URL {url!r} must start with http:// or https://")
    return url


@dataclass(frozen=True)
class Credentials:
    api_url: str
    token: str
    username: str | None = None
    expires_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": CREDENTIALS_VERSION, "api_url": self.api_url, "token": self.token,
                "username": self.username, "expires_at": self.expires_at,
                "saved_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}


def load_credentials(path: Path | None = None) -> Credentials | None:
    """The stored credentials; ``None`` when there are none; ``UsageError`` when the file is unsafe or broken."""
    path = path or credentials_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise E.UsageError(f"cannot read {path}: {exc.strerror}: remove it and run mpupload login") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            raise E.UsageError(f"{path} can be read by other users ({stat.filemode(st.st_mode)}), so its token "
                               f"was not used: run chmod 600 {path} (and consider mpupload login for a new token)")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read()
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
        return Credentials(api_url=str(data["api_url"]), token=str(data["token"]),
                           username=data.get("username"), expires_at=data.get("expires_at"))
    except (ValueError, KeyError, TypeError):
        raise E.UsageError(f"{path} is not a valid credentials file: remove it and run mpupload login") from None


def save_credentials(creds: Credentials, path: Path | None = None) -> Path:
    """Write atomically, 0600, in a 0700 directory."""
    path = path or credentials_path()
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    payload = json.dumps(creds.to_json(), indent=2).encode() + b"\n"
    write_atomic(path, payload, 0o600)
    return path


def remove_credentials(path: Path | None = None) -> bool:
    """Delete the file; False when there was none."""
    try:
        (path or credentials_path()).unlink()
    except FileNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class ApiTarget:
    """The API server a command talks to and the token it uses (``None``: not logged in there)."""

    api_url: str
    token: str | None
    username: str | None = None


def resolve_target(api_url: str | None = None) -> ApiTarget | None:
    """``--api-url`` > ``MPUPLOAD_API_URL`` > the stored URL; ``MPUPLOAD_TOKEN`` > the stored token.

    ``None`` when no server is configured at all. The credentials file is read only when needed, and an
    unsafe one raises ``UsageError`` (exit 2).
    """
    url = api_url or os.environ.get("MPUPLOAD_API_URL") or None
    env_token = os.environ.get("MPUPLOAD_TOKEN") or None
    if url and env_token:
        return ApiTarget(normalize_url(url), env_token)
    stored = load_credentials()
    if url is None:
        if stored is None:
            return None
        return ApiTarget(stored.api_url, env_token or stored.token, stored.username)
    url = normalize_url(url)
    if env_token:
        return ApiTarget(url, env_token)
    if stored is not None and normalize_url(stored.api_url) == url:
        return ApiTarget(url, stored.token, stored.username)
    return ApiTarget(url, None)
