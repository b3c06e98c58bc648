"""The split rule at its edges, and split files that reassemble exactly."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

from caliali.exceptions import InputError, MemoryBudgetError
from caliali.experiment import load_experiment, split_files
from caliali.io import open_video, split_sizes, split_video


@pytest.mark.parametrize("n", [1, 2, 2999, 3000, 3001, 4500, 4501, 5999, 6000, 6001, 7000, 9001, 100_000])
def test_split_sizes_never_exceed_never_drop(n):
    sizes = split_sizes(n, 3000)
    assert sum(sizes) == n
    assert max(sizes) <= 3000
    assert len(sizes) == -(-n // 3000)  # the fewest pieces
    assert max(sizes) - min(sizes) <= 1


def test_split_sizes_edges():
    assert split_sizes(0, 10) == []
    assert split_sizes(10, 10) == [10]
    assert split_sizes(11, 10) == [6, 5]
    assert split_sizes(4500, 3000) == [2250, 2250]  # the original made one 4500-frame piece here
    assert split_sizes(5, 1) == [1] * 5
    with pytest.raises(InputError, match="max_frames must be at least 1"):
        split_sizes(10, 0)


@pytest.mark.parametrize("suffix", [".tif", ".avi", ".h5", ".zarr", ".nwb"])
def test_split_pieces_reassemble_exactly(tmp_path, movie, write_video, suffix):
    frames = movie if suffix != ".avi" else (movie // 16).astype(np.uint8)
    path = write_video(tmp_path / f"day1{suffix}", frames)
    pieces = split_video(path, tmp_path / "out", max_frames=10)
    assert [p.name.split(".")[0] for p in pieces] == ["day1_b1", "day1_b2", "day1_b3", "day1_b4"]
    parts = []
    for piece in pieces:
        with open_video(piece) as video:
            assert video.n_frames <= 10
            parts.append(video.read())
    np.testing.assert_array_equal(np.concatenate(parts), frames.astype(np.float32))


def test_split_streams_within_the_memory_budget(tmp_path, movie, write_video):
    path = write_video(tmp_path / "m.tif", movie)
    pieces = split_video(path, tmp_path / "out", max_frames=20, memory_budget=3 * 4 * 24 * 32 * 3)  # 3 frames
    assert [p.name for p in pieces] == ["m_b1.tif", "m_b2.tif"]
    with pytest.raises(MemoryBudgetError, match="cannot hold one 24x32 frame"):
        split_video(path, tmp_path / "out2", max_frames=20, memory_budget=100)


def test_short_file_is_kept_whole(tmp_path, movie, write_video):
    path = write_video(tmp_path / "short.tif", movie[:5])
    (piece,) = split_video(path, tmp_path / "out", max_frames=3000)
    with open_video(piece) as video:
        np.testing.assert_array_equal(video.read(), movie[:5].astype(np.float32))


def test_split_files_writes_manifest_with_session_ids(tmp_path, movie, write_video):
    a = write_video(tmp_path / "mouse_day2.tif", movie)
    b = write_video(tmp_path / "mouse_day10.tif", movie[:8])
    experiment = split_files([a, b], tmp_path / "split", max_frames=15)
    manifest = yaml.safe_load((tmp_path / "split" / "manifest.yaml").read_text())
    assert [s["id"] for s in manifest["sessions"]] == ["mouse_day2", "mouse_day10"]
    assert manifest["same_ses_id"] == [1, 1, 1, 2]
    assert experiment.same_ses_id == [1, 1, 1, 2]
    reloaded = load_experiment(tmp_path / "split" / "manifest.yaml")
    assert reloaded.session_frames() == [37, 8]


def test_cli_split(tmp_path, movie, write_video):
    path = write_video(tmp_path / "long.tif", movie)
    run = subprocess.run(
        [sys.executable, "-m", "caliali", "split", str(path), "--max-frames", "12", "--out", str(tmp_path / "pieces")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "long: 4 piece(s)" in run.stdout
    experiment = load_experiment(tmp_path / "pieces")
    assert experiment.session_ids == ["long"] and experiment.session_frames() == [37]
    bad = subprocess.run(
        [sys.executable, "-m", "caliali", "split", str(path), "--max-frames", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "max_frames must be at least 1" in bad.stderr
