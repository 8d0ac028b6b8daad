"""The files of a directory run: the sources walked lazily, in a fixed order, through the filters.

``walk(sources, filters)`` yields one :class:`TreeFile` per regular file to upload and one :class:`TreeProblem`
per entry that must be reported as a failed file; everything else it skips, saying so through ``warn``.

Sources
    A directory yields its *contents*, ``rel`` relative to it (``data/`` gives ``train/0001.jpg``); a file yields
    its basename. A source named on the command line is followed even when it is a symbolic link. Inside a
    directory, names are sorted and the walk is depth-first, so two walks of the same tree agree.
    With several sources, a ``rel`` that an earlier source already gave is a problem (both would go to the same
    key); the first one wins.

Filters (``--include GLOB`` / ``--exclude GLOB``, repeatable)
    The *last* rule that matches a file's ``rel`` decides. When none matches, the file is taken, unless every rule
    is an ``--include`` (then only what an include matches is taken). Globs:

    ==========  ======================================================================================
    ``*``       any characters within one path segment (never ``/``)
    ``**``      any characters across directories; ``**/`` also matches no directory at all
    ``?``       one character (not ``/``); ``[abc]``, ``[a-z]``, ``[!abc]`` a character class
    ``\\x``      the character ``x`` itself
    ==========  ======================================================================================

    A pattern without ``/`` is matched against the file name (``*.jpg`` takes ``a/b/c.jpg``); a pattern with
    ``/`` or ``**`` against the whole relative path (``train/*.jpg`` takes ``train/c.jpg``, not
    ``x/train/c.jpg``), as in rsync; a leading ``/`` or ``./`` only anchors. A trailing ``/`` names a directory
    and matches every file below it, at any depth when it has no other ``/`` (``--exclude .git/``), as in
    ``.gitignore``. Filters never stop the walk from entering a directory, except one that such a directory
    pattern (or ``dir/**``) excludes with no ``--include`` after it: then nothing below it can be taken.

Symbolic links, special files, errors
    Links are followed; a link to a directory already on the current path (a loop) is skipped with a warning, and
    so is a dangling link. ``follow_symlinks=False`` skips every link (one warning with the count at the end).
    FIFOs, sockets and devices are skipped with a warning and never opened. A directory that cannot be read, an
    entry whose ``stat`` fails, and a name that is not valid UTF-8 (it cannot be an S3 key) are problems; an
    unreadable *file* is still yielded (its upload fails it). Warnings of one kind stop after
    :data:`WARNINGS_PER_KIND`; a last line counts the rest.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import errors as E

__all__ = [
    "FilterRule", "Filters", "FilterAction", "TreeFile", "TreeProblem", "walk", "check_sources",
    "WARNINGS_PER_KIND",
]

#: warnings of one kind (loops, dangling links, special files) given one by one; the rest are counted
WARNINGS_PER_KIND = 20


# -- filters ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FilterRule:
    include: bool
    pattern: str


def _translate(glob: str) -> str:
    """The regular expression (for ``fullmatch``) of a glob without a leading or trailing ``/``."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            j = i
            while j < n and glob[j] == "*":
                j += 1
            if j - i == 1:
                out.append("[^/]*")
            elif (i == 0 or glob[i - 1] == "/") and j < n and glob[j] == "/":
                out.append("(?:.*/)?")  # "**/": any number of directories, none included
                j += 1
            else:
                out.append(".*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            negate = j < n and glob[j] in "!^"
            if negate:
                j += 1
            end = glob.find("]", j + 1 if j < n and glob[j] == "]" else j)
            if end < 0:  # no closing bracket: a literal "["
                out.append(re.escape(c))
                i += 1
                continue
            body = "".join(ch if ch == "-" else re.escape(ch) for ch in glob[j:end])
            out.append(f"[^/{body}]" if negate else f"[{body}]")
            i = end + 1
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class _Compiled:
    include: bool
    #: matched against the file name (a pattern without "/") rather than the whole relative path
    on_name: bool
    regex: re.Pattern[str]
    #: a directory every file below which the rule matches ("logs/", "a/**"), for pruning the walk
    dir_regex: re.Pattern[str] | None


def _compile(rule: FilterRule) -> _Compiled:
    """One rule, compiled once; :class:`ValueError` with one clear line for a pattern that cannot be a glob."""
    pattern = rule.pattern
    body = pattern[2:] if pattern.startswith("./") else pattern
    anchored = body.startswith("/")
    body = body.lstrip("/")
    is_dir = body.endswith("/")
    body = body.rstrip("/")
    if not body:
        raise ValueError(f"the pattern {pattern!r} matches no file")
    anywhere = not anchored and "/" not in body and "**" not in body
    try:
        core = _translate(body)
        if is_dir:  # every file below a directory that matches; at any depth without another "/"
            lead = "(?:.*/)?" if anywhere else ""
            regex = re.compile(lead + core + "/.*")
            dir_regex: re.Pattern[str] | None = re.compile(lead + core)
        else:
            regex = re.compile(core)
            # "X/**" (the "**" a whole last segment) matches every file below a directory that X matches
            dir_regex = re.compile(_translate(body[:-3])) if body.endswith("/**") else None
    except re.error as exc:
        raise ValueError(f"the pattern {pattern!r} is not a valid glob ({exc})") from None
    return _Compiled(rule.include, anywhere and not is_dir, regex, dir_regex)


class Filters:
    """``--include``/``--exclude`` rules, compiled once; the last rule that matches a path decides."""

    __slots__ = ("rules", "_compiled", "_default", "_prune")

    def __init__(self, rules: Sequence[FilterRule] = ()) -> None:
        self.rules: tuple[FilterRule, ...] = tuple(rules)
        compiled: list[_Compiled] = []
        for rule in self.rules:
            try:
                compiled.append(_compile(rule))
            except ValueError as exc:
                raise E.UsageError(f"--{'include' if rule.include else 'exclude'}: {exc}") from None
        # newest first: the first match found is the last rule that matches
        self._compiled = tuple(reversed(compiled))
        self._default = not self.rules or not all(r.include for r in self.rules)
        # directory excludes with no include after them: nothing below a directory they match can be taken
        prune: list[re.Pattern[str]] = []
        for c in self._compiled:
            if c.include:
                break
            if c.dir_regex is not None:
                prune.append(c.dir_regex)
        self._prune = tuple(prune)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __repr__(self) -> str:
        return f"Filters({list(self.rules)!r})"

    def takes(self, rel: str) -> bool:
        """Whether the file at ``rel`` (a posix path relative to its source) is uploaded."""
        name = rel[rel.rfind("/") + 1:]
        for c in self._compiled:
            if (c.regex.fullmatch(name) if c.on_name else c.regex.fullmatch(rel)) is not None:
                return c.include
        return self._default

    @property
    def can_prune(self) -> bool:
        """Whether :meth:`prunes` can ever be true."""
        return bool(self._prune)

    def prunes(self, rel_dir: str) -> bool:
        """Whether no file below the directory ``rel_dir`` (posix, relative, no trailing "/") can be taken, so
        the walk need not enter it."""
        if not self._prune:
            return False
        end = -1
        while True:  # the directory and each of its ancestors
            end = rel_dir.find("/", end + 1)
            prefix = rel_dir if end < 0 else rel_dir[:end]
            if any(regex.fullmatch(prefix) for regex in self._prune):
                return True
            if end < 0:
                return False


class FilterAction(argparse.Action):
    """``--include``/``--exclude`` sharing one ``dest``: a :class:`FilterRule` per option, in command-line order.

    A pattern that is not a valid glob is refused while parsing (exit 2).
    """

    def __init__(self, option_strings: Sequence[str], dest: str, default: Any = None, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, default=[] if default is None else default, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        rule = FilterRule(option_string == "--include", str(values))
        try:
            _compile(rule)
        except ValueError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        # a new list each time: the default is shared by both options and must never change
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), rule])


# -- the walk --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TreeFile:
    #: absolute path to open (through the symbolic links followed: it ends with ``rel``)
    path: str
    #: posix path relative to its source: the key is PREFIX + rel
    rel: str
    size: int
    mtime_ns: int
    inode: int
    device: int


@dataclass(frozen=True, slots=True)
class TreeProblem:
    """An entry that becomes a failed file of the run (listed in the summary); the walk goes on."""

    path: str
    rel: str
    #: one line
    error: str


_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _show(text: str) -> str:
    """A name fit for one line of a message: undecodable bytes as ``\\xNN``, line breaks escaped."""
    if not text.isascii():
        text = os.fsencode(text).decode("utf-8", "backslashreplace")
    return text.translate(_ESCAPES)


def _special(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


class _Warnings:
    """Warnings one by one up to :data:`WARNINGS_PER_KIND` of a kind, then counted for one last line."""

    def __init__(self, warn: Callable[[str], None]) -> None:
        self._warn = warn
        self._counts: dict[str, int] = {}

    def __call__(self, kind: str, message: str) -> None:
        n = self._counts[kind] = self._counts.get(kind, 0) + 1
        if n <= WARNINGS_PER_KIND:
            self._warn(message)

    def finish(self) -> None:
        for kind, n in self._counts.items():
            if n > WARNINGS_PER_KIND:
                self._warn(f"... and {n - WARNINGS_PER_KIND} more {kind} skipped")


_DIR, _LINK, _OTHER = 1, 2, 3


def _listing(path: str) -> tuple[list[str], dict[str, int]]:
    """The sorted names in a directory, and the kind of those that are not regular files (from the directory
    entry's type: no ``stat``). Only names are kept: a directory of a million files costs a list of strings."""
    names: list[str] = []
    kinds: dict[str, int] = {}
    with os.scandir(path) as it:
        for entry in it:
            name = entry.name
            names.append(name)
            if entry.is_file(follow_symlinks=False):
                continue
            if entry.is_symlink():
                kinds[name] = _LINK
            elif entry.is_dir(follow_symlinks=False):
                kinds[name] = _DIR
            else:
                kinds[name] = _OTHER
    names.sort()
    return names, kinds


@dataclass(slots=True)
class _Frame:
    path: str
    #: the relative path of the directory, "" for the source, else ending with "/"
    rel: str
    names: list[str]
    kinds: dict[str, int]
    ident: tuple[int, int]
    index: int = 0


def _not_utf8(rel: str) -> bool:
    if rel.isascii():
        return False
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def walk(sources: Sequence[str], filters: Filters | None = None, *, follow_symlinks: bool = True,
         warn: Callable[[str], None] = lambda message: None) -> Iterator[TreeFile | TreeProblem]:
    """Every file of ``sources`` to upload, lazily, in a fixed order (see the module's docstring)."""
    warnings = _Warnings(warn)
    takes = filters.takes if filters else None
    prunes = filters.prunes if filters is not None and filters.can_prune else None
    roots = [os.path.abspath(s) for s in sources]
    # with several sources: the hashes of the rels given so far (a hit is checked against the earlier sources)
    given: set[int] | None = set() if len(roots) > 1 else None
    links_skipped = [0]
    for index, root in enumerate(roots):
        last = index == len(roots) - 1
        for item in _walk_source(root, takes, prunes, follow_symlinks, warnings, links_skipped):
            if given is not None and type(item) is TreeFile:
                h = hash(item.rel)
                if h in given:
                    problem = _duplicate(roots[:index], item)
                    if problem is not None:
                        yield problem
                        continue
                if not last:
                    given.add(h)
            yield item
    if links_skipped[0]:
        n = links_skipped[0]
        warn(f"{n} symbolic link{'s' if n != 1 else ''} skipped (--no-follow-symlinks)")
    warnings.finish()


def _duplicate(earlier: Sequence[str], found: TreeFile) -> TreeProblem | None:
    """The problem of a file whose rel an earlier source gave (None: a collision of hashes, not a duplicate)."""
    for root in earlier:
        if os.path.isdir(root):
            other = os.path.join(root, found.rel)
            if not os.path.lexists(other):
                continue
        elif os.path.basename(root) == found.rel:
            other = root
        else:
            continue
        return TreeProblem(found.path, _show(found.rel), f"{_show(other)} and {_show(found.path)} both go to the key "
                                                         f"of {_show(found.rel)}: only the first is uploaded")
    return None


def _walk_source(root: str, takes: Callable[[str], bool] | None, prunes: Callable[[str], bool] | None,
                 follow: bool, warnings: _Warnings, links_skipped: list[int]) -> Iterator[TreeFile | TreeProblem]:
    """One source (absolute); ``links_skipped[0]`` counts the symbolic links skipped (``follow`` off)."""
    try:
        st = os.stat(root)
    except OSError as exc:
        what = "a dangling symbolic link" if os.path.islink(root) else exc.strerror
        yield TreeProblem(root, _show(os.path.basename(root)), f"cannot read the source {_show(root)}: {what}")
        return
    if stat.S_ISREG(st.st_mode):
        rel = os.path.basename(root)
        if _not_utf8(rel):
            yield TreeProblem(root, _show(rel), f"the name of {_show(root)} is not valid UTF-8: it cannot be an S3 key")
        else:
            yield TreeFile(root, rel, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        return
    if not stat.S_ISDIR(st.st_mode):
        yield TreeProblem(root, _show(os.path.basename(root)), f"the source {_show(root)} is {_special(st.st_mode)}")
        return
    try:
        names, kinds = _listing(root)
    except OSError as exc:
        yield TreeProblem(root, ".", f"cannot read the directory {_show(root)}: {exc.strerror}")
        return
    stack = [_Frame(root if root.endswith("/") else root + "/", "", names, kinds, (st.st_dev, st.st_ino))]
    on_path = {(st.st_dev, st.st_ino): root}
    S_ISREG, S_ISDIR, lstat, ostat = stat.S_ISREG, stat.S_ISDIR, os.lstat, os.stat
    while stack:
        frame = stack[-1]
        if frame.index >= len(frame.names):
            stack.pop()
            on_path.pop(frame.ident, None)
            continue
        name = frame.names[frame.index]
        frame.index += 1
        rel = frame.rel + name
        path = frame.path + name
        kind = frame.kinds.get(name) if frame.kinds else None
        try:
            if kind is None:  # a regular file, by its directory entry: filtered before any stat
                if takes is not None and not takes(rel):
                    continue
                st = lstat(path)
            elif kind == _LINK:
                if not follow:
                    links_skipped[0] += 1
                    continue
                try:
                    st = ostat(path)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                        warnings("dangling symbolic links", f"{_show(path)} is a dangling symbolic link: skipped")
                        continue
                    if exc.errno == errno.ELOOP:
                        warnings("symbolic link loops", f"{_show(path)} is a loop of symbolic links: skipped")
                        continue
                    raise
            else:
                if kind == _DIR and prunes is not None and prunes(rel):
                    continue
                st = lstat(path)
        except OSError as exc:
            shown = _show(rel) + ("/" if kind == _DIR else "")
            yield TreeProblem(path, shown, f"cannot stat {_show(path)}: {exc.strerror}")
            continue
        mode = st.st_mode
        if S_ISREG(mode):
            if kind is not None and takes is not None and not takes(rel):
                continue
            if _not_utf8(rel):
                yield TreeProblem(path, _show(rel),
                                  f"the name of {_show(path)} is not valid UTF-8: it cannot be an S3 key")
                continue
            yield TreeFile(path, rel, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        elif S_ISDIR(mode):
            ident = (st.st_dev, st.st_ino)
            ancestor = on_path.get(ident)
            if ancestor is not None:
                warnings("symbolic link loops", f"{_show(path)} leads back to {_show(ancestor)} (a loop): skipped")
                continue
            if prunes is not None and prunes(rel):
                continue
            try:
                names, kinds = _listing(path)
            except OSError as exc:
                yield TreeProblem(path, _show(rel) + "/", f"cannot read the directory {_show(path)}: {exc.strerror}")
                continue
            if names:
                on_path[ident] = path
                stack.append(_Frame(path + "/", rel + "/", names, kinds, ident))
        elif stat.S_ISLNK(mode):  # became a link since the listing (or a file system without entry types)
            if not follow:
                links_skipped[0] += 1
        else:
            if takes is not None and not takes(rel):
                continue
            warnings("special files", f"{_show(path)} is {_special(mode)}: skipped")


def check_sources(sources: Sequence[str]) -> None:
    """Refuse (:class:`~mpupload.errors.UsageError`, exit 2) a source that is not a file or a directory, or the
    same source twice."""
    if not sources:
        raise E.UsageError("no source given: name a file or a directory to upload")
    seen: dict[tuple[int, int], str] = {}
    for source in sources:
        try:
            st = os.stat(source)
        except FileNotFoundError:
            if os.path.islink(source):
                raise E.UsageError(f"{_show(source)} is a symbolic link to nothing") from None
            raise E.UsageError(f"{_show(source)}: no such file or directory") from None
        except OSError as exc:
            raise E.UsageError(f"cannot read {_show(source)}: {exc.strerror}") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise E.UsageError(f"{_show(source)} is {_special(st.st_mode)}, not a file or a directory")
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            raise E.UsageError(f"{_show(seen[ident])} and {_show(source)} are the same source: name it once")
        seen[ident] = source
