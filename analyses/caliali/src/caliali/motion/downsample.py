"""Spatial (area averaging) and temporal (averaging) downsampling, streaming."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from ._errors import MotionError

__all__ = ["downsample_chunks", "downsample_spatial", "downsample_temporal", "downsampled_shape"]


def _check_factor(name: str, factor: int) -> int:
    if isinstance(factor, bool) or int(factor) != factor or factor < 1:
        raise MotionError(f"{name} must be a whole number >= 1, got {factor!r}")
    return int(factor)


def downsampled_shape(frame_shape: tuple[int, int], spatial_ds: int) -> tuple[int, int]:
    """Frame shape after spatial downsampling: ``(h // f, w // f)``; the last
    ``h % f`` rows and ``w % f`` columns are dropped."""
    f = _check_factor("spatial_ds", spatial_ds)
    h, w = frame_shape
    if h // f < 1 or w // f < 1:
        raise MotionError(f"spatial_ds={f} is larger than the frame {frame_shape}; use a smaller factor")
    return h // f, w // f


def downsample_spatial(frames: np.ndarray, spatial_ds: int) -> np.ndarray:
    """Area-average non-overlapping ``f x f`` blocks of each frame.

    Parameters
    ----------
    frames : (t, h, w) or (h, w) array
    spatial_ds : int
        Factor ``f``; rows and columns beyond a multiple of ``f`` are dropped.

    Returns
    -------
    float32 array of shape (t, h // f, w // f) or (h // f, w // f)

    Examples
    --------
    >>> import numpy as np
    >>> downsample_spatial(np.arange(16, dtype=np.float32).reshape(4, 4), 2)
    array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
    """
    arr = np.asarray(frames)
    if arr.ndim not in (2, 3):
        raise MotionError(f"downsample_spatial needs (t, h, w) or (h, w), got shape {arr.shape}")
    f = _check_factor("spatial_ds", spatial_ds)
    hh, ww = downsampled_shape(arr.shape[-2:], f)
    if f == 1:
        return arr.astype(np.float32, copy=True)
    lead = arr.shape[:-2]
    block = arr[..., : hh * f, : ww * f].astype(np.float32, copy=False)
    out = block.reshape(*lead, hh, f, ww, f).mean(axis=(-3, -1), dtype=np.float64)
    return out.astype(np.float32)


def downsample_temporal(frames: np.ndarray, temporal_ds: int) -> np.ndarray:
    """Average non-overlapping groups of ``temporal_ds`` frames; a last group
    with fewer frames is averaged over what it has."""
    arr = np.asarray(frames)
    if arr.ndim != 3:
        raise MotionError(f"downsample_temporal needs (t, h, w), got shape {arr.shape}")
    k = _check_factor("temporal_ds", temporal_ds)
    if k == 1:
        return arr.astype(np.float32, copy=True)
    t = arr.shape[0]
    full = (t // k) * k
    parts = []
    if full:
        parts.append(arr[:full].astype(np.float32, copy=False).reshape(t // k, k, *arr.shape[1:]).mean(axis=1))
    if full < t:
        parts.append(arr[full:].astype(np.float32, copy=False).mean(axis=0, keepdims=True))
    return np.concatenate(parts).astype(np.float32, copy=False)


def downsample_chunks(
    chunks: Iterable[np.ndarray], *, spatial_ds: int = 1, temporal_ds: int = 1
) -> Iterator[np.ndarray]:
    """Downsample a stream of ``(t, h, w)`` chunks.

    Temporal groups never straddle a gap: frames left over at the end of a
    chunk are carried into the next one, so the result equals downsampling the
    whole movie at once (the last group of the movie may be shorter). Memory is
    one chunk plus fewer than ``temporal_ds`` carried frames.

    Yields
    ------
    float32 (t', h // spatial_ds, w // spatial_ds) arrays (never empty).
    """
    fs = _check_factor("spatial_ds", spatial_ds)
    ft = _check_factor("temporal_ds", temporal_ds)
    carry: np.ndarray | None = None
    for chunk in chunks:
        small = downsample_spatial(chunk, fs) if fs > 1 else np.asarray(chunk, dtype=np.float32)
        if small.ndim != 3:
            raise MotionError(f"chunks must be (t, h, w) arrays, got shape {small.shape}")
        if carry is not None and carry.shape[0]:
            if carry.shape[1:] != small.shape[1:]:
                raise MotionError(f"chunk frame shape {small.shape[1:]} differs from the previous {carry.shape[1:]}")
            small = np.concatenate([carry, small])
        full = (small.shape[0] // ft) * ft
        carry = small[full:].copy()
        if full:
            yield downsample_temporal(small[:full], ft) if ft > 1 else small[:full]
    if carry is not None and carry.shape[0]:
        yield downsample_temporal(carry, ft)
