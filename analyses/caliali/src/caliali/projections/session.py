"""Per-session projections accumulated over chunks: mean, blood vessels (BV),
correlation image Cn and peak-to-noise ratio PNR; and combining the pieces
of one session."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bottleneck as bn
import numpy as np
import scipy.ndimage as ndi

from caliali._cv2 import cv2

from ._errors import ProjectionError
from .neurons import CorrelationAccumulator
from .preprocess import detrend, detrend_windows, enhance_neurons, moving_median, noise_level
from .vessels import bv_filter

__all__ = [
    "MIN_SESSION_FRAMES",
    "PROJECTION_COPIES",
    "ProjectionAccumulator",
    "Projections",
    "combine_projections",
    "session_projections",
]

# float32 copies of a chunk the accumulator holds at peak (the buffered
# chunk, the look-ahead, the block with its halo, detrended and enhanced
# temporaries; above the peak measured with tracemalloc, benchmarks/README.md),
# used to size chunks from a memory budget.
PROJECTION_COPIES = 7

# Median frames are estimated from at most this many evenly spaced frames of
# a chunk: the BV image of a chunk's median frame, and the per-pixel baseline
# removed from the enhanced movie.
_BV_MEDIAN_FRAMES = 200
# Fewest frames a session needs: its noise levels are spectra over time.
MIN_SESSION_FRAMES = 8
_BASELINE_FRAMES = 64


@dataclass(frozen=True)
class Projections:
    """Summary images of one session (or one piece of it).

    Attributes
    ----------
    mean : (h, w) float32
        Mean frame.
    bv : (h, w) float32
        Blood-vessel image in [0, 1] (frame-weighted mean over chunks of the
        BV filter of each chunk's median frame).
    cn : (h, w) float32
        Local correlation image of the enhanced, thresholded movie (max over
        bins of <= 3000 frames).
    pnr : (h, w) float32
        Peak-to-noise ratio of the enhanced movie.
    n_frames : int
        Frames summarised (the weight when pieces are combined).
    """

    mean: np.ndarray
    bv: np.ndarray
    cn: np.ndarray
    pnr: np.ndarray
    n_frames: int

    def save(self, path: Path | str) -> Path:
        """Write the images and ``n_frames`` to one ``.npz`` file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, mean=self.mean, bv=self.bv, cn=self.cn, pnr=self.pnr, n_frames=self.n_frames)
        return path

    @classmethod
    def load(cls, path: Path | str) -> Projections:
        """Read what :meth:`save` wrote."""
        try:
            with np.load(Path(path)) as z:
                return cls(z["mean"], z["bv"], z["cn"], z["pnr"], int(z["n_frames"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ProjectionError(f"{path}: not a projections file written by Projections.save ({exc})") from exc


def combine_projections(pieces: Sequence[Projections]) -> Projections:
    """Combine the projections of pieces of one session: mean and BV averaged
    (weighted by frames), Cn and PNR by pixel-wise maximum."""
    if not pieces:
        raise ProjectionError("combine_projections needs at least one piece")
    shapes = {p.mean.shape for p in pieces}
    if len(shapes) != 1:
        raise ProjectionError(f"pieces of one session must share a frame shape, got {sorted(shapes)}")
    weights = np.array([p.n_frames for p in pieces], dtype=np.float64)
    if weights.sum() <= 0:
        weights = np.ones(len(pieces))
    w = weights / weights.sum()

    def avg(name: str) -> np.ndarray:
        return sum(wi * getattr(p, name).astype(np.float64) for wi, p in zip(w, pieces, strict=True)).astype(np.float32)

    return Projections(
        mean=avg("mean"),
        bv=avg("bv"),
        cn=np.max([p.cn for p in pieces], axis=0).astype(np.float32),
        pnr=np.max([p.pnr for p in pieces], axis=0).astype(np.float32),
        n_frames=int(sum(p.n_frames for p in pieces)),
    )


def _median_frame(frames: np.ndarray, *, max_frames: int | None = None) -> np.ndarray:
    """Median over time, in row bands (the selection copies what it
    partitions), optionally of at most ``max_frames`` evenly spaced frames.
    ``bottleneck.median`` is faster than ``np.median`` here."""
    if max_frames is not None and len(frames) > max_frames:
        frames = frames[:: -(-len(frames) // max_frames)]
    t, h, w = frames.shape
    rows = max(1, (8 * 2**20) // max(1, 4 * t * w))
    out = np.empty((h, w), np.float32)
    for y in range(0, h, rows):
        out[y : y + rows] = bn.median(frames[:, y : y + rows], axis=0)
    return out


class ProjectionAccumulator:
    """Push chunks of one session in time order; read :meth:`result` at the end.

    Chunks may have any length. Temporal filters (detrending windows, the PNR
    moving median) need frames on both sides of a chunk, so each chunk is
    processed once enough of the next has arrived, with a halo of
    neighbouring frames; the result does not depend on how the movie was
    cut, except for the per-chunk noise estimates and BV median frames.
    Those need enough frames, so no piece shorter than ``min_piece`` frames
    (or the halo, if longer) is processed on its own: short chunks wait for
    the next, and the frames left at the end are processed with the last piece.

    Per processed chunk: the mean and the BV image of its median frame
    (estimated from at most 200 evenly spaced frames) are accumulated
    (frame-weighted); the movie is detrended (moving minimum of a
    moving median), divided by each pixel's PSD noise level, enhanced
    (anisotropic diffusion + top-hat, negatives clipped) and its per-pixel
    median removed (estimated on at most 64 evenly spaced frames); PNR = max
    of a ``pnr_window``-frame moving median over the noise of the enhanced
    frames (PSD, then a spatial median over about ``4 gSig`` px so that
    transients do not inflate it); frames below ``threshold`` x that noise
    are zeroed and folded into the Cn accumulator of their bin (bins of at
    most ``bin_frames`` frames); Cn = max over bins.

    Parameters
    ----------
    frame_shape : (h, w)
    gSig : float
        Neuron radius, px.
    fs : float
        Frame rate, Hz.
    n_frames : int, optional
        Frames the session will have; bins are then of equal length. Without
        it bins are consecutive runs of ``bin_frames``.
    valid_mask : (h, w) bool, optional
        Pixels with real data (from motion correction); Cn and PNR are 0
        outside it (filled borders would otherwise correlate perfectly).
    bin_frames, pnr_window, threshold, median_s, minimum_s :
        Method constants (defaults: 3000 frames, 10 frames, 3 sigma, 1 s, 5 s).
    min_piece : int
        Fewest frames processed at once (default 64), unless the session is shorter.
    """

    def __init__(
        self,
        frame_shape: tuple[int, int],
        *,
        gSig: float,
        fs: float,
        n_frames: int | None = None,
        valid_mask: np.ndarray | None = None,
        bin_frames: int = 3000,
        pnr_window: int = 10,
        threshold: float = 3.0,
        median_s: float = 1.0,
        minimum_s: float = 5.0,
        min_piece: int = 64,
    ):
        if not gSig > 0:
            raise ProjectionError(f"gSig (neuron radius, px) must be > 0, got {gSig}")
        if bin_frames < 2:
            raise ProjectionError(f"bin_frames must be >= 2, got {bin_frames}")
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self.gSig, self.fs = float(gSig), float(fs)
        self.median_s, self.minimum_s = median_s, minimum_s
        w_med, w_min = detrend_windows(fs, median_s=median_s, minimum_s=minimum_s)
        self.pnr_window, self.threshold = int(pnr_window), float(threshold)
        self.halo = w_med // 2 + w_min // 2 + self.pnr_window // 2 + 2
        # Shortest piece processed alone; its noise estimates need the frames (see _process).
        self.piece = max(self.halo, int(min_piece))
        if valid_mask is not None:
            valid_mask = np.asarray(valid_mask, dtype=bool)
            if valid_mask.shape != self.frame_shape:
                raise ProjectionError(f"valid_mask shape {valid_mask.shape} differs from the frames {self.frame_shape}")
        self.valid_mask = valid_mask
        if n_frames:
            n_bins = -(-int(n_frames) // int(bin_frames))
            self._edges = np.round(np.linspace(0, int(n_frames), n_bins + 1)).astype(int)
        else:
            self._edges = None
        self.bin_frames = int(bin_frames)
        h, w = self.frame_shape
        self._sum = np.zeros((h, w))
        self._bv = np.zeros((h, w))
        self._pnr = np.zeros((h, w), dtype=np.float32)
        self._cn = np.full((h, w), -np.inf, dtype=np.float32)
        self._bin_index = 0
        self._bin: CorrelationAccumulator | None = None
        self._seen = 0  # frames processed (as cores)
        self._left = np.empty((0, h, w), np.float32)
        self._core: np.ndarray | None = None
        self._ahead: list[np.ndarray] = []
        self._n_ahead = 0
        self._done = False

    # -- input -----------------------------------------------------------------
    def append(self, frames: np.ndarray) -> None:
        """Add the next frames of the session (a ``(t, h, w)`` chunk)."""
        if self._done:
            raise ProjectionError("this accumulator is finished; start a new one")
        x = np.asarray(frames, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != self.frame_shape:
            raise ProjectionError(f"expected (t, {self.frame_shape[0]}, {self.frame_shape[1]}) frames, got {x.shape}")
        if len(x) == 0:
            return
        if not np.all(np.isfinite(x)):
            raise ProjectionError(f"frames {self._seen}.. contain NaN or infinite values")
        if self._core is None:
            self._core = x
        elif len(self._core) < self.piece and not self._ahead:
            self._core = np.concatenate([self._core, x])  # a short first piece waits for more frames
        else:
            self._ahead.append(x)
            self._n_ahead += len(x)
        while self._core is not None and self._n_ahead >= self.piece:
            self._emit()

    __call__ = append

    def _emit(self) -> None:
        if len(self._ahead) == 1:
            ahead = self._ahead[0]
        else:
            ahead = np.concatenate(self._ahead) if self._ahead else self._left[:0]
        self._ahead, self._n_ahead = [], 0
        core, self._core = self._core, None
        block = np.concatenate([self._left, core, ahead[: self.halo]])
        lo, hi = len(self._left), len(self._left) + len(core)
        del core  # the block holds the only copy the processing needs
        self._left = block[max(0, hi - self.halo) : hi].copy()
        self._process(block, lo, hi)
        self._core = ahead if len(ahead) else None

    # -- per-chunk work ----------------------------------------------------------
    def _process(self, block: np.ndarray, lo: int, hi: int) -> None:
        core = block[lo:hi]
        n = len(core)
        if len(block) < MIN_SESSION_FRAMES:
            raise ProjectionError(
                f"the session has only {len(block)} frames; projections need at least {MIN_SESSION_FRAMES}"
            )
        self._sum += core.sum(axis=0, dtype=np.float64)
        self._bv += n * bv_filter(_median_frame(core, max_frames=_BV_MEDIAN_FRAMES), gSig=self.gSig).astype(np.float64)

        det = detrend(block, fs=self.fs, median_s=self.median_s, minimum_s=self.minimum_s)
        sd = noise_level(det)
        # Only frames the PNR median can reach need enhancing.
        a, b = max(0, lo - self.pnr_window // 2), min(len(block), hi + self.pnr_window // 2)
        norm = det[a:b]
        del det
        norm /= np.where(sd > 0, sd, np.inf)[None]
        enh = enhance_neurons(norm, gSig=self.gSig)
        del norm
        enh -= _median_frame(enh, max_frames=_BASELINE_FRAMES)[None]
        # Every piece but a whole session shorter than ``piece`` has at least
        # ``piece`` frames (see append and result): the noise maps of a piece of
        # a few frames would be estimated on a handful of frequencies and, as
        # PNR is a maximum over pieces, one low estimate would inflate it.
        sd_e = self._enhanced_noise(enh)
        peak = moving_median(enh, self.pnr_window)[lo - a : hi - a].max(axis=0)
        np.maximum(self._pnr, peak / np.where(sd_e > 0, sd_e, np.inf), out=self._pnr)
        kept = enh[lo - a : hi - a]
        kept[kept < self.threshold * sd_e[None]] = 0.0
        self._fold_cn(kept)
        self._seen += n

    def _enhanced_noise(self, enh: np.ndarray) -> np.ndarray:
        """Noise of the enhanced frames: PSD noise per pixel, then a spatial
        median over about ``4 gSig`` px. After normalisation the enhanced noise
        varies slowly in space, while transients inflate the PSD estimate of
        active pixels, the more so the shorter the chunk, which would deflate
        exactly the PNR of active neurons; the median is immune to a
        neuron-sized patch."""
        sd = noise_level(enh)
        # The median runs on a map area-averaged by ~gSig (then interpolated
        # back): 5x5 there spans ~4 gSig, at a fraction of the cost of a
        # full-resolution 13x13 median.
        h, w = sd.shape
        k = max(1, min(int(round(self.gSig)), h // 5, w // 5))
        small = cv2.resize(sd, (w // k, h // k), interpolation=cv2.INTER_AREA) if k > 1 else sd
        small = ndi.median_filter(small, size=5, mode="reflect")
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) if k > 1 else small

    def _bin_end(self, index: int) -> int:
        if self._edges is not None and index + 1 < len(self._edges):
            return int(self._edges[index + 1])
        if self._edges is not None:
            return int(self._edges[-1]) + (index + 2 - len(self._edges)) * self.bin_frames
        return (index + 1) * self.bin_frames

    def _close_bin(self) -> None:
        if self._bin is not None and self._bin.n >= 2:
            np.maximum(self._cn, self._bin.result(), out=self._cn)
        self._bin = None
        self._bin_index += 1

    def _fold_cn(self, frames: np.ndarray) -> None:
        pos, i = self._seen, 0
        while i < len(frames):
            end = self._bin_end(self._bin_index)
            if pos >= end:
                self._close_bin()
                continue
            take = min(len(frames) - i, end - pos)
            if self._bin is None:
                self._bin = CorrelationAccumulator(self.frame_shape)
            self._bin.add(frames[i : i + take])
            i, pos = i + take, pos + take

    # -- output --------------------------------------------------------------------
    def result(self) -> Projections:
        """Flush the buffered frames and return the session's projections."""
        if not self._done:
            if self._core is not None and self._ahead:
                # Fewer than ``piece`` frames follow the last piece (more would have
                # been processed on arrival): they join it rather than being processed
                # alone, where a tail of a few frames would give a noise estimate of a
                # few frames. The block is no longer than a piece with its look-ahead.
                self._core = np.concatenate([self._core, *self._ahead])
                self._ahead, self._n_ahead = [], 0
            while self._core is not None:
                self._emit()
            self._close_bin()
            self._done = True
        if self._seen == 0:
            raise ProjectionError("no frames were added; the session is empty")
        cn = np.where(np.isfinite(self._cn), self._cn, 0.0).astype(np.float32)
        pnr = self._pnr.copy()
        if self.valid_mask is not None:
            cn[~self.valid_mask] = 0.0
            pnr[~self.valid_mask] = 0.0
        return Projections(
            mean=(self._sum / self._seen).astype(np.float32),
            bv=(self._bv / self._seen).astype(np.float32),
            cn=cn,
            pnr=pnr,
            n_frames=int(self._seen),
        )


def session_projections(
    source: Any,
    *,
    gSig: float,
    fs: float,
    batch_frames: int | None = None,
    memory_budget: int | str | None = None,
    valid_mask: np.ndarray | None = None,
    progress: Callable[[float, str], None] | None = None,
    **options: Any,
) -> Projections:
    """Projections of one session, streaming chunk by chunk.

    Parameters
    ----------
    source : (t, h, w) array, reader, path, ``caliali.experiment.Session``, or a sequence of paths/readers
        The (motion-corrected) frames of one session, e.g. the
        ``caliali.store.FrameStore`` that :func:`caliali.motion.correct_session`
        wrote.
    gSig : float
        Neuron radius, px.
    fs : float
        Frame rate, Hz (sets the detrending windows).
    batch_frames : int, optional
        Frames per chunk; default from ``memory_budget``.
    memory_budget : int or str, optional
        Bytes or e.g. "2GB", when ``batch_frames`` is not given.
    valid_mask : (h, w) bool, optional
        From motion correction; Cn and PNR are zeroed outside it.
    progress : callable(fraction, message), optional
    **options
        Passed to :class:`ProjectionAccumulator` (``bin_frames``,
        ``pnr_window``, ``threshold``, ``median_s``, ``minimum_s``).

    Returns
    -------
    Projections
        ``mean``, ``bv``, ``cn``, ``pnr`` images and ``n_frames``.

    References
    ----------
    .. [1] Vergara, P. et al. (2025). A comprehensive suite for extracting
       neuron signals across multiple sessions in one-photon calcium imaging.
       Nature Communications 16, 3443.
    .. [2] Zhou, P. et al. (2018). Efficient and accurate extraction of in vivo
       calcium signals from microendoscopic video data. eLife 7, e28728.
    """
    from caliali.motion.correct import session_chunks, session_info

    if isinstance(source, np.ndarray):
        if source.ndim != 3:
            raise ProjectionError(f"an in-memory movie must be (t, h, w), got shape {source.shape}")
        total, shape = source.shape[0], source.shape[1:]
        step = int(batch_frames or max(1, total))
        chunks = (source[i : i + step] for i in range(0, total, step))
    else:
        total, shape = session_info(source)
        if batch_frames is None:
            if memory_budget is None:
                raise ProjectionError("give batch_frames or memory_budget (bytes or a string like '2GB')")
            from caliali.chunking import batch_frames_for

            batch_frames = batch_frames_for(memory_budget, shape, copies=PROJECTION_COPIES)
        chunks = session_chunks(source, batch_frames=int(batch_frames), progress=progress, label="projections")
    acc = ProjectionAccumulator(shape, gSig=gSig, fs=fs, n_frames=total, valid_mask=valid_mask, **options)
    for chunk in chunks:
        acc.append(chunk)
    return acc.result()
