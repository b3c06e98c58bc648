"""The neuron radius ``gSig`` estimated from a recording, for a run whose config leaves it unset.

Where cells are: an *activity image*, every pixel's temporal autocovariance at lags of 1 to 3
frames, summed. White noise does not correlate from one frame to the next, so it drops out in
expectation (at any signal-to-noise ratio and number of frames), while a calcium transient lasts
several frames; for one cell with footprint ``a`` the image is ``a^2`` times its trace's
autocovariance. (Its square root would be proportional to ``a``, but where the footprint's tail
is weaker than the estimate's own noise the square root of a noisy value bends the profile and
narrows it.) Movement of the field of view correlates the background's edges from frame to frame
as well, so ``caliali run`` takes it on motion-corrected frames; motion correction needs a radius
itself, which a first estimate on the frames as they are provides (:func:`estimate_session_gsig`).

How big they are: blobs of the activity image in a scale-normalised Laplacian-of-Gaussian
scale space [1]_ (local maxima over position and scale that stand ``BLOB_Z`` robust standard
deviations above that scale's median). For a Gaussian blob of width ``sigma`` the normalised
response peaks at ``sigma``; the scale of each blob is refined between grid scales by a
parabola through its three neighbouring responses (in log scale). The radius is the median
over the strongest blobs, converted with :data:`RADIUS_PER_SIGMA`: a Gaussian footprint of width
``s`` is a blob of width ``s / sqrt(2)`` in the activity image (``a^2``), and caliali's ``gSig``
is the radius of the region where a footprint is at least 0.2 of its peak (the scorer's mask),
``s * sqrt(2 ln 5)`` for a Gaussian -- the model of a footprint CNMF-E fits [2]_.

References
----------
.. [1] Lindeberg, T. "Feature detection with automatic scale selection."
   International Journal of Computer Vision 30 (1998).
.. [2] Zhou, P. et al. "Efficient and accurate extraction of in vivo calcium signals from
   microendoscopic video data." eLife 7 (2018).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ._errors import ProjectionError

__all__ = [
    "GSIG_FRAMES",
    "ActivityAccumulator",
    "NoCellsError",
    "RADIUS_PER_SIGMA",
    "SizeEstimate",
    "activity_image",
    "blob_scales",
    "estimate_gsig",
    "estimate_session_gsig",
    "first_frames",
]

GSIG_FRAMES = 1000  # frames read for the estimate: enough transients, bounded time
LAGS = (1, 2, 3)
BLOB_Z = 5.0  # robust standard deviations above the scale's median for a blob to count
MIN_BLOBS = 5  # fewer blobs than this: no cells stand out
MAX_BLOBS = 200  # the median is over at most this many of the strongest blobs
SCALES_PER_OCTAVE = 6
MIN_SIGMA = 0.6
# gSig per sigma of a blob of the activity image: sqrt(2) (a^2 -> a) x the radius at 0.2 x peak of a Gaussian
RADIUS_PER_SIGMA = math.sqrt(2.0) * math.sqrt(2.0 * math.log(5.0))


class NoCellsError(ProjectionError):
    """No cells stand out in the frames read: the neuron radius cannot be estimated."""


class ActivityAccumulator:
    """Streaming activity image of a ``(t, h, w)`` movie (see the module's docstring).

    Sums of frames and of products of frames ``lags`` apart are kept in float64, relative to the
    first chunk's mean (so that large offsets do not cancel), with the first and last few frames
    (the means of a lag's earlier and later frames leave out one or the other), so frames can be
    added in any number of chunks and the result equals that of the concatenated movie.
    """

    def __init__(self, frame_shape: tuple[int, int], *, lags: tuple[int, ...] = LAGS) -> None:
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.lags = tuple(int(lag) for lag in lags)
        self.n = 0
        self.reference: np.ndarray | None = None
        self.total = np.zeros(self.frame_shape)
        self.products = [np.zeros(self.frame_shape) for _ in self.lags]
        self.pairs = [0 for _ in self.lags]
        self.head = np.zeros((0, *self.frame_shape))  # the first max(lags) frames: in no pair as the later one
        self.tail = np.zeros((0, *self.frame_shape))  # the last max(lags) frames: in no pair as the earlier one

    def add(self, frames: np.ndarray) -> None:
        """Fold ``frames`` (t, h, w) into the sums."""
        x = np.asarray(frames, dtype=np.float64)
        if x.ndim != 3 or x.shape[1:] != self.frame_shape:
            raise ProjectionError(f"expected (t, {self.frame_shape[0]}, {self.frame_shape[1]}) frames, got {x.shape}")
        if len(x) == 0:
            return
        if self.reference is None:
            self.reference = x.mean(axis=0)
        x = x - self.reference
        joined = np.concatenate([self.tail, x])
        old = len(self.tail)
        for i, lag in enumerate(self.lags):
            first = max(old, lag)  # each pair counted once: its later frame is new
            if first < len(joined):
                self.products[i] += np.einsum("tij,tij->ij", joined[first:], joined[first - lag : len(joined) - lag])
                self.pairs[i] += len(joined) - first
        self.total += x.sum(axis=0)
        self.n += len(x)
        self.head = np.concatenate([self.head, x[: max(self.lags) - len(self.head)]])
        self.tail = joined[-max(self.lags) :]

    def image(self) -> np.ndarray:
        """The activity image (h, w) float32: the sum of the lagged autocovariances."""
        if min(self.pairs) < 1:
            raise ProjectionError(f"the activity image needs more than {max(self.lags)} frames, got {self.n}")
        covariance = np.zeros(self.frame_shape)
        for lag, product, pairs in zip(self.lags, self.products, self.pairs, strict=True):
            later = (self.total - self.head[:lag].sum(axis=0)) / pairs  # mean of the later frame of each pair
            earlier = (self.total - self.tail[len(self.tail) - lag :].sum(axis=0)) / pairs
            covariance += product / pairs - later * earlier
        return covariance.astype(np.float32)


def activity_image(frames: np.ndarray, *, lags: tuple[int, ...] = LAGS) -> np.ndarray:
    """The activity image of ``frames`` (t, h, w) in one call (see :class:`ActivityAccumulator`)."""
    acc = ActivityAccumulator(np.shape(frames)[1:3], lags=lags)
    acc.add(frames)
    return acc.image()


def _scale_grid(shape: tuple[int, int], max_sigma: float | None) -> np.ndarray:
    top = min(shape) / 8.0 if max_sigma is None else min(max_sigma, min(shape) / 4.0)
    if top <= MIN_SIGMA * 2 ** (2 / SCALES_PER_OCTAVE):
        raise NoCellsError(
            f"frames of {shape[0]}x{shape[1]} px are too small to measure a neuron's size; set gSig in the config"
        )
    n = int(math.floor(math.log2(top / MIN_SIGMA) * SCALES_PER_OCTAVE)) + 1
    return MIN_SIGMA * 2.0 ** (np.arange(n) / SCALES_PER_OCTAVE)


@dataclass(frozen=True)
class _Response:
    """The scale-normalised negative LoG of an image at one scale, its median, robust sd and 3x3 maxima."""

    values: np.ndarray
    centre: float
    spread: float
    local_max: np.ndarray

    @classmethod
    def at(cls, image: np.ndarray, sigma: float) -> _Response:
        values = -(sigma * sigma) * ndi.gaussian_laplace(image, sigma, mode="reflect")
        centre = float(np.median(values))
        spread = 1.4826 * float(np.median(np.abs(values - centre)))
        spread = max(spread, float(np.finfo(np.float32).tiny))  # a flat image has no blobs, not a division by 0
        return cls(values, centre, spread, ndi.maximum_filter(values, size=3, mode="nearest"))


def blob_scales(image: np.ndarray, *, max_sigma: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The blobs of ``image`` (h, w): their scales (Gaussian sigma, px) and strengths, strongest first.

    A blob is a local maximum, over position and scale, of the scale-normalised negative
    Laplacian of Gaussian ``-sigma^2 LoG``, standing at least ``BLOB_Z`` robust standard
    deviations (1.4826 median absolute deviations) above that scale's median response; maxima at
    the smallest or largest scale are dropped (the scale is not bracketed). Scales run from
    ``MIN_SIGMA`` px, ``SCALES_PER_OCTAVE`` per octave, up to ``max_sigma`` (default an eighth of
    the smaller side).
    """
    img = np.nan_to_num(np.asarray(image, dtype=np.float32))
    sigmas = _scale_grid(img.shape, max_sigma)
    window: deque[_Response] = deque(maxlen=3)  # three neighbouring scales at a time: memory of a few images
    found: list[tuple[np.ndarray, ...]] = []
    for k, sigma in enumerate(sigmas):
        window.append(_Response.at(img, float(sigma)))
        if len(window) < 3:
            continue
        below, at, above = window
        y, x = np.nonzero(
            (at.values > at.centre + BLOB_Z * at.spread)
            & (at.values >= below.local_max)
            & (at.values >= at.local_max)
            & (at.values >= above.local_max)
        )
        values = (below.values[y, x], at.values[y, x], above.values[y, x])
        found.append((np.full(len(y), k - 1), (values[1] - at.centre) / at.spread, *values))
    k, strength, below_v, at_v, above_v = (np.concatenate(column) for column in zip(*found, strict=True))
    order = np.argsort(-strength, kind="stable")
    k, strength, below_v, at_v, above_v = (a[order] for a in (k, strength, below_v, at_v, above_v))
    curvature = below_v - 2 * at_v + above_v
    offset = np.where(curvature < 0, 0.5 * (below_v - above_v) / np.where(curvature < 0, curvature, -1.0), 0.0)
    scales = sigmas[k.astype(int)] * 2.0 ** (np.clip(offset, -0.5, 0.5) / SCALES_PER_OCTAVE)
    return scales, strength


@dataclass(frozen=True)
class SizeEstimate:
    """A neuron radius estimated from a movie, and from what.

    ``gSig`` is in pixels of the frames given (multiply by any spatial downsampling for the
    original movie's pixels); ``sigma`` the median blob scale it comes from; ``blobs`` how many
    blobs the median was taken over; ``frames`` how many frames were read; ``corrected_with`` the
    first estimate the frames were rigidly motion-corrected with (None: not corrected).
    """

    gSig: float
    sigma: float
    blobs: int
    frames: int
    frame_shape: tuple[int, int]
    corrected_with: float | None = None

    def describe(self, *, spatial_ds: int = 1, where: str = "") -> str:
        """How the radius was obtained, in words (``where``: e.g. 'frames 0-999 of session day1')."""
        place = f" of {where}" if where else f" of {self.frames} frames"
        if self.corrected_with is not None:
            place += f", motion-corrected with a first estimate of {self.corrected_with * spatial_ds:.2f} px"
        scale = f", x spatial_ds {spatial_ds}" if spatial_ds > 1 else ""
        return f"auto: median LoG radius of {self.blobs} blobs of the activity image{place}{scale}"


def first_frames(chunks: Iterable[np.ndarray], max_frames: int) -> Iterator[np.ndarray]:
    """The chunks of a movie up to ``max_frames`` frames in all; a generator given is closed after
    (and with it the files it reads)."""
    seen = 0
    try:
        for chunk in chunks:
            part = np.asarray(chunk)[: max_frames - seen]
            if len(part):
                seen += len(part)
                yield part
            if seen >= max_frames:
                return
    finally:
        if isinstance(chunks, Generator):
            chunks.close()


def estimate_gsig(
    chunks: Iterable[np.ndarray], *, max_frames: int = GSIG_FRAMES, max_sigma: float | None = None
) -> SizeEstimate:
    """Estimate the neuron radius ``gSig`` from the first ``max_frames`` frames of ``chunks``, as they are.

    Parameters
    ----------
    chunks : iterable of ndarray (t, h, w)
        The movie, in time order; reading stops after ``max_frames`` frames, so memory is that of
        a chunk plus a few images.
    max_frames : int
        Most frames read.
    max_sigma : float, optional
        Largest blob scale searched (px); default an eighth of the frame's smaller side.

    Returns
    -------
    SizeEstimate
        ``gSig`` in pixels of the frames given.

    Raises
    ------
    NoCellsError
        Fewer than ``MIN_BLOBS`` blobs stand out: the message asks for ``gSig`` to be set.

    See Also
    --------
    estimate_session_gsig : the same on motion-corrected frames, as ``caliali run`` does it.

    Examples
    --------
    Nine Gaussian cells of width 2 px (radius at 0.2 x peak 3.6 px), spiking at random, with
    calcium decaying by 0.7 a frame:

    >>> from scipy.signal import lfilter
    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:72, :72]
    >>> centres = [(cy, cx) for cy in (18, 36, 54) for cx in (18, 36, 54)]
    >>> cells = [np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.0**2)) for cy, cx in centres]
    >>> calcium = lfilter([1.0], [1.0, -0.7], rng.random((len(cells), 500)) < 0.05, axis=1)
    >>> movie = np.einsum("kt,kij->tij", calcium, cells) + 0.3 * rng.standard_normal((500, 72, 72))
    >>> bool(abs(estimate_gsig([movie]).gSig - 2.0 * math.sqrt(2 * math.log(5))) < 0.25)
    True
    """
    acc: ActivityAccumulator | None = None
    for frames in first_frames(chunks, max_frames):
        if acc is None:
            acc = ActivityAccumulator(frames.shape[1:3])
        acc.add(frames)
    return _from_activity(acc, max_sigma=max_sigma)


def estimate_session_gsig(
    frames: Callable[[], Iterable[np.ndarray]],
    *,
    motion_correction: bool = True,
    max_shift: float = 20.0,
    max_frames: int = GSIG_FRAMES,
    max_sigma: float | None = None,
) -> SizeEstimate:
    """Estimate ``gSig`` from the first ``max_frames`` frames of a session, motion-corrected first.

    Movement of the field of view within a few frames correlates the edges of the background's
    structures (vessels) from frame to frame, and their blobs would outweigh the cells'. So the
    frames are read twice: the estimate of the frames as they are (:func:`estimate_gsig`) sets
    the rigid motion correction (:func:`caliali.motion.correct_frames`, which needs a radius) of
    the same frames, and the estimate is taken again on the corrected frames.

    Parameters
    ----------
    frames : callable returning an iterable of ndarray (t, h, w)
        Each call gives the session's chunks afresh from its first frame.
    motion_correction : bool
        False: the frames as they are (a movie already corrected, or without motion).
    max_shift : float
        Largest motion searched by the correction, px.
    max_frames, max_sigma
        As for :func:`estimate_gsig`.
    """
    first = estimate_gsig(frames(), max_frames=max_frames, max_sigma=max_sigma)
    if not motion_correction:
        return first
    from caliali.motion import correct_frames  # motion imports this package

    acc = ActivityAccumulator(first.frame_shape)
    correct_frames(first_frames(frames(), max_frames), gSig=first.gSig, out=acc.add, max_shift=max_shift)
    return _from_activity(acc, max_sigma=max_sigma, corrected_with=first.gSig)


def _from_activity(
    acc: ActivityAccumulator | None, *, max_sigma: float | None, corrected_with: float | None = None
) -> SizeEstimate:
    if acc is None or acc.n <= max(LAGS) + 1:
        raise NoCellsError(f"the neuron radius needs more than {max(LAGS) + 1} frames; set gSig in the config")
    scales, _ = blob_scales(acc.image(), max_sigma=max_sigma)
    if len(scales) < MIN_BLOBS:
        raise NoCellsError(
            f"no cells stand out in {acc.n} frames ({len(scales)} blobs of activity, {MIN_BLOBS} needed), so the "
            "neuron radius cannot be estimated; set gSig (neuron radius, px) in the config"
        )
    sigma = float(np.median(scales[:MAX_BLOBS]))
    return SizeEstimate(
        gSig=sigma * RADIUS_PER_SIGMA,
        sigma=sigma,
        blobs=int(min(len(scales), MAX_BLOBS)),
        frames=int(acc.n),
        frame_shape=acc.frame_shape,
        corrected_with=corrected_with,
    )
