"""One task inside its Slurm job: verify the environment, run exactly as locally, leave a record.

The batch script of each task is ``exec PYTHON -m ncaas.executors._slurm_node RUN_DIR``. The run
folder lies on the cluster's shared filesystem, beside the storage root, and holds
``slurm-task.json`` (the task as the manager wrote it). Here, on the node, this module

1. verifies the analysis environment the manager built on the shared path, file by file
   against its manifest, and that it is the one the manager chose (no build, no network);
2. runs the task through :class:`~ncaas.executors.local.LocalExecutor`: the same supervisor
   (``_runner.py``), sandbox, time limit, log and progress files as on one machine;
3. writes ``slurm-exit.json``: the exit record with the node, the environment and the
   sandbox's isolation, then dissolves the sandbox.

A SIGTERM (``scancel --batch --signal=TERM``, how the manager cancels) stops the task the
local way, so it is recorded as cancelled.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..exceptions import NcaasError
from ..isolation import environments
from ..isolation.sandbox import MODE_VARIABLE, SandboxUnavailable, bwrap_binary
from .base import Lost, TaskSpec
from .local import LocalExecutor

__all__ = ["EXIT_FILE", "TASK_FILE", "main", "spec_from_json"]

TASK_FILE = "slurm-task.json"
EXIT_FILE = "slurm-exit.json"
_PATHS = ("cwd", "output_dir", "scratch_dir", "log_path", "progress_path", "run_dir")


def _now_ms() -> int:
    return int(time.time() * 1000)


def spec_from_json(data: dict[str, Any]) -> TaskSpec:
    """The TaskSpec that :meth:`TaskSpec.to_json` wrote."""
    values = {k: v for k, v in data.items() if k != "blueprint"}
    for key in _PATHS:
        values[key] = Path(values[key])
    values["inputs"] = [Path(p) for p in values["inputs"]]
    values["environment"] = Path(values["environment"]) if values.get("environment") else None
    return TaskSpec(**values)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def verify_environment(expected: dict[str, Any] | None) -> dict[str, Any]:
    """Check, on this node, the environment the manager built: every file, and that it is the
    one the manager chose (its manifest's hash). Returns what the certificate keeps of it."""
    if not expected or not expected.get("path"):
        return {"python": sys.executable}
    path = Path(expected["path"])
    try:
        manifest = json.loads(Path(f"{path}.json").read_text())
    except (OSError, ValueError) as exc:
        raise NcaasError(
            f"the analysis environment {path} is not readable here ({exc}); environments must lie on a "
            "filesystem every node mounts at the same path (the site profile's `environments`)"
        ) from None
    env = environments.Environment(path.name, path, manifest)
    if expected.get("manifest_hash") and env.manifest_sha256 != expected["manifest_hash"]:
        raise NcaasError(f"the analysis environment {path} was replaced since the manager built it; not used")
    check = environments.verify(env)
    if not check.ok:
        raise NcaasError(f"the analysis environment {path} changed on disk since it was built ({check.summary()})")
    return {**expected, "verified_files": check.files, "verify_seconds": round(check.seconds, 3)}


def _progress(spec: TaskSpec, message: str) -> None:
    data = {**spec.status_fields, "progress": 0.0, "message": message, "updated_ms": _now_ms()}
    spec.progress_path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(spec.progress_path, data)


def _check_bubblewrap(node: str) -> None:
    """Refuse, in words for the cluster's administrator, a node where bubblewrap cannot run."""
    try:
        bwrap_binary()
    except SandboxUnavailable as exc:
        why = str(exc).split(", but ", 1)[-1].split(". Run ", 1)[0]
        raise NcaasError(
            f"tasks run in a bubblewrap sandbox, and it cannot run on Slurm node {node}: {why}. Where the "
            "cluster does not allow it (no user namespaces on its nodes), set `sandbox: off` in the Slurm "
            "site profile: tasks then run without a sandbox, and their certificates say so"
        ) from None


def _run(task: dict[str, Any], spec: TaskSpec, node: str, stop: threading.Event) -> dict[str, Any]:
    _progress(spec, f"verifying its environment on node {node}")
    environment = {**verify_environment(task.get("environment")), "node": node}
    if stop.is_set():
        return {"cancelled": True, "end_ms": _now_ms(), "environment": environment, "argv": spec.argv}
    if task.get("sandbox", True):
        _check_bubblewrap(node)
    local = LocalExecutor(cpus=spec.cpus)
    handle = local.launch(spec)
    asked = False
    record = None
    while record is None:
        if stop.is_set() and not asked:
            local.cancel(handle)
            asked = True
        record = local.poll(handle)
        if record is None:
            time.sleep(0.1)
    if isinstance(record, Lost):
        return {"lost": True, "why": record.why}
    return {
        **record.to_json(),
        "environment": environment,
        "argv": spec.argv,
        "node_isolation": local.isolation,
    }


def main(run_dir: Path) -> int:
    started = _now_ms()
    task = json.loads((run_dir / TASK_FILE).read_text())
    spec = spec_from_json(task["spec"])
    os.environ[MODE_VARIABLE] = "on" if task.get("sandbox", True) else "off"
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    job_id = os.environ.get("SLURM_JOB_ID")
    spec.status_fields.update(state="running", node=node, node_started_ms=started, slurm_job=job_id)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        record = _run(task, spec, node, stop)
    except (NcaasError, OSError) as exc:
        record = {"error": f"{exc} (on Slurm node {node})", "start_ms": started, "end_ms": _now_ms()}
    record.update(node=node, slurm_job=job_id, node_started_ms=started)
    _write_json(run_dir / EXIT_FILE, record)
    LocalExecutor().finish(spec.run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
