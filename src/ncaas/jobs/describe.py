"""Jobs as plain dicts: what the API returns and what the CLI shows, embedded or remote.

One description of a job serves the server's JSON, the web page, and the
CLI's tables (:mod:`ncaas.cli.display`), so a job looks the same wherever it is
looked at. Progress and messages come from the tasks' ``status/*.json``.
"""

from __future__ import annotations

import json
from typing import Any

from ..cost.pricing import job_cost
from .db import Event, Job, Task
from .states import JOB_TERMINAL, WAITING_FOR_NODE

__all__ = ["job_detail", "job_story", "job_summary", "rejection_problems", "rerun_of"]


def _read_json(storage, path: str) -> dict[str, Any]:
    try:
        data = json.loads(storage.read_text(path))
    except (OSError, ValueError):  # absent, half-written or not UTF-8: no status yet
        return {}
    return data if isinstance(data, dict) else {}


def job_summary(job: Job, n_tasks: int) -> dict[str, Any]:
    """One row of a job list."""
    return {
        "id": job.id,
        "group": job.group,
        "analysis": job.analysis,
        "state": job.state,
        "cause": job.cause,
        "submission": job.submission,
        "created_ms": job.created_ms,
        "started_ms": job.started_ms,
        "ended_ms": job.ended_ms,
        "datasets": n_tasks,
        "finished": job.state in JOB_TERMINAL and bool(job.finalized),
        "results_dir": job.results_dir,
        "chain": getattr(job, "chain_id", None),  # a step of a chain (ncaas.pipelines), else None
        "user": job.user,
        "pricing": job.option,
    }


def task_row(storage, job: Job, task: Task) -> dict[str, Any]:
    """One dataset of a job; a queued task waiting for something (its environment) says what as its message."""
    status = _read_json(storage, f"{job.results_dir}/status/{task.dataset}.json")
    # launched on a cluster but no node has taken it yet: it is queued there, and its clock has not started
    on_hold = task.state == "running" and task.cause.startswith(WAITING_FOR_NODE)
    waiting = (task.state == "queued" and task.cause.startswith("waiting")) or on_hold
    ended_badly = task.state in ("failed", "timed_out")  # why says more than its last progress message
    return {
        "dataset": task.dataset,
        "input": task.dataset_rel,
        "state": "queued" if on_hold else task.state,
        "cause": task.cause,
        "attempt": task.attempt,
        "progress": 1.0 if task.state == "succeeded" else 0.0 if on_hold else float(status.get("progress") or 0.0),
        "message": task.cause if waiting or ended_badly else status.get("message", ""),
        "reason": status.get("reason"),  # the task's own account of its failure, when it gave one
        "node": status.get("node"),
        "attempts": status.get("attempts") or [],
        "started_ms": None if on_hold else task.started_ms,
        "ended_ms": task.ended_ms,
        "exit_code": task.exit_code,
        "cpu_seconds": task.cpu_seconds,
        "peak_memory_bytes": task.peak_memory_bytes,
        "cost": json.loads(task.cost_json) if task.cost_json else status.get("cost"),  # final, else so far
    }


def rejection_problems(storage, job: Job) -> list[str]:
    """Why a submission was rejected, one problem per item (from its end.json)."""
    errors = _read_json(storage, f"{job.results_dir}/end.json").get("errors")
    return list(errors) if errors else [job.cause]


def rerun_of(job: Job) -> str | None:
    """The id of the job ``job`` reruns, when it is a rerun."""
    try:
        submit = json.loads(job.submit_json or "{}")
    except ValueError:
        return None
    found = submit.get("rerun_of") if isinstance(submit, dict) else None
    return found if isinstance(found, str) else None


def job_detail(manager, job: Job) -> dict[str, Any]:
    """The job with one row per dataset (state, progress, message, attempt, resources)."""
    job = manager.db.job(job.id) or job
    tasks = manager.db.tasks(job.id)
    out = job_summary(job, len(tasks))
    rows = [task_row(manager.storage, job, t) for t in tasks]
    original = rerun_of(job)
    out.update(
        config=job.config,
        config_name=job.config_name,
        rerun_of=original,
        tasks=rows,
        error="\n".join(rejection_problems(manager.storage, job)) if job.state == "rejected" else None,
        user=job.user,
        pricing=job.option,
        cost=job_cost([r["cost"] for r in rows]),
        estimate=json.loads(job.estimate_json) if job.estimate_json else None,
        cost_cap=job.cost_cap,
        original_cost=_original_cost(manager, original, job.group) if original else None,
    )
    return out


def _original_cost(manager, job_id: str, group: str) -> dict[str, Any] | None:
    """What the job a rerun reruns cost (of the same group only)."""
    original = manager.db.job(job_id)
    if original is None or original.group != group:
        return None
    return job_cost([json.loads(t.cost_json) if t.cost_json else None for t in manager.db.tasks(original.id)])


def event_row(event: Event) -> dict[str, Any]:
    return {
        "at_ms": event.at_ms,
        "dataset": event.dataset,
        "from_state": event.from_state,
        "to_state": event.to_state,
        "cause": event.cause,
    }


def job_story(manager, job: Job) -> list[dict[str, Any]]:
    """Every state transition of the job and its tasks, oldest first."""
    return [event_row(e) for e in manager.db.events(job.id)]
