"""What a chain does next, decided from its jobs' states alone (no I/O).

A chain has one cell per (step, dataset). A cell's job starts once the job of the step it reads
(its source) has succeeded and been certified; a cell whose source failed, was cancelled or was
stopped itself is *stopped*, with the reason, and never runs. The chain is over when no cell is
waiting or running: succeeded when every cell succeeded, else failed (or cancelled when asked).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..jobs.states import JOB_TERMINAL, JobState

__all__ = ["Cell", "ChainPlan", "JobView", "plan_chain"]

WAITING = "waiting"
STOPPED = "stopped"


@dataclass(frozen=True)
class JobView:
    """What the plan needs of a cell's job."""

    id: str
    state: str
    finalized: bool
    reason: str  # why it ended, when it did not succeed


@dataclass(frozen=True)
class Cell:
    step: int
    dataset: str
    state: str  # waiting | stopped | a job state
    job: str | None
    reason: str


@dataclass(frozen=True)
class ChainPlan:
    cells: list[Cell]
    start: list[tuple[int, str, str]]  # (step, dataset, upstream job id): start these now
    over: bool
    state: str  # running | succeeded | failed | cancelled
    cause: str


def plan_chain(
    step_names: list[str],
    sources: list[int | None],
    datasets: list[str],
    jobs: dict[tuple[int, str], JobView],
    *,
    cancel_requested: bool = False,
) -> ChainPlan:
    """Every cell's state, the cells to start now, and whether (and how) the chain is over."""
    cells: dict[tuple[int, str], Cell] = {}
    start = []
    for dataset in datasets:
        for index, source in enumerate(sources):
            job = jobs.get((index, dataset))
            if job is not None:
                reason = "" if job.state == JobState.SUCCEEDED else job.reason
                cells[index, dataset] = Cell(index, dataset, job.state, job.id, reason)
                continue
            if source is None:  # a first step not created yet (its creation was cut short): start it
                cells[index, dataset] = Cell(index, dataset, WAITING, None, "")
                continue
            up = cells[source, dataset]
            if cancel_requested:
                cells[index, dataset] = Cell(index, dataset, STOPPED, None, "not run: the chain was cancelled")
            elif up.state == JobState.SUCCEEDED and up.job is not None and jobs[source, dataset].finalized:
                start.append((index, dataset, up.job))
                cells[index, dataset] = Cell(index, dataset, WAITING, None, f"starting after {step_names[source]}")
            elif up.state == JobState.SUCCEEDED:  # its certificate is still being written
                cells[index, dataset] = Cell(
                    index, dataset, WAITING, None, f"waiting for {step_names[source]!r}'s certificate"
                )
            elif up.state in JOB_TERMINAL or up.state == STOPPED:
                why = f"not run: step {step_names[source]!r} {_past(up.state)}"
                why += f" ({up.reason})" if up.reason and up.state != STOPPED else ""
                cells[index, dataset] = Cell(index, dataset, STOPPED, None, why)
            else:
                cells[index, dataset] = Cell(index, dataset, WAITING, None, f"waiting for {step_names[source]!r}")
    ordered = list(cells.values())
    busy = [
        c
        for c in ordered
        if c.state in (WAITING, JobState.QUEUED, JobState.RUNNING)
        or (c.job is not None and not jobs[c.step, c.dataset].finalized)  # its certificate is being written
    ]
    if busy:
        return ChainPlan(ordered, start, False, "running", _counts(ordered))
    if all(c.state == JobState.SUCCEEDED for c in ordered):
        state = "succeeded"
    elif cancel_requested:
        state = "cancelled"
    else:
        state = "failed"
    return ChainPlan(ordered, start, True, state, _counts(ordered))


def _past(state: str) -> str:
    return {"stopped": "did not run", "timed_out": "timed out", "rejected": "was rejected"}.get(state, state)


def _counts(cells: list[Cell]) -> str:
    counts: dict[str, int] = {}
    for cell in cells:
        counts[cell.state] = counts.get(cell.state, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + " (steps x datasets)"
