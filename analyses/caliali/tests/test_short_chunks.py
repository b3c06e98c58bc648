"""A last chunk of any length, from 1 frame up, in every streaming stage.

Each stage runs on small synthetic movies (40 x 48 px, a few Gaussian cells
firing) cut so that the last chunk has 1, 2, ... frames, up to one more than
the longest temporal window the stage has; at fs = 5 Hz the projections'
windows are 5 (moving median), 25 (moving minimum) and 10 (PNR median)
frames. Results must not only exist but match the same movie cut evenly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from caliali.chunking import run_chunks
from caliali.experiment import Session
from caliali.extraction import plan_batches
from caliali.extraction._summary import batch_summary, noise_level, session_images, summary_images
from caliali.io import open_video, open_writer
from caliali.motion import correct_frames, correct_session, downsample_chunks, downsample_temporal
from caliali.motion._corrector import SEED_FRAMES
from caliali.projections import detrend_windows, moving_median, session_projections
from caliali.registration import apply_alignment
from caliali.registration.alignment import Alignment
from caliali.registration.apply import FrameWarper
from caliali.store import FrameStore

SHAPE = (40, 48)
FS = 5.0  # Hz: short detrending windows keep the movies short
PNR_WINDOW = 10
W_MED, W_MIN = detrend_windows(FS)  # 5 and 25 frames
CELLS = ((12, 14), (27, 33), (20, 24))
REAL_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"  # ../shared/data beside the repository


def _write(path: Path, frames: np.ndarray) -> Path:
    with open_writer(path, frame_shape=frames.shape[1:3], dtype=frames.dtype, n_frames=len(frames)) as writer:
        writer.write(frames)
    return path


_MARGIN = 4  # px of field around the frame, for motion


def _field() -> np.ndarray:
    """The static scene, _MARGIN px larger than a frame on each side: a smooth background
    and three dark vessel-like ridges (what motion correction registers on)."""
    h, w = SHAPE[0] + 2 * _MARGIN, SHAPE[1] + 2 * _MARGIN
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = 100 + 10 * np.exp(-((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (2 * 30.0**2))
    for py, px, angle in ((10, 8, 0.3), (30, 40, 1.2), (44, 20, 2.4)):
        d = np.abs((yy - py) * np.cos(angle) - (xx - px) * np.sin(angle))
        field -= 15 * np.exp(-(d**2) / (2 * 1.5**2))
    return field


def _movie(n: int, *, seed: int = 0, shifts: np.ndarray | None = None) -> np.ndarray:
    """float32 (n, 40, 48): the scene, a slow drift, noise, and three Gaussian cells with
    calcium transients (each fires every 20 frames). With ``shifts`` (n, 2) of whole px,
    frame i shows the scene moved by ``-shifts[i]`` (so correction should find ``shifts``
    up to a constant)."""
    rng = np.random.default_rng(seed)
    m = _MARGIN
    field = _field()
    yy, xx = np.mgrid[0 : field.shape[0], 0 : field.shape[1]].astype(np.float32)
    blobs = np.stack([np.exp(-((yy - cy - m) ** 2 + (xx - cx - m) ** 2) / (2 * 2.0**2)) for cy, cx in CELLS])
    kernel = np.exp(-np.arange(15) / 4.0).astype(np.float32)
    traces = np.zeros((len(CELLS), n + 15), np.float32)
    for k in range(len(CELLS)):
        for start in range(3 + 7 * k, n, 20):
            traces[k, start : start + 15] += 12 * kernel
    movie = np.empty((n, *SHAPE), np.float32)
    for i in range(n):
        dy, dx = (0, 0) if shifts is None else (int(v) for v in shifts[i])
        scene = field + np.tensordot(traces[:, i], blobs, axes=1)
        movie[i] = scene[m + dy : m + dy + SHAPE[0], m + dx : m + dx + SHAPE[1]]
    movie += (0.02 * np.arange(n, dtype=np.float32))[:, None, None]  # bleaching-like drift
    movie += rng.standard_normal(movie.shape).astype(np.float32)
    return movie


def _cut(n: int, batch: int) -> list[int]:
    return [min(batch, n - a) for a in range(0, n, batch)]


# -- projections: moving median ---------------------------------------------------------


@pytest.mark.parametrize("t", range(1, PNR_WINDOW + 3))
def test_moving_median_of_fewer_frames_than_the_window_is_the_clipped_centred_median(t):
    x = np.random.default_rng(t).standard_normal((t, 3, 4)).astype(np.float32)
    for w in (1, 2, 3, 9, PNR_WINDOW, PNR_WINDOW + 1):
        want = np.stack([np.median(x[max(0, i - w // 2) : i + (w - 1) // 2 + 1], axis=0) for i in range(t)])
        np.testing.assert_allclose(moving_median(x, w), want, rtol=1e-6)


# -- projections: the accumulator ----------------------------------------------------------

PROJECTION_BATCH = 40
PROJECTION_EVEN = 4 * PROJECTION_BATCH


@pytest.fixture(scope="module")
def even_projections():
    movie = _movie(PROJECTION_EVEN + W_MIN + 1)
    return movie, session_projections(
        movie[:PROJECTION_EVEN], gSig=2, fs=FS, batch_frames=PROJECTION_BATCH, pnr_window=PNR_WINDOW
    )


@pytest.mark.parametrize("tail", range(1, W_MIN + 2))
def test_projections_with_a_short_last_chunk_match_the_movie_in_one_chunk(even_projections, tail):
    movie, _ = even_projections
    n = PROJECTION_EVEN + tail
    assert _cut(n, PROJECTION_BATCH)[-1] == tail
    p = session_projections(movie[:n], gSig=2, fs=FS, batch_frames=PROJECTION_BATCH, pnr_window=PNR_WINDOW)
    whole = session_projections(movie[:n], gSig=2, fs=FS, batch_frames=n, pnr_window=PNR_WINDOW)
    assert p.n_frames == n
    np.testing.assert_allclose(p.mean, movie[:n].mean(axis=0), rtol=1e-5)
    assert np.isfinite(p.pnr).all() and np.isfinite(p.cn).all()
    # The cut changes only the per-piece noise estimates (a tail alone would have been
    # scaled by the noise of a few frames, or by 1).
    for cy, cx in CELLS:
        assert p.pnr[cy, cx] == pytest.approx(whole.pnr[cy, cx], rel=0.2)
        assert p.cn[cy, cx] == pytest.approx(whole.cn[cy, cx], abs=0.05)
    assert np.median(p.pnr) == pytest.approx(np.median(whole.pnr), rel=0.15)


@pytest.mark.parametrize("batch", [1, 2, 3, 7])
def test_projections_with_tiny_chunks_throughout(even_projections, batch):
    """Chunks shorter than every window: pieces wait until they are long enough. (Pieces of other
    lengths than an even cut's give other per-piece noise estimates, hence the wider tolerance.)"""
    movie, even = even_projections
    p = session_projections(movie[:PROJECTION_EVEN], gSig=2, fs=FS, batch_frames=batch, pnr_window=PNR_WINDOW)
    for cy, cx in CELLS:
        assert p.pnr[cy, cx] == pytest.approx(even.pnr[cy, cx], rel=0.3)
        assert p.cn[cy, cx] == pytest.approx(even.cn[cy, cx], abs=0.05)


@pytest.mark.parametrize("n", [8, 9, 12, 20, 30])
def test_projections_of_a_session_shorter_than_one_chunk(n):
    p = session_projections(_movie(n), gSig=2, fs=FS, batch_frames=1000, pnr_window=PNR_WINDOW)
    assert p.n_frames == n and np.isfinite(p.pnr).all() and np.isfinite(p.cn).all()


# -- motion correction and downsampling -------------------------------------------------------

MOTION_BATCH = 40


def _wobble(n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.round(rng.uniform(-3, 3, (n, 2)))


@pytest.mark.parametrize("tail", [1, 2, 3, 5, 8, 13])
def test_motion_correction_with_a_short_last_chunk_recovers_the_shifts(tail):
    n = 2 * MOTION_BATCH + tail
    truth = _wobble(n)
    movie = _movie(n, seed=1, shifts=truth)
    written = []
    result = correct_frames(
        (movie[a : a + MOTION_BATCH] for a in range(0, n, MOTION_BATCH)), gSig=2, out=written.append
    )
    assert sum(len(w) for w in written) == n and result.shifts.shape == (n, 2)
    # Shifts bring each frame onto the template: relative to frame 0 they undo the motion.
    est = result.shifts - result.shifts[0]
    np.testing.assert_allclose(est, truth[0] - truth, atol=0.5)


@pytest.mark.parametrize("n", [1, 2, 3, 5, SEED_FRAMES - 1, SEED_FRAMES + 1])
def test_motion_correction_of_a_session_shorter_than_one_chunk(n):
    truth = _wobble(n)
    movie = _movie(n, seed=2, shifts=truth)
    written = []
    result = correct_frames([movie], gSig=2, out=written.append)
    assert np.concatenate(written).shape == movie.shape and np.isfinite(result.shifts).all()
    if n >= 3:
        np.testing.assert_allclose(result.shifts - result.shifts[0], truth[0] - truth, atol=0.5)


@pytest.mark.parametrize("first", [1, 2, 5])
def test_a_tiny_first_chunk_seeds_the_template_on_more_frames(first):
    """A first chunk of a few frames waits for the next, so the template is not one noisy frame.

    On this noisy movie a template seeded on 2 frames gave shift errors up to twice those of an
    even cut (RMS 0.37 px against 0.18 px)."""
    n = 3 * MOTION_BATCH
    truth = _wobble(n)
    movie = _movie(n, seed=3, shifts=truth)
    movie += 12 * np.random.default_rng(11).standard_normal(movie.shape).astype(np.float32)

    def shifts(cuts: list[int]) -> np.ndarray:
        return correct_frames((movie[a:b] for a, b in zip(cuts[:-1], cuts[1:])), gSig=2).shifts

    tiny = shifts([0, first, *range(first + MOTION_BATCH, n, MOTION_BATCH), n])
    joined = shifts([0, *range(first + MOTION_BATCH, n, MOTION_BATCH), n])
    np.testing.assert_array_equal(tiny, joined)
    even = shifts([*range(0, n, MOTION_BATCH), n])

    def rms(est: np.ndarray) -> float:
        err = est + truth
        return float(np.sqrt(np.mean((err - np.median(err, axis=0)) ** 2)))

    assert rms(tiny) <= rms(even) + 0.03


@pytest.mark.parametrize("temporal_ds", [2, 3, 4])
@pytest.mark.parametrize("tail", [1, 2, 3, 4, 5])
def test_temporal_downsampling_with_a_tail_shorter_than_the_factor(temporal_ds, tail):
    batch = 4 * temporal_ds + 1  # groups straddle chunks too
    n = 3 * batch + tail
    movie = _movie(n, seed=4)
    chunks = list(downsample_chunks((movie[a : a + batch] for a in range(0, n, batch)), temporal_ds=temporal_ds))
    assert all(len(c) for c in chunks)
    np.testing.assert_allclose(np.concatenate(chunks), downsample_temporal(movie, temporal_ds), rtol=1e-6)


@pytest.mark.parametrize(("temporal_ds", "spatial_ds", "n"), [(3, 1, 3 * 20 + 1), (4, 2, 2 * 20 + 2), (3, 2, 2)])
def test_correct_session_with_a_downsampled_short_tail_writes_every_group(tmp_path, temporal_ds, spatial_ds, n):
    movie = _movie(n, seed=5)
    path = _write(tmp_path / "ses.tif", movie)
    result = correct_session(
        path,
        gSig=2,
        batch_frames=20,
        temporal_ds=temporal_ds,
        spatial_ds=spatial_ds,
        out=tmp_path / "corrected.zarr",
    )
    store = FrameStore.open(tmp_path / "corrected.zarr")
    groups = -(-n // temporal_ds)
    assert store.complete and store.n_frames == groups == len(result.shifts)
    assert store.source_frames == groups  # every downsampled frame is accounted for
    assert store.frame_shape == (SHAPE[0] // spatial_ds, SHAPE[1] // spatial_ds)


@pytest.mark.parametrize("pieces", [(100, 1, 60), (1, 100, 60), (80, 2, 2, 77)])
def test_a_session_cut_into_files_of_one_or_two_frames(tmp_path, pieces):
    """Chunks never span files, so a 1-frame file makes a 1-frame chunk mid-session."""
    n, edges = sum(pieces), np.cumsum([0, *pieces])

    def files(movie: np.ndarray, name: str) -> Session:
        paths = [
            _write(tmp_path / f"{name}_b{k + 1}.tif", movie[a:b]) for k, (a, b) in enumerate(zip(edges, edges[1:]))
        ]
        return Session(id=name, files=tuple(paths))

    truth = _wobble(n)
    moving = files(_movie(n, seed=12, shifts=truth), "moving")
    result = correct_session(moving, gSig=2, batch_frames=50, out=tmp_path / "c.zarr")
    np.testing.assert_allclose(result.shifts - result.shifts[0], truth[0] - truth, atol=0.5)
    store = FrameStore.open(tmp_path / "c.zarr")
    assert store.n_frames == store.source_frames == n
    still = _movie(n, seed=13)
    p = session_projections(files(still, "still"), gSig=2, fs=FS, batch_frames=50)
    whole = session_projections(still, gSig=2, fs=FS, batch_frames=n)
    np.testing.assert_allclose(p.mean, whole.mean, rtol=1e-5)
    for cy, cx in CELLS:
        assert p.pnr[cy, cx] == pytest.approx(whole.pnr[cy, cx], rel=0.2)
        assert p.cn[cy, cx] == pytest.approx(whole.cn[cy, cx], abs=0.05)


# -- the shared chunk loop and its store ---------------------------------------------------------


@pytest.mark.parametrize("tail", [1, 2, 3, 6])
@pytest.mark.parametrize("batch", [1, 7, 10])
def test_run_chunks_stores_every_frame_of_a_short_last_chunk(tmp_path, batch, tail):
    n = 2 * batch + tail if tail < batch else 2 * batch + 1
    movie = _movie(n, seed=6)
    with open_video(_write(tmp_path / "m.tif", movie)) as video:
        lengths = []

        def centred(chunk):
            lengths.append(len(chunk.data))
            return chunk.data - 1.0

        store = run_chunks(video, centred, batch_frames=batch, out=tmp_path / "out.zarr")
    assert lengths == _cut(n, batch)
    assert store.complete and store.n_frames == store.source_frames == n
    np.testing.assert_allclose(store.read(0, n), movie - 1.0, rtol=1e-6)


def test_run_chunks_resumes_before_a_one_frame_last_chunk(tmp_path):
    n, batch = 21, 10
    movie = _movie(n, seed=7)
    path = _write(tmp_path / "m.tif", movie)
    seen = []

    def stop_at_the_tail(chunk):
        if len(chunk.data) == 1 and not seen:
            seen.append("stopped")
            raise KeyboardInterrupt
        return chunk.data * 2

    with pytest.raises(KeyboardInterrupt):
        run_chunks(path, stop_at_the_tail, batch_frames=batch, out=tmp_path / "o.zarr")
    assert FrameStore.open(tmp_path / "o.zarr").n_frames == 20
    store = run_chunks(path, stop_at_the_tail, batch_frames=batch, out=tmp_path / "o.zarr")
    assert store.complete and store.n_frames == n
    np.testing.assert_allclose(store.read(0, n), 2 * movie, rtol=1e-6)


# -- applying an alignment ---------------------------------------------------------------------------


def _shift_alignment() -> Alignment:
    h, w = SHAPE
    return Alignment(
        sessions=["a", "b"],
        input_sessions=np.array([0, 1]),
        translations=np.array([[1.5, -2.0], [-1.5, 2.0]]),
        fields=np.zeros((2, 2, h, w), np.float32),
        valid_mask=np.ones(SHAPE, bool),
        source="bv",
        reliability=float("nan"),
        qc={},
        images=np.zeros((2, h, w), np.float32),
    )


@pytest.mark.parametrize(("tail_a", "tail_b"), [(1, 2), (2, 1), (3, 5), (1, 1)])
def test_apply_alignment_with_short_last_chunks(tmp_path, tail_a, tail_b):
    al, batch = _shift_alignment(), 6
    movies = [_movie(2 * batch + tail_a, seed=8), _movie(batch + tail_b, seed=9)]
    result = apply_alignment(al, movies, tmp_path / "aligned.zarr", batch_frames=batch)
    total = sum(len(m) for m in movies)
    assert result.n_frames == total and result.session_bounds.tolist() == [0, len(movies[0]), total]
    want = np.concatenate([FrameWarper(al.total_field(s))(m) for s, m in enumerate(movies)])
    np.testing.assert_allclose(result.store.read(0, total), want, atol=1e-5)


# -- extraction: batches and summary images ------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, 7, 10, 100])
@pytest.mark.parametrize("n", [1, 2, 3, 11, 21, 101, 102])
def test_extraction_batches_split_sessions_evenly_never_leaving_a_short_tail(n, batch):
    bounds = np.array([0, n, n + 2 * n + 1])
    batches = plan_batches(bounds, SHAPE, batch_frames=batch)
    for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        lengths = [x.stop - x.start for x in batches if x.session == s]
        assert sum(lengths) == b - a and max(lengths) <= batch and max(lengths) - min(lengths) <= 1


def test_noise_level_and_summary_of_one_or_two_frames_are_defined():
    one = _movie(1)
    np.testing.assert_array_equal(noise_level(one), np.zeros(SHAPE, np.float32))
    for t in (1, 2, 7):
        cn, pnr = batch_summary(_movie(t), gSig=2)
        assert cn.shape == pnr.shape == SHAPE and not cn.any() and not pnr.any()


@pytest.mark.parametrize("short", [1, 2, 3])
def test_summary_images_with_a_session_of_a_few_frames(short):
    movie = _movie(60 + short, seed=10)
    cn, pnr = summary_images(movie, session_bounds=[0, 60, 60 + short], gSig=2, batch_frames=30)
    alone, alone_pnr = summary_images(movie[:60], gSig=2, batch_frames=30)
    np.testing.assert_array_equal(cn, alone)
    np.testing.assert_array_equal(pnr, alone_pnr)


# -- the whole pipeline ------------------------------------------------------------------------------------


def _caliali(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caliali", *args], capture_output=True, text=True, **kw)


def test_pipeline_with_one_and_two_frame_last_chunks(simulation, tmp_path):
    """Two sessions of 61 and 62 frames read 20 at a time: last chunks of 1 and 2 frames in every stage."""
    sim = simulation(sessions=2, frames=80, neurons=12, height=48, width=56, fs=FS, seed=4)
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    for name, n in (("ses01", 61), ("ses02", 62)):
        with open_video(sim.out / f"{name}.tif") as video:
            _write(experiment / f"{name}.tif", video.read(0, n))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"gSig": 3, "fs": FS, "batch_frames": 20, "min_corr": 0.2, "min_pnr": 3}))
    out = tmp_path / "out"
    r = _caliali("run", "--input", str(experiment), "--config", str(config), "--output", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["session_frames"] == [61, 62] and summary["neurons"] > 0
    assert (out / "neurons.nwb").stat().st_size > 0
    assert np.load(out / "arrays" / "C.npy").shape == (summary["neurons"], 123)


@pytest.mark.parametrize(("frames", "temporal_ds"), [(5, 1), (1, 1), (50, 8)])
def test_a_session_too_short_for_noise_levels_is_refused_up_front(tmp_path, frames, temporal_ds):
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    _write(experiment / "long.tif", _movie(80))
    _write(experiment / "short.tif", _movie(frames))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"gSig": 2, "fs": FS, "temporal_ds": temporal_ds}))
    r = _caliali("run", "--input", str(experiment), "--config", str(config), "--output", str(tmp_path / "out"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "session short has" in lines[0] and "at least 8" in lines[0], r.stderr
    assert ("temporal_ds" in lines[0]) == (temporal_ds > 1)
    assert not (tmp_path / "out" / "work").exists()  # refused before any work


def test_an_unexpected_failure_is_one_line_with_the_traceback_saved(tmp_path):
    """A fault outside caliali's own errors still reaches the user as one line naming the saved traceback."""
    (tmp_path / "taken").write_text("a file where the output folder should go")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"gSig": 3}))
    r = _caliali(
        "run", "--input", str(tmp_path / "taken"), "--config", str(config), "--output", str(tmp_path / "taken")
    )
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    if "traceback in " in lines[0]:
        assert "Traceback" in Path(lines[0].rsplit("traceback in ", 1)[1].strip()).read_text()


@pytest.mark.slow
def test_the_real_recording_whose_last_chunk_was_two_frames_runs(minian_fixture_runs):
    """100 frames, chunks of 98: projections once died on the 2-frame last chunk (the runs are shared
    with test_determinism, which checks that the two wrote the same bytes)."""
    for out, code, said in minian_fixture_runs:
        assert code == 0, said[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["session_frames"] == [100] and summary["neurons"] > 0


def test_each_sessions_images_come_from_the_same_pass_as_cn_and_pnr():
    """Per-session mean and max are the session's frames' own; Cn and PNR per session are what the
    session alone gives, and their maximum over sessions is `summary_images` ' result, bit for bit."""
    rng = np.random.default_rng(4)
    movie = rng.normal(100, 5, (150, 20, 24)).astype(np.float32)
    movie[100:, 5:9, 5:9] += 40 * rng.random((50, 1, 1)).astype(np.float32)  # a cell active in session 2 only
    bounds = [0, 90, 150]
    images = session_images(movie, session_bounds=bounds, gSig=2, batch_frames=40)
    for s, (s0, s1) in enumerate(zip(bounds[:-1], bounds[1:])):
        np.testing.assert_allclose(images.mean[s], movie[s0:s1].mean(axis=0), rtol=1e-6)
        assert np.array_equal(images.max[s], movie[s0:s1].max(axis=0))
        alone = session_images(movie[s0:s1], gSig=2, batch_frames=40)
        assert np.array_equal(images.cn[s], alone.cn[0]) and np.array_equal(images.pnr[s], alone.pnr[0])
    whole = images.whole()
    cn, pnr = summary_images(movie, session_bounds=bounds, gSig=2, batch_frames=40)
    assert np.array_equal(whole["Cn"], cn) and np.array_equal(whole["PNR"], pnr)
    np.testing.assert_allclose(whole["mean"], movie.mean(axis=0), rtol=1e-6)
    assert np.array_equal(whole["max"], movie.max(axis=0))
    assert images.pnr[1][6, 6] > images.pnr[0][6, 6], "the cell active in session 2 does not stand out there"
