"""Groupwise non-rigid registration: every session to an evolving consensus.

The original method registers every ordered pair of sessions (n(n-1) demons
runs) and then moves each session to a similarity-weighted consensus. Here each
session is registered to one template per round — the similarity-weighted mean
of all currently warped sessions — and the velocity fields are centred after
every round (their mean over sessions is set to zero), so the consensus frame
is unbiased towards any session, as in unbiased atlas construction [1]_. The
cost of a round is n demons runs: linear in the number of sessions.

A coarse-to-fine pyramid runs on different images per level (blood vessels
at 1/8 and 1/4 resolution, the pixelwise maximum of vessel and neuron images at
1/2, neuron images at full resolution); the velocity estimated at one level is
resampled (with its displacements scaled) as the start of the next, so the
levels compose into one diffeomorphism rather than a sum of independent fields.

References
----------
.. [1] Joshi S, Davis B, Jomier M, Gerig G. Unbiased diffeomorphic atlas
   construction for computational anatomy. NeuroImage 23:S151-S160, 2004.
.. [2] Vergara P, et al. A comprehensive suite for extracting neuron signals
   across multiple sessions in one-photon calcium imaging. Nat Commun 16, 2025.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from caliali._cv2 import cv2
from caliali.registration._demons import DemonsParams, _gradient, demons
from caliali.registration._fields import exp_field, in_bounds, resize_field, warp_replicate

__all__ = ["Level", "DEFAULT_PYRAMID", "groupwise_register", "groupwise_velocities", "normalise"]


@dataclass(frozen=True)
class Level:
    """One pyramid level.

    Attributes
    ----------
    factor : int
        Downsampling factor (area averaging) relative to full resolution.
    source : {"bv", "mix", "neuron"}
        Image registered at this level: blood vessels, the pixelwise maximum
        of blood-vessel and neuron images, or neuron images.
    iterations : int
        Demons iterations per session at this level.
    params : DemonsParams
        Fluid / diffusion regularisation, in pixels of this level.
    """

    factor: int
    source: str
    iterations: int
    params: DemonsParams


# The method registers the full-resolution level on the neuron image alone; keeping the
# vessels in it (the pixelwise maximum, as at 1/2) was better on every simulated data set
# measured (benchmarks/README.md), because vessels still constrain the field where no
# neuron is active.
DEFAULT_PYRAMID: tuple[Level, ...] = (
    Level(8, "bv", 100, DemonsParams(fluid_sigma=3.0, diffusion_sigma=4.0)),
    Level(4, "bv", 100, DemonsParams(fluid_sigma=3.0, diffusion_sigma=4.0)),
    Level(2, "mix", 100, DemonsParams(fluid_sigma=2.0, diffusion_sigma=4.0)),
    Level(1, "mix", 20, DemonsParams(fluid_sigma=1.0, diffusion_sigma=4.0)),
)


def normalise(image: np.ndarray) -> np.ndarray:
    """Zero median, unit robust spread (float32); a constant image becomes zeros."""
    img = np.asarray(image, dtype=np.float32)
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.zeros_like(img)
    med = float(np.median(finite))
    spread = float(np.std(finite))
    out = np.where(np.isfinite(img), img - med, 0.0)
    return (out / spread if spread > 0 else out * 0).astype(np.float32)


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if image.shape == tuple(shape):
        return image
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def _level_images(
    bv: list[np.ndarray], neuron: list[np.ndarray], level: Level, shape: tuple[int, int]
) -> list[np.ndarray]:
    out = []
    for b, n in zip(bv, neuron, strict=True):
        if level.source == "bv":
            img = _resize(b, shape)
        elif level.source == "neuron":
            img = _resize(n, shape)
        else:
            img = np.maximum(_resize(b, shape), _resize(n, shape))
        out.append(normalise(img))
    return out


def _corr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    x = a[mask] - a[mask].mean()
    y = b[mask] - b[mask].mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else 0.0


def _template(warped: list[np.ndarray], inside: list[np.ndarray], fit: np.ndarray | None = None) -> np.ndarray:
    """Similarity-weighted mean of the warped sessions (weights: correlation of
    each session with the mean of the others inside ``fit``, floored at a small
    positive value)."""
    stack = np.stack(warped)
    masks = np.stack(inside).astype(np.float32)
    total = (stack * masks).sum(axis=0)
    count = masks.sum(axis=0)
    n = len(warped)
    weights = np.ones(n, dtype=np.float32)
    if n > 2:
        for s in range(n):
            rest = (total - stack[s] * masks[s]) / np.maximum(count - masks[s], 1)
            mask = inside[s] if fit is None else inside[s] & fit
            weights[s] = max(_corr(stack[s], rest, mask if mask.sum() > 1 else inside[s]), 0.05)
    w = weights.reshape(-1, 1, 1)
    num = (stack * masks * w).sum(axis=0)
    den = (masks * w).sum(axis=0)
    return np.where(den > 0, num / np.maximum(den, 1e-12), 0.0).astype(np.float32)


def level_shapes(shape: tuple[int, int], pyramid: tuple[Level, ...], *, min_size: int = 16) -> list[tuple[int, int]]:
    """Grid of each level; levels coarser than ``min_size`` px are dropped (None)."""
    out = []
    for lv in pyramid:
        s = (int(round(shape[0] / lv.factor)), int(round(shape[1] / lv.factor)))
        out.append(s if min(s) >= min_size or lv.factor == 1 else None)
    return out


def groupwise_register(
    bv: list[np.ndarray],
    neuron: list[np.ndarray],
    translations: np.ndarray,
    *,
    pyramid: tuple[Level, ...] = DEFAULT_PYRAMID,
    template_every: int = 10,
    weight: np.ndarray | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> np.ndarray:
    """Groupwise log-domain demons; returns full-resolution backward fields.

    Parameters
    ----------
    bv, neuron : list of ndarray (H, W)
        Per-session blood-vessel and neuron images (pass the same list twice to
        register on one kind of image).
    translations : ndarray (n, 2)
        Backward translation of each session (applied before the field).
    pyramid : tuple of Level
        Coarse to fine.
    template_every : int
        Demons iterations between template updates.
    weight : ndarray (H, W), optional
        Weight in [0, 1] of each common-frame pixel in the fit (area-averaged
        to every level); pixels of weight 0 exert no force and do not enter
        the template's session weights. Default: every pixel counts fully.
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    ndarray (n, 2, H, W) float32
        Non-rigid backward fields (translation NOT included), centred so the
        velocity fields average to zero over sessions.
    """
    velocity = groupwise_velocities(
        bv, neuron, translations, pyramid=pyramid, template_every=template_every, weight=weight, progress=progress
    )
    return np.stack([exp_field(v) for v in velocity]).astype(np.float32)


def groupwise_velocities(
    bv: list[np.ndarray],
    neuron: list[np.ndarray],
    translations: np.ndarray,
    *,
    pyramid: tuple[Level, ...] = DEFAULT_PYRAMID,
    template_every: int = 10,
    weight: np.ndarray | None = None,
    initial: np.ndarray | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> np.ndarray:
    """The stationary velocity fields behind :func:`groupwise_register`,
    (n, 2, H, W) float32 at full resolution, centred over sessions.

    ``initial`` (n, 2, h, w), on any grid, is resampled to the first level
    and refined from there instead of starting from zero: a fit on part of
    the image can be continued on all of it (:mod:`caliali.registration._heldout`).
    The other parameters are those of :func:`groupwise_register`.
    """
    n = len(bv)
    shape = bv[0].shape
    shapes = level_shapes(shape, pyramid)
    velocity = None if initial is None else np.asarray(initial, dtype=np.float32)
    done = 0
    total = sum(lv.iterations for lv, s in zip(pyramid, shapes, strict=True) if s is not None)
    for lv, lshape in zip(pyramid, shapes, strict=True):
        if lshape is None:
            continue
        images = _level_images(bv, neuron, lv, lshape)
        lweight = None if weight is None else np.clip(_resize(weight.astype(np.float32), lshape), 0.0, 1.0)
        scale = np.array([lshape[0] / shape[0], lshape[1] / shape[1]], dtype=np.float32)
        offsets = [np.asarray(t, dtype=np.float32) * scale for t in translations]
        if velocity is None:
            velocity = np.zeros((n, 2, *lshape), dtype=np.float32)
        else:
            velocity = np.stack([resize_field(v, lshape) for v in velocity])
        remaining = lv.iterations
        while remaining > 0:
            step = min(template_every, remaining)
            fields = [exp_field(v) + o.reshape(2, 1, 1) for v, o in zip(velocity, offsets, strict=True)]
            warped = [warp_replicate(im, f) for im, f in zip(images, fields, strict=True)]
            inside = [in_bounds(f, lshape) for f in fields]
            template = _template(warped, inside, None if lweight is None else lweight > 0.5)
            grad_t = _gradient(template)
            for s in range(n):
                velocity[s] = demons(
                    images[s],
                    template,
                    velocity[s],
                    offset=offsets[s],
                    iterations=step,
                    params=lv.params,
                    template_gradient=grad_t,
                    weight=lweight,
                )
            velocity -= velocity.mean(axis=0, keepdims=True)
            remaining -= step
            done += step
            if progress is not None:
                progress(done / total, f"non-rigid alignment, level 1/{lv.factor}")
    assert velocity is not None
    if velocity.shape[1:] != shape:
        velocity = np.stack([resize_field(v, shape) for v in velocity])
    return velocity.astype(np.float32)
