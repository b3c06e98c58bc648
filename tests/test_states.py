"""The pure job/task state machine."""

import pytest

from ncaas.executors.base import ExitRecord
from ncaas.jobs.states import (
    TASK_TRANSITIONS,
    InvalidTransition,
    JobState,
    TaskState,
    check_transition,
    decide_exit,
    decide_lost,
    job_state,
)

Q, R, OK, F, C, T = (
    TaskState.QUEUED,
    TaskState.RUNNING,
    TaskState.SUCCEEDED,
    TaskState.FAILED,
    TaskState.CANCELLED,
    TaskState.TIMED_OUT,
)


def test_terminal_states_have_no_way_out():
    for old, _new in TASK_TRANSITIONS:
        assert old in (Q, R)
    with pytest.raises(InvalidTransition, match="from succeeded to running"):
        check_transition(OK, R)


@pytest.mark.parametrize(
    ("record", "attempt", "expected", "cause"),
    [
        ({"returncode": 0}, 1, OK, "exited with code 0"),
        ({"returncode": 3}, 1, F, "exited with code 3"),
        ({"returncode": -9}, 1, Q, "killed by SIGKILL; retrying (attempt 2 of 3)"),
        ({"returncode": -9}, 3, F, "killed by SIGKILL; gave up after 3 attempts"),
        ({"returncode": -15, "cancelled": True}, 1, C, "cancelled by request"),
        ({"returncode": -15, "timed_out": True, "timeout": 2.0}, 1, T, "exceeded its time limit of 2.0 s"),
        ({"returncode": None, "error": "no such file"}, 1, F, "could not start: no such file"),
        ({"returncode": 2, "reason": "m.tif is empty"}, 1, F, "exited with code 2: m.tif is empty"),
        ({"returncode": 0, "reason": "left over"}, 1, OK, "exited with code 0"),
        ({"returncode": -9, "reason": "said, then killed"}, 1, Q, "killed by SIGKILL; retrying (attempt 2 of 3)"),
    ],
)
def test_decide_exit(record, attempt, expected, cause):
    decision = decide_exit(ExitRecord.from_json(record), attempt=attempt, max_retries=2)
    assert decision.state == expected
    assert decision.cause == cause


def test_decide_exit_names_memory_when_near_the_limit():
    decision = decide_exit(
        ExitRecord(returncode=1, peak_memory_bytes=390_000_000), attempt=1, max_retries=2, memory_limit=400_000_000
    )
    assert decision.state == F
    assert "likely out of memory" in decision.cause
    said = decide_exit(
        ExitRecord(returncode=1, peak_memory_bytes=390_000_000, reason="MemoryError"),
        attempt=1,
        max_retries=2,
        memory_limit=400_000_000,
    )
    assert said.cause.startswith("exited with code 1 after using 390 MB") and said.cause.endswith(": MemoryError")


def test_lost_tasks_are_retried_then_failed():
    assert decide_lost(attempt=1, max_retries=1).state == Q
    assert decide_lost(attempt=2, max_retries=1).state == F


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([Q, Q], JobState.QUEUED),
        ([Q, R], JobState.RUNNING),
        ([OK, R], JobState.RUNNING),
        ([OK, OK], JobState.SUCCEEDED),
        ([OK, F], JobState.FAILED),
        ([OK, T], JobState.TIMED_OUT),
        ([C, F], JobState.CANCELLED),
        ([], JobState.FAILED),
    ],
)
def test_job_state_from_tasks(states, expected):
    assert job_state(states) == expected


def test_exit_records_keep_what_the_executor_added():
    written = {"returncode": 0, "end_ms": 5, "node": "10.0.0.2", "node_timings": {"stage_s": 1.5}}
    record = ExitRecord.from_json(written)
    assert record.returncode == 0 and record.extra == {"node": "10.0.0.2", "node_timings": {"stage_s": 1.5}}
    assert {k: v for k, v in record.to_json().items() if v is not None and v is not False} == written
