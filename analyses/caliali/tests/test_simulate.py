"""The simulator: structure, determinism, and statistics within tolerance."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from scipy.spatial.distance import pdist

from caliali.chunking import iter_chunks
from caliali.exceptions import InputError
from caliali.experiment import load_experiment
from caliali.io import open_video
from caliali.simulate import SimulationParams, simulate

# A simulation large enough for statistics, small enough to be quick.
STATS = {"sessions": 2, "frames": 1000, "neurons": 60, "height": 120, "width": 160, "seed": 11}


def _gt(sim):
    root = sim.ground_truth
    return {name: np.load(root / f"{name}.npy") for name in ("A", "C", "S", "fields", "background")}


def _session_video(sim, index):
    experiment = load_experiment(sim.out)
    return np.concatenate([c.data for c in iter_chunks(experiment.sessions[index], batch_frames=500)])


def test_layout_and_ground_truth_shapes(simulation):
    sim = simulation(max_frames_per_file=90)
    gt, meta = _gt(sim), sim.meta
    assert gt["A"].shape == (30, 80, 96) and gt["A"].dtype == np.float32
    assert gt["C"].shape == gt["S"].shape == (30, 400)
    assert gt["fields"].shape == (2, 2, 80, 96)
    assert json.loads((sim.ground_truth / "session_frames.json").read_text()) == [200, 200]
    assert json.loads((sim.ground_truth / "meta.json").read_text())["neurons"] == 30
    experiment = load_experiment(sim.out)
    assert experiment.session_ids == ["ses01", "ses02"]
    assert [p.name for p in experiment.sessions[0].files] == ["ses01_b1.tif", "ses01_b2.tif", "ses01_b3.tif"]
    assert experiment.session_frames() == [200, 200] and experiment.fs == 10.0
    with open_video(experiment.files[0]) as video:
        assert video.n_frames == 67 and video.frame_shape == (80, 96) and video.dtype == np.float32
    assert not (sim.ground_truth / "shifts.npy").exists() and meta["field_inversion_error_px"] < 1e-3


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    small = {"sessions": 1, "frames": 30, "neurons": 8, "height": 48, "width": 64}
    a, b, c = (simulate(tmp_path / name, seed=seed, **small) for name, seed in (("a", 5), ("b", 5), ("c", 6)))
    for name in ("A", "C", "S", "fields"):
        np.testing.assert_array_equal(np.load(a.ground_truth / f"{name}.npy"), np.load(b.ground_truth / f"{name}.npy"))
    assert (a.out / "ses01.tif").read_bytes() == (b.out / "ses01.tif").read_bytes()
    assert not np.array_equal(np.load(a.ground_truth / "A.npy"), np.load(c.ground_truth / "A.npy"))


def test_neurons_count_spacing_and_size(simulation):
    sim = simulation(**STATS)
    a, centres = np.load(sim.ground_truth / "A.npy"), np.array(sim.meta["centres"])
    assert len(a) == len(centres) == 60
    assert pdist(centres).min() >= 8.0
    h, w = a.shape[1:]
    assert centres[:, 0].min() > 0.1 * h and centres[:, 0].max() < 0.9 * h  # central ~60% of the field
    np.testing.assert_allclose(a.max(axis=(1, 2)), 1.0, atol=1e-6)
    diameter = 2 * np.sqrt((a > np.exp(-2)).sum(axis=(1, 2)) / np.pi)  # the 2-sigma outline
    assert 5.5 < np.median(diameter) < 8.5


def test_spike_rates_and_calcium_kernel(simulation):
    sim = simulation(**STATS)
    s, c, meta = np.load(sim.ground_truth / "S.npy"), np.load(sim.ground_truth / "C.npy"), sim.meta
    rates = np.array(meta["spike_rates"])
    assert 0.7 * 0.007 < np.median(rates) < 1.4 * 0.007
    assert s.mean() == pytest.approx(rates.mean(), rel=0.15)
    assert set(np.unique(s)) <= {0.0, 1.0}
    assert (s[:, :1000].sum(axis=1) >= 1).all() and (s[:, 1000:].sum(axis=1) >= 1).all()
    t = np.arange(200)
    for k in range(0, 60, 7):  # spikes convolved with exp(-t/td) - exp(-t/tr), peak 1, per session
        h = np.exp(-t / meta["tau_decay"][k]) - np.exp(-t / meta["tau_rise"][k])
        for a in (0, 1000):
            expected = np.convolve(s[k, a : a + 1000], h / h.max())[:1000]
            np.testing.assert_allclose(c[k, a : a + 1000], expected, atol=1e-4)
    assert c.min() >= 0


def test_peak_to_noise_ratio(simulation):
    sim = simulation(**STATS)
    gt, meta = _gt(sim), sim.meta
    video = _session_video(sim, 0)
    scale = meta["video_scale"]
    diffs = np.diff(video[:, ::4, ::4], axis=0)
    noise = 1.4826 * np.median(np.abs(diffs - np.median(diffs))) / np.sqrt(2)
    assert noise == pytest.approx(0.2 / (meta["pnr"] + 1) * scale, rel=0.05)
    ratios = []
    c = gt["C"][:, :1000]
    for k, (cy, cx) in enumerate(meta["centres"]):
        dy, dx = gt["fields"][0][:, int(round(cy)), int(round(cx))]
        y, x = int(round(cy + dy)), int(round(cx + dx))
        pixels = video[:, y - 1 : y + 2, x - 1 : x + 2].reshape(len(video), -1)
        ck = c[k] - c[k].mean()
        slope = (ck @ (pixels - pixels.mean(axis=0))) / (ck @ ck)
        ratios.append(slope.max() / noise)
    assert np.median(ratios) == pytest.approx(meta["pnr"], rel=0.15)


def test_deformation_magnitude_and_direction(simulation):
    sim = simulation(**STATS)
    gt, meta = _gt(sim), sim.meta
    for s, translation in enumerate(meta["translations"]):
        assert np.abs(translation).max() <= 5.0
        smooth = gt["fields"][s] - np.array(translation, dtype=np.float32)[:, None, None]
        magnitude = np.sqrt((smooth**2).sum(axis=0))
        assert 0.5 * 3.0 < magnitude.max() <= 3.0 + 1e-4
        assert max(np.abs(np.gradient(smooth[0])).max(), np.abs(np.gradient(smooth[1])).max()) < 0.3
        mean = _session_video(sim, s).mean(axis=0)
        h, w = mean.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        aligned = cv2.remap(mean, xx + gt["fields"][s][1], yy + gt["fields"][s][0], cv2.INTER_LINEAR)
        highpass = lambda im: (im - cv2.GaussianBlur(im, (0, 0), 4))[10:-10, 10:-10].ravel()  # noqa: E731
        wrong_way = cv2.remap(mean, xx - gt["fields"][s][1], yy - gt["fields"][s][0], cv2.INTER_LINEAR)
        reference = highpass(gt["background"])
        corr = [np.corrcoef(highpass(im), reference)[0, 1] for im in (aligned, mean, wrong_way)]
        assert corr[0] > 0.75 and corr[0] > corr[1] + 0.1 and corr[0] > corr[2] + 0.1, corr


def test_within_session_motion_shifts_correct_frames(simulation):
    sim = simulation(within_motion=True, frames=150, sessions=1)
    shifts = np.load(sim.ground_truth / "shifts.npy")
    assert shifts.shape == (150, 2)
    assert 0.5 < shifts.std(axis=0).mean() < 3.0
    video = _session_video(sim, 0)
    h, w = video.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    corrected = np.stack(
        [
            cv2.remap(f, xx + dx, yy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            for f, (dy, dx) in zip(video, shifts, strict=True)
        ]
    )
    sharpness = lambda im: (im - cv2.GaussianBlur(im, (0, 0), 3))[8:-8, 8:-8].std()  # noqa: E731
    assert sharpness(corrected.mean(axis=0)) > 1.1 * sharpness(video.mean(axis=0))


def test_remap_variant_activity(simulation):
    sim = simulation(variant="remap", sessions=4, frames=100)
    active, s = np.array(sim.meta["active"]), np.load(sim.ground_truth / "S.npy")
    assert active.shape == (4, 30) and active.any(axis=0).all()
    assert 0.4 < active.mean() < 0.8
    per_session = s.reshape(30, 4, 100).sum(axis=2).T
    assert (per_session[~active] == 0).all() and (per_session[active] >= 1).all()


@pytest.mark.parametrize("variant,count", [("sparse", 20), ("dense", 300)])
def test_variant_neuron_counts(tmp_path, variant, count):
    sim = simulate(tmp_path, sessions=1, frames=3, variant=variant, seed=1)
    assert np.load(sim.ground_truth / "A.npy").shape == (count, 180, 260)
    assert sim.meta["neurons"] == count


def test_avi_stores_the_tif_values_losslessly_to_one_count(tmp_path):
    small = {"sessions": 1, "frames": 12, "neurons": 6, "height": 40, "width": 48, "seed": 2}
    tif, avi = simulate(tmp_path / "t", **small), simulate(tmp_path / "a", format="avi", **small)
    with open_video(tif.out / "ses01.tif") as t, open_video(avi.out / "ses01.avi") as a:
        assert a.dtype == np.uint16
        np.testing.assert_allclose(a.read(), t.read(), atol=0.5 + 1e-3)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"variant": "weird"}, "variant 'weird' is not one of"),
        ({"format": "mp4"}, "format 'mp4'"),
        ({"frames": 0}, "frames must be positive"),
        ({"height": 10}, "at least 32 px"),
    ],
)
def test_bad_parameters(options, message):
    with pytest.raises(InputError, match=message):
        SimulationParams(**options)


def test_cli_simulate(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "caliali",
            "simulate",
            str(tmp_path / "sim"),
            "--sessions",
            "2",
            "--frames",
            "20",
            "--neurons",
            "5",
            "--height",
            "40",
            "--width",
            "48",
            "--max-frames-per-file",
            "8",
            "--within-motion",
            "--format",
            "avi",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    assert "NCAAS_PROGRESS 1.0000" in run.stdout
    experiment = load_experiment(tmp_path / "sim")
    assert experiment.same_ses_id == [1, 1, 1, 2, 2, 2]
    assert np.load(tmp_path / "sim" / "ground_truth" / "shifts.npy").shape == (40, 2)
