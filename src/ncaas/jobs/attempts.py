"""Each attempt of a task: where it ran, when it really started, and how it ended.

A task may run several times (a lost node, a signal): its row keeps the latest attempt,
and this list keeps them all, for its status file and its certificate. The manager
records an attempt when it launches it, completes it when its node reports that it
started there (an executor with a queue: the task may wait for a node first), and
closes it when it ends.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["Attempt", "close_attempt", "drop_attempt", "load_attempts", "open_attempt", "start_attempt"]


@dataclass(frozen=True)
class Attempt:
    number: int
    launched_ms: int  # handed to the executor
    node: str | None = None  # where it ran (an executor with nodes)
    node_type: str | None = None  # the node's type, which prices it (ncaas.cost)
    started_ms: int | None = None  # when it really started there
    ended_ms: int | None = None
    outcome: str | None = None  # the task's state after it: queued again (a retry), succeeded, failed, ...
    cause: str | None = None  # why it ended

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def load_attempts(text: str | None) -> list[Attempt]:
    names = {f.name for f in fields(Attempt)}
    try:
        items = json.loads(text or "[]")
    except ValueError:
        return []
    return [Attempt(**{k: v for k, v in item.items() if k in names}) for item in items if isinstance(item, dict)]


def _dump(attempts: list[Attempt]) -> str:
    return json.dumps([a.to_json() for a in attempts])


def open_attempt(text: str | None, number: int, launched_ms: int) -> str:
    """The list with attempt ``number`` launched (replacing one of that number cut short before)."""
    kept = [a for a in load_attempts(text) if a.number < number]
    return _dump([*kept, Attempt(number, launched_ms)])


def drop_attempt(text: str | None, number: int) -> str:
    """The list without attempt ``number`` (its launch was cut short before it started)."""
    return _dump([a for a in load_attempts(text) if a.number != number])


def start_attempt(text: str | None, number: int, *, node: str | None, started_ms: int) -> str:
    """The list with attempt ``number`` started on ``node``."""
    return _dump(
        [replace(a, node=node, started_ms=started_ms) if a.number == number else a for a in load_attempts(text)]
    )


def close_attempt(
    text: str | None,
    number: int,
    *,
    ended_ms: int,
    outcome: str,
    cause: str,
    node: str | None,
    node_type: str | None = None,
) -> str:
    """The list with attempt ``number`` ended (its node filled in when only its exit record named it)."""
    out = []
    for a in load_attempts(text):
        if a.number == number:
            a = replace(
                a,
                ended_ms=ended_ms,
                outcome=outcome,
                cause=cause,
                node=a.node or node,
                node_type=a.node_type or node_type,
            )
        out.append(a)
    return _dump(out)
