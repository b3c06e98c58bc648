"""The pieces that keep extraction's memory bounded: traces on disk, frames read without extra copies."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from caliali.extraction._source import open_source
from caliali.extraction._summary import highpass, highpass_kernel, noise_level
from caliali.extraction._traces import TraceFile


def test_a_trace_file_reads_and_writes_blocks_rows_and_selections():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((5, 1000)).astype(np.float32)
    traces = TraceFile((5, 1000))
    assert traces.shape == (5, 1000) and len(traces) == 5
    assert not traces[...].any()  # starts as zeros
    for start in range(0, 1000, 300):
        traces[:, start:start + 300] = values[:, start:start + 300]
    np.testing.assert_array_equal(traces.read(), values)
    np.testing.assert_array_equal(traces[3], values[3])
    np.testing.assert_array_equal(traces[[4, 1]], values[[4, 1]])
    np.testing.assert_array_equal(traces[:, 250:260], values[:, 250:260])
    block = traces[:, :10]
    block[:] = 0  # a copy: the file is unchanged
    np.testing.assert_array_equal(traces[:, :10], values[:, :10])
    traces[[0, 2], 5:8] = -1.0
    assert (traces[0, 5:8] == -1).all() and (traces[2, 5:8] == -1).all() and (traces[1, 5:8] != -1).all()
    traces.close()


def test_a_trace_file_copies_an_array_and_handles_empty_shapes():
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(TraceFile.from_array(values).read(), values)
    empty = TraceFile((0, 100))
    assert empty.read().shape == (0, 100) and empty[:, 10:20].shape == (0, 10)


def test_frames_read_from_an_in_memory_movie_are_copies():
    movie = np.arange(4 * 3 * 5, dtype=np.float32).reshape(4, 3, 5)
    source = open_source(movie)
    block = source.read(1, 3)
    block += 100
    assert movie[1, 0, 0] == 15  # the caller's movie is never modified
    ints = open_source(movie.astype(np.int16)).read(0, 2)
    assert ints.dtype == np.float32 and ints.flags.writeable


def test_frames_read_from_zarr_match_the_store(tmp_path):
    movie = np.random.default_rng(1).random((30, 6, 7)).astype(np.float32)
    stored = zarr.create_array(str(tmp_path / "m.zarr"), shape=movie.shape, chunks=(8, 6, 7), dtype="float32")
    stored[:] = movie
    source = open_source(stored)
    first = source.read(5, 20)
    np.testing.assert_array_equal(first, movie[5:20])
    first[:] = 0
    np.testing.assert_array_equal(source.read(5, 20), movie[5:20])


def test_in_place_high_pass_and_noise_level_match_their_copying_forms():
    rng = np.random.default_rng(2)
    frames = rng.random((6, 20, 24)).astype(np.float32)
    kernel = highpass_kernel(2.0)
    expected = highpass(frames, kernel)
    work = frames.copy()
    assert highpass(work, kernel, out=work) is work
    np.testing.assert_array_equal(work, expected)
    traces = rng.standard_normal((200, 3)).astype(np.float32)
    d = np.diff(traces, axis=0)
    reference = np.median(np.abs(d - np.median(d, axis=0)), axis=0) / (0.6745 * np.sqrt(2))
    np.testing.assert_allclose(noise_level(traces), reference, rtol=1e-6)


def test_extraction_keeps_its_traces_in_the_given_work_folder_or_says_what_is_wrong(tmp_path):
    from caliali.extraction import ExtractionError, extract

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:30, :30]
    footprint = np.exp(-((yy - 15) ** 2 + (xx - 14) ** 2) / (2 * 1.6 ** 2)).astype(np.float32)
    trace = np.convolve((rng.random(600) < 0.03).astype(np.float32), np.exp(-np.arange(30) / 5.0))[:600]
    movie = (1.0 + trace[:, None, None] * footprint[None] + 0.04 * rng.standard_normal((600, 30, 30))).astype(np.float32)
    result = extract(movie, session_bounds=[0, 300, 600], gSig=2.0, min_corr=0.3, min_pnr=5, batch_frames=100,
                     work_dir=tmp_path)
    assert result.n_neurons >= 1 and result.C.shape[1] == 600
    assert list(tmp_path.iterdir()) == []  # the trace files have no name and are gone
    with pytest.raises(ExtractionError, match="work_dir .* is not a folder"):
        extract(movie, gSig=2.0, work_dir=tmp_path / "missing")


def _open_files_under(folder) -> set[str]:
    """Paths of the files this process holds open inside ``folder`` (deleted ones included)."""
    import os
    from pathlib import Path

    root = str(Path(folder).resolve()) + os.sep
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(root):
            found.add(target)
    return found


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="needs Linux /proc to list open files")
def test_a_run_keeps_extractions_trace_files_in_its_work_folder(tmp_path):
    from caliali.pipeline import run
    from caliali.simulate import SimulationParams, simulate

    simulate(tmp_path / "sim", SimulationParams(sessions=1, frames=300, neurons=6, seed=4, height=48, width=48))
    work = tmp_path / "work"
    seen: set[str] = set()

    def progress(fraction: float, message: str) -> None:
        if message.startswith("extraction"):
            seen.update(_open_files_under(work))

    config = {"gSig": 3, "min_corr": 0.2, "min_pnr": 4, "memory_budget": "64MB", "batch_frames": 100,
              "nwb": False, "qc": False, "keep_intermediates": True}
    result = run(tmp_path / "sim" / "manifest.yaml", tmp_path / "out", config=config, work=work, progress=progress)
    assert result.n_neurons >= 1
    # unnamed trace files: "(deleted)" entries (O_TMPFILE or unlinked) in the work folder, open during extraction
    traces = {p for p in seen if p.endswith("(deleted)") and ".zarr" not in p}
    assert traces, f"no temporary trace file was opened in {work}; open files seen there: {sorted(seen)}"
