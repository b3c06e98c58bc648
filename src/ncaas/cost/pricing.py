"""Measured usage x rates -> what a task and a job cost, with the breakdown.

A task is charged, like a cloud instance, for what it holds while it holds it: every attempt's
wall time x (vCPUs x the vCPU-hour rate + GiB x the GiB-hour rate) of the machine or node type
it ran on. What it holds is the blueprint's ``resources`` (cpus, memory), or the whole instance
when the blueprint names one (``pricing: {instance: NAME}``). Attempts that did not finish (an
interrupted Save task, a task killed and retried) are charged too: that is the *lost* time,
shown apart but included in compute. Transfer is the outputs' bytes sent back; workflow is one
routing request per attempt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..jobs.attempts import Attempt
from .profile import Option, PricingProfile

__all__ = ["Shape", "TaskCost", "job_cost", "price_task", "shape_of"]

RETRIED = "queued"  # an attempt whose outcome is "queued" again was lost and retried


@dataclass(frozen=True)
class Shape:
    """What a task holds while it runs: vCPUs and memory; ``instance`` when a blueprint books one."""

    vcpus: float
    memory_bytes: int
    instance: str | None = None


def shape_of(blueprint: Any, profile: PricingProfile) -> Shape:
    """The shape a blueprint's task holds: its named instance, else its resources."""
    res = blueprint.resources
    instance = blueprint.pricing.instance if blueprint.pricing is not None else None
    rates = profile.node_types.get(instance or "")
    if rates is not None:
        return Shape(rates.vcpus or res.cpus, rates.memory or res.memory, instance)
    return Shape(res.cpus, res.memory, None)


@dataclass(frozen=True)
class TaskCost:
    option: Option
    currency: str
    compute: float
    transfer: float
    workflow: float
    lost: float  # part of compute: attempts that did not finish (interrupted, killed and retried)
    seconds: float  # charged wall time, every attempt
    lost_seconds: float
    attempts: int
    output_bytes: int
    hourly: float  # the rate of the last attempt's machine for this shape
    node_type: str | None = None
    final: bool = False  # False while the task runs: what it cost so far

    @property
    def total(self) -> float:
        return self.compute + self.transfer + self.workflow

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def _wall_s(attempt: Attempt, now_ms: int) -> float:
    start = attempt.started_ms or attempt.launched_ms
    end = attempt.ended_ms if attempt.ended_ms is not None else now_ms
    return max(0.0, (end - start) / 1000)


def price_task(
    profile: PricingProfile,
    shape: Shape,
    option: Option,
    attempts: list[Attempt],
    *,
    now_ms: int,
    output_bytes: int = 0,
    final: bool = False,
) -> TaskCost:
    """What a task cost: every attempt priced at the rates of the node type it ran on."""
    compute = lost = seconds = lost_seconds = 0.0
    hourly = profile.rates_for(shape.instance).hourly(option, vcpus=shape.vcpus, memory_bytes=shape.memory_bytes)
    node_type = shape.instance
    for attempt in attempts:
        node_type = attempt.node_type or shape.instance
        hourly = profile.rates_for(node_type).hourly(option, vcpus=shape.vcpus, memory_bytes=shape.memory_bytes)
        wall = _wall_s(attempt, now_ms)
        charge = wall / 3600 * hourly
        compute += charge
        seconds += wall
        if attempt.outcome == RETRIED:
            lost += charge
            lost_seconds += wall
    flow = profile.workflow
    per_attempt = flow.per_request.of(option) + flow.gb_second.of(option) * flow.memory_gb * flow.seconds_per_request
    return TaskCost(
        option=option,
        currency=profile.currency,
        compute=compute,
        transfer=output_bytes / 1e9 * profile.transfer_out_gb.of(option),
        workflow=per_attempt * len(attempts),
        lost=lost,
        seconds=seconds,
        lost_seconds=lost_seconds,
        attempts=len(attempts),
        output_bytes=output_bytes,
        hourly=hourly,
        node_type=node_type,
        final=final,
    )


def job_cost(tasks: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The job's total and breakdown from its tasks' costs (None: no task priced yet)."""
    priced = [t for t in tasks if t]
    if not priced:
        return None
    out: dict[str, Any] = {"currency": priced[0]["currency"], "option": priced[0]["option"]}
    for key in ("compute", "transfer", "workflow", "lost", "total", "seconds", "lost_seconds"):
        out[key] = sum(float(t.get(key) or 0.0) for t in priced)
    out["final"] = all(t.get("final") for t in priced) and len(priced) == len(tasks)
    return out
