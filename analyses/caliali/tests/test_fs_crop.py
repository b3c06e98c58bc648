"""The frame rate read from the recording (``fs: auto``), and the ``crop`` / ``roi_mask`` region.

Readers are checked on files written by OpenCV, tifffile and pynwb with a known rate; whole
``caliali run`` processes on a small simulated AVI (25 fps) check what the summary, the arrays
and the NWB file say, and that bad regions are refused in one line before any work.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import tifffile
import yaml

from caliali._cv2 import cv2
from caliali.exceptions import InputError
from caliali.experiment import load_experiment
from caliali.framerate import resolve_fs
from caliali.io import open_video
from caliali.roi import load_roi_mask
from caliali.simulate import SimulationParams, simulate

SMALL = {"gSig": 3, "min_corr": 0.2, "min_pnr": 4, "memory_budget": "128MB", "qc": False}
CROP = [10, 90, 4, 104]  # of the simulated 100 x 120 frame


def _caliali(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caliali", *args], capture_output=True, text=True)


def _opencv_avi(path: Path, frames: np.ndarray, fps: float) -> Path:
    """Grey uint8 frames as an MJPG AVI written by OpenCV at ``fps``."""
    h, w = frames.shape[1:]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h), isColor=False)
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture
def grey(movie) -> np.ndarray:
    return (movie // 16).astype(np.uint8)


# -- readers: the rate each format records ---------------------------------------------------


def test_opencv_reads_the_avi_frame_rate(tmp_path, grey):
    with open_video(_opencv_avi(tmp_path / "m.avi", grey, 25.0)) as video:
        assert video.fs == pytest.approx(25.0)


def test_imagej_tiff_rate_comes_from_its_frame_interval_or_fps(tmp_path, movie):
    tifffile.imwrite(tmp_path / "interval.tif", movie, imagej=True, metadata={"axes": "TYX", "finterval": 0.05})
    tifffile.imwrite(tmp_path / "fps.tif", movie, imagej=True, metadata={"axes": "TYX", "fps": 30.0})
    tifffile.imwrite(tmp_path / "plain.tif", movie)
    rates = {}
    for name in ("interval", "fps", "plain"):
        with open_video(tmp_path / f"{name}.tif") as video:
            rates[name] = video.fs
    assert rates == {"interval": 20.0, "fps": 30.0, "plain": None}


def test_ome_tiff_rate_comes_from_its_time_increment(tmp_path, movie):
    path = tmp_path / "m.ome.tif"
    tifffile.imwrite(path, movie, ome=True, metadata={"axes": "TYX", "TimeIncrement": 40, "TimeIncrementUnit": "ms"})
    with open_video(path) as video:
        assert video.fs == pytest.approx(25.0)


def test_nwb_rate_is_read(tmp_path, movie, write_video):
    with open_video(write_video(tmp_path / "m.nwb", movie, rate=15.0)) as video:
        assert video.fs == 15.0


def test_nwb_rate_of_a_series_given_by_timestamps(tmp_path, movie):
    import datetime

    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ophys import OnePhotonSeries, OpticalChannel

    nwb = NWBFile("test", "t", datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
    channel = OpticalChannel(name="green", description="GCaMP", emission_lambda=520.0)
    plane = nwb.create_imaging_plane(
        name="plane",
        optical_channel=channel,
        description="CA1",
        device=nwb.create_device(name="Miniscope"),
        excitation_lambda=470.0,
        indicator="GCaMP6f",
        location="CA1",
    )
    times = np.arange(len(movie)) / 20.0
    times[10:] += 0.05  # one dropped frame does not move the rate
    nwb.add_acquisition(OnePhotonSeries(name="raw", data=movie, imaging_plane=plane, timestamps=times, unit="n.a."))
    with NWBHDF5IO(str(tmp_path / "t.nwb"), "w") as io:
        io.write(nwb)
    with open_video(tmp_path / "t.nwb") as video:
        assert video.fs == pytest.approx(20.0)


# -- fs: auto, set, disagreeing ----------------------------------------------------------------


def test_auto_uses_the_files_rate_and_says_where_it_came_from(tmp_path, grey):
    _opencv_avi(tmp_path / "day1.avi", grey, 25.0)
    _opencv_avi(tmp_path / "day2.avi", grey, 25.0)
    rate = resolve_fs(load_experiment(tmp_path), "auto")
    assert (rate.fs, rate.source, rate.note) == (25.0, "recording metadata (avi: 25.0 fps)", None)


def test_auto_refuses_sessions_recorded_at_different_rates(tmp_path, grey):
    _opencv_avi(tmp_path / "day1.avi", grey, 25.0)
    _opencv_avi(tmp_path / "day2.avi", grey, 30.0)
    with pytest.raises(InputError, match=r"different frame rates \(day1.avi: 25 fps, day2.avi: 30 fps\); set fs"):
        resolve_fs(load_experiment(tmp_path), "auto")


def test_auto_falls_back_to_10_hz_and_says_so(tmp_path, movie):
    tifffile.imwrite(tmp_path / "day1.tif", movie)
    rate = resolve_fs(load_experiment(tmp_path), "auto")
    assert (rate.fs, rate.source) == (10.0, "default: the recording has no frame rate; set fs")


def test_a_set_rate_is_used_with_a_note_when_the_file_disagrees(tmp_path, grey):
    _opencv_avi(tmp_path / "day1.avi", grey, 25.0)
    experiment = load_experiment(tmp_path)
    rate = resolve_fs(experiment, 20.0)
    assert (rate.fs, rate.source) == (20.0, "config")
    assert "fs 20 Hz was set and used, but the recording states day1.avi: 25 fps" in rate.note
    assert resolve_fs(experiment, 25.1).note is None  # within 1%: timestamps, not a disagreement


# -- crop and roi_mask on their own ----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".avi", ".tif", ".h5", ".zarr", ".nwb"])
def test_every_format_reads_the_crop_alone(tmp_path, movie, write_video, suffix):
    path = write_video(tmp_path / f"m{suffix}", movie)
    with open_video(path) as whole, open_video(path, crop=(3, 20, 5, 29)) as part:
        assert part.frame_shape == (17, 24) and part.full_shape == (24, 32)
        np.testing.assert_array_equal(part.read(4, 30), whole.read(4, 30)[:, 3:20, 5:29])
        chunks = list(part.iter_chunks(8))
        assert all(c.shape[1:] == (17, 24) and c.flags.c_contiguous for c in chunks)


def test_a_crop_past_the_frame_names_its_size(tmp_path, movie, write_video):
    path = write_video(tmp_path / "m.tif", movie)
    with pytest.raises(InputError, match=r"crop \[0, 900, 0, 10\] reaches past the frame's 24 rows \(m.tif is 24x32"):
        open_video(path, crop=(0, 900, 0, 10))


def test_roi_masks_read_from_npy_png_and_tiff(tmp_path):
    mask = np.zeros((20, 30), bool)
    mask[5:15, 8:25] = True
    np.save(tmp_path / "m.npy", mask)
    cv2.imwrite(str(tmp_path / "m.png"), mask.astype(np.uint8) * 255)
    tifffile.imwrite(tmp_path / "m.tif", mask.astype(np.uint8) * 7)
    for name in ("m.npy", "m.png", "m.tif"):
        np.testing.assert_array_equal(load_roi_mask(tmp_path, name, (20, 30), []), mask)
    with pytest.raises(InputError, match=r"roi_mask 'm.npy' is 20x30 px but the frame is 10x30 px after crop"):
        load_roi_mask(tmp_path, "m.npy", (10, 30), [0, 10, 0, 30])
    np.save(tmp_path / "counts.npy", np.arange(600).reshape(20, 30))
    with pytest.raises(InputError, match="values other than 0 and 1"):
        load_roi_mask(tmp_path, "counts.npy", (20, 30), [])
    with pytest.raises(InputError, match="not in the input folder"):
        load_roi_mask(tmp_path, "absent.npy", (20, 30), [])


# -- whole runs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def avi_25fps(tmp_path_factory) -> Path:
    """One session, 300 frames of 100 x 120 px, as an FFV1 AVI written by OpenCV at 25 fps (no manifest)."""
    sim = tmp_path_factory.mktemp("sim") / "sim"
    simulate(
        sim, SimulationParams(sessions=1, frames=300, neurons=12, seed=5, height=100, width=120, format="avi", fs=25)
    )
    folder = tmp_path_factory.mktemp("input")
    shutil.copy(sim / "ses01.avi", folder / "ses01.avi")
    return folder


def _run(folder: Path, out: Path, **config) -> subprocess.CompletedProcess:
    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL, **config}))
    return _caliali("run", "--input", str(folder), "--config", str(cfg), "--output", str(out))


@pytest.fixture(scope="module")
def set_fs_run(avi_25fps, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The whole frame, fs set to 30 (the file says 25)."""
    out = tmp_path_factory.mktemp("set_fs") / "out"
    r = _run(avi_25fps, out, fs=30)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out, r


def _mask_through_a_neuron(whole_frame_run: Path) -> np.ndarray:
    """A mask of the cropped frame whose right edge runs through the middle of the strongest neuron a
    whole-frame run found well inside the crop: its seed is inside, half of its footprint outside."""
    top, bottom, left, right = CROP
    centers = np.asarray(json.loads((whole_frame_run / "arrays" / "meta.json").read_text())["centers"])
    cy, cx = centers[:, 0] - top, centers[:, 1] - left
    central = np.flatnonzero((cy > 15) & (cy < bottom - top - 15) & (cx > 20) & (cx < right - left - 20))
    assert central.size, f"no neuron found in the middle of the crop: {centers.tolist()}"
    mask = np.zeros((bottom - top, right - left), np.uint8)
    mask[:, : int(round(cx[central[0]])) + 1] = 255  # neurons are in SNR order: the first is the strongest
    return mask


@pytest.fixture(scope="module")
def cropped_run(avi_25fps, set_fs_run, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, np.ndarray]:
    """fs: auto, a crop, and a TIFF mask (the crop's columns left of a neuron's middle) beside the video."""
    mask = _mask_through_a_neuron(set_fs_run[0])
    folder = tmp_path_factory.mktemp("masked")
    shutil.copy(avi_25fps / "ses01.avi", folder / "ses01.avi")
    tifffile.imwrite(folder / "left.tif", mask)  # a TIFF: must not be taken for a session
    out = tmp_path_factory.mktemp("run") / "out"
    r = _run(folder, out, crop=CROP, roi_mask="left.tif")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out, r, mask > 0


def test_run_reads_fs_from_the_avi_and_reports_it(cropped_run):
    out, r, _ = cropped_run
    summary = json.loads((out / "summary.json").read_text())
    meta = json.loads((out / "arrays" / "meta.json").read_text())
    assert summary["sessions"] == ["ses01"]
    assert (summary["fs"], summary["fs_from"], summary["fs_note"]) == (25.0, "recording metadata (avi: 25.0 fps)", None)
    assert "fs" not in summary["run"] and summary["config"]["fs"] == "auto"
    assert (meta["fs"], meta["fs_from"]) == (25.0, "recording metadata (avi: 25.0 fps)")
    assert "frame rate 25 Hz, recording metadata (avi: 25.0 fps)" in r.stdout
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(out / "neurons.nwb"), mode="r") as io:
        nwb = io.read()
        assert nwb.processing["ophys"]["Fluorescence"]["C"].rate == 25.0
        plane = nwb.imaging_planes["ImagingPlane"]
        assert "rows 10-89, columns 4-103 of the original 100x120 px frame" in plane.description
        segmentation = nwb.processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        assert "original pixel (10 + y, 4 + x)" in segmentation.description


def test_crop_shrinks_the_outputs_and_records_its_offset(cropped_run):
    out, _, _ = cropped_run
    meta = json.loads((out / "arrays" / "meta.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert meta["dims"] == [80, 100] and np.load(out / "arrays" / "Cn.npy").shape == (80, 100)
    assert meta["crop"] == summary["crop"] == CROP
    assert meta["frame_shape_original"] == summary["frame_shape_original"] == [100, 120]
    assert summary["roi_mask"] == "left.tif"


def test_roi_mask_confines_seeds_and_footprints(cropped_run):
    out, _, inside = cropped_run
    meta = json.loads((out / "arrays" / "meta.json").read_text())
    A = scipy.sparse.load_npz(out / "arrays" / "A.npz")
    assert A.shape == (inside.size, meta["n_neurons"]) and meta["n_neurons"] > 0
    assert A.tocsr()[np.flatnonzero(~inside.ravel())].count_nonzero() == 0
    edge = inside.sum(axis=1).max()
    assert (np.asarray(meta["centers"])[:, 1] < edge).all()
    # the neuron the mask's edge runs through was found, cut at the edge
    assert (A.tocsr()[np.flatnonzero(inside.ravel() & (np.indices(inside.shape)[1].ravel() == edge - 1))] != 0).nnz


def test_a_set_fs_far_from_the_files_is_used_with_a_note(set_fs_run):
    out, r = set_fs_run
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["fs"], summary["fs_from"]) == (30.0, "config")
    assert summary["fs_note"].startswith("fs 30 Hz was set and used, but the recording states ses01.avi: 25 fps")
    assert json.loads((out / "arrays" / "meta.json").read_text())["crop"] == [0, 100, 0, 120]
    assert "note: fs 30 Hz was set" in " ".join(r.stdout.split())


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"crop": [0, 900, 0, 10]}, "crop [0, 900, 0, 10] reaches past the frame's 100 rows (ses01.avi is 100x120 px)"),
        ({"crop": [0, 10, 50, 121]}, "reaches past the frame's 120 columns"),
        ({"roi_mask": "../mask.npy"}, "must name a file inside the input folder"),
        ({"roi_mask": "wrong.npy"}, "roi_mask 'wrong.npy' is 40x40 px but the frame is 100x120 px"),
        ({"roi_mask": "wrong.npy", "crop": [0, 40, 0, 40], "fs": 0}, "fs: must be a number greater than 0"),
    ],
)
def test_a_bad_region_is_refused_in_one_line(avi_25fps, tmp_path, config, words):
    folder = tmp_path / "input"
    folder.mkdir()
    shutil.copy(avi_25fps / "ses01.avi", folder / "ses01.avi")
    np.save(folder / "wrong.npy", np.ones((40, 40), bool))
    r = _run(folder, tmp_path / "out", **config)
    assert r.returncode != 0
    assert words in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "arrays").exists()
