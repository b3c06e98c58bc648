"""The local executor: each task is a supervised subprocess on this machine.

Two seams, kept small on purpose:

- :meth:`LocalExecutor.ensure_environment` — where ncaas.isolation.environments builds or
  verifies the blueprint's immutable environment and returns its python and hashes;
- :meth:`LocalExecutor.prepare` — where ncaas.isolation.sandbox wraps the task's argv
  (bubblewrap, cgroup) and names the isolation it applied (``isolation``), with
  :meth:`LocalExecutor.finish` to dissolve it when the task has stopped. While a task
  runs, :meth:`LocalExecutor.poll` stops it when it reaches a sandbox limit, and adds
  the sandbox's account of why a task ended (``stopped``) to its exit record.

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
import time
from pathlib import Path
from typing import Any

import psutil

from ..exceptions import ExecutorError, NcaasError
from ..isolation import environments
from ..isolation import sandbox as sandboxes
from .base import LOST, EnvironmentInfo, ExitRecord, Lost, TaskHandle, TaskSpec

__all__ = ["LocalExecutor"]

_RUNNER = Path(__file__).with_name("_runner.py")
ERROR_FILE = ".ncaas-error"  # in the task's scratch: where it may write why it failed (NCAAS_ERROR_FILE)
VERIFY_EVERY = 30.0  # seconds: an environment is re-hashed in full at most this often per manager
_LIMIT_REASONS = {
    "process_limit",
    "memory",
    "write_denied",
    "environment_write_denied",
    "outside_access",
    "network_denied",
    "link_outside",
}


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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write whole or not at all: a manager killed mid-write leaves no half a handle behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _alive(handle: TaskHandle) -> bool:
    """Whether the handle's supervisor still runs.

    It is known by its command line, which names its run folder's spec.json: a process
    start time does not tell it across processes, as psutil derives it from the boot time,
    which /proc gives in whole seconds and which moves when the clock is adjusted (a live
    supervisor then looked dead to a restarted manager, and was retried while it ran).
    Without a readable command line, the start time decides, within that second.
    """
    try:
        proc = psutil.Process(handle.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = proc.cmdline()
        if cmdline:
            return str(handle.run_dir / "spec.json") in cmdline
        return abs(proc.create_time() - handle.start_time) < 1.5
    except psutil.Error:
        return False


_SUPERVISORS: dict[Path, subprocess.Popen[bytes]] = {}
"""Supervisors this process started, by run folder, until reaped. Kept per process, not per executor:
a task outlives the executor (and the manager) that started it, and whichever executor of this
process settles it reaps its supervisor; one dropped with its executor would be a zombie."""


class LocalExecutor:
    """Run tasks as subprocesses, bounded by this machine's cores and memory."""

    name = "local"
    stages_storage = False  # tasks read and write the storage root's files where they are
    queues = False  # a launched task starts at once

    def __init__(self, *, cpus: int | None = None, memory: int | None = None):
        self.cpus = cpus or _cpu_count()
        self.memory = memory or psutil.virtual_memory().total
        self._children = _SUPERVISORS  # of this process, whichever executor started them

    @property
    def isolation(self) -> str:
        """The sandbox every task gets here (see ncaas.isolation.sandbox), in one line."""
        return sandboxes.describe_isolation()

    # -- seams ---------------------------------------------------------------------------
    def ensure_environment(self, blueprint: Any, *, progress: environments.Progress | None = None) -> EnvironmentInfo:
        """Build (once, showing progress) or verify the blueprint's immutable environment.

        A blueprint without ``environment`` runs with the platform's own python.
        ``progress`` also receives the build's progress. Safe to call from several
        threads (ncaas.isolation.environments builds each environment once, under a file lock).
        """
        try:
            spec = environments.spec_for_blueprint(blueprint)
            if spec is None:
                return EnvironmentInfo(python=sys.executable)
            env, _ = environments.ensure(
                spec, progress=_BuildProgress(spec.name, also=progress), verified_within=VERIFY_EVERY
            )
        except NcaasError as exc:
            raise ExecutorError(str(exc)) from exc
        return EnvironmentInfo(
            python=str(env.python),
            lock_hash=env.lock_sha256,
            manifest_hash=env.manifest_sha256,
            env_hash=env.env_sha256,
            source_hash=env.manifest["source_sha256"] or None,
            path=str(env.path),
        )

    def prepare(self, spec: TaskSpec) -> tuple[list[str], dict[str, str]]:
        """Open the task's sandbox; the argv and environment variables that run it inside.

        The sandbox (cgroups, scratch) is recorded in the run folder so that any
        manager process can check its limits and dissolve it (:meth:`finish`).
        """
        readonly = list(spec.inputs)
        if spec.environment is None:  # the platform's own interpreter and import path, read-only
            readonly += sandboxes.platform_python_paths()
        box_spec = sandboxes.SandboxSpec(
            readonly=readonly,
            writable=[spec.output_dir],
            environment=spec.environment,
            memory=spec.memory_limit,
            cpus=spec.cpus,
            scratch=spec.scratch_dir,
            env={k: v for k, v in spec.env.items() if k.startswith("NCAAS_")},
        )
        try:
            box = sandboxes.Sandbox(box_spec).__enter__()
        except NcaasError as exc:
            raise ExecutorError(str(exc)) from exc
        (spec.run_dir / "sandbox.json").write_text(json.dumps(box.state()))
        environ = box.environ
        # the scratch as the task sees it (its /tmp under bubblewrap); the supervisor reads it at the host path
        environ["NCAAS_ERROR_FILE"] = str(Path(environ["TMPDIR"]) / ERROR_FILE)
        return box.command(spec.argv), environ

    # -- lifecycle -----------------------------------------------------------------------
    def launch(self, spec: TaskSpec) -> TaskHandle:
        for folder in (
            spec.run_dir,
            spec.output_dir,
            spec.scratch_dir,
            spec.log_path.parent,
            spec.progress_path.parent,
        ):
            folder.mkdir(parents=True, exist_ok=True)
        payload = spec.to_json()
        payload["argv"], payload["env"] = self.prepare(spec)
        payload["command"] = list(spec.argv)  # what the log shows: the task's own command
        payload["error_file"] = str(spec.scratch_dir / ERROR_FILE)
        payload["memory_limit"] = None  # the sandbox enforces it (cgroup, else its own RLIMIT_AS)
        spec_path = spec.run_dir / "spec.json"
        spec_path.write_text(json.dumps(payload, indent=1))
        try:
            with open(spec.run_dir / "runner.err", "ab") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-S", "-P", str(_RUNNER), str(spec_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise ExecutorError(f"cannot start the task supervisor: {exc}") from exc
        try:
            start = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            start = 0.0
        _write_json(spec.run_dir / "runner.json", {"pid": proc.pid, "start_time": start})
        self._children[spec.run_dir] = proc
        return TaskHandle(spec.run_dir, proc.pid, start)

    def poll(self, handle: TaskHandle) -> ExitRecord | Lost | None:
        """The exit record once the task is over, None while it runs, LOST if it vanished."""
        exit_path = handle.run_dir / "exit.json"
        record = _read_json(exit_path)
        own = self._children.get(handle.run_dir)
        if record is not None:
            if own is not None:
                own.wait()
                del self._children[handle.run_dir]
            return ExitRecord.from_json(_explain(handle.run_dir, record))
        running = own.poll() is None if own is not None else _alive(handle)
        if running:
            _check_limits(handle.run_dir)
            return None
        self._children.pop(handle.run_dir, None)
        record = _read_json(exit_path)
        return LOST if record is None else ExitRecord.from_json(_explain(handle.run_dir, record))

    def cancel(self, handle: TaskHandle) -> None:
        """Ask the supervisor to stop the task (it SIGTERMs, then SIGKILLs, the task's group)."""
        if _alive(handle):
            try:
                os.kill(handle.pid, signal.SIGTERM)
                return
            except ProcessLookupError:
                pass
        self._kill_task_group(handle.run_dir)

    def kill(self, handle: TaskHandle) -> None:
        """Kill the supervisor and the task's process group at once."""
        if _alive(handle):
            try:
                os.kill(handle.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._kill_task_group(handle.run_dir)
        box = _sandbox(handle.run_dir)
        if box is not None:
            box.kill()
        own = self._children.pop(handle.run_dir, None)
        if own is not None:
            own.wait()

    def finish(self, run_dir: Path) -> None:
        """Dissolve what a stopped task used: any process left, its cgroups, its scratch."""
        own = self._children.get(run_dir)
        if own is not None and own.poll() is not None:  # reaped: no zombie left behind
            del self._children[run_dir]
        box = _sandbox(run_dir)
        if box is not None:
            box.close()
        shutil.rmtree(run_dir / "scratch", ignore_errors=True)

    def exit_record(self, run_dir: Path) -> ExitRecord | None:
        """The exit record the task's supervisor wrote, if it wrote one (however long ago)."""
        record = _read_json(run_dir / "exit.json")
        return None if record is None else ExitRecord.from_json(_explain(run_dir, record))

    def started(self, run_dir: Path) -> bool:
        """Whether the task's command may have started: the supervisor writes child.json as
        soon as it has started it (a launch cut short before that leaves none)."""
        return (run_dir / "child.json").exists()

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

    def close(self) -> None:
        """Nothing to let go: tasks run on under their supervisors and are adopted at the next start."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpus": self.cpus,
            "memory_bytes": self.memory,
        }


# -- the sandbox around each task --------------------------------------------------------
def _sandbox(run_dir: Path) -> sandboxes.Sandbox | None:
    state = _read_json(run_dir / "sandbox.json")
    return sandboxes.Sandbox.restore(state) if state else None


def _check_limits(run_dir: Path) -> None:
    """Stop a task that hit its process limit or was OOM-killed (the whole task goes)."""
    box = _sandbox(run_dir)
    if box is not None and box.stopped is None and box.check():
        (run_dir / "sandbox.json").write_text(json.dumps(box.state()))


def _log_tail(run_dir: Path, size: int = 16384) -> str:
    spec = _read_json(run_dir / "spec.json") or {}
    try:
        with open(spec.get("log_path", ""), "rb") as log:
            log.seek(max(log.seek(0, os.SEEK_END) - size, 0))
            return log.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _explain(run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Add the sandbox's account of why a task ended, in words, to its exit record."""
    box = _sandbox(run_dir)
    if box is None or record.get("cancelled") or record.get("timed_out") or record.get("returncode") is None:
        return record
    record = {**record, "returncode": box.returncode(record["returncode"]), "isolation": box.isolation()}
    # inside bwrap's PID namespace the task's own usage does not reach the supervisor's
    # getrusage(); the memory cgroup saw all of it
    try:
        peak = box.peak_memory() if "memory" in box.cgroups else None
    except (OSError, ValueError):
        peak = None  # the cgroup is already gone (task dissolved)
    if peak:
        record["peak_memory_bytes"] = max(record.get("peak_memory_bytes") or 0, peak)
    cpu = getattr(box, "cpu_seconds", None)  # cgroup CPU accounting, where the sandbox keeps one
    if callable(cpu):
        try:
            record["cpu_seconds"] = max(record.get("cpu_seconds") or 0.0, float(cpu() or 0.0))
        except (OSError, ValueError):
            pass
    verdict = box.verdict(record["returncode"], _log_tail(run_dir))
    if not verdict.ok and verdict.reason in _LIMIT_REASONS:
        record["stopped"] = verdict.message
    return record


class _BuildProgress:
    """Show an environment build on stderr: one line per step, at most one per second."""

    def __init__(self, name: str, *, also: environments.Progress | None = None):
        self.name = name
        self.last = 0.0
        self.also = also

    def __call__(self, fraction: float, message: str) -> None:
        if self.also is not None:
            self.also(fraction, message)
        now = time.monotonic()
        if fraction >= 1.0 or fraction == 0.0 or now - self.last >= 1.0:
            self.last = now
            print(f"[ncaas] {self.name} environment {fraction:4.0%}: {message}", file=sys.stderr, flush=True)
