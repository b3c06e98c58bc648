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

from ._footprints import Footprints

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


def clean_footprint(image: np.ndarray, *, threshold: float = 0.1) -> np.ndarray:
    """Zero values below ``threshold`` x max and keep the connected blob holding the maximum."""
    peak = image.max()
    if peak <= 0:
        return np.zeros_like(image)
    mask = image >= threshold * peak
    labels, _ = ndimage.label(mask)
    keep = labels == labels[np.unravel_index(np.argmax(image), image.shape)]
    return np.where(keep, image, 0).astype(np.float32)


def spatial_hals(
    footprints: Footprints,
    yct: list[np.ndarray],
    cct: np.ndarray,
    *,
    gSig: float,
    sweeps: int = 2,
    threshold: float = 0.1,
) -> Footprints:
    """Footprints updated from Y C^T (per neuron box) and C C^T, searched near the current support.

    The sums run over every batch, so each footprint is the least-squares fit
    weighted by the neuron's activity: batches where it is silent contribute nothing.
    """
    images = [im.copy() for im in footprints.images]
    grow = ndimage.generate_binary_structure(2, 1)
    n_grow = max(1, int(round(gSig / 2)))
    neighbours = footprints.overlap_neighbours()
    allowed = [ndimage.binary_dilation(im > 0, grow, iterations=n_grow) for im in images]
    for _ in range(sweeps):
        for k in range(len(images)):
            if cct[k, k] <= 0:
                continue
            num = yct[k].astype(np.float32, copy=True)
            for j in neighbours[k]:
                if j == k or cct[j, k] == 0:
                    continue
                ov = footprints.box_overlap(k, j)
                if ov is not None:
                    num[ov[0]] -= cct[j, k] * images[j][ov[1]]
            images[k] = clean_footprint(np.where(allowed[k], np.maximum(num / cct[k, k], 0), 0), threshold=threshold)
    return Footprints(footprints.dims, footprints.boxes, images)
