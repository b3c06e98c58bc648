"""QC figures: footprint contours with IDs on Cn, the strongest neurons' traces across sessions, and
how extraction's refinement rounds converged."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caliali.figures import save_png

from ._blocks import release
from ._common import convergence_of, convergence_sentence, session_names

__all__ = ["envelope", "plot_contours", "plot_convergence", "plot_traces"]


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
    return save_png(fig, path)


_TRACE_COLUMNS = 1200  # the traces figure's width in pixels (12 in at 100 dpi)


def envelope(y: np.ndarray, columns: int = _TRACE_COLUMNS) -> tuple[np.ndarray, np.ndarray]:
    """``(frame indices, values)`` drawing the same picture as ``y`` on ``columns`` pixel columns.

    A trace longer than two points per column is cut into ``columns`` bins of frames, and each
    bin is drawn as a vertical stroke from its minimum to its maximum: what a line through every
    frame covers at that resolution, with 2 points per column instead of thousands (matplotlib
    keeps every point of every line it draws).
    """
    if len(y) <= 2 * columns:
        return np.arange(len(y)), np.asarray(y)
    starts = np.linspace(0, len(y), columns + 1).astype(np.int64)[:-1]
    values = np.empty(2 * columns, dtype=y.dtype)
    values[0::2] = np.minimum.reduceat(y, starts)
    values[1::2] = np.maximum.reduceat(y, starts)
    return np.repeat(starts, 2), values


def plot_traces(extraction, path: Path | str, *, n: int = 10, fs: float = 10.0, session_ids=None) -> Path:
    """Raw and denoised traces of the ``n`` strongest neurons, sessions marked by dashed lines.

    Reads only those neurons' rows of ``C_raw`` and ``C``; a long trace is drawn as its
    per-pixel-column minimum-maximum envelope (:func:`envelope`), so the figure's memory does
    not grow with the recording's length.
    """
    n = min(n, extraction.n_neurons)
    fig = _figure((12, 1.0 + 1.1 * max(n, 1)))
    ax = fig.add_subplot()
    offset = 0.0
    for k in range(n):  # neurons are already in SNR order
        raw = np.array(extraction.C_raw[k])  # copies of one neuron's rows; then the maps' pages are released
        den = np.array(extraction.C[k])
        release(extraction.C_raw)
        release(extraction.C)
        span = max(float(np.percentile(raw, 99.9) - raw.min()), 1e-6)
        for trace, style in ((raw, {"lw": 0.4, "color": "0.6"}), (den, {"lw": 0.7, "color": "tab:blue"})):
            frames, values = envelope((trace - raw.min()) / span - offset)
            ax.plot(frames / fs, values, **style)
        ax.text(0.0, 0.5 - offset, f"#{k} SNR {extraction.snr[k]:.0f}", fontsize=7, ha="right")
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
    return save_png(fig, path)


def plot_convergence(extraction, path: Path | str) -> Path:
    """Footprint change per refinement round against ``tol`` (log scale), rounds that removed or
    merged components marked, and the record's sentence as the title: converged or not, and why."""
    history = [h for h in getattr(extraction, "history", None) or [] if "change" in h and "iteration" in h]
    record = convergence_of(extraction)
    fig = _figure((7, 3.6))
    ax = fig.add_subplot()
    rounds = [int(h["iteration"]) for h in history]
    changes = [max(float(h["change"]), 1e-6) for h in history]
    ax.plot(rounds, changes, "o-", color="tab:blue", lw=1.2, label="median footprint change")
    busy = [(r, c) for r, c, h in zip(rounds, changes, history) if h.get("removed") or h.get("merged")]
    if busy:
        ax.plot(*zip(*busy), "s", mfc="none", color="tab:red", ms=9, label="components removed or merged")
    if record.get("tol"):
        ax.axhline(float(record["tol"]), color="tab:green", ls="--", lw=1.0, label=f"tol {float(record['tol']):g}")
    ax.set_yscale("log")
    ax.set_xlabel("refinement round")
    ax.set_ylabel("footprint change")
    if rounds:
        ax.set_xticks(rounds)
    ax.legend(fontsize=7, loc="upper right")
    color = "black" if record.get("converged") else "tab:red"
    ax.set_title(convergence_sentence(extraction), fontsize=8, color=color, wrap=True)
    fig.tight_layout()
    return save_png(fig, path)
