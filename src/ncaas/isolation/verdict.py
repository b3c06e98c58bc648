"""Why a sandboxed task ended, in words a scientist can act on.

A sandbox stops a task itself when it reaches its memory or process limit; every
other refusal (a read-only file system, a path that does not exist inside the
sandbox, no network) reaches the task as an error, which it usually dies of. These
functions read the task's last words and explain them against what the sandbox
showed it.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sandbox import SandboxSpec

__all__ = ["Verdict", "explain_exit", "human_size"]

SYSTEM_ROOTS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


@dataclass(frozen=True)
class Verdict:
    """Why a task ended, in words. ``reason`` is a short code, ``message`` the sentence."""

    ok: bool
    reason: str
    message: str


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def explain_exit(
    output: str, returncode: int, spec: SandboxSpec, *, address_space_limit: bool, sandboxed: bool
) -> Verdict:
    """Explain a non-zero exit from the task's last 40 lines of output."""
    tail = "\n".join(output.strip().splitlines()[-40:])
    if address_space_limit and re.search(
        r"MemoryError|Unable to allocate|Cannot allocate memory|"
        r"bad_alloc|out of memory",
        tail,
    ):
        return Verdict(
            False,
            "memory",
            f"stopped: it tried to use more than its memory limit of "
            f"{human_size(spec.memory or 0)} (address-space limit); raise resources.memory "
            "in the blueprint or use less memory",
        )
    if sandboxed:
        verdict = _explain_path(tail, spec)
        if verdict is not None:
            return verdict
        if re.search(
            r"Connection refused|Network is unreachable|Temporary failure in name "
            r"resolution|Name or service not known|No route to host",
            tail,
        ):
            return Verdict(
                False,
                "network_denied",
                "stopped: it tried to use the network; tasks run "
                "without network access, so nothing outside the sandbox is reachable",
            )
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return Verdict(False, "signal", f"ended by {name}")
    last = tail.splitlines()[-1] if tail else ""
    return Verdict(False, "exit_code", f"exited with code {returncode}" + (f": {last[:300]}" if last else ""))


def _explain_path(tail: str, spec: SandboxSpec) -> Verdict | None:
    """A failed file access in the task's last words, explained against what the sandbox shows."""
    path = _quoted_path(tail, r"Read-only file system|Permission denied|No such file or directory")
    read_only = "Read-only file system" in tail
    if path is None:
        return (
            Verdict(
                False,
                "write_denied",
                "stopped: it tried to write outside its output folder; only the output folder and /tmp are writable",
            )
            if read_only
            else None
        )
    target = Path(path)
    if not target.is_absolute():
        return None
    if spec.environment is not None and target.is_relative_to(spec.environment):
        return Verdict(
            False,
            "environment_write_denied",
            f"stopped: it tried to modify its analysis environment ({path}), which is read-only",
        )
    if _hidden(target, spec):
        return Verdict(
            False,
            "outside_access",
            f"stopped: it tried to reach {path}, which is outside "
            "its sandbox; a task sees only its own inputs, output, environment and /tmp",
        )
    if any(target.is_relative_to(p) for p in spec.readonly):
        link = _link_leaving(target, spec)
        if link is not None:
            return Verdict(
                False,
                "link_outside",
                f"stopped: it tried to read {path}, a symbolic link to "
                f"{link} outside its dataset; a task sees only its own dataset, so copy the file "
                "into the dataset instead of linking to it",
            )
        if read_only:  # only a write is refused with "Read-only file system"; a missing file is not one
            return Verdict(
                False, "write_denied", f"stopped: it tried to modify its input ({path}); inputs are read-only"
            )
        return None
    if read_only:
        return Verdict(
            False,
            "write_denied",
            f"stopped: it tried to write outside its output folder "
            f"({path}); only the output folder and /tmp are writable",
        )
    return None


def _link_leaving(path: Path, spec: SandboxSpec) -> str | None:
    """The text of ``path`` when, on the host, it is a link leading out of the inputs bound for the task."""
    try:
        target = os.readlink(path)
    except OSError:
        return None
    real = Path(os.path.realpath(path))
    inside = any(real.is_relative_to(Path(os.path.realpath(p))) for p in spec.readonly)
    return None if inside else target


def _quoted_path(text: str, phrase: str) -> str | None:
    """The path named in the last error line matching ``phrase`` (Python's or coreutils' form)."""
    found = None
    for line in text.splitlines():
        if re.search(phrase, line):
            match = re.search(r"(?:: |cannot \w+ )['\"]?(/[^'\"]*?)['\"]?(?::|$)", line) or re.search(
                r"'(/[^']*)'", line
            )
            found = match.group(1) if match else found
    return found


def _hidden(path: Path, spec: SandboxSpec) -> bool:
    """Whether ``path`` (or the folder it would be created in) exists on the host but not for the task."""
    if _visible(path, spec):
        return False
    if path.exists():
        return True
    bound = [Path(p).absolute() for p in (*spec.readonly, *spec.writable)]
    in_sandbox = {Path("/"), Path("/tmp")} | {a for p in bound for a in p.parents}
    return path.parent.exists() and path.parent not in in_sandbox and not _visible(path.parent, spec)


def _visible(path: Path, spec: SandboxSpec) -> bool:
    """Whether the host's ``path`` is what the task sees at that path."""
    roots = [Path(p) for p in SYSTEM_ROOTS]
    roots += [Path(p) for p in (*spec.readonly, *spec.writable)]
    if spec.environment is not None:
        roots.append(spec.environment)
    return any(path.is_relative_to(root) for root in roots)
