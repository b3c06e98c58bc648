"""Every task is told, before it starts, the content hashes its certificate records.

The dataset is described once, before launch (``tasks.input_json``), and the certificate
records that same description; a retry is told the same hashes.
"""

import hashlib

import pytest
from ncaas_testutil import read_json, submit

from ncaas.jobs.states import JobState
from ncaas.provenance.certificate import TASK_HASH_VARIABLES

pytestmark = pytest.mark.timeout(90)


def _run(manager, root, config, datasets, name="j"):
    path = submit(root, name, {"analysis": "framestats", "dataname": list(datasets)}, config=config)
    job = manager.ingest_file("lab", str(path))
    assert job.state == JobState.QUEUED, job.cause
    job = manager.run_job(job.id)
    return job, root / "lab" / "results" / job.id


def test_a_task_is_told_the_hashes_its_certificate_records(manager, root):
    job, results = _run(manager, root, {"record_hashes": True, "stats": ["mean"]}, ["a.npy", "folder"])
    assert job.state == JobState.SUCCEEDED, job.cause
    cert = read_json(results / "certificate.json")
    for task in cert["tasks"]:
        told = read_json(results / "outputs" / task["dataset"] / "hashes.json")
        assert told == {
            "NCAAS_INPUT_SHA256": task["input"]["sha256"],
            "NCAAS_CONFIG_SHA256": cert["config"]["sha256"],
            "NCAAS_BLUEPRINT_SHA256": cert["blueprint"]["sha256"],
            "NCAAS_LOCK_SHA256": cert["environment"]["lock_hash"],
        }
        assert set(told) == set(TASK_HASH_VARIABLES) and all(len(v) == 64 for v in told.values())
    file_task = next(t for t in cert["tasks"] if t["dataset"] == "a.npy")
    data = (root / "lab" / "inputs" / "a.npy").read_bytes()
    assert file_task["input"]["sha256"] == hashlib.sha256(data).hexdigest()
    folder_task = next(t for t in cert["tasks"] if t["dataset"] == "folder")
    assert folder_task["input"]["kind"] == "folder" and len(folder_task["input"]["files"]) == 2


def test_the_dataset_is_described_once_before_launch_and_the_certificate_keeps_that(manager, root):
    """The certificate records the description made before launch, which the task was told: a
    dataset changed while its task runs is not hashed again."""
    before = hashlib.sha256((root / "lab" / "inputs" / "b.npy").read_bytes()).hexdigest()
    config = {"record_hashes": True, "stats": ["mean"], "sleep_per_frame": 0.05}
    path = submit(root, "changed", {"analysis": "framestats", "dataname": ["b.npy"]}, config=config)
    job = manager.ingest_file("lab", str(path))
    for _ in range(400):
        manager.step()
        tasks = manager.db.tasks(job.id)
        if tasks[0].state == "running":
            break
    assert tasks[0].state == "running" and tasks[0].input_json is not None
    (root / "lab" / "inputs" / "b.npy").write_bytes(b"changed while the task ran")
    job = manager.run_job(job.id)
    assert job.state in (JobState.SUCCEEDED, JobState.FAILED)  # failed if it read the changed file
    cert = read_json(root / "lab" / "results" / job.id / "certificate.json")
    [task] = cert["tasks"]
    assert task["input"]["sha256"] == before
    told = read_json(root / "lab" / "results" / job.id / "outputs" / "b.npy" / "hashes.json")
    assert told["NCAAS_INPUT_SHA256"] == before


def test_tasks_cancelled_while_their_datasets_are_hashed_hold_up_no_later_task(manager, root):
    path = submit(root, "gone", {"analysis": "framestats", "dataname": ["a.npy", "b.npy", "c.npy"]})
    job = manager.ingest_file("lab", str(path))
    manager.step()  # their datasets are being described beside the loop
    assert manager._describing, "no dataset was being described"
    manager.cancel(job.id)
    later, results = _run(manager, root, {"record_hashes": True}, ["folder"], name="later")
    assert later.state == JobState.SUCCEEDED, later.cause
    told = read_json(results / "outputs" / "folder" / "hashes.json")
    assert told["NCAAS_INPUT_SHA256"] == read_json(results / "certificate.json")["tasks"][0]["input"]["sha256"]
