"""The neuron radius gSig estimated from the recording when the config leaves it unset."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from caliali.config import ConfigError, load_config
from caliali.experiment import load_experiment
from caliali.motion import session_chunks
from caliali.projections import (
    ActivityAccumulator,
    NoCellsError,
    activity_image,
    estimate_gsig,
    estimate_session_gsig,
)

TOLERANCE = 0.25  # the estimate is within 25% of the simulated radius


def _simulated(simulation, radius: float, size: int, **options):
    """One session whose footprints have the given radius (the simulator's gSig 3 draws them 7 px wide)."""
    return simulation(
        sessions=1,
        frames=400,
        neurons=20,
        height=size,
        width=size,
        gSig=radius,
        footprint_width=radius * 7 / 3,
        min_distance=radius * 8 / 3,
        **options,
    )


def _noise(frames: int = 300, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    return (1000 + 20 * np.random.default_rng(5).standard_normal((frames, *shape))).astype(np.float32)


@pytest.mark.parametrize(("radius", "size"), [(3.0, 80), (6.0, 112)])
def test_the_estimate_recovers_the_simulated_radius(simulation, radius, size):
    sim = _simulated(simulation, radius, size)
    session = load_experiment(sim.out).sessions[0]
    estimate = estimate_gsig(session_chunks(session, batch_frames=150))
    assert abs(estimate.gSig / radius - 1) <= TOLERANCE, estimate
    assert estimate.frames == 400 and estimate.blobs >= 5


def test_motion_is_corrected_before_the_estimate(simulation):
    sim = _simulated(simulation, 3.0, 80, within_motion=True)
    session = load_experiment(sim.out).sessions[0]
    estimate = estimate_session_gsig(lambda: session_chunks(session, batch_frames=150))
    assert abs(estimate.gSig / 3.0 - 1) <= TOLERANCE, estimate
    assert estimate.corrected_with is not None and estimate.frames == 400


def test_the_activity_image_is_the_same_in_any_number_of_chunks():
    rng = np.random.default_rng(1)
    movie = (500 + rng.standard_normal((50, 12, 16)).cumsum(axis=0)).astype(np.float32)
    acc = ActivityAccumulator((12, 16))
    for start in range(0, 50, 7):
        acc.add(movie[start : start + 7])
    np.testing.assert_allclose(acc.image(), activity_image(movie), rtol=1e-5, atol=1e-3)


def test_only_the_first_frames_are_read():
    read = []

    def chunks():
        for start in range(0, 10_000, 100):
            read.append(start)
            yield _noise(100, (32, 32))

    with pytest.raises(NoCellsError):
        estimate_gsig(chunks(), max_frames=250)
    assert read == [0, 100, 200]


def test_a_movie_without_cells_asks_for_gsig():
    with pytest.raises(NoCellsError, match=r"no cells stand out in 300 frames .*set gSig"):
        estimate_gsig([_noise()])


def test_too_few_frames_or_pixels_ask_for_gsig():
    with pytest.raises(NoCellsError, match="needs more than 4 frames; set gSig"):
        estimate_gsig([_noise(4)])
    with pytest.raises(NoCellsError, match="frames of 6x40 px are too small .*; set gSig"):
        estimate_gsig([_noise(100, (6, 40))])


def test_gsig_takes_a_number_or_auto():
    assert load_config({}).gSig == "auto" and load_config({"gSig": 4}).gSig == 4
    with pytest.raises(
        ConfigError, match=r"gSig: must be a number greater than 0.5 and at most 50, or 'auto' \(got 'big'\)$"
    ):
        load_config({"gSig": "big"})
    with pytest.raises(ConfigError, match="gSig is 'auto'"):
        _ = load_config({}).gsig_ds


def _caliali(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caliali", *args], capture_output=True, text=True)


def test_run_without_gsig_estimates_and_records_it(simulation, tmp_path):
    sim = _simulated(simulation, 6.0, 112)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"spatial_ds": 2, "min_corr": 0.2, "nwb": False, "qc": False}))
    out = tmp_path / "out"
    r = _caliali("run", "--input", str(sim.out), "--output", str(out), "--config", str(config))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["gSig"] / 6.0 - 1) <= TOLERANCE, summary["gSig"]  # original pixels, not downsampled ones
    how = summary["gSig_from"]
    assert how.startswith("auto: median LoG radius of ") and "of frames 0-399 of session ses01, motion-corrected" in how
    assert how.endswith(", x spatial_ds 2")
    assert summary["config"]["gSig"] == "auto"  # the config as given; the value used is beside it
    meta = json.loads((out / "arrays" / "meta.json").read_text())
    assert (meta["gSig"], meta["gSig_from"]) == (summary["gSig"], how)
    assert meta["params"]["gSig"] == pytest.approx(summary["gSig"] / 2)  # what extraction used
    assert f"gSig: {summary['gSig']:g} px, {how}" in r.stdout


def test_run_on_a_movie_without_cells_says_to_set_gsig(tmp_path, write_video):
    video = write_video(tmp_path / "noise.tif", _noise())
    r = _caliali("run", "--input", str(video), "--output", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    assert "no cells stand out" in r.stderr and "set gSig" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_run_that_finds_nothing_with_a_gsig_far_too_small_says_the_cells_size(simulation, tmp_path):
    """The failure names the radius the cells have when the gSig set is far from it."""
    sim = simulation(sessions=1, frames=400, neurons=20, height=80, width=80)  # cells of gSig 3
    config = tmp_path / "config.json"
    config.write_text('{"gSig": 1.8, "fs": 10, "motion_correction": false}')
    run = subprocess.run(
        [sys.executable, "-m", "caliali", "run", "--input", str(sim.out), "--config", str(config)]
        + ["--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert "set: 1.8); set gSig to about that, or to 'auto'" in last, last
    size = float(last.split("look larger than gSig says: about ")[1].split(" px")[0])
    assert abs(size / 3.0 - 1) <= TOLERANCE, last
