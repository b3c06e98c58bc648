"""Backward displacement fields: warping, composition, exponentials, resampling.

Every field here is a float32 array shaped (2, H, W) holding (dy, dx) in the
caliali BACKWARD convention::

    warped[y, x] = image[y + dy[y, x], x + dx[y, x]]

i.e. for each pixel of the output frame, where it sits in the input image.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from caliali._cv2 import cv2

__all__ = [
    "compose",
    "exp_field",
    "in_bounds",
    "random_smooth_field",
    "resize_field",
    "smooth",
    "warp",
]


@lru_cache(maxsize=16)
def _grid(h: int, w: int) -> np.ndarray:
    """Pixel coordinates (y, x) as float32 (2, h, w); cached, read-only
    (an alignment asks for the same grid at every iteration)."""
    grid = np.mgrid[0:h, 0:w].astype(np.float32)
    grid.flags.writeable = False
    return grid


def _maps(field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = _grid(*field.shape[1:])
    return xx + field[1], yy + field[0]


def warp(image: np.ndarray, field: np.ndarray, *, fill: float = 0.0) -> np.ndarray:
    """Resample ``image`` through a backward field, bilinear.

    Parameters
    ----------
    image : ndarray (H, W)
        Input image (any real dtype; computed in float32).
    field : ndarray (2, H', W')
        Backward displacement field (dy, dx); the output has shape (H', W').
    fill : float
        Value for output pixels whose source lies outside ``image``.
        ``nan`` is allowed.

    Returns
    -------
    ndarray (H', W') float32
    """
    field = np.asarray(field, dtype=np.float32)
    # Replicate, then fill exactly the pixels whose source is outside: OpenCV's
    # constant border would blend the fill value into the last row/column
    # (and a NaN fill would poison it through a zero weight).
    out = warp_replicate(image, field)
    out[~in_bounds(field, np.shape(image))] = fill
    return out


def warp_replicate(image: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Like :func:`warp` but extends the image by its border values."""
    map_x, map_y = _maps(np.asarray(field, dtype=np.float32))
    return cv2.remap(
        np.ascontiguousarray(image, dtype=np.float32),
        map_x,
        map_y,
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def in_bounds(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose source position lies inside an image of ``shape``."""
    yy, xx = _grid(*field.shape[1:])
    sy = yy + field[0]
    sx = xx + field[1]
    return (sy >= 0) & (sy <= shape[0] - 1) & (sx >= 0) & (sx <= shape[1] - 1)


def compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Field of "warp by ``first``, then warp the result by ``second``".

    ``warp(warp(img, first), second) == warp(img, compose(first, second))``:
    ``out(p) = second(p) + first(p + second(p))``.
    """
    moved = np.stack([warp_replicate(first[0], second), warp_replicate(first[1], second)])
    return (second + moved).astype(np.float32)


def exp_field(velocity: np.ndarray, *, max_step: float = 0.5) -> np.ndarray:
    """Exponential of a stationary velocity field by scaling and squaring.

    References
    ----------
    .. [1] Arsigny V, Commowick O, Pennec X, Ayache N. A Log-Euclidean framework
       for statistics on diffeomorphisms. MICCAI 2006, 924-931.
    """
    norm = float(np.sqrt((velocity.astype(np.float64) ** 2).sum(axis=0)).max()) if velocity.size else 0.0
    n = max(0, int(np.ceil(np.log2(max(norm, 1e-12) / max_step)))) if norm > max_step else 0
    field = (velocity / (2.0**n)).astype(np.float32)
    for _ in range(n):
        field = compose(field, field)
    return field


def smooth(field: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of each component (reflecting borders)."""
    if sigma <= 0:
        return field.astype(np.float32, copy=True)
    k = int(2 * np.ceil(3 * sigma) + 1)
    return np.stack(
        [
            cv2.GaussianBlur(np.ascontiguousarray(c, dtype=np.float32), (k, k), sigma, borderType=cv2.BORDER_REFLECT)
            for c in field
        ]
    )


def resize_field(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample a field to another grid, scaling the displacements.

    Pixel centres follow the area-averaging pyramid convention of
    ``cv2.resize`` (``src = (dst + 0.5) * scale - 0.5``), so the physical
    displacement is preserved, not only its pixel count.
    """
    h, w = field.shape[1:]
    if (h, w) == tuple(shape):
        return field.astype(np.float32, copy=True)
    sy, sx = shape[0] / h, shape[1] / w
    out = [
        cv2.resize(np.ascontiguousarray(c, dtype=np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        for c in field
    ]
    return np.stack([out[0] * sy, out[1] * sx]).astype(np.float32)


def random_smooth_field(
    shape: tuple[int, int],
    *,
    magnitude: float,
    smoothness: float,
    rng: np.random.Generator,
    norm: str = "max",
) -> np.ndarray:
    """A random smooth field: Gaussian-smoothed white noise, scaled so its
    largest (``norm="max"``) or root-mean-square (``norm="rms"``) displacement
    equals ``magnitude`` px.

    ``smoothness`` is the smoothing sigma in px (the length over which the field
    varies).
    """
    noise = rng.standard_normal((2, *shape)).astype(np.float32)
    field = smooth(noise, smoothness)
    length = np.sqrt((field.astype(np.float64) ** 2).sum(axis=0))
    size = float(length.max() if norm == "max" else np.sqrt((length**2).mean()))
    return (field * (magnitude / max(size, 1e-12))).astype(np.float32)
