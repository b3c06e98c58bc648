"""Post-processing of traces: per-session detrending and noise scaling, AR(2) deconvolution.

Everything here works on one neuron's full-length trace at a time, so the
traces may be `TraceFile` s (K x T on disk): memory holds a few traces of T
frames, never K x T.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from oasis.functions import GetSn

from ._deconv import deconvolve_trace
from ._traces import TraceFile

__all__ = ["detrend_and_scale", "finalize_traces"]


def _detrend_trace(raw: np.ndarray, c: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One neuron: its raw trace detrended and scaled per session (float32), the noise std per session and
    the mean of the baseline removed from each session (in the raw trace's units)."""
    out = np.zeros(raw.shape, np.float32)
    noise = np.ones(len(bounds) - 1, np.float32)
    level = np.zeros(len(bounds) - 1, np.float64)
    for s, (s0, s1) in enumerate(zip(bounds[:-1], bounds[1:])):
        seg = raw[s0:s1].astype(np.float64)
        t = np.arange(seg.size, dtype=np.float64)
        quiet = c[s0:s1] <= 0.05 * max(float(c[s0:s1].max()), 1e-12)
        if quiet.sum() < 20:
            quiet = seg <= np.percentile(seg, 50)
        if seg.size >= 20 and quiet.sum() >= 10:
            slope, icpt = np.polyfit(t[quiet], seg[quiet], 1)
            level[s] = slope * t.mean() + icpt if seg.size else 0.0
            seg = seg - (slope * t + icpt)
        else:
            level[s] = np.median(seg) if seg.size else 0.0
            seg = seg - level[s]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sn = float(GetSn(seg)) if seg.size >= 20 else float(np.std(seg))
        if not np.isfinite(sn) or sn <= 0:
            sn = 1.0
        noise[s] = sn
        out[s0:s1] = seg / sn
    return out, noise, level


def detrend_and_scale(c_raw: np.ndarray, c: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per session: remove a linear baseline fitted where the neuron is silent, divide by the noise.

    Detrending each session on its own avoids the slanted traces left by one
    fit across concatenated sessions. Returns the scaled traces (noise units)
    and the noise std per neuron and session (K, n_sessions).
    """
    out = np.zeros(c_raw.shape, dtype=np.float32)
    noise = np.ones((c_raw.shape[0], len(bounds) - 1), np.float32)
    for k in range(c_raw.shape[0]):
        out[k], noise[k], _ = _detrend_trace(c_raw[k], c[k], bounds)
    return out, noise


def finalize_traces(c_raw, c, bounds: np.ndarray, *, directory: str | os.PathLike | None = None):
    """Scaled C_raw, AR(2)-deconvolved C and S (noise units, each session on its own), noise (K, n_sessions),
    SNR (K,) and the mean baseline removed from each session (K, n_sessions; in ``c_raw`` 's units).

    ``c_raw`` and ``c`` (K, T) are arrays or `TraceFile` s, read one neuron at
    a time; the three traces come back as `TraceFile` s in ``directory``
    (default: that of ``c_raw``), written one neuron at a time (see
    `detrend_and_scale`).
    """
    k_total, n_frames = c_raw.shape
    if directory is None:
        directory = getattr(c_raw, "directory", None)
    scaled, c_out, s_out = (TraceFile((k_total, n_frames), directory=directory) for _ in range(3))
    noise = np.ones((k_total, len(bounds) - 1), np.float32)
    snr = np.zeros(k_total, np.float32)
    level = np.zeros((k_total, len(bounds) - 1), np.float64)
    for k in range(k_total):
        row, noise[k], level[k] = _detrend_trace(c_raw[k], c[k], bounds)
        denoised, spikes = np.zeros_like(row), np.zeros_like(row)
        for s0, s1 in zip(bounds[:-1], bounds[1:]):  # calcium does not carry over between sessions
            d = deconvolve_trace(row[s0:s1], p=2, sn=1.0)
            denoised[s0:s1], spikes[s0:s1] = d.c, d.s
        scaled[k], c_out[k], s_out[k] = row, denoised, spikes
        snr[k] = denoised.max() if n_frames else 0.0
    return scaled, c_out, s_out, noise, snr, level
