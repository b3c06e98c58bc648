"""OASIS deconvolution of single traces, with a safe fall-back for degenerate traces."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
from oasis.functions import GetSn, deconvolve

__all__ = ["Deconvolved", "deconvolve_trace"]


class Deconvolved(NamedTuple):
    c: np.ndarray  # denoised calcium (baseline removed), float32
    s: np.ndarray  # spikes, float32
    baseline: float
    g: tuple  # AR coefficients
    sn: float  # noise std


@contextmanager
def _fixed_global_rng(seed: int = 0) -> Iterator[None]:
    """NumPy's global random state seeded with ``seed`` inside, restored after.

    OASIS's AR estimate draws from the global state (``np.random.normal``) when a
    fitted root falls outside (0, 1), so an unseeded process deconvolved the same
    trace differently from run to run. A fixed seed per trace keeps each result
    independent of the run and of the traces deconvolved before it; restoring
    the state leaves the caller's random numbers alone.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _stable_ar2(g) -> bool:
    g1, g2 = float(g[0]), float(g[1])
    disc = g1 * g1 + 4 * g2
    if disc < 0:
        return False
    r = (g1 + np.sqrt(disc)) / 2, (g1 - np.sqrt(disc)) / 2
    return 0 < r[0] < 1 and -1 < r[1] < 1


def deconvolve_trace(y: np.ndarray, *, p: int = 1, sn: float | None = None) -> Deconvolved:
    """Noise-constrained sparse non-negative deconvolution of ``y`` (OASIS, AR(p)).

    AR coefficients and baseline are estimated from the trace. An AR(2) fit that
    is not a decaying bi-exponential falls back to AR(1); a flat or non-finite
    trace gives zeros.

    References
    ----------
    Friedrich, J., Zhou, P. & Paninski, L. Fast online deconvolution of calcium
    imaging data. PLoS Comput. Biol. 13, e1005423 (2017).
    """
    y64 = np.nan_to_num(np.asarray(y, dtype=np.float64))
    n = y64.size
    zeros = np.zeros(n, np.float32)
    if n < 10 or np.ptp(y64) <= 1e-12 * max(1.0, float(np.abs(y64).max())):
        return Deconvolved(zeros, zeros.copy(), float(y64.mean()) if n else 0.0, (0.0,), 0.0)
    with warnings.catch_warnings(), _fixed_global_rng():
        # OASIS warns about its own numerical regularisation; those are not our users' concern.
        warnings.simplefilter("ignore")
        if sn is None:
            sn = float(GetSn(y64))
        sn = max(float(sn), 1e-9 * float(np.abs(y64).max()))
        result = None
        if p == 2:
            try:
                result = deconvolve(y64, tau_d=None, tau_r=None, sn=sn, penalty=1)
                if not _stable_ar2(np.atleast_1d(result.g)) or not np.all(np.isfinite(result.c)):
                    result = None
            except (ValueError, np.linalg.LinAlgError, ZeroDivisionError, FloatingPointError):
                result = None
        if result is None:
            try:
                result = deconvolve(y64, sn=sn, penalty=1)
                if not np.all(np.isfinite(result.c)):
                    result = None
            except (ValueError, np.linalg.LinAlgError, ZeroDivisionError, FloatingPointError):
                result = None
    if result is None:
        base = float(np.median(y64))
        return Deconvolved(np.maximum(y64 - base, 0).astype(np.float32), zeros, base, (0.0,), sn)
    return Deconvolved(
        np.asarray(result.c, np.float32),
        np.asarray(result.s, np.float32),
        float(result.b),
        tuple(float(v) for v in np.atleast_1d(result.g)),
        sn,
    )
