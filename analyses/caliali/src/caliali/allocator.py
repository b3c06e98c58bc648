"""The C allocator (glibc), asked to hand freed memory back to the system.

Extraction frees long traces (neurons x frames) between batches of frames;
glibc keeps what is freed for reuse unless asked. :func:`release_freed_memory`
is what the library calls between passes. :func:`large_arrays_returned_on_free`
changes the allocator of the whole process, so only an entry point that owns
its process calls it (``caliali run``; a benchmark measuring extraction alone),
never library code that others import.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["LARGE_ARRAY_BYTES", "large_arrays_returned_on_free", "release_freed_memory"]

_LIBC: list = []
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
LARGE_ARRAY_BYTES = 4 * 2**20


def _libc():
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"))
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def release_freed_memory() -> None:
    """Return the memory the C allocator has freed but kept to the system (glibc ``malloc_trim``).

    A no-op where the C library has no ``malloc_trim``.
    """
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def large_arrays_returned_on_free(threshold: int = LARGE_ARRAY_BYTES) -> bool:
    """Have glibc give every allocation of ``threshold`` bytes or more its own memory map (``mallopt``).

    glibc serves large blocks with their own map, handed back to the system
    when freed, but raises that threshold (up to 32 MiB) to the size of every
    such block freed. Once a few long traces (K x T, tens of MB) have been
    freed, batch-sized temporaries (patch copies, downsampled frames, the
    reader's chunk buffers, in several threads' heaps) all come from heaps
    that keep what is freed: peak RSS then grows with the recording's length
    (measured in ``benchmarks/README.md``, "cnmfe.py memory"). A fixed
    threshold keeps every block of 4 MiB or more returned on free, at the cost
    of a page fault per page of each new large array. Process-wide; returns
    False where it cannot be set (not glibc).
    """
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))
