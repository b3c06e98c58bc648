"""Two neurons on one another, seeded once and fitted as one component, are split by their events' shapes."""

from __future__ import annotations

import numpy as np

from caliali.extraction import extract
from caliali.extraction._split import event_times, split_test
from caliali.score import score_strict

GSIG = 3.0
DIMS = (48, 64)


def _gaussian(centre, sigma=3.0, dims=DIMS):
    yy, xx = np.mgrid[: dims[0], : dims[1]].astype(np.float64)
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma**2))


def test_the_events_of_two_neighbours_hold_two_shapes_and_those_of_one_cell_one():
    rng = np.random.default_rng(0)
    a, b = _gaussian((10, 8.5), dims=(21, 21)).ravel(), _gaussian((10, 12.5), dims=(21, 21)).ravel()
    support = (a + b) > 0.1 * (a + b).max()
    n = 30
    alone = rng.random(n) < 0.5  # each event is one neuron's or the other's
    pair = np.where(alone[:, None], a, b) * rng.uniform(3, 8, (n, 1)) + rng.normal(0, 1, (n, a.size))
    found = split_test(pair[:, support])
    assert found is not None
    shapes, weights = found
    peaks = sorted(int(np.argmax(_place(h, support))) % 21 for h in shapes)  # each shape's peak column
    assert peaks[0] <= 9 and peaks[1] >= 11, peaks  # the two shapes sit left and right, as the neurons do
    one = a * rng.uniform(3, 8, (n, 1)) + rng.normal(0, 1, (n, a.size))
    assert split_test(one[:, support]) is None
    assert split_test(pair[:5, support]) is None  # too few events to tell


def _place(values: np.ndarray, support: np.ndarray) -> np.ndarray:
    out = np.zeros(support.shape)
    out[support] = values
    return out


def test_event_times_are_the_highest_peaks_apart():
    trace = np.zeros(100)
    trace[[10, 12, 50, 80]] = [5.0, 6.0, 3.0, 1.0]
    assert event_times(trace, gap=5, n=3).tolist() == [12, 50, 80]
    assert event_times(trace, gap=5, n=2).tolist() == [12, 50]
    assert event_times(np.zeros(100), gap=5).size == 0


def test_two_neurons_3_5_px_apart_come_out_as_two_components():
    """One peak in Cn and PNR, one seed; the split at the residual's round gives each neuron its own."""
    rng = np.random.default_rng(1)
    centres = [(24, 20), (24, 23.5), (24, 46)]  # a pair on one another and a neuron alone
    a = np.array([_gaussian(c) for c in centres], np.float32)
    frames = 1500
    spikes = (rng.random((3, frames)) < 0.02).astype(np.float32) * rng.uniform(0.6, 1.4, (3, frames))
    kernel = np.exp(-np.arange(60) / 8.0) - np.exp(-np.arange(60) / 1.5)
    c = np.array([np.convolve(s, kernel / kernel.max())[:frames] for s in spikes], np.float32)
    y = 2.0 + 0.5 * np.tensordot(c, a, axes=(0, 0)) + 0.08 * rng.standard_normal((frames, *DIMS))
    out = extract(y.astype(np.float32), gSig=GSIG, min_corr=0.5, min_pnr=6, batch_frames=500)
    assert sum(h.get("split", 0) for h in out.history) >= 1, out.history
    strict = score_strict(out.A, out.C, a.reshape(3, -1).T, c)
    assert strict.n_matched == 3, (strict, out.history)
    again = extract(y.astype(np.float32), gSig=GSIG, min_corr=0.5, min_pnr=6, batch_frames=500)
    # the split's SVD and fits: the same footprints and traces, bit for bit
    assert np.array_equal(again.A.toarray(), out.A.toarray()) and np.array_equal(again.C, out.C)
