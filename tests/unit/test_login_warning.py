"""``mpupload login`` warns before a password crosses the network in clear text."""

from __future__ import annotations

from pathlib import Path

from mpupload.cli.login import plain_http_to_remote
from tests.server.support import cli


def test_plain_http_to_remote() -> None:
    assert plain_http_to_remote("http://example.org:8000")
    assert plain_http_to_remote("http://10.0.0.1")
    assert plain_http_to_remote("http://[2001:db8::1]:80")
    for safe in ("https://example.org", "http://localhost:8000", "http://127.0.0.2", "http://[::1]:8000",
                 "http://api.localhost"):
        assert not plain_http_to_remote(safe), safe


def test_login_warns_before_sending_a_password_over_plain_http(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "MPUPLOAD_API_URL": "", "MPUPLOAD_TOKEN": ""}
    # .invalid never resolves (RFC 6761): the login fails without any traffic, after the warning
    done = cli("login", "--api-url", "http://server.invalid:8000", "-u", "alice", "--password-stdin",
               stdin="secret\n", env=env)
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert lines[0].startswith("warning: http://server.invalid:8000 is plain http"), done.stderr
    assert len(lines) >= 2  # and then the connection error
