"""Writing an upload's blocks to disk in order: O_DIRECT where the file system allows it,
else through the page cache with early writeback."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
from collections.abc import Callable
from pathlib import Path

from ._constants import _ALIGN, _DIRECT_IO, _WRITEBACK


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None  # not Linux: the kernel flushes on its own schedule, the final fsync does the rest
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    write_only = 2  # SYNC_FILE_RANGE_WRITE: start writeback of the range, do not wait for it

    def start(fd: int, offset: int, nbytes: int) -> None:
        fn(fd, offset, nbytes, write_only)  # advisory: an error only means the fsync does it all

    return start


_sync_file_range = _load_sync_file_range()


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``nbytes`` at ``offset`` to the disk now, without waiting.

    Without it, the dirty pages of a large upload sit in memory until the final
    fsync writes them all at once, and writers are throttled while the machine
    holds many dirty pages (measured in ``benchmarks/README.md``).
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes)


class _BlockWriter:
    """Writes the blocks of one request at the end of a partial file, in order.

    The event loop fills page-aligned 4 MiB buffers (:class:`_Buffers`); a block
    at file offset ``o`` starts at ``o % _ALIGN`` in its buffer, so memory and
    file agree on disk-block boundaries. Where the file system allows it, whole
    disk blocks go to the disk directly (``O_DIRECT``): no copy into the page
    cache and nothing left for the final fsync. A partial disk block at either
    end goes through the page cache. Elsewhere all writes go through the page
    cache, with writeback started as they go (:func:`_start_writeback`).
    """

    def __init__(self, path: Path, offset: int):
        self.fd = os.open(path, os.O_WRONLY)
        self.written = offset  # bytes on file
        self.flushed = offset
        self.closed = False
        self.direct: int | None = None
        if _DIRECT_IO:
            try:
                self.direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
            except OSError:
                self.direct = None  # this file system does not do O_DIRECT (tmpfs, ...)

    def write(self, buffer: mmap.mmap, start: int, end: int) -> None:
        """Write ``buffer[start:end]`` at the end of the file (``start`` is the file offset modulo _ALIGN)."""
        view = memoryview(buffer)[start:end]
        try:
            if self.direct is not None:
                head = min(len(view), -self.written % _ALIGN)
                whole = (len(view) - head) // _ALIGN * _ALIGN
                self._pwrite(self.fd, view[:head])
                if whole and not self._write_direct(view[head : head + whole]):
                    self._pwrite(self.fd, view[head : head + whole])
                self._pwrite(self.fd, view[head + whole :])
            else:
                self._pwrite(self.fd, view)
                if self.written - self.flushed >= _WRITEBACK:
                    _start_writeback(self.fd, self.flushed, self.written - self.flushed)
                    self.flushed = self.written
        finally:
            view.release()

    def _pwrite(self, fd: int, view: memoryview) -> None:
        while view:
            n = os.pwrite(fd, view, self.written)
            self.written += n
            view = view[n:]

    def _write_direct(self, view: memoryview) -> bool:
        """Write ``view`` with O_DIRECT; False (nothing written) if the disk wants another alignment."""
        assert self.direct is not None  # called only while the O_DIRECT descriptor is open
        try:
            self._pwrite(self.direct, view)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            os.close(self.direct)
            self.direct = None  # go on through the page cache
            return False
        return True

    def close(self, *, truncate: int | None = None) -> None:
        try:
            if truncate is not None:
                os.ftruncate(self.fd, truncate)
                self.written = truncate
        finally:
            os.close(self.fd)
            if self.direct is not None:
                os.close(self.direct)
            self.closed = True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
