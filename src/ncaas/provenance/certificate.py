"""Certificates: the provenance of a job, enough to reproduce it.

``certificate.json`` records the blueprint (name, version, sha256, git commit and its
full content), the environment (lock and manifest hashes once environments exist),
the isolation applied, the platform version, every input's size and sha256, the exact
config and its hash, the command, executor and host, per-task timings (ms), exit
status, CPU seconds, peak memory, and the sha256 of every output file.
Links and special files among inputs and outputs are recorded as what they are
(``{"path", "kind": "symlink", "target"}``, ``{"path", "kind": "fifo"}``, ...):
never followed, never opened.
``certificate.txt`` says the same for a human.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..exceptions import CertificateError
from ..storage import Storage

__all__ = ["build_certificate", "fingerprint", "load_certificate", "render_text"]

CERTIFICATE_VERSION = 1


def fingerprint(entry: dict[str, Any]) -> str:
    """What identifies an entry's content: a file's sha256, else its kind (and a link's text)."""
    if "sha256" in entry:
        return entry["sha256"]
    return f"{entry.get('kind')}:{entry['target']}" if "target" in entry else str(entry.get("kind"))


def _tree_digest(files: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for entry in sorted(files, key=lambda e: e["path"]):
        digest.update(f"{entry['path']}\0{fingerprint(entry)}\n".encode())
    return digest.hexdigest()


def describe_input(storage: Storage, path: str, rel: str) -> dict[str, Any]:
    """Size and sha256 of a dataset; a folder also lists each file.

    Nothing is followed, the dataset itself included: a link is recorded as a link
    (its text, not its target's content), a FIFO or device by its kind.
    """
    if storage.kind(path) == "folder":
        files = storage.describe_tree(path, follow=False)
        return {
            "path": rel,
            "kind": "folder",
            "size": sum(f.get("size", 0) for f in files),
            "sha256": _tree_digest(files),
            "files": files,
        }
    [entry] = storage.describe_tree(path, follow=False) or [{"kind": "missing"}]
    return {**entry, "path": rel, "kind": entry.get("kind", "file")}


def _outputs(storage: Storage, folder: str) -> list[dict[str, Any]]:
    """Every entry a task left in its output folder; links and special files as such, unread."""
    try:
        if storage.kind(folder) != "folder":
            return []
    except FileNotFoundError:
        return []
    return storage.describe_tree(folder, follow=False)


def build_certificate(
    storage: Storage, job: Any, tasks: list[Any], events: list[Any], *, executor: dict[str, Any], isolation: str
) -> dict[str, Any]:
    """The certificate of a finished job, from its database rows and its files."""
    environment: dict[str, Any] = {"python": None, "lock_hash": None, "manifest_hash": None}
    blueprint = job.blueprint
    config = job.config
    config_text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    out_tasks = []
    for task in tasks:
        outputs_dir = f"{job.results_dir}/outputs/{task.dataset}"
        input_info = (
            describe_input(storage, task.dataset_path, task.dataset_rel)
            if storage.exists(task.dataset_path)
            else {"path": task.dataset_rel, "missing": True}
        )
        task_env = json.loads(task.environment_json or "{}")
        if task_env.get("python"):
            environment = task_env
        out_tasks.append(
            {
                "dataset": task.dataset,
                "environment": task_env,
                "input": input_info,
                "argv": json.loads(task.argv_json),
                "state": task.state,
                "cause": task.cause,
                "attempts": task.attempt,
                "start_ms": task.started_ms,
                "end_ms": task.ended_ms,
                "exit_code": task.exit_code,
                "cpu_seconds": task.cpu_seconds,
                "peak_memory_bytes": task.peak_memory_bytes,
                "outputs": _outputs(storage, outputs_dir),
            }
        )
    return {
        "certificate_version": CERTIFICATE_VERSION,
        "job": {
            "id": job.id,
            "group": job.group,
            "submission": job.submission,
            "state": job.state,
            "cause": job.cause,
            "created_ms": job.created_ms,
            "started_ms": job.started_ms,
            "ended_ms": job.ended_ms,
            "storage": storage.url,
        },
        "platform": {"name": "ncaas", "version": __version__},
        "blueprint": blueprint,
        "environment": environment,
        "isolation": isolation,
        "executor": executor,
        "config": {
            "name": job.config_name,
            "content": config,
            "sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        },
        "command": blueprint.get("content", {}).get("command"),
        "tasks": out_tasks,
        "story": [
            {"at_ms": e.at_ms, "dataset": e.dataset, "from": e.from_state, "to": e.to_state, "cause": e.cause}
            for e in events
        ],
        "cost": None,
    }


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def render_text(cert: dict[str, Any]) -> str:
    """A readable rendering of a certificate."""
    job, bp, env = cert["job"], cert["blueprint"], cert["environment"]
    lines = [
        f"ncaas certificate for job {job['id']} ({job['state']})",
        "=" * 60,
        f"group:        {job['group']}   submission: {job['submission']}",
        f"analysis:     {bp.get('name')} {bp.get('version')}",
        f"blueprint:    sha256 {bp.get('sha256')}",
        f"              git commit {bp.get('git_commit') or 'unknown'}{' (modified)' if bp.get('git_dirty') else ''}",
        f"environment:  python {env['python']}; lock {env['lock_hash'] or 'none'}; "
        f"manifest {env['manifest_hash'] or 'none'}",
        f"isolation:    {cert['isolation']}",
        f"platform:     ncaas {cert['platform']['version']}",
        f"executor:     {cert['executor'].get('name')} on {cert['executor'].get('host')} "
        f"({cert['executor'].get('platform')})",
        f"config:       {cert['config']['name'] or '(defaults)'} sha256 {cert['config']['sha256']}",
        f"              {json.dumps(cert['config']['content'], sort_keys=True)}",
        f"command:      {' '.join(cert['command'] or [])}",
        f"created:      {_when(job['created_ms'])}   started: {_when(job['started_ms'])}   "
        f"ended: {_when(job['ended_ms'])}",
        "",
    ]
    for task in cert["tasks"]:
        inp = task["input"]
        lines += [
            f"dataset {task['dataset']}: {task['state']} ({task['cause']})",
            f"  input     {inp['path']} {inp.get('kind', '')} {inp.get('size', '?')} bytes sha256 {inp.get('sha256')}",
            f"  run       {_when(task['start_ms'])} -> {_when(task['end_ms'])}, attempts {task['attempts']}, "
            f"exit code {task['exit_code']}",
            f"  usage     CPU {task['cpu_seconds']} s, peak memory {_mb(task['peak_memory_bytes'])}",
            f"  argv      {' '.join(task['argv'])}",
            "  outputs:",
        ]
        lines += [_output_line(o) for o in task["outputs"]] or ["    (none)"]
        lines.append("")
    return "\n".join(lines)


def _output_line(entry: dict[str, Any]) -> str:
    if "sha256" in entry:
        return f"    {entry['sha256']}  {entry['size']:>12}  {entry['path']}"
    link = f" -> {entry['target']}" if "target" in entry else ""
    return f"    {'(' + str(entry.get('kind')) + ', not read)':<64}  {'-':>12}  {entry['path']}{link}"


def load_certificate(path: str | Path) -> dict[str, Any]:
    """Read a certificate.json (or the results folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "certificate.json"
    try:
        cert = json.loads(path.read_text())
    except FileNotFoundError:
        raise CertificateError(f"{path} does not exist; give the certificate.json of a finished job") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CertificateError(f"{path} is not a certificate (not JSON: {exc})") from None
    needed = {"certificate_version", "job", "blueprint", "config", "tasks"}
    if not isinstance(cert, dict) or not needed <= set(cert):
        raise CertificateError(f"{path} is not an ncaas certificate; it lacks {sorted(needed - set(cert or {}))}")
    return cert
