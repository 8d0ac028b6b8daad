"""Trust: a completed upload is always the file, and every other outcome says exactly what is left.

Real CLI processes against moto and Ceph RGW (and, where only a store with other habits can show it, the odd
store of ``tests/support/odd_store.py``: ``test_trust_odd_stores.py``), real signals, a proxy process for
faults. Each test here failed on the code before the trust fixes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SERVERS
from tests.integration.api_support import SilentServer
from tests.support.cli import (
    ROOT,
    CliProcess,
    cli_env,
    events,
    make_file,
    mpupload_cmd,
    multipart_uploads,
    run_cli,
    sha256_file,
    sha256_object,
    start_cli,
)
from tests.support.proxy import ProxyHandle, proxy_for
from tests.support.s3server import S3Server, wait_until

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture
def slow(s3: S3Server, tmp_path: Path) -> Iterator[ProxyHandle]:
    """The server behind a proxy that lets each connection send about 3 MiB/s (and logs every request)."""
    proxy = proxy_for(s3, log_path=tmp_path / "slow.jsonl", throttle_bps=3 * MiB)
    yield proxy
    proxy.stop()


def _progress(cli: CliProcess, parts: int = 1, timeout: float = 90) -> dict[str, Any]:
    line = cli.wait_line(lambda l: l.startswith("{") and json.loads(l)["event"] in ("progress", "started")
                         and json.loads(l)["parts_done"] >= parts, timeout)
    return dict(json.loads(line))


def _interrupt(cli: CliProcess, timeout: float = 60) -> int:
    os.killpg(cli.pid, signal.SIGINT)  # as a terminal's Ctrl+C does
    try:
        return cli.wait(timeout)
    finally:
        cli.kill_group()


def _unthrottled(slow: ProxyHandle, s3: S3Server) -> ProxyHandle:
    """A fresh proxy without a throttle on the slow one's port: the same endpoint URL (the journal belongs to an
    endpoint), and nothing still draining from the interrupted run."""
    port = slow.port
    slow.stop()
    return proxy_for(s3, log_path=Path(str(slow.log_path) + ".next"), listen_port=port)


def _last_error_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.startswith("mpupload:")][-1]


def _puts(proxy: ProxyHandle, upload_id: str | None = None) -> list[dict[str, Any]]:
    """The UploadPart requests the proxy saw (of one upload), oldest first."""
    out = []
    for r in proxy.requests():
        if r["method"] == "PUT" and "partNumber=" in r["query"] and "uploadId=" in r["query"]:
            if upload_id is None or f"uploadId={upload_id}" in r["query"].replace("%3D", "=").replace("%2B", "+"):
                out.append(r)
    return out


def _part_number(request: dict[str, Any]) -> int:
    query = dict(kv.split("=", 1) for kv in request["query"].split("&") if "=" in kv)
    return int(query["partNumber"])


# -- 1. a --resume run never reports another file as done -------------------------------------------------------
@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_resume_never_reports_a_different_object_as_done(s3: S3Server, slow: ProxyHandle, bucket: str,
                                                         tmp_path: Path, state_dir: Path) -> None:
    """v1 uploaded; v2 (same size) started and kept on Ctrl+C; the kept upload aborted by someone else; then
    ``--resume`` of v2 must not report v1's object as v2 completed: it says the upload is gone and uploads v2."""
    src = tmp_path / "data.bin"
    make_file(src, 13 * 5 * MiB, seed=1)
    assert run_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB",
                   env=cli_env(s3, MPUPLOAD_STATE_DIR=str(state_dir))).returncode == 0
    v1 = sha256_file(src)
    make_file(src, 13 * 5 * MiB, seed=2)  # v2: the same size, other bytes
    v2 = sha256_file(src)
    assert v1 != v2
    cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--workers", "2",
                    "--keep-on-interrupt", "--progress", "json",
                    env=cli_env(slow.s3server(s3), MPUPLOAD_STATE_DIR=str(state_dir)))
    _progress(cli, parts=2)
    assert _interrupt(cli) == 130, cli.stderr
    stopped = events(cli.stdout)[-1]
    assert stopped["kept"] is True and stopped["resume_command"]
    client = s3.client()
    client.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=stopped["store_upload_id"])  # someone else

    same = _unthrottled(slow, s3)
    try:
        proc = run_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--resume", "--progress",
                       "json", env=cli_env(same.s3server(s3), MPUPLOAD_STATE_DIR=str(state_dir)))
    finally:
        same.stop()
    assert proc.returncode == 0, proc.stderr
    final = events(proc.stdout)[-1]
    assert final["event"] == "completed" and final["verified"] != "size-only", final
    assert "no longer exists" in proc.stderr and "cannot be shown to be this file" in proc.stderr, proc.stderr
    assert sha256_object(client, bucket, "k") == v2  # the object is v2, not v1 reported as v2
    assert multipart_uploads(client, bucket) == []
    assert not list(state_dir.glob("*.json"))


# -- 5. Ctrl+C on a --resume run keeps the upload it continues ----------------------------------------------------
@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_ctrl_c_on_a_resume_run_keeps_the_upload(s3: S3Server, slow: ProxyHandle, bucket: str, tmp_path: Path,
                                                 state_dir: Path) -> None:
    src = make_file(tmp_path / "f.bin", 13 * 5 * MiB, seed=3)
    env = cli_env(slow.s3server(s3), MPUPLOAD_STATE_DIR=str(state_dir))
    args = ["upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--workers", "2", "--progress", "json"]
    first = start_cli(*args, "--keep-on-interrupt", env=env)
    _progress(first, parts=2)
    assert _interrupt(first) == 130, first.stderr
    upload_id = events(first.stdout)[-1]["store_upload_id"]

    second = start_cli(*args, "--resume", env=env)  # no --keep-on-interrupt: a resume run keeps by default
    started = _progress(second, parts=0)
    _progress(second, parts=started["parts_done"] + 1)
    assert _interrupt(second) == 130, second.stderr
    stopped = events(second.stdout)[-1]
    assert stopped["event"] == "stopped" and stopped["kept"] is True and stopped["aborted"] is False, stopped
    assert stopped["store_upload_id"] == upload_id
    assert "--resume" in stopped["resume_command"] and "--abort-on-interrupt" not in stopped["resume_command"]
    assert [u["UploadId"] for u in multipart_uploads(s3.client(), bucket)] == [upload_id]
    assert list(state_dir.glob("*.json")), "the journal stays with the kept upload"

    third = start_cli(*args, "--resume", "--abort-on-interrupt", env=env)  # unless asked to abort
    _progress(third, parts=0)
    assert _interrupt(third) == 130, third.stderr
    stopped = events(third.stdout)[-1]
    assert stopped["aborted"] is True and stopped["kept"] is False, stopped
    assert multipart_uploads(s3.client(), bucket) == []
    assert not list(state_dir.glob("*.json"))


def test_keep_and_abort_on_interrupt_exclude_each_other(tmp_path: Path) -> None:
    src = make_file(tmp_path / "f.bin", 10)
    proc = run_cli("upload", str(src), "s3://b/k", "--keep-on-interrupt", "--abort-on-interrupt",
                   env=cli_env(None))
    assert proc.returncode == 2
    assert "not allowed with" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# -- 7. a failed abort is never reported as success ------------------------------------------------------------------
@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_failed_abort_says_what_is_left(s3: S3Server, bucket: str, tmp_path: Path, state_dir: Path) -> None:
    """The store becomes unreachable (the proxy's port closes) right before Ctrl+C: the abort cannot reach
    it. The ``stopped`` event says ``aborted: false`` with the upload's id and the exact command that removes it,
    the journal is kept, and that command (run once the store is reachable) does remove it."""
    src = make_file(tmp_path / "f.bin", 13 * 5 * MiB, seed=4)
    proxy = proxy_for(s3, throttle_bps=3 * MiB)
    port = proxy.port
    try:
        cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--workers", "2",
                        "--progress", "json",
                        env=cli_env(proxy.s3server(s3), MPUPLOAD_STATE_DIR=str(state_dir)))
        _progress(cli, parts=1)
    finally:
        proxy.stop()  # the abort now goes to a closed port
    assert _interrupt(cli, timeout=120) == 130, cli.stderr
    stopped = events(cli.stdout)[-1]
    assert stopped["event"] == "stopped" and stopped["aborted"] is False and stopped["kept"] is False, stopped
    upload_id = stopped["store_upload_id"]
    assert upload_id and [u["UploadId"] for u in multipart_uploads(s3.client(), bucket)] == [upload_id]
    left = stopped["left_behind"]
    assert [entry["upload_id"] for entry in left] == [upload_id], left
    command = left[0]["cleanup_command"]
    assert command.startswith(f"mpupload cleanup s3://{bucket}/k --upload-id ")
    assert command in cli.stderr and "could NOT be aborted" in _last_error_line(cli.stderr), cli.stderr
    assert list(state_dir.glob("*.json")), "the journal is kept while the upload is on the store"
    # the command works as printed once the store is reachable again (at the same address)
    back = proxy_for(s3, listen_port=port)
    try:
        done = subprocess.run(mpupload_cmd(*shlex.split(command)[1:]),
                              env=cli_env(s3, MPUPLOAD_STATE_DIR=str(state_dir)), capture_output=True, text=True,
                              timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
    finally:
        back.stop()
    assert done.returncode == 0, done.stderr
    assert multipart_uploads(s3.client(), bucket) == []
    assert not list(state_dir.glob("*.json")), "cleanup removes the journal of the upload it aborted"


# -- 8. an upload aborted by someone else is one clear error, not five retries and "kept" ----------------------------
@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_upload_aborted_from_outside_is_one_clear_error(s3: S3Server, slow: ProxyHandle, bucket: str,
                                                        tmp_path: Path, state_dir: Path) -> None:
    src = make_file(tmp_path / "f.bin", 13 * 5 * MiB, seed=5)
    cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--workers", "2",
                    "--progress", "json", env=cli_env(slow.s3server(s3), MPUPLOAD_STATE_DIR=str(state_dir)))
    try:
        upload_id = _progress(cli, parts=1)["upload_id"]
        s3.client().abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id)
        aborted_at = len(_puts(slow, upload_id))
        rc = cli.wait(120)
    finally:
        cli.kill_group()
    assert rc == 1, cli.stderr
    line = _last_error_line(cli.stderr)
    assert "no longer exists" in line and upload_id in line, line
    assert "--resume" not in line and "upload was kept" not in line and "nothing was kept" in line, line
    failed = events(cli.stdout)[-1]
    assert failed["event"] == "failed" and failed["error_type"] == "UploadGone", failed
    assert "resume_command" not in failed and "store_upload_id" not in failed
    assert not list(state_dir.glob("*.json")), "nothing to resume: no journal"
    assert multipart_uploads(s3.client(), bucket) == []
    # no part was retried past what the HTTP layer itself tries (botocore: 4 attempts): not 5 rounds more
    after = _puts(slow, upload_id)[aborted_at:]
    counts: dict[int, int] = {}
    for request in after:
        counts[_part_number(request)] = counts.get(_part_number(request), 0) + 1
    assert all(n <= 4 for n in counts.values()), counts


# -- Ctrl+C, phase by phase ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_ctrl_c_before_create_creates_nothing(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """Ctrl+C while the CLI still waits for a hung API server: nothing is created on the store."""
    silent = SilentServer()
    log = tmp_path / "requests.jsonl"
    proxy = proxy_for(s3, log_path=log)
    try:
        src = make_file(tmp_path / "f.bin", 12 * MiB, seed=6)
        cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--progress",
                        "json", env=cli_env(proxy.s3server(s3), MPUPLOAD_API_URL=silent.url,
                                            MPUPLOAD_TOKEN="t", MPUPLOAD_STATE_DIR=str(tmp_path / "state")))
        wait_until(lambda: bool(silent.accepted), 30, "the CLI to call the API server")
        assert _interrupt(cli) == 130, cli.stderr
        requests = proxy.requests()
    finally:
        proxy.stop()
        silent.close()
    assert "nothing was sent to the store" in _last_error_line(cli.stderr), cli.stderr
    assert [r for r in requests if r["method"] in ("POST", "PUT")] == [], requests
    assert multipart_uploads(s3.client(), bucket) == []
    assert events(cli.stdout)[-1]["event"] == "stopped"


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_ctrl_c_during_the_store_probe(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """The probe's first part stalls in the proxy; Ctrl+C then: the probe's upload and the real one are both
    aborted, no part of the real upload is sent, exit 130."""
    log = tmp_path / "requests.jsonl"
    # the probe's part is held 10 s (the CLI waits for that tiny request, as documented), and the test sees the
    # two CreateMultipartUpload requests in the proxy's log as they pass, without asking the store: the
    # Ctrl+C lands during the probe even on a busy machine
    proxy = proxy_for(s3, log_path=log, stall_part=10_000, stall_seconds=10)
    try:
        src = make_file(tmp_path / "f.bin", 12 * MiB, seed=7)
        cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--progress",
                        "json", env=cli_env(proxy.s3server(s3), MPUPLOAD_STATE_DIR=str(tmp_path / "s")))
        wait_until(lambda: len([r for r in proxy.requests() if r["method"] == "POST" and r["query"] == "uploads"])
                   >= 2, 30, "the real upload and the probe's to be created")
        assert _interrupt(cli) == 130, cli.stderr
        requests = proxy.requests()
    finally:
        proxy.stop()
    real_parts = [r for r in requests if r["method"] == "PUT" and "partNumber=" in r["query"]
                  and _part_number(r) < 9_000]
    assert real_parts == [], real_parts
    assert multipart_uploads(s3.client(), bucket) == []
    assert "the multipart upload was aborted" in _last_error_line(cli.stderr), cli.stderr


@pytest.mark.parametrize("s3", SERVERS, indirect=True)
def test_ctrl_c_during_complete_finishes_and_says_so(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """CompleteMultipartUpload cannot be stopped: a Ctrl+C while the store assembles the object says so, the
    object is completed and verified, and the command exits 0."""
    proxy = proxy_for(s3, log_path=tmp_path / "r.jsonl", delay_complete_response=4)
    try:
        src = make_file(tmp_path / "f.bin", 12 * MiB, seed=8)
        cli = start_cli("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--progress", "json",
                        env=cli_env(proxy.s3server(s3), MPUPLOAD_STATE_DIR=str(tmp_path / "s")))
        cli.wait_line(lambda l: l.startswith("{") and json.loads(l)["status"] == "finalizing", 60)
        wait_until(lambda: any(r["method"] == "POST" and "uploadId=" in r["query"] for r in proxy.requests()),
                   30, "CompleteMultipartUpload to be sent")
        os.killpg(cli.pid, signal.SIGINT)
        rc = cli.wait(60)
    finally:
        cli.kill_group()
        proxy.stop()
    assert rc == 0, cli.stderr
    assert "cannot be stopped" in cli.stderr and "too late to stop it" in cli.stderr, cli.stderr
    final = events(cli.stdout)[-1]
    assert final["event"] == "completed" and final["verified"] in ("md5", "crc32c"), final
    assert sha256_object(s3.client(), bucket, "k") == sha256_file(src)
    assert multipart_uploads(s3.client(), bucket) == []


# -- 9. the smaller ones ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_resume_without_a_journal_keeps_the_uploads_checksum_algorithm(
        s3: S3Server, bucket: str, tmp_path: Path, state_dir: Path) -> None:
    """The journal is gone; the store names the upload's algorithm (moto does, in ListMultipartUploads): new
    parts carry it and the object's checksum is the CRC32C composite of all parts, old and new."""
    proxy = proxy_for(s3, throttle_bps=3 * MiB)
    try:
        src = make_file(tmp_path / "f.bin", 13 * 5 * MiB, seed=9)
        args = ["upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--workers", "2",
                "--checksum", "crc32c", "--progress", "json"]
        cli = start_cli(*args, "--keep-on-interrupt",
                        env=cli_env(proxy.s3server(s3), MPUPLOAD_STATE_DIR=str(state_dir)))
        _progress(cli, parts=2)
        assert _interrupt(cli) == 130, cli.stderr
    finally:
        proxy.stop()
    for journal in state_dir.glob("*.json"):
        journal.unlink()
    proc = run_cli(*args, "--resume", env=cli_env(s3, MPUPLOAD_STATE_DIR=str(state_dir)))
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    assert evs[0]["checksum_algorithm"] == "crc32c" and evs[0]["resumed_parts"] >= 2, evs[0]
    assert evs[-1]["checksum"].startswith("crc32c:") and evs[-1]["checksum"].endswith("-13"), evs[-1]
    assert sha256_object(s3.client(), bucket, "k") == sha256_file(src)


def test_first_ctrl_c_after_a_dashboard_stop_is_not_taken_as_the_second(tmp_path: Path) -> None:
    """A Stop from the dashboard cancels the token; the user's first Ctrl+C after it must not exit at once (a
    real process, real signals)."""
    script = tmp_path / "stop.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from mpupload.cli.signals import cancel_on_signals\n"
        "from mpupload.engine.cancel import CancelToken\n"
        "token = CancelToken()\n"
        "with cancel_on_signals(token):\n"
        "    token.cancel('stopped from the dashboard')\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.2)\n"
        "    print('alive after the first Ctrl+C', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "print('not reached', flush=True)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30, cwd=ROOT,
                          env=cli_env(None))
    assert proc.returncode == 130, proc.stderr
    assert proc.stdout.splitlines() == ["alive after the first Ctrl+C"], proc.stdout
    assert "stopping..." in proc.stderr and "second signal" in proc.stderr


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_unwritable_state_directory_is_a_warning(s3: S3Server, bucket: str,
                                                 tmp_path: Path) -> None:
    """A state directory the CLI cannot write (read-only, a full disk): the upload goes on, with one warning."""
    state = tmp_path / "ro-state"
    state.mkdir()
    src = make_file(tmp_path / "f.bin", 12 * MiB, seed=10)
    os.chmod(tmp_path, 0o755)
    os.chmod(src, 0o644)
    os.chmod(state, 0o555)
    cmd = mpupload_cmd("upload", str(src), f"s3://{bucket}/k", "--part-size", "5MiB", "--progress", "json")
    if os.geteuid() == 0:  # root writes anywhere: drop the capabilities that let it
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop root's file-permission override"
        cmd = [setpriv, "--bounding-set", "-dac_override,-dac_read_search",
               "--inh-caps", "-dac_override,-dac_read_search", *cmd]
    try:
        proc = subprocess.run(cmd, env=cli_env(s3, MPUPLOAD_STATE_DIR=str(state)), capture_output=True,
                              text=True, timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL)
    finally:
        os.chmod(state, 0o755)
    assert proc.returncode == 0, proc.stderr
    assert "resume journal" in proc.stderr and "the upload goes on" in proc.stderr, proc.stderr
    assert events(proc.stdout)[-1]["event"] == "completed"
    assert sha256_object(s3.client(), bucket, "k") == sha256_file(src)
    assert list(state.iterdir()) == []
