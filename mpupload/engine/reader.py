"""The body of one part: a file range, read in chunks, counted as the HTTP layer takes it.

``PartReader`` is what botocore sends. It

* reads ``length`` bytes from ``offset`` of an open file descriptor with ``os.pread`` (no shared file
  position, so one descriptor serves every part of a worker);
* adds each chunk to the worker's counter slot *when the HTTP layer reads it* — reading to compute a
  checksum is done separately (:func:`digest_range`) and is not progress;
* checks the cancel flag before every chunk and raises :class:`~mpupload.errors.Cancelled`: a 5 GiB
  part stops within one chunk, as the seed's context-aware reader does;
* takes back what it counted when botocore rewinds it for a retry (``seek(0)``) or when the worker gives
  up on the attempt (``rollback()``);
* raises :class:`~mpupload.errors.SourceChanged` when the file ends early (it shrank). A short read that is
  not the end of the file is legal (FUSE and network filesystems return them): the rest is read again.

:class:`ThrottledPartReader` is the same reader under a bandwidth cap (``--max-bandwidth``): it reads smaller
chunks and asks the run's :class:`~.throttle.Throttle` before each one. Without a cap the plain reader is used, so
an uncapped run pays nothing per chunk.

``read(n)`` returns up to ``CHUNK`` bytes even when asked for fewer: http.client asks for 8-16 KiB at a
time, and 64 times fewer Python-level round trips per MiB is most of the client's CPU budget. Every
caller in the send path (http.client/urllib3 ``send``) accepts a longer block.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..checksums import Hasher
from ..errors import Cancelled, SourceChanged
from ..units import KiB
from .counter import ByteCounter, CancelFlag
from .throttle import Meter

__all__ = ["PartReader", "ThrottledPartReader", "digest_range", "pread_exactly", "CHUNK"]

CHUNK = 1024 * KiB


class PartReader:
    def __init__(
        self,
        fd: int,
        offset: int,
        length: int,
        *,
        counter: ByteCounter | None = None,
        slot: int = 0,
        cancel: CancelFlag | None = None,
        chunk: int = CHUNK,
    ) -> None:
        self._fd = fd
        self._offset = offset
        self._length = length
        self._pos = 0
        self._counted = 0
        self._counter = counter
        self._slot = slot
        self._cancel = cancel
        self._chunk = chunk

    # -- the file-like surface botocore/urllib3 use ---------------------------------------------------------
    def read(self, amt: int | None = -1) -> bytes:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("upload cancelled")
        remaining = self._length - self._pos
        if remaining <= 0:
            return b""
        want = remaining if amt is None or amt < 0 else min(remaining, max(amt, self._chunk))
        data = pread_exactly(self._fd, want, self._offset + self._pos)
        self._pos += len(data)
        self._count(len(data))
        return data

    def seek(self, where: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            target = where
        elif whence == os.SEEK_CUR:
            target = self._pos + where
        else:
            target = self._length + where
        target = max(0, min(self._length, target))
        self._pos = target
        # botocore rewinds to 0 before retrying: whatever was counted beyond the new position is taken back
        if self._counted > target:
            self._count(target - self._counted)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._length

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:  # the descriptor belongs to the worker
        pass

    # -- accounting -----------------------------------------------------------------------------------------
    @property
    def counted(self) -> int:
        return self._counted

    def rollback(self) -> None:
        """Take back every byte this reader counted (the attempt failed)."""
        if self._counted:
            self._count(-self._counted)

    def _count(self, n: int) -> None:
        self._counted += n
        if self._counter is not None:
            self._counter.add(self._slot, n)


class ThrottledPartReader(PartReader):
    """A :class:`PartReader` under the run's bandwidth cap: every chunk waits for its turn (a cancel stops the
    wait within :data:`~.throttle.SLICE_S`). ``read(n)`` returns the throttle's chunk, whatever ``n`` (longer or
    shorter blocks: every caller in the send path loops until the body is empty, see above); ``read()`` still
    returns the whole rest, chunk by chunk."""

    def __init__(self, fd: int, offset: int, length: int, *, throttle: Meter, counter: ByteCounter | None = None,
                 slot: int = 0, cancel: CancelFlag | None = None) -> None:
        super().__init__(fd, offset, length, counter=counter, slot=slot, cancel=cancel,
                         chunk=min(CHUNK, throttle.chunk))
        self._throttle = throttle

    def read(self, amt: int | None = -1) -> bytes:
        if amt is None or amt < 0:
            pieces = []
            while piece := self._read_chunk(self._chunk):
                pieces.append(piece)
            return b"".join(pieces)
        return self._read_chunk(self._chunk if amt else 0)

    def _read_chunk(self, want: int) -> bytes:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("upload cancelled")
        want = min(want, self._length - self._pos)
        if want <= 0:
            return b""
        self._throttle.acquire(want, self._cancel)
        data = pread_exactly(self._fd, want, self._offset + self._pos)
        self._pos += len(data)
        self._count(len(data))
        return data


def pread_exactly(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset``: short reads are continued; only the end of the file (a read of 0 bytes
    before ``length``) is :class:`~mpupload.errors.SourceChanged`."""
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    pieces = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            raise SourceChanged("the source file became shorter during the upload: it was modified; start again")
        pieces.append(more)
        got += len(more)
    return b"".join(pieces)


def digest_range(
    fd: int,
    offset: int,
    length: int,
    hashers: list[Hasher],
    *,
    cancel: CancelFlag | None = None,
    chunk: int = CHUNK,
    on_chunk: Callable[[int], None] | None = None,
) -> None:
    """Feed ``length`` bytes at ``offset`` to every hasher (not progress: nothing is counted)."""
    pos = 0
    while pos < length:
        if cancel is not None and cancel.is_set():
            raise Cancelled("upload cancelled")
        want = min(chunk, length - pos)
        data = pread_exactly(fd, want, offset + pos)
        for hasher in hashers:
            hasher.update(data)
        pos += want
        if on_chunk is not None:
            on_chunk(want)
