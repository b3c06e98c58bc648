"""Neurons the seeds missed are found in the residual (``residual_seeds``), next to the ones found.

CNMF-E picks neurons from the residual after its first updates; caliali does so once, after the
second round, when ``residual_seeds`` is on. The residual is the movie less the model: a cell the
model lacks stands out there, and a cell it has leaves only its misfit, which is not seeded.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from caliali.extraction import ExtractionParams, extract, summary_images
from caliali.extraction._background import RingBackground
from caliali.extraction._batches import plan_batches
from caliali.extraction._deconv import deconvolve_trace
from caliali.extraction._footprints import Footprints, box_around
from caliali.extraction._source import open_source
from caliali.extraction._traces import TraceFile
from caliali.extraction.cnmfe import _seed_residual, residual_min_corr, screen_residual
from caliali.score import footprint_masks, iou_matrix

GSIG = 3.0
DIMS = (60, 80)
BRIGHT, DIM = (30, 36), (30, 45)  # touching cells, 9 px apart


def _cell(centre, radius=4.0):
    yy, xx = np.mgrid[: DIMS[0], : DIMS[1]].astype(np.float64)
    r = np.hypot(yy - centre[0], xx - centre[1]) / radius
    return (np.clip(1.5 - r, 0, 1) ** 1.5).astype(np.float32)


def _movie(frames=800, seed=3):
    rng = np.random.default_rng(seed)
    a = np.stack([_cell(BRIGHT), _cell(DIM)])
    spikes = (rng.random((2, frames)) < 0.03).astype(np.float32)
    kernel = np.exp(-np.arange(50) / 6.0) - np.exp(-np.arange(50) / 1.2)
    c = np.array([np.convolve(s, kernel / kernel.max())[:frames] for s in spikes], np.float32)
    c *= np.array([[1.5], [0.5]], np.float32)
    y = 1.0 + np.tensordot(c, a, axes=(0, 0)) + 0.05 * rng.standard_normal((frames, *DIMS))
    return y.astype(np.float32), a, c


def test_a_cell_the_model_lacks_is_seeded_in_the_residual_and_the_one_it_has_is_not(tmp_path):
    y, a, c = _movie()
    bounds = np.array([0, len(y)])
    source = open_source(y)
    batches = plan_batches(bounds, DIMS, batch_frames=400)
    box = box_around(*BRIGHT, 8, DIMS)
    image = a[0][box[0] : box[1], box[2] : box[3]]
    norm = float(np.sqrt((image.astype(np.float64) ** 2).sum()))
    model = Footprints(DIMS, [box], [image / norm])  # the bright cell only
    traces = TraceFile.from_array(c[:1] * norm, directory=tmp_path)
    background = RingBackground(DIMS, 1, ring_radius=1.5 * 4 * GSIG)
    background.b0[0] = 1.0
    params = ExtractionParams(gSig=GSIG, min_corr=0.4, min_pnr=6, residual_seeds=True)
    reports: list[tuple[float, str]] = []
    both, c_both, counts = _seed_residual(
        source,
        batches,
        bounds,
        model,
        traces,
        background,
        params,
        longest=400,
        work_dir=tmp_path,
        screen=(3.0, 6),
        progress=lambda f, m: reports.append((f, m)),
        stage=(0.5, 0.6, "residual"),
    )
    # each of its passes over the movie says how far it is, within the share of the progress it was given
    said = [m for _, m in reports]
    assert said[0] == "residual: its Cn and PNR images", said
    n = len(batches)
    assert f"residual: fitting {counts['seeds']} seeds, batch {n}/{n}" in said, said
    assert f"residual: screening {counts['fitted']} fits, batch {n}/{n}" in said, said
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and 0.5 <= fractions[0] and fractions[-1] == 0.6, fractions
    added = counts["added"]
    assert counts["seeds"] >= counts["fitted"] >= added
    assert added >= 1 and len(both) == 1 + added and c_both.shape == (len(both), len(y))
    assert np.array_equal(both.images[0], model.images[0]), "the components found are kept as they were"
    new = [both.dense(k) for k in range(1, len(both))]
    covers = [im[DIM] >= 0.5 * im.max() for im in new]
    assert any(covers), "no new component covers the dim cell"
    for im in new:
        peak = np.unravel_index(int(np.argmax(im)), DIMS)
        assert np.hypot(peak[0] - BRIGHT[0], peak[1] - BRIGHT[1]) > 3, "the bright cell was seeded again"
    k = 1 + int(np.argmax(covers))
    assert np.corrcoef(c_both[k], c[1])[0, 1] > 0.8, "the new component's trace is not the dim cell's"


def test_the_residual_is_not_seeded_outside_the_valid_mask(tmp_path):
    # the edges motion correction filled from their neighbours hold junk that moves with the motion
    y, a, c = _movie()
    bounds = np.array([0, len(y)])
    box = box_around(*BRIGHT, 8, DIMS)
    image = a[0][box[0] : box[1], box[2] : box[3]]
    norm = float(np.sqrt((image.astype(np.float64) ** 2).sum()))
    background = RingBackground(DIMS, 1, ring_radius=1.5 * 4 * GSIG)
    background.b0[0] = 1.0
    valid = np.ones(DIMS, bool)
    valid[:, DIM[1] - 4 :] = False  # the dim cell lies where the frames were not real
    both, _, _ = _seed_residual(
        open_source(y),
        plan_batches(bounds, DIMS, batch_frames=400),
        bounds,
        Footprints(DIMS, [box], [image / norm]),
        TraceFile.from_array(c[:1] * norm, directory=tmp_path),
        background,
        ExtractionParams(gSig=GSIG, min_corr=0.4, min_pnr=6),
        longest=400,
        work_dir=tmp_path,
        valid_mask=valid,
        screen=(3.0, 6),
    )
    peaks = [np.unravel_index(int(np.argmax(both.dense(k))), DIMS) for k in range(1, len(both))]
    assert all(valid[p] for p in peaks), peaks


def test_extraction_with_residual_seeds_records_what_it_added_and_finds_both_cells():
    y, a, _ = _movie()
    reports: list[tuple[float, str]] = []
    out = extract(y, gSig=GSIG, min_corr=0.4, min_pnr=6, batch_frames=400, progress=lambda f, m: reports.append((f, m)))
    assert "added" in out.history[1] and out.params["residual_seeds"] is True  # on by default
    assert out.history[1]["residual"]["added"] == out.history[1]["added"], out.history[1]
    iou = iou_matrix(footprint_masks(out.A), footprint_masks(a.reshape(2, -1).T))
    assert iou.max(axis=0).min() >= 0.5, iou.max(axis=0)
    assert "iteration 2: seeds in the residual: its Cn and PNR images" in [m for _, m in reports]
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions), "the progress went back"
    off = extract(y, gSig=GSIG, min_corr=0.4, min_pnr=6, batch_frames=400, residual_seeds=False)
    assert all(h["added"] == 0 and "residual" not in h for h in off.history), off.history


def test_the_residual_is_seeded_where_its_pixels_move_together_not_where_noise_peaks():
    # what a residual holds: noise, and a cell the model lacks
    rng = np.random.default_rng(11)
    _, a, c = _movie(frames=400)
    y = (np.tensordot(c[1:], a[1:], axes=(0, 0)) + 0.05 * rng.standard_normal((400, *DIMS))).astype(np.float32)
    cn, _ = summary_images(y, gSig=GSIG)
    level = residual_min_corr(cn)
    assert cn[DIM] > level, (float(cn[DIM]), level)
    far = ~ndimage.binary_dilation(a[1] > 0, iterations=int(2 * GSIG))
    passing = (cn[far] >= level).mean()
    assert passing < 0.05, "the noise's own local correlation passes"
    assert (cn[far] >= 0.1).mean() > 2 * passing, "min_corr's default alone lets as much noise through"


def _disc(centre, dims=(40, 48), radius=4.0):
    yy, xx = np.mgrid[: dims[0], : dims[1]]
    return (np.hypot(yy - centre[0], xx - centre[1]) <= radius).astype(np.float32)


def _calcium(rng, frames, rate=0.02):
    kernel = np.exp(-np.arange(60) / 8.0) - np.exp(-np.arange(60) / 1.5)
    return np.convolve((rng.random(frames) < rate).astype(np.float64), kernel / kernel.max())[:frames]


def test_the_residual_keeps_a_neuron_of_its_own_not_a_neighbours_misfit_nor_noise():
    # two sessions of 400 frames; the model has one neuron; the residual holds three candidates
    rng = np.random.default_rng(5)
    bounds = np.array([0, 400, 800])
    dims = (40, 48)
    old_trace = 3 * _calcium(rng, 800)
    model = Footprints(dims, [(0, 40, 0, 48)], [_disc((20, 15))])
    noise = lambda: 0.3 * rng.standard_normal(800)  # noqa: E731
    misfit = noise()
    misfit[400:] += 0.6 * old_trace[400:]  # what the one footprint leaves of the neuron in session 2 only
    own = noise() + 3 * _calcium(rng, 800)  # a neuron overlapping the first, firing on its own
    raw = np.stack([misfit, own, noise()])
    denoised = np.stack(
        [np.concatenate([deconvolve_trace(r[s0:s1], p=1).c for s0, s1 in zip(bounds[:-1], bounds[1:])]) for r in raw]
    )
    new = Footprints(dims, [(0, 40, 0, 48)] * 3, [_disc((20, 21)), _disc((20, 22)), _disc((6, 40))])
    keep, no_event, misfits = screen_residual(
        new, raw, denoised, bounds, level=3.0, n=6, footprints=model, c=old_trace[None], merge_thr=0.65
    )
    assert keep.tolist() == [1] and no_event == 1 and misfits == 1, (keep, no_event, misfits)
    # the same misfit beside no neuron of the model is a neuron of its own
    alone = Footprints(dims, [(0, 40, 0, 48)], [_disc((20, 40))])
    keep, _, misfits = screen_residual(
        new, raw, denoised, bounds, level=3.0, n=6, footprints=alone, c=old_trace[None], merge_thr=0.65
    )
    assert keep.tolist() == [0, 1] and misfits == 0, keep
