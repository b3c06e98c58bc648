"""Review decisions: a log of actions folded into the final state the curation reads (pure, no I/O).

Actions are ``accept``, ``reject``, ``merge`` (two or more neurons into one) and ``undo`` (of the
latest action still in effect, whoever made it). Each is checked against the state the log
so far gives, so the final state is always consistent: no neuron both rejected and merged, or
both accepted and rejected; merges are disjoint (merging into a merged neuron joins its group).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import NcaasError

__all__ = ["ACTIONS", "FORMAT", "DecisionRefused", "Entry", "State", "decisions_document", "fold"]

FORMAT = "ncaas-review/1"
ACTIONS = ("accept", "reject", "merge", "undo")


class DecisionRefused(NcaasError):
    """An action that does not fit the current decisions; the message says how to go on."""


@dataclass(frozen=True)
class Entry:
    seq: int
    action: str
    neurons: tuple[int, ...]
    user: str
    at: str
    undoes: int | None = None

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "action": self.action, "user": self.user, "at": self.at}
        if self.action == "undo":
            out["undoes"] = self.undoes
        else:
            out["neurons"] = list(self.neurons)
        return out


@dataclass
class State:
    n_neurons: int
    accepted: set[int] = field(default_factory=set)
    rejected: set[int] = field(default_factory=set)
    merges: list[set[int]] = field(default_factory=list)
    in_effect: list[int] = field(default_factory=list)  # seqs of the actions not undone, in order

    def merged(self) -> dict[int, int]:
        return {n: i for i, group in enumerate(self.merges) for n in group}

    def final(self) -> dict[str, Any]:
        groups = sorted(sorted(g) for g in self.merges)
        return {"accepted": sorted(self.accepted), "rejected": sorted(self.rejected), "merges": groups}

    def status(self) -> dict[int, str]:
        """Each decided neuron's status: accepted, rejected or merged (merged wins over accepted)."""
        out = {n: "accepted" for n in self.accepted}
        out.update({n: "rejected" for n in self.rejected})
        out.update({n: "merged" for n in self.merged()})
        return out


def _check_ids(state: State, neurons: tuple[int, ...]) -> None:
    bad = [n for n in neurons if not 0 <= n < state.n_neurons]
    if bad:
        raise DecisionRefused(f"no neuron {bad[0]}: this result has neurons 0 to {state.n_neurons - 1}")


def _apply(state: State, entry: Entry) -> None:
    """``entry`` applied to ``state`` (changed in place), or DecisionRefused."""
    ids = entry.neurons
    if entry.action != "undo":
        _check_ids(state, ids)
        if not ids:
            raise DecisionRefused(f"{entry.action} needs at least one neuron")
    if entry.action == "accept":
        state.accepted |= set(ids)
        state.rejected -= set(ids)
    elif entry.action == "reject":
        merged = sorted(set(ids) & set(state.merged()))
        if merged:
            raise DecisionRefused(f"neuron {merged[0]} is part of a merge; undo the merge before rejecting it")
        state.rejected |= set(ids)
        state.accepted -= set(ids)
    elif entry.action == "merge":
        if len(set(ids)) < 2:
            raise DecisionRefused("a merge needs two or more different neurons; select more with shift-click")
        rejected = sorted(set(ids) & state.rejected)
        if rejected:
            raise DecisionRefused(f"neuron {rejected[0]} is rejected; undo its rejection before merging it")
        joined = set(ids)
        kept = []
        for group in state.merges:
            if group & joined:
                joined |= group
            else:
                kept.append(group)
        state.merges = [*kept, joined]
    else:
        raise DecisionRefused(f"unknown action {entry.action!r}; one of {', '.join(ACTIONS)}")
    state.in_effect.append(entry.seq)


def fold(n_neurons: int, log: list[Entry]) -> State:
    """The state after ``log`` (in seq order): every action in effect, replayed; undone ones left out."""
    undone = {e.undoes for e in log if e.action == "undo"}
    state = State(n_neurons)
    for entry in log:
        if entry.action != "undo" and entry.seq not in undone:
            _apply(state, entry)
    return state


def check(n_neurons: int, log: list[Entry], entry: Entry) -> None:
    """Whether ``entry`` may follow ``log``; DecisionRefused says why not."""
    state = fold(n_neurons, log)
    if entry.action == "undo":
        if not state.in_effect:
            raise DecisionRefused("nothing to undo")
        last = state.in_effect[-1]
        if entry.undoes != last:
            raise DecisionRefused(f"the latest decision is now #{last}, made since you looked; reload and undo again")
        return
    _apply(state, entry)


def decisions_document(*, job: str, dataset: str, certificate_sha256: str, n_neurons: int, log: list[Entry]) -> bytes:
    """The decisions file the curation reads (docs/review.md): UTF-8 JSON, keys sorted."""
    doc = {
        "format": FORMAT,
        "job": job,
        "dataset": dataset,
        "certificate_sha256": certificate_sha256,
        "n_neurons": n_neurons,
        "final": fold(n_neurons, log).final(),
        "log": [e.record() for e in log],
    }
    return (json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()
