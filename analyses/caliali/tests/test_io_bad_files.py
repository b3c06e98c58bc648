"""Corrupt, truncated, empty and unsupported files give one clear error naming the file."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import zarr

from caliali.exceptions import InputError, UnsupportedFormatError, VideoReadError
from caliali.io import open_video


def _read_all(path, **options):
    with open_video(path, **options) as video:
        for _ in video.iter_chunks(16):
            pass


def _truncate(path, fraction):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.mark.parametrize("suffix", [".avi", ".mp4", ".tif", ".tiff", ".h5", ".nwb"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(VideoReadError, match=str(path)):
        _read_all(path)


@pytest.mark.parametrize("suffix", [".avi", ".mp4", ".tif", ".h5", ".nwb"])
def test_garbage_file(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"RIFF" + np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoReadError, match="garbage"):
        _read_all(path)


@pytest.mark.parametrize(
    "suffix,fraction", [(".avi", 0.5), (".avi", 0.95), (".tif", 0.5), (".tif", 0.9), (".h5", 0.5), (".h5", 0.97)]
)
def test_truncated_file(tmp_path, movie, write_video, suffix, fraction):
    frames = movie if suffix != ".avi" else (movie // 16).astype(np.uint8)
    path = _truncate(write_video(tmp_path / f"cut{suffix}", frames), fraction)
    with pytest.raises(VideoReadError, match=r"cut.*(truncated|not a readable)"):
        _read_all(path)


def test_tif_missing_only_trailing_page_headers_keeps_its_frames(tmp_path, movie, write_video):
    """Our writer puts all pixels first: losing the tail's page headers loses no frame."""
    path = _truncate(write_video(tmp_path / "tail.tif", movie), 0.995)
    with open_video(path) as video:
        np.testing.assert_array_equal(video.read(), movie.astype(np.float32))


def test_truncated_page_per_frame_tif(tmp_path, movie):
    import tifffile

    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:
        for frame in movie:
            tw.write(frame, photometric="minisblack", metadata=None, compression="zlib")
    _truncate(tmp_path / "pages.tif", 0.7)
    with pytest.raises(VideoReadError, match="pages.tif.*(truncated|corrupt)"):
        _read_all(tmp_path / "pages.tif")


def test_truncated_nwb(tmp_path, movie, write_video):
    path = _truncate(write_video(tmp_path / "cut.nwb", movie), 0.6)
    with pytest.raises(VideoReadError, match="cut.nwb"):
        _read_all(path)


def test_video_with_no_frames(tmp_path):
    with h5py.File(tmp_path / "none.h5", "w") as f:
        f.create_dataset("mov", shape=(0, 8, 8), dtype="uint16")
    zarr.create_array(str(tmp_path / "none.zarr"), shape=(0, 8, 8), chunks=(1, 8, 8), dtype="float32")
    for name in ("none.h5", "none.zarr"):
        with pytest.raises(VideoReadError, match=f"{name}.*no frames"):
            open_video(tmp_path / name)


def test_files_without_a_movie(tmp_path, movie, write_video):
    with h5py.File(tmp_path / "images.h5", "w") as f:
        f["mean"] = movie[0]
    with pytest.raises(VideoReadError, match="images.h5: contains no movie-shaped dataset"):
        open_video(tmp_path / "images.h5")
    zarr.create_array(str(tmp_path / "flat.zarr"), shape=(8, 8), chunks=(8, 8), dtype="float32")
    with pytest.raises(UnsupportedFormatError, match="flat.zarr.*shaped"):
        open_video(tmp_path / "flat.zarr")
    (tmp_path / "notzarr.zarr").mkdir()
    with pytest.raises(VideoReadError, match="notzarr.zarr: not a readable zarr"):
        open_video(tmp_path / "notzarr.zarr")


def test_a_refused_file_is_closed_again(tmp_path, movie):
    with h5py.File(tmp_path / "images.h5", "w") as f:
        f["mean"] = movie[0]
    with pytest.raises(VideoReadError):
        open_video(tmp_path / "images.h5")
    with h5py.File(tmp_path / "images.h5", "w"):  # HDF5 refuses to truncate a file something still holds open
        pass


def test_ambiguous_and_missing_datasets(tmp_path, movie, write_video):
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = movie
        f["b"] = movie
    with pytest.raises(VideoReadError, match="several datasets.*dataset="):
        open_video(tmp_path / "two.h5")
    with pytest.raises(VideoReadError, match="no dataset named 'c'.*a \\(37, 24, 32\\)"):
        open_video(tmp_path / "two.h5", dataset="c")
    nwb = write_video(tmp_path / "two.nwb", movie, name="raw", extra="other")
    with pytest.raises(VideoReadError, match="several imaging series"):
        open_video(nwb)
    with pytest.raises(InputError, match="dataset='x' applies only"):
        open_video(write_video(tmp_path / "m.tif", movie), dataset="x")


def test_unsupported_and_missing(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedFormatError, match="notes.txt: unsupported video format '.txt'"):
        open_video(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="nothere.avi: no such file"):
        open_video(tmp_path / "nothere.avi")


def test_multichannel_tiff_is_refused(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "twochan.tif", np.zeros((4, 2, 8, 8), np.uint8), imagej=True, metadata={"axes": "TCYX"})
    with pytest.raises(UnsupportedFormatError, match="twochan.tif: TIFF with 2 channels"):
        open_video(tmp_path / "twochan.tif")


def test_cli_reports_bad_file_without_traceback(tmp_path):
    path = tmp_path / "broken.avi"
    path.write_bytes(b"not a video at all")
    run = subprocess.run(
        [sys.executable, "-m", "caliali", "info", str(path)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    assert "broken.avi" in run.stderr and "Traceback" not in run.stderr + run.stdout


@pytest.mark.parametrize("name,content", [("empty.tif", b""), ("garbage.avi", b"RIFF" + bytes(range(256)) * 20)])
def test_a_run_on_a_bad_input_tells_the_platform_why_in_one_line(tmp_path, name, content):
    """The reason goes to NCAAS_ERROR_FILE too (ncaas shows it as the task's failure reason)."""
    path = tmp_path / name
    path.write_bytes(content)
    reason_file = tmp_path / "scratch" / "reason"
    reason_file.parent.mkdir()
    env = {**os.environ, "NCAAS_ERROR_FILE": str(reason_file)}
    run = subprocess.run(
        [sys.executable, "-m", "caliali", "run", "--input", str(path), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr + run.stdout
    [reason] = reason_file.read_text().splitlines()
    assert str(path) in reason and reason in " ".join(run.stderr.split())
    assert ("empty (0 bytes)" if not content else "cannot open this file as a video") in reason


def test_cli_error_keeps_square_brackets(tmp_path):
    """A message is printed as text: a file named ``day[a1].avi`` is not eaten as console markup."""
    path = tmp_path / "day[a1].avi"
    path.write_bytes(b"not a video at all")
    run = subprocess.run(
        [sys.executable, "-m", "caliali", "info", str(path)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2 and "day[a1].avi" in run.stderr
