"""Merging duplicated components: overlapping footprints with correlated traces."""

from __future__ import annotations

import numpy as np
from scipy.sparse.csgraph import connected_components

from ._footprints import Footprints

__all__ = ["merge_components"]


def _correlation(c: np.ndarray) -> np.ndarray:
    z = c - c.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("kt,kt->k", z, z))
    z /= np.where(norm > 0, norm, 1)[:, None]
    return z @ z.T


def merge_components(footprints: Footprints, c: np.ndarray, c_raw: np.ndarray, *, merge_thr: float = 0.65
                     ) -> tuple[Footprints, np.ndarray, np.ndarray, int]:
    """Merge groups of components whose footprints overlap or touch and whose traces correlate above ``merge_thr``.

    Each group becomes the rank-1 non-negative approximation of its summed
    activity A_g C_g (alternating least squares). Returns the new footprints,
    C, C_raw and the number of merges.

    References
    ----------
    Pnevmatikakis, E. A. et al. Simultaneous denoising, deconvolution, and demixing
    of calcium imaging data. Neuron 89, 285-299 (2016); Zhou, P. et al. eLife 7, e28728 (2018).
    """
    k = len(footprints)
    if k < 2:
        return footprints, c, c_raw, 0
    overlap = footprints.touching(grow=1)
    link = overlap & (_correlation(c) > merge_thr)
    np.fill_diagonal(link, False)
    if not link.any():
        return footprints, c, c_raw, 0
    n_groups, labels = connected_components(link, directed=False)
    boxes, images, new_c, new_raw = [], [], [], []
    merges = 0
    for g in range(n_groups):
        members = np.nonzero(labels == g)[0]
        if members.size == 1:
            m = members[0]
            boxes.append(footprints.boxes[m]), images.append(footprints.images[m])
            new_c.append(c[m]), new_raw.append(c_raw[m])
            continue
        merges += members.size - 1
        energy = [footprints.images[m].sum() * c[m].max() for m in members]
        lead = members[int(np.argmax(energy))]
        y0, y1, x0, x1 = footprints.boxes[lead]
        stack = np.zeros((members.size, y1 - y0, x1 - x0), np.float32)
        for i, m in enumerate(members):
            dense = footprints.dense(m)
            stack[i] = dense[y0:y1, x0:x1]
        ag = stack.reshape(members.size, -1).T  # (pixels, m)
        cg = c[members]
        trace = (ag.sum(axis=0)[:, None] * cg).sum(axis=0)
        for _ in range(10):
            a = np.maximum(ag @ (cg @ trace), 0) / max(float(trace @ trace), 1e-12)
            trace = np.maximum(cg.T @ (ag.T @ a), 0) / max(float(a @ a), 1e-12)
        norm = float(np.sqrt(a @ a))
        if norm <= 0:
            continue  # the group's activity cancels out: nothing left to keep
        a /= norm  # unit-norm footprints, like every other component: A C is unchanged
        trace *= norm
        raw = c_raw[members].T @ (ag.T @ a)
        boxes.append((y0, y1, x0, x1)), images.append(a.reshape(y1 - y0, x1 - x0))
        new_c.append(trace), new_raw.append(raw)
    return (Footprints(footprints.dims, boxes, images), np.array(new_c, np.float32),
            np.array(new_raw, np.float32), merges)
