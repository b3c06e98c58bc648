"""Certificates: the provenance of a job, enough to reproduce it.

``certificate.json`` records the blueprint (name, version, sha256, git commit and its
full content), the environment (lock and manifest hashes once environments exist),
the isolation applied, the platform version, every input's size and sha256, the exact
config and its hash, the command, executor and host (a cluster: its address and nodes),
per-task timings (ms), the node each task ran on and every attempt (where it ran, when
it started and why it ended), exit status, CPU seconds, peak memory, and the sha256 of
every output file.
Links and special files among inputs and outputs are recorded as what they are
(``{"path", "kind": "symlink", "target"}``, ``{"path", "kind": "fifo"}``, ...):
never followed, never opened.
``certificate.txt`` says the same for a human.

A task is told the content hashes its certificate will record before it starts, in
environment variables (`TASK_HASH_VARIABLES`), so that what it writes can name the
run it came from without any clock or random id: its dataset is described once,
before launch, and that description is the one the certificate records.
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

__all__ = [
    "TASK_HASH_VARIABLES",
    "build_certificate",
    "config_sha256",
    "describe_dataset",
    "fingerprint",
    "load_certificate",
    "render_text",
    "task_hash_environment",
]

CERTIFICATE_VERSION = 1

TASK_HASH_VARIABLES = {
    "NCAAS_INPUT_SHA256": "tasks[].input.sha256: the dataset (a file's sha256, a folder's tree digest)",
    "NCAAS_CONFIG_SHA256": "config.sha256: sha256 of the job's config as canonical JSON",
    "NCAAS_BLUEPRINT_SHA256": "blueprint.sha256: the blueprint's content hash",
    "NCAAS_LOCK_SHA256": "environment.lock_hash: sha256 of the environment's lock file (absent without one)",
}
"""The variables every task's environment holds, and the certificate field each equals."""


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


def describe_dataset(storage: Storage, path: str, rel: str) -> dict[str, Any]:
    """`describe_input`, or ``{"path", "missing": True}`` when the dataset is gone."""
    if not storage.exists(path):
        return {"path": rel, "missing": True}
    return describe_input(storage, path, rel)


def config_sha256(config: dict[str, Any]) -> str:
    """The config's hash as certificates record it: sha256 of its canonical JSON."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def task_hash_environment(
    *, input_description: dict[str, Any] | None, config: dict[str, Any], blueprint_sha256: str, lock_hash: str | None
) -> dict[str, str]:
    """The `TASK_HASH_VARIABLES` of one task; a hash not known (a dataset gone, no lock) is left out."""
    values = {
        "NCAAS_INPUT_SHA256": (input_description or {}).get("sha256"),
        "NCAAS_CONFIG_SHA256": config_sha256(config),
        "NCAAS_BLUEPRINT_SHA256": blueprint_sha256,
        "NCAAS_LOCK_SHA256": lock_hash,
    }
    return {name: value for name, value in values.items() if value}


def _outputs(storage: Storage, folder: str) -> list[dict[str, Any]]:
    """Every entry a task left in its output folder; links and special files as such, unread."""
    try:
        if storage.kind(folder) != "folder":
            return []
    except FileNotFoundError:
        return []
    return storage.describe_tree(folder, follow=False)


def build_certificate(
    storage: Storage,
    job: Any,
    tasks: list[Any],
    events: list[Any],
    *,
    executor: dict[str, Any],
    isolation: str,
    cost: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The certificate of a finished job, from its database rows and its files."""
    environment: dict[str, Any] = {"python": None, "lock_hash": None, "manifest_hash": None}
    blueprint = job.blueprint
    config = job.config
    out_tasks = []
    for task in tasks:
        outputs_dir = f"{job.results_dir}/outputs/{task.dataset}"
        described = getattr(task, "input_json", None)  # described before launch; a task never started was not
        input_info = (
            json.loads(described) if described else describe_dataset(storage, task.dataset_path, task.dataset_rel)
        )
        task_env = json.loads(task.environment_json or "{}")
        if task_env.get("python"):
            environment = task_env
        history = json.loads(getattr(task, "attempts_json", None) or "[]")  # ncaas.jobs.attempts
        out_tasks.append(
            {
                "dataset": task.dataset,
                "environment": task_env,
                "input": input_info,
                "argv": json.loads(task.argv_json),
                "state": task.state,
                "cause": task.cause,
                "attempts": task.attempt,
                "node": task_env.get("node") or next((a["node"] for a in reversed(history) if a.get("node")), None),
                "attempt_history": history,
                "start_ms": task.started_ms,
                "end_ms": task.ended_ms,
                "exit_code": task.exit_code,
                "cpu_seconds": task.cpu_seconds,
                "peak_memory_bytes": task.peak_memory_bytes,
                "cost": json.loads(task.cost_json) if getattr(task, "cost_json", None) else None,
                "outputs": _outputs(storage, outputs_dir),
                **({"slurm": task_env["slurm"]} if task_env.get("slurm") else {}),  # its job and sacct's usage
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
            "sha256": config_sha256(config),
        },
        "command": blueprint.get("content", {}).get("command"),
        "tasks": out_tasks,
        "story": [
            {"at_ms": e.at_ms, "dataset": e.dataset, "from": e.from_state, "to": e.to_state, "cause": e.cause}
            for e in events
        ],
        "cost": cost,
        **_upstream(job),
        **_review(job),
    }


def _upstream(job: Any) -> dict[str, Any]:
    """A chain's step names the job it read and that job's certificate (by sha256); others nothing."""
    text = getattr(job, "upstream_json", None)
    return {"upstream": json.loads(text)} if text else {}


def _review(job: Any) -> dict[str, Any]:
    """A curation job (ncaas.review) names the reviewed job's certificate and the decisions file (by sha256)."""
    text = getattr(job, "review_json", None)
    return {"review": json.loads(text)} if text else {}


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
        f"executor:     {_executor_line(cert['executor'])}",
        f"config:       {cert['config']['name'] or '(defaults)'} sha256 {cert['config']['sha256']}",
        f"              {json.dumps(cert['config']['content'], sort_keys=True)}",
        f"command:      {' '.join(cert['command'] or [])}",
        *_upstream_lines(cert.get("upstream")),
        *_review_lines(cert.get("review")),
        f"created:      {_when(job['created_ms'])}   started: {_when(job['started_ms'])}   "
        f"ended: {_when(job['ended_ms'])}",
        *_cost_lines(cert.get("cost")),
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
            *([f"  cost      {_breakdown(task['cost'])}"] if task.get("cost") else []),
            *([f"  node      {task['node']}"] if task.get("node") else []),
            *([_slurm_line(task["slurm"])] if task.get("slurm") else []),
            *[_attempt_line(a) for a in task.get("attempt_history", []) if len(task["attempt_history"]) > 1],
            f"  argv      {' '.join(task['argv'])}",
            "  outputs:",
        ]
        lines += [_output_line(o) for o in task["outputs"]] or ["    (none)"]
        lines.append("")
    return "\n".join(lines)


def _upstream_lines(up: dict[str, Any] | None) -> list[str]:
    if not up:
        return []
    return [
        f"upstream:     step {up.get('step')} of chain {up.get('chain')}: job {up.get('job')} ({up.get('analysis')})",
        f"              its certificate {up.get('certificate')} sha256 {up.get('certificate_sha256')}",
        f"              input read from its results: {up.get('outputs')}",
    ]


def _review_lines(review: dict[str, Any] | None) -> list[str]:
    if not review:
        return []
    decisions = review.get("decisions") or {}
    who = ", ".join(
        f"{r.get('user')} ({r.get('actions')} actions, {r.get('first')} to {r.get('last')})"
        for r in decisions.get("reviewers") or []
    )
    return [
        f"review:       curation of dataset {review.get('dataset')} of job {review.get('job')}"
        f" ({review.get('analysis')})",
        f"              its certificate {review.get('certificate')} sha256 {review.get('certificate_sha256')}",
        f"              decisions {decisions.get('path')} sha256 {decisions.get('sha256')}",
        f"              reviewers: {who or 'none'}",
    ]


def _breakdown(cost: dict[str, Any]) -> str:
    from ..cost.report import money

    c = cost.get("currency", "USD")
    lost = f" (of which lost {money(cost['lost'], c)})" if cost.get("lost") else ""
    return (
        f"{money(cost['total'], c)} {cost.get('option')}: compute {money(cost['compute'], c)}{lost}, "
        f"transfer {money(cost['transfer'], c)}, workflow {money(cost['workflow'], c)}"
    )


def _cost_lines(cost: dict[str, Any] | None) -> list[str]:
    if not cost:
        return []
    profile = cost.get("profile") or {}
    total = _breakdown(cost["job"]) if cost.get("job") else "nothing ran"
    return [
        f"cost:         {total}",
        f"              pricing profile {profile.get('name')} sha256 {profile.get('sha256')}",
    ]


def _executor_line(executor: dict[str, Any]) -> str:
    """Where the tasks ran: one machine (its platform), or a cluster (its address and nodes)."""
    name, host = executor.get("name"), executor.get("host")
    if executor.get("address"):  # a cluster: ray
        nodes = executor.get("nodes") or []
        version = executor.get("ray_version") or executor.get("slurm_version")
        version = f" {version}" if version else ""
        memory = executor.get("memory_bytes")
        size = f", {executor.get('cpus')} cpus" + (f", {memory / 2**30:.1f} GiB" if memory else "")
        listed = f" ({', '.join(nodes)})" if nodes else ""
        return (
            f"{name}{version} cluster at {executor['address']}: {len(nodes)} node{'' if len(nodes) == 1 else 's'}"
            f"{listed}{size}; manager on {host}"
        )
    return f"{name} on {host}" + (f" ({executor['platform']})" if executor.get("platform") else "")


def _slurm_line(slurm: dict[str, Any]) -> str:
    """A task's Slurm job and its measured usage, in one line."""

    def amount(value: Any, unit: str) -> str:
        return "-" if value is None else f"{value:g} {unit}"

    rss = slurm.get("max_rss_bytes")
    return (
        f"  slurm     job {slurm.get('job_id')} on {slurm.get('node')}: {slurm.get('state')}, "
        f"elapsed {amount(slurm.get('elapsed_s'), 's')}, CPU {amount(slurm.get('cpu_seconds'), 's')}, "
        f"max RSS {_mb(rss)} (from {slurm.get('source')})"
    )


def _attempt_line(attempt: dict[str, Any]) -> str:
    where = f" on {attempt['node']}" if attempt.get("node") else ""
    ended = f"{attempt.get('outcome')}: {attempt.get('cause')}" if attempt.get("outcome") else "did not end"
    return (
        f"  attempt {attempt.get('number')}{where}  {_when(attempt.get('started_ms') or attempt.get('launched_ms'))}"
        f" -> {_when(attempt.get('ended_ms'))}, {ended}"
    )


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
