"""Ring background model of CNMF-E, fitted on a spatially downsampled grid.

The fluctuating background at a pixel is predicted from the residual movie
(data minus neurons minus the per-session constant) on a ring around it,
whose radius is larger than a neuron, so the neuron itself never predicts its
own background. The ring is split into angular sectors, each with its own
weight per pixel: a few parameters per pixel instead of CNMF-E's full ring
weight matrix, which keeps the fit to sums accumulated batch by batch
(n_sectors^2 numbers per downsampled pixel) and never needs the movie whole.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

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


def _ring_kernels(radius: float, n_sectors: int) -> list[np.ndarray]:
    r = int(math.ceil(radius + 1))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
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
        self.weights = np.full((n_sectors, *self.small), 1.0 / n_sectors, np.float32)
        self.b0 = np.zeros((n_sessions, *self.dims), np.float32)
        self._reset_sums()

    def _reset_sums(self):
        n, p = len(self.kernels), self.small[0] * self.small[1]
        self._gram = np.zeros((p, n, n), np.float64)
        self._cross = np.zeros((p, n), np.float64)

    def regressors(self, residual_small: np.ndarray) -> list[np.ndarray]:
        """Sector averages of the downsampled residual (t, hs, ws), one array per sector."""
        out = []
        for kernel in self.kernels:
            x = np.empty_like(residual_small)
            for i, frame in enumerate(residual_small):
                cv2.filter2D(frame, cv2.CV_32F, kernel, dst=x[i], borderType=cv2.BORDER_REFLECT)
            out.append(x)
        return out

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

    def fluctuation(self, regressors: list[np.ndarray]) -> np.ndarray:
        """Predicted fluctuating background at full resolution (t, h, w)."""
        small = regressors[0] * self.weights[0]
        for w, x in zip(self.weights[1:], regressors[1:]):
            small += x * w
        if self.ssub == 1:
            return small.astype(np.float32)
        h, w = self.dims
        hs, ws = self.small
        out = np.empty((small.shape[0], h, w), np.float32)
        for i, frame in enumerate(small):
            out[i] = cv2.resize(frame, (ws * self.ssub, hs * self.ssub), interpolation=cv2.INTER_LINEAR)[:h, :w]
        return out
