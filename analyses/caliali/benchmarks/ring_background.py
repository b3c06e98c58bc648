"""Benchmark of the ring background: caliali's sector model against CNMF-E's full ring weights.

Usage (from the repository root)::

    .venv/bin/python analyses/caliali/benchmarks/ring_background.py [--variants ideal dense]
        [--frames 2000] [--sectors 4 8 16] [--bg-ssub 2] [--batch-frames 500] [--workdir DIR]
        [--f1 [--f1-sessions 4 --f1-frames 2000]]

The background part of the fit, measured on its own. For each simulator
variant (PNR 2) one session is simulated without deformation or translation,
so the ground truth is in the video's own coordinates and the true
components are exact: the neurons ``gain * A C`` and the fluctuating
background, which in the simulator is each neuron's wide halo driven by its
trace (rendered with the simulator's own code; the rest of the simulated
background is static). Each model predicts the fluctuating background at a
pixel from its input on a ring of radius ``1.5 gSiz`` around it
(``gSiz = 4 gSig``), downsampled by ``bg_ssub``, with two inputs:

- noisy: what CNMF-E's background step sees with perfect neurons,
  ``X = Y - A C - b0`` (``b0`` the temporal mean), noise included;
- clean: the true fluctuating background alone, which measures what the
  model can represent (its capacity), without the noise it carries along.

The models:

- sectors: ``caliali.extraction._background.RingBackground`` as the
  extraction uses it (``n_sectors`` weights per downsampled pixel, sums
  accumulated batch by batch);
- full ring: CNMF-E's ``W`` (Zhou et al. 2018; CaImAn ``compute_W``): one
  weight per ring pixel, the ring ``disk(r + 1) - disk(r)`` with
  ``r = round(radius / bg_ssub)``, ridge ``1e-5 trace`` on the normal
  equations, fitted by least squares per downsampled pixel with the
  downsampled movie in memory.

Printed per model: relative error ``||B_pred - B_true|| / ||B_true||`` of the
predicted fluctuating background at full resolution (all pixels and frames;
0 is perfect, 1 is no better than predicting zero), the same on held-out
frames (fit on the first 3/4, predict the last 1/4), fit and prediction CPU time
(median of ``--repeats``), the peak of Python-tracked memory during the fit
(tracemalloc, the in-memory movie excluded) and the size of the least-squares
sums a batch-by-batch fit has to keep. The "floor" row is the error of the
true background itself after downsampling and upsampling (what ``bg_ssub``
alone costs). The size of the full ring's sums for a 300x300 movie is printed
too.

``--f1`` also runs ``caliali.extraction.extract`` end to end with each sector
count on the 4-session aligned movies of ``cnmfe.py f1`` and prints F1.

The machine is shared: timings are noisy (medians of a few repeats).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np


def simulate_truth(workdir: Path, *, variant: str, frames: int, seed: int):
    """One undeformed session: movie minus neurons (t, h, w), true fluctuating background, meta."""
    from caliali.io import open_video
    from caliali.simulate import SimulationParams, simulate
    from caliali.simulate._simulate import _SessionRenderer

    sim_dir = workdir / f"ring_{variant}_{frames}_{seed}"
    params = dict(sessions=1, frames=frames, variant=variant, seed=seed, deform_px=0.0, translation_px=0.0)
    if not (sim_dir / "ground_truth" / "meta.json").exists():
        simulate(sim_dir, **params)
    gt = sim_dir / "ground_truth"
    meta = json.loads((gt / "meta.json").read_text())
    p = SimulationParams(**params)
    a = np.load(gt / "A.npy")
    c = np.load(gt / "C.npy")
    m, h, w = p.margin, p.height, p.width
    a_full = np.pad(a, ((0, 0), (m, m), (m, m)))  # neurons lie in the central region: nothing is lost
    renderer = _SessionRenderer(
        p, a_full, np.zeros(a_full.shape[1:], np.float32), np.zeros((2, *a_full.shape[1:]), np.float32)
    )
    gain = 0.2 * p.pnr / (p.pnr + 1)
    enc = meta["video_encoding"]
    with open_video(sim_dir / "ses01.tif") as reader:
        y = reader.read(0, reader.n_frames) / enc["video_scale"] - enc["video_offset"]
    neurons = gain * np.tensordot(c, a, axes=(0, 0)).astype(np.float32)  # (t, h, w)
    halo = np.empty_like(y)
    for t0 in range(0, frames, 250):
        clean = renderer.clean(c[:, t0 : t0 + 250])[:, m : m + h, m : m + w]
        halo[t0 : t0 + 250] = clean - neurons[t0 : t0 + 250]
    y -= neurons
    del neurons
    # self-check: what is left after removing neurons, halos and the static background is the noise
    noise = y - halo - 0.8 * np.load(gt / "background.npy")
    noise_sd = 0.2 / (p.pnr + 1)
    print(
        f"  {variant}: {len(a)} neurons, {frames} frames; residual noise sd {noise.std():.4f} "
        f"(simulator {noise_sd:.4f}), |mean| {abs(noise.mean()):.4f}",
        flush=True,
    )
    del noise
    y -= y.mean(axis=0)  # X = Y - A C - b0
    halo -= halo.mean(axis=0)  # the true fluctuating background
    print(
        f"  {variant}: rms of the true fluctuating background {halo.std():.4f}, of the noise {noise_sd:.4f}", flush=True
    )
    return y, halo, meta, noise_sd


def upsample(small: np.ndarray, dims: tuple[int, int], ssub: int) -> np.ndarray:
    """The extraction's upsampling of a downsampled background (RingBackground.fluctuation)."""
    if ssub == 1:
        return small.astype(np.float32)
    h, w = dims
    hs, ws = small.shape[1:]
    out = np.empty((small.shape[0], h, w), np.float32)
    for i, frame in enumerate(small):
        out[i] = cv2.resize(frame, (ws * ssub, hs * ssub), interpolation=cv2.INTER_LINEAR)[:h, :w]
    return out


def relative_error(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.sqrt(((pred.astype(np.float64) - true) ** 2).sum() / (true.astype(np.float64) ** 2).sum()))


class SectorModel:
    """caliali's RingBackground, fitted batch by batch as in the extraction."""

    def __init__(self, dims, *, radius, ssub, n_sectors, batch_frames):
        from caliali.extraction._background import RingBackground

        self.bg = RingBackground(dims, 1, ring_radius=radius, ssub=ssub, n_sectors=n_sectors)
        self.batch_frames = batch_frames
        self.name = f"sectors {n_sectors}"
        self.n_weights = n_sectors

    def sums_bytes(self) -> int:
        return self.bg._gram.nbytes + self.bg._cross.nbytes

    def fit(self, x_small: np.ndarray) -> None:
        for t0 in range(0, len(x_small), self.batch_frames):
            xb = x_small[t0 : t0 + self.batch_frames]
            self.bg.accumulate(self.bg.regressors(xb), xb)
        self.bg.refit()

    def predict(self, x_small: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                self.bg.fluctuation(self.bg.regressors(x_small[t0 : t0 + self.batch_frames]))
                for t0 in range(0, len(x_small), self.batch_frames)
            ]
        )


def ring_offsets(radius: float, ssub: int) -> np.ndarray:
    """(n, 2) offsets of CNMF-E's ring on the downsampled grid: disk(r + 1) - disk(r), r = round(radius / ssub)."""
    from skimage.morphology import disk

    r = int(round(radius / ssub))
    ring = disk(r + 1).astype(bool)
    ring[1:-1, 1:-1] &= ~disk(r).astype(bool)
    return np.argwhere(ring) - (r + 1)


class FullRingModel:
    """CNMF-E's W: one weight per ring pixel and downsampled pixel, least squares with the movie in memory."""

    def __init__(self, dims, *, radius, ssub, chunk_pixels=256):
        self.dims, self.ssub = dims, ssub
        self.small = (math.ceil(dims[0] / ssub), math.ceil(dims[1] / ssub))
        self.offsets = ring_offsets(radius, ssub)
        hs, ws = self.small
        yy, xx = np.divmod(np.arange(hs * ws), ws)
        ry, rx = yy[:, None] + self.offsets[:, 0], xx[:, None] + self.offsets[:, 1]
        inside = (ry >= 0) & (ry < hs) & (rx >= 0) & (rx < ws)
        # ring pixels outside the frame point at an all-zero row: weight 0, as CaImAn drops them
        self.index = np.where(inside, ry * ws + rx, hs * ws)
        self.chunk = chunk_pixels
        self.name = "full ring"
        self.n_weights = len(self.offsets)
        self.weights = None

    def sums_bytes(self, pixels: int | None = None) -> int:
        """float64 normal equations (n^2 + n per pixel) a batch-by-batch fit would keep."""
        n = len(self.offsets)
        return (self.small[0] * self.small[1] if pixels is None else pixels) * (n * n + n) * 8

    def _flat(self, x_small: np.ndarray) -> np.ndarray:
        t = len(x_small)
        flat = np.zeros((self.small[0] * self.small[1] + 1, t), np.float32)
        flat[:-1] = x_small.reshape(t, -1).T
        return flat

    def fit(self, x_small: np.ndarray) -> None:
        flat = self._flat(x_small)
        n_pix = flat.shape[0] - 1
        self.weights = np.zeros((n_pix, len(self.offsets)), np.float32)
        for p0 in range(0, n_pix, self.chunk):
            p1 = min(p0 + self.chunk, n_pix)
            b = flat[self.index[p0:p1]]  # (p, n, t)
            gram = np.matmul(b, b.transpose(0, 2, 1)).astype(np.float64)
            rhs = np.matmul(b, flat[p0:p1, :, None]).astype(np.float64)
            trace = np.einsum("pii->p", gram)
            gram[:, np.arange(gram.shape[1]), np.arange(gram.shape[1])] += 1e-5 * trace[:, None]
            self.weights[p0:p1] = np.linalg.solve(gram, rhs)[..., 0]

    def predict(self, x_small: np.ndarray) -> np.ndarray:
        flat = self._flat(x_small)
        n_pix = flat.shape[0] - 1
        pred = np.empty((n_pix, len(x_small)), np.float32)
        for p0 in range(0, n_pix, self.chunk):
            p1 = min(p0 + self.chunk, n_pix)
            pred[p0:p1] = np.einsum("pn,pnt->pt", self.weights[p0:p1], flat[self.index[p0:p1]])
        return upsample(pred.T.reshape(len(x_small), *self.small), self.dims, self.ssub)


def measure(make, x_small, x_true, *, repeats: int):
    """Fit on all frames and predict them; fit on the first 3/4 and predict the rest; timings and memory."""
    fit_times, predict_times = [], []
    for _ in range(repeats):
        model = make()
        tracemalloc.start()
        t0 = time.process_time()
        model.fit(x_small)
        fit_times.append(time.process_time() - t0)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        t0 = time.process_time()
        pred = model.predict(x_small)
        predict_times.append(time.process_time() - t0)
    err = relative_error(pred, x_true)
    del pred
    split = (3 * len(x_small)) // 4
    held = make()
    held.fit(x_small[:split])
    err_held = relative_error(held.predict(x_small[split:]), x_true[split:])
    return dict(
        model=model.name,
        weights=model.n_weights,
        error=err,
        error_held_out=err_held,
        fit_s=statistics.median(fit_times),
        predict_s=statistics.median(predict_times),
        fit_peak_mib=peak / 2**20,
        sums_mib=model.sums_bytes() / 2**20,
    )


def run_f1(args) -> list[tuple]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cnmfe import simulate_aligned

    from caliali.extraction import ExtractionParams, extract
    from caliali.score import score_neurons

    rows = []
    for variant in args.variants:
        store_path, bounds, gt, meta = simulate_aligned(
            args.workdir, variant=variant, sessions=args.f1_sessions, frames=args.f1_frames, seed=args.seed
        )
        a_true = np.load(gt / "A.npy")
        c_true = np.load(gt / "C.npy")
        for n in args.sectors:
            t0, cpu0 = time.perf_counter(), time.process_time()
            params = ExtractionParams(
                gSig=meta["gSig"], min_corr=0.2, min_pnr=4.0, memory_budget="1GB", n_sectors=n, bg_ssub=args.bg_ssub
            )
            result = extract(str(store_path), params, session_bounds=bounds)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            s = score_neurons(result.A, result.C, a_true.reshape(len(a_true), -1).T, c_true)
            rows.append((variant, n, len(a_true), result.n_neurons, s.precision, s.recall, s.f1, wall, cpu))
            print(
                f"  {variant} sectors {n}: found {result.n_neurons}, P {s.precision:.3f} R {s.recall:.3f} "
                f"F1 {s.f1:.3f}, {wall:.1f} s wall, {cpu:.1f} s CPU",
                flush=True,
            )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["ideal", "dense"])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--sectors", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--bg-ssub", type=int, default=2)
    parser.add_argument("--ring-factor", type=float, default=1.5)
    parser.add_argument("--batch-frames", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-full-ring", action="store_true")
    parser.add_argument(
        "--inputs",
        nargs="+",
        choices=["noisy", "clean"],
        default=["noisy", "clean"],
        help="fit on X = Y - A C - b0 (noisy) and/or on the true background alone (clean)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--f1", action="store_true", help="also F1 of extract() with each sector count")
    parser.add_argument("--f1-only", action="store_true", help="only the F1 of extract(), no background measurement")
    parser.add_argument("--f1-sessions", type=int, default=4)
    parser.add_argument("--f1-frames", type=int, default=2000)
    args = parser.parse_args(argv)
    from caliali.extraction._background import downsample

    with tempfile.TemporaryDirectory(prefix="ring-bench-") as tmp:
        args.workdir = args.workdir or Path(tmp)
        args.workdir.mkdir(parents=True, exist_ok=True)
        rows = []
        for variant in [] if args.f1_only else args.variants:
            x, x_true, meta, noise_sd = simulate_truth(
                args.workdir, variant=variant, frames=args.frames, seed=args.seed
            )
            rms_true = float(np.sqrt((x_true.astype(np.float64) ** 2).mean()))
            dims = x.shape[1:]
            radius = args.ring_factor * 4 * meta["gSig"]
            inputs = {"noisy": downsample(x, args.bg_ssub), "clean": downsample(x_true, args.bg_ssub)}
            del x
            floor = relative_error(upsample(inputs["clean"], dims, args.bg_ssub), x_true)
            rows.append(
                dict(
                    variant=variant,
                    input="clean",
                    model="floor (bg_ssub)",
                    weights=0,
                    error=floor,
                    error_held_out=floor,
                    error_vs_noise=floor * rms_true / noise_sd,
                    fit_s=0.0,
                    predict_s=0.0,
                    fit_peak_mib=0.0,
                    sums_mib=0.0,
                )
            )
            makers = [
                lambda n=n, dims=dims, radius=radius: SectorModel(
                    dims, radius=radius, ssub=args.bg_ssub, n_sectors=n, batch_frames=args.batch_frames
                )
                for n in args.sectors
            ]
            if not args.no_full_ring:
                makers.append(lambda dims=dims, radius=radius: FullRingModel(dims, radius=radius, ssub=args.bg_ssub))
            for name in args.inputs:
                for make in makers:
                    row = dict(variant=variant, input=name, **measure(make, inputs[name], x_true, repeats=args.repeats))
                    row["error_vs_noise"] = row["error"] * rms_true / noise_sd
                    rows.append(row)
                    print(
                        f"  {variant} {name} {row['model']}: error {row['error']:.3f} "
                        f"(held out {row['error_held_out']:.3f}), fit {row['fit_s']:.2f} s CPU",
                        flush=True,
                    )
            del inputs, x_true
        if args.f1_only:
            report_f1(run_f1(args))
            return
        print(
            f"\nring radius {args.ring_factor} x gSiz, bg_ssub {args.bg_ssub}, {args.frames} frames; error = "
            "||B_pred - B_true|| / ||B_true|| of the fluctuating background, full resolution"
        )
        print("error_vs_noise = rms of B_pred - B_true in units of the pixel noise sd")
        print(
            f"{'variant':8s} {'input':6s} {'model':16s} {'weights':>7s} {'error':>6s} {'held-out':>8s} "
            f"{'error_vs_noise':>14s} {'fit_cpu_s':>9s} "
            f"{'predict_cpu_s':>13s} {'fit_peak_MiB':>12s} {'sums_MiB':>9s}"
        )
        for r in rows:
            print(
                f"{r['variant']:8s} {r['input']:6s} {r['model']:16s} {r['weights']:7d} {r['error']:6.3f} "
                f"{r['error_held_out']:8.3f} {r['error_vs_noise']:14.4f} "
                f"{r['fit_s']:9.2f} {r['predict_s']:13.2f} {r['fit_peak_mib']:12.1f} {r['sums_mib']:9.1f}"
            )
        for gsig in (3.0, 5.0):
            full = FullRingModel((300, 300), radius=args.ring_factor * 4 * gsig, ssub=args.bg_ssub)
            print(
                f"full ring sums for 300x300 at bg_ssub {args.bg_ssub}, gSig {gsig:g}: {full.n_weights} ring pixels, "
                f"{full.sums_bytes() / 2**20:.0f} MiB float64 (n^2 + n per pixel; half with symmetric storage)"
            )
        if args.f1:
            report_f1(run_f1(args))


def report_f1(rows: list[tuple]) -> None:
    print("\nvariant  sectors  true found precision recall    F1  wall_s   cpu_s")
    for v, n, k, kf, p, r, f, wall, cpu in rows:
        print(f"{v:8s} {n:7d} {k:5d} {kf:5d} {p:9.3f} {r:6.3f} {f:6.3f} {wall:7.1f} {cpu:7.1f}")


if __name__ == "__main__":
    main()
