"""Displacement-field primitives and translation estimation: known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from caliali.registration._fields import (
    compose,
    exp_field,
    in_bounds,
    random_smooth_field,
    resize_field,
    warp,
)
from caliali.registration._translation import estimate_translations


def _texture(shape=(96, 128), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), 2.0).astype(np.float32)


def _const(shape, dy, dx) -> np.ndarray:
    field = np.zeros((2, *shape), np.float32)
    field[0], field[1] = dy, dx
    return field


def test_warp_follows_the_backward_convention():
    img = _texture()
    out = warp(img, _const(img.shape, 3, -5))
    # aligned[y, x] = session[y + 3, x - 5]
    np.testing.assert_allclose(out[10:-10, 10:-10], img[13:-7, 5:-15], atol=1e-5)


def test_warp_fill_and_in_bounds_agree():
    img = np.ones((40, 50), np.float32)
    field = _const(img.shape, 0, 7.5)
    out = warp(img, field, fill=np.nan)
    inside = in_bounds(field, img.shape)
    assert np.isnan(out[~inside]).all() and np.isfinite(out[inside]).all()
    assert inside[:, :42].all() and not inside[:, 43:].any()


def test_compose_follows_points_through_both_fields():
    rng = np.random.default_rng(1)
    shape = (96, 128)
    a = random_smooth_field(shape, magnitude=3.0, smoothness=15, rng=rng)
    b = random_smooth_field(shape, magnitude=3.0, smoothness=15, rng=rng)
    # warp(warp(img, a), b)[p] = img[q + a(q)] with q = p + b(p).
    grid = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    q = grid + b
    expected = b + np.stack([ndimage.map_coordinates(a[i], q, order=3, mode="nearest") for i in range(2)])
    inner = (slice(None), slice(10, -10), slice(10, -10))
    assert np.abs(compose(a, b)[inner] - expected[inner]).max() < 0.01


def test_exponential_of_opposite_velocities_is_identity():
    rng = np.random.default_rng(2)
    v = random_smooth_field((80, 90), magnitude=6.0, smoothness=12, rng=rng)
    identity = compose(exp_field(v), exp_field(-v))
    assert np.abs(identity[:, 10:-10, 10:-10]).max() < 0.1
    # A constant velocity exponentiates to the same translation.
    np.testing.assert_allclose(exp_field(_const((30, 30), 2.5, -4.0)), _const((30, 30), 2.5, -4.0), atol=1e-4)


def test_resize_field_keeps_physical_displacement():
    field = _const((64, 96), 4.0, -8.0)
    small = resize_field(field, (16, 24))
    np.testing.assert_allclose(small[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(small[1], -2.0, atol=1e-6)
    np.testing.assert_allclose(resize_field(small, (64, 96)), field, atol=1e-5)


def test_random_smooth_field_magnitude():
    rng = np.random.default_rng(3)
    f = random_smooth_field((50, 60), magnitude=5.0, smoothness=8, rng=rng)
    assert np.sqrt((f**2).sum(0)).max() == pytest.approx(5.0, rel=1e-4)
    g = random_smooth_field((50, 60), magnitude=2.0, smoothness=8, rng=rng, norm="rms")
    assert np.sqrt((g**2).sum(0).mean()) == pytest.approx(2.0, rel=1e-4)


def test_phase_correlation_recovers_a_known_shift_mean_removed():
    img = _texture((128, 160))
    moved = ndimage.shift(img, (-7, 12), order=3, mode="reflect")  # moved[p] = img[p + (7, -12)]
    shifts = estimate_translations([img, moved])
    # Relative backward translation of session 1 w.r.t. session 0: moved[p + t] = img[p].
    np.testing.assert_allclose(shifts[1] - shifts[0], [-7.0, 12.0], atol=0.1)
    np.testing.assert_allclose(shifts.mean(axis=0), 0.0, atol=1e-9)


def test_implausible_translation_is_an_error():
    from caliali.registration import AlignmentError

    img = _texture((128, 160))
    with pytest.raises(AlignmentError, match="max_shift"):
        estimate_translations([img, np.roll(img, 30, axis=1)], max_shift=10)


def test_align_sessions_docstring_example_holds():
    import doctest

    import caliali.registration.alignment as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 3 and result.failed == 0
