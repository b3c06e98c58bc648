"""Post-processing of traces: per-session detrending and noise scaling, AR(2) deconvolution."""

from __future__ import annotations

import warnings

import numpy as np
from oasis.functions import GetSn

from ._deconv import deconvolve_trace

__all__ = ["detrend_and_scale", "finalize_traces"]


def detrend_and_scale(c_raw: np.ndarray, c: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per session: remove a linear baseline fitted where the neuron is silent, divide by the noise.

    Detrending each session on its own avoids the slanted traces left by one
    fit across concatenated sessions. Returns the scaled traces (noise units)
    and the noise std per neuron and session (K, n_sessions).
    """
    out = np.zeros_like(c_raw, dtype=np.float32)
    noise = np.ones((c_raw.shape[0], len(bounds) - 1), np.float32)
    for k in range(c_raw.shape[0]):
        for s, (s0, s1) in enumerate(zip(bounds[:-1], bounds[1:])):
            seg = c_raw[k, s0:s1].astype(np.float64)
            t = np.arange(seg.size, dtype=np.float64)
            quiet = c[k, s0:s1] <= 0.05 * max(float(c[k, s0:s1].max()), 1e-12)
            if quiet.sum() < 20:
                quiet = seg <= np.percentile(seg, 50)
            if seg.size >= 20 and quiet.sum() >= 10:
                slope, icpt = np.polyfit(t[quiet], seg[quiet], 1)
                seg = seg - (slope * t + icpt)
            else:
                seg = seg - np.median(seg)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sn = float(GetSn(seg)) if seg.size >= 20 else float(np.std(seg))
            if not np.isfinite(sn) or sn <= 0:
                sn = 1.0
            noise[k, s] = sn
            out[k, s0:s1] = seg / sn
    return out, noise


def finalize_traces(c_raw: np.ndarray, c: np.ndarray, bounds: np.ndarray):
    """Scaled C_raw, AR(2)-deconvolved C and S (noise units, each session on its own), noise (K, n_sessions), SNR (K,)."""
    scaled, noise = detrend_and_scale(c_raw, c, bounds)
    c_out = np.zeros_like(scaled)
    s_out = np.zeros_like(scaled)
    for k in range(scaled.shape[0]):
        for s0, s1 in zip(bounds[:-1], bounds[1:]):  # calcium does not carry over between sessions
            d = deconvolve_trace(scaled[k, s0:s1], p=2, sn=1.0)
            c_out[k, s0:s1], s_out[k, s0:s1] = d.c, d.s
    snr = c_out.max(axis=1) if c_out.size else np.zeros(0, np.float32)
    return scaled, c_out, s_out, noise, snr
