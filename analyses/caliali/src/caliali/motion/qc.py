"""Per-session quality control: one PNG with the session's projections and
its motion trace, with the shifts and projections saved beside it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from caliali.figures import save_png

from ._errors import MotionError

if TYPE_CHECKING:  # pragma: no cover
    from caliali.projections import Projections

    from .result import MotionResult

__all__ = ["plot_session_qc", "save_session_qc"]


def _robust_limits(img: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    vals = img[mask] if mask is not None and mask.any() else img.ravel()
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [1, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def plot_session_qc(
    motion: MotionResult | None = None,
    projections: Projections | None = None,
    *,
    title: str = "",
) -> Figure:
    """A matplotlib Figure (no pyplot state; Agg canvas) with the mean, BV,
    Cn and PNR images (valid-mask outline on the mean) above the (dy, dx)
    motion trace, dropped frames marked."""
    if motion is None and projections is None:
        raise MotionError("plot_session_qc needs a motion result, projections, or both")
    fig = Figure(figsize=(13, 7.5 if projections is not None and motion is not None else 4.5), dpi=90)
    FigureCanvasAgg(fig)
    rows = int(projections is not None) + int(motion is not None)
    grid = fig.add_gridspec(rows, 4, height_ratios=[1.6, 1][:rows] if rows == 2 else [1])
    mask = motion.valid_mask if motion is not None else None
    if projections is not None:
        panels = [
            ("mean", projections.mean, "gray"),
            ("blood vessels", projections.bv, "gray"),
            ("Cn", projections.cn, "viridis"),
            ("PNR", projections.pnr, "magma"),
        ]
        for col, (name, img, cmap) in enumerate(panels):
            ax = fig.add_subplot(grid[0, col])
            lo, hi = _robust_limits(img, mask)
            im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            if mask is not None and col == 0 and not mask.all():
                ax.contour(mask, levels=[0.5], colors="tab:orange", linewidths=0.8)
            ax.set_title(name)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    if motion is not None:
        ax = fig.add_subplot(grid[rows - 1, :])
        frames = np.arange(len(motion.shifts))
        ax.plot(frames, motion.shifts[:, 0], lw=0.8, label="dy (rows)")
        ax.plot(frames, motion.shifts[:, 1], lw=0.8, label="dx (cols)")
        if motion.dropped.any():
            ax.plot(frames[motion.dropped], motion.shifts[motion.dropped, 0], "rx", ms=4, label="dropped (filled)")
        unregistered = ~motion.registered & ~motion.dropped
        if unregistered.any():
            ax.plot(frames[unregistered], motion.shifts[unregistered, 0], "k.", ms=3, label="did not register (filled)")
        s = motion.summary()
        ax.set_title(
            f"rigid motion: max {s['max_shift_px']:.2f} px, valid area {100 * s['valid_fraction']:.0f}%, "
            f"{s['n_dropped']} dropped frames, {s['n_unregistered']} that did not register"
        )
        ax.set_xlabel("frame")
        ax.set_ylabel("shift (px)")
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_session_qc(
    folder: Path | str,
    name: str,
    *,
    motion: MotionResult | None = None,
    projections: Projections | None = None,
) -> dict[str, Path]:
    """Write ``<name>_qc.png`` and, beside it, the shifts
    (``<name>_shifts.npy``/``.csv``, valid mask, template, summary JSON, see
    :meth:`MotionResult.save`) and ``<name>_projections.npz``.

    Returns
    -------
    dict of str to Path
        Every file written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if motion is not None:
        written.update(motion.save(folder, name=name))
    if projections is not None:
        written["projections"] = projections.save(folder / f"{name}_projections.npz")
    fig = plot_session_qc(motion, projections, title=name)
    png = folder / f"{name}_qc.png"
    save_png(fig, png)
    written["qc_png"] = png
    return written
