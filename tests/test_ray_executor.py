"""The ray executor on a real two-node Ray cluster (127.0.0.2 head, 127.0.0.3 worker, token auth)
with the group's storage on a real S3 server (SeaweedFS): jobs, resources, streaming, cancel,
timeouts, retries, and a worker node lost mid-task.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from ncaas_testutil import make_blueprint, ncaas, wait_for, write_stack
from ray_fixtures import HEAD_IP, WORKER_IP

from ncaas.blueprint import BlueprintRegistry
from ncaas.executors.ray import RayExecutor, infeasible
from ncaas.jobs.db import JobDB
from ncaas.jobs.describe import job_detail
from ncaas.jobs.manager import Manager
from ncaas.jobs.states import JobState
from ncaas.storage import Storage

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def s3_storage(s3_root: str, tmp_path: Path) -> Storage:
    storage = Storage(s3_root)
    for seed, name in enumerate(("a.npy", "b.npy", "c.npy", "d.npy"), start=1):
        local = write_stack(tmp_path / "data" / name, frames=20, seed=seed)
        storage.put(local, storage.resolve("lab", "inputs", name))
    return storage


@pytest.fixture
def ray_registry(tmp_path: Path) -> BlueprintRegistry:
    folder = tmp_path / "blueprints"
    folder.mkdir()
    small = {"memory": "300MB"}
    make_blueprint(folder, "fs-ray", resources={**small, "custom": {"ncaas_test": 1}})
    make_blueprint(folder, "fs-ray-short", resources={**small, "timeout": 3})
    make_blueprint(folder, "fs-ray-huge", resources={"memory": "64GB"})
    return BlueprintRegistry.discover([folder])


@pytest.fixture
def ray_manager(
    ray_cluster, s3_storage: Storage, ray_registry: BlueprintRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("NCAAS_STATE", str(tmp_path / "state"))
    executor = RayExecutor(ray_cluster.address, storage=s3_storage)
    db = JobDB(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    manager = Manager(s3_storage, db, executor=executor, registry=ray_registry, poll_interval=0.1, scan_interval=0.5)
    yield manager
    db.close()


def _submit(storage: Storage, name: str, analysis: str, datasets: list[str], config: dict) -> None:
    """A plain object write into the group's S3 prefix, as any S3 client would do it."""
    storage.write_text(storage.join("lab", "configs", f"{name}.json"), json.dumps(config))
    body = {"analysis": analysis, "dataname": datasets, "configname": f"{name}.json", "timestamp": time.time()}
    storage.write_text(storage.join("lab", "submissions", f"{name}.submit.json"), json.dumps(body))


def _status(storage: Storage, job, dataset: str) -> dict:
    return json.loads(storage.read_text(f"{job.results_dir}/status/{dataset}.json"))


def _why(manager: Manager, job) -> str:
    return f"{job.state}: " + "; ".join(f"{t.dataset}: {t.cause}" for t in manager.db.tasks(job.id))


def _one_job(manager: Manager):
    jobs = wait_for(manager.scan, timeout=30, what="the submission to be picked up from S3")
    assert len(jobs) == 1 and jobs[0].state == JobState.QUEUED, jobs[0].cause
    return jobs[0]


def test_four_datasets_run_on_both_nodes_with_results_in_s3(ray_manager: Manager) -> None:
    storage = ray_manager.storage
    datasets = ["a.npy", "b.npy", "c.npy", "d.npy"]
    _submit(storage, "four", "fs-ray", datasets, {"stats": ["mean", "max"], "sleep_per_frame": 0.1})
    job = ray_manager.run_job(_one_job(ray_manager).id)
    assert job.state == JobState.SUCCEEDED, _why(ray_manager, job)
    end = json.loads(storage.read_text(f"{job.results_dir}/end.json"))
    assert end["tasks"] == dict.fromkeys(datasets, "succeeded")
    nodes = {_status(storage, job, d)["node"] for d in datasets}
    assert nodes == {HEAD_IP, WORKER_IP}
    for dataset in datasets:
        csv = storage.read_text(f"{job.results_dir}/outputs/{dataset}/{dataset.removesuffix('.npy')}.stats.csv")
        assert csv.splitlines()[0] == "frame,mean,max" and len(csv.splitlines()) == 21
        assert "exited with code 0" in storage.read_text(f"{job.results_dir}/logs/{dataset}.log")
        status = _status(storage, job, dataset)
        assert status["state"] == "succeeded" and status["progress"] == 1.0 and status["exit_code"] == 0
    cert = json.loads(storage.read_text(f"{job.results_dir}/certificate.json"))
    assert cert["executor"]["name"] == "ray" and cert["job"]["storage"] == storage.url
    lock = (REPO / "analyses" / "framestats" / "requirements.lock").read_bytes()
    for task in cert["tasks"]:
        # Each node built the environment from the very same lock and reports its hashes.
        assert task["environment"]["lock_hash"] == hashlib.sha256(lock).hexdigest()
        assert task["environment"]["node"] in (HEAD_IP, WORKER_IP)
        assert task["environment"]["manifest_hash"] and task["outputs"]
        assert task["argv"][0].endswith("/bin/python") and "{python}" not in task["argv"]
    assert "bubblewrap" in cert["isolation"] or "none" in cert["isolation"]
    # The text names the cluster and, per task, the node it ran on.
    text = storage.read_text(f"{job.results_dir}/certificate.txt")
    executor = next(line for line in text.splitlines() if line.startswith("executor:"))
    assert f"cluster at {ray_manager.executor.address}: 2 nodes ({HEAD_IP}, {WORKER_IP})" in executor, executor
    assert "None" not in executor
    for task in cert["tasks"]:
        assert task["node"] == task["environment"]["node"] == _status(storage, job, task["dataset"])["node"]
        [attempt] = task["attempt_history"]
        assert attempt["node"] == task["node"] and attempt["outcome"] == "succeeded"
    assert sorted(line.split()[-1] for line in text.splitlines() if line.startswith("  node ")) == sorted(
        t["node"] for t in cert["tasks"]
    )


def test_progress_and_log_stream_into_s3_while_running(ray_manager: Manager) -> None:
    storage = ray_manager.storage
    _submit(storage, "stream", "fs-ray", ["a.npy"], {"sleep_per_frame": 0.4, "batch_frames": 1})
    job = _one_job(ray_manager)
    seen: list[float] = []
    log_while_running = ""

    def watch() -> bool:
        nonlocal log_while_running
        path = f"{job.results_dir}/status/a.npy.json"
        if storage.exists(path):
            status = json.loads(storage.read_text(path))
            if status.get("state") == "running" and 0 < status.get("progress", 0) < 1:
                seen.append(status["progress"])
                if (
                    not log_while_running
                ):  # the first look: the status (copied by the manager) lags the log by up to 1 s
                    log_while_running = storage.read_text(f"{job.results_dir}/logs/a.npy.log")
        return ray_manager.db.job(job.id).finalized

    ray_manager.run(scan=False, until=watch)
    assert ray_manager.db.job(job.id).state == JobState.SUCCEEDED
    assert len(set(seen)) >= 2, f"progress seen while running: {seen}"
    assert "NCAAS_PROGRESS" in log_while_running and "exited with code" not in log_while_running


def test_cancel_stops_a_running_task_within_seconds(ray_manager: Manager) -> None:
    storage = ray_manager.storage
    _submit(storage, "cancel", "fs-ray", ["a.npy"], {"hang": True})
    job = _one_job(ray_manager)
    ray_manager.run(
        scan=False,
        until=lambda: (
            "hanging as configured"
            in (
                storage.read_text(f"{job.results_dir}/logs/a.npy.log")
                if storage.exists(f"{job.results_dir}/logs/a.npy.log")
                else ""
            )
        ),
    )
    started = time.monotonic()
    ray_manager.cancel(job.id)
    job = ray_manager.run_job(job.id)
    assert job.state == JobState.CANCELLED
    assert time.monotonic() - started < 15
    assert _status(storage, job, "a.npy")["state"] == "cancelled"
    # Stopped by its node ("cancelled with code" in its log) or, when Ray's polite stop does not
    # reach the task, killed by the manager 10 s after the request: either way within seconds.


def test_timeout_on_a_node_is_enforced_as_locally(ray_manager: Manager) -> None:
    storage = ray_manager.storage
    _submit(storage, "slow", "fs-ray-short", ["b.npy"], {"hang": True})
    job = ray_manager.run_job(_one_job(ray_manager).id)
    assert job.state == JobState.TIMED_OUT
    task = ray_manager.db.tasks(job.id)[0]
    assert task.cause == "exceeded its time limit of 3.0 s"


def test_the_reason_a_task_gives_on_a_node_comes_back_as_locally(ray_manager: Manager) -> None:
    storage = ray_manager.storage
    _submit(storage, "said", "fs-ray", ["d.npy"], {"fail_reason": "d.npy: no frames; upload it again"})
    job = ray_manager.run_job(_one_job(ray_manager).id)
    assert job.state == JobState.FAILED, _why(ray_manager, job)
    cause = "exited with code 3: d.npy: no frames; upload it again"
    assert ray_manager.db.tasks(job.id)[0].cause == cause  # carried back in the node's exit record
    status = _status(storage, job, "d.npy")
    assert (status["cause"], status["reason"]) == (cause, "d.npy: no frames; upload it again")


def test_task_killed_by_a_signal_is_retried(ray_manager: Manager) -> None:
    storage = ray_manager.storage
    _submit(storage, "killed", "fs-ray", ["c.npy"], {"kill_on_attempts": [1]})
    job = ray_manager.run_job(_one_job(ray_manager).id)
    assert job.state == JobState.SUCCEEDED, _why(ray_manager, job)
    task = ray_manager.db.tasks(job.id)[0]
    assert task.attempt == 2
    log = storage.read_text(f"{job.results_dir}/logs/c.npy.log")
    assert "[ncaas] attempt 1:" in log and "[ncaas] attempt 2:" in log  # both attempts kept, as locally


def test_a_task_no_node_can_hold_is_refused_with_a_reason(ray_manager: Manager) -> None:
    storage = ray_manager.storage
    _submit(storage, "huge", "fs-ray-huge", ["a.npy"], {})
    job = ray_manager.run_job(_one_job(ray_manager).id)
    assert job.state == JobState.FAILED
    cause = ray_manager.db.tasks(job.id)[0].cause
    assert cause == (
        f"could not start: no node of the Ray cluster at {ray_manager.executor.address} can hold this task: "
        "it needs 1 cpu and 59.6 GiB; the largest node has 1 cpu and 3.0 GiB. Lower the blueprint's resources, "
        "add such a node, or pass --ray-max-cpus for a cluster whose autoscaler adds nodes"
    )


def test_a_refusal_names_what_the_task_needs_and_the_largest_node_in_human_units() -> None:
    caliali = {"CPU": 2, "memory": 6 * 2**30, "GPU": 0}
    nodes = [{"CPU": 1.0, "memory": 4.0 * 2**30}, {"CPU": 1.0, "memory": 2.0 * 2**30, "object_store_memory": 1e8}]
    assert infeasible(caliali, nodes) == "it needs 2 cpus and 6.0 GiB; the largest node has 1 cpu and 4.0 GiB"
    wanted = {"CPU": 1, "memory": 2**30, "GPU": 1, "highmem": 1}
    assert infeasible(wanted, nodes[:1]) == (
        "it needs 1 cpu, 1.0 GiB, 1 gpu and 1 highmem; the largest node has 1 cpu, 4.0 GiB, 0 gpus and 0 highmem"
    )
    assert infeasible(caliali, []) == "it needs 2 cpus and 6.0 GiB; the cluster has no live node"


def test_worker_node_lost_mid_task_is_retried_on_the_other_node(ray_cluster, ray_manager: Manager) -> None:
    storage = ray_manager.storage
    _submit(storage, "lost", "fs-ray", ["a.npy", "b.npy"], {"sleep_per_frame": 0.3, "batch_frames": 1})
    job = _one_job(ray_manager)

    def running_on_worker() -> str | None:
        for dataset in ("a.npy", "b.npy"):
            path = f"{job.results_dir}/status/{dataset}.json"
            if storage.exists(path):
                status = json.loads(storage.read_text(path))
                if status.get("node") == WORKER_IP and status.get("progress", 0) > 0:
                    return dataset
        return None

    victim: list[str] = []
    ray_manager.run(scan=False, until=lambda: bool(victim.append(running_on_worker()) or victim[-1]))
    lost = victim[-1]
    try:
        ray_cluster.kill_node(WORKER_IP)
        job = ray_manager.run_job(job.id)
    finally:
        ray_cluster.add_node(WORKER_IP)
    assert job.state == JobState.SUCCEEDED, _why(ray_manager, job)
    tasks = {t.dataset: t for t in ray_manager.db.tasks(job.id)}
    assert tasks[lost].attempt == 2
    status = _status(storage, job, lost)
    assert status["node"] == HEAD_IP and status["attempt"] == 2
    events = [e.cause for e in ray_manager.db.events(job.id) if e.dataset == lost]
    assert any(f"on node {WORKER_IP}; retrying" in cause for cause in events), events
    # Each attempt is recorded with the node it ran on and why it ended: in the status and the certificate.
    first, second = status["attempts"]
    assert (first["number"], first["node"], first["outcome"]) == (1, WORKER_IP, "queued")
    assert first["cause"].startswith("its Ray") and first["ended_ms"] <= second["launched_ms"]
    assert (second["number"], second["node"], second["outcome"]) == (2, HEAD_IP, "succeeded")
    cert = json.loads(storage.read_text(f"{job.results_dir}/certificate.json"))
    [task] = [t for t in cert["tasks"] if t["dataset"] == lost]
    assert task["attempt_history"] == status["attempts"] and task["node"] == HEAD_IP
    text = storage.read_text(f"{job.results_dir}/certificate.txt")
    assert f"  attempt 1 on {WORKER_IP}" in text and f"  attempt 2 on {HEAD_IP}" in text
    assert storage.files(f"{job.results_dir}/outputs/{lost}")
    # The retry swept what the killed node's task left in the machine's node folder; nothing remains.
    work = Path(ray_cluster.extra_env["NCAAS_NODE_DIR"]) / "work"
    assert list(work.iterdir()) == []


def test_manager_with_the_wrong_token_says_so_without_a_traceback(ray_cluster, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64, RAY_gcs_server_port_wait_time_s="2"
    )  # give up after 2 tries instead of Ray's 20
    done = ncaas(
        "manager",
        "--executor",
        "ray",
        "--ray-address",
        ray_cluster.address,
        "--root",
        str(tmp_path),
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert (
        f"cannot join the Ray cluster at {ray_cluster.address}: the cluster refused this process's token"
        in " ".join(done.stderr.split())
    )
    assert "Traceback" not in done.stderr + done.stdout


def test_a_task_waiting_for_a_node_is_shown_queued_and_its_clock_starts_on_the_node(
    ray_cluster, s3_storage: Storage, ray_registry: BlueprintRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cluster that may grow (max_cpus) gets more tasks than its two 1-cpu nodes hold: the third waits in Ray.
    monkeypatch.setenv("NCAAS_STATE", str(tmp_path / "state"))
    executor = RayExecutor(ray_cluster.address, storage=s3_storage, max_cpus=3)
    manager = Manager(
        s3_storage,
        JobDB(f"sqlite:///{tmp_path / 'jobs.sqlite'}"),
        executor=executor,
        registry=ray_registry,
        poll_interval=0.1,
        scan_interval=0.5,
    )
    datasets = ["a.npy", "b.npy", "c.npy"]
    _submit(s3_storage, "wait", "fs-ray", datasets, {"sleep_per_frame": 0.15, "batch_frames": 1})
    job = _one_job(manager)
    seen: dict[str, dict] = {}

    def watch() -> bool:
        for row in job_detail(manager, job)["tasks"]:
            if row["message"].startswith("waiting for a node with 1 cpu and 0.3 GiB"):
                seen.setdefault(row["dataset"], row)
        return manager.db.job(job.id).finalized

    manager.run(scan=False, until=watch)
    manager.db.close()
    assert manager.db.job(job.id).state == JobState.SUCCEEDED, _why(manager, job)
    # Each task waited until its node took it: two started before any task ended (how soon depends on how
    # fast Ray starts a worker on a busy machine); the third waited for one of them to end.
    attempts = {d: _status(s3_storage, job, d)["attempts"] for d in datasets}
    waits = {d: (a[0]["started_ms"] - a[0]["launched_ms"]) / 1000 for d, a in attempts.items()}
    waited = max(waits, key=lambda d: waits[d])
    others = [d for d in datasets if d != waited]
    ended_first = min(_status(s3_storage, job, d)["end_ms"] for d in others)
    assert all(attempts[d][0]["started_ms"] < ended_first for d in others), (waits, ended_first)
    row = seen[waited]  # while it waited: queued, no start time, no progress
    assert row["state"] == "queued" and row["started_ms"] is None and row["progress"] == 0.0, row
    # Its clock started when a node took it, after an earlier task ended, not when it was handed to Ray.
    status = _status(s3_storage, job, waited)
    assert status["start_ms"] == attempts[waited][0]["started_ms"] >= ended_first - 1000, (waits, ended_first)
    assert status["state"] == "succeeded" and status["node"] == attempts[waited][0]["node"]
    events = [e.cause for e in manager.db.events(job.id) if e.dataset == waited]
    assert "waiting for a node with 1 cpu and 0.3 GiB (attempt 1)" in events, events


def test_the_manager_starts_a_worker_on_every_node_before_tasks_need_one(ray_cluster, s3_storage: Storage) -> None:
    # A first task on a node would otherwise wait seconds for Ray to start a worker and import ncaas there.
    executor = RayExecutor(ray_cluster.address, storage=s3_storage)
    wait_for(lambda: executor.warm() == {HEAD_IP, WORKER_IP}, timeout=60, what="a warm worker on both nodes")
