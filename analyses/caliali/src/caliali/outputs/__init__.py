"""Writers for extraction results: NWB, plain arrays and QC figures.

``write_outputs(extraction, out_dir, *, fs, session_ids)`` writes

- ``<out>/arrays/``: A.npz, C_raw.npy, C.npy, S.npy, dff.npy (ΔF/F, `_dff`),
  Cn.npy, PNR.npy, session_bounds.npy, images/ (each session's Cn, PNR, mean
  and max), b0.npy, meta.json (read by ``caliali score`` and a review; it
  states the pixel order of A and lists the images): the "neurons" layout;
- ``<out>/neurons.nwb``: PlaneSegmentation (masks on the recording's pixels),
  RoiResponseSeries C / C_raw / S, DfOverF, one epoch per session, subject and
  session metadata from the config (what DANDI requires);
- ``<out>/caiman.hdf5``: the result in CaImAn's layout (`_caiman`);
- ``<out>/qc/contours.png``, ``<out>/qc/traces.png`` and ``<out>/qc/convergence.png``.

Traces (K, T) are read a block at a time (``_blocks``): the .npy files and the
NWB datasets are written without a whole copy of them in memory, and pages of
memory-mapped traces (what `caliali.extraction.extract` returns) are released
as they are read, so writing takes about the same memory for any recording
length.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np

from caliali.config import CalialiConfig

from ._arrays import write_arrays
from ._caiman import write_caiman
from ._common import session_names
from ._nwb import EPOCH, write_nwb
from ._qc import plot_contours, plot_convergence, plot_traces

__all__ = [
    "write_outputs",
    "write_arrays",
    "write_caiman",
    "write_nwb",
    "plot_contours",
    "plot_convergence",
    "plot_traces",
]


def write_outputs(
    extraction,
    out_dir: Path | str,
    *,
    fs: float = 10.0,
    session_ids=None,
    spatial_ds: int = 1,
    nwb: bool = True,
    qc: bool = True,
    extra_meta: dict | None = None,
    session_start_time: datetime = EPOCH,
    identifier: str | None = None,
    field_of_view: str = "",
    caiman: bool = True,
    config: CalialiConfig | None = None,
) -> dict[str, Path]:
    """Write every output of an extraction under ``out_dir``; returns the paths written by kind.

    ``config`` (a `caliali.config.CalialiConfig`, its defaults when None) gives the NWB
    metadata and the ΔF/F window. The same arguments give the same bytes in every file,
    whenever written (see `write_nwb`).
    """
    cfg = config if config is not None else CalialiConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    session_names(extraction, session_ids)  # a wrong count fails before anything is written
    paths = {
        "arrays": write_arrays(
            extraction,
            out,
            session_ids=session_ids,
            fs=fs,
            spatial_ds=spatial_ds,
            extra_meta=extra_meta,
            dff_window=cfg.dff_window,
            dark_level=cfg.dark_level,
        )
    }
    dff_path = paths["arrays"] / "dff.npy"
    dff = np.load(dff_path, mmap_mode="r") if dff_path.exists() else None
    if nwb:
        paths["nwb"] = write_nwb(
            extraction,
            out / "neurons.nwb",
            fs=fs,
            session_ids=session_ids,
            session_start_time=session_start_time,
            identifier=identifier,
            field_of_view=field_of_view,
            spatial_ds=spatial_ds,
            dff=dff,
            config=cfg,
        )
    if caiman:
        paths["caiman"] = write_caiman(extraction, out / "caiman.hdf5", fs=fs, dff=dff)
    if qc:
        (out / "qc").mkdir(exist_ok=True)
        paths["contours"] = plot_contours(extraction, out / "qc" / "contours.png")
        paths["traces"] = plot_traces(extraction, out / "qc" / "traces.png", fs=fs, session_ids=session_ids)
        paths["convergence"] = plot_convergence(extraction, out / "qc" / "convergence.png")
    return paths
