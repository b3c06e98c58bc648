"""The result of source extraction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse

__all__ = ["Extraction"]


@dataclass(frozen=True)
class Extraction:
    """Neurons found in an aligned multi-session movie.

    Attributes
    ----------
    A : scipy.sparse.csc_array, (h*w, K) float32
        Footprints, pixels in C order, scaled so that ``A @ C_raw`` is the
        neural signal in movie units where the noise is homogeneous.
    C_raw : ndarray (K, T) float32
        Traces before deconvolution, detrended and divided by the noise std, per session.
        From `extract`, ``C_raw``, ``C`` and ``S`` are read-only memory maps
        (`numpy.memmap`) of unnamed files: they take memory only as they are read.
    C : ndarray (K, T) float32
        Denoised traces (AR(2) OASIS), same units.
    S : ndarray (K, T) float32
        Deconvolved activity (spikes), same units.
    cn, pnr : ndarray (h, w) float32
        Max-over-sessions local correlation and peak-to-noise images used for the seeds.
    session_bounds : ndarray (n_sessions + 1,) int64
        First frame of every session, then the total number of frames.
    dims : (h, w)
    snr : ndarray (K,)
        Peak of C in noise units; neurons are ordered by it, strongest first.
    noise : ndarray (K, n_sessions)
        Noise std of each neuron's raw trace per session (the scale removed from C_raw).
    centers : ndarray (K, 2)
        Footprint centres (row, col).
    seeds : ndarray (n, 2)
        All seed pixels (row, col) considered.
    history : list of dict
        Per iteration: number of neurons, relative footprint change, merges, removals; the
        round the loop stopped at says why (``stop``: ``"tol"``, ``"noise"`` or ``"stalled"``).
    convergence : dict
        How the rounds ended: ``converged``, ``stop`` (tol, noise, stalled, max_iter), ``rounds``,
        ``tol``, the last ``change``, and ``why`` in one sentence.
    params : dict
        The parameters the extraction ran with.
    f0 : ndarray (K, n_sessions) float32 or None
        Each neuron's resting fluorescence per session, in the units of ``C_raw * noise`` (the raw
        trace before noise scaling): the session's constant background (the ring model's ``b0``)
        under its footprint plus the mean baseline detrending removed from its trace. The
        denominator of ΔF/F (`caliali.outputs._dff`); None when not known.
    b0 : ndarray (n_sessions, h, w) float32 or None
        Each session's constant background image (the ring model's ``b0``, movie units); None when
        not known.
    images : `caliali.extraction._summary.SessionImages` or None
        Each session's Cn, PNR, mean and maximum frame on the extraction's grid (the background
        images of a review); None when the caller gave ``cn`` and ``pnr``.
    """

    A: scipy.sparse.csc_array
    C_raw: np.ndarray
    C: np.ndarray
    S: np.ndarray
    cn: np.ndarray
    pnr: np.ndarray
    session_bounds: np.ndarray
    dims: tuple[int, int]
    snr: np.ndarray
    noise: np.ndarray
    centers: np.ndarray
    seeds: np.ndarray
    history: list = field(default_factory=list)
    convergence: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    f0: np.ndarray | None = None
    b0: np.ndarray | None = None
    images: Any = None

    @property
    def n_neurons(self) -> int:
        return int(self.A.shape[1])

    @property
    def n_sessions(self) -> int:
        return len(self.session_bounds) - 1

    def by_session(self, name: str = "C") -> list[np.ndarray]:
        """``C``, ``C_raw`` or ``S`` split into one (K, t_s) array per session."""
        if name not in ("C", "C_raw", "S"):
            raise ValueError(f"unknown trace kind {name!r}; use 'C', 'C_raw' or 'S'")
        traces = getattr(self, name)
        b = self.session_bounds
        return [traces[:, b[i] : b[i + 1]] for i in range(self.n_sessions)]

    def footprint_images(self) -> np.ndarray:
        """Footprints as a dense (K, h, w) array (small data only)."""
        return self.A.T.toarray().reshape(self.n_neurons, *self.dims)
