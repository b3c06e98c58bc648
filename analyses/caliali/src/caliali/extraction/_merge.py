"""Merging duplicated components: overlapping footprints with correlated traces.

Traces may be full-length trace files (K x T on disk): correlations are
accumulated a block of frames at a time, for the pairs of components whose
footprints touch only, and a group is merged from its members' traces alone,
so memory holds a block of frames of every trace or the full traces of one
group, never K x T.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.csgraph import connected_components

from ._footprints import Footprints
from ._traces import TraceFile

__all__ = ["merge_components"]

Traces = np.ndarray | TraceFile  # (K, T)
_BLOCK_BYTES = 32 * 2**20  # float64 block of every trace, when no batch length is given


def _blocks(n_frames: int, k: int, batch_frames: int | None) -> list[tuple[int, int]]:
    step = int(batch_frames) if batch_frames else max(1, _BLOCK_BYTES // (8 * max(k, 1)))
    return [(t0, min(t0 + step, n_frames)) for t0 in range(0, n_frames, step)]


def pair_correlation(
    c: Traces, first: np.ndarray, second: np.ndarray, *, batch_frames: int | None = None
) -> np.ndarray:
    """Pearson correlation of the traces ``c[first[p]]`` and ``c[second[p]]`` for every pair p.

    ``c`` (K, T) is an array or a `TraceFile`, read ``batch_frames`` frames
    at a time (default: blocks of 32 MiB): one pass for the means, one for the
    sums of centred products, in float64. A constant trace correlates 0 with
    everything.
    """
    k, n_frames = c.shape
    blocks = _blocks(n_frames, k, batch_frames)
    means = np.zeros(k, np.float64)
    for t0, t1 in blocks:
        means += np.asarray(c[:, t0:t1], np.float64).sum(axis=1)
    means /= max(n_frames, 1)
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    order = np.argsort(first, kind="stable")
    starts = np.searchsorted(first[order], np.arange(k + 1))
    squares, products = np.zeros(k, np.float64), np.zeros(first.size, np.float64)
    for t0, t1 in blocks:
        z = np.asarray(c[:, t0:t1], np.float64) - means[:, None]
        squares += np.einsum("kt,kt->k", z, z)
        for i in np.unique(first):
            pairs = order[starts[i] : starts[i + 1]]
            products[pairs] += z[second[pairs]] @ z[i]
        del z
    norms = np.sqrt(squares)
    norms[norms <= 0] = 1.0  # a constant trace: all its centred values are 0
    return products / (norms[first] * norms[second])


def _merge_group(footprints: Footprints, members: np.ndarray, cg: np.ndarray):
    """Rank-1 non-negative fit of a group's summed activity: (box, unit-norm image, trace, projection) or None."""
    # The merged footprint covers every member's box: one cell found as two halves stays whole.
    member_boxes = np.array([footprints.boxes[m] for m in members])
    y0, x0 = member_boxes[:, [0, 2]].min(axis=0)
    y1, x1 = member_boxes[:, [1, 3]].max(axis=0)
    stack = np.zeros((members.size, y1 - y0, x1 - x0), np.float32)
    for i, m in enumerate(members):
        by0, by1, bx0, bx1 = footprints.boxes[m]
        stack[i, by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] = footprints.images[m]
    ag = stack.reshape(members.size, -1).T  # (pixels, m)
    trace = (ag.sum(axis=0)[:, None] * cg).sum(axis=0)
    for _ in range(10):
        a = np.maximum(ag @ (cg @ trace), 0) / max(float(trace @ trace), 1e-12)
        trace = np.maximum(cg.T @ (ag.T @ a), 0) / max(float(a @ a), 1e-12)
    norm = float(np.sqrt(a @ a))
    if norm <= 0:
        return None  # the group's activity cancels out: nothing left to keep
    a /= norm  # unit-norm footprints, like every other component: A C is unchanged
    trace *= norm
    return (int(y0), int(y1), int(x0), int(x1)), a.reshape(y1 - y0, x1 - x0), trace, ag.T @ a


def merge_components(
    footprints: Footprints,
    c: Traces,
    c_raw: Traces | None = None,
    *,
    merge_thr: float = 0.65,
    batch_frames: int | None = None,
    directory=None,
) -> tuple[Footprints, Traces, Traces | None, int]:
    """Merge groups of components whose footprints overlap or touch and whose traces correlate above ``merge_thr``.

    Each group becomes the rank-1 non-negative approximation of its summed
    activity A_g C_g (alternating least squares). ``c`` and ``c_raw`` (K, T)
    are arrays or `TraceFile` s; ``c_raw`` may be None (then None is
    returned for it). Returns the new footprints, C, C_raw and the number of
    merges; after a merge the new traces are `TraceFile` s in ``directory``
    (default: that of ``c``, or the system temporary folder), written one
    component at a time; without one the inputs are returned as they are.
    Correlations are computed ``batch_frames`` frames at a time
    (`pair_correlation`).

    References
    ----------
    Pnevmatikakis, E. A. et al. Simultaneous denoising, deconvolution, and demixing
    of calcium imaging data. Neuron 89, 285-299 (2016); Zhou, P. et al. eLife 7, e28728 (2018).
    """
    k = len(footprints)
    if k < 2:
        return footprints, c, c_raw, 0
    overlap = np.triu(footprints.touching(grow=1), 1)
    first, second = np.nonzero(overlap)
    if first.size == 0:
        return footprints, c, c_raw, 0
    linked = pair_correlation(c, first, second, batch_frames=batch_frames) > merge_thr
    if not linked.any():
        return footprints, c, c_raw, 0
    link = np.zeros((k, k), bool)
    link[first[linked], second[linked]] = True
    n_groups, labels = connected_components(link, directed=False)
    if directory is None:
        directory = getattr(c, "directory", None)
    new_c = TraceFile((n_groups, c.shape[1]), directory=directory)
    new_raw = None if c_raw is None else TraceFile((n_groups, c.shape[1]), directory=directory)
    boxes, images, spreading = [], [], []
    merges = 0
    for g in range(n_groups):
        members = np.nonzero(labels == g)[0]
        row = len(boxes)
        if members.size == 1:
            m = members[0]
            boxes.append(footprints.boxes[m]), images.append(footprints.images[m])
            spreading.append(bool(footprints.spreading[m]))
            new_c[row] = c[m]
            if new_raw is not None:
                new_raw[row] = c_raw[m]
            continue
        merges += members.size - 1
        fit = _merge_group(footprints, members, np.asarray(c[members], np.float32))
        if fit is None:
            continue
        box, image, trace, weights = fit
        boxes.append(box), images.append(image)
        spreading.append(True)  # a new footprint: it may spread over the merged cell
        new_c[row] = trace
        if new_raw is not None:
            new_raw[row] = np.asarray(c_raw[members], np.float32).T @ weights
    if len(boxes) < n_groups:  # groups whose activity cancelled out leave no row
        new_c = new_c.take(range(len(boxes)))
        new_raw = None if new_raw is None else new_raw.take(range(len(boxes)))
    return Footprints(footprints.dims, boxes, images, np.array(spreading, bool)), new_c, new_raw, merges
