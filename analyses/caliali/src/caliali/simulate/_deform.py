"""Smooth random deformations between sessions, and within-session motion."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["smooth_field", "invert_field", "within_session_shifts"]


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, int], *, magnitude: float, smoothness: float
) -> np.ndarray:
    """A smooth curl-free displacement field (2, h, w): the gradient of heavily smoothed noise.

    Scaled so that its largest displacement is ``magnitude`` px.
    """
    potential = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=smoothness, mode="reflect")
    field = np.stack(np.gradient(potential))
    peak = np.sqrt((field**2).sum(axis=0)).max()
    return (field * (magnitude / peak)).astype(np.float64)


def invert_field(d: np.ndarray, *, iterations: int = 40) -> tuple[np.ndarray, float]:
    """Invert a backward field by fixed-point iteration.

    Given ``d`` with ``session[p + d(p)] = reference[p]``, return ``u`` with
    ``reference[q + u(q)] = session[q]``, i.e. ``u(q) = -d(q + u(q))``, and
    the largest residual (px). Converges for smooth fields (|grad d| < 1).
    """
    h, w = d.shape[1:]
    grid = np.mgrid[0:h, 0:w].astype(np.float64)
    u = -d.copy()
    for _ in range(iterations):
        coords = grid + u
        previous, u = u, -np.stack([ndimage.map_coordinates(d[i], coords, order=1, mode="nearest") for i in range(2)])
        if np.abs(u - previous).max() < 1e-6:
            break
    coords = grid + u
    residual = u + np.stack([ndimage.map_coordinates(d[i], coords, order=1, mode="nearest") for i in range(2)])
    return u, float(np.abs(residual).max())


def within_session_shifts(rng: np.random.Generator, n_frames: int, *, sd: float = 1.5, rho: float = 0.95) -> np.ndarray:
    """Per-frame rigid shifts (t, 2) (dy, dx): an AR(1) drift with stationary sd ``sd`` px.

    These are the shifts that *correct* each frame (caliali's convention):
    ``corrected[y, x] = frame[y + dy, x + dx]``.
    """
    innovations = rng.standard_normal((n_frames, 2)) * sd * np.sqrt(1 - rho**2)
    shifts = np.empty((n_frames, 2))
    shifts[0] = rng.standard_normal(2) * sd
    for t in range(1, n_frames):
        shifts[t] = rho * shifts[t - 1] + innovations[t]
    return shifts.astype(np.float32)
