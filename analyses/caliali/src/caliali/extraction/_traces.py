"""Full-length traces kept on disk while batches of frames are in memory.

Traces grow with the recording: K neurons x T frames (and before false seeds
are dropped, K is the number of seeds). While a temporal batch of frames is in
memory, extraction only needs the K x batch block of those traces, so the
full-length ones live in an unnamed temporary file and are read and written a
block (or a neuron) at a time. The file is memory-mapped for each access only
and unmapped right after, so none of it stays resident: peak memory is set by
the batch, not by the number of frames. The file disappears when the
`TraceFile` is closed or garbage-collected (it has no name on disk). Its disk
space is reserved when it is made: a full disk is a clear error then, never a
crash (SIGBUS) in the middle of writing through the map.

Between passes the whole-trace steps stream over these files too:
deconvolution, false-positive removal and post-processing read and write one
neuron's full-length trace at a time, merging correlates traces a block of
frames at a time, so no step holds neurons x frames in memory. The result's
traces are read-only maps of such files (`TraceFile.view`): they take no
memory of their own until read. `caliali.allocator.release_freed_memory` hands what the
whole-trace steps freed back to the system before the next batch of frames is
read, so the allocator's freed-but-kept pages do not add to the batch's
working set.
"""

from __future__ import annotations

import errno
import os
import tempfile

import numpy as np

from ._errors import ExtractionError

__all__ = ["TraceFile"]


class TraceFile:
    """A float32 array of ``shape`` (e.g. (K, T)) in an anonymous temporary file; starts as zeros.

    Index it like an array: ``traces[:, start:stop]`` or ``traces[k]`` return
    in-memory copies, ``traces[:, start:stop] = block`` writes through.

    Parameters
    ----------
    shape : tuple of int
    directory : str or path, optional
        Where the temporary file lives (default: the system temporary folder).
    """

    def __init__(self, shape, *, directory: str | os.PathLike | None = None):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(np.float32)
        self.directory = directory
        self._file = tempfile.TemporaryFile(prefix="caliali-traces-", dir=directory)
        nbytes = max(1, int(np.prod(self.shape)) * self.dtype.itemsize)
        try:  # reserve the blocks now (they read as zeros): writing through the map cannot run out of disk
            os.posix_fallocate(self._file.fileno(), 0, nbytes)
        except OSError as exc:
            self._file.close()
            where = directory or tempfile.gettempdir()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ExtractionError(
                    f"no room for {nbytes / 1e6:.0f} MB of temporary traces in {os.fspath(where)!r}; "
                    "free disk space there or give work_dir a folder with room"
                ) from exc
            raise ExtractionError(f"cannot make temporary trace files in {os.fspath(where)!r}: {exc}") from exc

    @classmethod
    def from_array(cls, values: np.ndarray, *, directory: str | os.PathLike | None = None) -> TraceFile:
        """A new file holding a copy of ``values``."""
        out = cls(np.shape(values), directory=directory)
        if out.size:
            out[...] = values
        return out

    def take(self, rows) -> TraceFile:
        """A new file (in the same folder) holding ``rows`` of this one, in that order, copied one row at a time."""
        rows = [int(k) for k in rows]
        out = TraceFile((len(rows), *self.shape[1:]), directory=self.directory)
        for i, k in enumerate(rows):
            out[i] = self[k]
        return out

    def view(self) -> np.ndarray:
        """A read-only memory map of the whole array: pages come from the file as they are read.

        The map keeps the (unnamed) file alive after this object is closed or gone.
        """
        if self.size == 0:
            return np.zeros(self.shape, self.dtype)
        return self._map("r")

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def _map(self, mode: str) -> np.memmap:
        return np.memmap(self._file, dtype=self.dtype, mode=mode, shape=self.shape)

    def __getitem__(self, key) -> np.ndarray:
        if self.size == 0:
            return np.zeros(self.shape, self.dtype)[key]
        mapped = self._map("r")
        try:
            return np.array(mapped[key], dtype=self.dtype, copy=True)
        finally:
            del mapped  # unmap: the pages read leave this process's resident memory

    def __setitem__(self, key, values) -> None:
        if self.size == 0:
            return
        mapped = self._map("r+")
        try:
            mapped[key] = values
        finally:
            del mapped  # written pages go to the page cache (and the file), not our resident memory

    def read(self) -> np.ndarray:
        """The whole array in memory."""
        return self[...]

    def close(self) -> None:
        """Delete the file (also done when the object is garbage-collected)."""
        self._file.close()

    def __del__(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()
