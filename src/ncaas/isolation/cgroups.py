"""cgroup v1 groups for one task each: create, read, empty, remove, sweep.

Each task gets a group per controller (``memory``, ``pids``, ``cpuacct``) named
``ncaas-<owner pid>-<random>``, created as a sibling of the existing groups directly
under the controller's mount (``$NCAAS_CGROUP_ROOT``, default ``/sys/fs/cgroup``), and
removed when the task is over. A group whose owner died is swept by the next task
anywhere on the machine, unless it still holds processes (a running task that a
restarted manager will adopt).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

__all__ = ["counter", "create", "empty", "pids", "remove", "root", "sweep_stale", "writable"]

CONTROLLERS = ("memory", "pids", "cpuacct")
_OWNER_RE = re.compile(r"^ncaas-(\d+)-[0-9a-f]+$")


def root() -> Path:
    """Where cgroup v1 controllers are mounted (``NCAAS_CGROUP_ROOT``, default /sys/fs/cgroup)."""
    return Path(os.environ.get("NCAAS_CGROUP_ROOT") or "/sys/fs/cgroup")


def writable(controller: str) -> bool:
    """Whether this process may create groups of ``controller`` (a mounted, writable v1 hierarchy)."""
    mount = root() / controller
    return (mount / "cgroup.procs").exists() and os.access(mount, os.W_OK)


def create(controller: str, name: str) -> Path | None:
    """Create ``<root>/<controller>/<name>``; ``None`` where that is not possible."""
    if not writable(controller):
        return None
    try:
        (root() / controller / name).mkdir()
    except OSError:
        return None
    return root() / controller / name


def counter(path: Path, key: str) -> int:
    """The value of ``key`` in a flat-keyed cgroup file (``pids.events``, ``memory.oom_control``)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def pids(group: Path) -> list[int]:
    """The processes in ``group`` (none when it is gone)."""
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def empty(group: Path, timeout: float = 10.0) -> None:
    """SIGKILL every process of ``group`` until none is left (a fork loop cannot outrun it)."""
    deadline = time.monotonic() + timeout
    while (left := pids(group)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.002)


def remove(group: Path) -> None:
    """Empty ``group`` and remove it (retrying while the last processes are reaped)."""
    empty(group)
    deadline = time.monotonic() + 5.0
    while True:
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY while the last processes are reaped; a later sweep retries
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_alive(name: str) -> bool:
    """Whether the process named in an ``ncaas-<pid>-...`` name still runs (True for other names)."""
    match = _OWNER_RE.match(name)
    return match is None or _alive(int(match.group(1)))


def sweep_stale() -> None:
    """Remove the empty groups whose owning ncaas process died without cleaning up."""
    for controller in CONTROLLERS:
        if not writable(controller):
            continue
        for group in (root() / controller).glob("ncaas-*"):
            if not owner_alive(group.name) and not pids(group):
                remove(group)
