"""Atomic file writes: a temporary file in the same directory, fsync, rename, fsync of the directory."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path, payload: bytes, mode: int = 0o600, *, durable: bool = True) -> None:
    """Replace ``path`` with ``payload``: readers see the old file or the new one, never a half-written one.

    The temporary file is created with ``mode`` (0600 by default) before a byte is written. ``durable`` fsyncs
    the file before the rename and the directory after it, so the new file survives a power cut too; without
    it the replacement is still atomic for every reader and survives the process being killed (the kernel has
    the bytes), which is all a file rewritten every second needs between its durable writes.
    """
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode != 0o600:
                os.fchmod(fh.fileno(), mode)
            fh.write(payload)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if not durable:
        return
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
