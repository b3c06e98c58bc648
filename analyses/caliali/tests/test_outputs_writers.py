"""Writers of extraction results: arrays read back by the scorer, NWB reopened with pynwb, QC PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse

from caliali.exceptions import InputError
from caliali.extraction import Extraction
from caliali.extraction._convergence import convergence_record
from caliali.outputs import write_outputs
from caliali.score import load_result, score_neurons


def _extraction(k: int = 3, dims=(20, 30), bounds=(0, 50, 120)) -> Extraction:
    rng = np.random.default_rng(1)
    h, w = dims
    images = np.zeros((k, h, w), np.float32)
    for i in range(k):
        cy, cx = 5 + 4 * i, 6 + 8 * i
        yy, xx = np.mgrid[:h, :w]
        images[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4.0)
        images[i][images[i] < 0.05] = 0
    a = scipy.sparse.csc_array(images.reshape(k, -1).T)
    t = bounds[-1]
    c = np.maximum(rng.normal(size=(k, t)), 0).astype(np.float32)
    return Extraction(
        A=a,
        C_raw=c + 0.1,
        C=c,
        S=(c > 1).astype(np.float32),
        cn=rng.random(dims).astype(np.float32),
        pnr=rng.random(dims).astype(np.float32) * 10,
        session_bounds=np.array(bounds),
        dims=dims,
        snr=np.array([9.0, 5.0, 2.0][:k]),
        noise=np.ones((k, len(bounds) - 1)),
        centers=np.array([[5 + 4 * i, 6 + 8 * i] for i in range(k)], float),
        seeds=np.zeros((k, 2), int),
        history=[
            {"iteration": 1, "neurons": k + 1, "change": 0.4, "removed": 1, "merged": 0},
            {"iteration": 2, "neurons": k, "change": 0.03, "removed": 0, "merged": 0, "stop": "tol"},
        ],
        convergence=convergence_record([{"change": 0.03, "stop": "tol"}] * 2, tol=0.05, max_iter=10),
        params={"gSig": 3.0},
        f0=np.full((k, len(bounds) - 1), 20.0, np.float32),
        b0=np.full((len(bounds) - 1, *dims), 20.0, np.float32),
    )


def test_arrays_round_trip_through_the_scorer(tmp_path):
    ex = _extraction()
    paths = write_outputs(ex, tmp_path, fs=10.0, session_ids=["day1", "day2"], nwb=False, qc=False)
    folder = paths["arrays"]
    for name in ("A.npz", "C_raw.npy", "C.npy", "S.npy", "Cn.npy", "PNR.npy", "session_bounds.npy", "meta.json"):
        assert (folder / name).exists(), name
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["dims"] == [20, 30] and meta["session_ids"] == ["day1", "day2"]
    assert np.array_equal(np.load(folder / "session_bounds.npy"), [0, 50, 120])
    a = scipy.sparse.load_npz(folder / "A.npz")
    assert a.shape == (600, 3)
    np.testing.assert_allclose(a.toarray(), ex.A.toarray())
    loaded = load_result(tmp_path)
    s = score_neurons(loaded["A"], loaded["C"], ex.A.toarray(), ex.C)
    assert s.f1 == pytest.approx(1.0)


def test_nwb_reopens_with_footprints_traces_and_sessions(tmp_path):
    from pynwb import NWBHDF5IO

    ex = _extraction()
    path = write_outputs(ex, tmp_path, fs=20.0, session_ids=["a", "b"], qc=False)["nwb"]
    with NWBHDF5IO(str(path), mode="r") as io:
        nwb = io.read()
        ophys = nwb.processing["ophys"]
        planes = ophys["ImageSegmentation"]["PlaneSegmentation"]
        assert len(planes) == 3
        mask = planes["pixel_mask"][1]
        dense = np.zeros(ex.dims, np.float32)
        for x, y, v in mask:
            dense[y, x] = v
        np.testing.assert_allclose(dense.ravel(), ex.A.toarray()[:, 1], rtol=1e-6)
        series = ophys["Fluorescence"]
        for name, ref in (("C", ex.C), ("S", ex.S), ("C_raw", ex.C_raw)):
            np.testing.assert_allclose(series[name].data[:].T, ref)
            assert series[name].rate == 20.0
        epochs = nwb.epochs.to_dataframe()
        assert list(epochs["start_time"]) == [0.0, 2.5] and list(epochs["stop_time"]) == [2.5, 6.0]
        assert [list(t) for t in epochs["tags"]] == [["a"], ["b"]]
        assert ophys.description == (
            "caliali CNMF-E across sessions; converged: footprint change 0.03 < tol 0.05 after 2 rounds"
        )


def test_qc_figures_are_png(tmp_path):
    paths = write_outputs(_extraction(), tmp_path, nwb=False)
    for kind in ("contours", "traces", "convergence"):
        assert paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert paths[kind].stat().st_size > 5000


def test_a_long_trace_is_drawn_as_its_per_column_envelope():
    """Every pixel column shows the same stroke (minimum to maximum of its frames) with 2 points."""
    from caliali.outputs._qc import envelope

    y = np.random.default_rng(0).standard_normal(100_003).astype(np.float32)
    y[50_000] = 40.0  # a one-frame spike must survive
    frames, values = envelope(y, columns=1000)
    assert len(frames) == len(values) == 2000 and np.all(np.diff(frames) >= 0)
    starts = frames[0::2]
    bins = np.split(y, starts[1:])
    assert np.array_equal(values[0::2], [b.min() for b in bins])
    assert np.array_equal(values[1::2], [b.max() for b in bins])
    assert values.max() == 40.0
    short = np.arange(50, dtype=np.float32)
    frames, values = envelope(short, columns=1000)
    assert np.array_equal(frames, np.arange(50)) and np.array_equal(values, short)


def test_wrong_number_of_session_ids_is_named(tmp_path):
    with pytest.raises(InputError, match="3 session ids given for 2 sessions"):
        write_outputs(_extraction(), tmp_path, session_ids=["a", "b", "c"])


def test_trace_npy_files_written_a_block_of_rows_at_a_time_equal_numpys(tmp_path):
    from caliali.outputs._arrays import save_rows

    rng = np.random.default_rng(2)
    values = rng.standard_normal((7, 1001)).astype(np.float32)
    np.save(tmp_path / "values.npy", values)
    mapped = np.load(tmp_path / "values.npy", mmap_mode="r")
    cases = {
        "map": mapped,
        "memory": values,
        "float64": values.astype(np.float64),
        "fortran": np.asfortranarray(values),
        "strided": values[::2, ::3],
        "empty": values[:0],
    }
    for name, traces in cases.items():
        np.save(tmp_path / f"{name}.expected.npy", np.asarray(traces, np.float32))
        expected_bytes = (tmp_path / f"{name}.expected.npy").read_bytes()
        if name == "fortran":  # numpy keeps a Fortran-ordered array's order; same values, C-ordered here
            expected_bytes = None
        for block_bytes in (1000, 3 * 4 * 1001, 2**20):  # one row per block, 3 rows (and a remainder), all rows
            path = save_rows(tmp_path / f"{name}.npy", traces, block_bytes=block_bytes)
            if expected_bytes is not None:
                assert path.read_bytes() == expected_bytes, (name, block_bytes)
            np.testing.assert_array_equal(np.load(path), np.asarray(traces, np.float32))
    np.testing.assert_array_equal(mapped, values)  # the map reads the same after its pages were released


def test_releasing_a_maps_pages_keeps_its_values_and_leaves_copy_on_write_changes(tmp_path):
    from caliali.outputs._blocks import frame_block, release

    values = np.arange(6 * 5000, dtype=np.float32).reshape(6, 5000)
    np.save(tmp_path / "v.npy", values)
    shared = np.load(tmp_path / "v.npy", mmap_mode="r")
    np.testing.assert_array_equal(frame_block(shared, slice(10, 4000), slice(1, 5)), values[1:5, 10:4000].T)
    release(shared[2])
    np.testing.assert_array_equal(shared, values)
    private = np.load(tmp_path / "v.npy", mmap_mode="c")
    private[3, 7] = -1.0  # exists only in this map's pages
    release(private)
    np.testing.assert_array_equal(frame_block(private, slice(0, 10))[7], [*values[:3, 7], -1.0, *values[4:, 7]])
    assert private[3, 7] == -1.0 and np.load(tmp_path / "v.npy")[3, 7] == values[3, 7]


_WRITE_MAPPED_TRACES = """
import json, sys
import numpy as np, scipy.sparse
from caliali.extraction import Extraction
from caliali.extraction._convergence import convergence_record
from caliali.extraction._traces import TraceFile
from caliali.outputs import write_outputs
import pynwb  # imported before the baseline: the measure is the writer's memory, not its imports

k, t, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
traces = []
for kind in range(3):
    f = TraceFile((k, t), directory=folder)
    for row in range(k):
        f[row] = np.random.default_rng([kind, row]).standard_normal(t, dtype=np.float32)
    traces.append(f)
a = scipy.sparse.csc_array(np.eye(20 * 30, k, dtype=np.float32))
ex = Extraction(A=a, C_raw=traces[0].view(), C=traces[1].view(), S=traces[2].view(),
                cn=np.ones((20, 30), np.float32), pnr=np.ones((20, 30), np.float32),
                session_bounds=np.array([0, t // 3, t]), dims=(20, 30), snr=np.linspace(9, 1, k),
                noise=np.ones((k, 2)), centers=np.zeros((k, 2)), seeds=np.zeros((k, 2), int),
                f0=np.full((k, 2), 100.0, np.float32))

def kib(key):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key + ":"))

with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # peak RSS (VmHWM) := current RSS
before = kib("VmRSS")
write_outputs(ex, folder + "/out", fs=20.0, qc=False)
print(json.dumps({"extra_peak_bytes": (kib("VmHWM") - before) * 1024}))
"""


def _peak_can_be_reset() -> bool:
    import os

    return os.path.exists("/proc/self/status") and os.access("/proc/self/clear_refs", os.W_OK)


@pytest.mark.skipif(not _peak_can_be_reset(), reason="needs Linux /proc (VmHWM, clear_refs) to measure peak memory")
def test_writing_memory_mapped_traces_takes_far_less_memory_than_one_copy_and_reads_back_equal(tmp_path):
    """80 neurons x 200,000 frames (61 MiB per trace array): arrays, ΔF/F, NWB and CaImAn's file written a
    block at a time."""
    import subprocess
    import sys

    import h5py

    k, t = 80, 200_000
    out = subprocess.run(
        [sys.executable, "-c", _WRITE_MAPPED_TRACES, str(k), str(t), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    extra = json.loads(out.stdout.strip().splitlines()[-1])["extra_peak_bytes"]
    copy_bytes = k * t * 4
    # reading the maps whole raised the peak by 6 copies (368 MiB); block by block about 12 MiB
    assert extra < copy_bytes / 2, (
        f"writing raised peak RSS by {extra / 2**20:.0f} MiB; one copy: {copy_bytes / 2**20:.0f} MiB"
    )
    with h5py.File(tmp_path / "out" / "neurons.nwb", "r") as nwb:
        for kind, name in enumerate(("C_raw", "C", "S")):
            expected = np.stack(
                [np.random.default_rng([kind, row]).standard_normal(t, dtype=np.float32) for row in range(k)]
            )
            np.testing.assert_array_equal(np.load(tmp_path / "out" / "arrays" / f"{name}.npy"), expected)
            data = nwb[f"processing/ophys/Fluorescence/{name}/data"]
            assert data.dtype == np.float32 and data.shape == (t, k)
            np.testing.assert_array_equal(data[()], expected.T)


def test_the_nwb_identity_comes_from_its_content_and_its_start_from_the_recording(tmp_path):
    """Two writes of one result carry the same identifier and start time (never a random id or the
    run's clock); another result gets another identifier; a given start time is kept."""
    import datetime

    from pynwb import NWBHDF5IO

    def identity(ex, folder, **options):
        path = write_outputs(ex, tmp_path / folder, fs=20.0, session_ids=["a", "b"], qc=False, **options)["nwb"]
        with NWBHDF5IO(str(path), mode="r") as io:
            nwb = io.read()
            return nwb.identifier, nwb.session_start_time

    first, again = identity(_extraction(), "one"), identity(_extraction(), "two")
    assert first == again
    assert first[0].startswith("caliali-") and first[1] == datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    assert identity(_extraction(k=2), "other")[0] != first[0]
    recorded = datetime.datetime(2024, 5, 1, 9, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    assert identity(_extraction(), "dated", session_start_time=recorded)[1] == recorded
