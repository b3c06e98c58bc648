"""Page-aligned blocks the event loop fills, reused across requests, and the allocator
setting that keeps freed memory for the next socket read."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap

from ._constants import _AHEAD, _BLOCK


class _Buffers:
    """Page-aligned 4 MiB buffers (as ``O_DIRECT`` wants), reused from request to request.

    Reused buffers are already mapped, so a request does not fault in fresh
    pages; at most ``keep`` idle ones are kept.
    """

    def __init__(self, keep: int = 4 * (_AHEAD + 1)):
        self.idle: list[mmap.mmap] = []
        self.keep = keep

    def take(self) -> mmap.mmap:
        return self.idle.pop() if self.idle else mmap.mmap(-1, _BLOCK)

    def give(self, buffer: mmap.mmap) -> None:
        if len(self.idle) < self.keep:
            self.idle.append(buffer)


def keep_freed_memory_for_streaming() -> bool:
    """Have glibc keep freed memory for reuse instead of handing it back to the system at once.

    Streaming an upload allocates and frees a buffer per socket read in the HTTP
    stack; with glibc's defaults each one comes from fresh pages (mmap, or the heap
    top just trimmed), a page fault each (measured in ``benchmarks/README.md``).
    Freed memory kept this way stays bounded. Returns whether the C library took
    the settings (not glibc: nothing changes).
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 128 << 20))
