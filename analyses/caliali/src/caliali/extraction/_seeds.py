"""Seeds: local maxima of Cn x PNR above the correlation and peak-to-noise thresholds."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max

from ._errors import ExtractionError

__all__ = ["find_seeds"]


def find_seeds(
    cn: np.ndarray,
    pnr: np.ndarray,
    *,
    gSig: float,
    min_corr: float,
    min_pnr: float,
    valid_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Seed pixels (n, 2) as (row, col), strongest Cn x PNR first.

    The images are the maximum over sessions, so a neuron active in any session
    gets a seed; the same seeds are used in every temporal batch, which is what
    gives each neuron one identity across sessions.

    References
    ----------
    Zhou, P. et al. eLife 7, e28728 (2018); Vergara, P. et al. Nat. Commun. (2025).
    """
    cn = np.asarray(cn, np.float32)
    pnr = np.asarray(pnr, np.float32)
    if cn.ndim != 2 or cn.shape != pnr.shape:
        raise ExtractionError(f"cn and pnr must be images of the same shape; got {cn.shape} and {pnr.shape}")
    score = ndimage.gaussian_filter(np.nan_to_num(cn) * np.nan_to_num(pnr), sigma=max(gSig / 3, 0.5))
    allowed = (np.nan_to_num(cn) >= min_corr) & (np.nan_to_num(pnr) >= min_pnr)
    if valid_mask is not None:
        allowed &= np.asarray(valid_mask, bool)
    if not allowed.any():
        return np.zeros((0, 2), np.int64)
    peaks = peak_local_max(
        score, min_distance=max(1, int(round(gSig))), labels=allowed.astype(np.int32), exclude_border=False
    )
    order = np.argsort(-score[peaks[:, 0], peaks[:, 1]], kind="stable")
    return peaks[order].astype(np.int64)
