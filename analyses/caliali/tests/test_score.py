"""Scoring: a perfect result scores 1, damaged ones score what they should."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from scipy import ndimage, sparse

from caliali.exceptions import ScoreError
from caliali.score import (
    cosine_matrix,
    estimate_offset,
    match_masks,
    score,
    score_alignment,
    score_neurons,
    score_strict,
    shift_footprints,
    truth_in_result_frame,
)


def _write_result(root, a, c, *, fields=None, mask=None):
    """A result folder in the layout caliali runs write (arrays/, alignment/)."""
    (root / "arrays").mkdir(parents=True)
    sparse.save_npz(root / "arrays" / "A.npz", sparse.csc_matrix(a.reshape(len(a), -1).T))
    np.save(root / "arrays" / "C.npy", c)
    (root / "arrays" / "meta.json").write_text(json.dumps({"dims": list(a.shape[1:]), "spatial_ds": 1}))
    if fields is not None:
        (root / "alignment").mkdir()
        np.save(root / "alignment" / "fields.npy", fields)
        if mask is not None:
            np.save(root / "alignment" / "valid_mask.npy", mask)
    return root


@pytest.fixture
def truth(simulation):
    sim = simulation()
    gt = sim.ground_truth
    return sim, np.load(gt / "A.npy"), np.load(gt / "C.npy"), np.load(gt / "fields.npy")


def test_perfect_result_scores_one(tmp_path, truth):
    sim, a, c, fields = truth
    result = _write_result(tmp_path / "r", a, c, fields=fields, mask=np.ones(a.shape[1:], bool))
    scores = score(result, sim.out)
    assert (scores.neurons.precision, scores.neurons.recall, scores.neurons.f1) == (1.0, 1.0, 1.0)
    assert scores.alignment.median_px == pytest.approx(0, abs=1e-5) and scores.alignment.p95_px == pytest.approx(
        0, abs=1e-5
    )
    assert scores.alignment.unaligned_median_px > 1


def test_shuffled_traces_score_low(tmp_path, truth):
    sim, a, c, _ = truth
    order = np.random.default_rng(0).permutation(len(c))
    while (order == np.arange(len(c))).any():
        order = np.random.default_rng(order[0]).permutation(len(c))
    scores = score(_write_result(tmp_path / "r", a, c[order]), sim.ground_truth)
    assert scores.neurons.f1 < 0.2 and scores.alignment is None


def test_missing_and_extra_neurons(truth):
    _, a, c, _ = truth
    flat = a.reshape(len(a), -1).T
    found = score_neurons(flat[:, :20], c[:20], flat, c)
    assert (found.n_matched, found.recall, found.precision) == (20, pytest.approx(20 / 30), 1.0)
    rng = np.random.default_rng(1)
    junk_a, junk_c = rng.random((flat.shape[0], 10)), rng.random((10, c.shape[1]))
    padded = score_neurons(np.hstack([flat, junk_a]), np.vstack([c, junk_c]), flat, c)
    assert (padded.n_matched, padded.precision, padded.recall) == (30, pytest.approx(30 / 40), 1.0)
    assert padded.f1 == pytest.approx(2 * 0.75 / 1.75)


def test_noisy_traces_pass_or_fail_the_threshold(truth):
    _, a, c, _ = truth
    flat = a.reshape(len(a), -1).T
    rng = np.random.default_rng(2)
    noise = rng.standard_normal(c.shape) * np.linalg.norm(c, axis=1, keepdims=True) / np.sqrt(c.shape[1])
    assert score_neurons(flat, c + 0.2 * noise, flat, c).recall == 1.0  # cosine ~0.98
    assert score_neurons(flat, c + 3.0 * noise, flat, c).recall < 0.2  # cosine ~0.3


def test_downsampled_result_is_compared_on_its_grid(tmp_path, truth):
    sim, a, c, fields = truth
    small = np.stack([cv2.resize(f, (48, 40), interpolation=cv2.INTER_AREA) for f in a])
    small_fields = np.stack(
        [
            [
                cv2.resize(f[0], (48, 40), interpolation=cv2.INTER_AREA) / 2,
                cv2.resize(f[1], (48, 40), interpolation=cv2.INTER_AREA) / 2,
            ]
            for f in fields
        ]
    )
    scores = score(_write_result(tmp_path / "r", small, c, fields=small_fields), sim.out)
    assert scores.neurons.f1 == 1.0 and scores.alignment.p95_px < 1e-4


def test_alignment_error_is_known_offset_modulo_common_deformation():
    rng = np.random.default_rng(3)
    true = rng.standard_normal((3, 2, 20, 24)).astype(np.float32)
    common = rng.standard_normal((1, 2, 20, 24)).astype(np.float32)
    assert score_alignment(true + common, true).p95_px == pytest.approx(0, abs=1e-5)
    offset = np.zeros_like(true)
    offset[1, 0] = 3.0  # session 2 off by 3 px in y: centred error is 2 px there, 1 px elsewhere
    result = score_alignment(true + offset, true)
    assert result.per_session_median_px == pytest.approx([1.0, 2.0, 1.0], abs=1e-5)
    mask = np.zeros((20, 24), bool)
    mask[5:10, 5:10] = True
    assert score_alignment(true + offset, true, mask).n_pixels == 25


def test_cosine_matrix_sparse_and_dense_agree():
    rng = np.random.default_rng(4)
    x, y = rng.random((50, 4)), rng.random((50, 3))
    np.testing.assert_allclose(cosine_matrix(sparse.csc_matrix(x), y), cosine_matrix(x, y))
    assert cosine_matrix(np.zeros((50, 1)), y).max() == 0.0  # an empty footprint matches nothing


def test_errors_name_what_is_missing(tmp_path, truth):
    sim, a, c, fields = truth
    with pytest.raises(ScoreError, match="arrays.*missing"):
        score(tmp_path, sim.out)
    short = _write_result(tmp_path / "short", a, c[:, :50])
    with pytest.raises(ScoreError, match="traces have 50 and 400 frames"):
        score(short, sim.out)
    with pytest.raises(ScoreError, match="A.npy: missing"):
        score(short, tmp_path)
    with pytest.raises(ScoreError, match="must be \\(n_sessions, 2, H, W\\)"):
        score_alignment(fields[:1], fields)


def test_cli_score_prints_table_and_writes_json(tmp_path, truth):
    sim, a, c, fields = truth
    result = _write_result(tmp_path / "r", a, c, fields=fields)
    run = subprocess.run(
        [sys.executable, "-m", "caliali", "score", str(result), str(sim.out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "strict F1" in run.stdout and "lenient F1" in run.stdout and "1.000" in run.stdout
    saved = json.loads((result / "score.json").read_text())
    assert saved["neurons"]["f1"] == 1.0 and saved["alignment"]["median_px"] == pytest.approx(0, abs=1e-5)
    assert saved["strict"]["f1"] == 1.0 and saved["masks"]["median_iou"] == 1.0
    assert (saved["offset"]["dy"], saved["offset"]["dx"]) == (0, 0)
    bad = subprocess.run(
        [sys.executable, "-m", "caliali", "score", str(tmp_path), str(sim.out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "missing" in bad.stderr and "Traceback" not in bad.stderr


def _discs(centres, shape=(60, 60), radius=4.0):
    """Flat-topped disc footprints (K, H, W) at ``centres``."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.stack([((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).astype(np.float64) for cy, cx in centres])


def test_mask_match_needs_iou_03():
    true = _discs([(15, 15), (15, 45), (45, 30)])
    flat = true.reshape(3, -1).T
    near = shift_footprints(true, 0, 2).reshape(3, -1).T  # discs of radius 4 moved 2 px: IoU 0.51
    far = shift_footprints(true, 0, 5).reshape(3, -1).T  # moved 5 px: IoU 0.14, overlapping but not the cell
    got_near, got_far = match_masks(near, flat), match_masks(far, flat)
    assert got_near.n_matched == 3 and 0.4 < got_near.median_iou < 0.6
    assert got_far.n_matched == 0 and got_far.f1 == 0.0
    assert match_masks(flat, flat).median_iou == 1.0


def test_right_trace_on_wrong_footprint_is_not_a_strict_match():
    rng = np.random.default_rng(5)
    centres = [(12, 12), (12, 46), (46, 12), (46, 46)]
    true = _discs(centres)
    c = rng.random((4, 300)) ** 8
    flat = true.reshape(4, -1).T
    # Each footprint moved 5 px a different way: it still overlaps its cell (cosine > 0) but its IoU is 0.14.
    moved = np.stack(
        [shift_footprints(true[k : k + 1], dy, dx)[0] for k, (dy, dx) in enumerate([(5, 0), (-5, 0), (0, 5), (0, -5)])]
    )
    flat_moved = moved.reshape(4, -1).T
    assert score_neurons(flat_moved, c, flat, c).n_matched == 4  # the lenient score takes them
    assert score_strict(flat_moved, c, flat, c).n_matched == 0
    # A sprawling footprint centred on its cell (radius 12 for a cell of radius 4: IoU 0.12) with the cell's trace.
    sprawl = _discs(centres, radius=12.0).reshape(4, -1).T
    assert score_neurons(sprawl, c, flat, c).n_matched == 4
    offset, masks = estimate_offset(sprawl, true)
    assert (offset.dy, offset.dx) == (0, 0) and masks.n_matched == 0
    assert score_strict(sprawl, c, flat, c, masks=masks).f1 == 0.0
    # ... and a wrong trace on a right footprint is not a match either
    swapped = score_strict(flat, c[[1, 0, 3, 2]], flat, c)
    assert swapped.n_matched == 0 and match_masks(flat, flat).n_matched == 4
    right = score_strict(flat, c, flat, c)
    assert (right.n_matched, right.f1) == (4, 1.0) and all(m[3] == pytest.approx(1.0) for m in right.matches)


@pytest.mark.parametrize("shift", [(2, -3), (-1, 2), (0, 0)])
def test_global_offset_is_found_applied_and_reported(tmp_path, truth, shift):
    sim, a, c, _ = truth
    moved = shift_footprints(a, *shift)
    result = _write_result(tmp_path / "r", moved, c)
    scores = score(result, sim.out)
    assert (scores.offset.dy, scores.offset.dx) == shift
    assert scores.strict.f1 > 0.95 and scores.masks.median_iou == 1.0
    if shift != (0, 0):
        plain = score(result, sim.out, align=False)
        assert (plain.offset.dy, plain.offset.dx) == (0, 0) and plain.masks.median_iou < 0.7  # 1 px off costs IoU


def test_chance_overlaps_do_not_make_an_offset(truth):
    _, a, c, _ = truth
    # Three footprints of the result, 7 px off their cells: moving the truth by (7, -5) lines them up again.
    stray = shift_footprints(a[:3], 7, -5).reshape(3, -1).T
    found, masks = estimate_offset(stray, a, traces=(c[:3], c))
    assert (found.dy, found.dx, found.pairs_shifted) == (7, -5, 3) and masks.n_matched == 3
    # With traces that are none of those cells', the same overlaps are chance: no offset.
    noise = np.random.default_rng(6).random((3, c.shape[1]))
    found, masks = estimate_offset(stray, a, traces=(noise, c))
    assert (found.dy, found.dx) == (0, 0) and found.pairs_shifted == 0 and masks.n_matched == 0
    # Fewer confirmed pairs than min_pairs cannot tell an offset from chance either.
    found, _ = estimate_offset(stray[:, :2], a, traces=(c[:2], c))
    assert (found.dy, found.dx) == (0, 0) and found.pairs_shifted == 2


def test_cli_score_reports_strict_offset_and_lenient(tmp_path, truth):
    sim, a, c, _ = truth
    result = _write_result(tmp_path / "r", shift_footprints(a, 2, -3), c)
    out = tmp_path / "scores.json"
    run = subprocess.run(
        [sys.executable, "-m", "caliali", "score", str(result), str(sim.out), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "strict F1" in run.stdout and "2, -3" in run.stdout
    saved = json.loads(out.read_text())
    assert (saved["offset"]["dy"], saved["offset"]["dx"]) == (2, -3) and saved["frame"] == "truth"  # 2 sessions
    assert saved["strict"]["f1"] > 0.95 and saved["strict"]["iou_threshold"] == 0.3
    assert saved["strict"]["trace_threshold"] == 0.8 and saved["masks"]["mask_fraction"] == 0.2
    assert not (result / "score.json").exists()
    unaligned = subprocess.run(
        [sys.executable, "-m", "caliali", "score", str(result), str(sim.out), "--json", str(out), "--no-align"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unaligned.returncode == 0, unaligned.stderr
    assert json.loads(out.read_text())["strict"]["f1"] < 0.5


def _centroids(a):
    yy, xx = np.indices(a.shape[1:])
    w = a.sum(axis=(1, 2))
    return np.stack([(a * yy).sum(axis=(1, 2)) / w, (a * xx).sum(axis=(1, 2)) / w], axis=1)


def test_one_session_is_scored_in_the_frame_its_movie_shows(tmp_path, simulation):
    """A one-session movie shows the truth through the session's deformation: the truth is matched there."""
    sim = simulation(sessions=1, frames=100, neurons=30, height=96, width=128, deform_px=3.0, translation_px=0.0)
    gt = sim.ground_truth
    a, c, d = np.load(gt / "A.npy"), np.load(gt / "C.npy"), np.load(gt / "fields.npy")
    moved, frame = truth_in_result_frame(a, d, None)
    assert frame == "session"
    # a cell at p in the truth's frame sits at p + d(p) in the session (d backward from the truth's frame)
    centres = _centroids(a)
    ends = centres + np.stack([ndimage.map_coordinates(d[0, i], centres.T, order=1) for i in range(2)], axis=1)
    inside = (ends.min(axis=1) > 6) & (ends[:, 0] < 90) & (ends[:, 1] < 122)  # cells the crop does not cut
    assert np.abs(_centroids(moved)[inside] - ends[inside]).max() < 0.2
    assert np.abs(centres - ends)[inside].max() > 1.0  # the deformation moves cells by more than a px
    # footprints as the session shows them score 1 ...
    result = _write_result(tmp_path / "r", moved, c)
    scores = score(result, sim.out)
    assert (scores.frame, scores.offset.dy, scores.offset.dx) == ("session", 0, 0)
    assert scores.masks.f1 == 1.0 and scores.masks.median_iou > 0.99
    assert scores.strict.n_matched == int((c.std(axis=1) > 0).sum())  # a silent cell's trace correlates with none
    assert json.loads((tmp_path / "r" / "arrays" / "meta.json").read_text())["dims"] == [96, 128]
    # ... which the truth's own frame under one global offset does not reach
    in_truth = match_masks(moved.reshape(len(a), -1).T, a.reshape(len(a), -1).T)
    assert in_truth.median_iou < scores.masks.median_iou - 0.1


def test_an_aligned_result_is_scored_through_its_own_and_the_true_fields(tmp_path, truth):
    """Each aligned pixel is followed into every session by the result's field, back by the truth's: the mean."""
    sim, a, c, fields = truth
    n, (h, w) = len(fields), a.shape[1:]
    translations = np.zeros((n, 2, h, w), np.float32)
    translations[:, 0], translations[1, 1] = 3.0, -2.0  # sessions seen through translations only
    aligned_off = np.array([1.0, -2.0])  # the result's aligned frame sits (1, -2) px from the truth's
    result_fields = translations + aligned_off[None, :, None, None]
    moved, frame = truth_in_result_frame(a, translations, result_fields)
    assert frame == "aligned"
    np.testing.assert_allclose(moved, shift_footprints(a, -1, 2), atol=1e-5)  # the truth sampled at y + (1, -2)
    # a session whose alignment is 4 px off moves the truth by a fraction (1 / n sessions) of it
    off = result_fields.copy()
    off[0, 1] += 4.0
    half, _ = truth_in_result_frame(a, translations, off)
    np.testing.assert_allclose(half, shift_footprints(shift_footprints(a, -1, 2), 0, -4 / n), atol=1e-5)
    # aligned exactly as the simulation's own fields say: the truth's frame, whatever the deformations
    scores = score(_write_result(tmp_path / "r", a, c, fields=fields), sim.out)
    assert (scores.frame, scores.offset.dy, scores.offset.dx) == ("aligned", 0, 0)
    assert scores.strict.f1 == 1.0 and scores.masks.median_iou > 0.99
    assert truth_in_result_frame(a, fields, None) == (a, "truth")  # sessions not aligned: the truth's frame
