"""Experiments from manifests, folders and single files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from caliali.exceptions import ManifestError
from caliali.experiment import group_files, load_experiment, natural_key, write_manifest


def test_natural_sort_and_piece_grouping(tmp_path, movie, write_video):
    names = ["day10.tif", "day2_b10.tif", "day2_b2.tif", "day2_b1.tif", "day1.avi"]
    for name in names:
        frames = movie[:3] if name.endswith(".tif") else (movie[:3] // 16).astype(np.uint8)
        write_video(tmp_path / name, frames)
    (tmp_path / "notes.txt").write_text("not a video")
    experiment = load_experiment(tmp_path)
    assert experiment.session_ids == ["day1", "day2", "day10"]
    assert [p.name for p in experiment.sessions[1].files] == ["day2_b1.tif", "day2_b2.tif", "day2_b10.tif"]
    assert experiment.same_ses_id == [1, 2, 2, 2, 3]


def test_natural_key():
    assert sorted(["a10", "a9", "A1", "b"], key=natural_key) == ["A1", "a9", "a10", "b"]
    assert [s.id for s in group_files([Path("x_b1.tif")])] == ["x"]


def test_manifest_list_and_mapping_forms(tmp_path, movie, write_video):
    for name in ("a.tif", "b.tif", "c.tif"):
        write_video(tmp_path / name, movie[:4])
    (tmp_path / "list.yaml").write_text(
        "sessions:\n  - id: s1\n    files: [a.tif, b.tif]\n  - id: s2\n    files: c.tif\nfs: 20\n"
    )
    (tmp_path / "map.yaml").write_text("sessions:\n  s1: [a.tif, b.tif]\n  s2: [c.tif]\n")
    for name in ("list.yaml", "map.yaml"):
        experiment = load_experiment(tmp_path / name)
        assert experiment.session_ids == ["s1", "s2"]
        assert experiment.session_frames() == [8, 4]
        assert experiment.frame_shape() == (24, 32)
    assert load_experiment(tmp_path / "list.yaml").fs == 20.0


def test_manifest_round_trip_and_folder_prefers_manifest(tmp_path, movie, write_video):
    write_video(tmp_path / "z.tif", movie[:4])
    write_video(tmp_path / "y.tif", movie[:6])
    experiment = load_experiment(tmp_path)
    assert experiment.session_ids == ["y", "z"]
    reordered = experiment.sessions[::-1]
    write_manifest(reordered, tmp_path / "manifest.yaml")
    assert load_experiment(tmp_path).session_ids == ["z", "y"]


def test_single_file_is_one_session(tmp_path, movie, write_video):
    path = write_video(tmp_path / "one.h5", movie)
    experiment = load_experiment(path)
    assert experiment.session_ids == ["one"] and experiment.session_frames() == [37]


@pytest.mark.parametrize(
    "text,message",
    [
        ("files: [a.tif]", "needs a non-empty 'sessions' key"),
        ("sessions: []", "needs a non-empty 'sessions' key"),
        ("sessions:\n  - id: s1\n", "sessions\\[0\\] has no 'files' key"),
        ("sessions:\n  - {id: s1, files: [a.tif]}\n  - {id: s1, files: [a.tif]}\n", "'s1' appears twice"),
        ("sessions:\n  s1: [missing.tif]\n", "lists 'missing.tif', which does not exist"),
        ("sessions:\n  s1: [notes.txt]\n", "lists 'notes.txt', not a video"),
        ("sessions:\n  s1: []\n", "needs a non-empty list of files"),
        ("sessions: [a.tif]\n", "must be a list of"),
        ("sessions: {s1: [a.tif]\n", "not valid YAML"),
    ],
)
def test_manifest_errors_name_the_problem(tmp_path, movie, write_video, text, message):
    write_video(tmp_path / "a.tif", movie[:2])
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(ManifestError, match=message):
        load_experiment(tmp_path / "m.yaml")


def test_folder_without_videos_and_mixed_sizes(tmp_path, movie, write_video):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no videos here"):
        load_experiment(tmp_path / "empty")
    write_video(tmp_path / "a.tif", movie[:2])
    write_video(tmp_path / "b.tif", movie[:2, :10])
    with pytest.raises(ManifestError, match="different frame sizes.*a.tif: 24x32"):
        load_experiment(tmp_path).frame_shape()


def test_cli_info_lists_sessions_and_files(tmp_path, movie, write_video):
    import os
    import subprocess
    import sys

    write_video(tmp_path / "day1_b1.tif", movie[:5])
    write_video(tmp_path / "day1_b2.tif", movie[:3])
    run = subprocess.run(
        [sys.executable, "-m", "caliali", "info", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if "day1_b" in line]
    assert len(rows) == 2 and "5" in rows[0] and "24x32" in rows[0] and "uint16" in rows[1]
