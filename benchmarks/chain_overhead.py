"""What a chain costs over running its two steps by hand.

The same two steps, caliali-align then framestats on the aligned movies, on the same small
simulated experiment (2 sessions), run two ways with the real ``ncaas`` command (embedded,
environments already built):

* by hand: ``ncaas submit caliali-align EXP --wait``, then ``ncaas submit framestats ALIGNED
  --wait`` on the folder the first job wrote (copied into inputs/ by the second submit, as a
  user passing a result on would);
* as a chain: ``ncaas submit align-stats.yaml EXP --wait``.

Prints the wall time of each (median of ``--repeats``, runs interleaved), the chain's overhead,
and from the job database the chain's gap between the first step's end and the second step's
start (the second job is made once the first job's certificate is written).

Usage: ``.venv/bin/python benchmarks/chain_overhead.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NCAAS = [sys.executable, "-m", "ncaas"]
ALIGN_CONFIG = {"gSig": 3, "memory_budget": "128MB", "movie_format": "npy"}


def _run(args: list[str], root: Path) -> str:
    env = {**os.environ, "NCAAS_ROOT": str(root), "COLUMNS": "200"}
    done = subprocess.run([*NCAAS, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"ncaas {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def by_hand(work: Path, experiment: Path, config: Path) -> float:
    root = work / f"hand-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    first = _run(
        ["submit", "caliali-align", str(experiment), "--config", str(config), "--group", "lab", "--wait"], root
    )
    job = first.split()[1].rstrip(":")
    aligned = root / "lab" / "results" / job / "outputs" / experiment.name / "aligned"
    _run(["submit", "framestats", str(aligned), "--group", "lab", "--wait"], root)
    return time.perf_counter() - t0


def chained(work: Path, experiment: Path, pipeline: Path) -> tuple[float, float]:
    root = work / f"chain-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    shown = _run(["submit", str(pipeline), str(experiment), "--group", "lab", "--wait"], root)
    wall = time.perf_counter() - t0
    chain = shown.split()[1].rstrip(":")
    detail = json.loads((root / "lab" / "results" / chain / "chain.json").read_text())
    align, stats = detail["datasets"][0]["steps"]
    ended = json.loads((Path(align["results_dir"]) / "certificate.json").read_text())["job"]["ended_ms"]
    started = json.loads((Path(stats["results_dir"]) / "certificate.json").read_text())["tasks"][0]["start_ms"]
    return wall, (started - ended) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ncaas-chain-bench-") as tmp:
        work = Path(tmp)
        sim = subprocess.run(
            [sys.executable, "-m", "caliali", "simulate", str(work / "sim"), "--sessions", "2", "--frames", "120"]
            + ["--neurons", "8", "--seed", "3", "--height", "64", "--width", "80"],
            capture_output=True,
            text=True,
        )
        if sim.returncode != 0:
            raise SystemExit(sim.stderr)
        experiment = work / "exp"
        experiment.mkdir()
        for name in ("ses01.tif", "ses02.tif"):
            (work / "sim" / name).rename(experiment / name)
        config = work / "align.json"
        config.write_text(json.dumps(ALIGN_CONFIG))
        pipeline = work / "align-stats.yaml"
        pipeline.write_text(
            json.dumps(
                {
                    "name": "align-stats",
                    "steps": [
                        {"name": "align", "analysis": "caliali-align", "config": ALIGN_CONFIG},
                        {"name": "stats", "analysis": "framestats", "input": {"path": "aligned"}},
                    ],
                }
            )
        )
        by_hand(work, experiment, config)  # builds both environments once, outside the timings
        hand, chain, gaps = [], [], []
        for _ in range(args.repeats):
            hand.append(by_hand(work, experiment, config))
            wall, gap = chained(work, experiment, pipeline)
            chain.append(wall)
            gaps.append(gap)
    h, c = statistics.median(hand), statistics.median(chain)
    print(f"two steps by hand (two `ncaas submit --wait`): {h:.2f} s  (runs: {', '.join(f'{x:.2f}' for x in hand)})")
    print(f"as a chain (one `ncaas submit PIPELINE --wait`): {c:.2f} s  (runs: {', '.join(f'{x:.2f}' for x in chain)})")
    print(f"chain overhead: {c - h:+.2f} s ({(c - h) / h * 100:+.1f}%)")
    print(f"chain: first step's end -> second step's start: median {statistics.median(gaps):.2f} s")


if __name__ == "__main__":
    main()
