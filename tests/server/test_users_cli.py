"""``mpupload users`` as subprocesses, against the database a real server is using."""

from __future__ import annotations

import httpx
import pytest

from .conftest import Backend, login
from .support import ServerProcess, cli

pytestmark = pytest.mark.integration


def test_users_add_list_passwd_revoke_remove(server: ServerProcess, backend: Backend) -> None:
    db = ("--database-url", backend.database_url)
    assert cli("users", "add", "frank", "--password-stdin", *db, stdin="first-pw\n").returncode == 0
    again = cli("users", "add", "frank", "--password-stdin", *db, stdin="x\n")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already exists" in again.stderr
    listed = cli("users", "list", *db)
    assert listed.returncode == 0 and "frank\tcreated " in listed.stdout and "alice\t" in listed.stdout

    first = login(server.base_url, "frank", "first-pw")
    assert first.status_code == 200
    headers = {"Authorization": f"Bearer {first.json()['token']}"}
    assert "frank\tcreated" in cli("users", "list", *db).stdout

    assert cli("users", "passwd", "frank", "--password-stdin", *db, stdin="second-pw\n").returncode == 0
    assert httpx.get(f"{server.base_url}/api/v1/me", headers=headers).status_code == 401  # passwd revokes
    assert login(server.base_url, "frank", "second-pw").status_code == 200

    revoked = cli("users", "revoke", "frank", *db)
    assert revoked.returncode == 0 and "revoked 1 token(s)" in revoked.stdout

    assert cli("users", "remove", "frank", *db).returncode == 0
    assert "frank" not in cli("users", "list", *db).stdout
    assert login(server.base_url, "frank", "second-pw").status_code == 401
    gone = cli("users", "remove", "frank", *db)
    assert gone.returncode == 2 and "no user 'frank'" in gone.stderr


def test_users_password_input_errors(backend: Backend) -> None:
    db = ("--database-url", backend.database_url)
    no_tty = cli("users", "add", "gina", *db)  # stdin is /dev/null, not a terminal
    assert no_tty.returncode == 2
    assert no_tty.stderr.strip().count("\n") == 0 and "--password-stdin" in no_tty.stderr
    empty = cli("users", "add", "gina", "--password-stdin", *db, stdin="\n")
    assert empty.returncode == 2 and "empty" in empty.stderr
    unknown = cli("users", "passwd", "nobody", "--password-stdin", *db, stdin="pw\n")
    assert unknown.returncode == 2 and "no user 'nobody'" in unknown.stderr


def test_bad_database_url_is_usage_error() -> None:
    done = cli("users", "list", "--database-url", "mysql://x/y")
    assert done.returncode == 2 and "unsupported database URL scheme" in done.stderr
    assert cli("serve", "--database-url", "nonsense").returncode == 2
