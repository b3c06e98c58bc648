"""align_sessions on small synthetic projections with known deformations:
same-session groups, duplicated sessions, the vessel-reliability fallback,
bad input, saving/loading, and streaming application to movies."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from scipy import ndimage

from caliali.projections.vessels import bv_filter
from caliali.registration import (
    AlignmentError,
    align_sessions,
    apply_alignment,
    load_alignment,
    save_alignment,
)
from caliali.registration._fields import in_bounds, random_smooth_field, warp, warp_replicate

SHAPE = (112, 144)
MARGIN = 16


def _invert(g: np.ndarray) -> np.ndarray:
    """Backward field f with f(p) = -g(p + f(p)) (fixed point)."""
    f = -g.copy()
    for _ in range(30):
        f = -np.stack([warp_replicate(g[0], f), warp_replicate(g[1], f)])
    return f


def _scene(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A raw-like image (tissue with dark vessels) and a neuron image (blobs)."""
    h, w = shape
    vessels = np.zeros(shape, np.float32)
    for _ in range(7):
        steps = rng.standard_normal((300, 2)) * 1.2 + rng.standard_normal(2) * 1.2
        for y, x in (np.cumsum(steps, axis=0) + rng.uniform([0, 0], [h, w])).astype(int):
            if 0 <= y < h and 0 <= x < w:
                vessels[y, x] = 1
    vessels = ndimage.gaussian_filter(vessels, 1.5)
    vessels /= vessels.max()
    neurons = np.zeros(shape, np.float32)
    neurons[rng.integers(0, h, 80), rng.integers(0, w, 80)] = 1
    neurons = ndimage.gaussian_filter(neurons, 2.0)
    neurons /= neurons.max()
    return (1.0 - 0.4 * vessels + 0.05 * neurons).astype(np.float32), neurons


def _sessions(n: int, *, seed: int = 0, deform: float = 4.0, translation: float = 4.0, noise: float = 0.01):
    """Per-session BV and neuron images and the true backward fields."""
    rng = np.random.default_rng(seed)
    big = (SHAPE[0] + 2 * MARGIN, SHAPE[1] + 2 * MARGIN)
    raw_ref, neuron_ref = _scene(rng, big)
    crop = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
    bv, neuron, fields = [], [], []
    for _ in range(n):
        g = random_smooth_field(big, magnitude=deform, smoothness=20, rng=rng)
        g += rng.uniform(-translation, translation, 2).astype(np.float32)[:, None, None]
        raw = warp_replicate(raw_ref, g)[crop] + noise * rng.standard_normal(SHAPE).astype(np.float32)
        bv.append(bv_filter(raw, gSig=3))
        neuron.append(warp_replicate(neuron_ref, g)[crop] + noise * rng.standard_normal(SHAPE).astype(np.float32))
        fields.append(_invert(g)[(slice(None), *crop)])
    return bv, neuron, np.stack(fields)


def _error(est: np.ndarray, true: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    e = est - est.mean(axis=0)
    t = true - true.mean(axis=0)
    d = np.sqrt(((e - t) ** 2).sum(axis=1))[:, mask]
    return float(np.median(d)), float(np.percentile(d, 95))


@pytest.fixture(scope="module")
def three():
    return _sessions(3, seed=1)


def test_recovers_known_deformations(three):
    bv, neuron, true = three
    al = align_sessions(bv, neuron_images=neuron, gSig=3)
    med, p95 = _error(al.total_fields, true, al.valid_mask)
    assert med <= 0.5 and p95 <= 1.5, (med, p95)
    assert al.source == "bv" and al.reliability > 2.7
    # Translation alone is clearly worse, and the QC sees the improvement.
    rigid = np.broadcast_to(al.translations[:, :, None, None], true.shape)
    assert _error(rigid, true, al.valid_mask)[0] > 2 * med
    qc = al.qc
    for key in ("corr_with_mean", "group_consistency"):
        assert np.mean(qc[key]["nonrigid"]) > np.mean(qc[key]["translation"]) > np.mean(qc[key]["before"])
    assert qc["crispness"]["nonrigid"] > qc["crispness"]["before"]
    assert len(qc["displacement_p95_pct_neuron"]) == 3
    assert qc["displacement_p95_pct_neuron"][0] == pytest.approx(100 * qc["displacement_p95_px"][0] / 6)
    # Backward convention: each session warped by its field lands on the consensus.
    aligned = [al.apply(b, s) for s, b in enumerate(bv)]
    m = al.valid_mask
    before = np.mean([np.corrcoef(bv[0][m], b[m])[0, 1] for b in bv[1:]])
    after = np.mean([np.corrcoef(aligned[0][m], a[m])[0, 1] for a in aligned[1:]])
    assert after > before + 0.2


def test_pieces_of_one_session_share_one_transform(three):
    bv, neuron, _ = three
    rng = np.random.default_rng(5)
    noisy = [b + 0.02 * rng.standard_normal(b.shape).astype(np.float32) for b in (bv[1], bv[1])]
    al = align_sessions(
        [bv[0], noisy[0], noisy[1], bv[2]],
        session_ids=["d1", "d2", "d2", "d3"],
        neuron_images=[neuron[0], neuron[1], neuron[1], neuron[2]],
        gSig=3,
    )
    assert al.sessions == ["d1", "d2", "d3"]
    assert al.input_sessions.tolist() == [0, 1, 1, 2]
    assert al.fields.shape == (3, 2, *SHAPE) and al.images.shape == (3, *SHAPE)
    np.testing.assert_array_equal(al.input_field(1), al.input_field(2))
    assert not np.array_equal(al.input_field(0), al.input_field(1))


def test_a_session_given_twice_aligns_to_itself(three):
    bv, neuron, _ = three
    al = align_sessions(
        [bv[0], bv[1], bv[2], bv[0]], neuron_images=[neuron[0], neuron[1], neuron[2], neuron[0]], gSig=3
    )
    diff = np.sqrt(((al.total_field(0) - al.total_field(3)) ** 2).sum(axis=0))[al.valid_mask]
    assert diff.max() < 0.05, diff.max()
    assert np.sqrt((al.total_field(0) ** 2).sum(axis=0))[al.valid_mask].max() > 1.0  # it did move


def test_unreliable_vessels_fall_back_to_neuron_images(three, caplog):
    _, neuron, true = three
    rng = np.random.default_rng(9)
    no_vessels = [bv_filter(1 + 0.01 * rng.standard_normal(SHAPE).astype(np.float32), gSig=3) for _ in neuron]
    with caplog.at_level(logging.INFO, logger="caliali.registration"):
        al = align_sessions(no_vessels, neuron_images=neuron, gSig=3)
    assert al.source == "neuron" and al.reliability < 2.7
    assert "aligning on neuron images" in caplog.text
    med, p95 = _error(al.total_fields, true, al.valid_mask)
    assert med <= 0.5 and p95 <= 1.5, (med, p95)
    forced = align_sessions(no_vessels, neuron_images=neuron, gSig=3, source="bv")
    assert forced.source == "bv" and _error(forced.total_fields, true, forced.valid_mask)[0] > 1.0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="caliali.registration"):
        alone = align_sessions(no_vessels, gSig=3)
    assert alone.source == "bv" and "no neuron images were given" in caplog.text


def test_one_session_is_the_identity():
    bv, _, _ = _sessions(1)
    al = align_sessions(bv, gSig=3)
    assert not al.total_fields.any() and al.valid_mask.all() and np.isnan(al.reliability)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": [np.zeros((40, 40)), np.zeros((40, 41))]}, "share one frame size"),
        ({"images": [np.zeros(40), np.zeros(40)]}, "2-D projection"),
        ({"images": []}, "no images"),
        ({"images": [np.zeros((8, 8))]}, "at least 16x16"),
        ({"images": [np.zeros((40, 40))] * 2, "session_ids": ["a"]}, "one session id per image"),
        ({"images": [np.zeros((40, 40))] * 2, "neuron_images": [np.zeros((40, 40))]}, "one per image"),
        ({"images": [np.zeros((40, 40))] * 2, "source": "vessels"}, "'auto', 'bv' or 'neuron'"),
        ({"images": [np.zeros((40, 40))] * 2, "source": "neuron"}, "needs neuron_images"),
        ({"images": [np.zeros((40, 40))] * 2, "min_gain": -0.1}, "held-out correlation gain >= 0"),
    ],
)
def test_bad_input_is_named(kwargs, message):
    images = kwargs.pop("images")
    with pytest.raises(AlignmentError, match=message):
        align_sessions(images, **kwargs)


def test_save_and_load(three, tmp_path):
    bv, neuron, _ = three
    al = align_sessions(bv, neuron_images=neuron, gSig=3, session_ids=["a", "b", "c"])
    folder = save_alignment(al, tmp_path)
    assert folder == tmp_path / "alignment"
    for name in (
        "fields.npy",
        "valid_mask.npy",
        "translations.npy",
        "alignment.json",
        "projections_before.png",
        "projections_after.png",
        "alignment_qc.png",
    ):
        assert (folder / name).stat().st_size > 0, name
    np.testing.assert_array_equal(np.load(folder / "fields.npy"), al.total_fields)
    meta = json.loads((folder / "alignment.json").read_text())
    assert meta["source"] == "bv" and meta["reliability"] == pytest.approx(al.reliability)
    back = load_alignment(tmp_path)
    assert back.sessions == ["a", "b", "c"] and back.source == al.source
    np.testing.assert_allclose(back.fields, al.fields, atol=1e-5)
    np.testing.assert_array_equal(back.valid_mask, al.valid_mask)
    with pytest.raises(AlignmentError, match="missing"):
        load_alignment(tmp_path / "nowhere")


def test_apply_streams_every_frame_into_one_video(three, tmp_path):
    bv, neuron, _ = three
    al = align_sessions(
        [bv[0], bv[1], bv[1], bv[2]],
        session_ids=["a", "b", "b", "c"],
        neuron_images=[neuron[0], neuron[1], neuron[1], neuron[2]],
        gSig=3,
    )
    rng = np.random.default_rng(2)
    movies = [rng.random((n, *SHAPE), dtype=np.float32) for n in (5, 4, 3, 6)]
    calls = []
    result = apply_alignment(
        al, movies, tmp_path / "aligned.zarr", batch_frames=2, progress=lambda f, m: calls.append(f)
    )
    assert result.n_frames == 18 and result.session_bounds.tolist() == [0, 5, 12, 18]
    assert calls and calls[-1] == pytest.approx(1.0)
    video = result.store.read(0, 18)
    assert video.dtype == np.float32 and video.shape == (18, *SHAPE)
    expected = [warp(f, al.input_field(i)) for i, m in enumerate(movies) for f in m]
    inside = al.valid_mask
    # OpenCV interpolates at 1/32 px: on white noise in [0, 1] that is <= 1/32.
    assert max(np.abs(v - e)[inside].max() for v, e in zip(video, expected, strict=True)) < 1 / 32 + 1e-3
    outside_first = ~in_bounds(al.input_field(0), SHAPE)
    assert outside_first.any() and (video[:5, outside_first] == 0).all()  # fill outside the session's image
    np.testing.assert_array_equal(np.load(tmp_path / "aligned.zarr" / "valid_mask.npy"), inside)
    # A finished store is reused, not recomputed.
    again = apply_alignment(
        al, movies, tmp_path / "aligned.zarr", batch_frames=2, progress=lambda f, m: pytest.fail("recomputed")
    )
    assert again.n_frames == 18 and again.session_bounds.tolist() == [0, 5, 12, 18]
    with pytest.raises(AlignmentError, match="one video per input"):
        apply_alignment(al, movies[:3], tmp_path / "x.zarr", batch_frames=2)
    with pytest.raises(AlignmentError, match="frames"):
        apply_alignment(al, [m[:, :50] for m in movies], tmp_path / "y.zarr", batch_frames=2)


def test_pixels_without_data_are_excluded_from_the_valid_mask(three):
    bv, neuron, _ = three
    holed = bv[0].copy()
    holed[:, :12] = np.nan  # e.g. cropped away by motion correction
    border = np.ones(SHAPE, bool)
    border[-10:] = False
    al = align_sessions(
        [holed, bv[1], bv[2]],
        neuron_images=neuron,
        gSig=3,
        valid_masks=[np.ones(SHAPE, bool), border, np.ones(SHAPE, bool)],
    )
    assert np.isfinite(al.fields).all() and np.isfinite(al.images).all()
    assert not al.valid_mask[:, :8].any() and not al.valid_mask[-6:].any()
    assert al.valid_mask.mean() > 0.6
