"""Slurm's commands (sbatch, squeue, scancel, sacct, scontrol, sinfo), and what their answers mean.

Everything here that decides is pure (:func:`outcome`, the parsers); the few functions that
run a command raise :class:`~ncaas.exceptions.ExecutorError` in words when Slurm refuses.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from ..exceptions import ExecutorError
from .base import ExitRecord, Lost

__all__ = [
    "ACTIVE",
    "JobInfo",
    "accounting",
    "cluster_nodes",
    "job_info",
    "listing",
    "outcome",
    "parse_duration",
    "parse_size",
    "run",
    "sbatch_time",
]

ACTIVE = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
}
"""States of a job that is not over (squeue's long names)."""

MEMORY_SIGNS = ("exceeded memory limit", "exceeded job memory limit", "oom-kill", "out of memory")
TIMEOUT_S = 30.0  # a Slurm command that answers slower than this is taken as a controller not answering


def run(*argv: str, timeout: float = TIMEOUT_S) -> str:
    """Run a Slurm command; its output, or ExecutorError with Slurm's own words."""
    if shutil.which(argv[0]) is None:
        raise ExecutorError(
            f"{argv[0]} is not on PATH: the slurm executor runs where Slurm's commands work "
            "(a login or service node of the cluster)"
        )
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ExecutorError(f"{argv[0]} did not answer within {timeout:g} s (is slurmctld up?)") from None
    except OSError as exc:
        raise ExecutorError(f"cannot run {argv[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        said = " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
        raise ExecutorError(f"{argv[0]} refused: {said}")
    return done.stdout


# -- parsing -----------------------------------------------------------------------------
def parse_duration(text: str | None) -> float | None:
    """Seconds of a Slurm duration: ``[D-]HH:MM:SS[.mmm]``, ``MM:SS`` or ``MM:SS.mmm``."""
    if not text or text in ("UNLIMITED", "INVALID", "Partition_Limit", "N/A"):
        return None
    days = 0
    if "-" in text:
        head, text = text.split("-", 1)
        days = int(head)
    parts = [float(p) for p in text.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    hours, minutes, seconds = parts[-3:]
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


def parse_size(text: str | None) -> int | None:
    """Bytes of a Slurm size such as ``51200K``, ``1.5G`` or ``0`` (sacct's MaxRSS)."""
    if not text:
        return None
    match = re.fullmatch(r"([0-9.]+)([KMGTP]?)", text.strip())
    if match is None:
        return None
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}[match.group(2)]
    return int(float(match.group(1)) * scale)


def sbatch_time(seconds: float) -> str:
    """Slurm's ``--time`` (whole minutes, at least one) for a limit in seconds."""
    minutes = max(1, math.ceil(seconds / 60))
    return f"{minutes // 60}:{minutes % 60:02d}:00"


def _fields(line: str) -> dict[str, str]:
    """``scontrol show -o`` output: ``Key=Value`` pairs separated by spaces."""
    out = {}
    for item in line.split():
        key, sep, value = item.partition("=")
        if sep:
            out[key] = value
    return out


# -- queries -----------------------------------------------------------------------------
@dataclass(frozen=True)
class JobInfo:
    """What Slurm says of one job: its state, node and why it is where it is."""

    job_id: str
    state: str
    node: str | None = None
    reason: str | None = None
    name: str | None = None


def listing(user: str) -> dict[str, JobInfo]:
    """Every job of ``user`` that slurmctld still holds, by id (finished ones for MinJobAge)."""
    text = run("squeue", "-h", "-t", "all", "-u", user, "-o", "%i|%T|%N|%r|%j")
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 4)
        if len(parts) == 5:
            job_id, state, node, reason, name = parts
            jobs[job_id] = JobInfo(job_id, state, node or None, None if reason in ("None", "") else reason, name)
    return jobs


def job_info(job_id: str) -> dict[str, str]:
    """``scontrol show job`` for one job, as its Key=Value pairs; empty once slurmctld forgot it."""
    try:
        return _fields(run("scontrol", "show", "job", "-o", job_id))
    except ExecutorError:
        return {}


def accounting(job_id: str) -> dict[str, Any] | None:
    """sacct's measured usage of a finished job; None where the cluster keeps no accounting.

    The batch step holds the usage of everything ncaas ran on the node; the job's own line
    holds its state, node and elapsed time.
    """
    try:
        text = run(
            "sacct", "-n", "-P", "-j", job_id, "--format=JobID,State,ExitCode,NodeList,ElapsedRaw,TotalCPU,MaxRSS"
        )
    except ExecutorError:
        return None  # "Slurm accounting storage is disabled", or sacct absent
    usage: dict[str, Any] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 7:
            continue
        step, state, code, nodes, elapsed, cpu, rss = parts
        if step == job_id:
            usage.update(state=state.split()[0], exit_code=code, node=nodes, elapsed_s=float(elapsed or 0))
            usage.setdefault("cpu_seconds", parse_duration(cpu))
        elif step.endswith(".batch"):
            usage["cpu_seconds"] = parse_duration(cpu)
            usage["max_rss_bytes"] = parse_size(rss)
    return ({**usage, "source": "sacct"}) if usage else None


def cluster_nodes(partition: str | None) -> list[dict[str, Any]]:
    """The partition's nodes (every node without one): name, CPUs, memory (bytes), state."""
    argv = ["sinfo", "-h", "-N", "-o", "%N|%c|%m|%t"]
    if partition:
        argv[1:1] = ["-p", partition]
    nodes: dict[str, dict[str, Any]] = {}
    for line in run(*argv).splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4 and parts[0] not in nodes:
            memory = int(parts[2].rstrip("+")) if parts[2].rstrip("+").isdigit() else 0
            nodes[parts[0]] = {"name": parts[0], "cpus": int(parts[1]), "memory": memory * 2**20, "state": parts[3]}
    return list(nodes.values())


# -- what an ended job means -------------------------------------------------------------
def outcome(
    state: str,
    *,
    job_id: str,
    node: str | None,
    cancel_asked: bool,
    time_limit_s: float | None,
    memory_bytes: int | None,
    output_tail: str,
    exit_code: str | None = None,
) -> ExitRecord | Lost:
    """The exit record (or LOST, to be retried) of a Slurm job that ended without ncaas' record.

    ``state`` is Slurm's (sacct or squeue), ``output_tail`` the end of the job's own output
    file, where slurmstepd says why it stopped a job.
    """
    on = f" on node {node}" if node else ""
    tail = output_tail.lower()
    memory = f"{memory_bytes / 2**20:.0f} MiB" if memory_bytes else "the memory"
    if state == "OUT_OF_MEMORY" or any(sign in tail for sign in MEMORY_SIGNS):
        return ExitRecord(
            returncode=-9,
            stopped=f"out of memory: Slurm stopped its job {job_id}{on} when it used more than the {memory} "
            "it was given (the blueprint's memory plus the site's memory_margin); raise the blueprint's "
            "resources.memory",
        )
    if state == "CANCELLED" and cancel_asked:
        return ExitRecord(cancelled=True)
    if state == "TIMEOUT" or "due to time limit" in tail:
        return ExitRecord(timed_out=True, timeout=time_limit_s)
    if state == "NODE_FAIL" or "due to node failure" in tail:
        return Lost(f"its Slurm node failed (NODE_FAIL){on}")
    if state == "PREEMPTED" or "due to preemption" in tail:
        return Lost(f"Slurm preempted its job {job_id}{on} for another job (PREEMPTED)")
    if state == "BOOT_FAIL":
        return Lost(f"its Slurm node could not boot (BOOT_FAIL){on}")
    if state == "CANCELLED":
        return Lost(f"its Slurm job {job_id} was cancelled outside ncaas (scancel, or an administrator){on}")
    if state == "DEADLINE":
        return ExitRecord(error=f"Slurm ended its job {job_id} at the job's deadline (DEADLINE){on}")
    if state == "FAILED":
        last = next((line.strip() for line in reversed(output_tail.splitlines()) if line.strip()), "")
        said = f": {last[:300]}" if last else ""
        return ExitRecord(
            error=f"its Slurm job {job_id} failed{on} (exit code {exit_code or '?'}) before ncaas' supervisor "
            f"wrote a record{said}"
        )
    if state == "UNKNOWN":
        return Lost(f"Slurm no longer knows its job {job_id}, and it left no record")
    return Lost(f"its Slurm job {job_id} ended ({state}){on} without a record from ncaas' supervisor")
