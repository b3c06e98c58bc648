"""What a job will take and cost, from past runs of the same analysis, before it starts.

A group's estimates come from its own runs only, so no other group's jobs can move what its
jobs are expected to cost (nor get them refused under its budget).

The model is per dataset, against its **input size in bytes**: wall seconds = a + b x bytes,
fitted by least squares over the analysis' past succeeded tasks (a mean when the sizes seen do
not differ), and output bytes = the mean output/input ratio x bytes. The range is the model
shifted by the smallest and largest residual seen. Time is then priced with the profile, so
one history gives both the Standard and the Save estimate. With no past run there is no
estimate: :class:`NoHistory` says so.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select

from ..jobs.attempts import Attempt
from ..jobs.db import Job, JobDB, Task, now_ms
from .pricing import Shape, price_task
from .profile import Option, PricingProfile

__all__ = ["Estimate", "NoHistory", "Run", "estimate_job", "history"]

HISTORY_LIMIT = 500  # most recent succeeded tasks of the analysis used


@dataclass(frozen=True)
class Run:
    """One past succeeded task: its input's size, its charged wall time, its outputs' size."""

    input_bytes: int
    seconds: float
    output_bytes: int


@dataclass(frozen=True)
class NoHistory:
    analysis: str

    @property
    def message(self) -> str:
        return f"no estimate: {self.analysis} has no finished run of your group here yet to base one on"

    def to_json(self) -> dict[str, Any]:
        return {"analysis": self.analysis, "estimate": None, "message": self.message}


@dataclass(frozen=True)
class Estimate:
    analysis: str
    option: Option
    currency: str
    basis: str  # what size the model uses
    runs: int  # past tasks it was fitted on
    datasets: int
    input_bytes: int
    seconds: float  # summed over datasets (task-seconds)
    seconds_low: float
    seconds_high: float
    cost: float
    cost_low: float
    cost_high: float

    @property
    def message(self) -> str:
        return (
            f"estimate ({self.option}) for {self.analysis} on {self.datasets} dataset(s), "
            f"{self.input_bytes / 1e6:.3g} MB: {_money(self.cost, self.currency)} "
            f"(range {_money(self.cost_low, self.currency)} - {_money(self.cost_high, self.currency)}), "
            f"{self.seconds:.1f} task-seconds (range {self.seconds_low:.1f} - {self.seconds_high:.1f}); "
            f"from {self.runs} past run(s), by input size in bytes"
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.message}


def _money(value: float, currency: str) -> str:
    from .report import money

    return money(value, currency)


def history(db: JobDB, analysis: str, *, group: str | None = None, limit: int = HISTORY_LIMIT) -> list[Run]:
    """The analysis' most recent succeeded, priced tasks (of ``group`` only, when given)."""
    q = (
        select(Task.input_json, Task.cost_json)
        .join(Job, Job.id == Task.job_id)
        .where(Job.analysis == analysis, Task.state == "succeeded", Task.cost_json.is_not(None))
    )
    if group is not None:
        q = q.where(Job.group == group)
    with db.session() as s:
        rows = s.execute(q.order_by(Task.id.desc()).limit(limit)).all()
    runs = []
    for input_json, cost_json in rows:
        try:
            size = json.loads(input_json or "{}").get("size")
            cost = json.loads(cost_json or "{}")
        except ValueError:
            continue
        if isinstance(size, int):
            runs.append(Run(size, float(cost.get("seconds") or 0.0), int(cost.get("output_bytes") or 0)))
    return runs


def _fit(runs: list[Run]) -> tuple[float, float, float, float]:
    """``a, b, lowest residual, highest residual`` of seconds = a + b x bytes."""
    xs = [float(r.input_bytes) for r in runs]
    ys = [r.seconds for r in runs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
    if b < 0:  # more data never takes less time: the mean says more than a falling line
        b = 0.0
    a = my - b * mx
    residuals = [y - (a + b * x) for x, y in zip(xs, ys)]
    return a, b, min(residuals), max(residuals)


def estimate_job(
    profile: PricingProfile, shape: Shape, option: Option, analysis: str, runs: list[Run], sizes: list[int]
) -> Estimate | NoHistory:
    """The estimate for datasets of ``sizes`` bytes, or NoHistory."""
    if not runs:
        return NoHistory(analysis)
    a, b, low, high = _fit(runs)
    with_input = [r for r in runs if r.input_bytes > 0]
    ratio = sum(r.output_bytes / r.input_bytes for r in with_input) / len(with_input) if with_input else 0.0
    totals = {"mid": [0.0, 0.0], "low": [0.0, 0.0], "high": [0.0, 0.0]}
    for size in sizes:
        mid = max(a + b * size, 0.0)
        for key, seconds in (("mid", mid), ("low", max(mid + low, 0.0)), ("high", max(mid + high, 0.0))):
            attempt = Attempt(1, 0, started_ms=0, ended_ms=int(seconds * 1000), outcome="succeeded")
            cost = price_task(profile, shape, option, [attempt], now_ms=now_ms(), output_bytes=int(ratio * size))
            totals[key][0] += seconds
            totals[key][1] += cost.total
    return Estimate(
        analysis=analysis,
        option=option,
        currency=profile.currency,
        basis="input bytes",
        runs=len(runs),
        datasets=len(sizes),
        input_bytes=sum(sizes),
        seconds=totals["mid"][0],
        seconds_low=totals["low"][0],
        seconds_high=totals["high"][0],
        cost=totals["mid"][1],
        cost_low=totals["low"][1],
        cost_high=totals["high"][1],
    )
