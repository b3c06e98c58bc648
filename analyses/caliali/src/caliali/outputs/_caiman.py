"""The result in CaImAn's HDF5 layout (``caiman.hdf5``), for tools built on CaImAn's ``load_CNMF``.

CaImAn saves a ``CNMF`` object with ``save_dict_to_hdf5``: one group per
attribute, a sparse matrix as a group of ``data``, ``indices``, ``indptr``
and ``shape`` (CSC), which ``load_dict_from_hdf5`` turns back into a
``scipy.sparse.csc_matrix`` for the keys ``A``, ``W`` and ``Ab``. Written
here:

- ``estimates/A``: footprints (h*w, K), pixels in **Fortran (column-major)
  order** as CaImAn's ``A`` (row ``x * height + y``; ``A[:, k].reshape(dims,
  order="F")`` is neuron k's image), the same values as ``arrays/A.npz``;
- ``estimates/C``, ``S`` (K, T) and ``YrA`` = ``C_raw - C`` (the residual
  CaImAn adds to C for the raw trace), noise units of each session;
- ``estimates/F_dff`` (K, T): caliali's ΔF/F (`caliali.outputs._dff`), when known;
- ``estimates/b`` (h*w, n_sessions) and ``f`` (n_sessions, T): caliali's
  background is a ring model (a constant image per session plus a
  fluctuation predicted from the ring around each pixel), which no low-rank
  ``b f`` holds. Written is its constant part: column s of ``b`` is session
  s's constant image ``b0`` (Fortran order, movie units) and row s of ``f`` is
  1 on that session's frames, 0 elsewhere, so ``A C + b f`` is the movie
  less the ring fluctuation. Without ``b0`` (an extraction that does not
  record it) both are absent;
- ``estimates/dims`` (height, width), ``params/data/fr`` and ``params/data/dims``.

The bytes depend only on the result: no HDF5 object times, a fixed file
format (`caliali.outputs._nwb.LIBVER`).

References
----------
Giovannucci, A. et al. CaImAn an open source tool for scalable calcium imaging
data analysis. eLife 8, e38173 (2019).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import scipy.sparse

from ._blocks import BLOCK_BYTES, release, row_blocks
from ._nwb import LIBVER

__all__ = ["fortran_rows", "write_caiman"]


def fortran_rows(a, dims: tuple[int, int]) -> scipy.sparse.csc_matrix:
    """The (h*w, K) footprints ``a`` with pixels in C order re-indexed to Fortran order (CSC, sorted indices)."""
    h, w = (int(n) for n in dims)
    csc = scipy.sparse.csc_matrix(a)
    y, x = np.divmod(csc.indices.astype(np.int64), w)
    out = scipy.sparse.csc_matrix((csc.data.astype(np.float32), x * h + y, csc.indptr), shape=csc.shape)
    out.sort_indices()
    return out


def _rows(group, name: str, traces, dtype=np.float32, block_bytes: int = BLOCK_BYTES) -> None:
    """Dataset ``name`` (K, T) filled a block of rows (about ``block_bytes``) at a time."""
    k, t = (int(n) for n in np.shape(traces))
    data = group.create_dataset(name, shape=(k, t), dtype=dtype)
    start = 0
    for block in row_blocks(traces, dtype=dtype, block_bytes=block_bytes):
        data[start : start + len(block)] = block
        start += len(block)


class _Residual:
    """``C_raw - C`` as a (K, T) array-like that `row_blocks` reads a block of rows at a time."""

    def __init__(self, c_raw, c):
        self.c_raw, self.c = c_raw, c
        self.shape = tuple(int(n) for n in np.shape(c))

    def __getitem__(self, rows):
        out = np.array(self.c_raw[rows], np.float32)
        np.subtract(out, self.c[rows], out=out, casting="unsafe")
        release(self.c_raw)  # pages of memory-mapped traces go as they are read (see _blocks)
        release(self.c)
        return out


def write_caiman(extraction, path: Path | str, *, fs: float, dff=None) -> Path:
    """Write ``extraction`` (and its ΔF/F ``dff``, (K, T), when given) in CaImAn's HDF5 layout at ``path``."""
    import h5py

    path = Path(path)
    h, w = (int(n) for n in extraction.dims)
    a = fortran_rows(extraction.A, (h, w))
    bounds = np.asarray(extraction.session_bounds, np.int64)
    n_frames = int(bounds[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # h5py internals
        with h5py.File(path, "w", track_times=False, libver=LIBVER) as file:
            estimates = file.create_group("estimates")
            sparse = estimates.create_group("A")
            sparse["data"], sparse["indices"], sparse["indptr"] = a.data, a.indices.astype(np.int32), a.indptr
            sparse["shape"] = np.array(a.shape, np.int64)
            estimates["dims"] = np.array([h, w], np.int64)
            for name, traces in (("C", extraction.C), ("S", extraction.S)):
                _rows(estimates, name, traces)
            # C_raw - C is read as two blocks and written from a third: blocks half the size
            _rows(estimates, "YrA", _Residual(extraction.C_raw, extraction.C), block_bytes=BLOCK_BYTES // 2)
            if dff is not None:
                _rows(estimates, "F_dff", dff)
            b0 = getattr(extraction, "b0", None)
            if b0 is not None:
                images = np.asarray(b0, np.float32)
                estimates["b"] = np.stack([im.ravel(order="F") for im in images], axis=1)
                f = np.zeros((len(images), n_frames), np.float32)
                for s, (s0, s1) in enumerate(zip(bounds[:-1], bounds[1:])):
                    f[s, s0:s1] = 1.0
                estimates["f"] = f
            data = file.create_group("params").create_group("data")
            data["fr"] = float(fs)
            data["dims"] = np.array([h, w], np.int64)
    return path
