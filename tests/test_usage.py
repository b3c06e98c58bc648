"""CPU seconds and peak memory in status and certificate measure the analysis itself."""

import pytest
from ncaas_testutil import read_json, submit, write_stack

from ncaas.blueprint import BlueprintRegistry
from ncaas.executors.local import LocalExecutor
from ncaas.jobs.db import JobDB, default_db_url
from ncaas.jobs.manager import Manager
from ncaas.storage import Storage

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def usage(tmp_path_factory):
    root = tmp_path_factory.mktemp("usage") / "root"
    write_stack(root / "lab" / "inputs" / "a.npy")
    storage = Storage(root)
    db = JobDB(default_db_url(storage.root))
    manager = Manager(storage, db, registry=BlueprintRegistry.discover(), executor=LocalExecutor(cpus=2))
    path = submit(
        root, "u", {"analysis": "framestats", "dataname": "a.npy"}, config={"cpu_seconds": 1.0, "memory_mb": 150}
    )
    job = manager.run_job(manager.ingest_file("lab", str(path)).id)
    db.close()
    assert job.state == "succeeded", job.cause
    results = root / "lab" / "results" / job.id
    return read_json(results / "status" / "a.npy.json"), read_json(results / "certificate.json")["tasks"][0]


def test_peak_memory_covers_what_the_analysis_allocated(usage):
    status, cert = usage
    assert status["peak_memory_bytes"] >= 150 * 2**20
    assert cert["peak_memory_bytes"] == status["peak_memory_bytes"]


def test_cpu_seconds_cover_what_the_analysis_burned(usage):
    status, cert = usage
    assert status["cpu_seconds"] >= 0.9
    assert cert["cpu_seconds"] == status["cpu_seconds"]
