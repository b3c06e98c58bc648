"""Quality of a component's trace: how exceptional its strongest calcium event is against its noise.

A calcium transient lasts several frames (its decay time), so a real neuron's
raw trace stays high for consecutive frames; a component fitted to noise
reaches a high value in a single frame now and then, but rarely several in a
row. The event SNR below scores the least probable run of ``n`` consecutive
frames under the component's own Gaussian noise, as the level that each of the
``n`` frames would have to reach for a run that improbable (CaImAn's "event
exceptionality", without its extra factor of 3 on the noise).
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr, ndtri_exp

__all__ = [
    "AUTO_FALSE_ALARMS",
    "AUTO_SNR_CAP",
    "decay_frames",
    "dip_snrs",
    "event_frames",
    "event_snr",
    "false_alarm_level",
]

# ``min_snr="auto"`` never asks more than this of a component (the fixed default before it)
AUTO_SNR_CAP = 3.0
# ``min_snr="auto"``: how many components fitted to noise a run may expect to let through
AUTO_FALSE_ALARMS = 0.05
# the dips' upper tail the level is extrapolated from: this fraction of them, and at least this many
_TAIL_FRACTION, _TAIL_MIN = 0.1, 5


def decay_frames(c: np.ndarray) -> float:
    """Decay time constant, in frames, of denoised AR(1) traces (K, T): the median over traces.

    Between spikes a deconvolved trace decays as ``c[t] = g c[t-1]``; ``g`` is
    the median ratio of consecutive decaying samples and the time constant
    ``-1 / ln g``; the median over traces is returned. NaN when no trace decays.
    """
    taus = []
    for row in np.atleast_2d(np.asarray(c)):
        row = row.astype(np.float64)  # one trace at a time in double precision
        prev, cur = row[:-1], row[1:]
        ok = (prev > 1e-3 * max(float(row.max()), 1e-12)) & (cur > 0) & (cur < prev)
        if ok.sum() >= 5:
            g = float(np.median(cur[ok] / prev[ok]))
            if 0 < g < 1:
                taus.append(-1.0 / np.log(g))
    return float(np.median(taus)) if taus else float("nan")


def event_frames(c: np.ndarray, c_raw: np.ndarray, *, strongest: int = 10) -> int:
    """Length of the run scored by `event_snr`: two decay times, between 3 and 10 frames.

    The decay time is the median of the ``strongest`` components' (highest
    denoised peak over the noise of ``c_raw - c``): early in the iterations
    most components can be noise, whose deconvolved traces decay erratically,
    while the indicator and frame rate are the same for every real neuron.
    Two decay times cover most of a transient (the trace falls to e^-2 of its
    peak); single-frame noise excursions cannot sustain a run that long. The
    cap keeps slow indicators at high frame rates comparable with CaImAn's
    choice (decay time x frame rate, typically 4-10 frames).
    """
    if isinstance(c, np.ndarray) and c.ndim == 1:
        c, c_raw = c[None], np.asarray(c_raw)[None]
    # one neuron's trace at a time: c and c_raw may be trace files (K x T on disk)
    mad, top = np.zeros(len(c), np.float32), np.zeros(len(c), np.float32)
    for k in range(len(c)):
        row = np.asarray(c[k], np.float32)
        resid = np.asarray(c_raw[k], np.float32) - row
        mad[k] = np.median(np.abs(resid - np.median(resid)))
        top[k] = row.max()
    peak = top / np.maximum(mad / 0.6745, 1e-12)
    tau = decay_frames(c[np.argsort(-peak, kind="stable")[:strongest]])
    return 3 if not np.isfinite(tau) else int(np.clip(round(2 * tau), 3, 10))


def event_snr(c_raw: np.ndarray, c: np.ndarray, bounds: np.ndarray, n: int, *, dips: bool = False) -> float:
    """Event SNR of one component: its most exceptional run of ``n`` consecutive frames, best session.

    Per session, the noise is the robust standard deviation of ``c_raw - c``
    (the raw trace minus the denoised one), the baseline its median; each frame
    gets the Gaussian log tail probability of ``(c_raw - baseline) / noise``,
    and the least probable run of ``n`` consecutive frames is turned back into
    the z-level each of its frames would need: ``-Phi^-1(exp(mean log p))``.
    The best session counts, so a neuron active in one session only keeps its
    score. ``-inf`` when no session is long enough or has any noise.
    ``dips=True`` scores the runs below the baseline instead: calcium only
    rises, so how far a trace dips is what its noise alone reaches (`dip_snrs`, `false_alarm_level`).

    References
    ----------
    Giovannucci, A. et al. CaImAn: an open source tool for scalable calcium
    imaging data analysis. eLife 8, e38173 (2019) (``compute_event_exceptionality``).
    Zhou, P. et al. eLife 7, e28728 (2018).
    """
    c_raw = np.asarray(c_raw, np.float64)
    c = np.asarray(c, np.float64)
    best = -np.inf
    for s0, s1 in zip(bounds[:-1], bounds[1:]):
        if s1 - s0 < n:
            continue
        raw, resid = c_raw[s0:s1], c_raw[s0:s1] - c[s0:s1]
        base = float(np.median(resid))
        sn = float(np.median(np.abs(resid - base))) / 0.6745
        if not sn > 0:
            continue
        z = (raw - base) / sn
        logp = log_ndtr(z if dips else -z)  # log P(noise <= value) for a dip, log P(noise >= value) for an event
        window = np.convolve(logp, np.full(n, 1.0 / n), mode="valid").min()
        best = max(best, float(-ndtri_exp(window)))
    return best


def dip_snrs(c, c_raw, bounds: np.ndarray, n: int) -> np.ndarray:
    """The dip SNR (`event_snr` with ``dips``) of every component with a nonzero trace that can be scored:
    how exceptional a run of ``n`` frames below its baseline its noise reaches. ``c`` and ``c_raw`` (K, T)
    are arrays or `TraceFile` s, read one neuron at a time."""
    out = []
    for k in range(len(c)):
        trace = np.asarray(c[k])
        if trace.max() > 0:
            out.append(event_snr(c_raw[k], trace, bounds, n, dips=True))
    dips = np.array(out, np.float64)
    return dips[np.isfinite(dips)]


def false_alarm_level(dips: np.ndarray, expected: float = AUTO_FALSE_ALARMS) -> float:
    """The event SNR that noise like these ``dips`` would rise above in ``expected`` of their traces.

    Noise is as likely to rise as to dip, so the dips of K traces show how high K traces of noise
    rise. The deepest dip is where about one of them would; the level where only ``expected`` (of
    all K) would lies beyond it, found from the dips' upper tail: a best run's score over many
    windows is an extreme value, whose tail falls exponentially, so over the deepest m dips (a tenth,
    at least 5) the count above a level L is m exp(-(L - u) / beta), u the (m+1)-th deepest and
    beta the mean excess over it (its maximum-likelihood scale). Never below the deepest dip;
    ``inf`` when fewer than 2 m dips can be scored (too few to tell a tail).
    """
    d = np.sort(np.asarray(dips, np.float64)[np.isfinite(dips)])[::-1]
    m = max(_TAIL_MIN, int(np.ceil(_TAIL_FRACTION * d.size)))
    if d.size < 2 * m:
        return float("inf")
    u = float(d[m])
    beta = float(np.mean(d[:m] - u))
    return max(float(d[0]), u + beta * float(np.log(m / expected)))
