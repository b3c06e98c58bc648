"""Detrending, PSD noise, anisotropic diffusion and top-hat enhancement."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from caliali.projections import (
    ProjectionError,
    anisotropic_diffusion,
    detrend,
    enhance_neurons,
    moving_median,
    noise_level,
    tophat_disk,
)


def test_moving_median_matches_brute_force_with_shrinking_ends():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((23, 2, 3)).astype(np.float32)
    for w in (1, 4, 5, 10):
        ref = np.stack([np.median(x[max(0, i - w // 2) : i + (w - 1) // 2 + 1], axis=0) for i in range(23)])
        np.testing.assert_allclose(moving_median(x, w), ref, rtol=1e-6, atol=1e-6)


def test_detrend_removes_bleaching_and_keeps_transients():
    t = np.arange(600, dtype=np.float32)
    baseline = 100 * np.exp(-t / 300) + 50
    trace = baseline.copy()
    trace[200:215] += 20 * np.exp(-np.arange(15) / 5)
    movie = np.repeat(trace[:, None, None], 4, axis=2).repeat(3, axis=1)
    out = detrend(movie, fs=10)[:, 1, 1]
    # A moving minimum trails a falling baseline by half its window (25
    # frames): the residual is at most that lag times the slope.
    slope = np.abs(np.gradient(baseline))
    assert np.all(out[:580] >= -1e-4)
    assert np.all(out[:190] <= 26 * slope[:190] + 1e-3)
    # Over 86 units of bleaching, less than 3 % is left.
    assert np.abs(out[400:]).max() < 0.03 * (baseline[0] - baseline[-1])
    assert out[200] > 18


def test_noise_level_of_white_noise_plus_slow_signal():
    rng = np.random.default_rng(1)
    t = np.arange(1000)[:, None, None]
    movie = (2.0 * rng.standard_normal((1000, 6, 7)) + 30 * np.sin(t / 80)).astype(np.float32)
    sd = noise_level(movie)
    assert sd.shape == (6, 7)
    assert abs(float(sd.mean()) - 2.0) < 0.1


def test_diffusion_smooths_noise_and_keeps_edges():
    rng = np.random.default_rng(2)
    img = np.zeros((60, 60), np.float32)
    img[:, 30:] = 10.0
    noisy = img + rng.standard_normal(img.shape).astype(np.float32)
    out = anisotropic_diffusion(noisy, n_iter=3, kappa=2.0)
    assert out[:, 5:25].std() < 0.6 * noisy[:, 5:25].std()
    edge = out[:, 32].mean() - out[:, 27].mean()
    blurred = cv2.GaussianBlur(noisy, (0, 0), 1.5)
    assert edge > 9.0 and edge > blurred[:, 32].mean() - blurred[:, 27].mean()
    with pytest.raises(ProjectionError, match="step"):
        anisotropic_diffusion(noisy, step=0.5)


def test_tophat_keeps_small_blobs_removes_background_and_matches_a_disk():
    yy, xx = np.mgrid[0:100, 0:100].astype(np.float32)
    background = 5 * np.exp(-((yy - 50) ** 2 + (xx - 50) ** 2) / (2 * 30.0**2))
    small = 3 * np.exp(-((yy - 30) ** 2 + (xx - 40) ** 2) / (2 * 2.0**2))
    img = (background + small).astype(np.float32)
    out = tophat_disk(img, radius=8)
    assert out[30, 40] > 2.5 and out[50, 50] < 0.3
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (17, 17))
    exact = cv2.morphologyEx(img, cv2.MORPH_TOPHAT, disk)
    assert np.corrcoef(out.ravel(), exact.ravel())[0, 1] > 0.98


def test_enhance_neurons_is_non_negative_and_validates():
    rng = np.random.default_rng(3)
    movie = rng.standard_normal((5, 40, 40)).astype(np.float32)
    out = enhance_neurons(movie, gSig=3)
    assert out.shape == movie.shape and out.min() >= 0
    with pytest.raises(ProjectionError, match="gSig"):
        enhance_neurons(movie, gSig=-1)
    with pytest.raises(ProjectionError, match="at least 8 frames"):
        noise_level(movie)
