"""Per-group budgets per period, kept in the job database (where the manager that enforces them is).

Before a job is made, its estimate is checked against what is left of its group's budget for
the period (spent, plus what running jobs are still expected to cost); a job that would exceed
it is refused, with the numbers. A running job is stopped when its cost passes its cap: its
estimate x the budget's ``hard_cap`` (with no estimate, what was left of the budget when it
was admitted).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, select

from ..exceptions import NcaasError
from ..jobs.db import Budget, Job, JobDB, Task, now_ms
from ..jobs.states import JOB_TERMINAL
from .estimate import Estimate, NoHistory
from .report import PERIODS, money, period_label, period_start_ms

__all__ = [
    "BudgetStatus",
    "admission",
    "budget_status",
    "get_budget",
    "list_budgets",
    "remove_budget",
    "set_budget",
]


def set_budget(db: JobDB, group: str, amount: float, *, period: str = "month", hard_cap: float = 1.5) -> Budget:
    if period not in PERIODS:
        raise NcaasError(f"unknown period {period!r}; allowed: {', '.join(PERIODS)}")
    if not amount >= 0:
        raise NcaasError(f"a budget must be an amount >= 0, not {amount}")
    if not hard_cap >= 1:
        raise NcaasError(f"--hard-cap {hard_cap} must be >= 1 (1.5: a job is stopped at 150 % of its estimate)")
    budget = Budget(group=group, amount=amount, period=period, hard_cap=hard_cap, updated_ms=now_ms())
    with db.session() as s, s.begin():
        s.merge(budget)
    return budget


def get_budget(db: JobDB, group: str) -> Budget | None:
    with db.session() as s:
        return s.get(Budget, group)


def list_budgets(db: JobDB) -> list[Budget]:
    with db.session() as s:
        return list(s.scalars(select(Budget).order_by(Budget.group)))


def remove_budget(db: JobDB, group: str) -> bool:
    with db.session() as s, s.begin():
        return bool(s.execute(delete(Budget).where(Budget.group == group)).rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class BudgetStatus:
    group: str
    amount: float
    period: str
    label: str  # which period: 2026-12
    hard_cap: float
    spent: float  # what the period's jobs cost so far
    committed: float  # what its running jobs are still expected to cost (estimates)
    currency: str

    @property
    def left(self) -> float:
        return self.amount - self.spent - self.committed

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "left": self.left}

    def words(self) -> str:
        c = self.currency
        return (
            f"group {self.group} has {money(max(self.left, 0.0), c)} left of its {money(self.amount, c)} "
            f"budget for {self.label} (spent {money(self.spent, c)}"
            + (f", {money(self.committed, c)} expected by running jobs" if self.committed else "")
            + ")"
        )


def _job_costs(db: JobDB, group: str, since: int) -> list[tuple[Job, float]]:
    with db.session() as s:
        jobs = list(s.scalars(select(Job).where(Job.group == group, Job.created_ms >= since)))
        costs: dict[str, float] = {}
        for job_id, cost_json in s.execute(
            select(Task.job_id, Task.cost_json).where(Task.job_id.in_([j.id for j in jobs]))
        ).all():
            cost = json.loads(cost_json) if cost_json else {}
            costs[job_id] = costs.get(job_id, 0.0) + float(cost.get("total") or 0.0)
    return [(job, costs.get(job.id, 0.0)) for job in jobs]


def budget_status(db: JobDB, group: str, *, currency: str = "USD", at_ms: int | None = None) -> BudgetStatus | None:
    """The group's budget for the period holding ``at_ms`` (now), with its spend; None without a budget."""
    budget = get_budget(db, group)
    if budget is None:
        return None
    at = at_ms or now_ms()
    spent = committed = 0.0
    for job, cost in _job_costs(db, group, period_start_ms(at, budget.period)):
        spent += cost
        if job.state not in JOB_TERMINAL and job.estimate_json:
            expected = float(json.loads(job.estimate_json).get("cost") or 0.0)
            committed += max(expected - cost, 0.0)
    return BudgetStatus(
        group,
        budget.amount,
        budget.period,
        period_label(at, budget.period),
        budget.hard_cap,
        spent,
        committed,
        currency,
    )


def admission(status: BudgetStatus | None, estimate: Estimate | NoHistory) -> tuple[str | None, float | None]:
    """(why the job is refused, or None; the cost at which it is stopped, or None) under ``status``."""
    if status is None:
        return None, None
    c = status.currency
    if status.left <= 0:
        return (
            f"{status.words()}; nothing is left: ask your administrator to raise it, or wait for the next period",
            None,
        )
    if isinstance(estimate, NoHistory):
        return None, status.left  # nothing to compare with: it may spend what is left, no more
    if estimate.cost > status.left:
        return (
            f"this job is estimated at {money(estimate.cost, c)} (range {money(estimate.cost_low, c)} - "
            f"{money(estimate.cost_high, c)}, from {estimate.runs} past run(s)), more than the "
            f"{money(status.left, c)} left: {status.words()}; submit fewer datasets, choose the Save price, "
            "or ask your administrator to raise the budget",
            None,
        )
    return None, estimate.cost * status.hard_cap
