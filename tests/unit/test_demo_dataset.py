"""``mpupload demo --dataset``: the tree it makes (the upload itself needs the directory engine)."""

from __future__ import annotations

import os
from pathlib import Path

from mpupload.cli.demo import DATASET_PREFIX, make_dataset
from mpupload.units import KiB, MiB


def _tree(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_make_dataset_makes_a_nested_unicode_tree(tmp_path: Path) -> None:
    count, total = make_dataset(str(tmp_path / "ds"), small_files=300, large_files=2, large_size=MiB)
    tree = _tree(tmp_path / "ds")
    assert count == len(tree) == 302 and total == sum(tree.values())
    assert sorted(k for k in tree if k.startswith("shards/")) == ["shards/shard-00.bin", "shards/shard-01.bin"]
    assert tree["shards/shard-00.bin"] == MiB
    small = [size for key, size in tree.items() if not key.startswith("shards/")]
    assert 0 in small and max(small) <= 256 * KiB  # an empty file among them
    assert max(key.count("/") for key in tree) == 3  # train/日本語/batch 00/échantillon-0006.bin
    names = "".join(tree)
    for text in ("日本語", "café crème", "ελληνικά", "🚀", "échantillon", " "):
        assert text in names
    assert all(k.isprintable() for k in tree)
    assert DATASET_PREFIX.endswith("/")  # a directory needs a PREFIX that ends in /


def test_make_dataset_is_reproducible_but_not_uniform(tmp_path: Path) -> None:
    make_dataset(str(tmp_path / "a"), small_files=40, large_files=0)
    make_dataset(str(tmp_path / "b"), small_files=40, large_files=0)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a == b and len(set(a.values())) > 30
    first = next(iter(sorted(a)))
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()
    assert not os.path.exists(tmp_path / "a" / "shards")
