"""Does the non-rigid field earn its place? Judge it on structure it was not fitted to.

A non-rigid field always matches the images it was fitted to at least as well
as a translation: it has more freedom, it follows noise, and resampling through
it blurs the images, which alone raises their correlation. So the field is
fitted on one part of the image and judged on the other:

1. The common frame is cut into a checkerboard of square blocks three
   neuron diameters wide (:func:`split`). The non-rigid fields are fitted on
   the white blocks only (the demons exert no force on the black ones, whose
   field is interpolated from their fitted neighbours), with the translation
   estimated as usual.
2. On the black blocks, shrunk by a guard band of one neuron radius so that a
   neuron straddling a block edge is not judged on its own fitted half, every
   session is scored twice: its correlation with the mean of the other
   sessions, block by block and averaged over the blocks, when all are
   translated, and when all are translated and warped by their fitted fields
   (:func:`judge`). Both candidates are smoothed and blurred to the same
   interpolation variance first (:func:`_equalise_blur`), so the blur of a
   sub-pixel resampling cannot win the comparison.
3. A session keeps its non-rigid field only when its held-out gain (the mean
   over blocks of the block-wise gain) exceeds a margin above noise: twice
   the standard error of that mean, and at least ``min_gain``. Blocks are
   the unit because a deformation differs from place to place: a field that
   only follows noise loses a little in most blocks, a real one wins in most.

The fields a session keeps are not the half-image fits themselves: the
finest pyramid level is run once more on the whole image, starting from them
(:func:`caliali.registration.alignment.align_sessions`). That recovers the
accuracy the held-out half costs at the price of one level, and sessions that
lost keep a zero field whatever the refit finds; swapping the halves instead
would cost a second half-image fit. The choice is the half-image fit's, so it
is conservative where that fit recovers much less than the whole-image one.

The halves are disjoint at full resolution, where the scores are computed; at
the coarsest pyramid levels a pixel averages fitted and held-out pixels, so
the coarse fit sees a blurred trace of the held-out structure. Building those
levels from the fitted blocks alone was measured and not taken
(benchmarks/README.md).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from caliali.registration._fields import in_bounds, warp_replicate

__all__ = ["MIN_GAIN", "HeldOutSplit", "judge", "split"]

MIN_GAIN = 0.005
# Largest variance of bilinear interpolation along one axis (at half a pixel):
# every candidate is blurred up to it before it is scored.
_BILINEAR_MAX_VAR = 0.25
# Smoothing of every image before it is scored, px: enough that a half-pixel
# resampling of noisy views of one scene no longer raises their correlation, not
# so much that real gains are blunted (benchmarks/README.md, alignment_heldout.py).
_PRESMOOTH_PX = 1.0


class HeldOutSplit:
    """A checkerboard split of the common frame.

    Attributes
    ----------
    fit : ndarray (H, W) float32
        1 on the blocks the non-rigid fields are fitted on, 0 elsewhere.
    score : ndarray (H, W) bool
        Held-out pixels: the other blocks, at least ``guard`` px from any
        fitted pixel.
    blocks : ndarray (H, W) int
        Index of each pixel's block (the unit of the noise estimate).
    block : int
        Block side, px.
    guard : float
        Guard band, px.
    """

    def __init__(self, shape: tuple[int, int], *, block: int, guard: float) -> None:
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        by, bx = yy // block, xx // block
        fitted = (by + bx) % 2 == 0
        self.fit = fitted.astype(np.float32)
        self.score = ~fitted & (distance_transform_edt(~fitted) > guard)
        self.blocks = by * (int(bx.max()) + 1) + bx
        self.block = int(block)
        self.guard = float(guard)


def split(shape: tuple[int, int], *, gSig: float) -> HeldOutSplit:
    """Checkerboard of blocks ``6 * gSig`` px wide (three neuron diameters, at
    least 12 px) with a guard band of ``gSig`` px.

    A block holds whole neurons, and is much narrower than the distance over
    which a deformation between days changes (tens of px), so the fitted blocks
    pin the field down on the held-out ones. Narrower blocks mean more of them,
    hence a smaller noise margin (measured against 5 and 8 * gSig in
    benchmarks/README.md).
    """
    return HeldOutSplit(shape, block=max(12, int(round(6 * gSig))), guard=float(gSig))


def _equalise_blur(image: np.ndarray, field: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Warp ``image`` by ``field`` so that no candidate is blurred more than another.

    Bilinear resampling averages neighbouring pixels, which removes
    independent noise and so raises a correlation without aligning anything
    better. The image is first smoothed over ``_PRESMOOTH_PX`` (its noise is
    then correlated across neighbours, so averaging them removes little), and
    after warping each axis is blurred up to the same total variance: the
    mean interpolation variance of this field over ``mask`` plus an added
    Gaussian makes the bilinear maximum.
    """
    warped = warp_replicate(gaussian_filter(image, _PRESMOOTH_PX, mode="nearest"), field)
    frac = field[:, mask] - np.floor(field[:, mask])
    var = (frac * (1.0 - frac)).mean(axis=1) if mask.any() else np.zeros(2)
    sigma = np.sqrt(np.maximum(_BILINEAR_MAX_VAR - var, 0.0))
    return gaussian_filter(warped, sigma=tuple(float(s) for s in sigma), mode="nearest").astype(np.float32)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    x = a - a.mean()
    y = b - b.mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else 0.0


def _scores(
    images: list[np.ndarray], totals: list[np.ndarray], mask: np.ndarray, blocks: np.ndarray, ids: np.ndarray
) -> np.ndarray:
    """(n_sessions, n_blocks): each session's correlation with the mean of the
    others inside each held-out block (``mask`` restricts the pixels)."""
    warped = np.stack([_equalise_blur(im, f, mask) for im, f in zip(images, totals, strict=True)])
    rest = (warped.sum(axis=0, keepdims=True) - warped) / (len(images) - 1)
    out = np.empty((len(images), len(ids)))
    for k, b in enumerate(ids):
        inside = mask & (blocks == b)
        for s in range(len(images)):
            out[s, k] = _corr(warped[s][inside], rest[s][inside])
    return out


def judge(
    images: list[np.ndarray],
    translations: np.ndarray,
    fields: np.ndarray,
    heldout: HeldOutSplit,
    *,
    sessions: list[str],
    min_gain: float = MIN_GAIN,
) -> dict:
    """Score translation only against translation + non-rigid on the held-out blocks.

    Parameters
    ----------
    images : list of ndarray (H, W)
        Normalised per-session images the finest level is fitted on.
    translations : ndarray (n, 2)
        Backward translations.
    fields : ndarray (n, 2, H, W)
        Non-rigid fields fitted on ``heldout.fit`` only.
    heldout : HeldOutSplit
        The split.
    sessions : list of str
        Session ids, for the record.
    min_gain : float
        Smallest held-out correlation gain that can keep a field.

    Returns
    -------
    dict
        ``block_px``, ``guard_px``, ``scored_px``, ``scored_blocks``, and
        ``sessions``: per session its id, ``translation`` and ``nonrigid``
        held-out scores (correlation with the mean of the other sessions,
        averaged over the held-out blocks),
        ``needs`` (the gain required), ``nonrigid_used`` and ``why``.
    """
    shape = images[0].shape
    const = [np.broadcast_to(np.asarray(t, np.float32).reshape(2, 1, 1), (2, *shape)) for t in translations]
    totals = [np.asarray(f, np.float32) + c for f, c in zip(fields, const, strict=True)]
    mask = heldout.score.copy()
    for f in (*const, *totals):
        mask &= in_bounds(f, shape)
    ids, counts = np.unique(heldout.blocks[mask], return_counts=True)
    ids = ids[counts >= max(16, heldout.block**2 // 8)]
    mask &= np.isin(heldout.blocks, ids)
    record: dict = {
        "block_px": heldout.block,
        "guard_px": heldout.guard,
        "scored_px": int(mask.sum()),
        "scored_blocks": len(ids),
        "min_gain": min_gain,
        "sessions": [],
    }
    if len(ids) < 2:
        for sid in sessions:
            record["sessions"].append(
                {
                    "session": sid,
                    "translation": None,
                    "nonrigid": None,
                    "needs": None,
                    "nonrigid_used": False,
                    "why": f"{len(ids)} held-out block(s) of {heldout.block} px inside the common field of view: "
                    "too few to judge the non-rigid field, translation only",
                }
            )
        return record
    trans_b = _scores(images, list(const), mask, heldout.blocks, ids)
    nonrigid_b = _scores(images, totals, mask, heldout.blocks, ids)
    trans, nonrigid, gain_b = trans_b.mean(axis=1), nonrigid_b.mean(axis=1), nonrigid_b - trans_b
    for s, sid in enumerate(sessions):
        needs = float(max(min_gain, 2.0 * float(gain_b[s].std(ddof=1)) / np.sqrt(len(ids))))
        gain = float(nonrigid[s] - trans[s])
        used = bool(gain > needs)
        record["sessions"].append(
            {
                "session": sid,
                "translation": float(trans[s]),
                "nonrigid": float(nonrigid[s]),
                "needs": needs,
                "nonrigid_used": used,
                "why": (
                    f"held-out score {trans[s]:.3f} translation vs {nonrigid[s]:.3f} non-rigid: gain {gain:+.3f}, "
                    f"needs +{needs:.3f} (2 standard errors over {len(ids)} held-out blocks, at least {min_gain:g}): "
                    + ("non-rigid kept" if used else "translation only")
                ),
            }
        )
    return record
