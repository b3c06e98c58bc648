"""Plain-array results in ``<out>/arrays/`` (what ``caliali score`` reads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse

from ._blocks import BLOCK_BYTES, row_blocks
from ._common import convergence_of, session_names
from ._dff import write_dff

__all__ = ["write_arrays", "write_images", "save_rows"]

IMAGE_KINDS = ("Cn", "PNR", "mean", "max")


def write_images(extraction, folder: Path, session_ids: list[str]) -> list[dict]:
    """Write the background images of a review under ``folder``; returns ``meta.json`` 's ``images``.

    ``Cn.npy`` and ``PNR.npy`` (the whole recording's, where they always were) are listed as they
    are; with the extraction's per-session images (`caliali.extraction.Extraction.images`) the
    whole recording's mean and maximum frame go to ``images/mean.npy`` and ``images/max.npy`` and,
    with more than one session, each session's four images to ``images/session<i>_<kind>.npy``
    (``session`` names it by id). Every image is float32 on the footprints' grid.
    """
    listed = [{"kind": kind, "session": None, "file": f"{kind}.npy"} for kind in ("Cn", "PNR")]
    images = getattr(extraction, "images", None)
    if images is None:
        return listed
    (folder / "images").mkdir(exist_ok=True)
    whole = images.whole()
    for kind in ("mean", "max"):
        np.save(folder / "images" / f"{kind}.npy", np.asarray(whole[kind], np.float32))
        listed.append({"kind": kind, "session": None, "file": f"images/{kind}.npy"})
    if len(session_ids) > 1:
        for i, sid in enumerate(session_ids):
            for kind, image in images.session(i).items():
                name = f"images/session{i}_{kind}.npy"
                np.save(folder / name, np.asarray(image, np.float32))
                listed.append({"kind": kind, "session": sid, "file": name})
    return listed


def save_rows(path: Path | str, traces, *, dtype=np.float32, block_bytes: int = BLOCK_BYTES) -> Path:
    """Save a (K, T) array as ``.npy`` a block of rows at a time; the file equals ``np.save(path, traces)``.

    Neither ``traces`` nor the file is ever whole in memory: the header is
    the one `numpy.save` writes for a C-ordered array of that shape and
    ``dtype``, followed by the rows in order, about ``block_bytes`` at a time.
    Pages read from a memory-mapped ``traces`` are released as they are
    copied (see `caliali.outputs._blocks`).
    """
    path = Path(path)
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(int(n) for n in np.shape(traces)),
    }
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, header)
        for block in row_blocks(traces, dtype=dtype, block_bytes=block_bytes):
            block.tofile(file)
    return path


def write_arrays(
    extraction,
    out_dir: Path | str,
    *,
    session_ids=None,
    fs: float | None = None,
    spatial_ds: int = 1,
    extra_meta: dict | None = None,
    dff_window: float = 30.0,
    dark_level: float = 0.0,
) -> Path:
    """Write the neurons layout: A.npz, C_raw, C, S, dff, Cn, PNR, session_bounds (.npy), images/, b0.npy, meta.json.

    ``A.npz`` is a scipy.sparse (h*w, K) matrix with C-order pixels (row
    ``y * width + x``, as ``meta.json`` 's ``pixel_order`` says) of the run's
    grid (``dims``: a run's ``crop`` of the original frame, downsampled by
    ``spatial_ds``; ``extra_meta`` records the crop and the original frame's
    shape to map footprints back); traces are (K, T) float32 in noise units of
    each session; ``dff.npy`` (written when the extraction knows each neuron's
    resting level ``f0`` and ``fs`` is given) is ΔF/F (`caliali.outputs._dff`)
    with a running baseline of ``dff_window`` seconds and ``dark_level`` taken
    out of the resting level; ``session_bounds`` holds the first frame of each
    session followed by the total; ``images/`` and ``meta.json`` 's ``images``
    the background images of a review (`write_images`); ``b0.npy`` each
    session's constant background, when the extraction knows it.
    """
    folder = Path(out_dir) / "arrays"
    folder.mkdir(parents=True, exist_ok=True)
    scipy.sparse.save_npz(folder / "A.npz", scipy.sparse.csc_matrix(extraction.A), compressed=True)
    for name, value in (("C_raw", extraction.C_raw), ("C", extraction.C), ("S", extraction.S)):
        save_rows(folder / f"{name}.npy", value)
    for name, value in (("Cn", extraction.cn), ("PNR", extraction.pnr)):
        np.save(folder / f"{name}.npy", np.asarray(value, np.float32))
    np.save(folder / "session_bounds.npy", np.asarray(extraction.session_bounds, np.int64))
    ids = session_names(extraction, session_ids)
    images = write_images(extraction, folder, ids)
    background: dict = {}
    if getattr(extraction, "b0", None) is not None:
        np.save(folder / "b0.npy", np.asarray(extraction.b0, np.float32))
        background = {
            "b0": "b0.npy: each session's constant background (n_sessions, h, w), movie units: what a merge of "
            "neurons needs for the merged neuron's resting level (caliali curate)"
        }
    dff: dict = {"dff": None}
    if getattr(extraction, "f0", None) is not None and fs:
        _, undefined = write_dff(extraction, folder / "dff.npy", fs=fs, window_s=dff_window, dark_level=dark_level)
        dff = {
            "dff": "dF/F per session: (F - F_b) / (f0 + F_b), F the raw trace in movie units, F_b its running "
            f"percentile (at the trace's mode) over {dff_window:g} s, f0 the background under the footprint "
            "plus the baseline removed from the trace, less the dark level under it",
            "dark_level": float(dark_level),
            "dff_window_s": float(dff_window),
            "dff_undefined": undefined,
            "f0": np.asarray(extraction.f0, float).tolist(),
        }
    meta = {
        "dims": [int(extraction.dims[0]), int(extraction.dims[1])],
        "dims_order": "(height, width): rows then columns of the extraction's grid",
        "pixel_order": "C (row-major): row p of A is the pixel (y, x) = divmod(p, width); "
        "A[:, k].reshape(dims) is neuron k's footprint image",
        "spatial_ds": int(spatial_ds),
        "grid": f"each pixel of dims covers spatial_ds x spatial_ds pixels of the recording, pixel (y, x) "
        f"the block starting at (y * {int(spatial_ds)}, x * {int(spatial_ds)})",
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
        "convergence": convergence_of(extraction) or None,
        "images": images,
        **background,
        **dff,
        **(extra_meta or {}),
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=float))
    return folder
