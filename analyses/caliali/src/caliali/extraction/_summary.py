"""Neuron summary images: peak-to-noise ratio and local correlation, max over batches.

Computed batch by batch on the spatially high-passed movie, as in CNMF-E, and
combined by maximum, so a neuron active in a single session still stands out.
The same pass over the frames also gives each session's mean and maximum frame
(`SessionImages`): the background images a reviewer draws contours on, on the
grid of the footprints, at the cost of a sum and a maximum per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from caliali._cv2 import cv2
from caliali._noise import psd_noise

from ._batches import check_session_bounds, plan_batches
from ._source import open_source

__all__ = ["SessionImages", "session_images", "summary_images", "highpass_kernel", "highpass", "noise_level"]

# Frames a batch needs for its noise level (a few frequencies of its spectrum),
# as the projections ask.
_MIN_FRAMES = 8


def highpass_kernel(gSig: float) -> np.ndarray:
    """Zero-mean Gaussian kernel that keeps neuron-sized blobs and removes smooth background.

    References
    ----------
    Zhou, P. et al. Efficient and accurate extraction of in vivo calcium signals
    from microendoscopic video data. eLife 7, e28728 (2018).
    """
    ksize = int(3 * gSig / 2) * 2 + 1
    ker = cv2.getGaussianKernel(ksize, gSig)
    ker2 = (ker @ ker.T).astype(np.float64)
    inside = ker2 >= ker2[:, 0].max()
    ker2[inside] -= ker2[inside].mean()
    ker2[~inside] = 0
    return ker2.astype(np.float32)


def highpass(frames: np.ndarray, kernel: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Each frame of ``frames`` (t, h, w) filtered with ``kernel``: a new float32 array, or ``out``.

    ``out`` may be ``frames`` itself (float32): the frames are then filtered in place.
    """
    if out is None:
        out = np.empty_like(frames, dtype=np.float32)
    for i, frame in enumerate(frames):
        cv2.filter2D(frame, cv2.CV_32F, kernel, dst=out[i], borderType=cv2.BORDER_REFLECT)
    return out


def noise_level(traces: np.ndarray, axis: int = 0) -> np.ndarray:
    """White-noise std of every series along ``axis``: the PSD estimate (`caliali._noise.psd_noise`).

    Fewer than 2 samples have no frequency to measure it by: their noise is 0 (unknown).
    """
    return psd_noise(np.moveaxis(np.asarray(traces), axis, 0))


def _local_correlation(z: np.ndarray) -> np.ndarray:
    """Mean correlation of each pixel with its 8 neighbours; ``z`` is (t, h, w), zero-mean, unit-norm."""
    h, w = z.shape[1:]
    total = np.zeros((h, w), np.float32)
    count = np.zeros((h, w), np.float32)
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        ys, yd = slice(0, h - dy), slice(dy, h)
        xs = slice(max(0, -dx), w - max(0, dx))
        xd = slice(xs.start + dx, xs.stop + dx)
        prod = np.einsum("tij,tij->ij", z[:, ys, xs], z[:, yd, xd])
        total[ys, xs] += prod
        total[yd, xd] += prod
        count[ys, xs] += 1
        count[yd, xd] += 1
    return total / count


def batch_summary(
    frames: np.ndarray, *, gSig: float, noise_thr: float = 3.0, overwrite: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(Cn, PNR) of one batch (t, h, w) of raw frames; ``overwrite`` works in ``frames`` (float32) itself.

    A batch of fewer than ``_MIN_FRAMES`` frames (only a session that short:
    batches split a session evenly) has no usable noise estimate, so it gives
    zeros rather than a PNR over a noise of almost nothing.
    """
    if len(frames) < _MIN_FRAMES:
        return np.zeros(frames.shape[1:], np.float32), np.zeros(frames.shape[1:], np.float32)
    hy = highpass(frames, highpass_kernel(gSig), out=frames if overwrite else None)
    hy -= np.median(hy[::5], axis=0)  # every 5th frame: as robust, 5x cheaper
    sn = noise_level(hy[:1000])  # the noise is stationary; 1000 frames estimate it within a few percent
    sn = np.maximum(sn, 1e-6 * max(float(sn.max()), 1e-12))
    pnr = hy.max(axis=0) / sn
    hy[hy < noise_thr * sn] = 0
    hy -= hy.mean(axis=0)
    norm = np.sqrt(np.einsum("tij,tij->ij", hy, hy))
    hy /= np.where(norm > 0, norm, 1)
    return _local_correlation(hy), pnr.astype(np.float32)


@dataclass(frozen=True)
class SessionImages:
    """Per-session summary images of a movie, each (n_sessions, h, w) float32, on the movie's grid.

    ``cn`` and ``pnr``: the maximum over the session's batches (-1 and 0 where no batch of the
    session was long enough to measure); ``mean`` and ``max``: the session's mean and maximum
    frame; ``frames``: each session's number of frames.
    """

    cn: np.ndarray
    pnr: np.ndarray
    mean: np.ndarray
    max: np.ndarray
    frames: np.ndarray

    def whole(self) -> dict[str, np.ndarray]:
        """The images over the whole recording (h, w) float32 by kind (``Cn``, ``PNR``, ``mean``,
        ``max``): maxima over sessions, the mean weighted by each session's frames."""
        weights = self.frames.astype(np.float64) / max(int(self.frames.sum()), 1)
        mean = np.tensordot(weights, self.mean.astype(np.float64), axes=1)
        return {
            "Cn": self.cn.max(axis=0),
            "PNR": self.pnr.max(axis=0),
            "mean": mean.astype(np.float32),
            "max": self.max.max(axis=0),
        }

    def session(self, i: int) -> dict[str, np.ndarray]:
        """Session ``i`` 's images (h, w) float32 by kind."""
        return {"Cn": self.cn[i], "PNR": self.pnr[i], "mean": self.mean[i], "max": self.max[i]}


def session_images(
    video,
    *,
    session_bounds=None,
    gSig: float,
    batch_frames: int | None = None,
    memory_budget: int | str = "2GB",
    progress: Callable[[float, str], None] | None = None,
) -> SessionImages:
    """Cn, PNR, mean and maximum of every session of ``video``, one pass over its frames in batches.

    Arguments as `summary_images`. Each batch is read once: its mean and maximum are taken from the
    raw frames before the high-pass filter of `batch_summary` works on them in place.
    """
    source = open_source(video)
    bounds = check_session_bounds(session_bounds, source.n_frames)
    batches = plan_batches(bounds, source.frame_shape, batch_frames=batch_frames, memory_budget=memory_budget, copies=4)
    n_sessions = len(bounds) - 1
    shape = (n_sessions, *source.frame_shape)
    cn = np.full(shape, -1.0, np.float32)
    pnr = np.zeros(shape, np.float32)
    sums = np.zeros(shape, np.float64)
    peak = np.full(shape, -np.inf, np.float32)
    for i, batch in enumerate(batches):
        frames = source.read(batch.start, batch.stop)  # a fresh copy
        sums[batch.session] += frames.sum(axis=0, dtype=np.float64)
        np.maximum(peak[batch.session], frames.max(axis=0), out=peak[batch.session])
        if batch.stop - batch.start >= _MIN_FRAMES:  # shorter only in a session that short: nothing to measure
            c, p = batch_summary(frames, gSig=gSig, overwrite=True)
            np.maximum(cn[batch.session], c, out=cn[batch.session])
            np.maximum(pnr[batch.session], p, out=pnr[batch.session])
        del frames
        if progress is not None:
            progress((i + 1) / len(batches), f"summary images, batch {i + 1}/{len(batches)}")
    frames_per_session = np.diff(bounds).astype(np.int64)
    mean = (sums / np.maximum(frames_per_session, 1)[:, None, None]).astype(np.float32)
    peak[~np.isfinite(peak)] = 0.0  # an empty session has no frame
    return SessionImages(cn=cn, pnr=pnr, mean=mean, max=peak, frames=frames_per_session)


def summary_images(
    video,
    *,
    session_bounds=None,
    gSig: float,
    batch_frames: int | None = None,
    memory_budget: int | str = "2GB",
    progress: Callable[[float, str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Local correlation image Cn and peak-to-noise ratio PNR, maximum over batches.

    Parameters
    ----------
    video : array-like, zarr array or path, or VideoReader
        Movie (t, h, w), read one batch at a time.
    session_bounds : array of int, optional
        Frame index where each session starts, plus the total; batches never
        straddle sessions.
    gSig : float
        Neuron radius in pixels.
    batch_frames, memory_budget
        Batch size, or the budget it is derived from.
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    cn, pnr : ndarray (h, w) float32

    References
    ----------
    Zhou, P. et al. eLife 7, e28728 (2018) — Cn and PNR on the high-passed movie
    with values below 3 sigma set to zero.
    """
    images = session_images(
        video,
        session_bounds=session_bounds,
        gSig=gSig,
        batch_frames=batch_frames,
        memory_budget=memory_budget,
        progress=progress,
    )
    whole = images.whole()
    return whole["Cn"], whole["PNR"]
