"""What the job manager asks of cost: price a task, estimate a submission, admit it under its budget.

The manager stays the only job code doing I/O; this module reads the job database (history,
budgets) and storage sizes it is handed, and returns plain values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..jobs.attempts import load_attempts
from ..jobs.db import Job, JobDB, Task, now_ms
from ..storage import Storage
from .budgets import admission, budget_status
from .estimate import Estimate, NoHistory, estimate_job, history
from .pricing import job_cost, price_task, shape_of
from .profile import Option, PricingProfile

__all__ = ["Admission", "CostAccounting", "dataset_bytes"]


def dataset_bytes(storage: Storage, path: str) -> int:
    """A dataset's size: a file's, or the sum of a folder's files (0 when it cannot be read)."""
    try:
        kind = storage.entry_kind(path)
        if kind == "folder":
            return sum(storage.file_sizes(path).values())
        return storage.size(path) if kind == "file" else 0
    except (OSError, ValueError):
        return 0


@dataclass(frozen=True)
class Admission:
    estimate: Estimate | NoHistory
    refused: str | None  # why the job may not run, with the numbers
    cap: float | None  # the cost at which the running job is stopped


class CostAccounting:
    """The deployment's pricing profile, applied to a manager's jobs."""

    def __init__(self, profile: PricingProfile, db: JobDB):
        self.profile = profile
        self.db = db

    def task_cost(self, job: Job, task: Task, blueprint: Any, *, final: bool = False) -> dict[str, Any] | None:
        """What the task cost so far (``final``: it ended); None before its first attempt."""
        if not final and task.cost_json:
            stored = json.loads(task.cost_json)
            if stored.get("final"):
                return stored
        attempts = load_attempts(task.attempts_json)
        if not attempts:
            return None
        cost = price_task(
            self.profile,
            shape_of(blueprint, self.profile),
            _option(job.option),
            attempts,
            now_ms=now_ms(),
            output_bytes=task.output_bytes or 0,
            final=final,
        )
        return cost.to_json()

    def job_cost(self, tasks: list[Task]) -> dict[str, Any] | None:
        return job_cost([json.loads(t.cost_json) if t.cost_json else None for t in tasks])

    def estimate(
        self, group: str, analysis: str, blueprint: Any, option: str, sizes: list[int]
    ) -> Estimate | NoHistory:
        """From ``group``'s own past runs of the analysis."""
        shape = shape_of(blueprint, self.profile)
        runs = history(self.db, analysis, group=group)
        return estimate_job(self.profile, shape, _option(option), analysis, runs, sizes)

    def admit(self, group: str, analysis: str, blueprint: Any, option: str, sizes: list[int]) -> Admission:
        estimate = self.estimate(group, analysis, blueprint, option, sizes)
        status = budget_status(self.db, group, currency=self.profile.currency)
        refused, cap = admission(status, estimate)
        return Admission(estimate, refused, cap)

    def unknown_instance(self, blueprint: Any) -> str | None:
        """Why the blueprint cannot be priced here (it names an instance the profile lacks), or None."""
        instance = blueprint.pricing.instance if blueprint.pricing is not None else None
        if instance is None or instance in self.profile.node_types:
            return None
        known = ", ".join(self.profile.node_types) or "none"
        return (
            f"analysis {blueprint.name} needs instance shape {instance!r}, which this deployment's pricing "
            f"profile ({self.profile.name}) does not price; its node types: {known}. Ask your administrator "
            "to add it (`ncaas pricing install`)"
        )


def _option(value: str) -> Option:
    return "save" if value == "save" else "standard"
