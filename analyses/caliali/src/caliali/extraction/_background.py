"""Ring background model of CNMF-E, fitted on a spatially downsampled grid.

The fluctuating background at a pixel is predicted from the residual movie
(data minus neurons minus the per-session constant) on a ring around it,
whose radius is larger than a neuron, so the neuron itself never predicts its
own background. The ring is split into angular sectors, each with its own
weight per pixel: a few parameters per pixel instead of CNMF-E's full ring
weight matrix, which keeps the fit to sums accumulated batch by batch
(n_sectors^2 numbers per downsampled pixel) and never needs the movie whole.

Why 4 sectors rather than CNMF-E's full ring (one weight per ring pixel):
on simulated movies at a realistic noise level each extra weight mostly
carries the ring's noise into the background, so fewer weights predict the
fluctuating background better (only a noise-free background is fitted better
by more weights, which may matter on real data with a strong fluctuating
background), and the full ring's least-squares sums (n_ring^2 + n_ring
numbers per downsampled pixel) outweigh a batch of frames where 4 sectors
need 20 numbers per pixel. Measured with ``benchmarks/ring_background.py``;
figures in ``benchmarks/README.md``.
"""

from __future__ import annotations

import math

import numpy as np

from caliali._cv2 import cv2

__all__ = ["RingBackground", "downsample"]


def downsample(frames: np.ndarray, ssub: int) -> np.ndarray:
    """Area-average each frame of (t, h, w) by ``ssub`` (edges padded by replication)."""
    if ssub == 1:
        return frames
    t, h, w = frames.shape
    hd, wd = math.ceil(h / ssub), math.ceil(w / ssub)
    if hd * ssub != h or wd * ssub != w:
        frames = np.pad(frames, ((0, 0), (0, hd * ssub - h), (0, wd * ssub - w)), mode="edge")
    out = np.zeros((t, hd, wd), np.float32)
    for dy in range(ssub):
        for dx in range(ssub):
            out += frames[:, dy::ssub, dx::ssub]
    out *= 1.0 / (ssub * ssub)
    return out


_FRAMES_PER_STEP = 16  # frames of one step of the sector sums: a padded step fits in cache


def _reflect_pad(frames: np.ndarray, r: int) -> np.ndarray:
    """Pad (t, h, w) by ``r`` px on each side, mirrored as cv2.BORDER_REFLECT (edge pixel repeated)."""
    if r <= min(frames.shape[1:]):
        return np.pad(frames, ((0, 0), (r, r), (r, r)), mode="symmetric")
    t, h, w = frames.shape  # a frame smaller than the ring: reflect index by index, as OpenCV does
    return frames[:, _reflect_index(h, r)[:, None], _reflect_index(w, r)[None, :]]


def _reflect_index(n: int, r: int) -> np.ndarray:
    """Source index of each of the n + 2 r positions of a border-reflected axis (cv2.BORDER_REFLECT)."""
    idx = np.arange(-r, n + r)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n
    idx = np.mod(idx, period)
    return np.where(idx < n, idx, period - 1 - idx)


def _ring_kernels(radius: float, n_sectors: int) -> list[np.ndarray]:
    r = int(math.ceil(radius + 1))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    dist = np.hypot(yy, xx)
    ring = np.abs(dist - radius) <= 0.75
    sector = np.floor((np.arctan2(yy, xx) + np.pi) / (2 * np.pi / n_sectors)).astype(int) % n_sectors
    kernels = []
    for s in range(n_sectors):
        k = (ring & (sector == s)).astype(np.float32)
        kernels.append(k / k.sum())
    return kernels


class RingBackground:
    """Per-pixel sector weights of the ring model plus a constant per session.

    Parameters
    ----------
    dims : (h, w)
    n_sessions : int
    ring_radius : float
        Ring radius in full-resolution pixels (CNMF-E: 1.5 * gSiz, gSiz = 4 gSig).
    ssub : int
        Spatial downsampling of the background grid (bg_ssub).
    n_sectors : int
        Angular sectors of the ring, each with its own weight.

    References
    ----------
    Zhou, P. et al. eLife 7, e28728 (2018), ring model of the background.
    """

    def __init__(self, dims, n_sessions: int, *, ring_radius: float, ssub: int = 2, n_sectors: int = 4):
        self.dims = (int(dims[0]), int(dims[1]))
        self.ssub = int(ssub)
        self.small = (math.ceil(self.dims[0] / ssub), math.ceil(self.dims[1] / ssub))
        self.kernels = _ring_kernels(max(ring_radius / ssub, 1.5), n_sectors)
        # every kernel is a set of equal taps: the sector average is a sum of shifted copies
        self._taps = [(np.argwhere(k > 0), float(k[k > 0][0])) for k in self.kernels]
        self.weights = np.full((n_sectors, *self.small), 1.0 / n_sectors, np.float32)
        self.b0 = np.zeros((n_sessions, *self.dims), np.float32)
        self._reset_sums()

    def _reset_sums(self):
        n, p = len(self.kernels), self.small[0] * self.small[1]
        self._gram = np.zeros((p, n, n), np.float64)
        self._cross = np.zeros((p, n), np.float64)

    def regressors(self, residual_small: np.ndarray) -> list[np.ndarray]:
        """Sector averages of the downsampled residual (t, hs, ws), one array per sector.

        The same as filtering every frame with each sector's kernel
        (``cv2.filter2D``, reflected borders), computed as sums of shifted
        copies of a few frames at a time: each ring pixel is visited once, and
        the working set stays in cache (less CPU time than per-frame
        ``filter2D``; the cost depends on the ring's pixels, not on the number
        of sectors; figures in ``benchmarks/README.md``).
        """
        t, h, w = residual_small.shape
        r = self.kernels[0].shape[0] // 2
        out = np.empty((len(self.kernels), t, h, w), np.float32)
        for t0 in range(0, t, _FRAMES_PER_STEP):
            t1 = min(t0 + _FRAMES_PER_STEP, t)
            padded = _reflect_pad(residual_small[t0:t1], r)
            for (taps, weight), dst in zip(self._taps, out[:, t0:t1]):
                (dy, dx), rest = taps[0], taps[1:]
                np.copyto(dst, padded[:, dy : dy + h, dx : dx + w])
                for dy, dx in rest:
                    dst += padded[:, dy : dy + h, dx : dx + w]
                dst *= weight
        return list(out)

    def accumulate(self, regressors: list[np.ndarray], residual_small: np.ndarray) -> None:
        """Add one batch to the least-squares sums of the weight fit."""
        t = residual_small.shape[0]
        flat = [x.reshape(t, -1) for x in regressors]
        target = residual_small.reshape(t, -1)
        for i, xi in enumerate(flat):
            self._cross[:, i] += np.einsum("tp,tp->p", xi, target)
            for j in range(i, len(flat)):
                v = np.einsum("tp,tp->p", xi, flat[j])
                self._gram[:, i, j] += v
                if j != i:
                    self._gram[:, j, i] += v

    def refit(self) -> None:
        """Solve the per-pixel weights from the accumulated sums, then clear them."""
        n = len(self.kernels)
        diag = np.einsum("pii->p", self._gram) / n
        reg = 1e-2 * np.maximum(diag, 1e-12)[:, None, None] * np.eye(n)
        w = np.linalg.solve(self._gram + reg, self._cross[..., None])[..., 0]
        self.weights = w.T.reshape(n, *self.small).astype(np.float32)
        self._reset_sums()

    def predict_small(self, regressors: list[np.ndarray]) -> np.ndarray:
        """Predicted fluctuating background on the downsampled grid (t, hs, ws)."""
        small = regressors[0] * self.weights[0]
        for w, x in zip(self.weights[1:], regressors[1:]):
            small += x * w
        return small.astype(np.float32)

    def fluctuation(self, regressors: list[np.ndarray]) -> np.ndarray:
        """Predicted fluctuating background at full resolution (t, h, w).

        The weighted sum of the sectors and its bilinear upsampling run a few
        frames at a time, so the small frames stay in cache between the two
        (less CPU time than summing the whole batch first; the same result to
        the bit).
        """
        if self.ssub == 1:
            small = regressors[0] * self.weights[0]
            for w, x in zip(self.weights[1:], regressors[1:]):
                small += x * w
            return small.astype(np.float32)
        t = regressors[0].shape[0]
        h, w = self.dims
        hs, ws = self.small
        up = (ws * self.ssub, hs * self.ssub)  # cv2 size (width, height) of the upsampled grid
        exact = up == (w, h)
        out = np.empty((t, h, w), np.float32)
        small = np.empty((min(t, _FRAMES_PER_STEP), hs, ws), np.result_type(regressors[0], self.weights))
        for t0 in range(0, t, _FRAMES_PER_STEP):
            t1 = min(t0 + _FRAMES_PER_STEP, t)
            step = small[: t1 - t0]
            np.multiply(regressors[0][t0:t1], self.weights[0], out=step)
            for weight, x in zip(self.weights[1:], regressors[1:]):
                step += x[t0:t1] * weight
            for i, frame in enumerate(step, start=t0):
                if exact:
                    cv2.resize(frame, up, dst=out[i], interpolation=cv2.INTER_LINEAR)
                else:
                    out[i] = cv2.resize(frame, up, interpolation=cv2.INTER_LINEAR)[:h, :w]
        return out
