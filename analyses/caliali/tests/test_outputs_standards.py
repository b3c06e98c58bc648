"""Outputs other tools read: NWB that nwbinspector passes at DANDI's level, CaImAn's HDF5 layout, ΔF/F.

The extraction is a real one (`caliali.extraction.extract`) of a small simulated movie with known
neurons, background and events (test_extraction_cnmfe's), so ΔF/F has a known answer.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from caliali.config import ConfigError, load_config
from caliali.extraction import extract
from caliali.outputs import write_outputs

DANDI = {
    "session_description": "simulated one-photon recording of two sessions",
    "experimenter": ["Doe, Jane"],
    "institution": "Simulated Institute",
    "lab": "Imaging",
    "keywords": ["calcium imaging", "simulation"],
    "subject_id": "sim01",
    "species": "Mus musculus",
    "subject_sex": "F",
    "subject_age": "P90D",
    "experiment_description": "a test of the NWB writer",
    "indicator": "GCaMP6f",
    "imaging_location": "CA1",
    "excitation_lambda": 470.0,
    "emission_lambda": 520.0,
    "session_start_time": "2024-05-01T09:30:00+02:00",
}
CENTRES = [(12, 14), (28, 34)]


def _movie():
    spec = importlib.util.spec_from_file_location("cnmfe", Path(__file__).with_name("test_extraction_cnmfe.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._movie(CENTRES, seed=5, dims=(40, 48))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The movie, its truth, the extraction and the folder write_outputs filled (DANDI metadata)."""
    y, a, c, bounds = _movie()
    result = extract(y, session_bounds=bounds, gSig=2.0, min_corr=0.3, min_pnr=5, batch_frames=400)
    config = load_config(DANDI)
    out = tmp_path_factory.mktemp("standards")
    write_outputs(
        result,
        out,
        fs=10.0,
        session_ids=["d1", "d2"],
        qc=False,
        session_start_time=config.start_time,
        identifier="caliali-standards",
        config=config,
    )
    return y, a, c, bounds, result, out


def _match(result, a) -> list[int]:
    images = result.footprint_images().reshape(result.n_neurons, -1)
    truth = a.reshape(len(a), -1)
    cos = (truth @ images.T) / np.outer(np.linalg.norm(truth, axis=1), np.linalg.norm(images, axis=1))
    return [int(np.argmax(row)) for row in cos]


def test_nwb_passes_nwbinspector_at_dandis_level(written):
    from nwbinspector import Importance, inspect_nwbfile, load_config

    out = written[-1]
    messages = list(inspect_nwbfile(nwbfile_path=str(out / "neurons.nwb"), config=load_config("dandi")))
    bad = [
        f"{m.importance.name} {m.check_function_name}: {m.message}"
        for m in messages
        if m.importance.value >= Importance.BEST_PRACTICE_VIOLATION.value  # also errors and invalid NWB
    ]
    assert bad == []


def test_nwb_without_subject_id_and_age_is_what_nwbinspector_reports(tmp_path, written):
    """The defaults leave out what only the scientist knows, and DANDI's check names exactly that."""
    from nwbinspector import Importance, inspect_nwbfile, load_config

    result = written[4]
    path = write_outputs(result, tmp_path, fs=10.0, qc=False, caiman=False)["nwb"]
    messages = list(inspect_nwbfile(nwbfile_path=str(path), config=load_config("dandi")))
    found = {m.importance: set() for m in messages}
    for m in messages:
        found[m.importance].add(m.check_function_name)
    assert found[Importance.CRITICAL] == {"check_subject_id_exists", "check_subject_age"}
    assert found[Importance.BEST_PRACTICE_VIOLATION] == {"check_imaging_plane_location_allen_ccf"}  # 'unknown'
    assert not {Importance.ERROR, Importance.PYNWB_VALIDATION} & set(found)


def test_nwb_carries_the_configured_metadata(written):
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(written[-1] / "neurons.nwb"), mode="r") as io:
        nwb = io.read()
        assert nwb.session_description == DANDI["session_description"]
        assert list(nwb.experimenter) == DANDI["experimenter"] and nwb.institution == DANDI["institution"]
        assert list(nwb.keywords[:]) == DANDI["keywords"]
        subject = nwb.subject
        assert (subject.subject_id, subject.species, subject.sex, subject.age) == ("sim01", "Mus musculus", "F", "P90D")
        plane = nwb.imaging_planes["ImagingPlane"]
        assert (plane.indicator, plane.location, plane.excitation_lambda) == ("GCaMP6f", "CA1", 470.0)
        assert nwb.session_start_time.isoformat() == "2024-05-01T09:30:00+02:00"


def test_masks_of_a_downsampled_extraction_land_on_the_recordings_pixels(tmp_path, written):
    """spatial_ds=2: each extraction pixel becomes the 2x2 block of recording pixels it averaged."""
    from pynwb import NWBHDF5IO

    result = written[4]
    path = write_outputs(result, tmp_path, fs=10.0, spatial_ds=2, qc=False, caiman=False)["nwb"]
    h, w = result.dims
    with NWBHDF5IO(str(path), mode="r") as io:
        planes = io.read().processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        for k in range(result.n_neurons):
            full = np.zeros((2 * h, 2 * w), np.float32)
            for x, y, v in planes["pixel_mask"][k]:
                full[y, x] = v
            small = result.A[:, [k]].toarray().reshape(h, w)
            np.testing.assert_array_equal(full, np.kron(small, np.ones((2, 2), np.float32)))
    meta = json.loads((tmp_path / "arrays" / "meta.json").read_text())
    assert meta["spatial_ds"] == 2 and meta["pixel_order"].startswith("C (row-major)")


def test_caiman_file_holds_fortran_ordered_footprints_and_the_traces(written):
    import h5py

    _, _, _, bounds, result, out = written
    h, w = result.dims
    with h5py.File(out / "caiman.hdf5", "r") as file:
        est = file["estimates"]
        group = est["A"]
        a = scipy.sparse.csc_matrix(
            (group["data"][()], group["indices"][()], group["indptr"][()]), shape=tuple(group["shape"][()])
        )
        assert tuple(est["dims"][()]) == (h, w) and a.shape == (h * w, result.n_neurons)
        images = result.footprint_images()
        for k in range(result.n_neurons):
            np.testing.assert_array_equal(a[:, [k]].toarray().reshape((h, w), order="F"), images[k])
        np.testing.assert_array_equal(est["C"][()], result.C)
        np.testing.assert_array_equal(est["S"][()], result.S)
        np.testing.assert_allclose(est["C"][()] + est["YrA"][()], result.C_raw, atol=1e-6)
        np.testing.assert_array_equal(est["F_dff"][()], np.load(out / "arrays" / "dff.npy"))
        b, f = est["b"][()], est["f"][()]
        assert b.shape == (h * w, 2) and f.shape == (2, int(bounds[-1]))
        np.testing.assert_array_equal(b[:, 1].reshape((h, w), order="F"), result.b0[1])
        assert f[0, : bounds[1]].min() == 1 and f[0, bounds[1] :].max() == 0
        assert file["params/data/fr"][()] == 10.0


def test_dff_peaks_at_the_events_with_the_true_amplitude(written):
    """ΔF/F of each neuron is about its true ΔF/F (0.5 c over the background under it) where it fires."""
    y, a, c, bounds, result, out = written
    dff = np.load(out / "arrays" / "dff.npy")
    assert dff.shape == result.C.shape and np.isfinite(dff).all()
    meta = json.loads((out / "arrays" / "meta.json").read_text())
    assert meta["dff_undefined"] == [] and meta["dff_window_s"] == 30.0
    background = y.mean(axis=0) - np.tensordot(c.mean(axis=1), a, axes=(0, 0)) * 0.5  # the movie's resting level
    for k, j in enumerate(_match(result, a)):
        resting = float((background * a[k]).sum() / (a[k] ** 2).sum())
        truth = 0.5 * c[k] / resting
        assert np.corrcoef(dff[j], truth)[0, 1] > 0.98
        events = truth > 0.5 * truth.max()
        assert events.any()
        ratio = np.median(dff[j][events]) / np.median(truth[events])
        assert 0.9 < ratio < 1.12, ratio  # measured 1.06 and 1.03
        assert abs(float(np.median(dff[j][~events]))) < 0.05 * truth.max()  # silent frames sit at 0


def test_the_baseline_of_a_neuron_active_in_most_frames_stays_near_its_resting_level():
    """Calcium above half a noise std in 57% of frames: a running median sits on the events (1.1 noise
    std above rest, measured), the running percentile at the trace's mode stays within 0.6."""
    from caliali.outputs._dff import dff_row, mode_percentile

    rng = np.random.default_rng(4)
    t, noise, f0 = 3000, 2.0, 100.0
    spikes = (rng.random(t) < 0.02).astype(float)
    calcium = np.convolve(spikes, np.exp(-np.arange(60) / 12.0))[:t] * 8.0
    assert 0.5 < np.mean(calcium > 0.5) < 0.65
    trace = (calcium + rng.standard_normal(t)).astype(np.float32)  # noise units, resting level 0
    assert mode_percentile(trace) < 40
    dff = dff_row(trace, np.array([noise]), np.array([f0]), np.array([0, t]), window=600)
    assert np.isfinite(dff).all()
    f = noise * trace.astype(np.float64)
    baseline = (f - dff * f0) / (1 + dff)  # dff = (F - F_b) / (f0 + F_b), solved for F_b
    assert abs(np.median(baseline) / noise) < 0.6
    peaks = calcium > 0.5 * calcium.max()
    np.testing.assert_allclose(np.median(dff[peaks] / (noise * calcium[peaks] / f0)), 1.0, atol=0.1)


def test_no_dff_where_the_resting_level_is_not_positive():
    from caliali.outputs._dff import dff_row

    trace = np.random.default_rng(0).standard_normal(200).astype(np.float32)
    dff = dff_row(trace, np.array([1.0, 1.0]), np.array([50.0, -3.0]), np.array([0, 100, 200]), window=50)
    assert np.isfinite(dff[:100]).all() and np.isnan(dff[100:]).all()


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("experimenter", ["Jane Doe"], r"experimenter\.0: 'Jane Doe' is not of the form asked: .*'Last, First'"),
        ("subject_age", "90 days", r"subject_age: '90 days' is not of the form asked: .*ISO 8601 duration"),
        ("subject_age", "PT", r"'PT' is not an ISO 8601 duration; write e\.g\. P90D"),
        ("species", "mouse", r"species: 'mouse' is not of the form asked: .*Latin binomial"),
        ("subject_sex", "female", r"subject_sex: Input should be 'M', 'F', 'U' or 'O'"),
    ],
)
def test_wrong_metadata_is_refused_saying_what_is_asked(field, value, says):
    with pytest.raises(ConfigError, match=says):
        load_config({field: value})


def test_a_camera_offset_given_as_dark_level_leaves_dff_as_without_it(tmp_path, written):
    """The same movie plus 1000 on every pixel (a black level) and dark_level 1000: the same ΔF/F."""
    y, _, _, bounds, result, out = written
    offset = extract(y + 1000.0, session_bounds=bounds, gSig=2.0, min_corr=0.3, min_pnr=5, batch_frames=400)
    assert offset.n_neurons == result.n_neurons
    plain = np.load(out / "arrays" / "dff.npy")
    for dark, close in ((0.0, False), (1000.0, True)):
        config = load_config({"dark_level": dark})
        folder = write_outputs(offset, tmp_path / str(dark), fs=10.0, qc=False, nwb=False, caiman=False, config=config)
        dff = np.load(folder["arrays"] / "dff.npy")
        peaks = plain.max(axis=1)
        if close:
            np.testing.assert_allclose(dff.max(axis=1), peaks, rtol=0.02)
            np.testing.assert_allclose(dff, plain, atol=0.02 * peaks.max())
        else:
            assert np.all(dff.max(axis=1) < 0.01 * peaks)  # the offset swamps the resting level
