"""Ray node types carry their own prices: on the two-node test cluster (head labelled cpu-small,
worker cpu-large), each task is priced at the rates of the node type it ran on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ncaas_testutil import make_blueprint, write_stack
from ray_fixtures import HEAD_IP, WORKER_IP

from ncaas.blueprint import BlueprintRegistry
from ncaas.cost.profile import default_profile
from ncaas.executors.ray import RayExecutor
from ncaas.jobs.db import JobDB
from ncaas.jobs.manager import Manager
from ncaas.storage import Storage

pytestmark = pytest.mark.timeout(240)


def test_each_task_is_priced_at_its_node_types_rates(ray_cluster, s3_root, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NCAAS_STATE", str(tmp_path / "state"))
    storage = Storage(s3_root)
    for seed, name in enumerate(("a.npy", "b.npy"), start=1):
        storage.put(write_stack(tmp_path / name, frames=20, seed=seed), storage.resolve("lab", "inputs", name))
    folder = tmp_path / "blueprints"
    folder.mkdir()
    make_blueprint(folder, "fs-priced", resources={"memory": "300MB", "custom": {"ncaas_test": 1}})
    db = JobDB(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    manager = Manager(
        storage,
        db,
        executor=RayExecutor(ray_cluster.address, storage=storage),
        registry=BlueprintRegistry.discover([folder]),
        poll_interval=0.1,
    )
    storage.write_text(storage.join("lab", "configs", "c.json"), json.dumps({"sleep_per_frame": 0.1}))
    body = {"analysis": "fs-priced", "dataname": ["a.npy", "b.npy"], "configname": "c.json"}
    storage.write_text(storage.join("lab", "submissions", "p.submit.json"), json.dumps(body))
    job = manager.run_job(manager.ingest_file("lab", storage.join("lab", "submissions", "p.submit.json")).id)
    assert job.state == "succeeded", job.cause
    profile = default_profile()
    types = {HEAD_IP: "cpu-small", WORKER_IP: "cpu-large"}
    seen = set()
    for task in db.tasks(job.id):
        status = json.loads(storage.read_text(f"{job.results_dir}/status/{task.dataset}.json"))
        [attempt] = status["attempts"]
        node_type = types[attempt["node"]]
        assert attempt["node_type"] == node_type and status["cost"]["node_type"] == node_type
        rates = profile.node_types[node_type]
        hourly = rates.vcpu_hour.standard + 300e6 / 2**30 * rates.gib_hour.standard  # 1 cpu, 300 MB
        assert status["cost"]["hourly"] == pytest.approx(hourly)
        assert status["cost"]["compute"] == pytest.approx(status["cost"]["seconds"] / 3600 * hourly)
        seen.add(node_type)
    db.close()
    assert seen == {"cpu-small", "cpu-large"}
