"""Inter-session alignment on the ground-truth simulator (caliali.simulate):
4 sessions, deformation 5 px + translation 5 px, ideal / remap / sparse.

Error = distance between estimated and true backward fields after removing,
per pixel, the mean over sessions from both (alignment is defined up to a
common deformation), inside the valid mask. Projections per file with
``caliali.projections.session_projections``: the blood-vessel image and
Cn * PNR as the neuron image."""

from __future__ import annotations

import numpy as np
import pytest

from caliali.experiment import load_experiment
from caliali.io import open_video
from caliali.projections.session import session_projections
from caliali.registration import align_sessions, apply_alignment, save_alignment

SIM = {
    "sessions": 4,
    "frames": 100,
    "neurons": None,
    "height": 128,
    "width": 176,
    "deform_px": 5.0,
    "translation_px": 5.0,
}


def _projections(sim):
    """(bv, Cn * PNR, mean, session id) of every file of the experiment, in order."""
    exp = load_experiment(sim.out)
    bv, neuron, mean, ids = [], [], [], []
    for session in exp.sessions:
        for path in session.files:
            with open_video(path) as video:
                p = session_projections(video.read(0, video.n_frames), gSig=3.0, fs=10.0)
            bv.append(p.bv)
            neuron.append(p.cn * p.pnr)
            mean.append(p.mean)
            ids.append(session.id)
    return bv, neuron, mean, ids


def _error(est, true, mask):
    e = est - est.mean(axis=0)
    t = true - true.mean(axis=0)
    d = np.sqrt(((e - t) ** 2).sum(axis=1))[:, mask]
    return float(np.median(d)), float(np.percentile(d, 95))


@pytest.mark.parametrize("variant", ["ideal", "remap", "sparse"])
def test_alignment_error_on_simulated_sessions(simulation, variant):
    sim = simulation(variant=variant, **SIM)
    bv, neuron, _, ids = _projections(sim)
    al = align_sessions(bv, neuron_images=neuron, session_ids=ids, gSig=3.0)
    true = np.load(sim.ground_truth / "fields.npy")
    med, p95 = _error(al.total_fields, true, al.valid_mask)
    assert med <= 0.5 and p95 <= 1.5, (variant, med, p95)
    assert al.valid_mask.mean() > 0.8  # a mask, not a largest-rectangle crop
    assert al.source == "bv" and al.reliability > 2.7
    assert max(al.qc["displacement_p95_px"]) > 1.0


def test_split_sessions_get_one_transform_and_stream_into_one_video(simulation, tmp_path):
    sim = simulation(variant="ideal", max_frames_per_file=60, **SIM)
    bv, neuron, mean, ids = _projections(sim)
    assert len(bv) == 8 and ids[0] == ids[1]  # every session in two files
    al = align_sessions(bv, neuron_images=neuron, session_ids=ids, gSig=3.0)
    assert len(al.sessions) == 4
    for i in range(0, 8, 2):
        np.testing.assert_array_equal(al.input_field(i), al.input_field(i + 1))
    true = np.load(sim.ground_truth / "fields.npy")
    med, p95 = _error(al.total_fields, true, al.valid_mask)
    assert med <= 0.5 and p95 <= 1.5, (med, p95)

    save_alignment(al, tmp_path / "out", figures=False)
    lines = []
    video = apply_alignment(
        al, sim.out, tmp_path / "aligned.zarr", batch_frames=32, progress=lambda f, m: lines.append(m)
    )
    assert video.n_frames == 400 and video.session_bounds.tolist() == [0, 100, 200, 300, 400]
    assert any("applying alignment" in m for m in lines)
    # Aligned session means agree with each other far better than the raw ones.
    mask = al.valid_mask
    raw = [np.mean([mean[i], mean[i + 1]], axis=0) for i in range(0, 8, 2)]
    bounds = video.session_bounds
    aligned = [video.store.read(a, b).mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def spread(images):
        stack = np.stack([im[mask] for im in images])
        return float(np.abs(stack - stack.mean(axis=0)).mean())

    assert spread(aligned) < 0.5 * spread(raw)
