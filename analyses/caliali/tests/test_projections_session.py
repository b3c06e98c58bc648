"""Correlation image, PNR, and per-session projections accumulated over chunks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from caliali.experiment import load_experiment
from caliali.io import open_video
from caliali.motion import correct_session
from caliali.projections import (
    CorrelationAccumulator,
    ProjectionAccumulator,
    ProjectionError,
    Projections,
    combine_projections,
    correlation_image,
    peak_to_noise,
    session_projections,
)


def _brute_cn(movie: np.ndarray, y: int, x: int) -> float:
    h, w = movie.shape[1:]
    vals = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if (dy, dx) != (0, 0) and 0 <= y + dy < h and 0 <= x + dx < w:
                vals.append(np.corrcoef(movie[:, y, x], movie[:, y + dy, x + dx])[0, 1])
    return float(np.mean(vals))


def test_correlation_image_matches_brute_force_and_streams():
    rng = np.random.default_rng(0)
    movie = rng.standard_normal((80, 9, 11)).astype(np.float32)
    movie[:, 3:6, 4:7] += 2 * rng.standard_normal((80, 1, 1)).astype(np.float32)
    cn = correlation_image(movie)
    for y, x in [(4, 5), (0, 0), (8, 10), (3, 4)]:
        assert cn[y, x] == pytest.approx(_brute_cn(movie, y, x), abs=1e-4)
    acc = CorrelationAccumulator(movie.shape[1:])
    for part in np.array_split(movie, 7):
        acc.add(part)
    np.testing.assert_allclose(acc.result(), cn, atol=1e-5)


def test_peak_to_noise_ignores_single_frame_outliers():
    movie = np.zeros((50, 2, 2), np.float32)
    movie[10, 0, 0] = 100.0  # one-frame spike: the moving median removes it
    movie[20:35, 1, 1] = 6.0  # a sustained transient
    pnr = peak_to_noise(movie, np.full((2, 2), 2.0, np.float32))
    assert pnr[0, 0] == 0.0 and pnr[1, 1] == pytest.approx(3.0)


def _pair_movie(n: int, seed: int = 0, *, independent_first_half: bool = False) -> np.ndarray:
    """Noise plus a neuron-sized blob whose pixels fire together in the second
    half (and, optionally, each on its own in the first half)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:40, 0:40].astype(np.float32)
    blob = np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / (2 * 2.0**2))
    movie = 100 + rng.standard_normal((n, 40, 40)).astype(np.float32)
    kernel = 6 * np.exp(-np.arange(25) / 8).astype(np.float32)
    common = np.zeros(n, np.float32)
    for start in range(n // 2 + 10, n - 30, 40):
        common[start : start + 25] += kernel
    movie += common[:, None, None] * blob[None]
    if independent_first_half:
        for y in range(16, 25):
            for x in range(16, 25):
                for start in rng.choice(np.arange(0, n // 2 - 30), 3, replace=False):
                    movie[start : start + 25, y, x] += kernel * blob[y, x]
    return movie


def test_projections_do_not_depend_much_on_chunking():
    movie = _pair_movie(400)
    whole = session_projections(movie, gSig=2, fs=10, batch_frames=400)
    parts = session_projections(movie, gSig=2, fs=10, batch_frames=100)
    np.testing.assert_allclose(parts.mean, movie.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(whole.mean, parts.mean, rtol=1e-5)
    assert whole.n_frames == parts.n_frames == 400
    # Cn and PNR differ only through per-chunk noise estimates.
    assert parts.pnr[20, 20] == pytest.approx(whole.pnr[20, 20], rel=0.25)
    assert np.median(parts.pnr) == pytest.approx(np.median(whole.pnr), rel=0.1)
    assert parts.cn[20, 20] == pytest.approx(whole.cn[20, 20], abs=0.05)
    assert whole.pnr[20, 20] > 4 * np.median(whole.pnr)
    assert whole.cn[20, 20] > 4 * np.median(whole.cn)


def test_cn_bins_take_the_maximum_over_time():
    movie = _pair_movie(400, seed=1, independent_first_half=True)
    binned = session_projections(movie, gSig=2, fs=10, batch_frames=100, bin_frames=200)
    single = session_projections(movie, gSig=2, fs=10, batch_frames=100, bin_frames=3000)
    # The blob's pixels fire together only in the second half: the bin that
    # holds it correlates more than the whole movie does.
    assert binned.cn[20, 20] > single.cn[20, 20] + 0.15


def test_valid_mask_zeroes_cn_and_pnr_outside():
    movie = _pair_movie(120)
    mask = np.zeros((40, 40), bool)
    mask[5:35, 5:35] = True
    p = session_projections(movie, gSig=2, fs=10, batch_frames=60, valid_mask=mask)
    assert np.all(p.cn[~mask] == 0) and np.all(p.pnr[~mask] == 0) and p.pnr[20, 20] > 0
    assert np.all(p.mean[~mask] > 0)


def test_combine_pieces_and_round_trip(tmp_path):
    ones, twos = np.ones((4, 5), np.float32), 2 * np.ones((4, 5), np.float32)
    a = Projections(ones, ones, ones * 0.2, twos, n_frames=100)
    b = Projections(twos, twos, ones * 0.5, ones, n_frames=300)
    c = combine_projections([a, b])
    np.testing.assert_allclose(c.mean, 1.75)
    np.testing.assert_allclose(c.bv, 1.75)
    np.testing.assert_allclose(c.cn, 0.5)
    np.testing.assert_allclose(c.pnr, 2.0)
    assert c.n_frames == 400
    back = Projections.load(c.save(tmp_path / "p.npz"))
    np.testing.assert_array_equal(back.cn, c.cn)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ProjectionError, match="not a projections file"):
        Projections.load(tmp_path / "bad.npz")
    with pytest.raises(ProjectionError, match="frame shape"):
        combine_projections([a, Projections(ones[:2], ones[:2], ones[:2], ones[:2], 1)])


def test_accumulator_validates_input():
    acc = ProjectionAccumulator((10, 10), gSig=2, fs=10)
    with pytest.raises(ProjectionError, match=r"\(t, 10, 10\)"):
        acc.append(np.zeros((3, 10, 11), np.float32))
    acc.append(np.ones((5, 10, 10), np.float32))
    with pytest.raises(ProjectionError, match="at least 8"):
        acc.result()
    with pytest.raises(ProjectionError, match="no frames"):
        ProjectionAccumulator((10, 10), gSig=2, fs=10).result()


def _to_reference(image: np.ndarray, field: np.ndarray) -> np.ndarray:
    h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(
        image.astype(np.float32),
        xx + field[1].astype(np.float32),
        yy + field[0].astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )


def test_simulated_session_neurons_stand_out_and_correction_feeds_projections(simulation):
    sim = simulation(sessions=1, frames=200, within_motion=True)
    session = load_experiment(sim.manifest).sessions[0]
    fs, gsig = sim.meta["fs"], sim.meta["gSig"]
    with open_video(session.files[0]) as video:
        shape = video.frame_shape
    # Projections in the same pass as motion correction.
    acc = ProjectionAccumulator(shape, gSig=gsig, fs=fs, n_frames=200)
    result = correct_session(session, gSig=gsig, batch_frames=64, out=acc)
    p = acc.result()
    field = np.load(sim.ground_truth / "fields.npy")[0]
    footprints = np.load(sim.ground_truth / "A.npy")
    centres = np.zeros(footprints.shape[1:], bool)
    for a in footprints:
        centres[np.unravel_index(np.argmax(a), a.shape)] = True
    background = footprints.max(axis=0) < 1e-3 * footprints.max()
    mask = _to_reference(result.valid_mask.astype(np.float32), field) > 0.5
    cn, pnr = _to_reference(p.cn, field), _to_reference(p.pnr, field)
    assert cn[centres & mask].mean() > 2.5 * cn[background & mask].mean()
    assert pnr[centres & mask].mean() > 1.8 * pnr[background & mask].mean()
