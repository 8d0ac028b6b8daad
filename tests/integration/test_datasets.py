"""Directory runs end to end (issue 13): ``mpupload upload DIR... s3://BUCKET/PREFIX/`` as a real process (as an
unprivileged uid when the suite runs as root, so that a mode-000 file is unreadable), real worker processes, real
signals, moto and Ceph RGW; a logging proxy between the CLI and the store counts what each run sent.

One mixed tree (tests/support/trees.py) serves the whole module; most tests take part of it through filters.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _FIXTURE, IN_CI, SERVERS
from tests.support import trees
from tests.support.cli import ROOT, CliProcess, cli_env, events, mpupload_cmd, multipart_uploads
from tests.support.proxy import proxy_for
from tests.support.s3server import S3Server, wait_until
from tests.support.trees import FileInfo, MixedTree

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
PREFIX = "sets/mixed/"
PART_SIZE = ("--part-size", "5MiB")
#: the runs that must end with exit 0 leave out the unreadable file
NO_LOCKED = ("--exclude", "locked.bin")
#: the runs that go twice take 300 of the small files (small/00/ to small/02/: shorter runs) and the rest of the tree
SOME = ("--exclude", "small/1?/", "--exclude", "small/0[3-9]/", *NO_LOCKED)


def in_some(rel: str) -> bool:
    return not rel.startswith(("small/1", *(f"small/0{n}/" for n in range(3, 10)))) and rel != trees.UNREADABLE


# -- the tree, the unprivileged uid, the CLI --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """A directory every uid can traverse, for the tree and the CLI's HOME and state; removed at the end."""
    with trees.shared_tmpdir() as base:
        problem = trees.unprivileged_python_problem(sys.executable, ROOT)
        if problem is not None:
            (pytest.fail if IN_CI else pytest.skip)(problem)
        yield base


@pytest.fixture(scope="module")
def tree(shared: Path) -> MixedTree:
    return trees.build_mixed_tree(shared / "tree")


def remove_bucket(client: Any, bucket: str) -> None:
    """Abort, delete (1,000 keys a request: a tree has thousands) and remove the bucket."""
    for upload in multipart_uploads(client, bucket):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    keys = sorted(trees.list_keys(client, bucket))
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]],
                                                     "Quiet": True})
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def bucket(s3: S3Server) -> Iterator[str]:
    """A fresh bucket (as tests/conftest.py's), emptied in batches afterwards."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    client = s3.client()
    client.create_bucket(Bucket=name)
    yield name
    remove_bucket(client, name)


def env_for(server: S3Server, shared: Path) -> dict[str, str]:
    """The CLI's environment for ``server``, with a HOME and a state directory of its own that the unprivileged
    uid can write."""
    return cli_env(server, **trees.unprivileged_env(shared / f"home-{uuid.uuid4().hex[:8]}"))


def _cmd(*args: str) -> list[str]:
    return [*trees.unprivileged_prefix(), *mpupload_cmd(*args)]


def run(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(*args), env=env, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)


def start(*args: str, env: dict[str, str]) -> CliProcess:
    """The CLI in its own session and process group (setpriv execs it: the group leader is the CLI itself)."""
    return CliProcess(subprocess.Popen(_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       encoding="utf-8", errors="replace", cwd=ROOT, start_new_session=True,
                                       stdin=subprocess.DEVNULL))


def of(evs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in evs if e["event"] == kind]


def completed_paths(evs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["path"]: e for e in of(evs, "file_completed")}


def assert_tree_on_store(client: Any, bucket: str, expected: dict[str, FileInfo], prefix: str = PREFIX) -> None:
    """Exactly the keys PREFIX + relative path, each object's bytes equal to the file's (SHA-256)."""
    keys = trees.list_keys(client, bucket, prefix)
    want = {prefix + rel: info for rel, info in expected.items()}
    assert keys == set(want), (f"missing {sorted(set(want) - keys)[:10]}, "
                               f"unexpected {sorted(keys - set(want))[:10]}")
    got = trees.sha256_objects(client, bucket, keys)
    wrong = sorted(key for key, sha in got.items() if sha != want[key].sha256)
    assert not wrong, f"{len(wrong)} objects differ from their files: {wrong[:10]}"


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


# -- the mixed tree, uploaded whole (as the unprivileged uid) ---------------------------------------------------------

class MixedRun:
    def __init__(self, server: S3Server, bucket: str, proc: subprocess.CompletedProcess[str],
                 requests: list[dict[str, Any]]) -> None:
        self.server = server
        self.bucket = bucket
        self.proc = proc
        self.events = events(proc.stdout)
        self.sent = trees.sent_by_key(requests, bucket)


@pytest.fixture(scope="module", params=SERVERS)
def mixed(request: pytest.FixtureRequest, tree: MixedTree, shared: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[MixedRun]:
    """The whole mixed tree uploaded once per server, through a logging proxy, with ``--progress json``."""
    server: S3Server = request.getfixturevalue(_FIXTURE[request.param])
    client = server.client()
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    log = tmp_path_factory.mktemp("mixed") / "requests.jsonl"
    proxy = proxy_for(server, log_path=log)
    try:
        proc = run("upload", tree.source, f"s3://{bucket}/{PREFIX}", *PART_SIZE, "--progress", "json",
                   env=env_for(proxy.s3server(server), shared))
        requests = proxy.requests()
    finally:
        proxy.stop()
    try:
        yield MixedRun(server, bucket, proc, requests)
    finally:
        remove_bucket(client, bucket)


def test_mixed_tree_exit_1_and_every_readable_file_on_the_store(mixed: MixedRun, tree: MixedTree) -> None:
    assert mixed.proc.returncode == 1, mixed.proc.stderr
    assert "Traceback" not in mixed.proc.stderr
    assert_tree_on_store(mixed.server.client(), mixed.bucket, tree.readable())
    assert multipart_uploads(mixed.server.client(), mixed.bucket) == []


def test_mixed_tree_sends_each_file_once(mixed: MixedRun, tree: MixedTree) -> None:
    """One PutObject per small file, 3 parts per large file, nothing for the unreadable one, no key twice."""
    sent = mixed.sent
    for rel in tree.big:
        assert sorted(sent.parts.get(PREFIX + rel, [])) == [1, 2, 3], rel
        assert sent.puts[PREFIX + rel] == 0, rel
    small = {PREFIX + rel for rel in tree.small()}
    assert {key for key, n in sent.puts.items() if n} == small
    assert [key for key in small if sent.puts[key] != 1] == []
    assert sent.data_requests()[PREFIX + tree.unreadable] == 0


def test_mixed_tree_lists_the_unreadable_file_as_failed(mixed: MixedRun, tree: MixedTree) -> None:
    final = mixed.events[-1]
    assert final["event"] == "failed", final
    key = PREFIX + tree.unreadable
    [failed] = final["failed_files"]
    assert failed["path"] == tree.unreadable and failed["key"] == key
    assert failed["size"] == tree.files[tree.unreadable].size and failed["error"]
    [event] = of(mixed.events, "file_failed")
    assert event["key"] == key and event["path"] == tree.unreadable and event["prefix"] == PREFIX
    assert event["size"] == tree.files[tree.unreadable].size
    assert event["error_type"] == "SourceUnreadable", event
    assert "Permission denied" in event["error"], event
    assert tree.unreadable in final["error"] or "1 of" in final["error"], final["error"]
    assert tree.unreadable in mixed.proc.stderr  # the terminal summary names it


def test_mixed_tree_skips_the_fifo_and_the_loops_with_warnings(mixed: MixedRun, tree: MixedTree) -> None:
    warnings: list[str] = mixed.events[-1]["warnings"]
    for name in (tree.fifo, *tree.loops):
        assert [w for w in warnings if w.rstrip().endswith("skipped") and f"/{name} " in w], (name, warnings)
        assert f"/{name} " in mixed.proc.stderr, name
    assert len(warnings) == 3, warnings
    keys = trees.list_keys(mixed.server.client(), mixed.bucket, PREFIX)
    assert not [k for k in keys if k.endswith(("/fifo", "loop")) or "/loop/" in k or "empty-dir" in k]


def test_mixed_tree_json_events(mixed: MixedRun, tree: MixedTree) -> None:
    evs = mixed.events
    total_files = len(tree.files)  # the unreadable one is a file of the run (it fails)
    total_bytes = sum(info.size for info in tree.files.values())
    started, final = evs[0], evs[-1]
    assert started["event"] == "started"
    assert started["files_total"] == total_files and started["bytes_total"] == total_bytes
    assert started["total_bytes"] == total_bytes
    assert started["prefix"] == PREFIX and started["key"] == PREFIX
    assert [e["event"] for e in evs].count("started") == 1
    assert all(e["event"] in ("progress", "file_completed", "file_failed") for e in evs[1:-1])

    progress = of(evs, "progress")
    assert progress, "no progress event in the whole run"
    for e in progress:
        assert e["files_total"] == total_files
        assert 0 <= e["files_failed"] <= 1
        assert e["files_done"] + e["files_failed"] <= total_files
        assert 0 <= e["bytes_done"] <= e["total_bytes"] == total_bytes
        assert len(e["in_flight"]) <= 16
    finished: set[str] = set()  # a file reported done or failed is never listed in flight again
    for e in evs:
        if e["event"] in ("file_completed", "file_failed"):
            finished.add(e["path"])
        elif e["event"] == "progress":
            stale = finished & {f["path"] for f in e["in_flight"]}
            assert not stale, stale
    done = [e["files_done"] for e in evs]
    assert done == sorted(done), "files_done never falls"

    completed = of(evs, "file_completed")
    by_path = completed_paths(evs)
    assert len(completed) == len(by_path), "a file_completed event twice for one file"
    assert set(by_path) == set(tree.readable())
    for rel, e in by_path.items():
        assert e["key"] == PREFIX + rel and e["prefix"] == PREFIX
        assert e["size"] == tree.files[rel].size
        assert e["skipped"] is None
        assert e["verified"] not in (None, "size-only"), e

    assert final["files_total"] == total_files
    assert final["files_done"] == total_files - 1 and final["files_failed"] == 1
    assert final["files_skipped"] == 0
    assert final["error"] == f"1 of {total_files} files failed"


# -- filters ----------------------------------------------------------------------------------------------------------

def _small(tree: MixedTree, directory: str) -> set[str]:
    return {rel for rel in tree.files if rel.startswith(directory)}


FILTER_CASES: dict[str, tuple[tuple[str, ...], Callable[[MixedTree], set[str]]]] = {
    # the last rule that matches decides: small/03/ comes back after small/** went; *.bin drops the large files
    # and the unreadable one; what no rule matches is taken (not every rule is an include)
    "last-rule-wins": (
        ("--exclude", "small/**", "--include", "small/03/*", "--exclude", "*.bin", "--exclude", "file-0003.dat"),
        lambda t: (_small(t, "small/03/") - {"small/03/file-0003.dat"})
        | {"deep/a/b/c/d/e/f/g/leaf.txt", "empty.txt", *trees.UNICODE_FILES, trees.LINK_TO_FILE},
    ),
    # only includes: only what they match
    "includes-only": (
        ("--include", "*.txt", "--include", "small/07/file-0007.dat"),
        lambda t: {"deep/a/b/c/d/e/f/g/leaf.txt", "empty.txt", *trees.UNICODE_FILES, "small/07/file-0007.dat"},
    ),
}


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
@pytest.mark.parametrize("case", list(FILTER_CASES))
def test_include_exclude(s3: S3Server, bucket: str, tree: MixedTree, shared: Path, case: str) -> None:
    rules, expected = FILTER_CASES[case]
    want = expected(tree)
    assert want and all(rel in tree.files for rel in want)  # the table names real files
    proc = run("upload", tree.source, f"s3://{bucket}/{PREFIX}", *PART_SIZE, "--progress", "json", *rules,
               env=env_for(s3, shared))
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    assert set(completed_paths(evs)) == want
    assert evs[0]["files_total"] == len(want) and evs[-1]["files_done"] == len(want)
    assert_tree_on_store(s3.client(), bucket, {rel: tree.files[rel] for rel in want})


# -- --skip-existing --------------------------------------------------------------------------------------------------

def _counted(s3: S3Server, bucket: str, shared: Path, log: Path, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                                         trees.Sent]:
    proxy = proxy_for(s3, log_path=log)
    try:
        proc = run(*args, env=env_for(proxy.s3server(s3), shared))
        return proc, trees.sent_by_key(proxy.requests(), bucket)
    finally:
        proxy.stop()


def _replace_multipart(client: Any, bucket: str, key: str, size: int) -> None:
    """Another object of the same size at ``key``, sent in 5 MiB parts by boto3 (no metadata of mpupload's)."""
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for n, offset in enumerate(range(0, size, 5 * MiB), start=1):
        answer = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n,
                                    Body=data[offset:offset + 5 * MiB])
        parts.append({"PartNumber": n, "ETag": answer["ETag"]})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_skip_existing(s3: S3Server, bucket: str, tree: MixedTree, shared: Path, tmp_path: Path) -> None:
    dest = f"s3://{bucket}/{PREFIX}"
    args = ("upload", tree.source, dest, *PART_SIZE, "--progress", "json", *SOME)
    expected = {rel: info for rel, info in tree.files.items() if in_some(rel)}
    first = run(*args, env=env_for(s3, shared))
    assert first.returncode == 0, first.stderr

    # a second run sends nothing: every file is there with the same size and checksum
    second, sent = _counted(s3, bucket, shared, tmp_path / "second.jsonl", *args, "--skip-existing")
    assert second.returncode == 0, second.stderr
    assert +sent.data_requests() == {}, f"the second run sent {+sent.data_requests()}"
    assert +sent.creates == {}
    evs = events(second.stdout)
    done = completed_paths(evs)
    assert set(done) == set(expected)
    assert {e["skipped"] for e in done.values()} == {"exists"}
    assert evs[-1]["event"] == "completed" and evs[-1]["files_skipped"] == len(expected)

    # an object changed on the store (other bytes, the same size) is sent again; the rest is skipped
    client = s3.client()
    small_rel = "small/02/file-0002.dat"
    size = tree.files[small_rel].size
    assert size > 0
    client.put_object(Bucket=bucket, Key=PREFIX + small_rel, Body=b"\x00" * size)
    big_rel = "big/two.bin"
    _replace_multipart(client, bucket, PREFIX + big_rel, tree.files[big_rel].size)
    third, sent = _counted(s3, bucket, shared, tmp_path / "third.jsonl", *args, "--skip-existing")
    assert third.returncode == 0, third.stderr
    assert dict(+sent.data_requests()) == {PREFIX + small_rel: 1, PREFIX + big_rel: 3}
    done = completed_paths(events(third.stdout))
    assert done[small_rel]["skipped"] is None and done[big_rel]["skipped"] is None
    assert {e["skipped"] for rel, e in done.items() if rel not in (small_rel, big_rel)} == {"exists"}
    assert_tree_on_store(client, bucket, expected)


# -- Ctrl+C and kill -9 mid-run, then --resume ------------------------------------------------------------------------

def _stored_parts(client: Any, bucket: str) -> dict[str, tuple[str, set[int]]]:
    """key -> (UploadId, part numbers the store holds) for every multipart upload in progress."""
    out: dict[str, tuple[str, set[int]]] = {}
    for upload in multipart_uploads(client, bucket):
        try:
            parts = client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts", [])
        except client.exceptions.NoSuchUpload:  # completed (or aborted) since the listing
            continue
        out[upload["Key"]] = (upload["UploadId"], {p["PartNumber"] for p in parts})
    return out


def _wait_for_partial_large_file(cli: CliProcess, client: Any, bucket: str, timeout: float = 90) -> None:
    """Until one large file is complete and the next one has at least one part on the store."""
    cli.wait_line(lambda line: '"file_completed"' in line and '"big/' in line, timeout)

    def partial() -> bool:
        return cli.popen.poll() is not None or any(parts for _, parts in _stored_parts(client, bucket).values())

    wait_until(partial, timeout, "a large file with a part on the store", interval=0.1)
    assert cli.popen.poll() is None, f"the run ended before it could be interrupted: {cli.stderr}"


def _wait_for_small_files(cli: CliProcess, count: int, timeout: float = 90) -> None:
    seen: list[int] = []

    def counts(line: str) -> bool:
        if '"file_completed"' in line and '"small/' in line:
            seen.append(1)
        return len(seen) >= count

    cli.wait_line(counts, timeout)


#: (signal, phase, extra options of the first run, servers): the phase is what is in flight at the signal, the
#: second large file (one large file complete) or the small files (every large file and some small ones complete)
RESUME_CASES = [
    ("SIGINT", "large", (), SERVERS),
    ("SIGKILL", "large", (), SERVERS),
    ("SIGINT", "small", (), ["moto"]),
    ("SIGKILL", "small", (), ["moto"]),
    ("SIGINT", "large", ("--keep-on-interrupt",), ["moto"]),
]


@pytest.mark.parametrize(
    ("s3", "sig", "phase", "extra"),
    [pytest.param(server, sig, phase, extra, id=f"{server}-{sig}-{phase}{''.join(extra)}")
     for sig, phase, extra, servers in RESUME_CASES for server in servers],
    indirect=["s3"])
def test_interrupt_then_resume(s3: S3Server, bucket: str, tree: MixedTree, shared: Path, tmp_path: Path,
                               sig: str, phase: str, extra: tuple[str, ...]) -> None:
    client = s3.client()
    dest = f"s3://{bucket}/{PREFIX}"
    args = ("upload", tree.source, dest, *PART_SIZE, "--workers", "3", "--progress", "json", *SOME)
    expected = {rel: info for rel, info in tree.files.items() if in_some(rel)}
    env = env_for(s3, shared)  # both runs share HOME and the state directory (the run's journal)

    # the first run, interrupted mid-run; slowed to 1 MiB/s per connection when the signal is for a large file
    # in flight (a large file then takes seconds)
    slow = proxy_for(s3, log_path=tmp_path / "first.jsonl", throttle_bps=MiB if phase == "large" else None)
    port = slow.port
    try:
        first = start(*args, *extra, env=env | slow.s3server(s3).env())
        try:
            if phase == "large":
                _wait_for_partial_large_file(first, client, bucket)
            else:
                _wait_for_small_files(first, 60)
            if sig == "SIGKILL":
                first.kill_group()
            else:
                os.killpg(first.pid, signal.SIGINT)
                assert first.wait(60) == 130, first.stderr
        finally:
            first.kill_group()
    finally:
        slow.stop()  # nothing of the first run can still reach the store
    first_events = events(first.stdout)
    complete_before = set(completed_paths(first_events))
    assert complete_before, "nothing was complete before the interrupt"
    assert len(complete_before) < len(expected)
    left = _stored_parts(client, bucket)
    if sig == "SIGINT":
        assert first_events[-1]["event"] == "stopped", first_events[-1]
        assert "Traceback" not in first.stderr
        if not extra:  # Ctrl+C aborts the multipart upload in flight
            assert left == {}, left
    if phase == "large" and (sig == "SIGKILL" or extra):
        assert len(left) == 1 and next(iter(left.values()))[1], f"expected one large file half-way: {left}"

    # the same command with --resume, through a fresh proxy on the same port (the same endpoint URL)
    second_proxy = proxy_for(s3, log_path=tmp_path / "second.jsonl", listen_port=port)
    try:
        second = run(*args, *extra, "--resume", env=env | second_proxy.s3server(s3).env())
        sent = trees.sent_by_key(second_proxy.requests(), bucket)
    finally:
        second_proxy.stop()
    assert second.returncode == 0, second.stderr
    evs = events(second.stdout)
    assert evs[-1]["event"] == "completed" and evs[-1]["files_done"] == len(expected), evs[-1]

    requests = sent.data_requests()
    again = sorted(rel for rel in complete_before if requests[PREFIX + rel])
    assert not again, f"complete before the interrupt, sent again: {again[:10]}"
    done = completed_paths(evs)
    assert set(done) == set(expected)
    assert {rel for rel, e in done.items() if e["skipped"] == "resumed"} >= complete_before
    for rel in expected:  # nothing sent twice by the second run either
        key = PREFIX + rel
        numbers = sent.parts.get(key, [])
        assert len(numbers) == len(set(numbers)), (rel, numbers)
        assert sent.puts[key] <= 1, (rel, sent.puts[key])
    for key, (upload_id, stored) in left.items():  # the large file half-way resumes at part level
        assert sorted(sent.parts.get(key, [])) == sorted({1, 2, 3} - stored), (key, stored, sent.parts.get(key))
        assert sent.part_upload_ids.get(key, {upload_id}) == {upload_id}
    assert_tree_on_store(client, bucket, expected)
    assert multipart_uploads(client, bucket) == []


# -- bad input: exit 2, one line, nothing on the store ---------------------------------------------------------------

BAD_INPUT: dict[str, Callable[[MixedTree, str], list[str]]] = {
    "directory-to-a-key": lambda t, b: [t.source, f"s3://{b}/sets/mixed"],
    "sources-to-a-key": lambda t, b: [str(t.root / "empty.txt"), str(t.root / "deep"), f"s3://{b}/sets/two"],
    "missing-source": lambda t, b: [str(t.root / "no-such-dir"), f"s3://{b}/{PREFIX}"],
    "missing-among-several": lambda t, b: [str(t.root / "deep"), str(t.root / "no-such-file"), f"s3://{b}/{PREFIX}"],
}


@pytest.mark.parametrize("s3", ["moto"], indirect=True)
@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2(s3: S3Server, bucket: str, tree: MixedTree, shared: Path, tmp_path: Path,
                           case: str) -> None:
    proxy = proxy_for(s3, log_path=tmp_path / "requests.jsonl")
    try:
        proc = run("upload", *BAD_INPUT[case](tree, bucket), "--progress", "json",
                   env=env_for(proxy.s3server(s3), shared))
        requests = proxy.requests()
    finally:
        proxy.stop()
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    line = one_line(proc.stderr)
    assert line.startswith("mpupload: ") and "Traceback" not in line
    assert [r for r in requests if r["method"] in ("PUT", "POST")] == []
    client = s3.client()
    assert trees.list_keys(client, bucket) == set()
    assert multipart_uploads(client, bucket) == []


# -- --fail-fast ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("s3", ["moto"], indirect=True)
def test_fail_fast_stops_at_the_first_failure(s3: S3Server, bucket: str, tree: MixedTree, shared: Path) -> None:
    proc = run("upload", tree.source, f"s3://{bucket}/{PREFIX}", *PART_SIZE, "--progress", "json", "--fail-fast",
               env=env_for(s3, shared))
    assert proc.returncode == 1, proc.stderr
    evs = events(proc.stdout)
    final = evs[-1]
    assert final["event"] == "failed", final
    assert [f["path"] for f in final["failed_files"]] == [tree.unreadable]
    assert final["files_failed"] == 1
    # it stopped: most of the small files (they come after the unreadable one) were never sent
    client = s3.client()
    keys = trees.list_keys(client, bucket)
    assert len(keys) < len(tree.readable()) // 2, len(keys)
    assert final["files_done"] == len(completed_paths(evs)) < len(tree.readable()) // 2
    assert multipart_uploads(client, bucket) == []
    assert tree.unreadable in proc.stderr and "Traceback" not in proc.stderr


def test_the_unreadable_file_is_unreadable(tree: MixedTree) -> None:
    """The tree's premise: the CLI's uid cannot read secret/locked.bin (mode 000, uid 65534 under root)."""
    assert trees.is_unreadable_for_others(tree.root / tree.unreadable)
    probe = subprocess.run([*trees.unprivileged_prefix(), "cat", str(tree.root / tree.unreadable)],
                           capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert probe.returncode != 0 and probe.stdout == b""
