"""caliali on movies from a second generator, written apart from ``caliali.simulate``.

Usage (from the repository root)::

    .venv/bin/python analyses/caliali/benchmarks/second_generator.py
        [--seeds 0 1 2] [--neurons 200] [--amplitude 1.0] [--config JSON]
        [--baseline-config JSON] [--workdir /tmp/caliali-second-generator]

caliali's own simulator shaped the pipeline, so its figures can flatter it. This generator makes
other choices, none of them tuned to caliali: 300 x 300 px, 2,000 frames at 20 Hz; footprints are
elliptic Gaussians (each axis sigma 2.2-4 px, any orientation) centred anywhere in the field,
overlapping each other as they fall and cut by the frame's edges; each neuron fires Poisson spikes
(0.05-0.6 Hz, log-normal sizes) through a double exponential (rise 0.08 s, decay 0.4-1 s) starting
from rest at frame 0; one spike's peak is 1.2-2.8 x the read noise (x ``--amplitude``); the
background is a bright vignette (20-80 counts) scaled by a slow 3 % oscillation, plus eight broad
blobs (sigma 25-60 px) whose amplitude wanders (a smoothed random walk, sd 1.5-4); read noise of
1 plus shot noise; written as uint16 TIFF (x 8 + 200).

For every seed the movie is generated (reused when already in ``--workdir``), ``caliali run`` runs
with gSig 3 and fs 20 and the rest of its defaults (plus ``--config``; ``--baseline-config`` runs a
second configuration beside it, e.g. ``'{"residual_seeds": false}'``), and ``caliali score``
scores it strictly: a match needs mask IoU >= 0.3 (masks at 0.2 x max) and trace correlation
>= 0.8. Prints one row per run (wall and CPU s, peak RSS of the process tree) and writes every
figure to ``<workdir>/second_generator.json``. Before the runs of a movie, a row says how many of its
neurons never fire and how many have their peak within 4 px of another's: both count in recall.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(HERE))
from vs_peers import measure  # noqa: E402  (the benchmarks' one way to time a process tree)

SIZE, FRAMES, FS = 300, 2000, 20.0


def generate(folder: Path, seed: int, neurons: int, amplitude: float) -> Path:
    """Write ``movie.tif`` and ``ground_truth/{A,C,S}.npy`` into ``folder``; return the movie."""
    import tifffile

    movie_path = folder / "movie.tif"
    if movie_path.exists() and (folder / "ground_truth" / "C.npy").exists():
        return movie_path
    rng = np.random.default_rng(1000 + seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    a = np.zeros((neurons, SIZE, SIZE), np.float32)
    for k in range(neurons):
        cy, cx = rng.uniform(0, SIZE), rng.uniform(0, SIZE)
        sa, sb = rng.uniform(2.2, 4.0), rng.uniform(2.2, 4.0)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        f = np.exp(-0.5 * ((u / sa) ** 2 + (v / sb) ** 2))
        f[f < 0.02] = 0
        a[k] = f / f.max()
    tau_r, tau_d = 0.08 * FS, rng.uniform(0.4, 1.0, neurons) * FS
    lags = np.arange(60)
    c = np.zeros((neurons, FRAMES), np.float32)
    s = np.zeros((neurons, FRAMES), np.float32)
    for k in range(neurons):
        rate = rng.uniform(0.05, 0.6) / FS
        spikes = (rng.random(FRAMES) < rate) * rng.lognormal(0, 0.5, FRAMES)
        kernel = np.exp(-lags / tau_d[k]) - np.exp(-lags / tau_r)
        c[k] = np.convolve(spikes, kernel / kernel.max())[:FRAMES]
        s[k] = spikes
    c *= (rng.uniform(0.6, 1.4, neurons) * 2.0 * amplitude)[:, None]
    vignette = 60 * np.exp(-(((yy - 150) / 170) ** 2 + ((xx - 150) / 170) ** 2)) + 20
    blobs = np.zeros((8, SIZE, SIZE), np.float32)
    for i in range(8):
        cy, cx, sigma = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(25, 60)
        blobs[i] = np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / sigma**2)
    walk = np.cumsum(rng.normal(0, 1, (8, FRAMES)), axis=1)
    smooth = np.exp(-(np.arange(-100, 101) ** 2) / (2 * 30**2))
    walk = np.array([np.convolve(w, smooth / smooth.sum(), mode="same") for w in walk])
    walk = (walk - walk.mean(1, keepdims=True)) / walk.std(1, keepdims=True) * rng.uniform(1.5, 4, (8, 1))
    oscillation = 1 + 0.03 * np.sin(2 * np.pi * np.arange(FRAMES) / (FS * 40))
    flat = a.reshape(neurons, -1)
    movie = np.empty((FRAMES, SIZE, SIZE), np.uint16)
    for t0 in range(0, FRAMES, 100):
        t1 = t0 + 100
        y = (c[:, t0:t1].T @ flat).reshape(-1, SIZE, SIZE)
        y += np.tensordot(walk[:, t0:t1].T, blobs, axes=1)
        y += vignette[None] * oscillation[t0:t1, None, None]
        shot = np.sqrt(np.maximum(y, 0) / 80.0)
        y += rng.normal(0, 1, y.shape).astype(np.float32) * np.sqrt(1 + shot**2)
        movie[t0:t1] = np.clip(y * 8 + 200, 0, 65535).astype(np.uint16)
    (folder / "ground_truth").mkdir(parents=True, exist_ok=True)
    np.save(folder / "ground_truth" / "A.npy", a)
    np.save(folder / "ground_truth" / "C.npy", c)
    np.save(folder / "ground_truth" / "S.npy", s)
    tifffile.imwrite(movie_path, movie)
    return movie_path


def truth_facts(a: np.ndarray, s: np.ndarray, near_px: float = 4.0) -> dict[str, int]:
    """What no extraction can be expected to find or tell apart, from the truth's footprints ``a`` (n, h, w)
    and spikes ``s`` (n, T): how many neurons never fire, and how many have their peak within ``near_px``
    of another's (the generator places centres anywhere, so neighbours can sit on one another)."""
    n, _, w = a.shape
    peaks = np.array([divmod(int(f.argmax()), w) for f in a], np.float64)
    distance = np.hypot(*(peaks[:, None, :] - peaks[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    return {
        "silent": int(np.count_nonzero((s > 0).sum(axis=1) == 0)),
        "near": int(np.count_nonzero(distance.min(axis=1) <= near_px)) if n > 1 else 0,
    }


def run_one(folder: Path, movie: Path, name: str, extra: dict[str, Any]) -> dict[str, Any]:
    config = {"gSig": 3, "fs": FS, **extra}
    config_path = folder / f"{name}.json"
    config_path.write_text(json.dumps(config))
    result = folder / name
    caliali = str(REPO / ".venv" / "bin" / "caliali")
    m = measure(
        [caliali, "run", "--input", str(movie), "--config", str(config_path), "--output", str(result)],
        log=folder / f"{name}.log",
    )
    row: dict[str, Any] = {"config": config, **{k: m[k] for k in ("wall_s", "cpu_s", "peak_rss_mb", "returncode")}}
    if m["returncode"] != 0:
        row["error"] = (folder / f"{name}.log").read_text()[-400:]
        return row
    score_path = folder / f"{name}.score.json"
    subprocess.run(
        [caliali, "score", str(result), str(folder), "--json", str(score_path)], check=True, capture_output=True
    )
    score = json.loads(score_path.read_text())
    strict, masks = score["strict"], score["masks"]
    row.update(
        f1=strict["f1"],
        precision=strict["precision"],
        recall=strict["recall"],
        found=strict["n_found"],
        iou_f1=masks["f1"],
        median_iou=masks["median_iou"],
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--neurons", type=int, default=200)
    parser.add_argument("--amplitude", type=float, default=1.0, help="Scales every neuron's spike size.")
    parser.add_argument("--config", default="{}", help="JSON merged into caliali's config.")
    parser.add_argument("--baseline-config", default=None, help="JSON of a second configuration run beside it.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/caliali-second-generator"))
    args = parser.parse_args()
    configs = {"config": json.loads(args.config)}
    if args.baseline_config is not None:
        configs = {"baseline": json.loads(args.baseline_config), **configs}
    rows = []
    print(
        f"{'seed':>4} {'neurons':>7} {'amp':>4} {'run':>8} {'found':>5} {'F1':>6} {'P':>6} {'R':>6} "
        f"{'IoU-F1':>6} {'wall s':>6} {'CPU s':>6} {'peak MB':>7}"
    )
    for seed in args.seeds:
        folder = args.workdir / f"seed{seed}_n{args.neurons}_a{args.amplitude:g}"
        folder.mkdir(parents=True, exist_ok=True)
        movie = generate(folder, seed, args.neurons, args.amplitude)
        truth = folder / "ground_truth"
        facts = truth_facts(np.load(truth / "A.npy"), np.load(truth / "S.npy"))
        print(
            f"{seed:>4} {args.neurons:>7} {args.amplitude:>4g} {'truth':>8} {facts['silent']} never fire; "
            f"{facts['near']} have their peak within 4 px of another's"
        )
        for name, extra in configs.items():
            row = {
                "seed": seed,
                "neurons": args.neurons,
                "amplitude": args.amplitude,
                "run": name,
                **facts,
                **run_one(folder, movie, name, extra),
            }
            rows.append(row)
            if "error" in row:
                print(f"{seed:>4} {args.neurons:>7} {args.amplitude:>4g} {name:>8} failed: {row['error']}")
                continue
            print(
                f"{seed:>4} {args.neurons:>7} {args.amplitude:>4g} {name:>8} {row['found']:>5} {row['f1']:>6.3f} "
                f"{row['precision']:>6.3f} {row['recall']:>6.3f} {row['iou_f1']:>6.3f} {row['wall_s']:>6.0f} "
                f"{row['cpu_s']:>6.0f} {row['peak_rss_mb']:>7.0f}",
                flush=True,
            )
    for name in configs:
        f1 = [r["f1"] for r in rows if r["run"] == name and "f1" in r]
        if f1:
            print(f"{name}: mean strict F1 {np.mean(f1):.3f} over {len(f1)} movies")
    (args.workdir / "second_generator.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
