"""Inscopix ``.isxd`` movies: written by Inscopix's own ``isx`` package, read through caliali."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import yaml

from caliali.exceptions import VideoReadError
from caliali.io import open_video, split_video

# Where the caliali[isxd] extra installs isx (it has wheels for x86-64 and Python < 3.14 only).
HAS_WHEELS = platform.machine() in ("x86_64", "AMD64") and sys.version_info < (3, 14)
needs_isx = pytest.mark.skipif(not HAS_WHEELS, reason="isx has no wheel for this platform or Python")

START = datetime(2024, 5, 1, 9, 30, 15, tzinfo=timezone(timedelta(hours=-7)))


def write_isxd(
    path: Path,
    frames: np.ndarray,
    *,
    period_ms: int = 50,
    start: datetime | None = START,
    dropped: tuple[int, ...] = (),
) -> Path:
    """An .isxd movie written by isx: ``frames`` (t, h, w), the ``dropped`` ones left without pixels."""
    import isx  # an ImportError here on an x86-64 machine means `make setup` did not install caliali[isxd]

    kwargs = {}
    if start is not None:
        offset = int(start.utcoffset().total_seconds())
        kwargs["start"] = isx.Time._from_secs_since_epoch(isx.Duration.from_secs(int(start.timestamp())), offset)
    timing = isx.Timing(
        num_samples=len(frames), period=isx.Duration.from_msecs(period_ms), dropped=list(dropped), **kwargs
    )
    movie = isx.Movie.write(str(path), timing, isx.Spacing(num_pixels=frames.shape[1:]), frames.dtype.type)
    for index, frame in enumerate(frames):
        if index not in dropped:
            movie.set_frame_data(index, frame)
    movie.flush()
    del movie  # isx closes the file when its movie object goes
    return path


def _frames(dtype=np.uint16, n=23, shape=(12, 17), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, (n, *shape)).astype(dtype)


@needs_isx
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_frames_rate_and_start_time_are_read(tmp_path, dtype):
    frames = _frames(dtype)
    if dtype is np.float32:
        frames = frames / 7.0  # values a uint16 cannot hold
    path = write_isxd(tmp_path / "movie.isxd", frames.astype(dtype), period_ms=50)
    with open_video(path) as video:
        assert (video.n_frames, video.frame_shape, video.dtype) == (23, (12, 17), np.dtype(dtype))
        assert video.fs == pytest.approx(20.0)
        assert video.recorded_at == START and video.recorded_at.utcoffset() == timedelta(hours=-7)
        assert list(video.invalid_frames) == []
        whole = video.read()
        chunks = list(video.iter_chunks(5))
        middle = video.read(7, 11)
    assert whole.dtype == np.float32
    np.testing.assert_array_equal(whole, frames.astype(dtype).astype(np.float32))
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
    np.testing.assert_array_equal(middle, whole[7:11])


@needs_isx
def test_a_movie_without_a_start_time_has_none(tmp_path):
    path = write_isxd(tmp_path / "nostart.isxd", _frames(n=4), period_ms=100, start=None)
    with open_video(path) as video:
        assert video.recorded_at is None and video.fs == pytest.approx(10.0)


@needs_isx
def test_dropped_frames_repeat_the_frame_before(tmp_path):
    frames = _frames(n=8)
    path = write_isxd(tmp_path / "dropped.isxd", frames, dropped=(0, 1, 4, 5, 7))
    with open_video(path) as video:
        assert video.n_frames == 8 and list(video.invalid_frames) == [0, 1, 4, 5, 7]
        got = video.read()
        tail = video.read(5, 8)  # a chunk that starts on a dropped frame
    expected = frames[[2, 2, 2, 3, 3, 3, 6, 6]].astype(np.float32)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(tail, expected[5:])
    nothing = write_isxd(tmp_path / "nothing.isxd", frames[:3], dropped=(0, 1, 2))
    with pytest.raises(VideoReadError, match=r"nothing\.isxd: all 3 frames are marked invalid"):
        open_video(nothing)


@needs_isx
@pytest.mark.parametrize("fraction", [0.3, 0.9, 0.999])
def test_a_truncated_file_is_one_clear_error(tmp_path, fraction):
    path = write_isxd(tmp_path / "cut.isxd", _frames())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(VideoReadError, match=r"cut\.isxd: .*truncated") as caught:
        with open_video(path) as video:
            video.read()
    assert "\n" not in str(caught.value)


@needs_isx
def test_a_file_missing_its_first_frames_is_refused(tmp_path):
    """The header, kept at the end, announces more pixels than the file still holds."""
    path = write_isxd(tmp_path / "headless.isxd", _frames(shape=(40, 50)))
    data = path.read_bytes()
    path.write_bytes(data[len(data) // 2 :])
    with pytest.raises(
        VideoReadError, match=r"headless\.isxd: the \.isxd header announces 23 stored frames.*truncated"
    ):
        open_video(path)


@needs_isx
def test_split_writes_tiff_pieces_of_an_isxd_movie(tmp_path):
    frames = _frames(n=10)
    pieces = split_video(write_isxd(tmp_path / "long.isxd", frames), tmp_path / "pieces", max_frames=4)
    assert [p.name for p in pieces] == ["long_b1.tif", "long_b2.tif", "long_b3.tif"]
    with open_video(pieces[1]) as video:
        np.testing.assert_array_equal(video.read(), frames[4:7].astype(np.float32))


def _cli(*args: str, prelude: str = "") -> subprocess.CompletedProcess:
    script = f"import sys; {prelude}from caliali.cli import main; sys.argv = ['caliali', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)


@needs_isx
def test_cli_reports_a_corrupt_isxd_in_one_line_and_nothing_else(tmp_path):
    path = tmp_path / "broken.isxd"
    path.write_bytes(b"not an inscopix movie" * 10)
    run = _cli("info", str(path))
    assert run.returncode == 2
    assert run.stdout == ""  # isx's C library prints its exceptions to stdout unless kept quiet
    [line] = run.stderr.strip().splitlines()
    assert "broken.isxd: not a readable .isxd movie" in line and "Traceback" not in line


def test_without_isx_the_error_names_the_install_command(tmp_path):
    path = tmp_path / "movie.isxd"
    path.write_bytes(b"\0" * 64)
    run = _cli("info", str(path), prelude="sys.modules['isx'] = None; ")  # as if isx were not installed
    assert run.returncode == 2
    [line] = run.stderr.strip().splitlines()
    assert "needs Inscopix's isx package" in line and "pip install 'caliali[isxd]'" in line


@needs_isx
def test_caliali_run_on_an_isxd_recording(tmp_path):
    from caliali.simulate import SimulationParams, simulate

    sim = tmp_path / "sim"
    simulate(sim, SimulationParams(sessions=1, frames=150, neurons=8, seed=5, height=64, width=80))
    [tif] = sorted(sim.glob("*.tif"))
    with open_video(tif) as video:
        frames = video.read()
    exp = tmp_path / "experiment"
    exp.mkdir()
    write_isxd(exp / "day1.isxd", frames, period_ms=100)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"gSig": 3, "min_corr": 0.2, "min_pnr": 4, "memory_budget": "256MB"}))
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "caliali", "run", "--input", str(exp), "--config", str(cfg), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["session_frames"] == [150] and summary["neurons"] >= 1
    assert summary["nwb"]["session_start_time_from"] == "recording"
    assert datetime.fromisoformat(summary["nwb"]["session_start_time"]) == START.astimezone(UTC)
