"""ΔF/F traces: each neuron's raw trace over its resting fluorescence, session by session.

For neuron k in session s, with ``F(t) = noise[k, s] * C_raw[k, t]`` its raw
trace in movie units (baseline removed by the extraction) and ``f0[k, s]`` its
resting level (`caliali.extraction.Extraction.f0`: the background under its
footprint plus the baseline removed, less what the camera reads with no light, ``dark_level``,
under the footprint: a black level or offset on every pixel is no fluorescence),

    ΔF/F(t) = (F(t) - F_b(t)) / (f0[k, s] + F_b(t))

where ``F_b`` is a running percentile of ``F`` over ``window`` seconds (within
the session). As in CaImAn's ``detrend_df_f`` (``flag_auto``), the percentile
is the one at the mode of the session's trace, so that a neuron firing often
does not lift its baseline and a quiet one is not pushed below it. A neuron
whose resting level is not positive (a movie whose background was subtracted
before extraction, or a ``dark_level`` above it) has no ΔF/F: its frames are NaN and it is listed in
``meta.json`` (``dff_undefined``).

References
----------
Giovannucci, A. et al. CaImAn an open source tool for scalable calcium imaging
data analysis. eLife 8, e38173 (2019) — ``caiman.source_extraction.cnmf.utilities.detrend_df_f``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse
from scipy import ndimage

from ._blocks import release

__all__ = ["dff_row", "mode_percentile", "write_dff"]


def mode_percentile(trace: np.ndarray, *, bin_width: float = 0.2) -> float:
    """The percentile (1 to 50) of ``trace`` at the mode of its distribution.

    ``trace`` is in noise units (as ``C_raw``), so the histogram's bins are a fixed fraction of the
    noise (``bin_width``), fine enough to find the baseline however often the neuron fires; counts
    are smoothed over three bins so that a single lucky bin is no mode. A baseline-dominated trace
    has its mode at the baseline, and the percentile there is the running percentile that follows
    the baseline (CaImAn's ``df_percentile`` finds the mode with a kernel density).
    """
    values = np.asarray(trace, np.float64)
    values = values[np.isfinite(values)]
    if values.size < 10 or np.ptp(values) == 0:
        return 50.0
    low, high = np.percentile(values, [0.5, 99.5])
    n_bins = int(np.clip(np.ceil((high - low) / bin_width), 1, 10_000))
    counts, edges = np.histogram(values, bins=n_bins, range=(low, high + 1e-9))
    counts = np.convolve(counts, np.ones(3) / 3, mode="same")
    peak = int(np.argmax(counts))
    mode = 0.5 * (edges[peak] + edges[peak + 1])
    return float(np.clip(100.0 * np.mean(values <= mode), 1.0, 50.0))


def dff_row(c_raw: np.ndarray, noise: np.ndarray, f0: np.ndarray, bounds, *, window: int) -> np.ndarray:
    """One neuron's ΔF/F (float32) from its noise-scaled raw trace, noise and resting level per session.

    ``window`` is the running baseline's length in frames (cut to the session's length).
    """
    out = np.full(np.shape(c_raw), np.nan, np.float32)
    for s, (s0, s1) in enumerate(zip(bounds[:-1], bounds[1:])):
        if s1 <= s0:
            continue
        scaled = np.asarray(c_raw[s0:s1], np.float64)
        trace = scaled * float(noise[s])
        size = int(max(1, min(window, s1 - s0)))
        baseline = ndimage.percentile_filter(trace, mode_percentile(scaled), size=size, mode="nearest")
        resting = float(f0[s]) + baseline
        if np.all(resting > 0):
            out[s0:s1] = (trace - baseline) / resting
    return out


def dark_under(extraction, dark_level: float) -> np.ndarray:
    """(K,): what a uniform offset of ``dark_level`` on every pixel adds to each neuron's ``f0``.

    ``f0`` is an amplitude on the footprint ``u`` the extraction fitted (unit norm), so a constant
    ``d`` under it is ``d * sum(u) / |u|^2``; column k of ``A`` is ``u`` times the neuron's mean
    noise (`caliali.extraction.Extraction.A`), which gives ``sum(u) / |u|^2`` from ``A``.
    """
    a = scipy.sparse.csc_matrix(extraction.A)
    sums = np.asarray(a.sum(axis=0), np.float64).ravel()
    squares = np.asarray(a.multiply(a).sum(axis=0), np.float64).ravel()
    if len(sums) == 0:  # no neuron (e.g. a curation that rejected every one)
        return np.zeros(0)
    scale = np.asarray(extraction.noise, np.float64).reshape(len(sums), -1).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_unit = np.where(squares > 0, scale * sums / squares, 0.0)
    return float(dark_level) * per_unit


def write_dff(
    extraction, path: Path | str, *, fs: float, window_s: float, dark_level: float = 0.0
) -> tuple[Path, list[int]]:
    """Write the (K, T) float32 ΔF/F of every neuron to ``path`` (``.npy``), one neuron at a time.

    ``dark_level`` (what a pixel reads with no light, in movie units) is taken out of each resting
    level first (`dark_under`). Returns the path and the neurons whose ΔF/F is undefined (NaN:
    resting level not positive). ``extraction.f0`` must be set.
    """
    path = Path(path)
    k, t = (int(n) for n in np.shape(extraction.C_raw))
    bounds = np.asarray(extraction.session_bounds, np.int64)
    window = int(round(window_s * fs))
    undefined = []
    f0 = np.asarray(extraction.f0, np.float64) - dark_under(extraction, dark_level)[:, None]
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (k, t)}
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, header)
        for i in range(k):
            row = dff_row(extraction.C_raw[i], extraction.noise[i], f0[i], bounds, window=window)
            release(extraction.C_raw)  # pages of memory-mapped traces go as they are read (see _blocks)
            if np.isnan(row).any():
                undefined.append(i)
            row.tofile(file)
    return path, undefined
