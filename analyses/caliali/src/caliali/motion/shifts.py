"""The one definition of applying a rigid shift, and the valid-pixel mask it
leaves.

Convention (shared by all of caliali): a shift ``(dy, dx)`` applied to a frame
gives ``corrected[y, x] = frame[y + dy, x + dx]``; shifts are stored as a
``(t, 2)`` float array with columns ``(dy, dx)``.
"""

from __future__ import annotations

import math

import numpy as np

from caliali._cv2 import cv2

from ._errors import MotionError

__all__ = ["apply_shift", "apply_shifts", "valid_mask_from_shifts"]

_INTERP = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


def _check_interp(interpolation: str) -> int:
    try:
        return _INTERP[interpolation]
    except KeyError:
        raise MotionError(f"interpolation must be one of {sorted(_INTERP)}, got {interpolation!r}") from None


def apply_shift(frame: np.ndarray, shift, *, interpolation: str = "cubic") -> np.ndarray:
    """Shift one frame: ``out[y, x] = frame[y + dy, x + dx]`` (subpixel).

    Pixels whose source lies outside the frame take the value of the nearest
    border pixel; :func:`valid_mask_from_shifts` says which pixels are real.

    Parameters
    ----------
    frame : (h, w) array
    shift : (dy, dx) floats
    interpolation : {"cubic", "linear", "nearest"}

    Returns
    -------
    (h, w) float32 array

    Examples
    --------
    >>> import numpy as np
    >>> f = np.arange(25, dtype=np.float32).reshape(5, 5)
    >>> float(apply_shift(f, (1, 2))[0, 0]) == float(f[1, 2])
    True
    """
    flag = _check_interp(interpolation)
    src = np.asarray(frame, dtype=np.float32)
    if src.ndim != 2:
        raise MotionError(f"apply_shift needs one (h, w) frame, got shape {src.shape}")
    dy, dx = (float(v) for v in shift)
    if not (math.isfinite(dy) and math.isfinite(dx)):
        raise MotionError(f"shift must be finite, got {(dy, dx)}")
    # With WARP_INVERSE_MAP, dst(x, y) = src(M @ (x, y, 1)) = src(x + dx, y + dy).
    matrix = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
    h, w = src.shape
    return cv2.warpAffine(src, matrix, (w, h), flags=flag | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def apply_shifts(frames: np.ndarray, shifts: np.ndarray, *, interpolation: str = "cubic") -> np.ndarray:
    """Shift every frame of a ``(t, h, w)`` stack by its row of ``shifts``
    (``(t, 2)``, columns ``(dy, dx)``), see :func:`apply_shift`. The input is
    not modified; the result is float32."""
    arr = np.asarray(frames)
    sh = np.asarray(shifts, dtype=np.float64)
    if arr.ndim != 3:
        raise MotionError(f"apply_shifts needs a (t, h, w) stack, got shape {arr.shape}")
    if sh.shape != (arr.shape[0], 2):
        raise MotionError(f"shifts must have shape (t, 2) = ({arr.shape[0]}, 2) to match the frames, got {sh.shape}")
    out = np.empty(arr.shape, dtype=np.float32)
    for i in range(arr.shape[0]):
        out[i] = apply_shift(arr[i], sh[i], interpolation=interpolation)
    return out


def valid_mask_from_shifts(shifts: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose source lies inside the frame for every shift.

    Parameters
    ----------
    shifts : (t, 2) array, columns (dy, dx)
    frame_shape : (h, w)

    Returns
    -------
    (h, w) bool array
        True where ``0 <= y + dy <= h - 1`` and ``0 <= x + dx <= w - 1`` for all
        frames: the real data, kept instead of cropping the borders away.
    """
    h, w = frame_shape
    sh = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    mask = np.zeros((h, w), dtype=bool)
    if sh.shape[0] == 0:
        mask[:] = True
        return mask
    eps = 1e-6
    y0 = math.ceil(max(0.0, -sh[:, 0].min()) - eps)
    y1 = math.floor(h - 1 - max(0.0, sh[:, 0].max()) + eps)
    x0 = math.ceil(max(0.0, -sh[:, 1].min()) - eps)
    x1 = math.floor(w - 1 - max(0.0, sh[:, 1].max()) + eps)
    if y1 >= y0 and x1 >= x0:
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask
