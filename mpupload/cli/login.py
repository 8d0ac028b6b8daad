"""``mpupload login``, ``logout`` and ``whoami``: the token the CLI uses with the API server.

The token is stored in a 0600 file (see :mod:`mpupload.client.credentials`); ``MPUPLOAD_API_URL`` and
``MPUPLOAD_TOKEN`` override it. The password is asked with ``getpass`` on a terminal, or read from stdin
with ``--password-stdin`` (scripts, CI); without either there is nothing to ask, and the command says so.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
import sys
from typing import Any
from urllib.parse import urlsplit

from .. import errors as E
from ..client import ApiAuthError, ApiUnreachable, Credentials, credentials_path, load_credentials
from ..client.credentials import normalize_url, remove_credentials, resolve_target, save_credentials
from .errors import EXIT_OK

__all__ = ["add_parsers"]

LOGIN_TIMEOUT_S = 10.0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("login", help="sign in to the API server and keep the token",
                       description="Sign in to the API server; the token is kept in a 0600 file.")
    p.add_argument("--api-url", metavar="URL", help="the API server (default: MPUPLOAD_API_URL, else the last one)")
    p.add_argument("--username", "-u", metavar="NAME", help="default: asked on the terminal")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin (one line)")
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
    p.set_defaults(func=run_login)

    p = sub.add_parser("logout", help="revoke the token and forget it")
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
    p.set_defaults(func=run_logout)

    p = sub.add_parser("whoami", help="who the API server thinks you are")
    p.add_argument("--api-url", metavar="URL")
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
    p.set_defaults(func=run_whoami)


def _api_url(flag: str | None) -> str:
    url = flag or os.environ.get("MPUPLOAD_API_URL")
    if not url:
        try:
            stored = load_credentials()
        except E.UsageError:
            stored = None  # a new login replaces an unsafe file
        if stored is not None:
            url = stored.api_url
    if not url:
        raise E.UsageError("which API server? pass --api-url URL (or set MPUPLOAD_API_URL)")
    return normalize_url(url)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if not password:
            raise E.UsageError("--password-stdin: stdin gave no password")
        return password
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {args.username}: ")
    raise E.UsageError("no terminal to ask for the password on: pipe it in with --password-stdin")


def _username(args: argparse.Namespace) -> str:
    if args.username:
        return str(args.username)
    if sys.stdin.isatty() and not args.password_stdin:
        name = input("username: ").strip()
        if name:
            return name
    raise E.UsageError("no user name: pass --username NAME")


def plain_http_to_remote(url: str) -> bool:
    """Whether a password sent to ``url`` would cross a network in clear text: ``http://`` to a host that is
    not loopback (``localhost`` names and 127.0.0.0/8, ::1 are loopback; any other name may not be)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        return False
    host = (parts.hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def run_login(args: argparse.Namespace) -> int:
    from ..client import ApiClient  # requests: only when a command runs

    url = _api_url(args.api_url)
    if plain_http_to_remote(url):  # before the password is asked, so there is time to stop
        print(f"warning: {url} is plain http: the password crosses the network unencrypted (use https://)",
              file=sys.stderr, flush=True)
    args.username = _username(args)
    password = _password(args)
    client = ApiClient(url, connect_timeout_s=3.0, read_timeout_s=LOGIN_TIMEOUT_S)
    try:
        answer = client.login(args.username, password)
    except ApiAuthError as exc:
        if exc.status == 401:
            raise ApiAuthError("wrong username or password", status=401, detail=exc.detail) from None
        raise ApiAuthError(f"the API server refused the login: {exc.detail or exc}", status=exc.status,
                           detail=exc.detail) from None
    finally:
        client.close()
    token = answer.get("token")
    if not isinstance(token, str) or not token:
        raise E.MpuploadError(f"the API server at {url} sent no token")
    path = save_credentials(Credentials(url, token, args.username, answer.get("expires_at")))
    expires = f" until {answer['expires_at']}" if answer.get("expires_at") else ""
    print(f"logged in to {url} as {args.username}{expires} (token saved in {path})")
    return EXIT_OK


def run_logout(args: argparse.Namespace) -> int:
    from ..client import ApiClient  # requests: only when a command runs

    path = credentials_path()
    try:
        stored = load_credentials(path)
    except E.UsageError:  # unsafe or broken: removed, never sent anywhere
        removed = remove_credentials(path)
        print(f"removed {path} without using it" if removed else "not logged in")
        return EXIT_OK
    if stored is None:
        print("not logged in")
        return EXIT_OK
    client = ApiClient(stored.api_url, stored.token, connect_timeout_s=3.0, read_timeout_s=5.0)
    note = ""
    try:
        client.logout()
    except ApiAuthError:
        note = " (the token had already expired or been revoked)"
    except ApiUnreachable as exc:
        note = f"; {exc}, so the token stays valid there until it expires"
    finally:
        client.close()
        remove_credentials(path)
    print(f"logged out of {stored.api_url}{note}")
    return EXIT_OK


def run_whoami(args: argparse.Namespace) -> int:
    from ..client import ApiClient  # requests: only when a command runs

    target = resolve_target(args.api_url)
    if target is None:
        raise ApiAuthError("not logged in: run mpupload login --api-url URL")
    if not target.token:
        raise ApiAuthError(f"not logged in to {target.api_url}: run mpupload login")
    client = ApiClient(target.api_url, target.token, read_timeout_s=10.0)
    try:
        me = client.me()
    except ApiAuthError as exc:
        raise ApiAuthError(f"the API server at {target.api_url} rejected the token ({exc.detail or exc}): "
                           "run mpupload login", status=exc.status) from None
    finally:
        client.close()
    print(f"{me.get('username')} at {target.api_url}")
    return EXIT_OK
