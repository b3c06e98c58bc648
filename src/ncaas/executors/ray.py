"""The ray executor: each task is a Ray task on an existing cluster, storage shared through a URL.

``ncaas manager --executor ray --ray-address HOST:PORT --root s3://bucket/prefix``.
The manager is the Ray driver; it runs on a machine of the cluster (usually the head).
Each task asks Ray for the blueprint's resources (``num_cpus``, ``memory``,
``num_gpus`` and custom resources), is spread over the nodes, and runs there through
:mod:`ncaas.executors._ray_node`: the environment is built on the node from the same
lock (shipped with the analysis source and checked by sha256), the dataset is fetched
from storage, the command runs under the local executor's supervisor and sandbox, and
status, log and outputs go straight back into the group's storage.

Behaviour matches the local executor:

- cancel is Ray's (non-forced) cancel, which the node turns into the local cancel;
- timeouts are enforced by the same supervisor on the node;
- Ray never retries by itself (``max_retries=0``): a task whose worker or node was
  lost comes back as :data:`~ncaas.executors.base.LOST`, and the manager's retry
  policy queues it again, so it runs on a node that is alive;
- the manager owns its Ray tasks: if it stops, they stop with it and are retried
  when it starts again; a task that ended before its manager read the result is
  settled from the exit record its node also keeps in the job's results
  (``.exit-records/``, removed once read), so it is never run again.

Ray reads ``RAY_AUTH_MODE`` when it is first imported: with token authentication,
set it (and ``RAY_AUTH_TOKEN_PATH`` or ``RAY_AUTH_TOKEN``) before starting ncaas.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..blueprint import LoadedBlueprint
from ..exceptions import ExecutorError, NcaasError
from ..isolation import environments
from ..storage import Storage
from ..storage.s3 import ENDPOINT_ENV, settings_env
from ._ray_node import NodeTask, pack_bundle, run_node_task
from .base import LOST, EnvironmentInfo, ExitRecord, Lost, TaskHandle, TaskSpec

log = logging.getLogger("ncaas.executors.ray")

__all__ = ["PYTHON_ON_NODE", "RayExecutor"]

PYTHON_ON_NODE = "{python}"
"""What ``{python}`` becomes in a task's argv: each node puts its own environment's python there."""

CAPACITY_TTL = 2.0  # seconds a reading of the cluster's resources is reused
EXIT_RECORDS = ".exit-records"  # in a job's results: each task's exit record, until the manager took it


def _stored_exit_path(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "ray.json").read_text())["exit_path"]
    except (OSError, ValueError, KeyError):
        return None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError(
            "the ray executor needs Ray; install ncaas with its scale extra: pip install 'ncaas[scale]'"
        ) from exc
    return ray


class RayExecutor:
    """Run tasks as Ray tasks on the cluster at ``address``, with data in ``storage``."""

    name = "ray"
    stages_storage = True  # tasks get storage paths and fetch/upload their data themselves

    def __init__(
        self,
        address: str,
        *,
        storage: Storage,
        max_cpus: int | None = None,
        namespace: str = "ncaas",
        pass_s3_settings: bool = True,
    ):
        self.address = address
        self.storage = storage
        self.max_cpus = max_cpus
        # Read once, at the start: what the nodes are told does not change under running tasks.
        self.node_env = settings_env() if pass_s3_settings and not storage.is_local else {}
        self.excluded: dict[str, str] = {}  # Ray node id -> why it cannot reach storage
        self.ray = _import_ray()
        self._connect(namespace)
        self._remote = self.ray.remote(run_node_task)
        self._refs: dict[Path, Any] = {}
        self._cancel_sent: set[Path] = set()
        # the analysis packed for the nodes (by any thread), then put in Ray's object store (by the loop)
        self._packed: dict[tuple[str, ...], tuple[bytes, dict[str, str], str, dict[str, str]]] = {}
        self._bundles: dict[tuple[str, ...], tuple[Any, dict[str, str], str, dict[str, str]]] = {}
        self._isolation: set[str] = set()
        self._capacity: tuple[float, tuple[int, int]] = (0.0, (0, 0))

    def _connect(self, namespace: str) -> None:
        if self.ray.is_initialized():
            return
        try:
            self.ray.init(
                address=self.address,
                namespace=namespace,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=True,
            )
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, its own errors
            mode = os.environ.get("RAY_AUTH_MODE", "unset")
            chain: list[str] = []
            cause: BaseException | None = exc
            while cause is not None:
                chain.append(str(cause))
                cause = cause.__cause__ or cause.__context__
            why = (
                "the cluster refused this process's token"
                if "AuthToken" in " ".join(chain)
                else str(exc).splitlines()[0]
            )
            raise ExecutorError(
                f"cannot join the Ray cluster at {self.address}: {why}. Check the address (the head's "
                "HOST:PORT, or 'auto' on a cluster node); with token authentication set RAY_AUTH_MODE=token "
                f"(now {mode}) and the cluster's token (RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN or "
                "~/.ray/auth_token)"
            ) from None

    # -- environments --------------------------------------------------------------------
    def _pack(self, loaded: LoadedBlueprint) -> tuple[tuple[str, ...], EnvironmentInfo]:
        """Pack the analysis shipped to the nodes, once per content; no Ray call, so any thread may."""
        try:
            spec = environments.spec_for_blueprint(loaded)
            lock, source = (spec.lock_file, spec.source) if spec else (None, None)
            info = EnvironmentInfo(python=PYTHON_ON_NODE)
            if spec is not None:
                info = EnvironmentInfo(
                    python=PYTHON_ON_NODE, lock_hash=spec.lock_sha256(), source_hash=spec.source_sha256() or None
                )
            key = (loaded.sha256, str(loaded.path), str(info.lock_hash), str(info.source_hash))
            if key not in self._packed:
                # two threads may pack the same analysis at once: setdefault keeps one (atomic under the GIL)
                self._packed.setdefault(key, pack_bundle(loaded, lock, source))
        except NcaasError as exc:
            raise ExecutorError(str(exc)) from exc
        except OSError as exc:
            raise ExecutorError(f"cannot read the analysis files of {loaded.name}: {exc}") from exc
        return key, info

    def _bundle(self, loaded: LoadedBlueprint) -> tuple[Any, EnvironmentInfo]:
        """The packed analysis, put in Ray's object store once per content.

        Only the manager's loop calls this: Ray calls stay on the thread that joined the cluster.
        """
        key, info = self._pack(loaded)
        if key not in self._bundles:
            archive, files, rel, environment = self._packed[key]
            self._bundles[key] = (self.ray.put(archive), files, rel, environment)
            self._packed[key] = (b"", files, rel, environment)  # the object store holds the archive now
        return self._bundles[key], info

    def ensure_environment(self, blueprint: LoadedBlueprint, *, progress: Any = None) -> EnvironmentInfo:
        """What the nodes will build: the lock and source hashes (each node builds and verifies its copy).

        Packs the analysis for the nodes, so launching is quick; safe on a background thread.
        """
        return self._pack(blueprint)[1]

    # -- lifecycle -----------------------------------------------------------------------
    def launch(self, spec: TaskSpec) -> TaskHandle:
        blueprint = getattr(spec, "blueprint", None)
        if blueprint is None:
            raise ExecutorError(
                "the ray executor needs the task's blueprint (TaskSpec.blueprint) to ship its analysis to the nodes"
            )
        (ref, files, rel, environment), _ = self._bundle(blueprint)
        resources = blueprint.blueprint.resources
        options: dict[str, Any] = {
            "num_cpus": spec.cpus,
            "max_retries": 0,
            "scheduling_strategy": "SPREAD",
            "name": f"ncaas {spec.status_fields.get('job')}/{spec.status_fields.get('dataset')}",
        }
        if spec.memory_limit:
            options["memory"] = spec.memory_limit
        if resources.gpus:
            options["num_gpus"] = resources.gpus
        custom = dict(getattr(resources, "custom", None) or {})
        if custom:
            options["resources"] = custom
        placement = self._placement()
        if placement is not None:
            options["label_selector"] = placement
        self._check_feasible(options)
        results = spec.output_dir.parent.parent  # <results>/outputs/<dataset>
        exit_path = f"{results}/{EXIT_RECORDS}/{spec.run_dir.name}.json"
        spec.run_dir.mkdir(parents=True, exist_ok=True)  # where a restarted manager finds that path again
        (spec.run_dir / "ray.json").write_text(json.dumps({"exit_path": exit_path}))
        task = NodeTask(
            spec=spec,
            storage_url=self.storage.url,
            config_path=str(results / "config.json"),
            python_placeholder=PYTHON_ON_NODE,
            blueprint=blueprint,
            bundle_files=files,
            bundle_blueprint=rel,
            bundle_environment=environment,
            s3_endpoint=os.environ.get(ENDPOINT_ENV),
            s3_settings=self.node_env,
            exit_path=exit_path,
        )
        try:
            self._refs[spec.run_dir] = self._remote.options(**options).remote(task, ref)
        except Exception as exc:  # noqa: BLE001 - Ray validates options and connection here
            raise ExecutorError(f"Ray refused the task: {exc}") from exc
        return TaskHandle(spec.run_dir, 0, time.time())

    def _check_feasible(self, options: dict[str, Any]) -> None:
        """Refuse a task no node can ever hold (unless the cluster may grow: max_cpus given)."""
        if self.max_cpus is not None:
            return
        wanted = {
            "CPU": options["num_cpus"],
            "memory": options.get("memory", 0),
            "GPU": options.get("num_gpus", 0),
            **options.get("resources", {}),
        }
        nodes = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
        if any(all(have.get(k, 0) >= v for k, v in wanted.items() if v) for have in nodes):
            return
        needs = ", ".join(f"{k}={v:g}" for k, v in wanted.items() if v)
        raise ExecutorError(
            f"no node of the Ray cluster at {self.address} offers {needs}; lower the "
            "blueprint's resources, add such a node, or pass --ray-max-cpus for a cluster "
            "whose autoscaler adds nodes"
        )

    def poll(self, handle: TaskHandle) -> ExitRecord | Lost | None:
        """The exit record once the Ray task is over, None while it runs, LOST if its node was lost."""
        ref = self._refs.get(handle.run_dir)
        if ref is None:  # launched by an earlier manager: its Ray tasks ended with it, or before it
            return self.exit_record(handle.run_dir) or LOST
        ready, _ = self.ray.wait([ref], timeout=0)
        if not ready:
            return None
        del self._refs[handle.run_dir]
        self._cancel_sent.discard(handle.run_dir)
        exceptions = self.ray.exceptions
        try:
            record = self.ray.get(ref)
        except exceptions.TaskCancelledError:
            return ExitRecord(cancelled=True, end_ms=int(time.time() * 1000))
        except exceptions.RayTaskError as exc:
            return ExitRecord(error=f"the task's supervisor failed on its Ray node: {exc}")
        except (
            exceptions.WorkerCrashedError,
            exceptions.NodeDiedError,
            exceptions.LocalRayletDiedError,
            exceptions.ObjectLostError,
            exceptions.OutOfMemoryError,
        ):
            return LOST  # its worker or node is gone: the manager's retry policy runs it again elsewhere
        except exceptions.RayError as exc:
            return ExitRecord(error=f"Ray could not run the task: {exc}")
        if record.get("lost") and record.get("unreachable"):
            self._exclude(str(record.get("node_id")), str(record["unreachable"]))
            return Lost(str(record["unreachable"]))
        if record.get("lost"):
            return LOST
        if record.get("node_isolation"):
            self._isolation.add(str(record["node_isolation"]))
        return ExitRecord.from_json(record)

    def _exclude(self, node_id: str, cause: str) -> None:
        """Keep a node that cannot reach storage out of the tasks launched from now on."""
        if node_id not in self.excluded:
            log.warning("%s; no further task is sent to it", cause)
        self.excluded[node_id] = cause

    def _placement(self) -> dict[str, str] | None:
        """The label selector keeping tasks off excluded nodes; refuses when no live node is left."""
        if not self.excluded:
            return None
        alive = {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}
        if alive and alive <= set(self.excluded) and self.max_cpus is None:
            raise ExecutorError(
                "no node of the Ray cluster can reach the storage: "
                + "; ".join(self.excluded[n] for n in sorted(alive))
                + ". Give the nodes the storage's endpoint and keys (see `--ray-s3-settings`)"
            )
        return {"ray.io/node-id": "!in(" + ",".join(sorted(self.excluded)) + ")"}

    def cancel(self, handle: TaskHandle) -> None:
        """Ask the node to stop the task (once; the manager may ask on every step)."""
        ref = self._refs.get(handle.run_dir)
        if ref is not None and handle.run_dir not in self._cancel_sent:
            self._cancel_sent.add(handle.run_dir)
            self.ray.cancel(ref, force=False)

    def kill(self, handle: TaskHandle) -> None:
        """Kill the Ray worker running the task; the next task on that node sweeps what it left."""
        ref = self._refs.pop(handle.run_dir, None)
        if ref is not None:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or its node is gone
                pass

    def find(self, run_dir: Path) -> TaskHandle | None:
        return None  # Ray tasks do not outlive the manager that owns them

    def exit_record(self, run_dir: Path) -> ExitRecord | None:
        """The record the node kept in storage, for a task whose manager was gone when it ended."""
        path = _stored_exit_path(run_dir)
        try:
            record = json.loads(self.storage.read_text(path)) if path else None
        except (FileNotFoundError, ValueError, NcaasError, OSError):
            return None
        if isinstance(record, dict) and record.get("node_isolation"):
            self._isolation.add(str(record["node_isolation"]))
        return ExitRecord.from_json(record) if isinstance(record, dict) else None

    def started(self, run_dir: Path) -> bool:
        return True  # a Ray task leaves no trace of having started but its record: assume it may have

    def finish(self, run_dir: Path) -> None:
        """Remove the exit record kept in storage (each node removes its own work folder)."""
        path = _stored_exit_path(run_dir)
        if path:
            with contextlib.suppress(NcaasError, OSError):
                self.storage.remove(path)

    # -- description ---------------------------------------------------------------------
    def capacity(self) -> tuple[int, int]:
        """CPUs and memory of the cluster's live nodes (or ``max_cpus`` for a cluster that grows)."""
        when, value = self._capacity
        if time.monotonic() - when > CAPACITY_TTL:
            total = self.ray.cluster_resources()
            cpus = int(total.get("CPU", 0))
            memory = int(total.get("memory", 0))
            if self.max_cpus is not None and self.max_cpus > cpus:
                memory = memory * self.max_cpus // cpus if cpus else 1 << 62
                cpus = self.max_cpus
            value = (cpus, memory)
            self._capacity = (time.monotonic(), value)
        return value

    @property
    def cpus(self) -> int:
        return self.capacity()[0]

    @property
    def isolation(self) -> str:
        """The sandboxes the nodes reported for the tasks they ran."""
        return "; ".join(sorted(self._isolation)) or "chosen on each Ray node (see each task)"

    def describe(self) -> dict[str, Any]:
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        cpus, memory = self.capacity()
        return {
            "name": self.name,
            "address": self.address,
            "ray_version": self.ray.__version__,
            "host": socket.gethostname(),
            "nodes": sorted(n["NodeManagerAddress"] for n in nodes),
            "cpus": cpus,
            "memory_bytes": memory,
        }

    def close(self) -> None:
        for ref in list(self._refs.values()):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001
                pass
        self._refs.clear()
        self.ray.shutdown()
