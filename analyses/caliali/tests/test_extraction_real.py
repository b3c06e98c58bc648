"""CNMF-E on a real one-photon recording: minian's demo movie (Miniscope, GCaMP).

A 60 x 80 px crop (2x area-downsampled, 300 frames) of the raw quadrant of
``../shared/data/minian_demo/minian_demo.mp4``. The crop holds several dozen
visible cells. The extraction must stay numerically stable (pytest turns the
overflow warning of diverging traces into an error), keep a plausible number of
neurons, and give compact, single-blob footprints near their seeds.
"""

from __future__ import annotations

import numpy as np
import pytest

from caliali.extraction import extract

GSIG = 3.0


def _real_crop(quadrant: np.ndarray, n_frames: int = 300) -> np.ndarray:
    """The raw quadrant's first frames as float32, area-downsampled 2x, then cropped."""
    from caliali._cv2 import cv2

    frames = [
        cv2.resize(gray.astype(np.float32), (188, 120), interpolation=cv2.INTER_AREA)[20:80, 50:130]
        for gray in quadrant[:n_frames]
    ]
    return np.ascontiguousarray(np.stack(frames))


@pytest.fixture(scope="module")
def real_result(minian_demo_quadrant):
    movie = _real_crop(minian_demo_quadrant)
    before = movie.copy()
    result = extract(movie, gSig=GSIG, min_corr=0.5, min_pnr=6, batch_frames=len(movie))
    assert np.array_equal(movie, before), "extract modified its input"
    return result


def test_real_recording_keeps_a_plausible_number_of_neurons(real_result):
    # 68 seeds in this crop; a diverging fit used to end with 6 neurons after removing the rest.
    assert 25 <= real_result.n_neurons <= len(real_result.seeds)
    assert np.isfinite(real_result.C).all() and np.isfinite(real_result.C_raw).all()
    assert np.isfinite(real_result.A.data).all() and (real_result.A.data >= 0).all()
    # the iterations converge instead of shedding components round after round
    last = real_result.history[-1]
    assert last["removed"] + last["merged"] <= 2, real_result.history


def test_real_recording_footprints_are_compact_blobs_near_seeds(real_result):
    from scipy import ndimage

    h, w = real_result.dims
    a = real_result.A.toarray().T.reshape(-1, h, w)
    n_pixels = (a > 0).sum(axis=(1, 2))
    # a neuron of radius ~gSig spans well under a disk of radius 2 gSig (gSiz = 4 gSig is the diameter bound)
    assert np.median(n_pixels) <= np.pi * (2 * GSIG) ** 2, np.percentile(n_pixels, [10, 50, 90])
    for k, image in enumerate(a):
        _, n_blobs = ndimage.label(image > 0)
        assert n_blobs == 1, f"footprint {k} has {n_blobs} separate pieces"
    # every footprint's centre sits near a seed: components describe cells the summary images show
    seeds = real_result.seeds.astype(float)
    dist = np.sqrt(((real_result.centers[:, None, :] - seeds[None]) ** 2).sum(-1)).min(axis=1)
    assert np.mean(dist <= 2 * GSIG) >= 0.9, np.sort(dist)[-10:]
