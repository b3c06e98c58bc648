"""caliali's accuracy with the strict scorer: simulator variants x seeds x right and wrong gSig.

Usage (from the repository root)::

    .venv/bin/python analyses/caliali/benchmarks/accuracy.py
        [--variants static motion sessions pnr1.5] [--seeds 0 1 2] [--factors 1 0.6 1.6]
        [--size 128] [--frames 1000] [--neurons 40] [--workdir /tmp/caliali-accuracy]
        [--config '{"residual_seeds": true}']

For every variant and seed it simulates a movie (``caliali simulate``; reused when already in
``--workdir`` with the same parameters), then runs ``caliali run`` in a fresh subprocess with the
default config plus the simulation's ``fs`` and its ``gSig`` times each factor (1 is the right
neuron radius, 0.6 and 1.6 deliberately wrong ones; 0 leaves gSig unset, for the run to estimate:
``auto`` in the tables, with the estimate), and scores the result with ``caliali score``'s
scorer: strict F1 (mask IoU >= 0.3 and trace correlation >= 0.8), the mask-IoU match alone (F1,
precision, recall, median IoU), the lenient F1 (footprint x trace cosine), and the global offset
between the result's and the truth's frames that the scorer found and applied. Prints one table row
per run (wall time included) and writes every figure to ``<workdir>/accuracy.json``.

Variants (``--variants``; the name sets the simulation, the rest is the simulator's default):

- ``static``: one session, no motion within it, PNR 2.
- ``motion``: one session with rigid motion within it (``--within-motion``), PNR 2.
- ``sessions``: three sessions of ``--frames`` / 3 frames each (``ideal``: the same neurons
  active in every session), aligned across sessions by caliali, PNR 2.
- ``remap``: as ``sessions`` with the simulator's ``remap`` variant (neurons change activity).
- ``dense``: one session, no motion, 2.5x ``--neurons`` in the same field.
- ``pnr<X>``: one session, no motion, peak-to-noise ratio X (e.g. ``pnr1.5``, ``pnr1``).

The default set (4 variants x 3 seeds x 3 factors of 128x128 px, 1,000 frames, 40 neurons) takes
about 20 minutes on a 2-core machine; ``--size 300 --frames 2000 --neurons 120`` matches
vs_peers.py's movie.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_VARIANTS = ["static", "motion", "sessions", "pnr1.5"]
AUTO = 0.0  # the gSig factor that leaves gSig out of the config: the run estimates it


def simulation_args(variant: str, args: argparse.Namespace) -> list[str]:
    """``caliali simulate`` options for a variant name."""
    common = ["--height", str(args.size), "--width", str(args.size)]
    one = ["--sessions", "1", "--frames", str(args.frames)]
    neurons = ["--neurons", str(args.neurons)]
    if variant == "static":
        return [*common, *one, *neurons]
    if variant == "motion":
        return [*common, *one, *neurons, "--within-motion"]
    if variant in ("sessions", "remap"):
        sim_variant = "ideal" if variant == "sessions" else "remap"
        per = str(max(args.frames // 3, 100))
        return [*common, "--sessions", "3", "--frames", per, *neurons, "--variant", sim_variant]
    if variant == "dense":
        return [*common, *one, "--neurons", str(round(args.neurons * 2.5))]
    if variant.startswith("pnr"):
        return [*common, *one, *neurons, "--pnr", str(float(variant[3:]))]
    raise SystemExit(f"unknown variant {variant!r}: use static, motion, sessions, remap, dense or pnr<X>")


def sim_folder(variant: str, seed: int, args: argparse.Namespace) -> Path:
    return args.workdir / f"sim_{variant}_{args.size}px_{args.frames}f_{args.neurons}n_s{seed}"


def simulate(variant: str, seed: int, args: argparse.Namespace) -> Path:
    """The simulated movie for ``variant`` and ``seed`` (reused when its options match)."""
    options = [*simulation_args(variant, args), "--seed", str(seed)]
    out = sim_folder(variant, seed, args)
    stamp = out / "options.json"
    if stamp.exists() and json.loads(stamp.read_text()) == options:
        return out
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "caliali", "simulate", str(out), *options], check=True, stdout=subprocess.DEVNULL
    )
    stamp.write_text(json.dumps(options))
    return out


def failure(returncode: int, log: Path) -> str:
    """``exit N: <caliali's error line>`` from a failed run's log."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    reason = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "no output")
    return f"exit {returncode}: {reason.removeprefix('error:').strip()}"


def simulated_shift(sim: Path) -> list[float]:
    """The simulator's own displacement of the movie from the truth's frame (dy, dx px): the mean of the true
    backward fields, averaged over sessions; what the scorer's global offset should find."""
    import numpy as np

    fields = np.load(sim / "ground_truth" / "fields.npy")
    return [round(float(fields[:, 0].mean()), 1), round(float(fields[:, 1].mean()), 1)]


def run_one(sim: Path, variant: str, seed: int, factor: float, args: argparse.Namespace) -> dict[str, Any]:
    """``caliali run`` with the default config plus the simulation's fs and gSig x ``factor``, scored."""

    meta = json.loads((sim / "ground_truth" / "meta.json").read_text())
    gsig = round(meta["gSig"] * factor, 2)
    out = args.workdir / f"run_{sim.name}_g{factor:g}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config = out.parent / f"{out.name}_config.json"
    options = {"gSig": gsig, "fs": meta["fs"]} if factor != AUTO else {"fs": meta["fs"]}
    config.write_text(json.dumps({**options, **json.loads(args.config)}))
    row: dict[str, Any] = {"variant": variant, "seed": seed, "factor": factor, "gSig": gsig}
    t0 = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "caliali",
                "run",
                "--input",
                str(sim),
                "--output",
                str(out),
                "--config",
                str(config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
    row["wall_s"] = time.perf_counter() - t0
    row["sim_shift"] = simulated_shift(sim)
    if proc.returncode != 0:
        row["error"] = failure(proc.returncode, out.parent / f"{out.name}.log")
        return row
    row.update(score_row(out, sim))
    if factor == AUTO:
        row["gSig"] = json.loads((out / "summary.json").read_text())["gSig"]  # the run's estimate
    return row


def score_row(out: Path, sim: Path) -> dict[str, Any]:
    """The figures of one run's table row."""
    from caliali.score import score

    s = score(out, sim)
    return dict(
        strict_f1=s.strict.f1,
        iou_f1=s.masks.f1,
        lenient_f1=s.neurons.f1,
        precision=s.strict.precision,
        recall=s.strict.recall,
        iou_precision=s.masks.precision,
        iou_recall=s.masks.recall,
        median_iou=s.masks.median_iou,
        n_true=s.strict.n_true,
        n_found=s.strict.n_found,
        offset=[s.offset.dy, s.offset.dx],
    )


HEADER = (
    "| variant | seed | gSig x | strict F1 | IoU F1 | lenient F1 | precision | recall | found / true "
    "| median IoU | offset (dy, dx) | sim shift | wall s |"
)


def factor_label(factor: float) -> str:
    return "auto" if factor == AUTO else f"{factor:g}"


def format_row(r: dict[str, Any]) -> str:
    head = f"| {r['variant']} | {r['seed']} | {factor_label(r['factor'])} ({r['gSig']:g}) |"
    if "error" in r:
        return f"{head} {r['error']} | | | | | | | | | {r['wall_s']:.0f} |"
    return (
        f"{head} {r['strict_f1']:.3f} | {r['iou_f1']:.3f} | {r['lenient_f1']:.3f} | {r['precision']:.3f} "
        f"| {r['recall']:.3f} | {r['n_found']} / {r['n_true']} | {r['median_iou']:.2f} "
        f"| ({r['offset'][0]}, {r['offset'][1]}) | ({r['sim_shift'][0]:g}, {r['sim_shift'][1]:g}) "
        f"| {r['wall_s']:.0f} |"
    )


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """Mean strict / IoU / lenient F1 over seeds, per variant and gSig factor; failed runs counted, not averaged."""
    lines = [
        "| variant | gSig x | runs (failed) | mean strict F1 | mean IoU F1 | mean lenient F1 |",
        "|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["variant"], r["factor"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for variant, factor in keys:
        group = [r for r in rows if (r["variant"], r["factor"]) == (variant, factor)]
        ok = [r for r in group if "error" not in r]
        head = f"| {variant} | {factor_label(factor)} | {len(group)} ({len(group) - len(ok)}) |"
        if not ok:
            lines.append(f"{head} - | - | - |")
            continue
        mean = {k: statistics.fmean(r[k] for r in ok) for k in ("strict_f1", "iou_f1", "lenient_f1")}
        lines.append(f"{head} {mean['strict_f1']:.3f} | {mean['iou_f1']:.3f} | {mean['lenient_f1']:.3f} |")
    return lines


def rescore(args: argparse.Namespace) -> None:
    """Score every finished run of <workdir>/accuracy.json again with the current scorer (wall times kept)."""
    path = args.workdir / "accuracy.json"
    rows = json.loads(path.read_text())
    for r in rows:
        if "error" not in r:
            sim = sim_folder(r["variant"], r["seed"], args)
            r.update(score_row(args.workdir / f"run_{sim.name}_g{r['factor']:g}", sim))
    path.write_text(json.dumps(rows, indent=1))


def report(workdir: Path) -> None:
    """Print the tables of a finished run."""
    rows = json.loads((workdir / "accuracy.json").read_text())
    print(HEADER)
    print("|" + "---|" * (HEADER.count(" | ") + 1))
    for r in rows:
        print(format_row(r))
    print()
    print("\n".join(summary(rows)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--factors",
        nargs="+",
        type=float,
        default=[1.0, 0.6, 1.6],
        help="gSig multipliers; 0 leaves gSig unset, for the run to estimate (shown as 'auto').",
    )
    parser.add_argument("--size", type=int, default=128, help="Movie height and width, px.")
    parser.add_argument("--frames", type=int, default=1000, help="Frames per movie (split over sessions).")
    parser.add_argument("--neurons", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/caliali-accuracy"))
    parser.add_argument(
        "--config", default="{}", help="More caliali options for every run (JSON), e.g. '{\"residual_seeds\": true}'."
    )
    parser.add_argument("--report", action="store_true", help="Only print the tables of <workdir>/accuracy.json.")
    parser.add_argument(
        "--rescore", action="store_true", help="Score the runs in <workdir>/accuracy.json again (same outputs), print."
    )
    args = parser.parse_args()
    if args.rescore:
        rescore(args)
    if args.report or args.rescore:
        report(args.workdir)
        return
    for v in args.variants:
        simulation_args(v, args)  # an unknown variant stops here, before any run
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    print(HEADER)
    print("|" + "---|" * (HEADER.count(" | ") + 1))
    for variant in args.variants:
        for seed in args.seeds:
            sim = simulate(variant, seed, args)
            for factor in args.factors:
                rows.append(run_one(sim, variant, seed, factor, args))
                print(format_row(rows[-1]), flush=True)
                (args.workdir / "accuracy.json").write_text(json.dumps(rows, indent=1))
    print()
    print("\n".join(summary(rows)))
    print(f"\n{len(rows)} runs in {time.perf_counter() - t0:.0f} s; figures in {args.workdir / 'accuracy.json'}")


if __name__ == "__main__":
    main()
