"""Inter-session alignment of per-session projections (CaliAli step 5a-d)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from caliali.registration._errors import AlignmentError
from caliali.registration._fields import exp_field, in_bounds, warp
from caliali.registration._groupwise import DEFAULT_PYRAMID, Level, _level_images, groupwise_velocities, normalise
from caliali.registration._heldout import MIN_GAIN, judge, split
from caliali.registration._qc import qc_metrics, stage_images
from caliali.registration._reliability import RELIABILITY_THRESHOLD, reliability_score
from caliali.registration._translation import estimate_translations

__all__ = ["Alignment", "align_sessions"]

log = logging.getLogger("caliali.registration")


@dataclass
class Alignment:
    """Per-session transforms into a common frame, with their quality.

    All fields follow the caliali backward convention
    ``aligned[y, x] = session[y + dy[y, x], x + dx[y, x]]``.

    Attributes
    ----------
    sessions : list of str
        Session ids in order (one transform each).
    input_sessions : ndarray (n_inputs,) int
        For each input image (file or chunk), the index of its session.
    translations : ndarray (n_sessions, 2) float64
        Rigid backward translation (dy, dx), mean over sessions zero.
    fields : ndarray (n_sessions, 2, H, W) float32
        Non-rigid backward field, applied after the translation; zero for a
        session whose field did not beat translation on held-out structure.
    valid_mask : ndarray (H, W) bool
        Common-frame pixels that fall inside every session's image (and inside
        every session's own valid mask when one was given).
    source : {"bv", "neuron"}
        Images the alignment was computed on.
    reliability : float
        Blood-vessel reliability score (nan when it could not be computed:
        fewer than 2 sessions, or no vessel images).
    qc : dict
        Quality numbers, see :func:`caliali.registration._qc.qc_metrics`, and
        ``heldout``: per session, the held-out scores with translation only
        and with the non-rigid field, whether the field was kept and why
        (:func:`caliali.registration._heldout.judge`); None for one session.
    images : ndarray (n_sessions, H, W) float32
        The per-session (combined) projections the alignment was computed on,
        normalised; kept for QC pictures.
    params : dict
        Parameters used.
    """

    sessions: list[str]
    input_sessions: np.ndarray
    translations: np.ndarray
    fields: np.ndarray
    valid_mask: np.ndarray
    source: str
    reliability: float
    qc: dict
    images: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.fields.shape[2:])

    @property
    def total_fields(self) -> np.ndarray:
        """Translation plus non-rigid field, (n_sessions, 2, H, W) float32.

        Exact composition: the translation is constant, so
        ``session[p + u(p) + t]`` is "translate, then warp by u".
        """
        t = self.translations.astype(np.float32)[:, :, None, None]
        return (self.fields + t).astype(np.float32)

    def total_field(self, session: int | str) -> np.ndarray:
        """Total backward field of one session (index or id)."""
        i = self.sessions.index(str(session)) if isinstance(session, str) else int(session)
        return (self.fields[i] + self.translations[i].astype(np.float32)[:, None, None]).astype(np.float32)

    def input_field(self, index: int) -> np.ndarray:
        """Total backward field for input image (file/chunk) ``index``."""
        return self.total_field(int(self.input_sessions[index]))

    def apply(self, image: np.ndarray, session: int | str, *, fill: float = 0.0) -> np.ndarray:
        """Warp one 2-D image of ``session`` into the common frame."""
        return warp(image, self.total_field(session), fill=fill)


def _validate(images: Sequence[np.ndarray], what: str, shape: tuple[int, int] | None) -> list[np.ndarray]:
    out = []
    for i, im in enumerate(images):
        arr = np.asarray(im)
        if arr.ndim != 2:
            raise AlignmentError(
                f"{what}[{i}] has shape {arr.shape}; pass one 2-D projection (H, W) per file or session."
            )
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise AlignmentError(f"{what}[{i}] has dtype {arr.dtype}; pass real-valued images.")
        if shape is not None and arr.shape != shape:
            raise AlignmentError(
                f"{what}[{i}] has shape {arr.shape} but {what}[0] has {shape}; "
                "all projections must share one frame size."
            )
        if min(arr.shape) < 16:
            raise AlignmentError(f"{what}[{i}] is {arr.shape}: at least 16x16 px is needed to align.")
        shape = arr.shape
        out.append(arr.astype(np.float32))
    return out


def _group(session_ids: Sequence[Hashable] | None, n: int) -> tuple[list[str], np.ndarray]:
    if session_ids is None:
        return [str(i) for i in range(n)], np.arange(n)
    if len(session_ids) != n:
        raise AlignmentError(
            f"session_ids has {len(session_ids)} entries for {n} images; give one session id per image."
        )
    order: list[str] = []
    index = np.empty(n, dtype=int)
    for i, sid in enumerate(session_ids):
        key = str(sid)
        if key not in order:
            order.append(key)
        index[i] = order.index(key)
    return order, index


def _combine(
    images: list[np.ndarray], masks: list[np.ndarray], index: np.ndarray, n: int, how: str
) -> list[np.ndarray]:
    """One projection per session from its pieces (mean, or pixelwise max)."""
    out = []
    for s in range(n):
        members = np.flatnonzero(index == s)
        stack = np.stack([np.where(masks[i], images[i], np.nan) for i in members])
        valid = np.isfinite(stack).any(axis=0)
        if how == "max":
            comb = np.nanmax(np.where(np.isfinite(stack), stack, -np.inf), axis=0)
        else:
            comb = np.nansum(stack, axis=0) / np.maximum(np.isfinite(stack).sum(axis=0), 1)
        fill = float(np.median(comb[valid])) if valid.any() else 0.0
        out.append(np.where(valid, comb, fill).astype(np.float32))
    return out


def _pipeline(
    primary: list[np.ndarray],
    secondary: list[np.ndarray],
    *,
    max_shift,
    pyramid,
    template_every,
    gSig,
    sessions,
    min_gain,
    progress,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Translation, the non-rigid fit on half the image judged on the other half,
    the finest level refitted on the whole image, and the fields that lost zeroed."""
    translations = estimate_translations([normalise(p) for p in primary], max_shift=max_shift)
    if progress is not None:
        progress(0.05, "translation between sessions")
    shape = primary[0].shape
    heldout = split(shape, gSig=gSig)
    velocity = groupwise_velocities(
        primary,
        secondary,
        translations,
        pyramid=pyramid,
        template_every=template_every,
        weight=heldout.fit,
        progress=None if progress is None else (lambda f, m: progress(0.05 + 0.7 * f, m + ", half the image")),
    )
    finest = Level(1, pyramid[-1].source, 0, pyramid[-1].params)
    scored = _level_images(primary, secondary, finest, shape)
    record = judge(scored, translations, _exp(velocity), heldout, sessions=sessions, min_gain=min_gain)
    used = np.array([s["nonrigid_used"] for s in record["sessions"]])
    if not used.any():
        return translations, np.zeros((len(primary), 2, *shape), dtype=np.float32), record
    velocity = groupwise_velocities(
        primary,
        secondary,
        translations,
        pyramid=pyramid[-1:],
        template_every=template_every,
        initial=velocity,
        progress=None if progress is None else (lambda f, m: progress(0.75 + 0.1 * f, m + ", whole image")),
    )
    fields = _exp(velocity)
    fields[~used] = 0.0
    return translations, fields, record


def _exp(velocity: np.ndarray) -> np.ndarray:
    return np.stack([exp_field(v) for v in velocity]).astype(np.float32)


def _valid_mask(translations, fields, masks_per_session, shape) -> np.ndarray:
    mask = np.ones(shape, dtype=bool)
    for t, f, m in zip(translations, fields, masks_per_session, strict=True):
        total = f + np.asarray(t, np.float32).reshape(2, 1, 1)
        mask &= in_bounds(total, shape)
        if m is not None and not m.all():
            mask &= warp(m.astype(np.float32), total, fill=0.0) > 0.999
    return mask


def align_sessions(
    images: Sequence[np.ndarray],
    *,
    session_ids: Sequence[Hashable] | None = None,
    neuron_images: Sequence[np.ndarray] | None = None,
    valid_masks: Sequence[np.ndarray] | None = None,
    gSig: float = 5.0,
    source: str = "auto",
    reliability_threshold: float = RELIABILITY_THRESHOLD,
    max_shift: float | None = None,
    pyramid: tuple[Level, ...] = DEFAULT_PYRAMID,
    template_every: int = 10,
    min_gain: float = MIN_GAIN,
    seed: int = 0,
    progress: Callable[[float, str], None] | None = None,
) -> Alignment:
    """Align sessions from their 2-D projections.

    1. Pieces (files, chunks) with one session id are combined into one
       projection per session (vessel images averaged, neuron images by
       pixelwise maximum) and get one transform; they are never aligned to
       each other.
    2. Translation by phase correlation to the first session, mean removed.
    3. Groupwise log-domain diffeomorphic demons to an evolving consensus
       template on a pyramid (1/8 and 1/4 on vessels, 1/2 on the maximum of
       vessel and neuron images, full resolution on that maximum too: vessels keep constraining
       the field where no neuron is active), fitted on half the image (a
       checkerboard of blocks three neuron diameters wide).
    4. Each session keeps its non-rigid field only when, on the other half,
       it correlates better with the other sessions with its field than with
       translation alone, by a margin above noise (:mod:`caliali.registration._heldout`);
       otherwise its field is zero. When any session keeps its field, the
       finest level is refitted on the whole image from the half-image
       fields. Both held-out scores, the choice and why are in
       ``qc["heldout"]``.
    5. With ``source="auto"`` the vessel reliability score is computed on the
       aligned vessel images; below ``reliability_threshold`` the alignment
       is redone on neuron images only. The choice is logged and stored.

    Parameters
    ----------
    images : sequence of ndarray (H, W)
        Blood-vessel projection of every file or chunk (one per input).
    session_ids : sequence, optional
        Session of each input; default: every input is its own session.
    neuron_images : sequence of ndarray (H, W), optional
        Neuron projection (e.g. Cn * PNR, or the mean image) of every input.
        Default: the vessel images are used at every level and there is no
        fallback.
    valid_masks : sequence of ndarray (H, W) bool, optional
        Pixels of each input that hold data (e.g. after motion correction).
    gSig : float
        Neuron radius in px (reliability null, QC units).
    source : {"auto", "bv", "neuron"}
        Force the images to align on, or choose by reliability.
    reliability_threshold : float
        Vessel reliability below which neuron images are used.
    max_shift : float, optional
        Largest plausible translation between sessions, px.
    pyramid : tuple of Level
        Demons pyramid, coarse to fine.
    template_every : int
        Demons iterations between consensus-template updates.
    min_gain : float
        Smallest held-out correlation gain over translation for which a
        session keeps its non-rigid field (the margin is also at least twice
        the gain's standard error over the held-out blocks).
    seed : int
        Seed of the reliability null.
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    Alignment

    Raises
    ------
    AlignmentError
        Unusable input (wrong shapes, mismatched lengths) or an implausible
        translation estimate.

    References
    ----------
    .. [1] Vergara P, et al. A comprehensive suite for extracting neuron
       signals across multiple sessions in one-photon calcium imaging.
       Nat Commun 16, 2025.
    .. [2] Vercauteren T, Pennec X, Perchant A, Ayache N. Symmetric log-domain
       diffeomorphic registration: a demons-based approach. MICCAI 2008.

    Examples
    --------
    Session 1 sees the field of view 3 px further right than session 0, so
    pixel ``(y, x)`` of session 0 is pixel ``(y, x - 3)`` of session 1:

    >>> import numpy as np
    >>> from scipy.ndimage import gaussian_filter
    >>> big = gaussian_filter(np.random.default_rng(0).standard_normal((100, 100)), 2)
    >>> al = align_sessions([big[10:90, 10:90], big[10:90, 13:93]], gSig=3)
    >>> np.round(al.translations[1] - al.translations[0], 1).tolist()
    [-0.0, -3.0]
    >>> np.round(np.median(al.total_field(1) - al.total_field(0), axis=(1, 2)), 1).tolist()
    [0.0, -3.0]
    """
    if source not in ("auto", "bv", "neuron"):
        raise AlignmentError(f"source={source!r}; use 'auto', 'bv' or 'neuron'.")
    if not (np.isfinite(min_gain) and min_gain >= 0):
        raise AlignmentError(f"min_gain={min_gain!r}; give a held-out correlation gain >= 0 (default {MIN_GAIN}).")
    if len(images) == 0:
        raise AlignmentError("no images given; pass one 2-D projection per file or session.")
    bv = _validate(images, "images", None)
    shape = bv[0].shape
    neuron = _validate(neuron_images, "neuron_images", shape) if neuron_images is not None else None
    if neuron is not None and len(neuron) != len(bv):
        raise AlignmentError(f"neuron_images has {len(neuron)} entries for {len(bv)} images; give one per image.")
    if source == "neuron" and neuron is None:
        raise AlignmentError("source='neuron' needs neuron_images.")
    if valid_masks is None:
        masks = [np.isfinite(b) & (np.isfinite(neuron[i]) if neuron else True) for i, b in enumerate(bv)]
    else:
        if len(valid_masks) != len(bv):
            raise AlignmentError(f"valid_masks has {len(valid_masks)} entries for {len(bv)} images.")
        masks = [np.asarray(m, dtype=bool) & np.isfinite(b) for m, b in zip(valid_masks, bv, strict=True)]
        if any(m.shape != shape for m in masks):
            raise AlignmentError(f"valid_masks must be 2-D boolean images of shape {shape}.")
    sessions, index = _group(session_ids, len(bv))
    n = len(sessions)
    bv_s = _combine(bv, masks, index, n, "mean")
    neu_s = _combine(neuron, masks, index, n, "max") if neuron is not None else bv_s
    mask_s = [np.logical_or.reduce([masks[i] for i in np.flatnonzero(index == s)]) for s in range(n)]
    params = {
        "gSig": gSig,
        "source": source,
        "reliability_threshold": reliability_threshold,
        "max_shift": max_shift,
        "template_every": template_every,
        "min_gain": min_gain,
        "seed": seed,
        "pyramid": [
            {
                "factor": lv.factor,
                "source": lv.source,
                "iterations": lv.iterations,
                "fluid_sigma": lv.params.fluid_sigma,
                "diffusion_sigma": lv.params.diffusion_sigma,
            }
            for lv in pyramid
        ],
    }

    if n == 1:
        translations = np.zeros((1, 2))
        fields = np.zeros((1, 2, *shape), dtype=np.float32)
        chosen, score = ("neuron" if source == "neuron" else "bv"), float("nan")
        heldout = None
    else:
        chosen = "neuron" if source == "neuron" else "bv"
        primary = neu_s if chosen == "neuron" else bv_s
        common = {
            "max_shift": max_shift,
            "pyramid": pyramid,
            "template_every": template_every,
            "gSig": gSig,
            "sessions": sessions,
            "min_gain": min_gain,
            "progress": progress,
        }
        translations, fields, heldout = _pipeline(primary, primary if chosen == "neuron" else neu_s, **common)
        mask = _valid_mask(translations, fields, mask_s, shape)
        score = (
            reliability_score(
                stage_images([normalise(b) for b in bv_s], translations, fields)["nonrigid"], mask, gSig=gSig, seed=seed
            )
            if mask.sum() > 100
            else float("nan")
        )
        if source == "auto" and neuron is not None and not score >= reliability_threshold:
            log.warning(
                "blood-vessel reliability %.2f < %.2f: aligning on neuron images instead", score, reliability_threshold
            )
            chosen = "neuron"
            translations, fields, heldout = _pipeline(neu_s, neu_s, **common)
        elif chosen == "bv" and not score >= reliability_threshold:
            why = "source='bv' was asked for" if source == "bv" else "no neuron images were given to fall back to"
            log.warning(
                "blood-vessel reliability %.2f < %.2f but %s: check the alignment QC", score, reliability_threshold, why
            )
        else:
            log.info("aligning on %s images (blood-vessel reliability %.2f)", chosen, score)
    mask = _valid_mask(translations, fields, mask_s, shape)
    used = [normalise(im) for im in (neu_s if chosen == "neuron" else bv_s)]
    qc = qc_metrics(used, translations, fields, mask, gSig=gSig)
    qc["heldout"] = heldout
    if progress is not None:
        progress(1.0, f"alignment done on {chosen} images")
    return Alignment(
        sessions=sessions,
        input_sessions=index,
        translations=np.asarray(translations, float),
        fields=fields.astype(np.float32),
        valid_mask=mask,
        source=chosen,
        reliability=float(score),
        qc=qc,
        images=np.stack(used).astype(np.float32),
        params=params,
    )
