"""Rigid shift estimation against a template that is carried across chunks.

Registration is cross-correlation of blood-vessel images computed with batched
FFTs over a whole chunk, restricted to ``|dy|, |dx| <= max_shift``, with a
three-point Gaussian subpixel refinement of the peak. It is written here rather than
calling ``skimage.registration.phase_cross_correlation`` or
``cv2.phaseCorrelate`` because neither bounds the shift (a vessel-poor frame
can lock onto a wrap-around peak), both work one frame at a time, and both
correlate two equally cropped images, which pulls estimates towards zero
(see the tests for the error on known shifts). Speed is comparable.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from scipy import ndimage

from ._errors import MotionError
from .shifts import apply_shifts

__all__ = ["MIN_DISTINCT", "RigidTemplate", "border_crop", "estimate_shifts", "fill_unregistered"]

# Frames registered per FFT batch.
_BLOCK = 64

# A frame registers when its correlation peak stands at least this many times as far above the
# median of the searched lags as any other peak among them (see ``estimate_shifts``).
MIN_DISTINCT = 2.0


def border_crop(frame_shape: tuple[int, int], border: float) -> tuple[slice, slice]:
    """Slices that drop ``border`` (a fraction, e.g. 0.1) of each side."""
    if not 0 <= border < 0.5:
        raise MotionError(f"border must be a fraction in [0, 0.5), got {border}")
    h, w = frame_shape
    by, bx = int(round(border * h)), int(round(border * w))
    return slice(by, h - by), slice(bx, w - bx)


def _prep(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32, copy=True)
    x -= x.mean(axis=(-2, -1), keepdims=True)
    return x


def _vertex(cm, c0, cp):
    """Vertex of the Gaussian through three samples at -1, 0, 1 (parabola of
    the logarithm; plain parabola where a sample is not positive)."""
    pos = (cm > 0) & (c0 > 0) & (cp > 0)
    lm, l0, lp = (np.log(np.where(pos, v, 1.0)) for v in (cm, c0, cp))
    num = np.where(pos, lm - lp, cm - cp)
    den = np.where(pos, lm - 2 * l0 + lp, cm - 2 * c0 + cp)
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(den < 0, 0.5 * num / den, 0.0)
    return np.clip(off, -0.5, 0.5)


def estimate_shifts(
    images: np.ndarray,
    template: np.ndarray,
    *,
    max_shift: float = 20,
    border: float = 0.1,
    distinctness: bool = False,
) -> tuple[np.ndarray, ...]:
    """Rigid shifts that bring each image onto the template.

    Parameters
    ----------
    images : (t, h, w) array
        Registration images (blood-vessel enhanced frames).
    template : (h, w) array
    max_shift : float
        Largest shift searched, px, per axis.
    border : float
        Fraction of each side cropped before estimation.
    distinctness : bool
        Also return how clearly each frame's peak stands out (below).

    Notes
    -----
    The subpixel peak is the vertex of a Gaussian through the peak and its two
    neighbours on each axis. On smoothed-noise images with known Fourier
    shifts this is as accurate as a 20x upsampled matrix-multiply DFT
    (Guizar-Sicairos et al. 2008), and faster.

    Returns
    -------
    shifts : (t, 2) float64 array, columns (dy, dx)
        Apply with :func:`caliali.motion.apply_shifts`:
        ``corrected[y, x] = image[y + dy, x + dx]`` matches the template.
    peak : (t,) float64 array
        Normalised cross-correlation at the peak (0..1); low values flag frames
        that did not register.
    distinct : (t,) float64 array, only with ``distinctness=True``
        How far the peak stands above the median of the searched lags, divided
        by how far the next highest local maximum among them does (inf when
        there is none). A frame with structure to register on has one hill in
        its correlation map; a frame of noise alone (nothing active, no
        vessels) has many of about the same height, the highest at a random
        lag: on white noise the ratio's median is 1.6 (95th percentile 2.3);
        a frame below :data:`MIN_DISTINCT` did not register.

    References
    ----------
    .. [1] Guizar-Sicairos, M., Thurman, S. T. & Fienup, J. R. (2008). Efficient
       subpixel image registration algorithms. Optics Letters 33, 156-158.
    """
    imgs = np.asarray(images)
    tmpl = np.asarray(template)
    if imgs.ndim == 3 and len(imgs) > _BLOCK:
        # Bound the FFT work arrays (about 6 frame copies) by registering in blocks.
        parts = [
            estimate_shifts(imgs[i : i + _BLOCK], tmpl, max_shift=max_shift, border=border, distinctness=distinctness)
            for i in range(0, len(imgs), _BLOCK)
        ]
        return tuple(np.concatenate([p[j] for p in parts]) for j in range(len(parts[0])))
    if imgs.ndim != 3 or tmpl.shape != imgs.shape[1:]:
        raise MotionError(
            f"estimate_shifts needs (t, h, w) images and an (h, w) template of the same size, "
            f"got {imgs.shape} and {tmpl.shape}"
        )
    if not max_shift >= 0:
        raise MotionError(f"max_shift must be >= 0 px, got {max_shift}")
    # Only the template is cropped: correlating the cropped template against
    # the whole frame keeps the number of overlapping pixels the same at every
    # lag up to the border width, which removes the pull towards zero shift
    # that correlating two equal crops has.
    rows, cols = border_crop(imgs.shape[1:], border)
    a = _prep(imgs)
    crop = _prep(np.asarray(tmpl[rows, cols], dtype=np.float32)[None])[0]
    b = np.zeros(imgs.shape[1:], dtype=np.float32)
    b[rows, cols] = crop
    h, w = b.shape
    m = int(min(np.floor(max_shift), h // 2 - 2, w // 2 - 2))
    if m < 1:
        raise MotionError(f"frames {b.shape} too small to search shifts; use a smaller max_shift")
    fa = scipy.fft.rfft2(a, workers=-1)
    fa *= np.conj(scipy.fft.rfft2(b, workers=-1))[None]
    corr = scipy.fft.irfft2(fa, s=(h, w), workers=-1)
    # Integer peak inside the window of allowed shifts.
    ry = np.arange(-m, m + 1) % h
    rx = np.arange(-m, m + 1) % w
    win = corr[:, ry][:, :, rx].reshape(len(corr), -1)
    k = np.argmax(win, axis=1)
    if distinctness:
        distinct = _distinctness(win.reshape(len(win), 2 * m + 1, 2 * m + 1), k)
    iy, ix = np.unravel_index(k, (2 * m + 1, 2 * m + 1))
    c0 = win[np.arange(len(win)), k]
    coarse = np.stack([iy - m, ix - m], axis=1).astype(np.float64)
    frame, y0, x0 = np.arange(len(corr)), ry[iy], rx[ix]

    def at(dy: int, dx: int) -> np.ndarray:
        return corr[frame, (y0 + dy) % h, (x0 + dx) % w]

    fine = coarse + np.stack([_vertex(at(-1, 0), c0, at(1, 0)), _vertex(at(0, -1), c0, at(0, 1))], axis=1)
    shifts = np.clip(fine, -max_shift, max_shift)
    a_crop = a[:, rows, cols]
    norm = np.sqrt((a_crop * a_crop).sum(axis=(1, 2)) * float((crop * crop).sum()))
    with np.errstate(divide="ignore", invalid="ignore"):
        peak = np.clip(np.where(norm > 0, c0 / norm, 0.0), -1.0, 1.0)
    if distinctness:
        return shifts, peak.astype(np.float64), distinct
    return shifts, peak.astype(np.float64)


def _distinctness(win: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(peak - median) / (next local maximum - median) of each (n, s, s) correlation window;
    ``k`` the flat index of each window's peak. Maxima on the window's edge are the slope of a hill
    outside it, not peaks, and are not counted."""
    n = len(win)
    local = win == ndimage.maximum_filter(win, size=(1, 3, 3), mode="nearest")
    local[:, 0, :] = local[:, -1, :] = local[:, :, 0] = local[:, :, -1] = False
    flat = local.reshape(n, -1)
    flat[np.arange(n), k] = False
    values = win.reshape(n, -1)
    base = np.median(values, axis=1)
    top = values[np.arange(n), k] - base
    other = np.where(flat, values, -np.inf).max(axis=1) - base
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(other > 0, top / np.where(other > 0, other, 1.0), np.inf).astype(np.float64)


def fill_unregistered(shifts: np.ndarray, registered: np.ndarray, before: np.ndarray | None = None) -> np.ndarray:
    """Shifts of the frames that did not register, interpolated linearly in time between the registered
    frames around them. ``before`` is the last registered shift of the chunk before, standing at the
    frame before this chunk: frames ahead of the first registered one are interpolated from it, or,
    without it, take the first registered shift; frames after the last registered one take its
    shift. With no registered frame, every frame takes ``before``, or no shift."""
    out = np.array(shifts, dtype=np.float64, copy=True)
    ok = np.asarray(registered, bool)
    if ok.all():
        return out
    idx = np.arange(len(out))
    if not ok.any():
        out[:] = before if before is not None else 0.0
        return out
    good = idx[ok]
    for col in range(2):
        xp, fp = good, out[ok, col]
        if before is not None:
            xp, fp = np.concatenate([[-1], xp]), np.concatenate([[before[col]], fp])
        out[~ok, col] = np.interp(idx[~ok], xp, fp)
    return out


class RigidTemplate:
    """A registration template refined as aligned frames arrive.

    The first chunk seeds it: its mean image is registered against, the chunk
    is re-registered against the mean of its aligned frames
    (``n_init_iter`` times). Later chunks are registered against the current
    template, and their aligned images are folded into it as a running mean, so
    the template keeps sharpening without drifting.

    Parameters
    ----------
    max_shift, border : see :func:`estimate_shifts`.
    n_init_iter : int
        Refinement passes on the first chunk.
    """

    def __init__(self, *, max_shift: float = 20, border: float = 0.1, n_init_iter: int = 2):
        self.max_shift = max_shift
        self.border = border
        self.n_init_iter = n_init_iter
        self.template: np.ndarray | None = None
        self.n_frames = 0
        self.last_registered: np.ndarray | None = None  # the last shift of a frame that registered

    def _fold(self, aligned: np.ndarray) -> None:
        k = aligned.shape[0]
        mean = aligned.mean(axis=0, dtype=np.float64)
        if self.template is None:
            self.template, self.n_frames = mean, k
            return
        total = self.n_frames + k
        self.template = (self.template * self.n_frames + mean * k) / total
        self.n_frames = total

    def _estimate(self, imgs: np.ndarray, template: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shifts, peak, distinct = estimate_shifts(
            imgs, template, max_shift=self.max_shift, border=self.border, distinctness=True
        )
        registered = distinct >= MIN_DISTINCT
        return fill_unregistered(shifts, registered, self.last_registered), peak, registered

    def register(self, images: np.ndarray, *, with_registered: bool = False) -> tuple[np.ndarray, ...]:
        """Shifts (t, 2) and peak correlations (t,) of a chunk of registration
        images; the template is updated with the aligned images.

        A frame whose correlation peak is not distinct (:data:`MIN_DISTINCT`)
        did not register: its shift is interpolated from the frames around it
        that did (:func:`fill_unregistered`), as a dropped frame's is, instead
        of the random lag its noise peaked at. ``with_registered`` also returns
        which frames registered, (t,) bool.
        """
        imgs = np.asarray(images, dtype=np.float32)
        if imgs.ndim != 3 or imgs.shape[0] == 0:
            raise MotionError(f"register needs a non-empty (t, h, w) chunk, got shape {imgs.shape}")
        if self.template is None:
            template = imgs.mean(axis=0)
            for _ in range(max(1, self.n_init_iter)):
                shifts, peak, registered = self._estimate(imgs, template)
                shifts -= np.median(shifts[registered] if registered.any() else shifts, axis=0)
                template = apply_shifts(imgs, shifts, interpolation="linear").mean(axis=0)
            shifts, peak, registered = self._estimate(imgs, template)
        else:
            shifts, peak, registered = self._estimate(imgs, self.template)
        if registered.any():
            self.last_registered = shifts[np.flatnonzero(registered)[-1]].copy()
        self._fold(apply_shifts(imgs, shifts, interpolation="linear"))
        return (shifts, peak, registered) if with_registered else (shifts, peak)
