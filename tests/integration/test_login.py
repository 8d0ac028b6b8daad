"""``mpupload login``, ``logout``, ``whoami`` against a real API server; the token file's permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpupload.client.credentials import Credentials, save_credentials
from tests.integration.api_support import PASSWORD, Api, SilentServer
from tests.support.cli import cli_env, make_file, mpupload_cmd, multipart_uploads, run_cli
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server = Api(tmp_path_factory.mktemp("api-login"), env={"MPUPLOAD_LOGIN_MAX_PER_USER": "2"})
    server.prepare("alice", "mallory")
    yield server
    server.stop()


def env_in(tmp: Path, **extra: str) -> dict[str, str]:
    return cli_env(MPUPLOAD_CONFIG_DIR=str(tmp / "config"), **extra)


def login(api: Api, env: dict[str, str], user: str = "alice", password: str = PASSWORD,
          *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(mpupload_cmd("login", "--api-url", api.url, "--username", user, "--password-stdin",
                                       *extra), input=password + "\n", env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_login_whoami_logout(api: Api, tmp_path: Path) -> None:
    env = env_in(tmp_path)
    done = login(api, env)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "config" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    stored = json.loads(path.read_text())
    assert stored["api_url"] == api.url and stored["username"] == "alice" and stored["token"]
    assert not [p for p in path.parent.iterdir() if p.name != "credentials.json"], "no temporary file left"
    assert stored["token"] not in done.stdout + done.stderr

    who = run_cli("whoami", env=env)
    assert who.returncode == 0 and who.stdout.strip() == f"alice at {api.url}", who.stderr
    assert run_cli("list", env=env).returncode == 0

    out = run_cli("logout", env=env)
    assert out.returncode == 0 and "logged out" in out.stdout, out.stderr
    assert not path.exists()
    # the token was revoked on the server, not just forgotten
    again = run_cli("whoami", env=env_in(tmp_path, MPUPLOAD_API_URL=api.url, MPUPLOAD_TOKEN=stored["token"]))
    assert again.returncode == 3 and "mpupload login" in again.stderr
    assert run_cli("whoami", env=env).returncode == 3


def test_wrong_password(api: Api, tmp_path: Path) -> None:
    env = env_in(tmp_path)
    done = login(api, env, "alice", "not the password")
    assert done.returncode == 3
    assert done.stderr.strip() == "mpupload: error: wrong username or password"
    assert not (tmp_path / "config" / "credentials.json").exists()


def test_too_many_attempts_shows_the_servers_message(api: Api, tmp_path: Path) -> None:
    env = env_in(tmp_path)
    codes = [login(api, env, "mallory", "nope") for _ in range(3)]
    assert [c.returncode for c in codes] == [3, 3, 3]
    assert "too many failed logins" in codes[-1].stderr and len(codes[-1].stderr.strip().splitlines()) == 1


def test_no_terminal_and_no_password_stdin_is_bad_usage(api: Api, tmp_path: Path) -> None:
    done = run_cli("login", "--api-url", api.url, "--username", "alice", env=env_in(tmp_path))
    assert done.returncode == 2 and "--password-stdin" in done.stderr


def test_a_readable_token_file_is_refused(api: Api, moto_server: S3Server, tmp_path: Path) -> None:
    env = env_in(tmp_path)
    assert login(api, env).returncode == 0
    path = tmp_path / "config" / "credentials.json"
    os.chmod(path, 0o644)
    who = run_cli("whoami", env=env)
    assert who.returncode == 2
    assert f"chmod 600 {path}" in who.stderr and len(who.stderr.strip().splitlines()) == 1
    # upload refuses too, before anything reaches the store
    client = moto_server.client()
    client.create_bucket(Bucket="login-refused")
    src = make_file(tmp_path / "f.bin", 6 * 1024 * 1024)
    up = run_cli("upload", str(src), "s3://login-refused/f.bin", env={**cli_env(moto_server), **env,
                                                                       "MPUPLOAD_STATE_DIR": str(tmp_path)})
    assert up.returncode == 2 and "chmod 600" in up.stderr
    assert multipart_uploads(client, "login-refused") == []
    assert client.list_objects_v2(Bucket="login-refused").get("KeyCount", 0) == 0
    # --no-report does not read it at all
    ok = run_cli("upload", str(src), "s3://login-refused/f.bin", "--no-report",
                 env={**cli_env(moto_server), **env, "MPUPLOAD_STATE_DIR": str(tmp_path)})
    assert ok.returncode == 0, ok.stderr
    os.chmod(path, 0o600)
    assert run_cli("whoami", env=env).returncode == 0


def test_upload_uses_the_stored_login(api: Api, moto_server: S3Server, tmp_path: Path) -> None:
    env = env_in(tmp_path)
    assert login(api, env).returncode == 0
    client = moto_server.client()
    client.create_bucket(Bucket="login-upload")
    src = make_file(tmp_path / "g.bin", 6 * 1024 * 1024)
    up = run_cli("upload", str(src), "s3://login-upload/g.bin", "--progress", "json",
                 env={**cli_env(moto_server), **env, "MPUPLOAD_STATE_DIR": str(tmp_path)})
    assert up.returncode == 0, up.stderr
    record_id = json.loads(up.stdout.splitlines()[-1])["upload_id"]
    token = json.loads((tmp_path / "config" / "credentials.json").read_text())["token"]
    record = api.record(token, record_id)
    assert record["status"] == "completed" and record["key"] == "g.bin"


def test_environment_overrides_the_stored_login(api: Api, tmp_path: Path) -> None:
    silent = SilentServer()
    silent.close()
    save_credentials(Credentials(silent.url, "stale"), tmp_path / "config" / "credentials.json")
    token = api.token("alice")
    who = run_cli("whoami", env=env_in(tmp_path, MPUPLOAD_API_URL=api.url, MPUPLOAD_TOKEN=token))
    assert who.returncode == 0 and "alice" in who.stdout, who.stderr


def test_logout_with_the_server_unreachable_still_forgets_the_token(tmp_path: Path) -> None:
    silent = SilentServer()
    silent.close()
    path = save_credentials(Credentials(silent.url, "tok", "alice"), tmp_path / "config" / "credentials.json")
    out = run_cli("logout", env=env_in(tmp_path))
    assert out.returncode == 0 and "stays valid" in out.stdout, out.stdout + out.stderr
    assert not path.exists()


def test_credentials_are_written_atomically_with_safe_modes(tmp_path: Path) -> None:
    directory = tmp_path / "cfg"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    path = save_credentials(Credentials("http://x", "t1"), directory / "credentials.json")
    save_credentials(Credentials("http://x", "t2"), path)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["token"] == "t2"
    assert [p.name for p in directory.iterdir()] == ["credentials.json"]
