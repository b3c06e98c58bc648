"""The pieces that keep extraction's memory bounded: traces on disk, frames read without extra copies."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from caliali.extraction._source import open_source
from caliali.extraction._summary import highpass, highpass_kernel
from caliali.extraction._traces import TraceFile


def test_a_trace_file_reads_and_writes_blocks_rows_and_selections():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((5, 1000)).astype(np.float32)
    traces = TraceFile((5, 1000))
    assert traces.shape == (5, 1000) and len(traces) == 5
    assert not traces[...].any()  # starts as zeros
    for start in range(0, 1000, 300):
        traces[:, start : start + 300] = values[:, start : start + 300]
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


def test_in_place_high_pass_matches_its_copying_form():
    rng = np.random.default_rng(2)
    frames = rng.random((6, 20, 24)).astype(np.float32)
    kernel = highpass_kernel(2.0)
    expected = highpass(frames, kernel)
    work = frames.copy()
    assert highpass(work, kernel, out=work) is work
    np.testing.assert_array_equal(work, expected)


def test_extraction_keeps_its_traces_in_the_given_work_folder_or_says_what_is_wrong(tmp_path):
    from caliali.extraction import ExtractionError, extract

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:30, :30]
    footprint = np.exp(-((yy - 15) ** 2 + (xx - 14) ** 2) / (2 * 1.6**2)).astype(np.float32)
    trace = np.convolve((rng.random(600) < 0.03).astype(np.float32), np.exp(-np.arange(30) / 5.0))[:600]
    movie = (1.0 + trace[:, None, None] * footprint[None] + 0.04 * rng.standard_normal((600, 30, 30))).astype(
        np.float32
    )
    result = extract(
        movie, session_bounds=[0, 300, 600], gSig=2.0, min_corr=0.3, min_pnr=5, batch_frames=100, work_dir=tmp_path
    )
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

    config = {
        "gSig": 3,
        "min_corr": 0.2,
        "min_pnr": 4,
        "memory_budget": "64MB",
        "batch_frames": 100,
        "nwb": False,
        "qc": False,
        "keep_intermediates": True,
    }
    result = run(tmp_path / "sim" / "manifest.yaml", tmp_path / "out", config=config, work=work, progress=progress)
    assert result.n_neurons >= 1
    # unnamed trace files: "(deleted)" entries (O_TMPFILE or unlinked) in the work folder, open during extraction
    traces = {p for p in seen if p.endswith("(deleted)") and ".zarr" not in p}
    assert traces, f"no temporary trace file was opened in {work}; open files seen there: {sorted(seen)}"


def test_correlations_accumulated_a_block_of_frames_at_a_time_match_numpys():
    from caliali.extraction._merge import pair_correlation

    rng = np.random.default_rng(5)
    values = rng.standard_normal((6, 1003)).astype(np.float32) + 50  # a large mean: centred sums, not raw ones
    values[2] = 0.8 * values[0] + 0.2 * values[2]
    values[5] = 3.0  # a constant trace correlates 0 with everything
    first, second = np.array([0, 0, 1, 3, 5]), np.array([2, 4, 3, 4, 0])
    got = pair_correlation(TraceFile.from_array(values), first, second, batch_frames=100)
    expected = [np.corrcoef(values[i], values[j])[0, 1] if j != 5 and i != 5 else 0.0 for i, j in zip(first, second)]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_false_positive_removal_and_merging_hold_a_few_traces_in_memory_not_all_of_them():
    """On trace files, they allocate far less than one K x T copy (OASIS and post-processing go one trace at a time)."""
    import tracemalloc

    from caliali.extraction._footprints import Footprints
    from caliali.extraction._merge import merge_components
    from caliali.extraction.cnmfe import _deconvolve_all, _remove_false_positives

    rng = np.random.default_rng(6)
    k, bounds = 80, np.array([0, 10_000, 20_000])
    yy, xx = np.mgrid[:9, :9]
    image = np.exp(-((yy - 4) ** 2 + (xx - 4) ** 2) / 4.5).astype(np.float32)
    image /= np.sqrt((image**2).sum())
    # 40 pairs of touching duplicates (same activity) on a grid
    boxes = [
        (12 * (p // 8), 12 * (p // 8) + 9, 12 * (p % 8) + 2 * j, 12 * (p % 8) + 2 * j + 9)
        for p in range(k // 2)
        for j in range(2)
    ]
    footprints = Footprints((60, 100), boxes, [image] * k)
    spikes = (rng.random((k // 2, bounds[-1])) < 0.01) * rng.uniform(1, 3, (k // 2, bounds[-1]))
    calcium = np.array([np.convolve(s, 0.85 ** np.arange(40))[: bounds[-1]] for s in spikes])
    values = (np.repeat(calcium, 2, axis=0) + 0.2 * rng.standard_normal((k, bounds[-1]))).astype(np.float32)
    raw = TraceFile.from_array(values)
    copy_bytes = values.nbytes
    del values, calcium, spikes
    c = _deconvolve_all(raw, bounds, scale=np.ones(k, np.float32))
    tracemalloc.start()
    try:
        keep, _ = _remove_false_positives(footprints, c, raw, min_pixels=3, min_snr=3.0, bounds=bounds)
        merged, c, raw, merges = merge_components(
            footprints.subset(keep), c.take(keep), raw.take(keep), batch_frames=500
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(keep) == k and merges == k // 2 and len(merged) == k // 2 and c.shape == raw.shape == (k // 2, 20_000)
    assert peak < copy_bytes / 2, f"{peak / 1e6:.1f} MB allocated at the peak; one K x T copy: {copy_bytes / 1e6:.1f}"


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs Linux /proc for VmHWM")
def test_a_runs_peak_memory_is_its_own_not_that_of_the_process_that_started_it():
    import subprocess
    import sys

    big = np.ones(320 * 2**20 // 8)  # this process's peak RSS passes 320 MiB before the run is spawned
    del big
    code = "from caliali.pipeline import _peak_rss_mb; print(_peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 250, out.stdout  # numpy, pydantic and caliali imported: well under 250 MiB
