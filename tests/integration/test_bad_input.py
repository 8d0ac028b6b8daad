"""Bad input: one clear line, the contract's exit code, no traceback, nothing created on the store."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import SERVERS
from tests.support.cli import ROOT, cli_env, mpupload_cmd, multipart_uploads, run_cli
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
TiB = 1024**4


def _file(tmp: Path) -> str:
    p = tmp / "ok.bin"
    p.write_bytes(b"x" * 1000)
    return str(p)


def _huge(tmp: Path) -> str:
    p = tmp / "huge.bin"
    with open(p, "wb") as fh:
        fh.truncate(5 * TiB + 1)
    return str(p)


CASES: list[tuple[str, Callable[[Path, str], list[str]], int, str]] = [
    ("missing file", lambda t, b: [str(t / "nope.bin"), f"s3://{b}/k"], 2, "no such file"),
    ("directory to a key", lambda t, b: [str(t), f"s3://{b}/k"], 2, "end the destination with /"),
    ("several sources to a key", lambda t, b: [_file(t), _file(t), f"s3://{b}/k"], 2, "end the destination with /"),
    ("a missing source among several", lambda t, b: [_file(t), str(t / "nope"), f"s3://{b}/p/"], 2,
     "no such file or directory"),
    ("a directory to a missing bucket", lambda t, b: [str(t), "s3://no-such-bucket-mpupload/p/"], 2,
     "does not exist"),
    ("a glob that matches nothing", lambda t, b: [str(t), f"s3://{b}/p/", "--include", "/"], 2, "--include"),
    ("directory options for one file", lambda t, b: [_file(t), f"s3://{b}/k", "--skip-existing"], 2,
     "for directory uploads"),
    ("not s3 url", lambda t, b: [_file(t), f"{b}/k"], 2, "give s3://BUCKET/KEY"),  # (else: the server's storage)
    ("no bucket", lambda t, b: [_file(t), "s3:///k"], 2, "no bucket"),
    ("over 5 TiB", lambda t, b: [_huge(t), f"s3://{b}/k"], 2, "5 TiB"),
    ("part size too small", lambda t, b: [_file(t), f"s3://{b}/k", "--part-size", "4MiB"], 2, "5MiB to 5GiB"),
    ("part size too big", lambda t, b: [_file(t), f"s3://{b}/k", "--part-size", "6GiB"], 2, "5MiB to 5GiB"),
    ("part size garbage", lambda t, b: [_file(t), f"s3://{b}/k", "--part-size", "lots"], 2, "--part-size"),
    ("part size unit", lambda t, b: [_file(t), f"s3://{b}/k", "--part-size", "12XB"], 2, "unknown size unit"),
    ("workers 0", lambda t, b: [_file(t), f"s3://{b}/k", "--workers", "0"], 2, "--workers"),
    ("workers 65", lambda t, b: [_file(t), f"s3://{b}/k", "--workers", "65"], 2, "--workers"),
    ("workers garbage", lambda t, b: [_file(t), f"s3://{b}/k", "--workers", "many"], 2, "whole number"),
    ("bad metadata", lambda t, b: [_file(t), f"s3://{b}/k", "--metadata", "novalue"], 2, "KEY=VALUE"),
    ("bad checksum", lambda t, b: [_file(t), f"s3://{b}/k", "--checksum", "xxh3"], 2, "invalid choice"),
    ("missing bucket", lambda t, b: [_file(t), "s3://no-such-bucket-mpupload/k"], 2, "does not exist"),
    ("missing bucket multipart",
     lambda t, b: [_file(t), "s3://no-such-bucket-mpupload/k", "--part-size", "5MiB"], 2, "does not exist"),
]


def _assert_one_line(stderr: str, expected: str) -> None:
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
@pytest.mark.parametrize(("name", "argv", "code", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(s3: S3Server, bucket: str, tmp_path: Path, name: str,
                   argv: Callable[[Path, str], list[str]], code: int, expected: str) -> None:
    if name == "missing bucket multipart":
        big = tmp_path / "big.bin"
        with open(big, "wb") as fh:
            fh.truncate(11 * MiB)
        args = [str(big), *argv(tmp_path, bucket)[1:]]
    else:
        args = argv(tmp_path, bucket)
    proc = run_cli("upload", *args, env=cli_env(s3))
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    _assert_one_line(proc.stderr, expected)
    assert multipart_uploads(s3.client(), bucket) == []
    assert s3.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_unreadable_file(s3: S3Server, bucket: str) -> None:
    """Permission denied, as an unprivileged user sees it. CI runs as root, which reads anything, so the
    CLI runs without the capabilities that let root bypass file permissions (or as is, when not root)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="mpupload-perm-"))
    try:
        os.chmod(d, 0o755)
        f = d / "secret.bin"
        f.write_bytes(b"x" * 100)
        os.chmod(f, 0)
        cmd = mpupload_cmd("upload", str(f), f"s3://{bucket}/k")
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            assert setpriv, "setpriv (util-linux) is needed to drop root's file-permission override"
            cmd = [setpriv, "--bounding-set", "-dac_override,-dac_read_search",
                   "--inh-caps", "-dac_override,-dac_read_search", *cmd]
        proc = subprocess.run(cmd, env=cli_env(s3), capture_output=True, text=True, timeout=60, cwd=ROOT,
                              stdin=subprocess.DEVNULL)
    finally:
        os.chmod(d / "secret.bin", stat.S_IRUSR | stat.S_IWUSR)
        shutil.rmtree(d, ignore_errors=True)
    assert proc.returncode == 2, proc.stderr
    _assert_one_line(proc.stderr, "permission denied")
    assert multipart_uploads(s3.client(), bucket) == []


@pytest.mark.parametrize("s3", ["ceph"], indirect=True)
def test_wrong_credentials_exit_3(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    env = cli_env(s3, AWS_SECRET_ACCESS_KEY="wrong-secret")
    for extra in ([], ["--part-size", "5MiB"]):
        big = tmp_path / "f.bin"
        with open(big, "wb") as fh:
            fh.truncate(11 * MiB)
        proc = run_cli("upload", str(big), f"s3://{bucket}/k", *extra, env=env)
        assert proc.returncode == 3, proc.stderr
        _assert_one_line(proc.stderr, "denied access")
    assert multipart_uploads(s3.client(), bucket) == []


def test_no_credentials_exit_3(tmp_path: Path, moto_server: S3Server) -> None:
    env = cli_env(None, AWS_ENDPOINT_URL=moto_server.endpoint_url, AWS_CONFIG_FILE="/dev/null",
                  AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true")
    proc = run_cli("upload", _file(tmp_path), "s3://whatever/k", env=env)
    assert proc.returncode == 3, proc.stderr
    _assert_one_line(proc.stderr, "no AWS credentials")


def test_unreachable_store_exit_1(tmp_path: Path) -> None:
    from tests.support.s3server import free_port

    env = cli_env(None, AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="b", AWS_DEFAULT_REGION="us-east-1")
    proc = run_cli("upload", _file(tmp_path), "s3://bkt/k", "--endpoint-url", f"http://127.0.0.1:{free_port()}",
                   env=env)
    assert proc.returncode == 1, proc.stderr
    _assert_one_line(proc.stderr, "cannot reach")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = run_cli("upload", str(tmp_path / "nope"), "s3://bkt/k", "--debug", env=cli_env(None))
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
    proc = run_cli("upload", str(tmp_path / "nope"), "s3://bkt/k", env=cli_env(None, MPUPLOAD_DEBUG="1"))
    assert "Traceback" in proc.stderr


def test_version_and_module_entry() -> None:
    from mpupload import __version__

    proc = run_cli("--version", env=cli_env(None))
    assert proc.returncode == 0 and proc.stdout.strip() == f"mpupload {__version__}"
    exe = Path(os.sys.executable).parent / "mpupload"  # type: ignore[attr-defined]
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
    assert proc.stdout.strip() == f"mpupload {__version__}"
