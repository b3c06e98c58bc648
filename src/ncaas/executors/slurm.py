"""The slurm executor: each task is an sbatch job on the cluster, storage on its shared filesystem.

``ncaas manager --executor slurm --root /shared/lab-data [--slurm-profile site.yaml]``.
The manager runs on a login or service node, where Slurm's commands work. For each task it

- builds (once per environment key) the analysis environment on the manager's machine, in
  the shared environment cache (the site profile's ``environments``, or ``NCAAS_ENVS``), so
  compute nodes need no internet;
- writes the task into its run folder (on the shared filesystem, under ``<root>/.ncaas``)
  and submits a batch script that runs :mod:`ncaas.executors._slurm_node` on the node:
  the environment is verified there, and the task runs under the local executor's
  supervisor and sandbox, writing its log and progress into storage as locally;
- asks Slurm for the blueprint's resources: ``--cpus-per-task``, ``--mem`` (the blueprint's
  memory plus the profile's ``memory_margin`` for the supervisor), ``--time`` (the timeout
  plus ``time_margin``; the supervisor enforces the timeout itself), ``--gres=gpu:N``, and
  the profile's partition, account, QoS and extra options;
- tracks it by its Slurm job id (``slurm.json`` in the run folder), so a restarted manager
  adopts the jobs still queued or running: they do not stop with the manager.

Slurm never requeues a task by itself (``--no-requeue``): a job that ends without the
supervisor's record is mapped from its Slurm state (see :func:`ncaas.executors._slurm.outcome`),
and the manager's retry policy decides as locally. The Slurm job id, node and the measured
usage (``sacct`` where the cluster keeps accounting; else slurmctld's times and the
supervisor's own CPU and memory measurements) go into the certificate.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..exceptions import ExecutorError
from ..storage import Storage
from . import _slurm
from ._slurm_node import EXIT_FILE, TASK_FILE
from .base import LOST, EnvironmentInfo, ExitRecord, Lost, TaskHandle, TaskSpec
from .local import LocalExecutor
from .slurm_profile import SiteProfile

__all__ = ["SlurmExecutor"]

LISTING_TTL = 0.5  # seconds a reading of squeue is reused for every task's poll
ACCOUNTING_EVERY = 0.5  # seconds between sacct reads of a job whose end slurmdbd has not recorded yet
_NOT_YET = object()
RECORD_GRACE_S = 10.0  # a job still listed this long after its node's record is settled from the record
NODES_TTL = 30.0  # seconds a reading of sinfo is reused
JOB_FILE = "slurm.json"
SUBMIT_FILE = "slurm-submit.json"
CANCEL_FILE = "slurm-cancel"
_TASK_ENV = ("PYTHONUNBUFFERED", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _job_name(run_dir: Path) -> str:
    """The Slurm job name of a task's attempt: ``ncaas-<job id>-<dataset>.<attempt>``, unique."""
    return f"ncaas-{run_dir.parent.name}-{run_dir.name}"


def _tail(path: Path, size: int = 4096) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(fh.seek(0, os.SEEK_END) - size, 0))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


class SlurmExecutor:
    """Run tasks as sbatch jobs of the cluster whose commands work here, with data in ``storage``."""

    name = "slurm"
    stages_storage = False  # the storage root is on the shared filesystem: tasks use its files in place
    queues = True  # a job may wait in Slurm's queue; its node says when it started

    def __init__(self, storage: Storage, profile: SiteProfile | None = None):
        if not storage.is_local:
            raise ExecutorError(
                f"the slurm executor runs tasks on the cluster's shared filesystem, and {storage.url} is "
                "remote; use --root with a folder every node mounts at the same path"
            )
        self.storage = storage
        self.profile = profile or SiteProfile()
        self.python = str(self.profile.python or sys.executable)
        self.user = getpass.getuser()
        self._local = LocalExecutor()  # builds environments here, on the manager's machine
        self._listing: tuple[float, dict[str, _slurm.JobInfo]] = (-1e9, {})
        self._nodes: tuple[float, list[dict[str, Any]]] = (-1e9, [])
        self._isolation: set[str] = set()
        self._cancel_sent: set[Path] = set()
        self._accounting_asked: dict[str, float] = {}
        self.version = (_slurm.run("sinfo", "--version").split() or ["?"])[-1]  # "slurm 22.05.8" or "slurm-wlm 22.05.8"
        self.cluster = self._cluster_name()
        if not self._live_nodes(fresh=True):
            where = f"partition {self.profile.partition}" if self.profile.partition else "the cluster"
            raise ExecutorError(f"sinfo lists no node of {where}; check the site profile's partition")

    def _cluster_name(self) -> str:
        for line in _slurm.run("scontrol", "show", "config").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "ClusterName":
                return value.strip()
        return "slurm"

    # -- environments --------------------------------------------------------------------
    def ensure_environment(self, blueprint: Any, *, progress: Any = None) -> EnvironmentInfo:
        """Build or verify the environment here, in the shared cache; each node verifies it again."""
        return self._local.ensure_environment(blueprint, progress=progress)

    # -- lifecycle -----------------------------------------------------------------------
    def _sbatch_argv(self, spec: TaskSpec, script: Path) -> list[str]:
        profile = self.profile
        memory = (spec.memory_limit or 0) + profile.memory_margin
        argv = [
            "sbatch",
            "--parsable",
            f"--job-name={_job_name(spec.run_dir)}",
            f"--chdir={spec.run_dir}",
            f"--output={spec.run_dir}/slurm-%j.out",
            "--export=NIL",  # nothing of the manager's environment (keys, database URL) reaches the node
            "--no-requeue",  # retries are the manager's, as for every executor
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={spec.cpus}",
            f"--mem={-(-memory // 2**20)}M",
            f"--time={_slurm.sbatch_time(spec.timeout + profile.time_margin)}",
        ]
        argv += [f"--{key}={value}" for key in ("partition", "account", "qos") if (value := getattr(profile, key))]
        gpus = spec.blueprint.blueprint.resources.gpus if spec.blueprint is not None else 0
        if gpus:
            argv.append(f"--gres=gpu:{gpus}")
        return [*argv, *profile.sbatch_args, str(script)]

    def launch(self, spec: TaskSpec) -> TaskHandle:
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        for folder in (spec.output_dir, spec.log_path.parent, spec.progress_path.parent):
            folder.mkdir(parents=True, exist_ok=True)
        payload = spec.to_json()
        payload["env"] = {k: v for k, v in spec.env.items() if k.startswith("NCAAS_") or k in _TASK_ENV}
        environment = None
        if spec.environment is not None:
            manifest = _read_json(Path(f"{spec.environment}.json")) or {}
            environment = {
                "python": str(spec.environment / "bin" / "python"),
                "path": str(spec.environment),
                "lock_hash": manifest.get("lock_sha256"),
                "manifest_hash": manifest.get("manifest_sha256"),
                "env_hash": manifest.get("env_sha256"),
                "source_hash": manifest.get("source_sha256") or None,
            }
        task = {"spec": payload, "environment": environment, "sandbox": self.profile.sandbox}
        (spec.run_dir / TASK_FILE).write_text(json.dumps(task, indent=1))
        script = spec.run_dir / "slurm.sh"
        command = shlex.join([self.python, "-m", "ncaas.executors._slurm_node", str(spec.run_dir)])
        script.write_text(f"#!/bin/sh\nexec {command}\n")
        job = {
            "name": _job_name(spec.run_dir),
            "environment": environment,
            "argv": spec.argv,
            "time_limit_s": _slurm.parse_duration(_slurm.sbatch_time(spec.timeout + self.profile.time_margin)),
            "memory_bytes": (spec.memory_limit or 0) + self.profile.memory_margin,
        }
        # Written before sbatch: a manager stopped between sbatch and slurm.json finds the job by name
        (spec.run_dir / SUBMIT_FILE).write_text(json.dumps(job))
        job_id = _slurm.run(*self._sbatch_argv(spec, script)).strip().split(";")[0]
        if not job_id.isdigit():
            raise ExecutorError(f"sbatch answered {job_id!r}, not a job id")
        submitted = time.time()
        (spec.run_dir / JOB_FILE).write_text(json.dumps({**job, "job_id": job_id, "submitted": submitted}))
        self._listing = (-1e9, {})  # the next poll reads squeue again: the new job is in it
        return TaskHandle(spec.run_dir, int(job_id), submitted)

    def _jobs(self) -> dict[str, _slurm.JobInfo]:
        when, jobs = self._listing
        if time.monotonic() - when > LISTING_TTL:
            jobs = _slurm.listing(self.user)
            self._listing = (time.monotonic(), jobs)
        return jobs

    def poll(self, handle: TaskHandle) -> ExitRecord | Lost | None:
        """The node's exit record once the job is over; None while Slurm runs or queues it;
        the Slurm state's meaning when the job ended without a record (a node failure, a kill)."""
        job = _read_json(handle.run_dir / JOB_FILE)
        if job is None:
            return self.exit_record(handle.run_dir) or LOST
        left = self._left_node(handle.run_dir)
        info = self._jobs().get(job["job_id"])
        # The node writes its record just before its job ends: Slurm's account of the job
        # (state, elapsed, usage) is final once the job has left the queue, moments later.
        late = left is not None and time.time() - left > RECORD_GRACE_S
        if info is not None and info.state in _slurm.ACTIVE and not late:
            return None
        data = _read_json(handle.run_dir / EXIT_FILE)
        if data is None or data.get("lost"):
            return self._without_record(handle.run_dir, job, info)
        usage = self._final_accounting(job["job_id"], wait=not late)
        if usage is _NOT_YET:
            return None
        return self._with_record(data, job, usage)

    def _final_accounting(self, job_id: str, *, wait: bool) -> dict[str, Any] | None | object:
        """sacct's account of an ended job; _NOT_YET while slurmdbd has not heard of its end."""
        last = self._accounting_asked.get(job_id, 0.0)
        if wait and time.monotonic() - last < ACCOUNTING_EVERY:
            return _NOT_YET
        self._accounting_asked[job_id] = time.monotonic()
        usage = _slurm.accounting(job_id)
        if wait and usage is not None and (usage.get("state") in _slurm.ACTIVE or "max_rss_bytes" not in usage):
            return _NOT_YET
        self._accounting_asked.pop(job_id, None)
        return usage

    def _left_node(self, run_dir: Path) -> float | None:
        """When the node wrote its exit record (None: not yet)."""
        try:
            return (run_dir / EXIT_FILE).stat().st_mtime
        except OSError:
            return None

    def _without_record(self, run_dir: Path, job: dict[str, Any], info: _slurm.JobInfo | None) -> ExitRecord | Lost:
        job_id = job["job_id"]
        usage = _slurm.accounting(job_id)
        fields = _slurm.job_info(job_id) if usage is None else {}
        said = (usage or {}).get("state")
        if said in _slurm.ACTIVE:  # slurmdbd has not heard of the end yet: slurmctld's word
            said = None
        state = said or (info.state if info else None) or fields.get("JobState") or "UNKNOWN"
        node = (usage or {}).get("node") or (info.node if info else None) or fields.get("NodeList")
        node = None if node in ("", "None assigned", "(null)") else node
        decided = _slurm.outcome(
            state,
            job_id=job_id,
            node=node,
            cancel_asked=(run_dir / CANCEL_FILE).exists(),
            time_limit_s=job.get("time_limit_s"),
            memory_bytes=job.get("memory_bytes"),
            output_tail=_tail(run_dir / f"slurm-{job_id}.out"),
            exit_code=(usage or {}).get("exit_code") or fields.get("ExitCode"),
        )
        if isinstance(decided, Lost):
            return decided
        slurm = self._usage(job_id, usage, fields, state=state, node=node)
        environment = {**(job.get("environment") or {}), "node": node, "slurm": slurm}
        extra = {**decided.extra, "node": node, "node_type": self.profile.node_type_of(node)} if node else decided.extra
        return ExitRecord.from_json(
            {**decided.to_json(), **extra, "environment": environment, "argv": job.get("argv") or []}
        )

    def _usage(
        self,
        job_id: str,
        usage: dict[str, Any] | None,
        fields: dict[str, str],
        *,
        state: str | None = None,
        node: str | None = None,
        record: ExitRecord | None = None,
    ) -> dict[str, Any]:
        """What the certificate keeps of the job: sacct's measurements, else slurmctld's and the supervisor's."""
        if usage is not None:
            return {"job_id": job_id, **usage}
        elapsed = _slurm.parse_duration(fields.get("RunTime"))
        return {
            "job_id": job_id,
            "state": state or fields.get("JobState"),
            "node": node or fields.get("NodeList"),
            "elapsed_s": elapsed,
            "cpu_seconds": record.cpu_seconds if record else None,
            "max_rss_bytes": record.peak_memory_bytes if record else None,
            "source": "scontrol and ncaas' supervisor (the cluster keeps no sacct accounting)",
        }

    def exit_record(self, run_dir: Path) -> ExitRecord | None:
        """The record the node left in the run folder (however long ago), with Slurm's accounting."""
        data = _read_json(run_dir / EXIT_FILE)
        if data is None or data.get("lost"):
            return None
        job = _read_json(run_dir / JOB_FILE) or {}
        job_id = str(data.get("slurm_job") or job.get("job_id") or "")
        return self._with_record(data, job, _slurm.accounting(job_id) if job_id else None)

    def _with_record(self, data: dict[str, Any], job: dict[str, Any], usage: Any) -> ExitRecord:
        """The node's record, with the job's accounting added to the environment it reports."""
        if data.get("node_isolation"):
            self._isolation.add(str(data["node_isolation"]))
        data["node_type"] = self.profile.node_type_of(data.get("node"))  # prices the attempt (ncaas.cost)
        job_id = str(data.get("slurm_job") or job.get("job_id") or "")
        if job_id and isinstance(data.get("environment"), dict):
            fields = _slurm.job_info(job_id) if usage is None else {}
            record = ExitRecord.from_json(data)
            data["environment"]["slurm"] = self._usage(job_id, usage, fields, node=data.get("node"), record=record)
        elif job:
            data.setdefault("environment", job.get("environment") or {})
            data.setdefault("argv", job.get("argv") or [])
        return ExitRecord.from_json(data)

    def cancel(self, handle: TaskHandle) -> None:
        """Ask the task's node to stop it (the supervisor's cancel); a job still queued is just removed."""
        if handle.run_dir in self._cancel_sent:
            return
        job = _read_json(handle.run_dir / JOB_FILE)
        if job is None:
            return
        self._cancel_sent.add(handle.run_dir)
        (handle.run_dir / CANCEL_FILE).write_text("")
        info = self._jobs().get(job["job_id"])
        try:
            if info is not None and info.state == "PENDING":
                _slurm.run("scancel", job["job_id"])
            else:
                _slurm.run("scancel", "--batch", "--signal=TERM", job["job_id"])
        except ExecutorError:
            pass  # it ended meanwhile: its record says how

    def kill(self, handle: TaskHandle) -> None:
        """End the job at once (Slurm kills everything it started)."""
        job = _read_json(handle.run_dir / JOB_FILE)
        if job is not None:
            try:
                _slurm.run("scancel", job["job_id"])
            except ExecutorError:
                pass
        self._cancel_sent.discard(handle.run_dir)

    def finish(self, run_dir: Path) -> None:
        """Nothing here: the node dissolved the sandbox when the task ended."""
        self._cancel_sent.discard(run_dir)

    def find(self, run_dir: Path) -> TaskHandle | None:
        """The job of a run folder, from its Slurm job id (after a manager restart); a job submitted
        by a manager stopped before it wrote the id down is found by its name."""
        job = _read_json(run_dir / JOB_FILE) or self._found_by_name(run_dir)
        if job is None:
            return None
        return TaskHandle(run_dir, int(job["job_id"]), float(job.get("submitted") or 0.0))

    def _found_by_name(self, run_dir: Path) -> dict[str, Any] | None:
        job = _read_json(run_dir / SUBMIT_FILE)
        if job is None:
            return None
        found = [i.job_id for i in _slurm.listing(self.user).values() if i.name == job["name"]]
        if not found:
            return None
        job.update(job_id=found[0], submitted=(run_dir / SUBMIT_FILE).stat().st_mtime)
        (run_dir / JOB_FILE).write_text(json.dumps(job))
        return job

    def started(self, run_dir: Path) -> bool:
        """A task whose job was never submitted did not start; a submitted one may have."""
        return (run_dir / JOB_FILE).exists() or self._found_by_name(run_dir) is not None

    # -- description ---------------------------------------------------------------------
    def _live_nodes(self, *, fresh: bool = False) -> list[dict[str, Any]]:
        when, nodes = self._nodes
        if fresh or time.monotonic() - when > NODES_TTL:
            nodes = [
                n
                for n in _slurm.cluster_nodes(self.profile.partition)
                if not n["state"].startswith(("down", "drain", "fail"))
            ]
            self._nodes = (time.monotonic(), nodes)
        return nodes

    def capacity(self) -> tuple[int, int]:
        """CPUs and memory of the partition's usable nodes (or the profile's ``max_cpus``)."""
        nodes = self._live_nodes()
        cpus = sum(n["cpus"] for n in nodes)
        memory = sum(n["memory"] for n in nodes)
        if self.profile.max_cpus is not None:
            memory = memory * self.profile.max_cpus // cpus if cpus else 1 << 62
            cpus = self.profile.max_cpus
        return cpus, memory

    @property
    def cpus(self) -> int:
        return self.capacity()[0]

    @property
    def isolation(self) -> str:
        """The sandboxes the nodes reported for the tasks they ran."""
        if self._isolation:
            return "; ".join(sorted(self._isolation))
        if not self.profile.sandbox:
            return "none: the Slurm site profile says sandbox: off, tasks ran without a sandbox"
        return "chosen on each Slurm node (see each task)"

    def describe(self) -> dict[str, Any]:
        nodes = self._live_nodes(fresh=True)
        cpus, memory = self.capacity()
        where = f" (partition {self.profile.partition})" if self.profile.partition else ""
        return {
            "name": self.name,
            "address": f"{self.cluster}{where}",
            "slurm_version": self.version,
            "host": socket.gethostname(),
            "nodes": sorted(n["name"] for n in nodes),
            "cpus": cpus,
            "memory_bytes": memory,
            "profile": self.profile.model_dump(mode="json", exclude={"sbatch_args"}),
        }

    def close(self) -> None:
        """Nothing to let go: Slurm jobs run on without the manager and are adopted at its next start."""
