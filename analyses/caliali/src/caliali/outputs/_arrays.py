"""Plain-array results in ``<out>/arrays/`` (what ``caliali score`` reads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse

from ._common import session_names

__all__ = ["write_arrays"]


def write_arrays(extraction, out_dir: Path | str, *, session_ids=None, fs: float | None = None,
                 spatial_ds: int = 1, extra_meta: dict | None = None) -> Path:
    """Write A.npz, C_raw.npy, C.npy, S.npy, Cn.npy, PNR.npy, session_bounds.npy and meta.json.

    ``A.npz`` is a scipy.sparse (h*w, K) matrix with C-order pixels; traces
    are (K, T) float32 in noise units of each session; ``session_bounds`` holds
    the first frame of each session followed by the total.
    """
    folder = Path(out_dir) / "arrays"
    folder.mkdir(parents=True, exist_ok=True)
    scipy.sparse.save_npz(folder / "A.npz", scipy.sparse.csc_matrix(extraction.A), compressed=True)
    for name, value in (("C_raw", extraction.C_raw), ("C", extraction.C), ("S", extraction.S),
                        ("Cn", extraction.cn), ("PNR", extraction.pnr)):
        np.save(folder / f"{name}.npy", np.asarray(value, np.float32))
    np.save(folder / "session_bounds.npy", np.asarray(extraction.session_bounds, np.int64))
    ids = session_names(extraction, session_ids)
    meta = {
        "dims": [int(extraction.dims[0]), int(extraction.dims[1])],
        "spatial_ds": int(spatial_ds),
        "n_neurons": extraction.n_neurons,
        "n_frames": int(extraction.session_bounds[-1]),
        "session_ids": ids,
        "session_bounds": [int(b) for b in extraction.session_bounds],
        "fs": fs,
        "trace_units": "noise standard deviations of each session (C_raw, C, S)",
        "order": "neurons sorted by SNR, strongest first",
        "snr": [float(v) for v in extraction.snr],
        "centers": [[float(y), float(x)] for y, x in extraction.centers],
        "noise": np.asarray(extraction.noise, float).tolist(),
        "params": extraction.params,
        "history": extraction.history,
        **(extra_meta or {}),
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=float))
    return folder
