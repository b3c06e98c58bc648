"""One task on a Ray node: stage from storage, run exactly as locally, stream back, upload.

The manager builds a :class:`~ncaas.executors.base.TaskSpec` whose paths are *storage*
paths (``bucket/prefix/<group>/...`` on S3). On the node this module

1. unpacks the analysis bundle (blueprint, lock, source) after checking every file's
   sha256, and has the local executor build or verify the environment from it
   (``ncaas.isolation.environments``: content-addressed, read-only, verified by hash);
2. downloads the dataset and config from storage into a private work folder;
3. runs the task through :class:`~ncaas.executors.local.LocalExecutor` — the same
   supervisor (``_runner.py``), sandbox, timeout and exit record as on one machine;
4. while it runs, copies its status (progress) and log into the group's storage;
5. uploads the outputs, and returns the exit record (plus the node and environment).

A ``KeyboardInterrupt`` is how Ray delivers a (non-forced) cancel: the task is then
stopped through the local executor, which records it as cancelled. Work folders whose
Ray worker died (a forced cancel, a manager gone) are swept by the next task here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from ..blueprint import LoadedBlueprint
from ..exceptions import NcaasError
from ..storage import Storage
from .base import ExitRecord, Lost, TaskSpec
from .local import LocalExecutor

__all__ = ["NodeTask", "pack_bundle", "run_node_task", "warm_up"]

SYNC_EVERY = 1.0  # seconds between copies of status and log into storage
BIG_LOG = 8 << 20  # logs larger than this are copied every SYNC_EVERY_BIG seconds only
SYNC_EVERY_BIG = 15.0
MAX_BUNDLE = 256 << 20
_TASK_ENV = ("PYTHONUNBUFFERED", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_SECRET_PREFIXES = ("AWS_", "RAY_", "NCAAS_", "GOOGLE_", "AZURE_")
_SKIP_PARTS = {"__pycache__", ".git", ".pytest_cache", ".ruff_cache", ".venv", "build", "dist"}


@dataclasses.dataclass
class NodeTask:
    """What the driver sends with each Ray task (small; the bundle travels as an object ref)."""

    spec: TaskSpec
    storage_url: str
    config_path: str  # storage path of the job's config.json
    python_placeholder: str  # stands for the environment's python in spec.argv
    blueprint: LoadedBlueprint
    bundle_files: dict[str, str]  # relative path -> sha256 of everything in the bundle
    bundle_blueprint: str  # the blueprint file's path inside the bundle
    bundle_environment: dict[str, str]  # the blueprint's environment paths, relative, inside the bundle
    s3_endpoint: str | None = None
    # The manager's S3 endpoint and keys (``--ray-s3-settings server``): they travel with the task's
    # arguments, never in Ray's runtime environment (whose agent logs it on every node), and are
    # kept out of the analysis' own environment (see _node_env).
    s3_settings: dict[str, str] = dataclasses.field(default_factory=dict)
    exit_path: str | None = None  # storage path where the exit record is kept for a restarted manager


# -- the analysis bundle -----------------------------------------------------------------
def _wanted(path: Path) -> bool:
    return (
        path.is_file()
        and not any(p in _SKIP_PARTS or p.endswith(".egg-info") for p in path.parts)
        and path.suffix not in (".pyc", ".pyo")
    )


def pack_bundle(
    loaded: LoadedBlueprint, lock: Path | None, source: Path | None
) -> tuple[bytes, dict[str, str], str, dict[str, str]]:
    """Tar the blueprint's folder, its lock and its analysis source for the nodes.

    Returns the archive, the sha256 of every file in it, the blueprint's path inside it,
    and the blueprint's ``environment`` rewritten to point at the lock and source inside it.
    """
    blueprint = Path(loaded.path).resolve()
    files = {blueprint} | {p for p in blueprint.parent.rglob("*") if _wanted(p)}
    if lock is not None and lock.is_file():
        files.add(lock.resolve())
    if source is not None:
        files |= {p for p in source.resolve().rglob("*") if _wanted(p)}
    # One level above the common folder, so folders keep their names on the node (an environment
    # is named after its source folder, e.g. framestats-<hash>, the same on every machine).
    base = Path(os.path.commonpath([str(p.parent) for p in files])).parent
    digests: dict[str, str] = {}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(files):
            rel = path.relative_to(base).as_posix()
            data = path.read_bytes()
            digests[rel] = hashlib.sha256(data).hexdigest()
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    if buffer.tell() > MAX_BUNDLE:
        raise NcaasError(
            f"the analysis of {blueprint} packs to {buffer.tell() >> 20} MB, more than the "
            f"{MAX_BUNDLE >> 20} MB shipped to Ray nodes; keep data out of its folders"
        )
    here = blueprint.parent
    environment = {}
    if lock is not None:
        environment["lock"] = os.path.relpath(lock.resolve(), here)
    if source is not None:
        environment["source"] = os.path.relpath(source.resolve(), here)
    return buffer.getvalue(), digests, blueprint.relative_to(base).as_posix(), environment


def _unpack_bundle(archive: bytes, files: dict[str, str], root: Path) -> Path:
    """Unpack once per content, after checking every file against the driver's hashes."""
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:24]
    target = root / "bundles" / digest
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=target.parent))
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(partial, filter="data")
    for rel, expected in files.items():
        got = hashlib.sha256((partial / rel).read_bytes()).hexdigest()
        if got != expected:
            shutil.rmtree(partial, ignore_errors=True)
            raise NcaasError(
                f"the analysis file {rel} arrived on this node with sha256 {got[:12]}..., "
                f"not {expected[:12]}... as sent; refusing to build from it"
            )
    (partial / ".complete").write_text("")
    try:
        partial.rename(target)
    except OSError:  # another task on this node unpacked the same bundle first
        shutil.rmtree(partial, ignore_errors=True)
    return target


# -- work folders ------------------------------------------------------------------------
def node_root() -> Path:
    return Path(os.environ.get("NCAAS_NODE_DIR") or Path(tempfile.gettempdir()) / "ncaas-node")


def _sweep_orphans(root: Path, local: LocalExecutor) -> None:
    """Stop and remove the tasks of Ray workers that died without cleaning up."""
    for owner_file in (root / "work").glob("*/owner.json"):
        try:
            owner = json.loads(owner_file.read_text())
            alive = abs(psutil.Process(owner["pid"]).create_time() - owner["start"]) < 0.5
        except (psutil.Error, OSError, ValueError, KeyError):
            alive = False
        if alive:
            continue
        run_dir = owner_file.parent / "run"
        handle = local.find(run_dir) if (run_dir / "runner.json").exists() else None
        if handle is not None:
            local.kill(handle)
        local.finish(run_dir)
        shutil.rmtree(owner_file.parent, ignore_errors=True)


def _node_env(spec: TaskSpec, scratch: Path) -> dict[str, str]:
    """This node's environment without credentials, plus the task's own variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SECRET_PREFIXES)}
    env.update({k: v for k, v in spec.env.items() if k.startswith("NCAAS_") or k in _TASK_ENV})
    env["TMPDIR"] = str(scratch)
    return env


# -- streaming status and log into storage -----------------------------------------------
class _Streamer:
    """Copy the task's status file and log into storage while it runs."""

    def __init__(self, storage: Storage, pairs: list[tuple[Path, str]]):
        self.storage = storage
        self.pairs = pairs
        self.seen: dict[Path, tuple[int, int]] = {}
        self.last: dict[Path, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="ncaas-stream", daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(SYNC_EVERY):
            with contextlib.suppress(NcaasError, OSError):
                self.sync()

    def sync(self, *, final: bool = False) -> None:
        for local, remote in self.pairs:
            try:
                stat = local.stat()
            except FileNotFoundError:
                continue
            stamp = (stat.st_size, stat.st_mtime_ns)
            if self.seen.get(local) == stamp:
                continue
            now = time.monotonic()
            if not final and stat.st_size > BIG_LOG and now - self.last.get(local, 0.0) < SYNC_EVERY_BIG:
                continue
            self.storage.write_bytes(remote, local.read_bytes())
            self.seen[local], self.last[local] = stamp, now

    def __enter__(self) -> _Streamer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


# -- the task ----------------------------------------------------------------------------
class _NodeRun:
    def __init__(self, task: NodeTask, bundle: bytes):
        self.started_ms = int(time.time() * 1000)  # the task waited in Ray's queue until now
        self.task = task
        self.bundle = bundle
        self.spec = task.spec
        self.root = node_root()
        self.local = LocalExecutor()
        (self.root / "work").mkdir(parents=True, exist_ok=True)
        _sweep_orphans(self.root, self.local)
        dataset = self.spec.status_fields.get("dataset", "task")
        self.work = Path(tempfile.mkdtemp(prefix=f"{dataset}.", dir=self.root / "work"))
        me = psutil.Process()
        (self.work / "owner.json").write_text(json.dumps({"pid": me.pid, "start": me.create_time()}))
        self.storage = Storage(task.storage_url)
        self.node_ip = _node_ip()
        self.timings: dict[str, float] = {}
        self.status_fields = {
            **self.spec.status_fields,
            "state": "running",
            "node": self.node_ip,
            "node_started_ms": self.started_ms,
        }

    def _status(self, message: str) -> None:
        data = {**self.status_fields, "progress": 0.0, "message": message, "updated_ms": int(time.time() * 1000)}
        self.storage.write_text(str(self.spec.progress_path), json.dumps(data, indent=1))

    def prepare(self) -> tuple[TaskSpec, dict[str, Any]]:
        started = time.monotonic()
        self._status(f"preparing on node {self.node_ip}: analysis environment")
        bundle_dir = _unpack_bundle(self.bundle, self.task.bundle_files, self.root)
        original = self.task.blueprint
        model = original.blueprint.model_copy(
            update={"environment": original.blueprint.environment.model_copy(update=self.task.bundle_environment)}
        )
        loaded = dataclasses.replace(original, blueprint=model, path=bundle_dir / self.task.bundle_blueprint)
        env_info = self.local.ensure_environment(loaded)
        self.timings["environment_s"] = time.monotonic() - started
        started = time.monotonic()
        self._status(f"preparing on node {self.node_ip}: fetching the dataset")
        spec = self.spec
        local_config = self.work / "config.json"
        self.storage.get(self.task.config_path, local_config)
        staged = {self.task.config_path: local_config}
        for number, source in enumerate(str(p) for p in spec.inputs):
            if source not in staged:
                staged[source] = self.work / "inputs" / str(number) / Path(source).name
                staged[source].parent.mkdir(parents=True)
                self.storage.get(source, staged[source])
        output, run_dir = self.work / "outputs" / spec.output_dir.name, self.work / "run"
        log = self.work / "logs" / spec.log_path.name
        log.parent.mkdir(parents=True)
        if self.storage.exists(str(spec.log_path)):  # earlier attempts' lines stay, as locally
            self.storage.get(str(spec.log_path), log)
        self.timings["stage_s"] = time.monotonic() - started
        swaps = {
            str(spec.output_dir): str(output),
            self.task.python_placeholder: env_info.python,
            **{old: str(new) for old, new in staged.items()},
        }
        swap = sorted(swaps.items(), key=lambda kv: -len(kv[0]))  # longest first: paths nest
        argv = []
        for arg in spec.argv:
            for old, new in swap:
                arg = arg.replace(old, new)
            argv.append(arg)
        changes: dict[str, Any] = dict(
            argv=argv,
            env=_node_env(spec, run_dir / "scratch"),
            cwd=run_dir / "scratch",
            inputs=[staged[str(p)] for p in spec.inputs],
            output_dir=output,
            scratch_dir=run_dir / "scratch",
            log_path=log,
            progress_path=self.work / "status" / spec.progress_path.name,
            run_dir=run_dir,
            status_fields=self.status_fields,
            environment=Path(env_info.path) if env_info.path else None,
        )
        environment = {**dataclasses.asdict(env_info), "node": self.node_ip}
        return dataclasses.replace(spec, **changes), environment

    def execute(self, spec: TaskSpec) -> dict[str, Any]:
        spec.output_dir.mkdir(parents=True, exist_ok=True)
        pairs = [(spec.progress_path, str(self.spec.progress_path)), (spec.log_path, str(self.spec.log_path))]
        streamer = _Streamer(self.storage, pairs)
        handle = self.local.launch(spec)
        record: ExitRecord | Lost | None = None
        with streamer:
            while record is None:
                try:
                    record = self.local.poll(handle)
                    if record is None:
                        time.sleep(0.1)
                except KeyboardInterrupt:  # Ray's cancel: stop it the local way, then report
                    self.local.cancel(handle)
        started = time.monotonic()
        streamer.sync(final=True)
        self.storage.remove(str(self.spec.output_dir))  # a retry replaces an earlier attempt's outputs
        if any(spec.output_dir.iterdir()):
            self.storage.put(spec.output_dir, str(self.spec.output_dir))
        self.timings["upload_s"] = time.monotonic() - started
        self._final_status(spec.progress_path)
        return {"lost": True} if isinstance(record, Lost) else record.to_json()

    def _final_status(self, local_status: Path) -> None:
        """The last status, with where the node spent its time (the manager keeps these fields)."""
        try:
            data = json.loads(local_status.read_text())
        except (OSError, ValueError):
            data = dict(self.status_fields)
        data["node_timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        self.storage.write_text(str(self.spec.progress_path), json.dumps(data, indent=1))

    def close(self) -> None:
        self.local.finish(self.work / "run")
        shutil.rmtree(self.work, ignore_errors=True)


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray (tests of this module), the host name will do
        return socket.gethostname()


def warm_up() -> str:
    """Run once on each node as the manager joins (or the node does): it starts the Ray worker
    that the manager's tasks then reuse, with this module and what it imports loaded, so the
    first task on a node does not wait seconds for a worker process to start. Returns the node."""
    from ..storage import s3  # noqa: F401 - loaded now, not by the first task that needs it

    return _node_ip()


NODE_TYPE_LABEL = "ncaas-node-type"
"""The Ray node label naming a node's type in the pricing profile (``ray start --labels ncaas-node-type=NAME``)."""


def _node_type() -> str | None:
    try:
        import ray

        labels = ray.get_runtime_context().get_node_labels()
    except Exception:  # noqa: BLE001 - outside Ray, or a Ray without node labels: the blueprint's shape prices it
        return None
    found: object = labels.get(NODE_TYPE_LABEL) if isinstance(labels, dict) else None
    if isinstance(found, list):
        found = found[0] if found else None
    return found if isinstance(found, str) else None


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (tests of this module)
        return None


def _unreachable(task: NodeTask) -> str | None:
    """Why this node cannot reach the storage root (endpoint, credentials, permissions), or None."""
    try:
        Storage(task.storage_url).exists(task.config_path)
    except (NcaasError, OSError, ImportError) as exc:
        return f"node {_node_ip()} cannot reach {task.storage_url}: {exc}"
    return None


def run_node_task(task: NodeTask, bundle: bytes) -> dict[str, Any]:
    """Run one task on this node; always returns an exit record (see ncaas.jobs.states.decide_exit).

    The record is also kept in storage (``task.exit_path``) before it is returned: the
    manager that launched the task may be gone by then, and the one that replaces it reads
    it there, so a task that ran is never run again.
    """
    if task.s3_settings:  # before any S3 client of this worker is made: the node's own settings lose
        os.environ.update(task.s3_settings)
    elif task.s3_endpoint and not os.environ.get("NCAAS_S3_ENDPOINT"):
        os.environ["NCAAS_S3_ENDPOINT"] = task.s3_endpoint
    why = _unreachable(task)
    if why is not None:  # nothing ran: the manager keeps this node out and runs the task elsewhere
        return {"lost": True, "unreachable": why, "node_id": _node_id()}
    record = _run_node_task(task, bundle)
    if task.exit_path and not record.get("lost"):
        with contextlib.suppress(NcaasError, OSError):
            Storage(task.storage_url).write_text(task.exit_path, json.dumps(record))
    return record


def _run_node_task(task: NodeTask, bundle: bytes) -> dict[str, Any]:
    started_ms = int(time.time() * 1000)
    run: _NodeRun | None = None
    try:
        run = _NodeRun(task, bundle)
        spec, environment = run.prepare()
        record = run.execute(spec)
        record.update(
            node=run.node_ip,
            environment=environment,
            argv=spec.argv,
            node_timings={k: round(v, 3) for k, v in run.timings.items()},
        )
        record["node_isolation"] = run.local.isolation  # one line, as the local executor describes it
        node_type = _node_type()
        if node_type is not None:
            record["node_type"] = node_type  # prices the attempt (ncaas.cost: the profile's node_types)
        return record
    except KeyboardInterrupt:
        return {"cancelled": True, "returncode": None, "start_ms": started_ms, "end_ms": int(time.time() * 1000)}
    except (NcaasError, OSError) as exc:
        where = f" on node {run.node_ip}" if run is not None else ""
        return {"error": f"{exc}{where}", "returncode": None, "start_ms": started_ms, "end_ms": int(time.time() * 1000)}
    finally:
        if run is not None:
            run.close()
