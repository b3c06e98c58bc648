"""Rigid shift estimation recovers known shifts."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.registration import phase_cross_correlation

from caliali.motion import MotionError, RigidTemplate, apply_shifts, estimate_shifts


def _scene(seed: int, shape=(120, 140), sigma: float = 2.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.standard_normal(shape), sigma).astype(np.float32)


def _fourier_moved(image: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Frames such that corrected[y, x] = frame[y + dy, x + dx] gives ``image`` back (exact subpixel)."""
    f = np.fft.fft2(image)
    ky = np.fft.fftfreq(image.shape[0])[:, None]
    kx = np.fft.fftfreq(image.shape[1])[None]
    return np.stack([np.fft.ifft2(f * np.exp(-2j * np.pi * (ky * dy + kx * dx))).real for dy, dx in shifts]).astype(
        np.float32
    )


def test_recovers_known_subpixel_shifts():
    rng = np.random.default_rng(0)
    base = _scene(0)
    true = rng.uniform(-7, 7, (24, 2))
    frames = _fourier_moved(base, true) + rng.normal(0, 0.2 * base.std(), (24, *base.shape)).astype(np.float32)
    shifts, peak = estimate_shifts(frames, base, max_shift=10)
    assert np.sqrt(np.mean((shifts - true) ** 2)) < 0.1
    assert peak.min() > 0.8


def test_agrees_with_skimage_up_to_its_sign_convention():
    base = _scene(1)
    frame = _fourier_moved(base, [(3.0, -4.0)])
    ours, _ = estimate_shifts(frame, base)
    theirs, _, _ = phase_cross_correlation(base, frame[0], upsample_factor=10)
    # skimage returns the shift that moves the frame onto the reference; ours
    # is where the reference content sits in the frame.
    np.testing.assert_allclose(ours[0], -theirs, atol=0.15)


def test_shift_search_is_bounded_by_max_shift():
    base = _scene(2)
    frame = _fourier_moved(base, [(9.0, 0.0)])
    shifts, _ = estimate_shifts(frame, base, max_shift=4)
    assert np.all(np.abs(shifts) <= 4)
    shifts, _ = estimate_shifts(frame, base, max_shift=12)
    np.testing.assert_allclose(shifts[0], [9.0, 0.0], atol=0.05)


def test_template_is_carried_across_chunks():
    rng = np.random.default_rng(3)
    base = _scene(3)
    true = np.cumsum(rng.normal(0, 0.8, (90, 2)), axis=0)
    frames = apply_shifts(np.repeat(base[None], 90, axis=0), -true)
    frames += rng.normal(0, 0.3 * base.std(), frames.shape).astype(np.float32)
    template = RigidTemplate(max_shift=20)
    found = np.concatenate([template.register(frames[i : i + 30])[0] for i in range(0, 90, 30)])
    err = found - true
    err -= err.mean(axis=0)  # the template fixes the origin only up to a constant
    assert np.sqrt(np.mean(err**2)) < 0.1
    assert template.n_frames == 90


def test_bad_shapes_are_rejected():
    with pytest.raises(MotionError, match="same size"):
        estimate_shifts(np.zeros((2, 10, 10)), np.zeros((10, 11)))
    with pytest.raises(MotionError, match="border"):
        estimate_shifts(np.zeros((2, 40, 40)), np.zeros((40, 40)), border=0.6)


def test_a_peak_among_many_of_noise_is_not_distinct():
    rng = np.random.default_rng(7)
    base = _scene(7)
    frames = _fourier_moved(base, [(2.0, -3.0)] * 4) + rng.normal(0, 0.2 * base.std(), (4, *base.shape))
    noise = _scene(8)[None] + 0 * frames[:1]  # an unrelated image: its peaks are chance
    _, _, distinct = estimate_shifts(np.concatenate([frames, noise]).astype(np.float32), base, distinctness=True)
    assert distinct[:4].min() > 5
    assert distinct[4] < 2


def test_unregistered_shifts_are_interpolated_between_registered_ones():
    from caliali.motion.rigid import fill_unregistered

    shifts = np.array([[9.0, 9], [1, 2], [7, -7], [3, 4], [8, 8]])
    ok = np.array([False, True, False, True, False])
    np.testing.assert_allclose(fill_unregistered(shifts, ok), [[1, 2], [1, 2], [2, 3], [3, 4], [3, 4]])
    np.testing.assert_allclose(
        fill_unregistered(shifts, ok, before=np.array([0.0, 0])), [[0.5, 1], [1, 2], [2, 3], [3, 4], [3, 4]]
    )
    np.testing.assert_allclose(fill_unregistered(shifts, np.zeros(5, bool)), np.zeros((5, 2)))
