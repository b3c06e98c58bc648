"""Neural activity: log-normal spike rates, Bernoulli spikes, double-exponential calcium."""

from __future__ import annotations

import numpy as np
from scipy import signal

__all__ = ["spike_rates", "spikes", "calcium"]


def spike_rates(rng: np.random.Generator, n: int, *, median: float = 0.007, log_sigma: float = 0.5) -> np.ndarray:
    """Per-neuron spike probability per frame, log-normal around ``median``."""
    return np.clip(median * np.exp(log_sigma * rng.standard_normal(n)), 1e-5, 0.5)


def spikes(rng: np.random.Generator, rates: np.ndarray, session_frames: list[int], active: np.ndarray) -> np.ndarray:
    """Bernoulli spikes (K, T_total) float32, session by session.

    A neuron active in a session spikes at least once there (one spike is
    placed at a random frame if the draw gave none); an inactive one never.
    """
    blocks = []
    for s, n_frames in enumerate(session_frames):
        block = (rng.random((len(rates), n_frames)) < rates[:, None]).astype(np.float32)
        block[~active[s]] = 0
        for k in np.flatnonzero(active[s] & (block.sum(axis=1) == 0)):
            block[k, rng.integers(n_frames)] = 1
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def kernel(tau_rise: float, tau_decay: float) -> np.ndarray:
    """exp(-t/td) - exp(-t/tr) sampled at frames, normalised to peak 1, until it falls under ~1e-5."""
    t = np.arange(int(np.ceil(tau_decay * np.log(1e5))) + 2, dtype=np.float64)
    h = np.exp(-t / tau_decay) - np.exp(-t / tau_rise)
    return h / h.max()


def calcium(s: np.ndarray, session_frames: list[int], tau_rise: np.ndarray, tau_decay: np.ndarray) -> np.ndarray:
    """Calcium traces (K, T_total) float32: spikes convolved with each neuron's kernel.

    Convolution restarts at every session start (separate recordings).
    """
    out = np.zeros_like(s, dtype=np.float32)
    bounds = np.concatenate([[0], np.cumsum(session_frames)])
    for k in range(s.shape[0]):
        h = kernel(tau_rise[k], tau_decay[k])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            out[k, a:b] = signal.lfilter(h, [1.0], s[k, a:b])
    return out
