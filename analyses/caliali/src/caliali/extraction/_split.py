"""Two neurons on one another, fitted as one component, told apart by the shapes of their events.

Two neurons whose centres lie a few pixels apart give one peak in the Cn and PNR images, so one seed,
and one component takes both: its trace holds both spike trains. Their events still differ in shape:
when one fires alone, the frame shows its footprint, not the other's. A single cell's events are one
image scaled (up to noise); a pair's are a mix of two. So each component's strongest events are
gathered as images (the movie less everything else the model explains, over the component's support),
and a rank-2 non-negative fit of those images is set against a rank-1 fit: the component is split in
two when the second factor explains more than noise would (the largest singular value of a Gaussian
noise matrix of that size, (sqrt(events) + sqrt(pixels))^2 times the noise variance the rank-2 fit
leaves), each factor is the stronger one in events of its own, and the two shapes' centres lie apart
(a cell and its rim are one cell). A split the traces do not bear out is merged back by the next
round's merge (trace correlation above ``merge_thr``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._footprints import Footprints, tight_box

__all__ = ["event_times", "split_test", "split_components"]

# A component's strongest events gathered for its test, and the fewest a test needs
N_EVENTS, MIN_EVENTS = 40, 8
# The rank-2 fit must gain this many times what noise alone gives a second factor at most (on synthetic
# event images, one cell's second factor gained 0.65 of it; two cells 2.8 px apart 1.08, 4 px apart 1.3)
NOISE_FACTOR = 1.0
# Events in which each factor must be the stronger one
MIN_OWN_EVENTS = 3


def event_times(trace: np.ndarray, gap: int, n: int = N_EVENTS) -> np.ndarray:
    """Frames of the ``n`` highest local maxima of a denoised ``trace``, at least ``gap`` frames apart, sorted."""
    t = np.asarray(trace, np.float64)
    if t.size < 3 or t.max() <= 0:
        return np.zeros(0, np.int64)
    peaks = np.nonzero((t[1:-1] > 0) & (t[1:-1] >= t[:-2]) & (t[1:-1] > t[2:]))[0] + 1
    chosen: list[int] = []
    for p in peaks[np.argsort(-t[peaks], kind="stable")]:
        if all(abs(int(p) - q) >= gap for q in chosen):
            chosen.append(int(p))
            if len(chosen) == n:
                break
    return np.array(sorted(chosen), np.int64)


def _nmf(m: np.ndarray, rank: int, iterations: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative W (events, rank), H (rank, pixels) with M ~ W H, by HALS from an SVD start."""
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    w = np.abs(u[:, :rank] * np.sqrt(s[:rank]))
    h = np.abs(np.sqrt(s[:rank])[:, None] * vt[:rank])
    if rank == 2:  # start the two shapes apart: the first singular vector's positive and negative parts
        h = np.vstack([np.maximum(vt[1], 0), np.maximum(-vt[1], 0)]) * np.sqrt(s[0]) + 1e-3 * h
    for _ in range(iterations):
        mh, hh = m @ h.T, h @ h.T
        for r in range(rank):
            if hh[r, r] > 0:
                w[:, r] = np.maximum(0, w[:, r] + (mh[:, r] - w @ hh[:, r]) / hh[r, r])
        wm, ww = w.T @ m, w.T @ w
        for r in range(rank):
            if ww[r, r] > 0:
                h[r] = np.maximum(0, h[r] + (wm[r] - ww[r] @ h) / ww[r, r])
    return w, h


def split_test(images: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The two shapes (2, pixels) and their weights in each event (events, 2) if ``images`` (events,
    pixels) hold two, else None. The noise is what the rank-2 fit leaves, per degree of freedom."""
    n, p = images.shape
    if n < MIN_EVENTS or p < 4 or n * p <= 2 * (n + p):
        return None
    w1, h1 = _nmf(images, 1)
    w2, h2 = _nmf(images, 2)
    rss1 = float(np.sum((images - w1 @ h1) ** 2))
    rss2 = float(np.sum((images - w2 @ h2) ** 2))
    noise_var = rss2 / (n * p - 2 * (n + p))
    if not noise_var > 0 or rss1 - rss2 < NOISE_FACTOR * noise_var * (np.sqrt(n) + np.sqrt(p)) ** 2:
        return None
    strength = w2 * np.linalg.norm(h2, axis=1)[None, :]
    own = np.bincount(np.argmax(strength, axis=1), minlength=2)
    if own.min() < MIN_OWN_EVENTS:
        return None
    return h2, w2


def split_components(
    footprints: Footprints, images: list[np.ndarray | None], min_distance: float = 0.0
) -> tuple[Footprints, list[tuple[int, int]]]:
    """Each component whose event ``images[k]`` (events, its support's pixels in row-major order) hold
    two shapes, replaced by those two (each on the component's support, then cut to its own box).

    Returns the footprints (the split ones' halves appended at the end, in order) and (k, index of its
    second half) for every split; the first half takes k's place."""
    boxes, shapes, spreading = list(footprints.boxes), list(footprints.images), list(footprints.spreading)
    splits: list[tuple[int, int]] = []
    for k, stack in enumerate(images):
        if stack is None:
            continue
        support = footprints.images[k] > 0
        found = split_test(np.asarray(stack, np.float64))
        if found is None:
            continue
        h, _ = found
        placed = [np.zeros(support.shape, np.float32) for _ in range(2)]
        for image, shape in zip(placed, h):
            image[support] = shape
        if min(image.max() for image in placed) <= 0:
            continue
        centres = [ndimage.center_of_mass(image.astype(np.float64)) for image in placed]
        if np.hypot(*np.subtract(*centres)) < min_distance:
            continue  # one shape inside the other: a cell and its rim, not two cells
        halves = [tight_box(image / np.linalg.norm(image), footprints.boxes[k]) for image in placed]
        (shapes[k], boxes[k]), (second, box) = halves
        spreading[k] = True
        shapes.append(second)
        boxes.append(box)
        spreading.append(True)
        splits.append((k, len(shapes) - 1))
    return Footprints(footprints.dims, boxes, shapes, np.array(spreading, bool)), splits
