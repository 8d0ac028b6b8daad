"""The walk of a directory run's sources and its filters, on real files."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpupload.errors import UsageError
from mpupload.tree import (
    WARNINGS_PER_KIND,
    FilterAction,
    FilterRule,
    Filters,
    TreeFile,
    TreeProblem,
    check_sources,
    walk,
)

#: how long a walk may take before a test calls it hung (never reached when things work)
DEADLINE_S = 30.0


def inc(p: str) -> FilterRule:
    return FilterRule(True, p)


def exc(p: str) -> FilterRule:
    return FilterRule(False, p)


def make(root: Path, *rels: str) -> Path:
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode())
    return root


def run(sources: list[Path | str], filters: Filters | None = None, *, follow: bool = True
        ) -> tuple[list[TreeFile | TreeProblem], list[str]]:
    """The walk's items and warnings, run in a thread with a deadline: a walk that hangs fails the test."""
    items: list[TreeFile | TreeProblem] = []
    warnings: list[str] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            items.extend(walk([str(s) for s in sources], filters, follow_symlinks=follow, warn=warnings.append))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), f"the walk did not finish within {DEADLINE_S} s"
    assert not errors, errors
    return items, warnings


def rels(items: list[TreeFile | TreeProblem]) -> list[str]:
    return [i.rel for i in items if isinstance(i, TreeFile)]


def problems(items: list[TreeFile | TreeProblem]) -> list[TreeProblem]:
    return [i for i in items if isinstance(i, TreeProblem)]


# -- filters ---------------------------------------------------------------------------------------------------------

FILTER_TABLE = [
    # (rules, rel, taken)
    ([], "a/b.txt", True),
    ([exc("*.tmp")], "a/b.tmp", False),
    ([exc("*.tmp")], "a/b.txt", True),
    # include only: nothing else is taken
    ([inc("*.jpg")], "x/y.jpg", True),
    ([inc("*.jpg")], "x/y.png", False),
    ([inc("*.jpg"), inc("*.png")], "y.png", True),
    # the last matching rule wins
    ([exc("*"), inc("*.jpg")], "a/b.jpg", True),
    ([exc("*"), inc("*.jpg")], "a/b.txt", False),
    ([inc("*.jpg"), exc("*")], "a/b.jpg", False),
    ([exc("*.jpg"), inc("keep*"), exc("keep-not*")], "d/keep-not.jpg", False),
    ([exc("*.jpg"), inc("keep*"), exc("keep-not*")], "d/keep.jpg", True),
    ([exc("*.jpg"), inc("keep*")], "d/other.jpg", False),
    # a pattern without "/": the file name, at any depth; with "/": the whole relative path
    ([inc("train/*.jpg")], "train/a.jpg", True),
    ([inc("train/*.jpg")], "x/train/a.jpg", False),
    ([inc("train/*.jpg")], "train/sub/a.jpg", False),
    ([exc("b.txt")], "a/b/c/b.txt", False),
    ([exc("c/b.txt")], "a/c/b.txt", True),
    # "*" stays within a segment, "**" crosses them, "**/" may be no directory at all
    ([exc("a/*")], "a/b", False),
    ([exc("a/*")], "a/b/c", True),
    ([inc("train/**/*.jpg")], "train/a.jpg", True),
    ([inc("train/**/*.jpg")], "train/x/y/a.jpg", True),
    ([inc("train/**/*.jpg")], "val/x/a.jpg", False),
    ([inc("**/cache/*")], "cache/a", True),
    ([inc("**/cache/*")], "a/b/cache/c", True),
    ([inc("**/cache/*")], "a/b/cache/c/d", False),
    ([exc("logs/**")], "logs/a/b/c.txt", False),
    ([exc("logs/**")], "x/logs/c.txt", True),
    ([inc("**")], "a/b/c", True),
    ([inc("a**z")], "a/b/z", True),  # "**" makes it a pattern of the whole path, as in rsync
    ([inc("a**z")], "x/a/b/z", False),
    ([inc("**.jpg")], "x/a/b.jpg", True),
    # ? and classes
    ([inc("file?.txt")], "file1.txt", True),
    ([inc("file?.txt")], "file10.txt", False),
    ([inc("d?e")], "d/e", False),
    ([inc("[ab]*.txt")], "a1.txt", True),
    ([inc("[ab]*.txt")], "c1.txt", False),
    ([inc("[!a]*")], "b", True),
    ([inc("[!a]*")], "a", False),
    ([inc("[a-c]x")], "bx", True),
    ([inc("[a-c]x")], "dx", False),
    ([inc("[]]x")], "]x", True),
    ([inc("[a&&b]")], "&", True),
    ([inc("[abc")], "[abc", True),  # no closing bracket: literal
    # a directory pattern: every file below, at any depth without another "/"
    ([exc(".git/")], ".git/config", False),
    ([exc(".git/")], "x/.git/objects/ab", False),
    ([exc(".git/")], "x/.gitignore", True),
    ([exc(".git/")], ".git", True),
    ([exc("x/build/")], "x/build/a.o", False),
    ([exc("x/build/")], "y/x/build/a.o", True),
    # anchors
    ([exc("/top.txt")], "top.txt", False),
    ([exc("/top.txt")], "a/top.txt", True),
    ([exc("./top.txt")], "top.txt", False),
    # escapes, and characters that mean something in a regular expression
    ([inc("\\*.txt")], "*.txt", True),
    ([inc("\\*.txt")], "a.txt", False),
    ([inc("a+b (1).txt")], "d/a+b (1).txt", True),
    ([inc("a.b")], "axb", False),
    ([inc("*.JPG")], "a.jpg", False),  # case counts, as in S3 keys
    ([inc("ä*")], "d/äpfel.txt", True),
]


@pytest.mark.parametrize(("rules", "rel", "taken"), FILTER_TABLE)
def test_filters_table(rules: list[FilterRule], rel: str, taken: bool) -> None:
    assert Filters(rules).takes(rel) is taken


@pytest.mark.parametrize("pattern", ["", "/", "./", "[z-a]"])
def test_a_pattern_that_is_no_glob_is_a_usage_error(pattern: str) -> None:
    with pytest.raises(UsageError, match="pattern") as info:
        Filters([exc(pattern)])
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)


def test_prunes_only_what_nothing_later_can_take() -> None:
    f = Filters([inc("*.keep"), exc("cache/"), exc("a/tmp/**")])
    assert f.can_prune
    assert f.prunes("cache") and f.prunes("x/y/cache") and f.prunes("cache/deeper")
    assert f.prunes("a/tmp") and f.prunes("a/tmp/z")
    assert not f.prunes("cachex") and not f.prunes("b/tmp") and not f.prunes("a")
    later_include = Filters([exc("cache/"), inc("*.keep")])
    assert not later_include.can_prune and not later_include.prunes("cache")
    assert not Filters([exc("*.tmp")]).can_prune


def test_a_later_include_takes_a_file_below_an_excluded_directory(tmp_path: Path) -> None:
    make(tmp_path, "logs/a.log", "logs/deep/b.keep", "c.keep", "d.txt")
    items, _ = run([tmp_path], Filters([exc("logs/"), inc("*.keep")]))
    assert rels(items) == ["c.keep", "d.txt", "logs/deep/b.keep"]
    items, _ = run([tmp_path], Filters([inc("*.keep"), exc("logs/")]))
    assert rels(items) == ["c.keep", "d.txt"]


def test_a_pruned_directory_is_not_entered(tmp_path: Path) -> None:
    """Not entered: a directory removed after the listing gives no problem when it is pruned."""
    make(tmp_path, "a.txt", "cache/x", "z.txt")
    filters = Filters([exc("cache/")])
    it = walk([str(tmp_path)], filters)
    first = next(it)
    shutil.rmtree(tmp_path / "cache")
    rest = list(it)
    assert [first.rel, *(i.rel for i in rest)] == ["a.txt", "z.txt"]
    assert problems(rest) == []


def test_filter_action_keeps_command_line_order() -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--include", action=FilterAction, dest="filters")
    parser.add_argument("--exclude", action=FilterAction, dest="filters")
    assert parser.parse_args([]).filters == []
    args = parser.parse_args(["--exclude", "*", "--include", "*.jpg", "--exclude", "bad/*.jpg"])
    assert args.filters == [exc("*"), inc("*.jpg"), exc("bad/*.jpg")]
    assert Filters(args.filters).takes("a.jpg") and not Filters(args.filters).takes("bad/a.jpg")
    assert parser.parse_args([]).filters == []  # the default was not changed by the parse before


def test_filter_action_refuses_a_bad_glob_while_parsing(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="mpupload")
    parser.add_argument("--include", action=FilterAction, dest="filters")
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--include", "[z-a]"])
    assert info.value.code == 2
    assert "--include" in capsys.readouterr().err


# -- the walk --------------------------------------------------------------------------------------------------------

def test_a_tree_in_sorted_depth_first_order(tmp_path: Path) -> None:
    root = make(tmp_path / "data", "b.txt", "a/z.txt", "a/b/c.txt", "a.txt", "with space/f g.txt",
                "ünïcödé/日本.txt", "c/d/e/f/deep.bin")
    (root / "empty" / "nested").mkdir(parents=True)
    items, warnings = run([root])
    assert rels(items) == ["a/b/c.txt", "a/z.txt", "a.txt", "b.txt", "c/d/e/f/deep.bin", "with space/f g.txt",
                           "ünïcödé/日本.txt"]
    assert warnings == [] and problems(items) == []
    for f in items:
        assert isinstance(f, TreeFile)
        assert os.path.isabs(f.path) and f.path == str(root / f.rel)
        st = os.stat(f.path)
        assert (f.size, f.mtime_ns, f.inode, f.device) == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        assert f.size == len(f.rel.encode())
    again, _ = run([root])
    assert again == items


def test_a_file_source_gives_its_basename_and_a_relative_source_is_made_absolute(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(tmp_path, "d/one.txt", "d/sub/two.txt", "solo.bin")
    monkeypatch.chdir(tmp_path)
    items, _ = run(["d/", "solo.bin"])
    assert [(f.rel, f.path) for f in items if isinstance(f, TreeFile)] == [
        ("one.txt", str(tmp_path / "d/one.txt")), ("sub/two.txt", str(tmp_path / "d/sub/two.txt")),
        ("solo.bin", str(tmp_path / "solo.bin"))]


def test_an_empty_directory_yields_nothing(tmp_path: Path) -> None:
    (tmp_path / "e" / "f").mkdir(parents=True)
    assert run([tmp_path]) == ([], [])


def test_symlinks_to_a_file_and_to_a_directory_are_followed(tmp_path: Path) -> None:
    data = make(tmp_path / "data", "real/x.txt", "f.txt")
    outside = make(tmp_path / "outside", "o/deep.txt")
    (data / "link.txt").symlink_to(data / "f.txt")
    (data / "linkdir").symlink_to(outside)
    items, warnings = run([data])
    assert warnings == []
    by_rel = {f.rel: f for f in items if isinstance(f, TreeFile)}
    assert list(by_rel) == ["f.txt", "link.txt", "linkdir/o/deep.txt", "real/x.txt"]
    assert by_rel["link.txt"].path == str(data / "link.txt")
    assert by_rel["link.txt"].inode == by_rel["f.txt"].inode  # the target's stat
    assert by_rel["linkdir/o/deep.txt"].path == str(data / "linkdir/o/deep.txt")


def test_a_symlink_loop_is_skipped_with_one_warning_naming_it(tmp_path: Path) -> None:
    data = make(tmp_path / "data", "a/b/file.txt")
    (data / "a" / "b" / "up").symlink_to(data / "a")
    (data / "self").symlink_to(data)
    (data / "knot").symlink_to(data / "knot")  # a link to itself: ELOOP
    items, warnings = run([data])
    assert rels(items) == ["a/b/file.txt"]
    assert len(warnings) == 3
    assert any(str(data / "a/b/up") in w and "loop" in w for w in warnings)
    assert any(str(data / "self") in w and "loop" in w for w in warnings)
    assert any(str(data / "knot") in w and "loop" in w for w in warnings)


def test_a_link_to_a_sibling_directory_is_no_loop(tmp_path: Path) -> None:
    data = make(tmp_path / "data", "a/x.txt")
    (data / "b").symlink_to(data / "a")
    items, warnings = run([data])
    assert rels(items) == ["a/x.txt", "b/x.txt"] and warnings == []


def test_follow_off_skips_every_link_with_one_warning_counting_them(tmp_path: Path) -> None:
    data = make(tmp_path / "data", "f.txt", "d/g.txt")
    (data / "l1").symlink_to(data / "f.txt")
    (data / "l2").symlink_to(data / "d")
    (data / "d" / "l3").symlink_to(tmp_path / "nowhere")
    items, warnings = run([data], follow=False)
    assert rels(items) == ["d/g.txt", "f.txt"]
    assert warnings == ["3 symbolic links skipped (--no-follow-symlinks)"]


def test_a_dangling_symlink_is_skipped_with_a_warning(tmp_path: Path) -> None:
    data = make(tmp_path / "data", "f.txt")
    (data / "gone").symlink_to(tmp_path / "nowhere")
    items, warnings = run([data])
    assert rels(items) == ["f.txt"] and problems(items) == []
    assert len(warnings) == 1 and str(data / "gone") in warnings[0] and "dangling" in warnings[0]


def test_fifo_and_socket_are_skipped_and_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make(tmp_path / "data", "a.txt", "z.txt")
    os.mkfifo(data / "pipe")
    monkeypatch.chdir(data)  # a socket's path must be short
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind("sock")
        items, warnings = run([data])  # opening the FIFO would block: the deadline would fail the test
    finally:
        sock.close()
    assert rels(items) == ["a.txt", "z.txt"] and problems(items) == []
    assert sorted(warnings) == [f"{data / 'pipe'} is a FIFO: skipped", f"{data / 'sock'} is a socket: skipped"]
    items, warnings = run([data], Filters([exc("pipe")]))
    assert warnings == [f"{data / 'sock'} is a socket: skipped"]  # a filtered-out special file is not worth one


def test_warnings_of_one_kind_are_capped_then_counted(tmp_path: Path) -> None:
    data = make(tmp_path / "data", "f.txt")
    for i in range(WARNINGS_PER_KIND + 5):
        (data / f"gone{i:03}").symlink_to(tmp_path / "nowhere")
    _, warnings = run([data])
    assert len(warnings) == WARNINGS_PER_KIND + 1
    assert warnings[-1] == "... and 5 more dangling symbolic links skipped"


def test_a_directory_that_vanishes_before_it_is_read_is_a_problem(tmp_path: Path) -> None:
    data = make(tmp_path / "data", "a/x.txt", "b/y.txt", "c.txt")
    it = walk([str(data)])
    first = next(it)
    assert first.rel == "a/x.txt"
    shutil.rmtree(data / "b")
    rest = list(it)
    assert rels(rest) == ["c.txt"]
    [problem] = problems(rest)
    assert problem.rel == "b/" and problem.path == str(data / "b")
    assert "No such file" in problem.error


UNPRIVILEGED_WALK = """
import json, os, sys
from mpupload.tree import TreeFile, walk
if os.geteuid() == 0:
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
assert os.geteuid() != 0
for item in walk([sys.argv[1]]):
    print(json.dumps([type(item).__name__, item.rel, getattr(item, "error", "")]))
"""


def test_an_unreadable_directory_is_a_problem_and_an_unreadable_file_is_still_given() -> None:
    """As an unprivileged user: a root test drops to uid 65534 (root reads everything), any other runs as is."""
    base = Path(tempfile.mkdtemp(prefix="mpupload-tree-"))
    try:
        os.chmod(base, 0o755)
        data = make(base / "data", "a.txt", "locked/secret.txt", "secret-file.txt", "z/z.txt")
        for d in (data, data / "z"):
            os.chmod(d, 0o755)
        for f in ("a.txt", "z/z.txt"):
            os.chmod(data / f, 0o644)
        os.chmod(data / "secret-file.txt", 0)
        os.chmod(data / "locked", 0)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        proc = subprocess.run([sys.executable, "-c", UNPRIVILEGED_WALK, str(data)], capture_output=True, text=True,
                              timeout=DEADLINE_S, env=env, cwd="/")
        assert proc.returncode == 0, proc.stderr
        out = [json.loads(line) for line in proc.stdout.splitlines()]
    finally:
        os.chmod(base / "data" / "locked", 0o700)
        shutil.rmtree(base, ignore_errors=True)
    assert [o[:2] for o in out] == [["TreeFile", "a.txt"], ["TreeProblem", "locked/"],
                                    ["TreeFile", "secret-file.txt"], ["TreeFile", "z/z.txt"]]
    assert "cannot read the directory" in out[1][2] and "Permission denied" in out[1][2]


def test_the_same_rel_from_two_sources_is_a_problem_and_the_first_wins(tmp_path: Path) -> None:
    one = make(tmp_path / "one", "x.txt", "d/y.txt")
    two = make(tmp_path / "two", "d/y.txt", "w.txt", "x.txt")
    solo = make(tmp_path / "solo", "w.txt") / "w.txt"
    items, _ = run([one, two, solo])
    assert [(type(i).__name__, i.path) for i in items] == [
        ("TreeFile", str(one / "d/y.txt")), ("TreeFile", str(one / "x.txt")),
        ("TreeProblem", str(two / "d/y.txt")), ("TreeFile", str(two / "w.txt")), ("TreeProblem", str(two / "x.txt")),
        ("TreeProblem", str(solo))]
    p = problems(items)
    assert p[0].error == f"{one / 'd/y.txt'} and {two / 'd/y.txt'} both go to the key of d/y.txt: only the first " \
                         "is uploaded"
    assert str(two / "w.txt") in p[2].error and str(solo) in p[2].error


def test_one_source_needs_no_duplicate_check_and_a_file_twice_in_a_tree_is_fine(tmp_path: Path) -> None:
    data = make(tmp_path / "data", "a/f.txt")
    os.link(data / "a/f.txt", data / "hard.txt")
    items, _ = run([data])
    assert rels(items) == ["a/f.txt", "hard.txt"]


def test_a_name_that_is_not_utf8_is_a_problem_with_a_printable_rel(tmp_path: Path) -> None:
    data = make(tmp_path / "data", "ok.txt")
    fd = os.open(os.fsencode(str(data)) + b"/bad\xff.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    os.mkdir(os.fsencode(str(data)) + b"/dir\xfe")
    fd = os.open(os.fsencode(str(data)) + b"/dir\xfe/in.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    items, _ = run([data])
    assert rels(items) == ["ok.txt"]
    ps = problems(items)
    assert sorted(p.rel for p in ps) == ["bad\\xff.txt", "dir\\xfe/in.txt"]
    for p in ps:
        p.rel.encode("utf-8")  # printable, fit for JSON
        p.error.encode("utf-8")
        assert "not valid UTF-8" in p.error and "\n" not in p.error


def test_a_file_source_that_is_missing_at_walk_time_is_a_problem(tmp_path: Path) -> None:
    items, _ = run([tmp_path / "gone.txt"])
    [problem] = problems(items)
    assert problem.rel == "gone.txt" and "No such file" in problem.error


# -- check_sources ---------------------------------------------------------------------------------------------------

def test_check_sources_takes_files_and_directories(tmp_path: Path) -> None:
    make(tmp_path, "d/f.txt", "g.txt")
    (tmp_path / "ld").symlink_to(tmp_path / "d")
    check_sources([str(tmp_path / "d"), str(tmp_path / "g.txt"), str(tmp_path / "ld" / "f.txt")])


@pytest.mark.parametrize(("case", "message"), [
    ("missing", "missing: no such file or directory"),
    ("dangling", "dangling is a symbolic link to nothing"),
    ("fifo", "fifo is a FIFO, not a file or a directory"),
    ("twice", "are the same source: name it once"),
    ("none", "no source given"),
])
def test_check_sources_refuses_with_one_line(tmp_path: Path, case: str, message: str) -> None:
    make(tmp_path, "d/f.txt")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    sources = {"missing": [str(tmp_path / "missing")], "dangling": [str(tmp_path / "dangling")],
               "fifo": [str(tmp_path / "fifo")], "twice": [str(tmp_path / "d"), str(tmp_path / "d") + "/"],
               "none": []}[case]
    with pytest.raises(UsageError) as info:
        check_sources(sources)
    assert info.value.exit_code == 2
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_walk_is_lazy(tmp_path: Path) -> None:
    """A directory is read when the walk reaches it, not before: a file added to it after the first item is
    given; a file added to a directory already read is not."""
    make(tmp_path, "a/1.txt", "b/2.txt")
    it: Iterator[TreeFile | TreeProblem] = walk([str(tmp_path)])
    assert next(it).rel == "a/1.txt"
    make(tmp_path, "a/1b.txt", "b/1.txt")
    assert rels(list(it)) == ["b/1.txt", "b/2.txt"]
