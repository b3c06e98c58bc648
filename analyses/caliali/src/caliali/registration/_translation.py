"""Rigid translation between sessions by phase correlation."""

from __future__ import annotations

import numpy as np
from skimage.filters import window
from skimage.registration import phase_cross_correlation

from caliali.registration._errors import AlignmentError

__all__ = ["estimate_translations"]


def estimate_translations(
    images: list[np.ndarray],
    *,
    max_shift: float | None = None,
    upsample: int = 20,
) -> np.ndarray:
    """Backward translation of every session relative to the first, mean removed.

    Parameters
    ----------
    images : list of ndarray (H, W)
        One normalised projection per session (blood vessels, or neuron images
        when the vessels are unreliable).
    max_shift : float, optional
        Largest plausible shift in px (per axis); a larger estimate raises
        :class:`AlignmentError` rather than silently returning it. Default:
        a third of the smaller image side.
    upsample : int
        Subpixel precision 1/upsample px.

    Returns
    -------
    ndarray (n, 2) float64
        (dy, dx) per session, in the backward convention
        ``translated[y, x] = session[y + dy, x + dx]``, with the mean over
        sessions subtracted (no session is the reference).

    References
    ----------
    .. [1] Guizar-Sicairos M, Thurman ST, Fienup JR. Efficient subpixel image
       registration algorithms. Opt Lett 33(2):156-158, 2008.
    """
    shape = images[0].shape
    limit = max_shift if max_shift is not None else min(shape) / 3.0
    win = window("hann", shape)
    ref = images[0] * win
    shifts = np.zeros((len(images), 2))
    for i, img in enumerate(images[1:], start=1):
        shift, _, _ = phase_cross_correlation(ref, img * win, upsample_factor=upsample, normalization=None)
        # phase_cross_correlation returns s with ndi.shift(img, s) ~= ref, i.e.
        # ref[p] = img[p - s]: the backward translation is -s.
        shifts[i] = -np.asarray(shift, dtype=float)
        if np.abs(shifts[i]).max() > limit:
            raise AlignmentError(
                f"session {i}: estimated translation {shifts[i].round(1).tolist()} px exceeds "
                f"max_shift={limit:g} px; the projections may not show the same field of view "
                "(raise max_shift if the shift is real)."
            )
    return shifts - shifts.mean(axis=0)
