"""Per-task overhead of the slurm executor against the local executor, both on this machine.

A two-node Slurm cluster is started here (:class:`ncaas.testing.slurm_cluster.LocalSlurmCluster`:
munged, slurmctld, slurmd ``n1`` and ``n2`` on loopback, one CPU each, so both together own
this machine's two cores, and slurmdbd on MariaDB for sacct), with the storage root in a
local folder standing for the cluster's shared filesystem. The same framestats jobs run on each path, in one run:

- a one-dataset warm-up job (the environment is built once, on the manager's side);
- ``--repeats`` one-dataset jobs of a task doing nothing, one after the other: their median
  wall time (submit file ingested to ``end.json``) is the path's cost per one-task job;
- a job of ``--datasets`` datasets of a CPU-bound task (``--cpu-seconds`` each): per task, its
  wall time (launch to the manager recording its end) minus its command's CPU seconds.

For Slurm, where a task's time went (medians): waiting for Slurm to start the job on a node
(submission to the node's first instruction), verifying the environment on the node, the
command under its supervisor, and from the command's end to the manager recording it (the
job leaving Slurm's queue, the accounting read); and the job's elapsed time as Slurm counts it.

Usage: ``.venv/bin/python benchmarks/slurm_overhead.py [--datasets 4] [--cpu-seconds 2] [--repeats 5]``.
Needs root and Debian's slurmctld, slurmd, slurmdbd, slurm-client, munge and mariadb-server
(``make system-deps``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _write_inputs(root: Path, count: int) -> list[str]:
    names = []
    for i in range(count):
        path = root / "lab" / "inputs" / f"d{i}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.random.default_rng(i).random((10, 16, 16), dtype=np.float32))
        names.append(path.name)
    return names


def _run_job(manager, root: Path, name: str, datasets: list[str], config: dict) -> tuple[float, object]:
    from ncaas.jobs.states import JobState

    (root / "lab" / "configs").mkdir(parents=True, exist_ok=True)
    (root / "lab" / "configs" / f"{name}.json").write_text(json.dumps(config))
    body = {"analysis": "framestats", "dataname": datasets, "configname": f"{name}.json", "timestamp": time.time()}
    path = root / "lab" / "submissions" / f"{name}.submit.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body))
    started = time.monotonic()
    job = manager.ingest_file("lab", str(path))
    job = manager.run_job(job.id)
    wall = time.monotonic() - started
    if job.state != JobState.SUCCEEDED:
        sys.exit(f"job {name} ended {job.state}: " + "; ".join(t.cause for t in manager.db.tasks(job.id)))
    return wall, job


def _overheads(manager, job) -> list[float]:
    """Per task: launch to the manager recording its end, minus its command's CPU seconds."""
    out = []
    for task in manager.db.tasks(job.id):
        [attempt] = json.loads(task.attempts_json)
        out.append((attempt["ended_ms"] - attempt["launched_ms"]) / 1000 - (task.cpu_seconds or 0.0))
    return out


def _slurm_breakdown(manager, job) -> dict[str, float]:
    recorded = {e.dataset: e.at_ms for e in manager.db.events(job.id) if e.to_state == "succeeded"}
    keys: dict[str, list[float]] = {}
    for task in manager.db.tasks(job.id):
        [attempt] = json.loads(task.attempts_json)
        environment = json.loads(task.environment_json)
        slurm = environment["slurm"]
        verify = environment.get("verify_seconds", 0.0)
        parts = {
            "queue_s": (attempt["started_ms"] - attempt["launched_ms"]) / 1000,
            "verify_s": verify,
            "command_s": (task.ended_ms - attempt["started_ms"]) / 1000 - verify,
            "end_to_recorded_s": (recorded[task.dataset] - task.ended_ms) / 1000,
            "slurm_elapsed_s": slurm["elapsed_s"] or 0.0,
        }
        for key, value in parts.items():
            keys.setdefault(key, []).append(value)
    return {k: statistics.median(v) for k, v in keys.items()}


def _measure(label: str, manager, root: Path, datasets: list[str], cpu_seconds: float, repeats: int) -> dict:
    warm, _ = _run_job(manager, root, f"{label}-warmup", datasets[:1], {"cpu_seconds": 0})
    trivial = [
        _run_job(manager, root, f"{label}-trivial{i}", datasets[i % len(datasets) :][:1], {"cpu_seconds": 0})[0]
        for i in range(repeats)
    ]
    wall, job = _run_job(manager, root, f"{label}-main", datasets, {"cpu_seconds": cpu_seconds})
    return {"warmup": warm, "trivial": trivial, "wall": wall, "overheads": _overheads(manager, job), "job": job}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=4)
    parser.add_argument("--cpu-seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5, help="one-task jobs timed per path")
    args = parser.parse_args()

    from ncaas.blueprint import BlueprintRegistry
    from ncaas.executors.local import LocalExecutor
    from ncaas.executors.slurm import SlurmExecutor
    from ncaas.executors.slurm_profile import SiteProfile
    from ncaas.jobs.db import JobDB
    from ncaas.jobs.manager import Manager
    from ncaas.storage import Storage
    from ncaas.testing.slurm_cluster import LocalSlurmCluster

    scratch = Path(tempfile.mkdtemp(prefix="ncaas-bench-"))
    t0 = time.monotonic()
    cluster = LocalSlurmCluster(cpus=1, memory=3 * 2**30, accounting=True).start()
    slurm_up = time.monotonic() - t0
    os.environ.update(cluster.env())
    registry = BlueprintRegistry.discover([REPO / "analyses"])
    try:
        runs = {}
        for label in ("local", "slurm"):
            root = scratch / label
            datasets = _write_inputs(root, args.datasets)
            storage = Storage(root)
            executor = LocalExecutor() if label == "local" else SlurmExecutor(storage, SiteProfile())
            db = JobDB(f"sqlite:///{scratch / f'{label}.sqlite'}")
            manager = Manager(storage, db, executor=executor, registry=registry)
            runs[label] = _measure(label, manager, root, datasets, args.cpu_seconds, args.repeats)
            if label == "slurm":
                breakdown = _slurm_breakdown(manager, runs[label]["job"])
            db.close()
    finally:
        cluster.stop()

    cores = len(os.sched_getaffinity(0))
    print(
        f"slurm_overhead: {args.datasets} datasets x {args.cpu_seconds:g} s CPU task (framestats), {cores} cores, "
        f"load average at the end {os.getloadavg()[0]:.1f}; 2-node Slurm cluster up in {slurm_up:.1f} s"
    )
    n = args.datasets
    print(
        f"{'path':<7}{'1-task job, no work (median)':>30}{f'{n}-task job':>12}"
        f"{'per-task overhead, median (min-max)':>38}"
    )
    for label, run in runs.items():
        over = run["overheads"]
        print(
            f"{label:<7}{statistics.median(run['trivial']):>29.2f}s{run['wall']:>11.2f}s"
            f"{statistics.median(over):>22.2f} s ({min(over):.2f}-{max(over):.2f} s)"
        )
    job_cost = statistics.median(runs["slurm"]["trivial"]) - statistics.median(runs["local"]["trivial"])
    task_cost = statistics.median(runs["slurm"]["overheads"]) - statistics.median(runs["local"]["overheads"])
    print(
        f"slurm - local: per one-task job {job_cost:+.2f} s, per task in the {n}-task job {task_cost:+.2f} s "
        f"(medians of {args.repeats} and {n})"
    )
    print("  where a Slurm task's time went (median): " + ", ".join(f"{k} {v:.2f} s" for k, v in breakdown.items()))


if __name__ == "__main__":
    main()
