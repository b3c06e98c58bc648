"""End-to-end accuracy of CNMF-E extraction on the simulator's ideal variant, four sessions.

The same at 4 x 2,000 frames, and every other variant, is measured by ``benchmarks/accuracy.py``.

The aligned movie is built by warping each simulated session with its true
backward field, so the score measures extraction alone; the full pipeline's
glue (motion correction and alignment before extraction) is tested elsewhere.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from caliali.experiment import load_experiment
from caliali.extraction import extract
from caliali.io import open_video
from caliali.score import score_neurons
from caliali.store import FrameStore

FRAMES = 600  # per session


def _aligned_store(sim, path) -> tuple[FrameStore, np.ndarray]:
    gt = sim.ground_truth
    meta = json.loads((gt / "meta.json").read_text())
    enc = meta["video_encoding"]
    fields = np.load(gt / "fields.npy")
    h, w = fields.shape[2:]
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    store = FrameStore.create(path, (h, w))
    bounds = [0]
    for s, session in enumerate(load_experiment(sim.manifest).sessions):
        map_y, map_x = yy + fields[s, 0], xx + fields[s, 1]
        for file in session.files:
            with open_video(file) as reader:
                for chunk in reader.iter_chunks(500):
                    chunk = chunk / enc["video_scale"] - enc["video_offset"]
                    store.append(
                        np.stack(
                            [cv2.remap(f, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT) for f in chunk]
                        )
                    )
        bounds.append(store.n_frames)
    store.mark_complete()
    return store, np.array(bounds)


@pytest.mark.slow
def test_f1_on_the_ideal_simulation_reaches_0_85(simulation, tmp_path):
    sim = simulation(sessions=4, frames=FRAMES, neurons=100, height=180, width=260, variant="ideal", pnr=2.0)
    store, bounds = _aligned_store(sim, tmp_path / "aligned.zarr")
    result = extract(store, session_bounds=bounds, gSig=3.0, min_corr=0.2, min_pnr=4.0, memory_budget="1GB")
    a_true = np.load(sim.ground_truth / "A.npy")
    c_true = np.load(sim.ground_truth / "C.npy")
    score = score_neurons(result.A, result.C, a_true.reshape(len(a_true), -1).T, c_true)
    assert score.f1 >= 0.85, (score.precision, score.recall, score.f1)
    assert [part.shape[1] for part in result.by_session("C")] == [FRAMES] * 4
