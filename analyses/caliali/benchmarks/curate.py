"""What `caliali curate` costs on a long, large result: wall and CPU seconds and peak RSS.

Writes a result of ``--neurons`` Gaussian footprints on a 200 x 300 grid and random traces of
``--frames`` frames in two sessions with `caliali.outputs.write_outputs` (arrays, NWB, CaImAn
file, QC, as a run writes them; with each neuron's resting level ``f0`` and the background
``b0``), then a review's decisions (``--rejected`` neurons rejected, as many accepted, and
``--merges`` merges of a neuron with its nearest neighbour), and runs ``python -m caliali
curate`` on them in a fresh process: its wall time, CPU time and peak RSS (the child's
``ru_maxrss``), and the size of one trace array for scale.

Usage::

    .venv/bin/python analyses/caliali/benchmarks/curate.py [--neurons 500] [--frames 100000]
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from outputs import synthetic_extraction  # noqa: E402  (a sibling script: the same synthetic result)


def _result(k: int, t: int, folder: Path) -> Path:
    from caliali.outputs import write_outputs

    extraction = synthetic_extraction(k, t, folder, non_negative=True)
    out = folder / "result"
    write_outputs(extraction, out, fs=20.0, identifier="caliali-benchmark-curate")
    (out / "summary.json").write_text(json.dumps({"config": {"fs": 20.0}, "nwb": {"identifier": "bench"}}))
    return out


def _decisions(result: Path, rejected: int, merges: int, path: Path) -> Path:
    meta = json.loads((result / "arrays" / "meta.json").read_text())
    k = meta["n_neurons"]
    centers = np.asarray(meta["centers"])
    used: set[int] = set()
    groups = []
    for i in range(k):
        if len(groups) == merges:
            break
        if i in used:
            continue
        distance = ((centers - centers[i]) ** 2).sum(axis=1)
        distance[list(used | {i})] = np.inf
        j = int(np.argmin(distance))
        groups.append(sorted([i, j]))
        used |= {i, j}
    free = [i for i in range(k) if i not in used]
    final = {"accepted": free[rejected : 2 * rejected], "rejected": free[:rejected], "merges": sorted(groups)}
    data = {"format": "ncaas-review/1", "job": "bench", "dataset": "bench", "certificate_sha256": "0" * 64}
    path.write_text(json.dumps({**data, "n_neurons": k, "final": final, "log": []}, sort_keys=True))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--neurons", type=int, default=500)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--rejected", type=int, default=50)
    parser.add_argument("--merges", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.time()
        result = _result(args.neurons, args.frames, folder)
        print(f"result written in {time.time() - start:.1f} s", flush=True)
        decisions = _decisions(result, args.rejected, args.merges, folder / "decisions.json")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.time()
        done = subprocess.run(
            [sys.executable, "-m", "caliali", "curate", "--result", str(result), "--decisions", str(decisions),
             "--output", str(folder / "curated")],
            capture_output=True,
            text=True,
        )  # fmt: skip
        wall = time.time() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        trace_mib = args.neurons * args.frames * 4 / 2**20
        print(done.stdout.strip())
        print(
            f"caliali curate: {args.neurons} neurons x {args.frames} frames ({trace_mib:.0f} MiB per trace array), "
            f"{args.rejected} rejected, {args.merges} merges: wall {wall:.1f} s, CPU {cpu:.1f} s, "
            f"peak RSS {after.ru_maxrss / 1024:.0f} MiB"
        )


if __name__ == "__main__":
    main()
