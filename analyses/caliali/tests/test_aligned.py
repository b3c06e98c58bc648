"""`python -m caliali.aligned`: motion correction and alignment alone, each session's aligned movie
written as TIFF or .npy (the first step of a chain), with the same frames either way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from caliali.simulate import SimulationParams, simulate


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("aligned") / "sim"
    simulate(out, SimulationParams(sessions=2, frames=120, neurons=8, seed=3, height=64, width=80))
    exp = out.parent / "exp"
    exp.mkdir()
    for name in ("ses01.tif", "ses02.tif"):
        (out / name).rename(exp / name)
    return exp


def _align(experiment: Path, out: Path, **config) -> subprocess.CompletedProcess[str]:
    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump({"gSig": 3, "memory_budget": "128MB", **config}))
    argv = ["-m", "caliali.aligned", "--input", str(experiment), "--config", str(cfg), "--output", str(out)]
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True)


def test_each_session_is_written_aligned_in_tif_and_npy_alike(experiment: Path, tmp_path: Path):
    tif, npy = _align(experiment, tmp_path / "tif"), _align(experiment, tmp_path / "npy", movie_format="npy")
    assert tif.returncode == 0 and npy.returncode == 0, tif.stderr + npy.stderr
    for out, ext in ((tmp_path / "tif", "tif"), (tmp_path / "npy", "npy")):
        assert sorted(p.name for p in (out / "aligned").iterdir()) == [f"ses01.{ext}", f"ses02.{ext}"]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["sessions"] == ["ses01", "ses02"] and summary["session_frames"] == [120, 120]
        assert summary["alignment"]["source"] in ("bv", "neuron")
        assert (out / "alignment" / "fields.npy").is_file() and not (out / "work").exists()
    valid = np.load(tmp_path / "tif" / "valid_mask.npy")
    for session in ("ses01", "ses02"):
        a = tifffile.imread(tmp_path / "tif" / "aligned" / f"{session}.tif")
        b = np.load(tmp_path / "npy" / "aligned" / f"{session}.npy")
        assert a.shape == b.shape == (120, *valid.shape) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
        assert not a[:, ~valid].any()  # 0 outside the valid pixels


def test_a_wrong_movie_format_is_one_line(experiment: Path, tmp_path: Path):
    done = _align(experiment, tmp_path / "out", movie_format="avi")
    assert done.returncode != 0
    assert "movie_format 'avi' is not one of tif, npy" in done.stderr
    assert "Traceback" not in done.stderr
