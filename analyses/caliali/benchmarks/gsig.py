"""The neuron radius ``gSig`` that ``caliali run`` estimates when the config leaves it unset.

Usage (from the repository root)::

    .venv/bin/python analyses/caliali/benchmarks/gsig.py
        [--radii 3 4 6 8] [--seeds 0 1 2] [--frames 1000] [--neurons 40] [--no-real]
        [--workdir /tmp/caliali-gsig]

Simulations: one session per radius and seed (``caliali.simulate``; reused when already in
``--workdir`` with the same parameters), its footprints drawn to the radius the way the
simulator's defaults pair them (gSig 3 with footprints 7 px wide and centres at least 8 px
apart, scaled together), no motion; and the same with rigid motion within the session
(``motion`` rows). Each is estimated the way ``caliali run`` does it with the default config:
the first ``GSIG_FRAMES`` frames of the session read in chunks through
``caliali.motion.session_chunks`` into ``caliali.projections.estimate_session_gsig`` (an estimate
on the frames as they are, then one on the same frames motion-corrected with it); the first
estimate is printed too (``uncorrected``).

Real recordings (``../shared/data`` beside the repository; skipped when absent): the raw
quadrant of minian's demo movie (500 frames, 240 x 376, read as the tests read it) and minian's
test fixture ``org.zarr`` (100 frames, 480 x 752, already motion-corrected and background-suppressed
by minian; ``vs_minian_fixture.py`` runs it with ``motion_correction`` off, which uses the first
estimate).

Prints one row per movie: the true (or the usually chosen) gSig, the estimate, their ratio, the
blobs the median was taken over, the frames read, and the estimate's wall and CPU time; then the
mean, least and greatest ratio per radius. Writes every figure to ``<workdir>/gsig.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from caliali.experiment import load_experiment
from caliali.motion import session_chunks
from caliali.projections import GSIG_FRAMES, estimate_session_gsig
from caliali.simulate import simulate

REPO = Path(__file__).resolve().parents[3]
DATA = REPO.parent / "shared" / "data"
DEMO = DATA / "minian_demo" / "minian_demo.mp4"
FIXTURE = DATA / "minian_fixture" / "org.zarr"
BATCH = 200


def simulated(workdir: Path, radius: float, seed: int, args: argparse.Namespace, *, motion: bool) -> Path:
    """A one-session simulation whose footprints have ``radius`` (reused when already there)."""
    size = max(128, int(24 * radius))
    params: dict[str, Any] = {
        "sessions": 1,
        "frames": args.frames,
        "neurons": args.neurons,
        "seed": seed,
        "height": size,
        "width": size,
        "within_motion": motion,
        "gSig": radius,
        "footprint_width": radius * 7 / 3,
        "min_distance": radius * 8 / 3,
    }
    out = workdir / f"sim_r{radius:g}_s{seed}{'_motion' if motion else ''}"
    meta = out / "ground_truth" / "meta.json"
    if meta.exists() and all(json.loads(meta.read_text()).get(k) == v for k, v in params.items()):
        return out
    simulate(out, **params)
    return out


def measure(frames: Callable[[], Any]) -> dict[str, Any]:
    """The estimate from the chunks ``frames()`` gives, with its wall and CPU time."""
    wall, cpu = time.perf_counter(), time.process_time()
    estimate = estimate_session_gsig(frames, max_frames=GSIG_FRAMES)
    return {
        "estimate": round(estimate.gSig, 2),
        "uncorrected": None if estimate.corrected_with is None else round(estimate.corrected_with, 2),
        "blobs": estimate.blobs,
        "frames": estimate.frames,
        "wall_s": round(time.perf_counter() - wall, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
    }


def demo_quadrant() -> np.ndarray:
    """The raw recording of minian's demo movie: the grey top-left quadrant of its 2x2 montage."""
    from caliali.io import open_video

    with open_video(DEMO, crop=(0, 240, 0, 376)) as reader:
        return reader.read().astype(np.uint8)


def row(name: str, truth: float | str, figures: dict[str, Any]) -> dict[str, Any]:
    ratio = round(figures["estimate"] / truth, 3) if isinstance(truth, float) else None
    out = {"movie": name, "truth": truth, **figures, "ratio": ratio}
    print(
        f"| {name} | {truth} | {out['estimate']:.2f} | {'' if ratio is None else f'{ratio:.3f}'} "
        f"| {out['uncorrected']} | {out['blobs']} "
        f"| {out['frames']} | {out['wall_s']:.2f} | {out['cpu_s']:.2f} |",
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--radii", nargs="+", type=float, default=[3.0, 4.0, 6.0, 8.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--neurons", type=int, default=40)
    parser.add_argument("--no-real", action="store_true", help="Skip the real recordings.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/caliali-gsig"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(
        "| movie | gSig | estimate | ratio | uncorrected | blobs | frames | wall s | CPU s |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for motion in (False, True):
        for radius in args.radii:
            for seed in args.seeds:
                sim = simulated(args.workdir, radius, seed, args, motion=motion)
                session = load_experiment(sim).sessions[0]
                name = f"{'motion' if motion else 'static'} r{radius:g} seed {seed}"
                rows.append(row(name, radius, measure(partial(session_chunks, session, batch_frames=BATCH))))
    if not args.no_real:
        if DEMO.exists():
            rows.append(row("minian demo quadrant", "5-6 (usual)", measure(lambda movie=demo_quadrant(): [movie])))
        else:
            print(f"skipped: {DEMO} is not on this machine", file=sys.stderr)
        if FIXTURE.exists():
            session = load_experiment(FIXTURE).sessions[0]
            frames = partial(session_chunks, session, batch_frames=BATCH)
            rows.append(row("minian fixture org.zarr", "4 (vs_minian_fixture)", measure(frames)))
        else:
            print(f"skipped: {FIXTURE} is not on this machine", file=sys.stderr)
    print("\n| movies | radius | runs | mean ratio | least | greatest |\n|---|---|---|---|---|---|")
    for kind in ("static", "motion"):
        for radius in args.radii:
            ratios = [r["ratio"] for r in rows if r["movie"].startswith(f"{kind} r{radius:g} ")]
            if ratios:
                print(
                    f"| {kind} | {radius:g} | {len(ratios)} | {statistics.mean(ratios):.3f} | {min(ratios):.3f} "
                    f"| {max(ratios):.3f} |"
                )
    (args.workdir / "gsig.json").write_text(json.dumps(rows, indent=1))
    print(f"\nfigures: {args.workdir / 'gsig.json'}")


if __name__ == "__main__":
    main()
