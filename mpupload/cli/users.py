"""``mpupload users add|list|passwd|remove|revoke`` — manage the API server's accounts.

Acts directly on the server's database (``--database-url`` or ``MPUPLOAD_DATABASE_URL``, the same as
``mpupload serve``), running the migrations first. Passwords come from ``--password-stdin`` (one line) or,
on a terminal, from a prompt.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import UsageError
from ..server.limits import MAX_PASSWORD_BYTES, MAX_USER_NAME_CHARS
from .errors import EXIT_OK

__all__ = ["add_parser", "run", "read_password"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("users", help="manage the API server's user accounts", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str, *, with_name: bool = True, password: bool = False) -> None:
        q = actions.add_parser(name, help=help_text)
        if with_name:
            q.add_argument("name", metavar="NAME")
        if password:
            q.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        q.add_argument("--database-url", help="the server's database (env MPUPLOAD_DATABASE_URL)")
        if name in ("add", "set"):
            q.add_argument("--quota", metavar="SIZE", required=name == "set",
                           help="the most bytes of brokered uploads in flight and stored (e.g. 500GiB; 'none': "
                                "no quota)")
        if name in ("passwd", "remove", "revoke"):
            q.add_argument("--broker-url", help="the servers' broker, to end the user's open sockets at once "
                                                "(env MPUPLOAD_BROKER_URL)")
        q.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
        q.set_defaults(func=run)

    action("add", "create a user", password=True)
    action("set", "change a user's settings (--quota)")
    action("list", "list users", with_name=False)
    action("passwd", "set a user's password (and revoke their tokens)", password=True)
    action("remove", "delete a user, their tokens and their uploads")
    action("revoke", "revoke every token of a user")


def _quota(text: str) -> int | None:
    """``--quota SIZE`` in bytes (``none``: no quota)."""
    from ..units import parse_size

    if text.strip().lower() == "none":
        return None
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise UsageError(f"--quota {text!r}: {exc}") from None
    if not 0 <= size < 2**63:
        raise UsageError(f"--quota {text!r} is out of range")
    return size


def _check_folder_name(name: str) -> None:
    """A user name is also the folder of the user's brokered uploads (``PREFIX/<name>/``): one the storage's key
    rules refuse could never upload there, so it is refused here, with the reason."""
    from ..server.broker import check_key_segments
    from ..server.limits import InputError

    if "/" in name or name in (".", ".."):
        raise UsageError(f"the user name {name[:40]!r} cannot be a folder of the storage (PREFIX/<name>/): choose "
                         "one without '/' that is not '.' or '..'")
    try:
        check_key_segments(name, what="the user name")
    except InputError as exc:
        raise UsageError(f"{exc}: it is also the folder of the user's uploads (PREFIX/<name>/); choose another") \
            from None


def read_password(from_stdin: bool) -> str:
    """The new password: one stdin line, or a confirmed prompt on a terminal."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise UsageError("the passwords do not match; run the command again")
    else:
        raise UsageError("stdin is not a terminal: pass --password-stdin and pipe the password in")
    if not password:
        raise UsageError("the password is empty; give a non-empty password")
    return password


async def _with_db(database_url: str | None, body: Callable[[Any], Awaitable[int]]) -> int:
    from ..server.db import make_engine, make_sessionmaker, upgrade
    from ..server.settings import Settings

    settings = Settings.from_env(database_url=database_url)
    engine = make_engine(settings.database_url)
    try:
        await upgrade(engine)
        async with make_sessionmaker(engine)() as session:
            return await body(session)
    finally:
        await engine.dispose()


def run(args: argparse.Namespace) -> int:
    import asyncio

    try:
        from ..server import users_admin as admin
    except ImportError as exc:
        raise UsageError(f"this command needs the 'server' extra ({exc.name} is missing): "
                         "pip install 'mpupload[server]'") from None
    command = args.users_command
    if command == "list":
        return asyncio.run(_with_db(args.database_url, lambda s: admin.list_users(s, sys.stdout)))
    name: str = args.name
    if not name.strip():
        raise UsageError("the user name is empty")
    if getattr(args, "broker_url", None):
        os.environ["MPUPLOAD_BROKER_URL"] = args.broker_url  # what announce_revocation publishes through
    if command == "add" and len(name) > MAX_USER_NAME_CHARS:
        raise UsageError(f"a user name is at most {MAX_USER_NAME_CHARS} characters, got {len(name)}")
    if command == "add":
        _check_folder_name(name)
    quota = _quota(args.quota) if getattr(args, "quota", None) is not None else None
    if command == "set":
        asyncio.run(_with_db(args.database_url, lambda s: admin.set_quota(s, name, quota)))
        print(f"user {name!r}: quota {'none' if quota is None else quota}")
        return EXIT_OK
    if command in ("add", "passwd"):
        password = read_password(args.password_stdin)
        if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES or "\0" in password:
            raise UsageError(f"a password is at most {MAX_PASSWORD_BYTES} bytes without NUL (a longer one could "
                             "never sign in); choose a shorter one")
        if command == "add":
            asyncio.run(_with_db(args.database_url, lambda s: admin.add_user(s, name, password, quota)))
        else:
            asyncio.run(_with_db(args.database_url, lambda s: admin.set_password(s, name, password)))
        print(f"user {name!r} {'added' if command == 'add' else 'password changed'}")
    elif command == "remove":
        asyncio.run(_with_db(args.database_url, lambda s: admin.remove_user(s, name)))
        print(f"user {name!r} removed")
    else:
        count = asyncio.run(_with_db(args.database_url, lambda s: admin.revoke_tokens(s, name)))
        print(f"revoked {count} token(s) of {name!r}")
    return EXIT_OK
