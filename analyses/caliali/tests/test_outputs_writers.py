"""Writers of extraction results: arrays read back by the scorer, NWB reopened with pynwb, QC PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse

from caliali.exceptions import InputError
from caliali.extraction import Extraction
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
    return Extraction(A=a, C_raw=c + 0.1, C=c, S=(c > 1).astype(np.float32), cn=rng.random(dims).astype(np.float32),
                      pnr=rng.random(dims).astype(np.float32) * 10, session_bounds=np.array(bounds), dims=dims,
                      snr=np.array([9.0, 5.0, 2.0][:k]), noise=np.ones((k, len(bounds) - 1)),
                      centers=np.array([[5 + 4 * i, 6 + 8 * i] for i in range(k)], float),
                      seeds=np.zeros((k, 2), int), history=[{"iteration": 1, "neurons": k}], params={"gSig": 3.0})


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


def test_qc_figures_are_png(tmp_path):
    paths = write_outputs(_extraction(), tmp_path, nwb=False)
    for kind in ("contours", "traces"):
        assert paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert paths[kind].stat().st_size > 5000


def test_wrong_number_of_session_ids_is_named(tmp_path):
    with pytest.raises(InputError, match="3 session ids given for 2 sessions"):
        write_outputs(_extraction(), tmp_path, session_ids=["a", "b", "c"])
