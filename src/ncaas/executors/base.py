"""The executor interface: a task spec goes in, a handle comes out, exit records come back."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

__all__ = ["LOST", "EnvironmentInfo", "Executor", "ExitRecord", "Lost", "TaskHandle", "TaskSpec"]


@dataclass(frozen=True)
class ExitRecord:
    """How a task ended: written by its supervisor (``exit.json``), a Ray node, or the manager.

    The fields the manager decides on are named; whatever else an executor recorded (the
    node, its timings, the sandbox's isolation) is kept in ``extra``.
    """

    returncode: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    cpu_seconds: float | None = None
    peak_memory_bytes: int | None = None
    cancelled: bool = False
    timed_out: bool = False
    reclaimed: bool = False  # a Save task interrupted as a spot instance is (ncaas reclaim): retried
    timeout: float | None = None  # the limit a timed-out task exceeded (s)
    error: str | None = None  # the task could not start
    stopped: str | None = None  # the sandbox stopped it, or it broke the sandbox's rules
    disk_full: dict[str, Any] | None = None  # {"path", "wrote_bytes"}: it failed for lack of space
    reason: str | None = None  # why the task says it failed (NCAAS_ERROR_FILE or an NCAAS_ERROR line), cleaned
    environment: dict[str, Any] | None = None  # the environment a remote node actually ran
    argv: list[str] | None = None  # the command a remote node actually ran
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExitRecord:
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        for flag in ("cancelled", "timed_out", "reclaimed"):
            known[flag] = bool(known.get(flag))
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        return {**self.extra, **out}


@dataclass(frozen=True)
class Lost:
    """A task whose supervisor vanished without an exit record (killed with its machine or worker),
    or that never started because its node could not do its part.

    ``why``: what the executor knows of it ("its Ray node was lost", "node X cannot reach
    s3://..."); None: nothing."""

    why: str | None = None


LOST = Lost()
"""Returned by :meth:`Executor.poll` when a task's supervisor vanished without an exit record."""


@dataclass
class TaskSpec:
    """Everything needed to run one task, and nothing about jobs or storage."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    inputs: list[Path]  # mounted read-only by a sandbox
    output_dir: Path  # writable
    scratch_dir: Path  # writable, private, removed after the task
    memory_limit: int | None  # bytes
    cpus: int
    timeout: float  # seconds
    log_path: Path
    progress_path: (
        Path  # the task's live progress, written by its supervisor alone (the manager copies it into status/)
    )
    run_dir: Path  # executor bookkeeping: spec.json, runner.pid, exit.json
    status_fields: dict[str, Any] = field(default_factory=dict)  # who the task is (job, dataset, attempt)
    environment: Path | None = None  # the analysis environment (bound read-only); None: the platform's python
    blueprint: Any = None  # the LoadedBlueprint; executors that ship the analysis to other machines need it

    def to_json(self) -> dict[str, Any]:
        out = asdict(dataclasses.replace(self, blueprint=None))
        del out["blueprint"]
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
        out["inputs"] = [str(p) for p in self.inputs]
        out["environment"] = str(self.environment) if self.environment else None
        return out


@dataclass(frozen=True)
class TaskHandle:
    """How to find a launched task again, even from another process."""

    run_dir: Path
    pid: int
    start_time: float  # the supervisor's process creation time, against pid reuse


@dataclass(frozen=True)
class EnvironmentInfo:
    """The analysis environment a task runs in (filled by ncaas.isolation.environments)."""

    python: str
    lock_hash: str | None = None
    manifest_hash: str | None = None
    env_hash: str | None = None  # the content address: lock + analysis source + interpreter
    source_hash: str | None = None
    path: str | None = None


class Executor(Protocol):
    """What the manager asks of where tasks run; it never reaches past this."""

    name: str
    stages_storage: bool  # True: tasks get storage paths and fetch and upload their data themselves
    queues: bool  # True: a launched task may wait for a node; its progress says when it started (node_started_ms)

    @property
    def cpus(self) -> int:
        """CPUs tasks may use at once."""
        ...

    @property
    def isolation(self) -> str:
        """The isolation tasks get, in one line (for certificates)."""
        ...

    def ensure_environment(self, blueprint: Any, *, progress: Any = None) -> EnvironmentInfo:
        """The blueprint's environment, built or verified; called from a background thread."""
        ...

    def launch(self, spec: TaskSpec) -> TaskHandle: ...

    def poll(self, handle: TaskHandle) -> ExitRecord | Lost | None:
        """How the task ended; None while it runs; LOST when its supervisor vanished without a record."""
        ...

    def cancel(self, handle: TaskHandle) -> None: ...

    def kill(self, handle: TaskHandle) -> None: ...

    def finish(self, run_dir: Path) -> None: ...

    def find(self, run_dir: Path) -> TaskHandle | None: ...

    def exit_record(self, run_dir: Path) -> ExitRecord | None:
        """The exit record a task's supervisor left, found without a handle (after a manager crash)."""
        ...

    def started(self, run_dir: Path) -> bool:
        """Whether the task's command may have started; False only when it provably did not."""
        ...

    def capacity(self) -> tuple[int, int]: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None:
        """Let go of what the executor holds (a Ray connection); tasks it owns stop with it."""
        ...
