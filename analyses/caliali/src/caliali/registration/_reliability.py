"""Is the blood-vessel image informative enough to align on?

Aligned vessel images of good quality agree far better with each other than
after a random smooth deformation of about one neuron radius; vessel images of
poor quality (few, faint or noisy vessels) do not. The score is that gap in
units of the null distribution's spread.
"""

from __future__ import annotations

import numpy as np

from caliali.registration._fields import random_smooth_field, warp_replicate

__all__ = ["RELIABILITY_THRESHOLD", "group_consistency", "reliability_score"]

RELIABILITY_THRESHOLD = 2.7


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    x = a - a.mean()
    y = b - b.mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else 0.0


def group_consistency(images: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
    """Correlation of each image with the mean of the others, inside ``mask``."""
    stack = np.stack([im[mask] for im in images]).astype(np.float64)
    total = stack.sum(axis=0)
    n = len(images)
    return np.array([_corr(stack[s], (total - stack[s]) / (n - 1)) for s in range(n)])


def reliability_score(
    aligned: list[np.ndarray],
    mask: np.ndarray,
    *,
    gSig: float,
    n_null: int = 20,
    seed: int = 0,
) -> float:
    """Blood-vessel reliability: z-score of the aligned images' agreement
    against a null of random smooth deformations.

    Parameters
    ----------
    aligned : list of ndarray (H, W)
        Blood-vessel images of all sessions after alignment (>= 2).
    mask : ndarray (H, W) bool
        Pixels valid in every session.
    gSig : float
        Neuron radius, px; the null deformations have a root-mean-square
        displacement of ``gSig`` px and vary over ``2 * gSig`` px (small
        independent patches, so the null's spread is small and the score
        separates: ~10 for clear vessels, ~0 for vessel-free images on
        simulated data).
    n_null : int
        Number of random deformations of each image.
    seed : int
        Seed of the null deformations.

    Returns
    -------
    float
        Per session, ``(observed - mean(null)) / std(null)`` of its group
        consistency (correlation with the mean of the other sessions); the
        score is the minimum over sessions, so one session with unusable
        vessels is enough to distrust them (the original takes the minimum
        over session pairs [1]_, which costs n^2). Above about 2.7 the vessels
        are a reliable alignment cue.

    References
    ----------
    .. [1] Vergara P, et al. A comprehensive suite for extracting neuron
       signals across multiple sessions in one-photon calcium imaging.
       Nat Commun 16, 2025.
    """
    rng = np.random.default_rng(seed)
    shape = aligned[0].shape
    observed = group_consistency(aligned, mask)
    null = np.empty((n_null, len(aligned)))
    for k in range(n_null):
        moved = [
            warp_replicate(im, random_smooth_field(shape, magnitude=gSig, smoothness=2 * gSig, rng=rng, norm="rms"))
            for im in aligned
        ]
        null[k] = group_consistency(moved, mask)
    spread = np.maximum(null.std(axis=0, ddof=1), 1e-6)
    return float(((observed - null.mean(axis=0)) / spread).min())
