"""Trees of files for the directory-run tests, a place for them that an unprivileged uid can read, and what a
run sent to the store (read from a logging proxy's request log).

The mixed tree (:func:`build_mixed_tree`)::

    small/NN/file-NNNN.dat   2,000 small files in 20 directories, 0 .. ~9 KiB (every 97th one empty)
    deep/a/b/c/d/e/f/g/leaf.txt
    big/one.bin big/two.bin big/three.bin   three files of 3 parts each with --part-size 5MiB
    empty.txt                 an empty file
    données/été 2024/naïve café.txt, 日本語/ファイル 名.txt, with space/a b c.txt
    link-to-file -> small/01/file-0001.dat   (a link to a file: followed, uploaded under its own name)
    small/loop -> ..          (a link back to an ancestor: a loop, skipped with a warning)
    self-loop -> self-loop    (a link to itself: ELOOP, skipped with a warning)
    fifo                      (a FIFO: skipped with a warning, never opened)
    empty-dir/                (an empty directory: no key)
    secret/locked.bin         (mode 000: unreadable for anyone but root)

``MixedTree.files`` maps every relative path that is a regular file (or a link to one) to its size and SHA-256;
``unreadable`` is the one that an unprivileged uid cannot read. The tree is made under a directory that every
uid can traverse (:func:`shared_tmpdir`), since pytest's own temporary directories are private to the user.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import stat
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

MiB = 1024 * 1024
#: the unprivileged uid and gid the CLI runs as when the tests run as root (CI): nobody / nogroup
NOBODY = 65534

SMALL_DIRS = 20
SMALL_FILES = 2000
#: the large files and their sizes: 3 parts each with a 5 MiB part size
BIG_FILES = {"big/one.bin": 12 * MiB, "big/two.bin": 11 * MiB + 4321, "big/three.bin": 10 * MiB + 1}
UNICODE_FILES = {"données/été 2024/naïve café.txt": 3000, "日本語/ファイル 名.txt": 777, "with space/a b c.txt": 42}
UNREADABLE = "secret/locked.bin"
UNREADABLE_SIZE = 2048
FIFO = "fifo"
LOOPS = ("small/loop", "self-loop")
LINK_TO_FILE = "link-to-file"
LINK_TARGET = "small/01/file-0001.dat"


@dataclass(frozen=True)
class FileInfo:
    size: int
    sha256: str


@dataclass
class MixedTree:
    root: Path
    #: every regular file (and link to one) by its relative POSIX path, the unreadable one included
    files: dict[str, FileInfo] = field(default_factory=dict)
    unreadable: str = UNREADABLE
    fifo: str = FIFO
    loops: tuple[str, ...] = LOOPS
    big: tuple[str, ...] = tuple(BIG_FILES)

    @property
    def source(self) -> str:
        """The tree as a source on the command line: with a trailing ``/`` (its contents go under PREFIX)."""
        return str(self.root) + "/"

    def readable(self) -> dict[str, FileInfo]:
        return {rel: info for rel, info in self.files.items() if rel != self.unreadable}

    def small(self) -> dict[str, FileInfo]:
        return {rel: info for rel, info in self.readable().items() if rel not in self.big}


def _write(path: Path, data: bytes) -> FileInfo:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return FileInfo(len(data), hashlib.sha256(data).hexdigest())


def _write_big(path: Path, size: int, seed: int) -> FileInfo:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 4 * MiB))
            fh.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return FileInfo(size, h.hexdigest())


def small_size(i: int) -> int:
    """The size of small file ``i``: 0 for every 97th, else spread over 1 .. 9,000 bytes."""
    return 0 if i % 97 == 0 else 1 + (i * 7919) % 9000


def build_mixed_tree(root: Path) -> MixedTree:
    """The mixed tree of the module docstring under ``root`` (made; must not exist yet); readable by every uid
    except ``secret/locked.bin`` (mode 000)."""
    root.mkdir(mode=0o755)
    tree = MixedTree(root)
    rng = random.Random(13)
    for i in range(SMALL_FILES):
        rel = f"small/{i % SMALL_DIRS:02d}/file-{i:04d}.dat"
        tree.files[rel] = _write(root / rel, rng.randbytes(small_size(i)))
    tree.files["deep/a/b/c/d/e/f/g/leaf.txt"] = _write(root / "deep/a/b/c/d/e/f/g/leaf.txt", b"deep leaf\n")
    for n, (rel, size) in enumerate(BIG_FILES.items()):
        tree.files[rel] = _write_big(root / rel, size, seed=100 + n)
    tree.files["empty.txt"] = _write(root / "empty.txt", b"")
    for rel, size in UNICODE_FILES.items():
        tree.files[rel] = _write(root / rel, rng.randbytes(size))
    os.symlink(LINK_TARGET, root / LINK_TO_FILE)
    tree.files[LINK_TO_FILE] = tree.files[LINK_TARGET]
    os.symlink("..", root / "small/loop")
    os.symlink("self-loop", root / "self-loop")
    os.mkfifo(root / FIFO)
    (root / "empty-dir").mkdir()
    tree.files[UNREADABLE] = _write(root / UNREADABLE, rng.randbytes(UNREADABLE_SIZE))
    os.chmod(root / UNREADABLE, 0)
    for dirpath, dirnames, _ in os.walk(root):  # the umask may be tighter than 022
        for d in dirnames:
            p = Path(dirpath) / d
            if not p.is_symlink():
                p.chmod(0o755)
    return tree


def build_small_tree(root: Path, files: Iterable[tuple[str, int]], seed: int = 0) -> dict[str, FileInfo]:
    """Files of pseudo-random bytes at ``rel`` with ``size``; readable by every uid."""
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    rng = random.Random(seed)
    out: dict[str, FileInfo] = {}
    for rel, size in files:
        if size < 4 * MiB:
            out[rel] = _write(root / rel, rng.randbytes(size))
        else:
            out[rel] = _write_big(root / rel, size, seed=seed + len(out))
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            (Path(dirpath) / d).chmod(0o755)
    return out


# -- running the CLI as an unprivileged uid -------------------------------------------------------------------------

def running_as_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def shared_tmpdir(prefix: str = "mpupload-datasets-") -> Iterator[Path]:
    """A new directory under the system's temporary directory that every uid can traverse (0755), removed on the
    way out. pytest's ``tmp_path`` lives under a 0700 directory of the user running the tests."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        base.chmod(0o755)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def unprivileged_dir(path: Path) -> Path:
    """``path`` made (0700), owned by the unprivileged uid when the tests run as root."""
    path.mkdir(mode=0o700, parents=True)
    if running_as_root():
        os.chown(path, NOBODY, NOBODY)
    return path


def unprivileged_prefix() -> list[str]:
    """The command prefix that runs a program as nobody:nogroup without supplementary groups (as root), or none
    (a developer's own uid cannot read a mode-000 file either). ``setpriv`` rather than ``subprocess``'s
    ``user=``/``preexec_fn``: it changes the ids and then execs, which is all the tests need, and it is the same
    on every machine that has util-linux."""
    if not running_as_root():
        return []
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def unprivileged_env(home: Path) -> dict[str, str]:
    """HOME, the XDG directories and the state directory of the CLI, under ``home`` (made, the uid's own)."""
    unprivileged_dir(home)
    env = {"HOME": str(home), "MPUPLOAD_STATE_DIR": str(home / "state")}
    for name, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data"), ("XDG_STATE_HOME", "xdg-state"),
                      ("XDG_CACHE_HOME", "cache"), ("XDG_RUNTIME_DIR", "runtime")):
        env[name] = str(home / sub)
    for sub in ("state", "config", "data", "xdg-state", "cache", "runtime"):
        unprivileged_dir(home / sub)
    return env


def unprivileged_python_problem(python: str, cwd: Path) -> str | None:
    """Why the unprivileged uid cannot run ``python -m mpupload --help`` (the interpreter, the venv or the source
    tree not readable by others), or None when it can."""
    if not running_as_root():
        return None
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    proc = subprocess.run([*unprivileged_prefix(), python, "-c", "import mpupload.cli.main, boto3"], cwd=cwd,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        return f"uid {NOBODY} cannot run {python} with mpupload: {proc.stderr.strip()[-500:]}"
    return None


def is_unreadable_for_others(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o444 == 0


# -- what a run sent, from a proxy's request log (tests/support/proxy.py --log) ------------------------------------

def _query(entry: dict[str, Any]) -> dict[str, list[str]]:
    return parse_qs(str(entry.get("query", "")), keep_blank_values=True)


def request_key(entry: dict[str, Any], bucket: str) -> str | None:
    """The object key of a path-style request to ``bucket`` (decoded), or None for a bucket-level request."""
    path = unquote(str(entry.get("path", "")))
    head = f"/{bucket}/"
    return path[len(head):] if path.startswith(head) and len(path) > len(head) else None


@dataclass
class Sent:
    """What one run sent, per key: whole-object PUTs, UploadParts (part numbers) and multipart uploads begun.

    UploadParts of a multipart upload that the same run aborted (the store probe's throwaway upload, an upload
    aborted by Ctrl+C) are left out of ``parts`` and counted in ``aborted_parts``."""

    puts: Counter[str] = field(default_factory=Counter)
    parts: dict[str, list[int]] = field(default_factory=dict)
    part_upload_ids: dict[str, set[str]] = field(default_factory=dict)
    creates: Counter[str] = field(default_factory=Counter)
    aborted_parts: Counter[str] = field(default_factory=Counter)

    def data_requests(self) -> Counter[str]:
        """PutObjects plus UploadParts (not aborted), per key."""
        out = Counter(self.puts)
        for key, numbers in self.parts.items():
            out[key] += len(numbers)
        return out


def sent_by_key(requests: list[dict[str, Any]], bucket: str) -> Sent:
    sent = Sent()
    aborted: set[str] = set()
    for r in requests:
        q = _query(r)
        if r["method"] == "DELETE" and "uploadId" in q:
            aborted.add(q["uploadId"][0])
    for r in requests:
        key = request_key(r, bucket)
        if key is None:
            continue
        q = _query(r)
        if r["method"] == "PUT" and "partNumber" in q and "uploadId" in q:
            if q["uploadId"][0] in aborted:
                sent.aborted_parts[key] += 1
            else:
                sent.parts.setdefault(key, []).append(int(q["partNumber"][0]))
                sent.part_upload_ids.setdefault(key, set()).add(q["uploadId"][0])
        elif r["method"] == "PUT" and not (set(q) - {"x-id"}):
            sent.puts[key] += 1
        elif r["method"] == "POST" and "uploads" in q:
            sent.creates[key] += 1
    return sent


# -- what the store holds ---------------------------------------------------------------------------------------------

def list_keys(client: Any, bucket: str, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = client.list_objects_v2(**kwargs)
        keys.update(obj["Key"] for obj in page.get("Contents", []))
        if not page.get("IsTruncated"):
            return keys
        kwargs["ContinuationToken"] = page["NextContinuationToken"]


def sha256_objects(client: Any, bucket: str, keys: Iterable[str], threads: int = 8) -> dict[str, str]:
    """The SHA-256 of each object's bytes (GETs a few at a time: a tree has thousands)."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.cli import sha256_object

    keys = sorted(keys)
    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(keys, pool.map(lambda key: sha256_object(client, bucket, key), keys)))
