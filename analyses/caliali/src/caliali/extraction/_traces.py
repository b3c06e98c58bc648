"""Full-length traces kept on disk while batches of frames are in memory.

Traces grow with the recording: K neurons x T frames (and before false seeds
are dropped, K is the number of seeds). While a temporal batch of frames is in
memory, extraction only needs the K x batch block of those traces, so the
full-length ones live in an unnamed temporary file and are read and written a
block (or a neuron) at a time. The file is memory-mapped for each access only
and unmapped right after, so none of it stays resident: peak memory is set by
the batch, not by the number of frames. The file disappears when the
`TraceFile` is closed or garbage-collected (it has no name on disk).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

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
        self._file = tempfile.TemporaryFile(prefix="caliali-traces-", dir=directory)
        # A sparse file: unwritten parts read as zeros and take no disk space.
        self._file.truncate(max(1, int(np.prod(self.shape)) * self.dtype.itemsize))

    @classmethod
    def from_array(cls, values: np.ndarray, *, directory: str | os.PathLike | None = None) -> TraceFile:
        """A new file holding a copy of ``values``."""
        out = cls(np.shape(values), directory=directory)
        if out.size:
            out[...] = values
        return out

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
