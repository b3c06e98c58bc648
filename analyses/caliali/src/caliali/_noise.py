"""The white-noise level of a movie's pixels or of traces, from their power spectral density.

One estimator for the whole pipeline (the projections' noise images, the PNR
image that places seeds, the initialisation's check of each seed): the mean
periodogram power over the upper half of the band up to Nyquist, where calcium
transients, which rise in a few frames and decay over many, have little power
(CaImAn's ``get_noise_fft``, ``noise_method="mean"``, which its CNMF-E PNR image uses).

The median of absolute frame-to-frame differences, a common shortcut, is not
used: it breaks on 8-bit and compressed video, where most pixels hold the same
value from one frame to the next (a codec keeps a block unchanged until it
refreshes it). Then most differences are exactly zero and the median says
there is almost no noise: at the dark, vignetted edges of minian's demo movie
65-83 % of the differences are zero, the median estimate was 2-4x below this
one (0.01 against 0.028 in the high-passed frames), the PNR there doubled
(16 against 8.7 inside the field; 7.3 against 7.2 with this estimator), seeds
landed on the codec's blocks and components fitted their step-shaped traces.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

__all__ = ["psd_noise"]

# the band of frequencies, as fractions of the sampling rate, whose mean power is the noise's
BAND = (0.25, 0.5)
# bytes of spectrum computed at once: the temporaries stay small whatever the movie
_BLOCK_BYTES = 8 * 2**20


def psd_noise(data: np.ndarray, *, band: tuple[float, float] = BAND) -> np.ndarray:
    """Noise standard deviation of every series along the first axis of ``data`` (t, ...), float32.

    ``sqrt(mean |FFT|^2 / t)`` over the frequencies in ``band`` (fractions of the
    sampling rate, ``(lo, hi]``): for white noise of standard deviation s each
    periodogram value has mean s^2. Series of fewer than 2 samples have no
    frequency in the band: their noise is 0 (unknown). Computed a block of
    series at a time, in float64.
    """
    arr = np.asarray(data)
    t, rest = arr.shape[0], arr.shape[1:]
    out = np.zeros(rest, np.float32)
    if t < 2:
        return out
    freqs = np.fft.rfftfreq(t)
    sel = np.flatnonzero((freqs > band[0]) & (freqs <= band[1]))
    if len(sel) == 0:
        return out
    flat = arr.reshape(t, -1)
    flat_out = out.reshape(-1)
    step = max(1, _BLOCK_BYTES // (16 * (t // 2 + 1)))
    for j in range(0, flat.shape[1], step):
        block = flat[:, j : j + step].astype(np.float64)
        spec = scipy.fft.rfft(block, axis=0)[sel]
        flat_out[j : j + step] = np.sqrt((spec.real**2 + spec.imag**2).mean(axis=0) / t)
    return out
