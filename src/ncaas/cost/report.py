"""Spend per group, analysis, user and period, from the priced tasks in the job database."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from ..exceptions import NcaasError
from ..jobs.db import Job, JobDB, Task

__all__ = ["BY", "PERIODS", "money", "period_label", "period_start_ms", "spend_rows", "to_csv"]

PERIODS = ("day", "week", "month", "year")
BY = ("group", "analysis", "user", "period")
COLUMNS = ("jobs", "tasks", "compute", "transfer", "workflow", "lost", "total")


def money(value: float, currency: str = "USD") -> str:
    """Cents for sums of a unit or more; six decimals below (a small task costs fractions of a cent)."""
    return f"{value:.2f} {currency}" if abs(value) >= 1 or value == 0 else f"{value:.6f} {currency}"


def _check_period(period: str) -> None:
    if period not in PERIODS:
        raise NcaasError(f"unknown period {period!r}; allowed: {', '.join(PERIODS)}")


def period_label(ms: int, period: str) -> str:
    _check_period(period)
    when = datetime.fromtimestamp(ms / 1000, UTC)
    if period == "day":
        return when.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = when.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return when.strftime("%Y-%m")
    return when.strftime("%Y")


def period_start_ms(ms: int, period: str) -> int:
    """When the ``period`` holding ``ms`` began (UTC; weeks begin on Monday)."""
    _check_period(period)
    when = datetime.fromtimestamp(ms / 1000, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        when -= timedelta(days=when.weekday())
    elif period == "month":
        when = when.replace(day=1)
    elif period == "year":
        when = when.replace(month=1, day=1)
    return int(when.timestamp() * 1000)


def spend_rows(
    db: JobDB,
    *,
    by: list[str],
    period: str = "month",
    group: str | None = None,
    since_ms: int | None = None,
) -> list[dict[str, Any]]:
    """One row per distinct ``by`` values, with jobs, tasks and the cost breakdown."""
    _check_period(period)
    for key in by:
        if key not in BY:
            raise NcaasError(f"cannot group spend by {key!r}; allowed: {', '.join(BY)}")
    q = select(Job.id, Job.group, Job.analysis, Job.user, Job.created_ms, Task.cost_json).join(
        Task, Task.job_id == Job.id
    )
    if group is not None:
        q = q.where(Job.group == group)
    if since_ms is not None:
        q = q.where(Job.created_ms >= since_ms)
    with db.session() as s:
        found = s.execute(q.order_by(Job.created_ms)).all()
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    jobs: dict[tuple[str, ...], set[str]] = {}
    for job_id, grp, analysis, user, created, cost_json in found:
        values = {
            "group": grp,
            "analysis": analysis or "-",
            "user": user or "-",
            "period": period_label(created, period),
        }
        combo = tuple(values[k] for k in by)
        row = rows.setdefault(combo, {**{k: values[k] for k in by}, **dict.fromkeys(COLUMNS, 0), "currency": None})
        jobs.setdefault(combo, set()).add(job_id)
        row["tasks"] += 1
        cost = json.loads(cost_json) if cost_json else None
        if cost:
            row["currency"] = row["currency"] or cost.get("currency")
            for col in ("compute", "transfer", "workflow", "lost", "total"):
                row[col] += float(cost.get(col) or 0.0)
    for combo, row in rows.items():
        row["jobs"] = len(jobs[combo])
        row["currency"] = row["currency"] or "USD"
    return list(rows.values())


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()
