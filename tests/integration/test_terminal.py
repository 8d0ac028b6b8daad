"""The live bar of the real CLI in a pseudo-terminal, and the demo behind ``make run``."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.support.cli import (
    ROOT,
    cli_env,
    make_file,
    mpupload_cmd,
    run_cli,
    sha256_file,
    sha256_object,
    signal_group,
    start_cli,
)
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
ANSI = re.compile(rb"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\|[@-Z\\-_])")


def run_in_pty(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    master, slave = os.openpty()
    os.set_blocking(master, False)
    env = {**env, "TERM": "xterm-256color", "COLUMNS": "110", "LINES": "30"}
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT, start_new_session=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child side closed
                    chunk = b""
                if not chunk and proc.poll() is not None:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        rc = proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = ANSI.sub(b"", bytes(out)).decode(errors="replace")
    return rc, text


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_bar_is_drawn_on_a_terminal(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    src = make_file(tmp_path / "train.bin", 30 * MiB)
    rc, screen = run_in_pty(mpupload_cmd("upload", str(src), f"s3://{bucket}/ds/", "--part-size", "5MiB"),
                            cli_env(s3), timeout=120)
    assert rc == 0, screen
    assert "100.0%" in screen
    assert "30.0 MiB / 30.0 MiB" in screen
    assert "parts 6/6" in screen
    assert re.search(r"\d+(\.\d)? [KMG]iB/s", screen)
    assert re.search(r"done: s3://\S+/ds/train\.bin\s+30\.0 MiB in \S+ \(avg .*\), verified (md5|crc32c)", screen)
    assert sha256_object(s3.client(), bucket, "ds/train.bin") == sha256_file(src)


def test_demo_uploads_and_leaves_no_process_behind() -> None:
    tag = uuid.uuid4().hex  # every process the demo starts inherits it
    proc = run_cli("demo", "--size", "24MiB", "--part-size", "5MiB", "--exit-after-upload", "--progress", "plain",
                   env={**cli_env(None), "MPUPLOAD_TEST_TAG": tag}, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "done: s3://demo/sample.bin" in proc.stderr
    assert re.search(r"dashboard http://127\.0\.0\.1:\d+/ +\(user demo, password \S+\)", proc.stderr)
    assert "the server recorded the upload as COMPLETED" in proc.stderr  # the push reached the API server

    def tagged(p: psutil.Process) -> bool:
        try:
            return p.environ().get("MPUPLOAD_TEST_TAG") == tag
        except (psutil.Error, OSError):
            return False

    leftovers = [p for p in psutil.process_iter(["pid", "cmdline"]) if tagged(p)]
    assert leftovers == [], [p.info["cmdline"] for p in leftovers]


def test_demo_dataset_uploads_a_tree_reported_as_one_record() -> None:
    proc = run_cli("demo", "--dataset", "--files", "40", "--exit-after-upload", "--progress", "plain",
                   env=cli_env(None), timeout=240)
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"uploading a tree of (\d+) files .* to s3://demo/dataset/", proc.stderr)
    assert match, proc.stderr
    summary = rf"^{match.group(1)} files \(.*\) uploaded to s3://demo/dataset/ in "
    assert re.search(summary, proc.stderr, re.M), proc.stderr
    assert "the server recorded the upload as COMPLETED" in proc.stderr  # one record for the whole tree


@pytest.mark.parametrize("when", ["during the upload", "after the upload", "while serving"])
def test_demo_ctrl_c_stops_everything(when: str) -> None:
    tag = uuid.uuid4().hex
    size = "400MiB" if when == "during the upload" else "8MiB"
    proc = start_cli("demo", "--size", size, "--part-size", "5MiB", "--workers", "2", "--progress", "plain",
                     "--port", "0", env={**cli_env(None), "MPUPLOAD_TEST_TAG": tag})
    try:
        if when == "during the upload":
            proc.wait_line(lambda line: line.startswith("upload: s3://demo/"), 120, stream="stderr")
        elif when == "after the upload":  # before the switch to serving: held, then "stop everything"
            proc.wait_line(lambda line: "the server recorded the upload as" in line, 120, stream="stderr")
        else:
            proc.wait_line(lambda line: "Ctrl+C stops everything" in line, 120, stream="stderr")
        signal_group(proc.popen)  # as a terminal's Ctrl+C does
        rc = proc.wait(60)
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
    stderr = "\n".join(proc.stderr_lines)
    if when == "during the upload":
        assert rc == 130, stderr
        assert "the server recorded the upload as STOPPED" in stderr
        assert "second signal" not in stderr  # the upload saw exactly one Ctrl+C
    else:
        assert rc == 0, stderr
    leftovers = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.environ().get("MPUPLOAD_TEST_TAG") == tag:
                leftovers.append(p.info["cmdline"])
        except (psutil.Error, OSError):
            pass
    assert leftovers == []
