"""Scale-out: the same job on the local executor and on a two-node Ray cluster, both on this machine.

A job of 8 datasets of a CPU-bound task (framestats with ``cpu_seconds``, default 10 s)
runs twice:

- ``local``: local executor, storage in a local directory;
- ``ray``: a Ray cluster of two nodes started here (head 127.0.0.2 + worker 127.0.0.3,
  token auth, each node ``--num-cpus 1`` so both together own this machine's 2 cores)
  with the group's storage on a SeaweedFS S3 server on 127.0.0.1.

Each path first runs a one-dataset warm-up job (so environments are built and Ray
workers started), then ``--repeats`` one-dataset jobs of a task doing nothing: the
difference of their median wall times (submission to ``end.json``) is the Ray path's
cost per job of one task. Then the 8-dataset job on each path, in the same run:
submit-to-end time (submission to ``end.json``) next to the ideal ``ceil(8 / cores) * task``,
and each task's overhead: its wall time (from its launch to the manager recording its
end) minus the CPU seconds its command used. For Ray, where that overhead goes, per task
(medians): waiting in Ray's queue, the node's environment check, fetching inputs, the
command itself, uploading outputs, and the manager noticing the end.

Usage: ``.venv/bin/python benchmarks/ray_scaleout.py [--datasets 8] [--cpu-seconds 10]``.
The machine is shared by other work: the figures are noisy, and the Ray processes
themselves (two raylets, GCS, S3 server) take CPU from the same two cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _write_inputs(storage, count: int, scratch: Path) -> list[str]:
    names = []
    for i in range(count):
        local = scratch / f"d{i}.npy"
        np.save(local, np.random.default_rng(i).random((10, 16, 16), dtype=np.float32))
        storage.put(local, storage.resolve("lab", "inputs", local.name))
        names.append(local.name)
    return names


def _run_job(manager, storage, name: str, datasets: list[str], config: dict) -> tuple[float, object]:
    from ncaas.jobs.states import JobState

    storage.write_text(storage.join("lab", "configs", f"{name}.json"), json.dumps(config))
    body = {"analysis": "framestats", "dataname": datasets, "configname": f"{name}.json", "timestamp": time.time()}
    path = storage.join("lab", "submissions", f"{name}.submit.json")
    storage.write_text(path, json.dumps(body))
    started = time.monotonic()
    job = manager.ingest_file("lab", path)
    job = manager.run_job(job.id)
    wall = time.monotonic() - started
    if job.state != JobState.SUCCEEDED:
        sys.exit(f"job {name} ended {job.state}: {job.cause}")
    return wall, job


def _spans(manager, job) -> list[float]:
    """Per task: seconds from its launch to the manager recording its end."""
    launched, ended = {}, {}
    for event in manager.db.events(job.id):
        if event.to_state == "running":
            launched[event.dataset] = event.at_ms
        elif event.to_state == "succeeded":
            ended[event.dataset] = event.at_ms
    return [(ended[d] - launched[d]) / 1000 for d in ended]


def _overheads(manager, job) -> list[float]:
    """Per task: its wall time (launch to the manager recording its end) minus its command's CPU seconds."""
    spans = dict(zip([e.dataset for e in manager.db.events(job.id) if e.to_state == "succeeded"], _spans(manager, job)))
    return [spans[t.dataset] - (t.cpu_seconds or 0.0) for t in manager.db.tasks(job.id)]


def _node_timings(manager, storage, job, datasets: list[str]) -> dict[str, float]:
    """Where a Ray task's time went (medians over the job's tasks)."""
    recorded = {e.dataset: e.at_ms for e in manager.db.events(job.id) if e.to_state == "succeeded"}
    keys: dict[str, list[float]] = {}
    for dataset in datasets:
        status = json.loads(storage.read_text(f"{job.results_dir}/status/{dataset}.json"))
        [attempt] = status["attempts"]
        node = status.get("node_timings", {})
        on_node = (status["end_ms"] - attempt["started_ms"]) / 1000  # until its command ended
        timings = {
            "queue_s": (attempt["started_ms"] - attempt["launched_ms"]) / 1000,
            "environment_s": node.get("environment_s", 0.0),
            "stage_s": node.get("stage_s", 0.0),
            "command_s": on_node - node.get("environment_s", 0.0) - node.get("stage_s", 0.0),
            "upload_s": node.get("upload_s", 0.0),
            "end_to_recorded_s": (recorded[dataset] - status["end_ms"]) / 1000,  # upload included
        }
        for key, value in timings.items():
            keys.setdefault(key, []).append(value)
    return {k: statistics.median(v) for k, v in keys.items()}


def _measure(label: str, manager, storage, datasets: list[str], cpu_seconds: float, repeats: int) -> dict:
    warm, _ = _run_job(manager, storage, f"{label}-warmup", datasets[:1], {"cpu_seconds": 0})
    # Per-task cost of the path: one-dataset jobs of a task that does nothing, one after the other.
    trivial = [
        _run_job(manager, storage, f"{label}-trivial{i}", datasets[i % len(datasets) :][:1], {"cpu_seconds": 0})[0]
        for i in range(repeats)
    ]
    wall, job = _run_job(manager, storage, f"{label}-main", datasets, {"cpu_seconds": cpu_seconds})
    cpu = statistics.median(t.cpu_seconds or 0.0 for t in manager.db.tasks(job.id))
    return {
        "warmup": warm,
        "trivial": trivial,
        "wall": wall,
        "spans": _spans(manager, job),
        "overheads": _overheads(manager, job),
        "cpu": cpu,
        "job": job,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=8)
    parser.add_argument("--cpu-seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5, help="one-task jobs timed per path")
    args = parser.parse_args()

    from ncaas.testing.ray_cluster import LocalRayCluster, LocalS3Server

    scratch = Path(tempfile.mkdtemp(prefix="ncaas-bench-"))
    os.environ["NCAAS_STATE"] = str(scratch / "state")
    t0 = time.monotonic()
    s3 = LocalS3Server(bucket="ncaas-bench").start()
    s3_up = time.monotonic() - t0
    os.environ.update(s3.env())
    t0 = time.monotonic()
    cluster = LocalRayCluster(num_cpus=1, memory=4 * 1024**3, env=s3.env()).start()
    ray_up = time.monotonic() - t0
    os.environ.update(cluster.env())  # before ray is imported
    try:
        from ncaas.blueprint import BlueprintRegistry
        from ncaas.executors.local import LocalExecutor
        from ncaas.executors.ray import RayExecutor
        from ncaas.jobs.db import JobDB
        from ncaas.jobs.manager import Manager
        from ncaas.storage import Storage

        registry = BlueprintRegistry.discover([REPO / "analyses"])
        cores = len(os.sched_getaffinity(0))

        local_storage = Storage(scratch / "root")
        datasets = _write_inputs(local_storage, args.datasets, scratch)
        local_manager = Manager(
            local_storage, JobDB(f"sqlite:///{scratch / 'local.sqlite'}"), executor=LocalExecutor(), registry=registry
        )
        local = _measure("local", local_manager, local_storage, datasets, args.cpu_seconds, args.repeats)

        s3_storage = Storage(f"s3://{s3.bucket}/bench")
        _write_inputs(s3_storage, args.datasets, scratch)
        ray_executor = RayExecutor(cluster.address, storage=s3_storage)
        ray_manager = Manager(
            s3_storage,
            JobDB(f"sqlite:///{scratch / 'ray.sqlite'}"),
            executor=ray_executor,
            registry=registry,
            scan_interval=1.0,
        )
        ray_run = _measure("ray", ray_manager, s3_storage, datasets, args.cpu_seconds, args.repeats)
        nodes = sorted(
            {
                json.loads(s3_storage.read_text(f"{ray_run['job'].results_dir}/status/{d}.json"))["node"]
                for d in datasets
            }
        )
        breakdown = _node_timings(ray_manager, s3_storage, ray_run["job"], datasets)
    finally:
        import ray

        ray.shutdown()
        cluster.stop()
        s3.stop()

    ideal = math.ceil(args.datasets / cores) * args.cpu_seconds
    print(
        f"ray_scaleout: {args.datasets} datasets x {args.cpu_seconds:g} s CPU task (framestats), "
        f"{cores} cores (load average at the end: {os.getloadavg()[0]:.1f}: other work on the machine "
        f"slows tasks down on both paths alike); S3 server up in {s3_up:.1f} s, 2-node Ray cluster up in {ray_up:.1f} s"
    )
    n = args.datasets
    print(
        f"{'path':<8}{f'{n}-task job submit-to-end':>26}{'ideal':>9}{'efficiency':>12}"
        f"{'task wall (median)':>20}{'task CPU (median)':>19}{'per-task overhead, median (min-max)':>38}"
        f"{'1-task job, no work':>21}"
    )
    for label, run in (("local", local), ("ray", ray_run)):
        over = run["overheads"]
        print(
            f"{label:<8}{run['wall']:>24.2f} s{ideal:>7.1f} s{ideal / run['wall']:>11.0%}"
            f"{statistics.median(run['spans']):>18.2f} s{run['cpu']:>17.2f} s"
            f"{statistics.median(over):>22.2f} s ({min(over):.2f}-{max(over):.2f} s)"
            f"{statistics.median(run['trivial']):>19.2f} s"
        )
    per_task = statistics.median(ray_run["overheads"]) - statistics.median(local["overheads"])
    one_task = statistics.median(ray_run["trivial"]) - statistics.median(local["trivial"])
    print(
        f"ray - local: per-task overhead {per_task:+.2f} s (the {n}-task job), 1-task job {one_task:+.2f} s "
        f"(medians of {args.repeats}); the {n}-task job ran on nodes {nodes}"
    )
    print(
        "  where a ray task's time went (median): "
        + ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in breakdown.items())
    )
    print(
        f"8-task job: ray wall / local wall = {ray_run['wall'] / local['wall']:.2f} "
        f"(warm-up jobs: local {local['warmup']:.1f} s, ray {ray_run['warmup']:.1f} s)"
    )


if __name__ == "__main__":
    main()
