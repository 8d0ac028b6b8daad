"""The source of an upload: one regular file and the fingerprint that tells whether it changed.

A tree of files (issue: datasets) will yield entries of this kind, each with its relative key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import errors as E

__all__ = ["Source"]


@dataclass(frozen=True)
class Source:
    """The file being uploaded and the fingerprint that tells whether it changed."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def from_path(cls, path: str) -> Source:
        st = os.stat(path)
        return cls(os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)

    def check_unchanged(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise E.SourceChanged(f"the source file {self.path} disappeared during the upload ({exc.strerror})") \
                from exc
        if (st.st_size, st.st_mtime_ns, st.st_ino) != (self.size, self.mtime_ns, self.inode):
            raise E.SourceChanged(
                f"the source file {self.path} changed during the upload (size or modification time differ): "
                "the upload was aborted; run the command again once the file is final"
            )
