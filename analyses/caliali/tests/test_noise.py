"""The noise level the pipeline measures pixels and traces by (`caliali._noise.psd_noise`)."""

import numpy as np

from caliali._noise import psd_noise
from caliali.extraction._summary import batch_summary, noise_level
from caliali.projections import noise_level as projection_noise_level


def test_white_noise_gives_its_standard_deviation_and_calcium_transients_raise_it_little():
    rng = np.random.default_rng(0)
    noise = 2.0 * rng.standard_normal((1000, 400))
    assert abs(float(psd_noise(noise).mean()) - 2.0) < 0.03
    # transients: fast rise, 20-frame decay, ten times the noise
    spikes = (rng.random((1000, 400)) < 0.01) * 20.0
    calcium = np.zeros_like(spikes)
    for t in range(1, 1000):
        calcium[t] = 0.95 * calcium[t - 1] + spikes[t]
    traces = noise + calcium
    # a transient's sudden rise has power at every frequency: a little, against the traces' spread
    assert 2.0 < float(psd_noise(traces).mean()) < 2.4 < 6.0 < float(traces.std(axis=0).mean())


def test_a_video_that_holds_its_pixels_still_between_frames_still_has_noise():
    """8-bit video keeps most pixels' values from one frame to the next (integer steps, a codec's
    unchanged blocks): the median of frame-to-frame differences is then 0, as if there were no noise."""
    rng = np.random.default_rng(1)
    quantized = np.round(0.4 * rng.standard_normal((2000, 50)))
    d = np.diff(quantized, axis=0)
    assert np.all(np.median(np.abs(d - np.median(d, axis=0)), axis=0) == 0)  # the shortcut's answer
    held = np.repeat(0.5 * rng.standard_normal((400, 50)), 5, axis=0)  # a block refreshed every 5th frame
    for series in (quantized, held):
        sd = psd_noise(series)
        assert np.all(sd > 0.1 * series.std(axis=0)), sd.min()


def test_shapes_axes_and_too_short_series():
    rng = np.random.default_rng(2)
    movie = rng.standard_normal((64, 5, 7)).astype(np.float32)
    sd = psd_noise(movie)
    assert sd.shape == (5, 7) and sd.dtype == np.float32
    np.testing.assert_array_equal(noise_level(np.moveaxis(movie, 0, 2), axis=2), sd)
    np.testing.assert_array_equal(projection_noise_level(movie), sd)
    assert float(psd_noise(movie[:, 0, 0])) == sd[0, 0]
    np.testing.assert_array_equal(psd_noise(movie[:1]), np.zeros((5, 7), np.float32))
    assert np.all(psd_noise(movie[:2]) > 0)


def test_pixels_a_codec_holds_still_do_not_stand_out_in_the_pnr_image():
    """Where a codec holds 8 x 8 blocks for a few frames and refreshes them by small steps, the PNR
    image (which places the seeds) stays near that of plain noise; with the median of frame-to-frame
    differences for the noise, those pixels had a PNR of about 5e5 against 3."""
    rng = np.random.default_rng(0)
    t, h, w = 300, 48, 96
    frames = 20 + rng.standard_normal((t, h, w)).astype(np.float32)
    blocks = np.round(20 + 0.6 * rng.standard_normal((t // 4, h // 8, w // 16)))
    frames[:, :, w // 2 :] = np.repeat(np.repeat(np.repeat(blocks, 4, axis=0), 8, axis=1), 8, axis=2)
    _, pnr = batch_summary(frames, gSig=2)
    noise, held = np.median(pnr[:, 4 : w // 2 - 4]), np.median(pnr[:, w // 2 + 4 : -4])
    assert 2 < noise < 4 and held < 3 * noise, (noise, held)
