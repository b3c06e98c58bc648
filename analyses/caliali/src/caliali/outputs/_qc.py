"""QC figures: footprint contours with IDs on Cn, and the strongest neurons' traces across sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._blocks import release
from ._common import session_names

__all__ = ["plot_contours", "plot_traces"]


def _figure(size):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=100)


def plot_contours(extraction, path: Path | str, *, level: float = 0.3) -> Path:
    """Contour of every footprint (at ``level`` x its maximum) with its ID, on the Cn image."""
    from skimage.measure import find_contours

    h, w = extraction.dims
    fig = _figure((max(6.0, 8.0 * w / max(h, w)), max(5.0, 8.0 * h / max(h, w))))
    ax = fig.add_subplot()
    ax.imshow(extraction.cn, cmap="gray")
    a = extraction.A.tocsc()
    for k in range(a.shape[1]):
        lo, hi = a.indptr[k], a.indptr[k + 1]
        if hi == lo:
            continue
        pix, val = a.indices[lo:hi], a.data[lo:hi]
        ys, xs = pix // w, pix % w
        y0, x0 = ys.min() - 1, xs.min() - 1
        img = np.zeros((ys.max() - y0 + 2, xs.max() - x0 + 2), np.float32)
        img[ys - y0, xs - x0] = val
        for contour in find_contours(img, level * float(val.max())):
            ax.plot(contour[:, 1] + x0, contour[:, 0] + y0, lw=0.8, color="tab:orange")
        cy, cx = extraction.centers[k]
        ax.text(cx, cy, str(k), color="yellow", fontsize=6, ha="center", va="center")
    ax.set_title(f"{a.shape[1]} neurons on the max-over-sessions Cn image")
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_traces(extraction, path: Path | str, *, n: int = 10, fs: float = 10.0, session_ids=None) -> Path:
    """Raw and denoised traces of the ``n`` strongest neurons, sessions marked by dashed lines.

    Reads only those neurons' rows of ``C_raw`` and ``C``.
    """
    n = min(n, extraction.n_neurons)
    fig = _figure((12, 1.0 + 1.1 * max(n, 1)))
    ax = fig.add_subplot()
    t = np.arange(extraction.C.shape[1]) / fs
    offset = 0.0
    for k in range(n):  # neurons are already in SNR order
        raw = np.array(extraction.C_raw[k])  # copies of one neuron's rows; then the maps' pages are released
        den = np.array(extraction.C[k])
        release(extraction.C_raw)
        release(extraction.C)
        span = max(float(np.percentile(raw, 99.9) - raw.min()), 1e-6)
        ax.plot(t, (raw - raw.min()) / span - offset, lw=0.4, color="0.6")
        ax.plot(t, (den - raw.min()) / span - offset, lw=0.7, color="tab:blue")
        ax.text(t[0], 0.5 - offset, f"#{k} SNR {extraction.snr[k]:.0f}", fontsize=7, ha="right")
        offset += 1.2
    bounds = np.asarray(extraction.session_bounds)
    ids = session_names(extraction, session_ids)
    for i, b in enumerate(bounds[:-1]):
        if i:
            ax.axvline(b / fs, color="tab:red", ls="--", lw=0.8)
        ax.text(b / fs, 1.1, str(ids[i]), color="tab:red", fontsize=8)
    ax.set_yticks([])
    ax.set_xlabel("time (s), sessions concatenated")
    ax.set_title(f"{n} strongest neurons (grey raw, blue denoised)")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
