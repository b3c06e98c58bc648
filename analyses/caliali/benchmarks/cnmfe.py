"""Benchmark of CNMF-E source extraction: accuracy on simulated data, time and peak memory.

Usage (from the repository root)::

    .venv/bin/python analyses/caliali/benchmarks/cnmfe.py f1 [--variants ideal remap sparse dense]
        [--sessions 4] [--frames 2000] [--workdir DIR] [--out DIR]
    .venv/bin/python analyses/caliali/benchmarks/cnmfe.py memory [--sessions-list 1 4 10] [--frames 3000]
        [--height 180 --width 260] [--neurons K] [--memory-budget 1GB] [--workdir DIR]
    .venv/bin/python analyses/caliali/benchmarks/cnmfe.py memory --frames-list 3000 12000 [--sessions 1]
        [--height 128 --width 128 --neurons 150] [--memory-budget 64MB]

``f1`` simulates each variant (PNR 2), builds the aligned movie by warping
every session with its true backward field (so extraction is measured on its
own, without alignment error), extracts, and scores with ``caliali.score``
(Hungarian matching, trace cosine >= 0.8).

``memory`` runs the extraction of 1, 4 and 10 sessions of ``--frames`` frames,
each in a fresh subprocess, and prints wall time and peak RSS; peak RSS should
not grow with the number of sessions (target: within 15%). It also prints the
RSS once everything is imported, the working set above it (to compare with
``--memory-budget``) and the peak RSS of each stage. With ``--frames-list``
it runs ``--sessions`` sessions of each number of frames instead: at a small
frame size with many neurons, the full-length traces (neurons x frames,
printed as the size of one float32 copy) outweigh a batch of frames, so peak
RSS, and that of the whole-trace steps (``trace steps``: OASIS, false
positives, merges; ``post-processing``), shows whether any step holds whole
traces in memory.

The machine is shared: timings are noisy. The published peers on a 300x300,
2,000-frame one-photon movie on 2 cores: CaImAn CNMF-E 431 s / 6.3 GB peak,
minian 751 s / 4.6 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

PEERS = {"CaImAn CNMF-E (300x300x2000)": (431.0, 6.3), "minian (300x300x2000)": (751.0, 4.6)}


def build_aligned(sim_dir: Path, store_path: Path) -> tuple[np.ndarray, dict]:
    """Warp every session of a simulation with its true field into one aligned FrameStore."""
    from caliali.experiment import load_experiment
    from caliali.io import open_video
    from caliali.store import FrameStore

    gt = sim_dir / "ground_truth"
    meta = json.loads((gt / "meta.json").read_text())
    fields = np.load(gt / "fields.npy")
    sessions = load_experiment(sim_dir / "manifest.yaml").sessions
    h, w = fields.shape[2:]
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    enc = meta["video_encoding"]
    store = FrameStore.create(store_path, (h, w))
    bounds = [0]
    for s, session in enumerate(sessions):
        map_y, map_x = yy + fields[s, 0], xx + fields[s, 1]
        for path in session.files:
            with open_video(path) as reader:
                for chunk in reader.iter_chunks(500):
                    chunk = chunk / enc["video_scale"] - enc["video_offset"]
                    out = np.empty_like(chunk)
                    for i, frame in enumerate(chunk):
                        out[i] = cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
                    store.append(out)
        bounds.append(store.n_frames)
    store.mark_complete()
    return np.array(bounds), meta


def simulate_aligned(
    workdir: Path,
    *,
    variant: str,
    sessions: int,
    frames: int,
    seed: int = 0,
    neurons: int | None = None,
    height: int = 180,
    width: int = 260,
):
    from caliali.simulate import simulate

    tag = f"{variant}_{sessions}x{frames}" + ("" if (height, width) == (180, 260) else f"_{height}x{width}")
    sim_dir = workdir / f"sim_{tag}"
    if not (sim_dir / "ground_truth" / "meta.json").exists():
        simulate(
            sim_dir,
            sessions=sessions,
            frames=frames,
            variant=variant,
            seed=seed,
            neurons=neurons,
            height=height,
            width=width,
        )
    store_path = workdir / f"aligned_{tag}.zarr"
    meta = json.loads((sim_dir / "ground_truth" / "meta.json").read_text())
    progress_file = store_path / "progress.json"
    if progress_file.exists() and json.loads(progress_file.read_text()).get("complete"):
        bounds = np.concatenate([[0], np.cumsum(meta["session_frames"])])
    else:
        bounds, meta = build_aligned(sim_dir, store_path)
    return store_path, bounds, sim_dir / "ground_truth", meta


def run_f1(args) -> None:
    from caliali.extraction import ExtractionParams, extract
    from caliali.score import score_neurons

    rows = []
    for variant in args.variants:
        store_path, bounds, gt, meta = simulate_aligned(
            args.workdir, variant=variant, sessions=args.sessions, frames=args.frames, seed=args.seed
        )
        t0, cpu0 = time.perf_counter(), time.process_time()
        params = ExtractionParams(
            gSig=meta["gSig"], min_corr=args.min_corr, min_pnr=args.min_pnr, memory_budget=args.memory_budget
        )
        result = extract(str(store_path), params, session_bounds=bounds, work_dir=args.workdir)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if args.out is not None:  # the full outputs, e.g. for `caliali score OUT/<variant> GT`
            from caliali.outputs import write_outputs

            write_outputs(result, args.out / variant, fs=meta["fs"], extra_meta={"ground_truth": str(gt)})
        a_true = np.load(gt / "A.npy")
        c_true = np.load(gt / "C.npy")
        s = score_neurons(result.A, result.C, a_true.reshape(len(a_true), -1).T, c_true)
        rows.append((variant, len(a_true), result.n_neurons, s.n_matched, s.precision, s.recall, s.f1, wall, cpu))
        print(
            f"{variant:7s} true {len(a_true):4d} found {result.n_neurons:4d} matched {s.n_matched:4d} "
            f"P {s.precision:.3f} R {s.recall:.3f} F1 {s.f1:.3f}  extraction {wall:6.1f} s wall, {cpu:6.1f} s CPU; "
            f"iterations {result.history}",
            flush=True,
        )
    print("\nvariant  true found matched precision recall    F1   wall_s   cpu_s")
    for v, k, kf, m, p, r, f, wall, cpu in rows:
        print(f"{v:7s} {k:5d} {kf:5d} {m:7d} {p:9.3f} {r:6.3f} {f:6.3f} {wall:7.1f} {cpu:7.1f}")


def _rss() -> int:
    """Current resident set size of this process, bytes."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def _peak_rss() -> int:
    """Peak resident set size of this process since it started its program (VmHWM), bytes.

    Not ``getrusage().ru_maxrss``: Linux carries that over ``exec`` from the
    process that spawned this one, so a child started by a parent that had
    just simulated a movie reported the parent's peak (397 MiB for a 190 MiB
    extraction).
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(args) -> None:
    """Extraction of one aligned store in this (fresh) process; prints one JSON line.

    Besides the process's peak RSS, it records the RSS once everything is
    imported (the floor no batch size changes) and the peak RSS of each stage,
    sampled every 20 ms and labelled by the extraction's progress messages.
    """
    import threading

    from caliali.extraction import ExtractionParams, extract
    from caliali.store import FrameStore  # noqa: F401  (zarr and the readers count in the floor)

    bounds = json.loads(args.bounds)
    floor = _rss()
    stage, stages, running = ["summary images"], {}, [True]

    def sample() -> None:
        while running[0]:
            stages[stage[0]] = max(stages.get(stage[0], 0), _rss())
            time.sleep(0.02)

    def progress(fraction: float, message: str) -> None:
        label = message.split(",")[0].split(":")[0]
        stage[0] = "iterations" if label.startswith("iteration") else label

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0, cpu0 = time.perf_counter(), time.process_time()
    params = ExtractionParams(gSig=3.0, min_corr=0.2, min_pnr=4.0, memory_budget=args.memory_budget)
    result = extract(args.store, params, session_bounds=bounds, work_dir=args.work_dir, progress=progress)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    running[0] = False
    sampler.join()
    peak = _peak_rss()
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": cpu,
                "peak_rss": peak,
                "floor_rss": floor,
                "neurons": result.n_neurons,
                "seeds": len(result.seeds),
                "batch_frames": result.params["batch_frames"],
                "iterations": len(result.history),
                "frames": int(bounds[-1]),
                "stages": {k: v for k, v in stages.items() if not k.startswith("extraction done")},
            }
        )
    )


def run_memory(args) -> None:
    from caliali.extraction import parse_memory_budget

    budget = parse_memory_budget(args.memory_budget)
    by_frames = args.frames_list is not None
    if by_frames:
        sizes = [(args.sessions, frames) for frames in args.frames_list]
    else:
        sizes = [(n, args.frames) for n in args.sessions_list]
    rows = []
    for n, frames in sizes:
        store_path, bounds, _, _ = simulate_aligned(
            args.workdir,
            variant="ideal",
            sessions=n,
            frames=frames,
            seed=args.seed,
            neurons=args.neurons,
            height=args.height,
            width=args.width,
        )
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "_child",
                "--store",
                str(store_path),
                "--bounds",
                json.dumps([int(b) for b in bounds]),
                "--memory-budget",
                args.memory_budget,
                "--work-dir",
                str(args.workdir),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((n, frames, row))
        per_stage = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in row["stages"].items())
        print(
            f"{n:3d} sessions x {frames} frames: {row['wall_s']:7.1f} s wall, {row['cpu_s']:7.1f} s CPU, peak RSS "
            f"{row['peak_rss'] / 2**20:7.1f} MiB (after imports {row['floor_rss'] / 2**20:.1f}), {row['seeds']} seeds, "
            f"{row['neurons']} neurons, batch {row['batch_frames']} frames, {row['iterations']} iterations; "
            f"peak RSS by stage (MiB): {per_stage}",
            flush=True,
        )
    base = rows[0][2]["peak_rss"]
    print(
        f"\nmemory budget {args.memory_budget} = {budget / 2**20:.1f} MiB; working set = peak RSS - RSS after imports; "
        "KxT = one float32 copy of the traces of the seeds (neurons before removals) over all frames"
    )
    print(
        "sessions  frames   wall_s    cpu_s  peak_RSS_MiB  working_set_MiB  of_budget  vs_first  KxT_MiB  "
        "trace_steps_MiB  post_processing_MiB"
    )
    for n, frames, row in rows:
        work = row["peak_rss"] - row["floor_rss"]
        kxt = row["seeds"] * n * frames * 4
        steps = [row["stages"].get(k) for k in ("trace steps", "post-processing")]
        steps_text = "  ".join(f"{v / 2**20:15.1f}" if v else f"{'-':>15s}" for v in steps)
        print(
            f"{n:8d} {n * frames:7d} {row['wall_s']:8.1f} {row['cpu_s']:8.1f} {row['peak_rss'] / 2**20:13.1f} "
            f"{work / 2**20:16.1f} {100 * work / budget:9.0f}% {100 * (row['peak_rss'] / base - 1):+8.1f}% "
            f"{kxt / 2**20:8.1f}  {steps_text}"
        )
    growth = max(r["peak_rss"] for _, _, r in rows) / base - 1
    first, last = rows[0], rows[-1]
    what = f"{first[1]} to {last[1]} frames per session" if by_frames else f"{first[0]} to {last[0]} sessions"
    print(f"peak RSS growth from {what}: {100 * growth:+.1f}% (target < 15%)")
    for name, (wall, gb) in PEERS.items():
        print(f"peer {name}: {wall:.0f} s, {gb:.1f} GB peak")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f1 = sub.add_parser("f1")
    f1.add_argument("--variants", nargs="+", default=["ideal", "remap", "sparse", "dense"])
    f1.add_argument("--sessions", type=int, default=4)
    f1.add_argument("--frames", type=int, default=2000)
    f1.add_argument("--min-corr", type=float, default=0.2)
    f1.add_argument("--min-pnr", type=float, default=4.0)
    f1.add_argument("--out", type=Path, default=None, help="write each variant's outputs under OUT/<variant>")
    mem = sub.add_parser("memory")
    mem.add_argument("--sessions-list", type=int, nargs="+", default=[1, 4, 10])
    mem.add_argument("--frames", type=int, default=3000)
    mem.add_argument("--height", type=int, default=180)
    mem.add_argument("--width", type=int, default=260)
    mem.add_argument("--neurons", type=int, default=None)
    mem.add_argument(
        "--frames-list",
        type=int,
        nargs="+",
        default=None,
        help="vary the frames per session instead (--sessions sessions each); overrides --sessions-list",
    )
    mem.add_argument("--sessions", type=int, default=1, help="sessions per movie with --frames-list")
    for p in (f1, mem):
        p.add_argument("--memory-budget", default="1GB")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--workdir",
            type=Path,
            default=None,
            help="simulations, aligned movies and extraction's trace files (default: a temporary folder)",
        )
    child = sub.add_parser("_child")
    child.add_argument("--store", required=True)
    child.add_argument("--bounds", required=True)
    child.add_argument("--memory-budget", default="1GB")
    child.add_argument("--work-dir", default=None, help="folder for the extraction's temporary trace files")
    args = parser.parse_args(argv)
    from caliali.allocator import large_arrays_returned_on_free

    large_arrays_returned_on_free()  # as `caliali run` does: this process is the benchmark's own
    if args.command == "_child":
        _child(args)
        return
    with tempfile.TemporaryDirectory(prefix="cnmfe-bench-") as tmp:
        args.workdir = args.workdir or Path(tmp)
        args.workdir.mkdir(parents=True, exist_ok=True)
        (run_f1 if args.command == "f1" else run_memory)(args)


if __name__ == "__main__":
    main()
