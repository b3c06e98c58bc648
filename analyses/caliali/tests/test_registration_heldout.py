"""The non-rigid field is judged on structure it was not fitted to, per session.

Simulated sessions (caliali.simulate) with a real deformation keep their fields
and score higher with them on the held-out blocks; sessions that differ by a
pure translation keep translation only, and the record says why. Blur from
resampling alone does not win the comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from caliali.experiment import load_experiment
from caliali.io import open_video
from caliali.projections.session import session_projections
from caliali.registration import align_sessions, load_alignment, save_alignment
from caliali.registration._heldout import judge, split

# The sessions of test_registration_simulated.py (one simulation per test run serves both).
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
    bv, neuron = [], []
    for session in load_experiment(sim.out).sessions:
        with open_video(session.files[0]) as video:
            p = session_projections(video.read(0, video.n_frames), gSig=3.0, fs=10.0)
        bv.append(p.bv)
        neuron.append(p.cn * p.pnr)
    return bv, neuron


def _median_error(total, true, mask):
    e = total - total.mean(axis=0)
    t = true - true.mean(axis=0)
    return float(np.median(np.sqrt(((e - t) ** 2).sum(axis=1))[:, mask]))


@pytest.mark.parametrize("variant", ["ideal", "remap"])
def test_a_real_deformation_keeps_its_field_and_wins_on_held_out_blocks(simulation, variant):
    sim = simulation(variant=variant, **SIM)
    bv, neuron = _projections(sim)
    al = align_sessions(bv, neuron_images=neuron, gSig=3.0)
    record = al.qc["heldout"]
    assert record["block_px"] == 18 and record["guard_px"] == 3.0 and record["scored_blocks"] >= 20
    for row in record["sessions"]:
        assert row["nonrigid_used"], row["why"]
        assert row["nonrigid"] - row["translation"] > row["needs"] >= record["min_gain"]
        assert row["why"].endswith("non-rigid kept")
    true = np.load(sim.ground_truth / "fields.npy")
    translation_only = np.broadcast_to(al.translations[:, :, None, None], al.total_fields.shape)
    assert _median_error(al.total_fields, true, al.valid_mask) < 0.5 * _median_error(
        translation_only, true, al.valid_mask
    )


def test_a_pure_translation_keeps_no_field_and_says_why(simulation, tmp_path):
    sim = simulation(variant="ideal", **{**SIM, "deform_px": 0.0})
    bv, neuron = _projections(sim)
    al = align_sessions(bv, neuron_images=neuron, session_ids=["d1", "d2", "d3", "d4"], gSig=3.0)
    rows = al.qc["heldout"]["sessions"]
    assert [r["session"] for r in rows] == ["d1", "d2", "d3", "d4"]
    for row in rows:
        assert not row["nonrigid_used"]
        assert row["nonrigid"] - row["translation"] <= row["needs"]
        assert row["why"].startswith(f"held-out score {row['translation']:.3f} translation vs {row['nonrigid']:.3f}")
        assert row["why"].endswith("translation only")
    assert not al.fields.any()  # the fields are zero: translation only
    true = np.load(sim.ground_truth / "fields.npy")
    assert _median_error(al.total_fields, true, al.valid_mask) < 0.1

    folder = save_alignment(al, tmp_path / "out")
    saved = json.loads((folder / "alignment.json").read_text())["qc"]["heldout"]
    assert saved == json.loads(json.dumps(al.qc["heldout"]))
    assert load_alignment(tmp_path / "out").qc["heldout"] == saved
    assert (folder / "alignment_qc.png").stat().st_size > 0


def test_resampling_blur_alone_does_not_win():
    """Two noisy views of one scene, aligned: a "non-rigid" field that only moves
    both by half a pixel blurs them (averaging neighbours removes noise, which
    raises their correlation) but aligns nothing better. Scored without equal blur
    it would win; scored as caliali does it must not."""
    rng = np.random.default_rng(1)
    scene = gaussian_filter(rng.standard_normal((120, 120)), 2.0)
    scene /= scene.std()
    images = [(scene + 0.8 * rng.standard_normal(scene.shape)).astype(np.float32) for _ in range(3)]
    translations = np.zeros((3, 2))
    half_px = np.full((3, 2, 120, 120), 0.5, dtype=np.float32)
    heldout = split((120, 120), gSig=3.0)
    record = judge(images, translations, half_px, heldout, sessions=["a", "b", "c"])
    for row in record["sessions"]:
        assert not row["nonrigid_used"], row["why"]
        assert abs(row["nonrigid"] - row["translation"]) < row["needs"]
    # The same comparison without equalising the blur: the blurred candidate wins by far.
    from caliali.registration._fields import warp_replicate

    mask = heldout.score
    sharp = [im[mask] for im in images]
    blurred = [warp_replicate(im, f)[mask] for im, f in zip(images, half_px, strict=True)]
    assert np.corrcoef(blurred[0], blurred[1])[0, 1] - np.corrcoef(sharp[0], sharp[1])[0, 1] > 0.05


def test_too_small_a_field_of_view_to_judge_keeps_translation_only():
    rng = np.random.default_rng(0)
    big = gaussian_filter(rng.standard_normal((60, 60)), 2)
    al = align_sessions([big[10:30, 10:30], big[12:32, 11:31]], gSig=3.0)
    record = al.qc["heldout"]
    assert record["scored_blocks"] < 2
    assert not al.fields.any()
    for row in record["sessions"]:
        assert not row["nonrigid_used"] and row["translation"] is None
        assert "too few to judge the non-rigid field, translation only" in row["why"]


def test_one_session_has_nothing_to_judge():
    al = align_sessions([np.random.default_rng(0).standard_normal((40, 40))], gSig=3.0)
    assert al.qc["heldout"] is None
