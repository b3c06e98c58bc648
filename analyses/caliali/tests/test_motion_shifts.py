"""The shift convention, applying shifts, and the valid-pixel mask."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from caliali.exceptions import InputError
from caliali.motion import MotionError, apply_shift, apply_shifts, valid_mask_from_shifts


def _image(seed: int = 0, shape: tuple[int, int] = (40, 50)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.standard_normal(shape), 2).astype(np.float32)


@pytest.mark.parametrize("shift", [(3, -5), (-2, 4), (0, 0)])
def test_integer_shift_follows_the_convention(shift):
    img = _image()
    dy, dx = shift
    out = apply_shift(img, shift)
    # corrected[y, x] = frame[y + dy, x + dx] wherever the source is inside.
    ys, xs = np.mgrid[0:40, 0:50]
    inside = (ys + dy >= 0) & (ys + dy < 40) & (xs + dx >= 0) & (xs + dx < 50)
    np.testing.assert_allclose(out[inside], img[(ys + dy)[inside], (xs + dx)[inside]], atol=1e-5)


def test_subpixel_shift_matches_scipy_with_negated_shift():
    img = _image(1)
    out = apply_shift(img, (1.25, -0.5), interpolation="linear")
    ref = ndi.shift(img, (-1.25, 0.5), order=1, mode="nearest")
    np.testing.assert_allclose(out[5:-5, 5:-5], ref[5:-5, 5:-5], atol=1e-4)


def test_apply_shifts_does_not_modify_input_and_returns_float32():
    frames = np.stack([_image(s) for s in range(3)]).astype(np.float64)
    before = frames.copy()
    out = apply_shifts(frames, np.array([[0, 0], [1, 1], [-1.5, 2]]))
    assert out.dtype == np.float32 and out.shape == frames.shape
    np.testing.assert_array_equal(frames, before)
    np.testing.assert_allclose(out[0], frames[0], atol=1e-5)


def test_valid_mask_bounds():
    mask = valid_mask_from_shifts(np.array([[2.0, -3.0], [-1.5, 1.0]]), (20, 30))
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    # y + dy in [0, 19] for dy in {2, -1.5}: y in [2, 17]; x + dx in [0, 29] for dx in {-3, 1}: x in [3, 28]
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (2, 17, 3, 28)
    assert mask.sum() == 16 * 26


def test_bad_inputs_give_clear_errors():
    img = _image()
    with pytest.raises(MotionError, match="interpolation"):
        apply_shift(img, (1, 1), interpolation="lanczos")
    with pytest.raises(MotionError, match="finite"):
        apply_shift(img, (np.nan, 0))
    with pytest.raises(MotionError, match=r"\(t, 2\)"):
        apply_shifts(img[None], np.zeros((2, 2)))
    assert issubclass(MotionError, InputError)
