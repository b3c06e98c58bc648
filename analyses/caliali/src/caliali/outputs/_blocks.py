"""Reading neurons x frames traces a block at a time, without keeping what was read resident.

Extraction's traces are read-only memory maps of files (`numpy.memmap`). A
page of a map that has been read stays in the process's resident memory
(RSS) until the system needs it back, even once no array refers to it, so
reading the three trace arrays of a long recording, even in blocks, ends
with all of them resident (3 x K x T x 4 bytes). And reading a few frames
of a row maps more than those frames (the kernel maps whole page-cache
folios and the pages around a fault), several times the block's own size.

So traces are copied into a reused buffer one row (one neuron's frames of
the block) at a time, and after each row `release` tells the kernel
(``madvise(MADV_DONTNEED)``) that this process no longer needs the map's
pages: they leave its RSS but stay in the file and the page cache, so
reading them again gives the same values, and writing the arrays and the
NWB file raises peak RSS by a fraction of what reading the maps whole does
(figures in ``benchmarks/README.md``). In-memory arrays are copied a block
at a time as they are.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np

__all__ = ["BLOCK_BYTES", "release", "rows_per_block", "row_blocks", "frame_block"]

BLOCK_BYTES = 4 * 2**20  # bytes of traces held in memory at a time


def _shared_map(array) -> mmap.mmap | None:
    """The memory map behind ``array`` when dropping its pages loses nothing, else None.

    A copy-on-write map (``numpy.memmap`` mode ``"c"``) may hold changes that
    exist only in its pages: those are never dropped.
    """
    if getattr(mmap, "MADV_DONTNEED", None) is None:
        return None
    obj = array
    while obj is not None:
        if isinstance(obj, np.memmap) and obj.mode == "c":
            return None
        if isinstance(obj, mmap.mmap):
            return None if obj.closed or len(obj) == 0 else obj
        obj = getattr(obj, "base", None)
    return None


def release(array) -> None:
    """Drop the pages of the memory map behind ``array`` from this process's resident memory.

    Values are unchanged: they come back from the file when read again. A
    no-op for in-memory arrays and where ``madvise`` is not available. Cheap
    on a map with few pages resident (the kernel skips empty page tables).
    """
    mapped = _shared_map(array)
    if mapped is None:
        return
    try:
        mapped.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):
        pass  # the pages simply stay until the system reclaims them


def rows_per_block(shape, itemsize: int = 4, block_bytes: int = BLOCK_BYTES) -> int:
    """How many rows of a (K, T) array make about ``block_bytes`` (at least one)."""
    row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    return max(1, block_bytes // row)


def row_blocks(traces, *, dtype=np.float32, block_bytes: int = BLOCK_BYTES) -> Iterator[np.ndarray]:
    """Blocks of whole rows of ``traces`` (K, T), first to last, as C-contiguous ``dtype`` arrays.

    Every block is a view of the same buffer, refilled for the next one: use
    (or copy) a block before asking for the next. Pages of a memory-mapped
    ``traces`` are released as they are copied.
    """
    k = np.shape(traces)[0]
    step = max(1, min(k, rows_per_block(np.shape(traces), np.dtype(dtype).itemsize, block_bytes)))
    buffer = np.empty((step, *np.shape(traces)[1:]), dtype)
    mapped = _shared_map(traces) is not None
    for start in range(0, k, step):
        block = buffer[: min(step, k - start)]
        if mapped:
            for i in range(len(block)):
                row = traces[start + i]
                np.copyto(block[i], row, casting="unsafe")
                release(traces)
        else:
            np.copyto(block, traces[start : start + step], casting="unsafe")
        yield block


def frame_block(
    traces, frames: slice, neurons: slice = slice(None), *, out: np.ndarray | None = None, dtype=np.float32
) -> np.ndarray:
    """``traces[neurons, frames]`` transposed to (frames, neurons), as a C-contiguous ``dtype`` copy.

    ``out``, when given, is a buffer of at least that many frames and
    neurons, in ``dtype``: it is refilled and a view of it returned. Pages of
    a memory-mapped ``traces`` are released as they are copied.
    """
    rows = range(*neurons.indices(np.shape(traces)[0]))
    n_frames = len(range(*frames.indices(np.shape(traces)[1])))
    block = np.empty((n_frames, len(rows)), dtype) if out is None else out[:n_frames, : len(rows)]
    if _shared_map(traces) is None:
        np.copyto(block, np.asarray(traces[neurons, frames]).T, casting="unsafe")
        return block
    for i, k in enumerate(rows):
        segment = traces[k, frames]
        np.copyto(block[:, i], segment, casting="unsafe")
        release(traces)
    return block
