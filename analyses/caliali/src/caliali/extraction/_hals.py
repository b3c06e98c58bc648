"""Hierarchical alternating least squares updates of traces and footprints.

References
----------
Cichocki, A., Zdunek, R. & Amari, S. Hierarchical ALS algorithms for nonnegative
matrix and 3D tensor factorization. ICA 2007, LNCS 4666, 169-176.
Zhou, P. et al. eLife 7, e28728 (2018).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._footprints import Footprints, box_intersection, tight_box

__all__ = ["temporal_hals", "spatial_hals", "clean_footprint"]


def temporal_hals(aty: np.ndarray, ata: np.ndarray, c0: np.ndarray, *, sweeps: int = 3) -> np.ndarray:
    """Unconstrained traces C_raw (K, t) of one batch from A^T Y (K, t) and A^T A.

    Non-negative traces are used for the neighbours while sweeping; the returned
    traces are each neuron's last residual-corrected estimate, noise included,
    for deconvolution.
    """
    c = np.maximum(c0, 0).astype(np.float32, copy=True)
    raw = np.zeros_like(c)
    neighbours = [np.nonzero(row)[0] for row in ata]
    for _ in range(sweeps):
        for k, nb in enumerate(neighbours):
            if ata[k, k] <= 0:
                raw[k] = 0
                c[k] = 0
                continue
            r = c[k] + (aty[k] - ata[k, nb] @ c[nb]) / ata[k, k]
            raw[k] = r
            np.maximum(r, 0, out=c[k])
    return raw


def clean_footprint(
    values: np.ndarray, mask: np.ndarray | None = None, *, threshold: float = 0.1, noise_sigmas: float = 3.0
) -> np.ndarray:
    """The connected blob of ``values`` holding the maximum, above both ``threshold`` x max and the noise.

    ``values`` are a footprint's unconstrained least-squares values over its
    search region ``mask`` (default: everywhere). A neuron adds only positive
    values, so the negative ones measure the fit's noise: pixels below
    ``noise_sigmas`` times their root mean square are noise, whatever the
    neuron's brightness. Without that floor, noise around a dim neuron stays
    connected to it and the blob spreads over its whole search region. The
    blob is found on a 3 x 3 median of the values (single noisy pixels neither
    join nor split it); the values kept are the fit's own.
    """
    region = np.ones(values.shape, bool) if mask is None else mask
    inside = np.where(region, values, 0).astype(np.float32)
    peak = float(inside.max()) if inside.size else 0.0
    if peak <= 0:
        return np.zeros(values.shape, np.float32)
    negative = inside[region & (inside < 0)]
    noise = float(np.sqrt(np.mean(np.square(negative, dtype=np.float64)))) if negative.size >= 8 else 0.0
    level = max(threshold * peak, noise_sigmas * noise)
    smooth = ndimage.median_filter(inside, size=3, mode="nearest") if min(inside.shape) >= 3 else inside
    labels, _ = ndimage.label((smooth >= level) & region)
    at_peak = labels[np.unravel_index(np.argmax(np.where(labels > 0, smooth, -np.inf)), values.shape)]
    if at_peak == 0:
        return np.zeros(values.shape, np.float32)
    # the blob holding the strongest (smoothed) pixel; holes inside a cell are filled from the fit
    blob = ndimage.binary_fill_holes(labels == at_peak)
    return np.where(blob, np.maximum(inside, 0), 0).astype(np.float32)


def spatial_hals(
    footprints: Footprints,
    yct: list[np.ndarray],
    cct: np.ndarray,
    search: tuple[list, list[np.ndarray], list[np.ndarray]],
    *,
    sweeps: int = 2,
    threshold: float = 0.1,
) -> Footprints:
    """Footprints updated from Y C^T over each neuron's search region and C C^T; boxes follow the new supports.

    ``search`` is (boxes, masks, rims) from :meth:`Footprints.grown`, and ``yct[k]``
    covers ``search[0][k]``. The sums run over every batch, so each footprint is
    the least-squares fit weighted by the neuron's activity: batches where it is
    silent contribute nothing. Each new footprint is cut to the box of its own
    support, so it can shrink as well as grow. A footprint that reaches the
    outer rim of its search stays `spreading` (the search, not the cell, cut
    it off); one that stays inside stops spreading for good: its edge is the
    cell's, and letting it wander in and out kept the fit from converging.
    """
    search_boxes, masks, rims = search
    boxes = list(footprints.boxes)
    images = [im.copy() for im in footprints.images]
    neighbours = footprints.overlap_neighbours(search_boxes)  # any neighbour's footprint stays in its search box
    for _ in range(sweeps):
        for k in range(len(images)):
            if cct[k, k] <= 0:
                continue
            num = yct[k].astype(np.float32, copy=True)
            for j in neighbours[k]:
                if j == k or cct[j, k] == 0:
                    continue
                ov = box_intersection(search_boxes[k], boxes[j])
                if ov is not None:
                    num[ov[0]] -= cct[j, k] * images[j][ov[1]]
            image = clean_footprint(num / cct[k, k], masks[k], threshold=threshold)
            if image.any():
                images[k], boxes[k] = tight_box(image, search_boxes[k])
            else:
                images[k] = np.zeros_like(images[k])
    # a footprint goes on spreading while its search's outer rim cuts it off
    cut = np.zeros(len(images), bool)
    for k, (image, box) in enumerate(zip(images, boxes)):
        ov = box_intersection(box, search_boxes[k])
        if ov is not None and image.any():
            cut[k] = bool((image[ov[0]] > 0)[rims[k][ov[1]]].any())
    return Footprints(footprints.dims, boxes, images, footprints.spreading & cut)
