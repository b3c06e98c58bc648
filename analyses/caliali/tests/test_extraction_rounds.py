"""What makes extraction's refinement rounds settle: footprints fitted with a free constant, and
supports that stop spreading once the cell's edge, not the search, bounds them."""

from __future__ import annotations

import numpy as np

from caliali.extraction._footprints import Footprints
from caliali.extraction._hals import spatial_hals
from caliali.extraction.cnmfe import _centre


def _disc(dims, centre, radius):
    yy, xx = np.mgrid[: dims[0], : dims[1]]
    return (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius**2).astype(np.float32)


def test_centred_sums_fit_the_footprint_whatever_constant_each_session_adds():
    """N = a c + m_s: the centred least squares give a exactly, for any per-pixel, per-session constant m_s."""
    rng = np.random.default_rng(0)
    dims = (20, 24)
    a = _disc(dims, (10, 12), 4) * rng.uniform(0.5, 1.0, dims).astype(np.float32)
    fp = Footprints(dims, [(0, dims[0], 0, dims[1])], [a])
    bounds = [0, 300, 700]
    c = np.maximum(rng.standard_normal(700), 0).astype(np.float64) + 0.5  # a trace with a sizeable mean
    fitted = []
    for offset in (0.0, 3.0):
        m = [offset + rng.uniform(0, 2, dims), offset + rng.uniform(0, 2, dims)]  # each session's constant
        neural = np.concatenate(
            [a[None] * c[s0:s1, None, None] + m[s][None] for s, (s0, s1) in enumerate(zip(bounds, bounds[1:]))]
        )
        yct = [np.tensordot(c, neural, axes=(0, 0))]
        cct = np.array([[c @ c]])
        # the pass hands over each session's residual sums (N - A C summed over its frames) and trace sums
        residual_sums = np.stack(
            [(neural[s0:s1] - a[None] * c[s0:s1, None, None]).sum(0) for s0, s1 in zip(bounds, bounds[1:])]
        )
        trace_sums = np.array([[c[s0:s1].sum()] for s0, s1 in zip(bounds, bounds[1:])])
        _centre(yct, cct, fp.boxes, fp, residual_sums, trace_sums, np.diff(bounds))
        uncentred = np.tensordot(c, neural, axes=(0, 0)) / (c @ c)
        assert not np.allclose(uncentred, a, atol=1e-2)  # without centring the constant leaks into the footprint
        fitted.append(yct[0] / cct[0, 0])
        np.testing.assert_allclose(fitted[-1], a, atol=1e-6)
    np.testing.assert_allclose(fitted[0], fitted[1], atol=1e-6)


def _fit(dims, support, truth):
    """One spatial update of a footprint with ``support`` towards ``truth``, from exact sums (a trace of norm 1)."""
    fp = Footprints(dims, [(0, dims[0], 0, dims[1])], [support])
    search = fp.grown(2)
    (y0, y1, x0, x1) = search[0][0]
    return fp, search, spatial_hals(fp, [truth[y0:y1, x0:x1].astype(np.float64)], np.array([[1.0]], np.float32), search)


def test_a_footprint_cut_by_its_search_goes_on_spreading_and_one_inside_it_stops():
    dims = (40, 40)
    cell = _disc(dims, (20, 20), 8)
    # seeded small inside a big cell: the fit fills the whole search, its outer rim included
    _, search, grown = _fit(dims, _disc(dims, (20, 20), 3), cell)
    assert search[2][0].any() and grown.spreading[0]
    assert np.count_nonzero(grown.images[0]) > np.count_nonzero(_disc(dims, (20, 20), 3))
    # seeded bigger than the cell: the fit stays inside its search and the footprint stops spreading
    _, _, settled = _fit(dims, _disc(dims, (20, 20), 10), _disc(dims, (20, 20), 6))
    assert not settled.spreading[0]
    # a footprint that no longer spreads is searched over its support only, with no rim
    boxes, masks, rims = settled.grown(2)
    support = settled.images[0] > 0
    assert masks[0].sum() == support.sum() and not rims[0].any()
    # it can still shrink, never grow
    y0, y1, x0, x1 = boxes[0]
    shrunk = spatial_hals(
        settled,
        [_disc(dims, (20, 20), 3)[y0:y1, x0:x1].astype(np.float64)],
        np.array([[1.0]], np.float32),
        (boxes, masks, rims),
    )
    assert 0 < np.count_nonzero(shrunk.images[0]) < support.sum() and not shrunk.spreading[0]
    grows = spatial_hals(settled, [np.ones((y1 - y0, x1 - x0))], np.array([[1.0]], np.float32), (boxes, masks, rims))
    assert np.count_nonzero(grows.images[0]) <= support.sum()


def test_subsets_and_normalising_keep_whether_footprints_spread():
    dims = (30, 30)
    images = [_disc(dims, (8, 8), 3), _disc(dims, (20, 20), 3)]
    fp = Footprints(dims, [(0, 30, 0, 30)] * 2, images, spreading=np.array([False, True]))
    assert fp.subset([1]).spreading.tolist() == [True]
    assert fp.normalized()[0].spreading.tolist() == [False, True]
    assert Footprints(dims, [(0, 30, 0, 30)], [images[0]]).spreading.tolist() == [True]  # new footprints spread


def test_a_merged_footprint_spreads_again_and_the_others_keep_their_state():
    from caliali.extraction._merge import merge_components

    dims = (30, 40)
    rng = np.random.default_rng(1)
    images = [_disc(dims, (15, 10), 3), _disc(dims, (15, 15), 3), _disc(dims, (15, 32), 3)]
    trace = np.maximum(rng.standard_normal(200), 0).astype(np.float32)
    c = np.stack([trace, trace, np.maximum(rng.standard_normal(200), 0).astype(np.float32)])
    fp = Footprints(dims, [(0, 30, 0, 40)] * 3, images, spreading=np.array([False, False, False]))
    merged, _, _, merges = merge_components(fp, c)
    assert merges == 1 and len(merged) == 2
    spreading = {tuple(np.round(merged.centers()[k]).astype(int)): bool(merged.spreading[k]) for k in range(2)}
    assert spreading[(15, 32)] is False  # untouched by the merge
    assert [v for k, v in spreading.items() if k != (15, 32)] == [True]  # the merged cell may spread over its area
