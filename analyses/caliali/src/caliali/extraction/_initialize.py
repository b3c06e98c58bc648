"""Greedy initialisation of one temporal batch: local rank-1 fits around seeds, with peeling.

The batch is high-passed once, then processed patch by patch (square spatial
patches with overlap): each seed belongs to the patch whose centre is nearest,
and its fit and peeling use only a copy of that patch's pixels, so the working
memory is the batch, its high-passed copy and one patch.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from caliali._cv2 import cv2

from ._deconv import deconvolve_trace
from ._footprints import box_around
from ._summary import highpass, highpass_kernel, noise_level

__all__ = ["patch_grid", "initialize_batch", "SeedFit"]

# The per-pixel baseline is the median of every 5th frame: as robust, 5x cheaper.
_MEDIAN_STEP = 5


class SeedFit:
    """Footprint image on a global box and the trace of one seed in one batch."""

    __slots__ = ("box", "image", "trace")

    def __init__(self, box, image, trace):
        self.box, self.image, self.trace = box, image, trace


def patch_grid(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of patches of ``size`` with ``overlap`` covering ``length``."""
    if length <= size:
        return [0]
    stride = max(1, size - overlap)
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def _fit_seed(yp, hyp, ky, kx, *, gSig, box_radius, region_radius, min_pnr, kernel):
    """Rank-1 fit for the seed at (ky, kx) of the patch; returns (region box, image, trace) or None."""
    t, h, w = yp.shape
    center = hyp[:, ky, kx]
    sn = float(noise_level(center))
    if sn <= 0 or center.max() / sn < min_pnr:
        return None
    y0, y1, x0, x1 = box_around(ky, kx, box_radius, (h, w))
    hy = hyp[:, y0:y1, x0:x1].reshape(t, -1)
    cc = center - center.mean()
    # Pearson correlation of every box pixel with the centre; cc is zero-mean, so cc @ hy needs no centring.
    var = np.einsum("ti,ti->i", hy, hy) - t * np.square(hy.mean(axis=0))
    norms = np.sqrt(np.maximum(var, 0)) * np.sqrt(cc @ cc)
    corr = (cc @ hy) / np.where(norms > 0, norms, 1)
    near = np.zeros((y1 - y0, x1 - x0), bool)
    near[max(0, ky - y0 - 1) : ky - y0 + 2, max(0, kx - x0 - 1) : kx - x0 + 2] = True
    members = near.ravel() & (corr > 0.5)
    members[(ky - y0) * (x1 - x0) + kx - x0] = True
    trace = deconvolve_trace(hy[:, members].mean(axis=1), p=1)
    c = trace.c
    if c.max() <= 0:
        return None
    raw = yp[:, y0:y1, x0:x1].reshape(t, -1)
    background_pixels = corr < 0.3
    columns = [c, np.ones(t, np.float32)]
    if background_pixels.sum() >= 10:
        picked = np.nonzero(background_pixels)[0][:: max(1, int(background_pixels.sum()) // 200)]
        columns.insert(1, np.median(raw[:, picked], axis=1))
    x = np.stack(columns, axis=1).astype(np.float32)
    gram = (x.T @ x).astype(np.float64)
    gram += 1e-9 * np.trace(gram) * np.eye(x.shape[1])
    coef = np.linalg.solve(gram, (x.T @ raw).astype(np.float64))
    a = np.maximum(coef[0], 0).reshape(y1 - y0, x1 - x0).astype(np.float32)
    # The footprint lives in the neuron's region: one connected blob around the seed.
    ry0, ry1, rx0, rx1 = box_around(ky, kx, region_radius, (h, w))
    region = np.zeros_like(a)
    region[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] = a[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0]
    peak = region[max(0, ky - y0 - 1) : ky - y0 + 2, max(0, kx - x0 - 1) : kx - x0 + 2].max()
    if peak <= 0:
        return None
    labels, _ = ndimage.label(region >= 0.2 * peak)
    seed_label = labels[ky - y0, kx - x0]
    if seed_label == 0:
        seed_label = labels[max(0, ky - y0 - 1) : ky - y0 + 2, max(0, kx - x0 - 1) : kx - x0 + 2].max()
    region[labels != seed_label] = 0
    if np.count_nonzero(region) < 3:
        return None
    # Peel the fitted neuron off the raw and high-passed patch.
    yp[:, y0:y1, x0:x1] -= c[:, None, None] * region[None]
    ha = cv2.filter2D(region, cv2.CV_32F, kernel, borderType=cv2.BORDER_CONSTANT)
    hyp[:, y0:y1, x0:x1] -= c[:, None, None] * ha[None]
    image = region[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0]
    return (ry0, ry1, rx0, rx1), image, c


def initialize_batch(
    frames: np.ndarray,
    seeds: np.ndarray,
    *,
    gSig: float,
    min_pnr: float,
    patch_size: int = 64,
    patch_overlap: int = 32,
    box_factor: float = 6.0,
    region_radius: int,
) -> list[SeedFit | None]:
    """Fit every seed in one batch of frames (t, h, w); ``None`` where the seed is silent in this batch.

    References
    ----------
    Zhou, P. et al. eLife 7, e28728 (2018), greedy initialisation of CNMF-E.
    """
    t, h, w = frames.shape
    kernel = highpass_kernel(gSig)
    box_radius = int(round(box_factor * gSig))
    ys, xs = patch_grid(h, patch_size, patch_overlap), patch_grid(w, patch_size, patch_overlap)
    centres_y = np.array(ys) + min(patch_size, h) / 2
    centres_x = np.array(xs) + min(patch_size, w) / 2
    owner_y = np.abs(seeds[:, 0, None] - centres_y[None]).argmin(axis=1) if len(seeds) else np.zeros(0, int)
    owner_x = np.abs(seeds[:, 1, None] - centres_x[None]).argmin(axis=1) if len(seeds) else np.zeros(0, int)
    fits: list[SeedFit | None] = [None] * len(seeds)
    high = highpass(frames, kernel)  # once for the batch; each patch works on its own copy of a window
    high -= np.median(high[::_MEDIAN_STEP], axis=0)
    for iy, py in enumerate(ys):
        for ix, px in enumerate(xs):
            mine = np.nonzero((owner_y == iy) & (owner_x == ix))[0]
            if mine.size == 0:
                continue
            sy, sx = slice(py, min(h, py + patch_size)), slice(px, min(w, px + patch_size))
            yp = frames[:, sy, sx].copy()
            hyp = high[:, sy, sx].copy()
            for k in mine:  # seeds arrive strongest first
                fit = _fit_seed(
                    yp,
                    hyp,
                    int(seeds[k, 0]) - py,
                    int(seeds[k, 1]) - px,
                    gSig=gSig,
                    box_radius=box_radius,
                    region_radius=region_radius,
                    min_pnr=min_pnr,
                    kernel=kernel,
                )
                if fit is not None:
                    (y0, y1, x0, x1), image, c = fit
                    fits[k] = SeedFit((y0 + py, y1 + py, x0 + px, x1 + px), image, c)
    return fits
