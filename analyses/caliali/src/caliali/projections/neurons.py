"""Neuron images: the local correlation image Cn (8 neighbours), accumulated
over chunks, and the peak-to-noise ratio PNR."""

from __future__ import annotations

import numpy as np

from ._errors import ProjectionError
from .preprocess import moving_median

__all__ = ["CorrelationAccumulator", "correlation_image", "peak_to_noise"]

# (dy, dx) of the neighbour each cross-product sum pairs a pixel with; the
# other four of the 8 neighbours are the same pairs seen from the other side.
_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _pair_slices(dy: int, dx: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices (a, b) so that ``img[a]`` and ``img[b]`` are pixel/neighbour pairs."""

    def span(d: int) -> tuple[slice, slice]:
        if d > 0:
            return slice(0, -d), slice(d, None)
        if d < 0:
            return slice(-d, None), slice(0, d)
        return slice(None), slice(None)

    (ya, yb), (xa, xb) = span(dy), span(dx)
    return (ya, xa), (yb, xb)


class CorrelationAccumulator:
    """Streaming local correlation image of a ``(t, h, w)`` movie.

    Running sums (of values, squares and products with 4 of the 8 neighbours)
    are kept in float64, so frames can be added in any number of chunks and
    the result equals the correlation image of the concatenated movie.

    Parameters
    ----------
    frame_shape : (h, w)
    """

    def __init__(self, frame_shape: tuple[int, int]):
        self.frame_shape = tuple(int(n) for n in frame_shape)
        h, w = self.frame_shape
        self.n = 0
        self.s1 = np.zeros((h, w))
        self.s2 = np.zeros((h, w))
        self.cross = []
        for dy, dx in _OFFSETS:
            a, _ = _pair_slices(dy, dx)
            self.cross.append(np.zeros(np.empty((h, w))[a].shape))

    def add(self, frames: np.ndarray) -> None:
        """Fold ``frames`` (t, h, w) into the sums."""
        x = np.asarray(frames, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != self.frame_shape:
            raise ProjectionError(f"expected (t, {self.frame_shape[0]}, {self.frame_shape[1]}) frames, got {x.shape}")
        if len(x) == 0:
            return
        self.n += len(x)
        self.s1 += x.sum(axis=0, dtype=np.float64)
        self.s2 += np.einsum("thw,thw->hw", x, x, dtype=np.float64)
        for acc, (dy, dx) in zip(self.cross, _OFFSETS, strict=True):
            a, b = _pair_slices(dy, dx)
            acc += np.einsum("thw,thw->hw", x[(slice(None), *a)], x[(slice(None), *b)], dtype=np.float64)

    def result(self) -> np.ndarray:
        """(h, w) float32: each pixel's mean Pearson correlation with its 8
        neighbours (fewer at the frame edge); 0 where a pixel is constant."""
        h, w = self.frame_shape
        if self.n < 2:
            return np.zeros((h, w), dtype=np.float32)
        n = float(self.n)
        mean = self.s1 / n
        var = np.maximum(self.s2 / n - mean * mean, 0.0)
        std = np.sqrt(var)
        total = np.zeros((h, w))
        count = np.zeros((h, w))
        for acc, (dy, dx) in zip(self.cross, _OFFSETS, strict=True):
            a, b = _pair_slices(dy, dx)
            denom = std[a] * std[b]
            cov = acc / n - mean[a] * mean[b]
            with np.errstate(divide="ignore", invalid="ignore"):
                corr = np.where(denom > 0, cov / denom, 0.0)
            total[a] += corr
            total[b] += corr
            count[a] += 1
            count[b] += 1
        return (total / count).astype(np.float32)


def correlation_image(frames: np.ndarray) -> np.ndarray:
    """Local correlation image (8 neighbours) of a ``(t, h, w)`` movie.

    References
    ----------
    .. [1] Smith, S. L. & Häusser, M. (2010). Parallel processing of visual
       space by neighboring neurons in mouse visual cortex. Nature
       Neuroscience 13, 1144-1149.
    .. [2] Zhou, P. et al. (2018). Efficient and accurate extraction of in vivo
       calcium signals from microendoscopic video data. eLife 7, e28728.
    """
    x = np.asarray(frames)
    if x.ndim != 3:
        raise ProjectionError(f"correlation_image needs a (t, h, w) movie, got shape {x.shape}")
    acc = CorrelationAccumulator(x.shape[1:])
    acc.add(x)
    return acc.result()


def peak_to_noise(frames: np.ndarray, noise: np.ndarray, *, window: int = 10) -> np.ndarray:
    """Peak-to-noise ratio: max over time of a ``window``-frame moving median,
    divided by the noise level (the median suppresses single-frame outliers).

    Parameters
    ----------
    frames : (t, h, w) array
        Baseline-subtracted frames.
    noise : (h, w) array
        Noise standard deviation per pixel.

    Returns
    -------
    (h, w) float32, 0 where the noise is 0.

    References
    ----------
    .. [1] Zhou, P. et al. (2018). eLife 7, e28728.
    """
    peak = moving_median(frames, window).max(axis=0)
    sd = np.asarray(noise, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, peak / sd, 0.0).astype(np.float32)
