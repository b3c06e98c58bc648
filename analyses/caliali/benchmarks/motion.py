"""Benchmark: within-session motion correction and per-session projections.

Prints, for a simulated 300x300 movie:

1. throughput (frames/s) of motion correction (into a zarr FrameStore) and of
   projection computation (from that store), next to the plain read floor of
   the same files (the reader's ``iter_chunks`` alone), plus the RMS error of
   the recovered shifts against the simulator's ground truth;
2. peak RSS of correction + projections (one pass) on 3,000 and 30,000
   frames, each in a fresh subprocess; target: < 10 % growth.

The memory runs stream frames from a procedural reader (a real
``caliali.io.VideoReader`` that renders moving, noisy frames on demand), so
30,000 frames need no 11 GB file; the corrected frames go to a sink that
discards them, and projections are accumulated in the same pass.

Usage::

    .venv/bin/python analyses/caliali/benchmarks/motion.py            # everything
    .venv/bin/python analyses/caliali/benchmarks/motion.py --skip-rss # throughput only

The machine is shared: figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import scipy.ndimage as ndi

from caliali.io import VideoReader


class SyntheticReader(VideoReader):
    """Frames rendered on demand: a vignetted scene with dark vessels and
    blinking neurons, moved by an AR(1) rigid drift, plus Gaussian noise."""

    def __init__(self, n_frames: int, shape: tuple[int, int] = (300, 300), *, seed: int = 0):
        self.path = Path(f"<synthetic {n_frames}x{shape[0]}x{shape[1]}>")
        self.n_frames, self.frame_shape, self.dtype, self.fs = n_frames, shape, np.dtype(np.float32), 10.0
        self.seed = seed
        rng = np.random.default_rng(seed)
        h, w = shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        scene = 1000 * np.exp(-((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (2 * (0.6 * max(h, w)) ** 2))
        scene *= 1 + 0.05 * ndi.gaussian_filter(rng.standard_normal(shape), 6).astype(np.float32)
        for _ in range(5):
            slope, offset, half = rng.uniform(-2, 2), rng.uniform(0, h), rng.uniform(1.5, 3)
            scene[np.abs(yy - slope * xx - offset) / np.sqrt(1 + slope**2) < half] *= 0.7
        self.scene = scene.astype(np.float32)
        centres = rng.uniform(20, min(h, w) - 20, (40, 2))
        self.blobs = np.stack([80 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2)) for cy, cx in centres])
        self.blobs = self.blobs.astype(np.float32)
        shifts = np.zeros((n_frames, 2))
        step = rng.standard_normal((n_frames, 2)) * 1.5 * np.sqrt(1 - 0.95**2)
        for t in range(1, n_frames):
            shifts[t] = 0.95 * shifts[t - 1] + step[t]
        self.shifts = shifts

    def _read(self, start: int, stop: int) -> np.ndarray:
        import cv2

        h, w = self.frame_shape
        out = np.empty((stop - start, h, w), np.float32)
        for i, t in enumerate(range(start, stop)):
            rng = np.random.default_rng((self.seed, t))
            active = np.flatnonzero(rng.random(len(self.blobs)) < 0.05)
            frame = self.scene + self.blobs[active].sum(axis=0)
            dy, dx = self.shifts[t]
            matrix = np.array([[1, 0, -dx], [0, 1, -dy]], dtype=np.float64)
            frame = cv2.warpAffine(
                frame, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
            )
            out[i] = frame + rng.standard_normal((h, w), dtype=np.float32) * 10
        return out


def rss_child(n_frames: int, batch_frames: int) -> None:
    """Correct + project ``n_frames`` synthetic frames; print peak RSS as JSON."""
    from caliali.motion import correct_session
    from caliali.projections import ProjectionAccumulator

    reader = SyntheticReader(n_frames)
    acc = ProjectionAccumulator(reader.frame_shape, gSig=3, fs=10, n_frames=n_frames)
    t0, c0 = time.perf_counter(), time.process_time()
    result = correct_session(reader, gSig=3, batch_frames=batch_frames, out=acc)
    acc.result()
    elapsed = time.perf_counter() - t0
    err = result.shifts - reader.shifts
    err -= err.mean(axis=0)
    peak = _peak_rss()
    print(
        json.dumps(
            {
                "frames": n_frames,
                "peak_rss_mb": peak / 2**20,
                "seconds": elapsed,
                "cpu_seconds": time.process_time() - c0,
                "rms_px": float(np.sqrt(np.mean(err**2))),
            }
        )
    )


def _peak_rss() -> int:
    import resource

    # ru_maxrss is in KiB on Linux.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def throughput(frames: int, batch_frames: int, workdir: Path) -> None:
    from caliali.experiment import load_experiment
    from caliali.io import open_video
    from caliali.motion import correct_session
    from caliali.projections import session_projections
    from caliali.simulate import simulate
    from caliali.store import FrameStore

    t0 = time.perf_counter()
    sim = simulate(workdir / "sim", sessions=1, frames=frames, height=300, width=300, within_motion=True, seed=1)
    print(f"simulated {frames} frames of 300x300 in {time.perf_counter() - t0:.1f} s")
    session = load_experiment(sim.manifest).sessions[0]
    gsig, fs = sim.meta["gSig"], sim.meta["fs"]

    def timed(run) -> tuple[float, float]:
        """(frames per wall second, frames per CPU second of this process)."""
        w0, c0 = time.perf_counter(), time.process_time()
        run()
        return frames / (time.perf_counter() - w0), frames / max(time.process_time() - c0, 1e-9)

    def read_files() -> None:
        for path in session.files:
            with open_video(path) as video:
                for _ in video.iter_chunks(batch_frames):
                    pass

    results = {}

    def correct() -> None:
        results["motion"] = correct_session(
            session, gSig=gsig, batch_frames=batch_frames, out=workdir / "corrected.zarr"
        )

    def project() -> None:
        with FrameStore.open(workdir / "corrected.zarr") as store:
            session_projections(
                store, gSig=gsig, fs=fs, batch_frames=batch_frames, valid_mask=results["motion"].valid_mask
            )

    def read_store() -> None:
        with FrameStore.open(workdir / "corrected.zarr") as store:
            for _ in store.iter_chunks(batch_frames):
                pass

    floor = timed(read_files)
    motion_fps = timed(correct)
    proj_fps = timed(project)
    store_floor = timed(read_store)
    result = results["motion"]

    true = np.load(sim.ground_truth / "shifts.npy")
    err = result.shifts - true
    err -= err.mean(axis=0)
    print(f"\nthroughput, 300x300, {frames} frames, batch_frames={batch_frames}")
    print(f"  {'stage':<40}{'frames/s':>10}{'frames/CPU-s':>14}")
    for name, (wall, cpu) in [
        ("read floor (simulated TIFF)", floor),
        ("motion correction (TIFF -> zarr)", motion_fps),
        ("read floor (corrected zarr store)", store_floor),
        ("projections (zarr -> mean/BV/Cn/PNR)", proj_fps),
    ]:
        print(f"  {name:<40}{wall:>10.1f}{cpu:>14.1f}")
    print("  (frames/CPU-s: per second of this process's CPU time, all threads; less sensitive to a busy machine)")
    print(f"  shift error vs ground truth: {np.sqrt(np.mean(err**2)):.3f} px RMS")


def memory(sizes: list[int], batch_frames: int) -> None:
    print(
        f"\npeak RSS, correction + projections in one pass, 300x300, batch_frames={batch_frames} "
        "(fresh subprocess each)"
    )
    rows = []
    for n in sizes:
        proc = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(n), "--batch-frames", str(batch_frames)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"  {n:>7} frames: peak RSS {row['peak_rss_mb']:8.1f} MB, {row['seconds']:7.1f} s "
            f"({n / row['seconds']:.1f} frames/s, {n / row['cpu_seconds']:.1f} frames/CPU-s), "
            f"shift error {row['rms_px']:.3f} px RMS"
        )
    if len(rows) >= 2:
        growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"] - 1
        print(f"  growth {rows[0]['frames']} -> {rows[-1]['frames']} frames: {100 * growth:+.1f} % (target < 10 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1000, help="frames for the throughput run")
    parser.add_argument("--batch-frames", type=int, default=500)
    parser.add_argument("--rss-sizes", type=int, nargs="+", default=[3000, 30000])
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.batch_frames)
        return
    print(f"machine: {psutil.cpu_count()} cores, load average {', '.join(f'{x:.1f}' for x in psutil.getloadavg())}")
    if not args.skip_throughput:
        with tempfile.TemporaryDirectory(prefix="caliali-motion-bench-") as tmp:
            throughput(args.frames, args.batch_frames, Path(tmp))
    if not args.skip_rss:
        memory(args.rss_sizes, args.batch_frames)


if __name__ == "__main__":
    main()
