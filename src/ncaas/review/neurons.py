"""What the review page shows of the neurons: the table, the contours, a footprint, the neighbours."""

from __future__ import annotations

from typing import Any

import numpy as np

from .layout import Layout, png

__all__ = ["contours", "footprint_box", "footprint_png", "neighbours", "table"]

CONTOUR_LEVEL = 0.2  # a footprint's outline: where it falls to this fraction of its peak
_PAD = 1


def _centres(layout: Layout) -> np.ndarray:
    """Each neuron's centre (y, x): meta.json's, else the footprint's weighted centre."""
    listed = layout.meta.get("centers")
    if isinstance(listed, list) and len(listed) == layout.n_neurons:
        return np.asarray(listed, dtype=np.float64).reshape(layout.n_neurons, 2)

    def build() -> np.ndarray:
        _, w = layout.dims
        out = np.zeros((layout.n_neurons, 2))
        for k in range(layout.n_neurons):
            pixels, weights = layout.footprint(k)
            if weights.size and weights.sum() > 0:
                y, x = np.divmod(pixels, w)
                out[k] = [np.average(y, weights=weights), np.average(x, weights=weights)]
        return out

    return layout._memo("centres", build)


def table(layout: Layout) -> list[dict[str, Any]]:
    """One row per neuron: id, snr, size (pixels above CONTOUR_LEVEL of its peak), centre, activity."""
    return layout._memo("table", lambda: _table(layout))


def _table(layout: Layout) -> list[dict[str, Any]]:
    snr = layout.meta.get("snr") if isinstance(layout.meta.get("snr"), list) else None
    if snr is not None and len(snr) != layout.n_neurons:
        snr = None  # a meta.json disagreeing with itself: no SNR shown rather than the wrong one
    centres = _centres(layout)
    activity = layout.activity()
    rows = []
    for k in range(layout.n_neurons):
        _, weights = layout.footprint(k)
        size = int((weights >= CONTOUR_LEVEL * weights.max()).sum()) if weights.size else 0
        rows.append(
            {
                "id": k,
                "snr": None if snr is None or snr[k] is None else round(float(snr[k]), 3),
                "size": size,
                "center": [round(float(c), 2) for c in centres[k]],
                "activity": activity[k],
            }
        )
    return rows


def _box(layout: Layout, k: int, pad: int) -> tuple[np.ndarray, int, int]:
    """Neuron ``k``'s footprint on its bounding box (padded by ``pad``), and the box's top-left corner."""
    h, w = layout.dims
    pixels, weights = layout.footprint(k)
    if not pixels.size:
        return np.zeros((1, 1), np.float32), 0, 0
    y, x = np.divmod(pixels, w)
    y0, x0 = max(int(y.min()) - pad, 0), max(int(x.min()) - pad, 0)
    y1, x1 = min(int(y.max()) + pad + 1, h), min(int(x.max()) + pad + 1, w)
    patch = np.zeros((y1 - y0, x1 - x0), np.float32)
    patch[y - y0, x - x0] = weights
    return patch, y0, x0


def contours(layout: Layout) -> list[list[list[list[float]]]]:
    """Every neuron's outline at CONTOUR_LEVEL of its peak: a list of closed paths of [x, y] points."""
    from skimage.measure import find_contours

    def build() -> list[list[list[list[float]]]]:
        out = []
        for k in range(layout.n_neurons):
            patch, y0, x0 = _box(layout, k, _PAD)
            peak = float(patch.max())
            paths = []
            if peak > 0:
                for path in find_contours(patch, CONTOUR_LEVEL * peak):
                    if len(path) >= 3:
                        paths.append([[round(float(p[1]) + x0, 1), round(float(p[0]) + y0, 1)] for p in path])
            out.append(paths)
        return out

    return layout._memo("contours", build)


def footprint_box(layout: Layout, k: int, *, margin: int = 6) -> list[int]:
    """The box [y0, x0, height, width] :func:`footprint_png` shows of neuron ``k``."""
    patch, y0, x0 = _box(layout, k, margin)
    return [y0, x0, *patch.shape]


def footprint_png(layout: Layout, k: int, *, margin: int = 6) -> tuple[bytes, list[int]]:
    """Neuron ``k``'s footprint on its padded box as a PNG, and the box [y0, x0, height, width]."""
    patch, y0, x0 = _box(layout, k, margin)
    return png(patch, lo=0.0, hi=100.0, colormap="hot"), [y0, x0, *patch.shape]


def neighbours(layout: Layout, k: int, count: int = 6) -> list[dict[str, Any]]:
    """The ``count`` neurons whose centres lie nearest neuron ``k``'s, with distance and footprint overlap."""
    centres = _centres(layout)
    dist = np.hypot(*(centres - centres[k]).T)
    dist[k] = np.inf
    order = [int(i) for i in np.argsort(dist, kind="stable")[:count] if np.isfinite(dist[i])]
    mine = dict(zip(*layout.footprint(k), strict=False))
    norm = float(np.sqrt(sum(v * v for v in mine.values()))) or 1.0
    out = []
    for j in order:
        pixels, weights = layout.footprint(j)
        dot = sum(float(mine.get(int(p), 0.0)) * float(v) for p, v in zip(pixels, weights, strict=False))
        other = float(np.sqrt((weights.astype(np.float64) ** 2).sum())) or 1.0
        out.append({"id": j, "distance": round(float(dist[j]), 2), "overlap": round(dot / (norm * other), 3)})
    return out
