"""The job and task state machine: states, the transition table, decisions. No I/O.

A task goes ``queued -> running -> succeeded | failed | timed_out | cancelled``;
a task killed by a signal (or whose supervisor vanished) goes back to ``queued``
while retries remain. A job's state is derived from its tasks' states.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..executors.base import ExitRecord

__all__ = [
    "JOB_TERMINAL",
    "TASK_TERMINAL",
    "TASK_TRANSITIONS",
    "Decision",
    "InvalidTransition",
    "JobState",
    "TaskState",
    "WAITING_FOR_NODE",
    "check_transition",
    "decide_cut_short",
    "decide_exit",
    "decide_lost",
    "job_state",
]


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"


WAITING_FOR_NODE = "waiting for a node with"
"""How a running task's cause begins while it waits in a cluster's queue (Ray) for a node with
room: launched, but not started; it is shown as queued, and its clock starts on its node."""

TASK_TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.TIMED_OUT})
JOB_TERMINAL = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT, JobState.REJECTED}
)

TASK_TRANSITIONS: frozenset[tuple[TaskState, TaskState]] = frozenset(
    {
        (TaskState.QUEUED, TaskState.RUNNING),
        (TaskState.QUEUED, TaskState.CANCELLED),
        (TaskState.RUNNING, TaskState.SUCCEEDED),
        (TaskState.RUNNING, TaskState.FAILED),
        (TaskState.RUNNING, TaskState.TIMED_OUT),
        (TaskState.RUNNING, TaskState.CANCELLED),
        (TaskState.RUNNING, TaskState.QUEUED),  # retry after a kill
    }
)


class InvalidTransition(ValueError):
    pass


def check_transition(old: TaskState, new: TaskState) -> None:
    if (old, new) not in TASK_TRANSITIONS:
        raise InvalidTransition(f"a task cannot go from {old} to {new}")


@dataclass(frozen=True)
class Decision:
    """What to do with a task that stopped: its next state and why."""

    state: TaskState
    cause: str


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _retry_or_fail(cause: str, attempt: int, max_retries: int) -> Decision:
    if attempt <= max_retries:
        return Decision(TaskState.QUEUED, f"{cause}; retrying (attempt {attempt + 1} of {max_retries + 1})")
    return Decision(TaskState.FAILED, f"{cause}; gave up after {attempt} attempts")


def decide_exit(record: ExitRecord, *, attempt: int, max_retries: int, memory_limit: int | None = None) -> Decision:
    """Decide a running task's next state from its supervisor's exit record."""
    code = record.returncode
    if record.reclaimed:
        return _retry_or_fail(
            "interrupted: its Save capacity was reclaimed (its lost time is charged)", attempt, max_retries
        )
    if record.cancelled:
        return Decision(TaskState.CANCELLED, "cancelled by request")
    if record.timed_out:
        return Decision(TaskState.TIMED_OUT, f"exceeded its time limit of {record.timeout} s")
    if record.error:
        return Decision(TaskState.FAILED, f"could not start: {record.error}")
    if isinstance(record.disk_full, dict):  # retrying would only fill the disk again
        full = record.disk_full
        return Decision(
            TaskState.FAILED,
            f"the disk is full: {full.get('path')} has no space left "
            f"(wrote {(full.get('wrote_bytes') or 0) / 1e6:.0f} MB); "
            "free space there and submit again",
        )
    if record.stopped:  # the sandbox stopped it, or it broke the sandbox's rules: no retry
        return Decision(TaskState.FAILED, record.stopped)
    if code == 0:
        return Decision(TaskState.SUCCEEDED, "exited with code 0")
    if code is not None and code < 0:
        return _retry_or_fail(f"killed by {_signal_name(-code)}", attempt, max_retries)
    cause = f"exited with code {code}"
    peak = record.peak_memory_bytes or 0
    if memory_limit and peak >= 0.9 * memory_limit:
        cause += (
            f" after using {peak / 1e6:.0f} MB of its {memory_limit / 1e6:.0f} MB memory limit (likely out of memory)"
        )
    if record.reason:  # the task's own words (its supervisor cleaned and capped them)
        cause += f": {record.reason}"
    return Decision(TaskState.FAILED, cause)


def decide_lost(*, attempt: int, max_retries: int, why: str | None = None) -> Decision:
    """A running task whose supervisor vanished without an exit record (``why``, when the executor knows)."""
    return _retry_or_fail(why or "its process vanished (killed with the manager or the machine)", attempt, max_retries)


def decide_cut_short(*, attempt: int) -> Decision:
    """A task whose launch the manager's own stop cut short, before its command started.

    It never ran, so it starts again as the same attempt: a manager stopped again and again
    while launching it does not spend its retries.
    """
    return Decision(
        TaskState.QUEUED,
        f"its launch was cut short when the manager stopped, before it started; starting attempt {attempt} again",
    )


def job_state(task_states: list[TaskState]) -> JobState:
    """A job's state from its tasks' states."""
    if not task_states:
        return JobState.FAILED
    if all(s == TaskState.QUEUED for s in task_states):
        return JobState.QUEUED
    if any(s not in TASK_TERMINAL for s in task_states):
        return JobState.RUNNING
    if all(s == TaskState.SUCCEEDED for s in task_states):
        return JobState.SUCCEEDED
    for state in (TaskState.CANCELLED, TaskState.FAILED, TaskState.TIMED_OUT):
        if state in task_states:
            return JobState(state.value)
    return JobState.FAILED
