"""Within-session motion correction end to end: known shifts, dropped
frames, chunking, the simulator's ground truth, and a real two-photon movie."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi

from caliali.experiment import load_experiment
from caliali.motion import (
    MotionError,
    MotionResult,
    apply_shifts,
    correct_frames,
    correct_session,
    save_session_qc,
)
from caliali.store import FrameStore

SIMA = str(Path(__file__).resolve().parents[3].parent / "shared" / "data" / "sima_example" / "example.tif")


def _vessel_scene(shape=(96, 112), seed: int = 0) -> np.ndarray:
    """A bright, smooth, vignetted field crossed by dark vessels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    img = 1.0 + 0.3 * np.exp(-((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2) / (2 * 60.0**2))
    img += 0.05 * ndi.gaussian_filter(rng.standard_normal(shape), 4).astype(np.float32)
    for slope, offset, half in [(0.4, 20, 2.5), (-0.7, 90, 2.0), (2.5, -60, 1.8)]:
        img[np.abs(yy - slope * xx - offset) / np.sqrt(1 + slope**2) < half] *= 0.65
    return img.astype(np.float32)


def _moving_movie(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    scene = _vessel_scene(seed=seed)
    true = np.cumsum(rng.normal(0, 0.6, (n, 2)), axis=0)
    true -= true.mean(axis=0)
    frames = apply_shifts(np.repeat(scene[None], n, axis=0), -true)
    frames += rng.normal(0, 0.03, frames.shape).astype(np.float32)
    return frames, true


def _rms(found: np.ndarray, true: np.ndarray, keep=None) -> float:
    keep = np.ones(len(true), bool) if keep is None else keep
    err = found[keep] - true[keep]
    err -= err.mean(axis=0)  # the template's origin is arbitrary
    return float(np.sqrt(np.mean(err**2)))


def test_known_shifts_dropped_frames_and_streamed_output():
    frames, true = _moving_movie(100)
    frames[[0, 41, 42, 99]] = 0.0  # dropped frames, including both ends
    written = []
    result = correct_frames((frames[i : i + 30] for i in range(0, 100, 30)), gSig=3, out=written.append)
    out = np.concatenate(written)
    assert out.shape == frames.shape
    assert result.dropped.tolist() == [i in (0, 41, 42, 99) for i in range(100)]
    assert _rms(result.shifts, true, ~result.dropped) < 0.15
    # Dropped frames are interpolated in time between corrected neighbours.
    np.testing.assert_allclose(out[41], (2 * out[40] + out[43]) / 3, atol=1e-5)
    np.testing.assert_allclose(out[42], (out[40] + 2 * out[43]) / 3, atol=1e-5)
    np.testing.assert_allclose(out[0], out[1])
    np.testing.assert_allclose(out[99], out[98])
    # Corrected frames agree with each other inside the valid mask.
    m = result.valid_mask
    assert 0.5 < m.mean() < 1.0
    spread = out[1:41][:, m].std(axis=0).mean()
    assert spread < 0.5 * frames[1:41][:, m].std(axis=0).mean()


def test_shifts_do_not_depend_on_chunk_size():
    frames, _ = _moving_movie(60, seed=1)
    a = correct_frames([frames], gSig=3).shifts
    b = correct_frames((frames[i : i + 7] for i in range(0, 60, 7)), gSig=3).shifts
    assert _rms(a, b) < 0.1


def test_simulated_within_session_motion_is_recovered(simulation, tmp_path):
    sim = simulation(sessions=1, frames=200, within_motion=True)
    session = load_experiment(sim.manifest).sessions[0]
    true = np.load(sim.ground_truth / "shifts.npy")
    gsig = sim.meta["gSig"]
    result = correct_session(session, gSig=gsig, batch_frames=64, out=tmp_path / "corrected.zarr")
    rms = _rms(result.shifts, true)
    print(f"simulated within-session motion: RMS error {rms:.3f} px")
    assert rms < 0.5
    with FrameStore.open(tmp_path / "corrected.zarr") as store:
        assert store.complete and store.n_frames == 200 and store.frame_shape == result.valid_mask.shape
    files = save_session_qc(tmp_path / "qc", "ses01", motion=result)
    assert files["qc_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_allclose(np.load(files["shifts"]), result.shifts)
    assert json.loads(files["summary"].read_text())["n_frames"] == 200
    back = MotionResult.load(tmp_path / "qc", name="ses01")
    np.testing.assert_array_equal(back.shifts, result.shifts)
    np.testing.assert_array_equal(back.valid_mask, result.valid_mask)
    np.testing.assert_array_equal(back.dropped, result.dropped)
    with pytest.raises(MotionError, match="no motion result"):
        MotionResult.load(tmp_path / "qc", name="nope")


def _crispness(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean gradient magnitude of the lightly smoothed image over its mean (noise-robust)."""
    smooth = ndi.gaussian_filter(image.astype(np.float64), 1.0)
    grad = np.hypot(*np.gradient(smooth))
    return float(grad[mask].mean() / smooth[mask].mean())


def test_real_two_photon_mean_image_is_crisper_after_correction():
    from pathlib import Path

    if not Path(SIMA).exists():
        pytest.skip(f"real recording {SIMA} is absent (the shared data folder is not mounted)")
    from caliali.io import open_video

    written = []
    result = correct_session(SIMA, gSig=3, batch_frames=8, out=written.append)
    with open_video(SIMA) as video:
        raw = video.read()
    corrected = np.concatenate(written)
    mask = result.valid_mask
    before, after = _crispness(raw.mean(axis=0), mask), _crispness(corrected.mean(axis=0), mask)
    print(f"sima example crispness before {before:.4f}, after {after:.4f}")
    assert after > 1.08 * before, (before, after)
    # SIMA's own estimate has frame 0 about 7 px off the rest along x.
    assert abs((result.shifts[0, 1] - np.median(result.shifts[1:, 1])) - 7) < 1.5


def test_bad_sessions_give_clear_errors(tmp_path):
    with pytest.raises(MotionError, match="all zero"):
        correct_frames([np.zeros((5, 32, 32), np.float32)], gSig=2)
    with pytest.raises(MotionError, match="shape changed"):
        correct_frames([np.ones((5, 32, 32), np.float32), np.ones((5, 32, 30), np.float32)], gSig=2)
    with pytest.raises(MotionError, match="NaN"):
        correct_frames([np.full((5, 32, 32), np.nan, np.float32)], gSig=2)
    store = FrameStore.create(tmp_path / "s.zarr", (32, 32))
    store.append(np.ones((4, 32, 32), np.float32))
    with pytest.raises(MotionError, match="batch_frames or memory_budget"):
        correct_session(store, gSig=2)
    with pytest.raises(MotionError, match="gSig"):
        correct_session(store, gSig=0, batch_frames=2)


def test_downsampling_and_memory_budget_in_correct_session(simulation, tmp_path):
    sim = simulation(sessions=1, frames=200, within_motion=True)
    session = load_experiment(sim.manifest).sessions[0]
    written = []
    result = correct_session(
        session, gSig=1.5, memory_budget="20MB", spatial_ds=2, temporal_ds=2, out=[written.append, None]
    )
    out = np.concatenate(written)
    assert out.shape == (100, 40, 48)
    assert result.shifts.shape == (100, 2) and result.valid_mask.shape == (40, 48)
    # Shifts are in downsampled pixels: half the truth, averaged over frame pairs.
    true = np.load(sim.ground_truth / "shifts.npy").reshape(100, 2, 2).mean(axis=1) / 2
    assert _rms(result.shifts, true) < 0.35


class _Interrupt(Exception):
    pass


def test_interrupted_correction_resumes_from_its_last_chunk(simulation, tmp_path):
    sim = simulation(sessions=1, frames=200, within_motion=True)
    session = load_experiment(sim.manifest).sessions[0]
    calls = []

    def stop_after_two_chunks(fraction: float, message: str) -> None:
        calls.append(fraction)
        if len(calls) == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        correct_session(session, gSig=3, batch_frames=50, out=tmp_path / "a.zarr", progress=stop_after_two_chunks)
    with FrameStore.open(tmp_path / "a.zarr") as store:
        assert store.n_frames == 100 and not store.complete

    def record(fraction: float, message: str) -> None:
        calls.append(fraction)

    resumed = correct_session(session, gSig=3, batch_frames=50, out=tmp_path / "a.zarr", progress=record)
    assert len(calls) == 2 + 2  # only the remaining two chunks were read
    straight = correct_session(session, gSig=3, batch_frames=50, out=tmp_path / "b.zarr")
    np.testing.assert_allclose(resumed.shifts, straight.shifts, atol=1e-9)
    with FrameStore.open(tmp_path / "a.zarr") as a, FrameStore.open(tmp_path / "b.zarr") as b:
        assert a.complete and a.n_frames == 200
        np.testing.assert_array_equal(a.read(), b.read())
    again = correct_session(session, gSig=3, batch_frames=50, out=tmp_path / "a.zarr", progress=record)
    assert len(calls) == 4  # complete: nothing read again
    np.testing.assert_array_equal(again.shifts, resumed.shifts)


def test_session_chunks_span_files_and_skip_to_a_start(simulation):
    from caliali.io import open_video
    from caliali.motion import session_chunks, session_info

    sim = simulation(sessions=1, frames=200, within_motion=True, max_frames_per_file=80)
    session = load_experiment(sim.manifest).sessions[0]
    assert len(session.files) == 3
    assert session_info(session) == (200, (80, 96))
    parts = []
    for f in session.files:
        with open_video(f) as video:
            parts.append(video.read())
    whole = np.concatenate(parts)
    chunks = list(session_chunks(session, batch_frames=30, start=100))
    assert max(len(c) for c in chunks) <= 30
    np.testing.assert_array_equal(np.concatenate(chunks), whole[100:])
    halved = np.concatenate(list(session_chunks(session, batch_frames=30, spatial_ds=2, temporal_ds=3)))
    assert halved.shape == (67, 40, 48)


def test_frames_with_nothing_to_register_on_take_their_neighbours_shifts():
    # A still recording whose first frames hold noise alone (nothing lit yet) and a few more in the
    # middle: the noise's correlation with the template peaks at a random lag, which was taken as a
    # shift of up to max_shift and cut that much off every side of the valid mask.
    rng = np.random.default_rng(5)
    scene = _vessel_scene(seed=5)
    frames = np.repeat(scene[None], 120, axis=0) + rng.normal(0, 0.03, (120, *scene.shape)).astype(np.float32)
    blank = [0, 1, 2, 3, 60, 61, 95]
    frames[blank] = scene.mean() + rng.normal(0, 0.03, (len(blank), *scene.shape)).astype(np.float32)
    written = []
    result = correct_frames((frames[i : i + 40] for i in range(0, 120, 40)), gSig=3, out=written.append)
    assert np.flatnonzero(~result.registered).tolist() == blank
    assert np.abs(result.shifts).max() < 0.3
    assert result.valid_mask[1:-1, 1:-1].all()  # a sub-pixel shift costs the edge pixel, no more
    assert result.summary()["n_unregistered"] == len(blank)
    # without the check the same frames move by whole pixels
    from caliali.motion.rigid import estimate_shifts

    raw, _ = estimate_shifts(frames[blank], result.template)
    assert np.abs(raw).max() > 2
