"""The benchmarks' own measures.

``vs_minian_fixture.movie_support`` compares each unit's footprint with the movie's mean over the
frames where the unit's own trace is highest; the benchmark counts the units that reach 0.5: a whole
cell's footprint is borne out, a fragment or noise is not. ``second_generator.truth_facts`` counts the
neurons of a movie that never fire and those sitting within 4 px of another.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from scipy import sparse

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str = "vs_minian_fixture"):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _movie(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """80 frames of 90 x 90 px: one cell (a Gaussian of sigma 5 px at (45, 45)) firing in 12 frames over noise."""
    yy, xx = np.mgrid[:90, :90]
    cell = np.exp(-((yy - 45.0) ** 2 + (xx - 45.0) ** 2) / (2 * 5.0**2))
    trace = np.zeros(80)
    trace[rng.choice(80, 12, replace=False)] = rng.uniform(4, 8, 12)
    movie = 10 + trace[:, None, None] * cell[None] + rng.normal(0, 1, (80, 90, 90))
    return movie.astype(np.float32), cell, trace


def test_a_whole_cell_is_borne_out_and_a_fragment_or_noise_is_not():
    bench = _load()
    rng = np.random.default_rng(3)
    movie, cell, trace = _movie(rng)
    fragment = np.where((np.abs(np.mgrid[:90, :90][0] - 41) <= 1) & (np.abs(np.mgrid[:90, :90][1] - 41) <= 1), cell, 0)
    patch = np.zeros((90, 90))
    patch[10:16, 70:76] = 1.0  # a square of noise far from the cell, with a trace of its own
    footprints = sparse.csc_array(np.stack([cell, fragment, patch], axis=-1).reshape(90 * 90, 3))
    traces = np.stack([trace, trace, rng.normal(0, 1, 80)])
    baseline = np.percentile(movie, 20, axis=0).astype(np.float32)
    support, ratio = bench.movie_support(footprints, traces, movie, baseline)
    assert support[0] >= 0.9 and 0.7 <= ratio[0] <= 1.3, (support, ratio)  # the whole cell, its size
    assert support[1] < bench.SUPPORTED and ratio[1] < 0.2, (support, ratio)  # a 3 x 3 px piece of it
    assert support[2] < bench.SUPPORTED, support  # noise


def test_the_second_generator_counts_silent_neurons_and_neighbours_on_one_another():
    bench = _load("second_generator")
    a = np.zeros((4, 30, 30))
    for k, (y, x) in enumerate([(5, 5), (5, 8), (20, 20), (28, 2)]):  # the first two 3 px apart
        a[k, y, x] = 1.0
    s = np.zeros((4, 50))
    s[[0, 1, 2], [3, 10, 40]] = 1.0  # the fourth never fires
    assert bench.truth_facts(a, s) == {"silent": 1, "near": 2}
    assert bench.truth_facts(a, s, near_px=2.0) == {"silent": 1, "near": 0}
