"""``mpupload users`` as subprocesses, against the database a real server is using.

Commands whose outcomes do not depend on each other run side by side (each is a Python process start-up)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from .conftest import Backend, login
from .support import ServerProcess, cli

pytestmark = pytest.mark.integration


def together(*calls: Callable[[], Any]) -> list[Any]:
    """Run independent calls at once; their results in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_users_add_list_passwd_revoke_remove(server: ServerProcess, backend: Backend) -> None:
    db = ("--database-url", backend.database_url)

    def users(*args: str, stdin: str | None = None) -> Callable[[], subprocess.CompletedProcess[str]]:
        return lambda: cli("users", *args, *db, stdin=stdin)

    assert users("add", "frank", "--password-stdin", stdin="first-pw\n")().returncode == 0
    again, listed, first = together(users("add", "frank", "--password-stdin", stdin="x\n"), users("list"),
                                    lambda: login(server.base_url, "frank", "first-pw"))
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already exists" in again.stderr
    assert listed.returncode == 0 and "frank\tcreated " in listed.stdout and "alice\t" in listed.stdout
    assert first.status_code == 200
    headers = {"Authorization": f"Bearer {first.json()['token']}"}

    listed, passwd = together(users("list"), users("passwd", "frank", "--password-stdin", stdin="second-pw\n"))
    assert "frank\tcreated" in listed.stdout  # a logged-in user is listed as before
    assert passwd.returncode == 0
    assert httpx.get(f"{server.base_url}/api/v1/me", headers=headers).status_code == 401  # passwd revokes
    assert login(server.base_url, "frank", "second-pw").status_code == 200

    revoked = users("revoke", "frank")()
    assert revoked.returncode == 0 and "revoked 1 token(s)" in revoked.stdout

    assert users("remove", "frank")().returncode == 0
    listed, refused, gone = together(users("list"), lambda: login(server.base_url, "frank", "second-pw"),
                                     users("remove", "frank"))
    assert "frank" not in listed.stdout
    assert refused.status_code == 401
    assert gone.returncode == 2 and "no user 'frank'" in gone.stderr


def test_users_password_input_errors(backend: Backend) -> None:
    db = ("--database-url", backend.database_url)
    no_tty, empty, unknown = together(
        lambda: cli("users", "add", "gina", *db),  # stdin is /dev/null, not a terminal
        lambda: cli("users", "add", "gina", "--password-stdin", *db, stdin="\n"),
        lambda: cli("users", "passwd", "nobody", "--password-stdin", *db, stdin="pw\n"),
    )
    assert no_tty.returncode == 2
    assert no_tty.stderr.strip().count("\n") == 0 and "--password-stdin" in no_tty.stderr
    assert empty.returncode == 2 and "empty" in empty.stderr
    assert unknown.returncode == 2 and "no user 'nobody'" in unknown.stderr


def test_bad_database_url_is_usage_error() -> None:
    done, serve = together(lambda: cli("users", "list", "--database-url", "mysql://x/y"),
                           lambda: cli("serve", "--database-url", "nonsense"))
    assert done.returncode == 2 and "unsupported database URL scheme" in done.stderr
    assert serve.returncode == 2


def test_users_add_refuses_what_could_never_sign_in(backend: Backend) -> None:
    db = ("--database-url", backend.database_url)
    name = "long-pw-" + uuid.uuid4().hex[:8]
    long_name, long_password = together(
        lambda: cli("users", "add", "n" * 151, "--password-stdin", *db, stdin="pw\n"),
        lambda: cli("users", "add", name, "--password-stdin", *db, stdin="p" * 4097 + "\n"))
    assert long_name.returncode == 2 and long_name.stderr.count("\n") == 1, long_name.stderr
    assert "at most 150 characters" in long_name.stderr
    assert long_password.returncode == 2 and "at most 4096 bytes" in long_password.stderr, long_password.stderr
    # a user name is also the folder of the user's brokered uploads: one the key rules refuse is refused here
    folders = together(*(lambda bad=bad: cli("users", "add", bad, "--password-stdin", *db, stdin="pw-123456\n")
                         for bad in ("team/alice", "..", "back\\slash", "bell\x07")))
    for done in folders:
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "folder" in done.stderr and "PREFIX/<name>/" in done.stderr, done.stderr
    listed = cli("users", "list", *db)
    assert name not in listed.stdout and "n" * 151 not in listed.stdout
    assert "team/alice" not in listed.stdout and "slash" not in listed.stdout
