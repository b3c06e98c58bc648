"""The local executor: each task is a supervised subprocess on this machine.

Two seams, kept small on purpose:

- :meth:`LocalExecutor.ensure_environment` — where ncaas.environments builds or
  verifies the blueprint's immutable environment and returns its python and hashes;
- :meth:`LocalExecutor.prepare` — where ncaas.sandbox wraps the task's argv
  (bubblewrap, cgroup) and names the isolation it applied (``isolation``), with
  :meth:`LocalExecutor.finish` to dissolve it when the task has stopped.

Each task runs under ``_runner.py`` in its own session, so tasks survive the
manager; the handle (pid + process start time) lets any later process find,
adopt, cancel or kill it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from ..exceptions import ExecutorError
from .base import LOST, EnvironmentInfo, TaskHandle, TaskSpec

__all__ = ["LocalExecutor"]

_RUNNER = Path(__file__).with_name("_runner.py")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _alive(pid: int, start_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - start_time) < 0.5 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class LocalExecutor:
    """Run tasks as subprocesses, bounded by this machine's cores and memory."""

    name = "local"
    isolation = "none"

    def __init__(self, *, cpus: int | None = None, memory: int | None = None):
        self.cpus = cpus or _cpu_count()
        self.memory = memory or psutil.virtual_memory().total
        self._children: dict[Path, subprocess.Popen[bytes]] = {}

    # -- seams ---------------------------------------------------------------------------
    def ensure_environment(self, blueprint: Any) -> EnvironmentInfo:
        """The environment a blueprint's tasks run in; for now the platform's own python."""
        return EnvironmentInfo(python=sys.executable)

    def prepare(self, spec: TaskSpec) -> list[str]:
        """The argv actually executed for ``spec``; a sandbox wraps ``spec.argv`` here."""
        return list(spec.argv)

    # -- lifecycle -----------------------------------------------------------------------
    def launch(self, spec: TaskSpec) -> TaskHandle:
        for folder in (spec.run_dir, spec.output_dir, spec.scratch_dir, spec.log_path.parent,
                       spec.status_path.parent):
            folder.mkdir(parents=True, exist_ok=True)
        payload = spec.to_json()
        payload["argv"] = self.prepare(spec)
        spec_path = spec.run_dir / "spec.json"
        spec_path.write_text(json.dumps(payload, indent=1))
        try:
            with open(spec.run_dir / "runner.err", "ab") as err:
                proc = subprocess.Popen([sys.executable, "-S", str(_RUNNER), str(spec_path)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                        start_new_session=True, close_fds=True)
        except OSError as exc:
            raise ExecutorError(f"cannot start the task supervisor: {exc}") from exc
        try:
            start = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            start = 0.0
        (spec.run_dir / "runner.json").write_text(json.dumps({"pid": proc.pid, "start_time": start}))
        self._children[spec.run_dir] = proc
        return TaskHandle(spec.run_dir, proc.pid, start)

    def poll(self, handle: TaskHandle) -> dict[str, Any] | None:
        """The exit record once the task is over, None while it runs, LOST if it vanished."""
        exit_path = handle.run_dir / "exit.json"
        record = _read_json(exit_path)
        own = self._children.get(handle.run_dir)
        if record is not None:
            if own is not None:
                own.wait()
                del self._children[handle.run_dir]
            return record
        running = own.poll() is None if own is not None else _alive(handle.pid, handle.start_time)
        if running:
            return None
        self._children.pop(handle.run_dir, None)
        return _read_json(exit_path) or LOST

    def cancel(self, handle: TaskHandle) -> None:
        """Ask the supervisor to stop the task (it SIGTERMs, then SIGKILLs, the task's group)."""
        if _alive(handle.pid, handle.start_time):
            try:
                os.kill(handle.pid, signal.SIGTERM)
                return
            except ProcessLookupError:
                pass
        self._kill_task_group(handle.run_dir)

    def kill(self, handle: TaskHandle) -> None:
        """Kill the supervisor and the task's process group at once."""
        if _alive(handle.pid, handle.start_time):
            try:
                os.kill(handle.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._kill_task_group(handle.run_dir)
        own = self._children.pop(handle.run_dir, None)
        if own is not None:
            own.wait()

    def finish(self, run_dir: Path) -> None:
        """Dissolve what a stopped task used (its scratch; a sandbox also its cgroup)."""
        shutil.rmtree(run_dir / "scratch", ignore_errors=True)

    def find(self, run_dir: Path) -> TaskHandle | None:
        """Find a task's supervisor from its run folder (after a manager crash)."""
        info = _read_json(run_dir / "runner.json")
        if info is not None:
            return TaskHandle(run_dir, int(info["pid"]), float(info["start_time"]))
        spec_path = str(run_dir / "spec.json")
        for proc in psutil.process_iter(["cmdline", "create_time"]):
            if spec_path in (proc.info["cmdline"] or []):
                return TaskHandle(run_dir, proc.pid, proc.info["create_time"])
        return None

    def _kill_task_group(self, run_dir: Path) -> None:
        child = _read_json(run_dir / "child.json")
        if child is None:
            return
        pid = int(child["pid"])
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    # -- description ---------------------------------------------------------------------
    def capacity(self) -> tuple[int, int]:
        return self.cpus, self.memory

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "host": socket.gethostname(), "platform": platform.platform(),
                "python": sys.version.split()[0], "cpus": self.cpus, "memory_bytes": self.memory}
