"""A synthetic result in the neurons layout (docs/review.md), for tests and the review benchmark.

Gaussian footprints of ``radius`` px on a ``height`` × ``width`` field, exponentially decaying
calcium traces from sparse spikes, written in blocks of neurons so a long recording never sits
in memory whole.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["write_layout"]


def _save_csc(path: Path, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int]) -> None:
    """What ``scipy.sparse.save_npz`` writes for a CSC matrix, with numpy alone."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in (
            ("indices", indices.astype(np.int32)),
            ("indptr", indptr.astype(np.int32)),
            ("format", np.array(b"csc")),
            ("shape", np.array(shape, dtype=np.int64)),
            ("data", data.astype(np.float32)),
        ):
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            zf.writestr(f"{name}.npy", buf.getvalue())


def _npy_rows(path: Path, shape: tuple[int, int]) -> np.memmap:
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)


def write_layout(
    folder: Path,
    *,
    neurons: int,
    frames: int,
    height: int,
    width: int,
    sessions: int = 2,
    radius: float = 6.0,
    seed: int = 0,
) -> dict:
    """Write the layout into ``folder``; returns its meta.json."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    margin = int(3 * radius)
    centers = np.column_stack(
        [rng.uniform(margin, height - margin, neurons), rng.uniform(margin, width - margin, neurons)]
    )
    data, indices, indptr = [], [], [0]
    for cy, cx in centers:
        y0, y1 = max(int(cy - 2 * radius), 0), min(int(cy + 2 * radius) + 1, height)
        x0, x1 = max(int(cx - 2 * radius), 0), min(int(cx + 2 * radius) + 1, width)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        weight = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (radius / 1.5) ** 2))
        keep = weight > 0.05
        indices.append((yy[keep] * width + xx[keep]).ravel())
        data.append(weight[keep].ravel())
        indptr.append(indptr[-1] + int(keep.sum()))
    _save_csc(
        folder / "A.npz", np.concatenate(data), np.concatenate(indices), np.array(indptr), (height * width, neurons)
    )
    raw, den, spk = (_npy_rows(folder / f"{n}.npy", (neurons, frames)) for n in ("C_raw", "C", "S"))
    decay = np.float32(0.95)
    for start in range(0, neurons, 32):
        stop = min(start + 32, neurons)
        spikes = (rng.random((stop - start, frames)) < 0.003).astype(np.float32) * rng.uniform(
            0.5, 2, (stop - start, 1)
        ).astype(np.float32)
        calcium = np.empty_like(spikes)
        level = np.zeros(stop - start, np.float32)
        for t in range(frames):
            level = level * decay + spikes[:, t]
            calcium[:, t] = level
        spk[start:stop] = spikes
        den[start:stop] = calcium
        raw[start:stop] = calcium + rng.normal(0, 0.1, calcium.shape).astype(np.float32)
    for arr in (raw, den, spk):
        arr.flush()
    bounds = np.linspace(0, frames, sessions + 1).astype(np.int64)
    np.save(folder / "session_bounds.npy", bounds)
    field = np.zeros((height, width), np.float32)
    np.add.at(field.ravel(), np.concatenate(indices), np.concatenate(data).astype(np.float32))
    images = []
    for kind, picture in (("Cn", field), ("PNR", field * 5), ("mean", field + 1), ("max", field * 3)):
        np.save(folder / f"{kind}.npy", (picture + rng.normal(0, 0.05, picture.shape)).astype(np.float32))
        images.append({"kind": kind, "session": None, "file": f"{kind}.npy"})
    session_ids = [f"day{i + 1}" for i in range(sessions)]
    meta = {
        "dims": [height, width],
        "n_neurons": neurons,
        "n_frames": frames,
        "session_ids": session_ids,
        "fs": 20.0,
        "snr": [round(float(v), 3) for v in rng.uniform(3, 30, neurons)],
        "centers": [[round(float(y), 2), round(float(x), 2)] for y, x in centers],
        "images": images,
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return meta


def main(argv: list[str] | None = None) -> int:
    """``python -m ncaas.testing.neurons --config CONFIG --output OUT``: a synthetic result in OUT/arrays.

    The config (JSON) names ``neurons``, ``frames``, ``height``, ``width`` and optionally ``sessions``,
    ``radius`` and ``seed``. The test and benchmark analysis ``neurons-synthetic`` runs it as its command.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ncaas.testing.neurons")
    parser.add_argument("--input", help="the dataset (unused: the result is synthesised from the config)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    config = json.loads(Path(args.config).read_text())
    keys = ("neurons", "frames", "height", "width", "sessions", "radius", "seed")
    meta = write_layout(Path(args.output) / "arrays", **{k: config[k] for k in keys if k in config})
    print(f"NCAAS_PROGRESS 1.0 {meta['n_neurons']} neurons, {meta['n_frames']} frames", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
