"""The static scene in the common reference frame: neurons and background."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from caliali._cv2 import cv2

__all__ = ["place_neurons", "footprints", "background"]


def place_neurons(
    rng: np.random.Generator,
    n: int,
    region: tuple[float, float, float, float],
    *,
    min_distance: float,
) -> tuple[np.ndarray, float]:
    """Random centres (n, 2) (y, x) inside ``region`` = (y0, y1, x0, x1), pairwise >= min_distance.

    Dart throwing; if ``n`` centres do not fit (dense variant), the distance
    is relaxed by 10% at a time and the distance actually used is returned.
    """
    y0, y1, x0, x1 = region
    distance = float(min_distance)
    while True:
        centres = np.empty((n, 2))
        placed = 0
        candidates = np.column_stack([rng.uniform(y0, y1, 200 * n), rng.uniform(x0, x1, 200 * n)])
        for candidate in candidates:
            if placed == 0 or np.min(np.sum((centres[:placed] - candidate) ** 2, axis=1)) >= distance**2:
                centres[placed] = candidate
                placed += 1
                if placed == n:
                    return centres, distance
        distance *= 0.9


def footprints(
    rng: np.random.Generator, centres: np.ndarray, shape: tuple[int, int], *, width: float = 7.0
) -> np.ndarray:
    """Gaussian-like footprints (K, h, w) float32, peak 1, ~``width`` px across.

    Each is an anisotropic Gaussian with random orientation and axes varied
    by +-20% around sigma = width / 4 (so +-2 sigma spans ``width``), cut at
    3 sigma so that footprints are compact.
    """
    h, w = shape
    out = np.zeros((len(centres), h, w), dtype=np.float32)
    base = width / 4.0
    for k, (cy, cx) in enumerate(centres):
        s_major, s_minor = base * rng.uniform(1.0, 1.2), base * rng.uniform(0.8, 1.0)
        theta = rng.uniform(0, np.pi)
        r = int(np.ceil(3 * s_major)) + 1
        ya, yb = max(0, int(cy) - r), min(h, int(cy) + r + 2)
        xa, xb = max(0, int(cx) - r), min(w, int(cx) + r + 2)
        yy, xx = np.mgrid[ya:yb, xa:xb]
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        q = (u / s_major) ** 2 + (v / s_minor) ** 2
        patch = np.exp(-0.5 * q) * (q <= 9.0)
        out[k, ya:yb, xa:xb] = patch / patch.max()
    return out


def _vessel_paths(rng: np.random.Generator, shape: tuple[int, int], n: int) -> list[np.ndarray]:
    """Smooth random curves entering from the border and crossing the field."""
    h, w = shape
    paths = []
    for _ in range(n):
        side = rng.integers(4)
        start = [
            (0, rng.uniform(0, w)),
            (h - 1, rng.uniform(0, w)),
            (rng.uniform(0, h), 0),
            (rng.uniform(0, h), w - 1),
        ][side]
        heading = [np.pi / 2, -np.pi / 2, 0.0, np.pi][side] + rng.normal(0, 0.4)
        turn, points = 0.0, [start]
        y, x = start
        for _ in range(4 * (h + w)):
            turn = 0.9 * turn + rng.normal(0, 0.02)
            heading += turn
            y, x = y + np.sin(heading), x + np.cos(heading)
            if not (-5 <= y <= h + 5 and -5 <= x <= w + 5):
                break
            points.append((y, x))
        paths.append(np.array(points))
    return paths


def background(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A smooth background (h, w) float32 in (0, 1] with dark blood vessels.

    Vignetting (a wide radial fall-off) times a smooth random texture,
    darkened along 4-7 random vessels 2-6 px wide.

    Returns
    -------
    background : ndarray (h, w) float32
    vessels : ndarray (h, w) float32
        Vessel darkening in [0, 1] (1 = vessel centre), for checks.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2
    vignette = np.exp(-r2 / (2 * 0.45**2))
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=min(h, w) / 8, mode="reflect")
    texture = 0.85 + 0.15 * texture / (np.abs(texture).max() + 1e-12)
    canvas = np.zeros(shape, dtype=np.float32)
    for path in _vessel_paths(rng, shape, int(rng.integers(4, 8))):
        thickness = int(rng.integers(2, 7))
        pts = np.round(path[:, ::-1] * 16).astype(np.int32).reshape(-1, 1, 2)  # (x, y), 4 fractional bits
        cv2.polylines(canvas, [pts], False, float(rng.uniform(0.5, 1.0)), thickness, cv2.LINE_AA, shift=4)
    vessels = np.clip(cv2.GaussianBlur(canvas, (0, 0), 1.0), 0, 1)
    bg = vignette * texture * (1 - 0.5 * vessels)
    return (bg / bg.max()).astype(np.float32), vessels
