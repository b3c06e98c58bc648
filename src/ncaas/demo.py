"""``python -m ncaas.demo`` (``make demo``): the full flow on a few generated datasets.

Generates three small image stacks (one of them a folder of two stacks) in
``./demo-data/demo/inputs/``, writes a config and a submit file exactly as a plain file
copy would, runs the job embedded (no servers) with the ``framestats`` analysis, reruns
it from its certificate, and prints where the results and the certificate are.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape

from .blueprint import BlueprintRegistry
from .jobs.db import JobDB, default_db_url
from .jobs.manager import Manager
from .provenance.rerun import rerun as rerun_job
from .provenance.verdicts import summary_line, verdicts_ok
from .storage import Storage

__all__ = ["main"]

GROUP = "demo"


def _stack(path: Path, frames: int, seed: int) -> None:
    """A drifting blob over noise: enough structure for per-frame statistics to differ."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    t = np.arange(frames)[:, None, None]
    blob = np.exp(-((yy - 16 - 6 * np.sin(t / 9)) ** 2 + (xx - 16) ** 2) / 30)
    np.save(path, (blob + 0.1 * rng.standard_normal((frames, 32, 32))).astype(np.float32))


def generate(root: Path) -> list[str]:
    inputs = root / GROUP / "inputs"
    (inputs / "session-folder").mkdir(parents=True, exist_ok=True)
    _stack(inputs / "mouse1.npy", 120, 1)
    _stack(inputs / "mouse2.npy", 90, 2)
    _stack(inputs / "session-folder" / "day1.npy", 60, 3)
    _stack(inputs / "session-folder" / "day2.npy", 60, 4)
    configs = root / GROUP / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    (configs / "demo.yaml").write_text("stats: [mean, std, max]\nbatch_frames: 10\nsleep_per_frame: 0.01\n")
    return ["mouse1.npy", "mouse2.npy", "session-folder"]


def main(root: str | os.PathLike[str] = "demo-data") -> int:
    out = Console(highlight=False)
    root = Path(root).resolve()
    datasets = generate(root)
    storage = Storage(root)
    db = JobDB(default_db_url(storage.root))
    manager = Manager(
        storage,
        db,
        registry=BlueprintRegistry.discover(),
        notify=lambda m: out.print(f"  [dim]{time.strftime('%H:%M:%S')}[/dim] {escape(m)}"),  # m may quote a task
    )
    submission = root / GROUP / "submissions" / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.submit.json"
    submission.parent.mkdir(parents=True, exist_ok=True)
    submission.write_text(
        json.dumps(
            {"analysis": "framestats", "dataname": datasets, "configname": "demo.yaml", "timestamp": time.time()}
        )
    )
    out.print(f"[bold]ncaas demo[/bold]: 3 datasets in {root / GROUP / 'inputs'}; submitted {submission.name}")
    job = manager.ingest_file(GROUP, str(submission))
    if job is None or job.state == "rejected":
        out.print(f"[red]rejected:[/red] {job.cause if job else 'submit file vanished'}")
        return 1
    job = manager.run_job(job.id)
    results = Path(job.results_dir)
    out.print(f"job {job.id}: [bold]{job.state}[/bold]")
    out.print("rerunning it (same analysis version, config and inputs, from its signed certificate) ...")
    rerun, rows = rerun_job(manager, job.id)
    same = verdicts_ok(rows)
    out.print(f"rerun {rerun.id}: {summary_line(rows)}")
    out.print()
    out.print(f"results:      {results}")
    out.print(f"  outputs:    {results / 'outputs'}")
    out.print(f"  status:     {results / 'status'}")
    out.print(f"  logs:       {results / 'logs'}")
    out.print(f"certificate:  {results / 'certificate.txt'} (and certificate.json)")
    out.print(f"try:          .venv/bin/ncaas status {job.id} --root {root}")
    db.close()
    ok = job.state == "succeeded" and rerun.state == "succeeded" and same
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
