"""Greedy initialisation of one temporal batch: local rank-1 fits around seeds, with peeling.

The batch is high-passed once, then processed patch by patch (square spatial
patches with overlap): each seed belongs to the patch whose centre is nearest,
and its fit and peeling use only a copy of that patch's window (the patch and a
margin of the seed region's radius around it), so the working memory is the
batch, its high-passed copy and one window.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from caliali._cv2 import cv2

from ._deconv import deconvolve_trace
from ._footprints import box_around
from ._summary import highpass, highpass_kernel, noise_level

__all__ = ["patch_grid", "initialize_batch", "batch_min_pnr", "SeedFit"]

# The per-pixel baseline is the median of every 5th frame: as robust, 5x cheaper.
_MEDIAN_STEP = 5


class SeedFit:
    """Footprint image on a global box and the trace of one seed in one batch."""

    __slots__ = ("box", "image", "trace")

    def __init__(self, box, image, trace):
        self.box, self.image, self.trace = box, image, trace


def batch_min_pnr(min_pnr: float, frames: int, total: int) -> float:
    """The seed threshold ``min_pnr`` (set for the PNR image, a peak over all ``total`` frames) as it
    applies to one batch of ``frames``: ``min_pnr * sqrt(ln frames / ln total)``.

    A seed is fitted in a batch where its centre's peak-to-noise ratio reaches the threshold. The
    PNR image the threshold was chosen on holds each pixel's peak over the whole recording, and the
    peak of noise grows with the frames it is taken over, as sqrt(2 ln n): one batch of 400 of 2,000
    frames reaches 0.89 of it. Held to the whole recording's level, a neuron that stood out in the
    image fell short in most of its batches, and its first footprint came from its best batch alone,
    or from none (figures in the caliali benchmarks README, *The seed threshold in each batch*).
    """
    if frames >= total or total < 2:
        return float(min_pnr)
    if frames < 2:
        return 0.0  # no noise to measure over one frame: the batch's check (noise > 0) drops the seed
    return float(min_pnr) * float(np.sqrt(np.log(frames) / np.log(total)))


def patch_grid(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of patches of ``size`` with ``overlap`` covering ``length``."""
    if length <= size:
        return [0]
    stride = max(1, size - overlap)
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def _climb(image: np.ndarray, y: int, x: int) -> tuple[int, int]:
    """The local maximum of ``image`` reached from (y, x) by steps to the highest of the 8 neighbours."""
    while True:
        y0, x0 = max(0, y - 1), max(0, x - 1)
        near = image[y0 : y + 2, x0 : x + 2]
        dy, dx = np.unravel_index(int(np.argmax(near)), near.shape)
        if near[dy, dx] <= image[y, x]:
            return y, x
        y, x = y0 + int(dy), x0 + int(dx)


def _seed_region(a: np.ndarray, cy: int, cx: int, *, gSig: float, region_radius: int) -> np.ndarray | None:
    """The seed's own part of a fitted image ``a`` (on the fit's box), or None when too small.

    The part is the seed's basin of the image at or above 0.2 x the top of the hill the seed sits
    on (reached by steepest ascent: a broad cell has seeds on its flank, whose basin measured from
    the seed itself was the sliver between seed and top), within
    the square of half-width ``region_radius`` around the seed: a watershed of the (lightly
    smoothed) image from its maxima, so a neighbouring cell that touches this one is cut off
    along the valley between them. Cut along the square instead, touching cells kept a straight
    edge between them that the spatial updates never moved; a cell larger than the square is
    cut by it here and grows beyond it in the spatial updates.
    """
    y0, y1, x0, x1 = box_around(cy, cx, region_radius, a.shape)
    square = np.zeros(a.shape, bool)
    square[y0:y1, x0:x1] = True
    smooth = ndimage.gaussian_filter(a, max(0.5, gSig / 4), mode="constant") * square
    cy, cx = _climb(smooth, cy, cx)  # a seed on the flank of its cell: the basin starts at the cell's top
    peak = float(smooth[cy, cx])
    if peak <= 0:
        return None
    above = smooth >= 0.2 * peak
    # markers: the seed, and every other maximum standing 0.2 x peak above the saddle that joins it
    # to higher ground (a neighbour's peak, not a bump of noise on a broad cell's flat top)
    tops, n_tops = ndimage.label(h_maxima(smooth, 0.2 * peak) & above)
    markers = np.zeros(a.shape, np.int32)
    if n_tops:
        centres = np.array(ndimage.center_of_mass(above, tops, range(1, n_tops + 1))).reshape(-1, 2)
        far = np.hypot(centres[:, 0] - cy, centres[:, 1] - cx) > gSig
        own = int(tops[cy, cx])  # the top the seed climbed onto, flat and wide as it may be
        if own:
            far[own - 1] = False
            markers[tops == own] = 1
        for label in np.nonzero(far)[0] + 1:
            markers[tops == label] = label + 1
    markers[cy, cx] = 1  # the seed's top: a maximum within gSig of it is the same cell
    basins = watershed(-smooth, markers, mask=above)
    region = np.where(basins == 1, a, 0).astype(np.float32)
    if np.count_nonzero(region) < 3:
        return None
    return region


def _fit_seed(yp, hyp, ky, kx, *, sn, gSig, box_radius, region_radius, min_pnr, kernel):
    """Rank-1 fit for the seed at (ky, kx) of the patch, whose centre's noise is ``sn``; returns
    (region box, image, trace) or None."""
    t, h, w = yp.shape
    center = hyp[:, ky, kx]
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
    region = _seed_region(a, ky - y0, kx - x0, gSig=gSig, region_radius=region_radius)
    if region is None:
        return None
    ry0, ry1, rx0, rx1 = box_around(ky, kx, region_radius, (h, w))
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
    # each pixel's noise, once for the batch: peeling a fitted neighbour off takes its smooth trace away,
    # not the frame-to-frame noise this measures (one call for the batch: 20x less time than per seed)
    noise = noise_level(high)
    for iy, py in enumerate(ys):
        for ix, px in enumerate(xs):
            mine = np.nonzero((owner_y == iy) & (owner_x == ix))[0]
            if mine.size == 0:
                continue
            # the patch's window reaches region_radius beyond it: a seed near the patch's edge
            # is fitted whole, not cut straight along the edge
            wy, wx = max(0, py - region_radius), max(0, px - region_radius)
            sy = slice(wy, min(h, py + patch_size + region_radius))
            sx = slice(wx, min(w, px + patch_size + region_radius))
            yp = frames[:, sy, sx].copy()
            hyp = high[:, sy, sx].copy()
            for k in mine:  # seeds arrive strongest first
                fit = _fit_seed(
                    yp,
                    hyp,
                    int(seeds[k, 0]) - wy,
                    int(seeds[k, 1]) - wx,
                    sn=float(noise[int(seeds[k, 0]), int(seeds[k, 1])]),
                    gSig=gSig,
                    box_radius=box_radius,
                    region_radius=region_radius,
                    min_pnr=min_pnr,
                    kernel=kernel,
                )
                if fit is not None:
                    (y0, y1, x0, x1), image, c = fit
                    fits[k] = SeedFit((y0 + wy, y1 + wy, x0 + wx, x1 + wx), image, c)
    return fits
