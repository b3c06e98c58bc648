"""Score a caliali result against simulated ground truth.

Neurons, strict (the headline): footprints are matched one to one by the
Hungarian assignment on the IoU (Jaccard index) of their masks, each mask the
pixels at or above 0.2 x its footprint's max; a pair counts when its IoU is at
least 0.3 (CaImAn ``register_ROIs``'s criterion, Jaccard distance below 0.7)
AND the Pearson correlation of its traces is at least 0.8, so a right trace on
a wrong footprint is not a match, nor a wrong trace on a right one. The mask
match alone (IoU F1, median IoU of its matches) is reported beside it.

Frames of reference: a result's field is not the truth's. The simulator shows
each session's movie through its own smooth deformation (up to a few px,
``fields.npy``), and motion correction registers to a template of the movie;
neither is a footprint error. So the ground truth is first brought into the
result's frame (:func:`truth_in_result_frame`): for a one-session result, the
truth as that session's movie shows it (the simulator's own warp); for an
aligned multi-session result, each pixel of the aligned frame is followed into
every session by the result's alignment fields and back into the truth by the
simulator's, and the truth is sampled at the mean of those points; otherwise
(no fields) the truth stays in its own frame. Then one global offset (what is
left, e.g. the motion-correction template's) is estimated by phase correlation
of the summed footprint images, refined (whole px, then a quarter-px grid) on
the total IoU of the mask match and kept only when it raises it, applied to the
ground truth before mask matching, and reported (with the phase-correlation
estimate): a move a fraction of a px off costs small masks much of their IoU.
CaImAn's ``register_ROIs`` with ``align_flag`` registers the two sessions'
motion-correction templates and moves one set of footprints by that field;
ground truth has no template in the movie's frame, so the summed footprints
stand in for it.

Neurons, lenient (as before, for comparison with older figures): estimated and
true neurons are matched one to one by the Hungarian assignment on (footprint
cosine) x (trace cosine), in the truth's own frame; a match counts when its
trace cosine is at least 0.8 (as in the CaliAli paper); precision, recall and
F1 follow. Alignment: the estimated backward fields are compared with
the true ones inside the result's valid mask, after removing from both the
per-pixel mean over sessions (alignment is defined up to a common
deformation); the error's median and 95th percentile are reported in px.

Layouts read: a result folder with
``arrays/A.npz`` (scipy.sparse (H*W, K), C-order pixels), ``arrays/C.npy``
(K, T), ``arrays/meta.json`` (``dims`` [H, W]) and optionally
``alignment/fields.npy`` (n_sessions, 2, H, W) and
``alignment/valid_mask.npy``; a ground-truth folder (or the simulation
folder holding ``ground_truth/``) with ``A.npy`` (K, H, W), ``C.npy``,
``fields.npy``. Ground truth is resized to the result's dims when the result
was spatially downsampled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.optimize import linear_sum_assignment

from caliali._cv2 import cv2
from caliali.exceptions import ScoreError

__all__ = [
    "AlignmentScore",
    "FrameOffset",
    "MaskScore",
    "StrictScore",
    "estimate_offset",
    "score_strict",
    "shift_footprints",
    "truth_in_result_frame",
    "footprint_masks",
    "iou_matrix",
    "match_masks",
    "NeuronScore",
    "Score",
    "cosine_matrix",
    "load_ground_truth",
    "load_result",
    "score",
    "score_alignment",
    "score_neurons",
]


@dataclass(frozen=True)
class NeuronScore:
    """Neuron detection scores; ``matches`` rows are (estimated, true, footprint cos, trace cos)."""

    n_true: int
    n_found: int
    n_matched: int
    precision: float
    recall: float
    f1: float
    trace_threshold: float
    matches: list[tuple[int, int, float, float]]


@dataclass(frozen=True)
class MaskScore:
    """Footprints matched one to one by mask IoU; ``matches`` rows are (estimated, true, IoU)."""

    n_true: int
    n_found: int
    n_matched: int
    precision: float
    recall: float
    f1: float
    iou_threshold: float
    mask_fraction: float
    median_iou: float
    matches: list[tuple[int, int, float]]


@dataclass(frozen=True)
class StrictScore:
    """Mask-IoU pairs that also pass the trace test; ``matches`` rows are (estimated, true, IoU, trace r)."""

    n_true: int
    n_found: int
    n_matched: int
    precision: float
    recall: float
    f1: float
    iou_threshold: float
    trace_threshold: float
    matches: list[tuple[int, int, float, float]]


@dataclass(frozen=True)
class FrameOffset:
    """The global offset (px, y and x) the ground truth was moved by before mask matching.

    ``dy``/``dx`` are applied (to a quarter px; 0 unless the move was confirmed, see :func:`estimate_offset`);
    ``estimate_dy``/``estimate_dx`` are the sub-pixel phase-correlation estimate; ``pairs_*`` and
    ``total_iou_*`` count the confirmed pairs (mask IoU >= threshold and, given traces, trace r >= threshold)
    and sum their IoU without the move and at the best offset tried.
    """

    dy: float
    dx: float
    estimate_dy: float
    estimate_dx: float
    pairs_unshifted: int
    pairs_shifted: int
    total_iou_unshifted: float
    total_iou_shifted: float


@dataclass(frozen=True)
class AlignmentScore:
    """Displacement error (px) inside the valid mask, after removing the common deformation."""

    median_px: float
    p95_px: float
    unaligned_median_px: float
    unaligned_p95_px: float
    per_session_median_px: list[float]
    n_pixels: int


@dataclass(frozen=True)
class Score:
    """``strict`` is the headline; ``masks`` the IoU match alone; ``neurons`` the lenient score.

    ``frame`` says which frame the truth was matched in before the global ``offset`` (see
    :func:`truth_in_result_frame`): ``"session"``, ``"aligned"`` or ``"truth"``.
    """

    neurons: NeuronScore
    alignment: AlignmentScore | None
    masks: MaskScore | None = None
    strict: StrictScore | None = None
    offset: FrameOffset | None = None
    frame: str = "truth"

    def as_dict(self) -> dict[str, Any]:
        def part(x: Any) -> Any:
            return asdict(x) if x is not None else None

        return {
            "strict": part(self.strict),
            "masks": part(self.masks),
            "frame": self.frame,
            "offset": part(self.offset),
            "neurons": part(self.neurons),
            "alignment": part(self.alignment),
        }


def cosine_matrix(x: np.ndarray | sparse.spmatrix, y: np.ndarray) -> np.ndarray:
    """Cosine similarity between the columns of ``x`` (n, a) and ``y`` (n, b): (a, b)."""
    dots = np.asarray(x.T @ y, dtype=np.float64)
    nx = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel()) if sparse.issparse(x) else np.linalg.norm(x, axis=0)
    ny = np.linalg.norm(y, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = dots / np.outer(nx, ny)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def score_neurons(
    a_est: np.ndarray | sparse.spmatrix,
    c_est: np.ndarray,
    a_true: np.ndarray,
    c_true: np.ndarray,
    *,
    trace_threshold: float = 0.8,
) -> NeuronScore:
    """Match estimated to true neurons and count matches with trace cosine >= ``trace_threshold``.

    Parameters
    ----------
    a_est : (P, K_est) array or sparse matrix
        Estimated footprints, one column per neuron (P pixels, C order).
    c_est : (K_est, T) array
        Estimated traces.
    a_true : (P, K_true) array
        True footprints on the same pixel grid.
    c_true : (K_true, T) array
        True traces.

    Returns
    -------
    NeuronScore

    References
    ----------
    .. [1] Vergara, P. et al. Nature Communications 16 (2025) (CaliAli): matching
       on footprint x trace similarity with a trace-correlation threshold.
    .. [2] Kuhn, H. W. "The Hungarian method for the assignment problem."
       Naval Research Logistics Quarterly 2 (1955).
    """
    c_est, c_true = np.asarray(c_est, dtype=np.float64), np.asarray(c_true, dtype=np.float64)
    if a_est.shape[0] != a_true.shape[0]:
        raise ScoreError(f"footprints cover {a_est.shape[0]} and {a_true.shape[0]} pixels; resize to one grid first")
    if c_est.shape[1] != c_true.shape[1]:
        raise ScoreError(f"traces have {c_est.shape[1]} and {c_true.shape[1]} frames; they must cover the same frames")
    if a_est.shape[1] != c_est.shape[0] or a_true.shape[1] != c_true.shape[0]:
        raise ScoreError("footprints and traces disagree on the number of neurons")
    n_found, n_true = c_est.shape[0], c_true.shape[0]
    matches: list[tuple[int, int, float, float]] = []
    if n_found and n_true:
        fp, tr = cosine_matrix(a_est, a_true), cosine_matrix(c_est.T, c_true.T)
        similarity = fp * np.clip(tr, 0, None)
        rows, cols = linear_sum_assignment(similarity, maximize=True)
        matches = [
            (int(i), int(j), float(fp[i, j]), float(tr[i, j]))
            for i, j in zip(rows, cols, strict=True)
            if fp[i, j] > 0 and tr[i, j] >= trace_threshold
        ]
    tp = len(matches)
    precision = tp / n_found if n_found else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return NeuronScore(n_true, n_found, tp, precision, recall, f1, trace_threshold, matches)


def footprint_masks(a: np.ndarray | sparse.spmatrix, *, fraction: float = 0.2) -> sparse.csc_array:
    """Boolean masks (P, K) of footprints ``a`` (P, K): the pixels at or above ``fraction`` x their footprint's max.

    CaImAn's ``register_ROIs`` binarises at ``max_thr`` x each component's max with ``max_thr`` 0 by default,
    i.e. every non-zero pixel; the simulator's footprints are Gaussians with tails over the whole field, so
    that would make every true mask huge. 0.2 keeps each cell's body.
    """
    m = sparse.csc_array(a, dtype=np.float64)
    m.eliminate_zeros()
    if m.shape[1] == 0:
        return sparse.csc_array(m.shape, dtype=bool)
    top = m.max(axis=0).toarray().ravel()
    cols = np.repeat(np.arange(m.shape[1]), np.diff(m.indptr))
    keep = (m.data >= fraction * top[cols]) & (m.data > 0)
    return sparse.csc_array((np.ones(int(keep.sum()), bool), (m.indices[keep], cols[keep])), shape=m.shape)


def iou_matrix(x: sparse.spmatrix | np.ndarray, y: sparse.spmatrix | np.ndarray) -> np.ndarray:
    """Intersection over union (Jaccard index) of the boolean masks in the columns of ``x`` (P, a) and ``y`` (P, b)."""
    xs, ys = sparse.csc_array(x, dtype=np.float64), sparse.csc_array(y, dtype=np.float64)
    inter = np.asarray((xs.T @ ys).toarray(), dtype=np.float64)
    area_x = np.asarray(xs.sum(axis=0)).ravel()
    area_y = np.asarray(ys.sum(axis=0)).ravel()
    union = area_x[:, None] + area_y[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match_masks(
    a_est: np.ndarray | sparse.spmatrix,
    a_true: np.ndarray | sparse.spmatrix,
    *,
    iou_threshold: float = 0.3,
    fraction: float = 0.2,
) -> MaskScore:
    """Match footprints one to one by the IoU of their thresholded masks (Hungarian assignment on IoU).

    A pair counts when its IoU is at least ``iou_threshold``: CaImAn's ``register_ROIs`` criterion (its
    ``thresh_cost`` 0.7 on the Jaccard distance 1 - IoU), so a trace on a wrong footprint is never a match.
    Unlike ``register_ROIs`` no centroid-distance cap (its ``max_dist`` 10 px) is applied: pairs that far apart
    have IoU 0 anyway.

    References
    ----------
    .. [1] Giovannucci, A. et al. CaImAn: an open source tool for scalable calcium imaging data analysis.
       eLife 8, e38173 (2019) (``register_ROIs``).
    """
    if a_est.shape[0] != a_true.shape[0]:
        raise ScoreError(f"footprints cover {a_est.shape[0]} and {a_true.shape[0]} pixels; resize to one grid first")
    m_est, m_true = footprint_masks(a_est, fraction=fraction), footprint_masks(a_true, fraction=fraction)
    n_found, n_true = m_est.shape[1], m_true.shape[1]
    matches: list[tuple[int, int, float]] = []
    if n_found and n_true:
        iou = iou_matrix(m_est, m_true)
        rows, cols = linear_sum_assignment(iou, maximize=True)
        matches = [(int(i), int(j), float(iou[i, j])) for i, j in zip(rows, cols) if iou[i, j] >= iou_threshold]
    tp = len(matches)
    precision = tp / n_found if n_found else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    median = float(np.median([m[2] for m in matches])) if matches else 0.0
    return MaskScore(n_true, n_found, tp, precision, recall, f1, iou_threshold, fraction, median, matches)


def score_strict(
    a_est: np.ndarray | sparse.spmatrix,
    c_est: np.ndarray,
    a_true: np.ndarray | sparse.spmatrix,
    c_true: np.ndarray,
    *,
    iou_threshold: float = 0.3,
    trace_threshold: float = 0.8,
    fraction: float = 0.2,
    masks: MaskScore | None = None,
) -> StrictScore:
    """The pairs of the mask-IoU match (:func:`match_masks`) whose traces also correlate >= ``trace_threshold``.

    One assignment (by IoU), two criteria: a pair counts only when its IoU is at least ``iou_threshold`` and the
    Pearson correlation of its traces at least ``trace_threshold``. ``masks`` reuses a match already made on these
    footprints.
    """
    c_est, c_true = np.asarray(c_est, dtype=np.float64), np.asarray(c_true, dtype=np.float64)
    if c_est.shape[1] != c_true.shape[1]:
        raise ScoreError(f"traces have {c_est.shape[1]} and {c_true.shape[1]} frames; they must cover the same frames")
    if a_est.shape[1] != c_est.shape[0] or a_true.shape[1] != c_true.shape[0]:
        raise ScoreError("footprints and traces disagree on the number of neurons")
    if masks is None:
        masks = match_masks(a_est, a_true, iou_threshold=iou_threshold, fraction=fraction)
    matches: list[tuple[int, int, float, float]] = []
    if masks.matches:
        est = [m[0] for m in masks.matches]
        true = [m[1] for m in masks.matches]
        r = np.sum(_zscore(c_est[est]) * _zscore(c_true[true]), axis=1) / c_est.shape[1]
        matches = [(i, j, iou, float(rr)) for (i, j, iou), rr in zip(masks.matches, r, strict=True)]
        matches = [m for m in matches if m[3] >= trace_threshold]
    tp = len(matches)
    n_found, n_true = c_est.shape[0], c_true.shape[0]
    precision = tp / n_found if n_found else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return StrictScore(n_true, n_found, tp, precision, recall, f1, masks.iou_threshold, trace_threshold, matches)


def _zscore(c: np.ndarray) -> np.ndarray:
    centred = c - c.mean(axis=1, keepdims=True)
    sd = centred.std(axis=1, keepdims=True)
    return np.divide(centred, sd, out=np.zeros_like(centred), where=sd > 0)


def shift_footprints(a: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Footprints (K, H, W) moved by ``dy`` down, ``dx`` right; what leaves the field is dropped.

    Whole px move the values as they are; a fraction of a px interpolates them (bilinear).
    """
    if dy != int(dy) or dx != int(dx):
        return ndimage.shift(a, (0, dy, dx), order=1, mode="constant", cval=0.0)
    dy, dx = int(dy), int(dx)
    out = np.zeros_like(a)
    h, w = a.shape[1:]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_y, dst_y = slice(max(-dy, 0), h - max(dy, 0)), slice(max(dy, 0), h - max(-dy, 0))
    src_x, dst_x = slice(max(-dx, 0), w - max(dx, 0)), slice(max(dx, 0), w - max(-dx, 0))
    out[:, dst_y, dst_x] = a[:, src_y, src_x]
    return out


def _summed_image(a: np.ndarray | sparse.spmatrix, dims: tuple[int, int]) -> np.ndarray:
    """Each footprint scaled to a max of 1, summed over footprints: (H, W), so bright cells do not dominate."""
    m = sparse.csc_array(a, dtype=np.float64)
    top = m.max(axis=0).toarray().ravel() if m.shape[1] else np.zeros(0)
    scale = np.divide(1.0, top, out=np.zeros_like(top), where=top > 0)
    return np.asarray(m @ scale).reshape(dims)


def estimate_offset(
    a_est: np.ndarray | sparse.spmatrix,
    a_true: np.ndarray,
    *,
    traces: tuple[np.ndarray, np.ndarray] | None = None,
    iou_threshold: float = 0.3,
    trace_threshold: float = 0.8,
    fraction: float = 0.2,
    min_pairs: int = 3,
    max_steps: int = 10,
) -> tuple[FrameOffset, MaskScore]:
    """The global offset that moves the true footprints (K, H, W) onto the result's frame, and the mask match there.

    Phase correlation of the summed footprint images (each scaled to max 1, Hann-windowed) gives a sub-pixel
    estimate; rounded to whole px (so masks keep their shape), it seeds a hill climb over the 8 neighbouring
    offsets (phase correlation alone is biased by cells cut at the border). Given traces, the median centroid
    displacement of the pairs their traces name seeds a second climb (a result that found few of the cells
    swamps phase correlation); the better end wins. An offset is scored by its confirmed
    pairs: mask-matched pairs whose traces (``traces`` = (estimated (K_est, T), true (K_true, T))) also correlate
    at least ``trace_threshold``, all mask-matched pairs when no traces are given. It is kept only with at least
    ``min_pairs`` confirmed pairs and more total IoU over them than no move has: a few stray footprints shifted
    far enough overlap some true cell by chance, and those chance pairs neither carry the cell's trace nor come
    in numbers. A result already in the truth's frame gets 0. A kept whole-px move is then refined on a
    quarter-px grid around it (the true footprints interpolated), moving only when the fit is strictly better.
    """
    dims = a_true.shape[1:]
    flat_true = a_true.reshape(len(a_true), -1).T
    z_est, z_true = (_zscore(np.asarray(t, dtype=np.float64)) for t in traces) if traces else (None, None)

    def match_at(dy: float, dx: float) -> tuple[tuple[float, int], MaskScore]:
        moved = shift_footprints(a_true, dy, dx).reshape(len(a_true), -1).T if (dy, dx) != (0, 0) else flat_true
        m = match_masks(a_est, moved, iou_threshold=iou_threshold, fraction=fraction)
        pairs = m.matches
        if z_est is not None and z_true is not None and pairs:
            r = np.mean(z_est[[p[0] for p in pairs]] * z_true[[p[1] for p in pairs]], axis=1)
            pairs = [p for p, rr in zip(pairs, r, strict=True) if rr >= trace_threshold]
        return (float(sum(p[2] for p in pairs)), len(pairs)), m

    zero, at_zero = match_at(0, 0)
    est_dy = est_dx = 0.0
    starts = []
    if a_est.shape[1] and len(a_true):
        img_est, img_true = _summed_image(a_est, dims), _summed_image(flat_true, dims)
        window = cv2.createHanningWindow(dims[::-1], cv2.CV_64F)
        (est_dx, est_dy), _ = cv2.phaseCorrelate(img_true, img_est, window)
        starts.append((int(round(est_dy)), int(round(est_dx))))
        if z_est is not None and z_true is not None:
            starts += _trace_offsets(a_est, flat_true, z_est, z_true, dims, trace_threshold)
    seen = {(0, 0): (zero, at_zero)}
    best = (0, 0)
    for start in dict.fromkeys(starts):  # each start climbs; the best end wins
        end = _climb(start, seen, match_at, max_steps)
        if seen[end][0][0] > seen[best][0][0]:
            best = end
    (total, pairs), masks = seen[best]
    keep = best != (0, 0) and pairs >= min_pairs and total > zero[0]
    if keep:  # the frames rarely differ by whole px: a quarter-px grid around the best whole-px move
        quarter = [(best[0] + i / 4, best[1] + j / 4) for i in range(-2, 3) for j in range(-2, 3) if i or j]
        for o in quarter:
            seen[o] = match_at(*o)
        finer = max(quarter, key=lambda o: seen[o][0][0])
        if seen[finer][0][0] > seen[best][0][0]:  # only a strictly better fit moves it
            best = finer
            (total, pairs), masks = seen[best]
    offset = best if keep else (0, 0)
    found = FrameOffset(*offset, float(est_dy), float(est_dx), zero[1], pairs, zero[0], total)
    return found, masks if keep else at_zero


def _climb(start: tuple[int, int], seen: dict, match_at: Any, max_steps: int) -> tuple[int, int]:
    """Hill climb over whole-px offsets from ``start`` on the score ``match_at`` gives; ``seen`` caches scores."""
    best = start
    if best not in seen:
        seen[best] = match_at(*best)
    for _ in range(max_steps):
        around = [(best[0] + i, best[1] + j) for i in (-1, 0, 1) for j in (-1, 0, 1)]
        for o in around:
            if o not in seen:
                seen[o] = match_at(*o)
        step = max(around, key=lambda o: seen[o][0][0])
        if seen[step][0][0] <= seen[best][0][0]:  # no neighbour does better (ties stay put)
            break
        best = step
    return best


def _trace_offsets(
    a_est: np.ndarray | sparse.spmatrix,
    flat_true: np.ndarray,
    z_est: np.ndarray,
    z_true: np.ndarray,
    dims: tuple[int, ...],
    trace_threshold: float,
) -> list[tuple[int, int]]:
    """The median centroid displacement over pairs named by their traces alone (best correlation >= threshold).

    Traces do not depend on the frame, so they pair a few footprints even where phase correlation of the summed
    images is swamped by the cells the result missed.
    """
    r = z_est @ z_true.T / z_est.shape[1]
    est_idx = np.flatnonzero(r.max(axis=1) >= trace_threshold)
    if not len(est_idx):
        return []
    true_idx = r[est_idx].argmax(axis=1)
    d = _centroids(flat_true[:, true_idx], dims) - _centroids(a_est[:, est_idx], dims)
    move = np.median(-d, axis=0)  # the truth moves onto the result
    return [(int(round(move[0])), int(round(move[1])))]


def _centroids(a: np.ndarray | sparse.spmatrix, dims: tuple[int, ...]) -> np.ndarray:
    """(K, 2) centres of mass (y, x) of footprints ``a`` (P, K)."""
    m = sparse.csc_array(a, dtype=np.float64)
    yy, xx = np.indices(dims)
    w = np.asarray(m.sum(axis=0)).ravel()
    w[w == 0] = 1.0
    return np.stack([(m.T @ yy.ravel()) / w, (m.T @ xx.ravel()) / w], axis=1)


def score_alignment(
    fields_est: np.ndarray, fields_true: np.ndarray, valid_mask: np.ndarray | None = None
) -> AlignmentScore:
    """Error between estimated and true backward fields (n_sessions, 2, H, W), in px.

    Both are centred by subtracting, per pixel, their mean over sessions; the
    error is the Euclidean length of the difference, pooled over sessions and
    valid pixels. ``unaligned_*`` is the error of doing nothing (zero fields),
    for scale.
    """
    est, true = np.asarray(fields_est, dtype=np.float64), np.asarray(fields_true, dtype=np.float64)
    if est.shape != true.shape or est.ndim != 4 or est.shape[1] != 2:
        raise ScoreError(f"fields shaped {est.shape} and {true.shape}; both must be (n_sessions, 2, H, W)")
    mask = np.ones(est.shape[2:], dtype=bool) if valid_mask is None else np.asarray(valid_mask, dtype=bool)
    if mask.shape != est.shape[2:] or not mask.any():
        raise ScoreError(
            f"valid mask shaped {mask.shape} with {int(mask.sum())} valid pixels does not fit fields {est.shape}"
        )
    est_c, true_c = est - est.mean(axis=0), true - true.mean(axis=0)
    error = np.sqrt(((est_c - true_c) ** 2).sum(axis=1))[:, mask]
    baseline = np.sqrt((true_c**2).sum(axis=1))[:, mask]
    return AlignmentScore(
        median_px=float(np.median(error)),
        p95_px=float(np.percentile(error, 95)),
        unaligned_median_px=float(np.median(baseline)),
        unaligned_p95_px=float(np.percentile(baseline, 95)),
        per_session_median_px=[float(v) for v in np.median(error, axis=1)],
        n_pixels=int(mask.sum()),
    )


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise ScoreError(f"{path}: missing ({what})")
    return path


def load_result(path: Path | str) -> dict[str, Any]:
    """Read a result folder: footprints (P, K) sparse, traces, dims, fields and mask if present."""
    root = Path(path)
    arrays = _need(root / "arrays", "a caliali result has an arrays/ folder")
    try:
        meta = json.loads(_need(arrays / "meta.json", "result metadata with dims").read_text())
        dims = tuple(int(n) for n in meta["dims"])
        a = sparse.load_npz(_need(arrays / "A.npz", "footprints, scipy.sparse (H*W, K)")).tocsc()
        c = np.load(_need(arrays / "C.npy", "traces (K, T)"))
    except (KeyError, ValueError, OSError) as exc:
        raise ScoreError(f"{arrays}: cannot read the result ({exc})") from exc
    if a.shape[0] != dims[0] * dims[1]:
        raise ScoreError(f"{arrays}/A.npz has {a.shape[0]} pixels but meta.json dims are {list(dims)}")
    out: dict[str, Any] = {"A": a, "C": c, "dims": dims, "fields": None, "valid_mask": None}
    if (root / "alignment" / "fields.npy").exists():
        out["fields"] = np.load(root / "alignment" / "fields.npy")
        mask = root / "alignment" / "valid_mask.npy"
        out["valid_mask"] = np.load(mask) if mask.exists() else None
    return out


def load_ground_truth(path: Path | str) -> dict[str, Any]:
    """Read ground truth from ``ground_truth/`` or the simulation folder holding it."""
    root = Path(path)
    root = root / "ground_truth" if (root / "ground_truth").is_dir() else root
    a = np.load(_need(root / "A.npy", "true footprints (K, H, W)"))
    c = np.load(_need(root / "C.npy", "true traces (K, T)"))
    fields = np.load(root / "fields.npy") if (root / "fields.npy").exists() else None
    return {"A": a, "C": c, "fields": fields, "dims": a.shape[1:]}


def _resize_footprints(a: np.ndarray, dims: tuple[int, int]) -> np.ndarray:
    if a.shape[1:] == dims:
        return a
    return np.stack([cv2.resize(f, dims[::-1], interpolation=cv2.INTER_AREA) for f in a.astype(np.float32)])


def _resize_fields(fields: np.ndarray, dims: tuple[int, int]) -> np.ndarray:
    if fields.shape[2:] == dims:
        return fields
    sy, sx = dims[0] / fields.shape[2], dims[1] / fields.shape[3]
    out = np.empty((*fields.shape[:2], *dims), dtype=np.float32)
    for s, f in enumerate(fields.astype(np.float32)):
        out[s, 0] = cv2.resize(f[0], dims[::-1], interpolation=cv2.INTER_AREA) * sy
        out[s, 1] = cv2.resize(f[1], dims[::-1], interpolation=cv2.INTER_AREA) * sx
    return out


def score(
    result: Path | str,
    ground_truth: Path | str,
    *,
    trace_threshold: float = 0.8,
    iou_threshold: float = 0.3,
    align: bool = True,
) -> Score:
    """Score a result folder against a ground-truth folder (see the module docstring).

    ``align=False`` matches masks in the truth's own frame (the offset is then reported as 0).
    """
    res, gt = load_result(result), load_ground_truth(ground_truth)
    dims = res["dims"]
    a_true = _resize_footprints(gt["A"], dims)
    flat_true = a_true.reshape(len(a_true), -1).T
    neurons = score_neurons(res["A"], res["C"], flat_true, gt["C"], trace_threshold=trace_threshold)
    true_fields = _resize_fields(gt["fields"], dims) if gt["fields"] is not None else None
    frame = "truth"
    if align:
        a_true, frame = truth_in_result_frame(a_true, true_fields, res["fields"])
        flat_true = a_true.reshape(len(a_true), -1).T
        offset, masks = estimate_offset(
            res["A"], a_true, traces=(res["C"], gt["C"]), iou_threshold=iou_threshold, trace_threshold=trace_threshold
        )
    else:
        masks = match_masks(res["A"], flat_true, iou_threshold=iou_threshold)
        total = float(sum(m[2] for m in masks.matches))
        offset = FrameOffset(0, 0, 0.0, 0.0, masks.n_matched, masks.n_matched, total, total)
    strict = score_strict(res["A"], res["C"], flat_true, gt["C"], trace_threshold=trace_threshold, masks=masks)
    alignment = None
    if res["fields"] is not None and true_fields is not None:
        alignment = score_alignment(res["fields"], true_fields, res["valid_mask"])
    return Score(neurons, alignment, masks, strict, offset, frame)


def truth_in_result_frame(
    a_true: np.ndarray, true_fields: np.ndarray | None, result_fields: np.ndarray | None
) -> tuple[np.ndarray, str]:
    """The true footprints (K, H, W) moved into the frame the result's footprints are in, and which frame that is.

    Both field stacks are backward, (n_sessions, 2, H, W): ``aligned[y, x] = session[y + dy, x + dx]``, the
    true ones from the truth's frame, the result's from its own aligned frame. ``"session"``: one session and
    no result fields: the truth as the session's movie shows it (sampled where the inverse of the true field
    points, the simulator's own warp). ``"aligned"``: the result's fields for every session: each pixel of the
    aligned frame is followed into each session (the result's field) and back into the truth (the inverse of
    that session's true field); the truth is sampled at the mean of those points, so one session's alignment
    error moves a footprint by a fraction, as it blurs the pooled movie. ``"truth"``: neither (no true fields,
    or sessions left unaligned): unchanged. Linear interpolation; what falls outside is 0.
    """
    if true_fields is None:
        return a_true, "truth"
    from caliali.simulate import invert_field

    n = true_fields.shape[0]
    if result_fields is None and n == 1:  # a one-session run is in its session's own frame: zero fields
        result_fields, frame = np.zeros_like(true_fields), "session"
    elif result_fields is not None and result_fields.shape == true_fields.shape:
        frame = "aligned"
    else:
        return a_true, "truth"
    dims = a_true.shape[1:]
    grid = np.mgrid[0 : dims[0], 0 : dims[1]].astype(np.float64)
    points = np.zeros_like(grid)
    for s in range(n):
        inverse, _ = invert_field(true_fields[s].astype(np.float64))
        inside = grid + result_fields[s]  # where the aligned frame's pixels are in session s
        back = np.stack([ndimage.map_coordinates(inverse[i], inside, order=1, mode="nearest") for i in range(2)])
        points += (inside + back) / n
    warped = np.stack(
        [ndimage.map_coordinates(f, points, order=1, mode="constant", cval=0.0) for f in a_true.astype(np.float64)]
    )
    return warped.astype(a_true.dtype, copy=False), frame
