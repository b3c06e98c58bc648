"""A manager killed between starting a task's supervisor and recording its handle.

The kill leaves the task ``running`` in the database with its run folder but no supervisor
pid, and (killed before it was written) no ``runner.json``. If the supervisor then finishes
before a manager comes back, nothing alive points to it: only its exit record says how it
ended. That record must settle the task; a task that exited is never run again. A task with
no record and no supervisor left is lost, and retried.

Real components throughout: a real ``ncaas manager`` process, SIGKILLed while the task runs;
the state its kill window leaves is then made exactly (the handle's row fields cleared, the
handle file removed, the launch older than the grace: the manager stayed down that long).

Also here: a live supervisor adopted although the clock moved (psutil start times follow
it); a Ray task that ended unseen by its manager; a launch cut short before the command
started (no retry spent); a job or a rejection whose creation a kill cut short.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from ncaas_clirunner import cli, flat
from ncaas_testutil import make_blueprint, read_json, start_manager, stop, submit, wait_for, write_stack

from ncaas.blueprint import BlueprintRegistry
from ncaas.executors.ray import RayExecutor
from ncaas.jobs.db import JobDB, default_db_url, now_ms
from ncaas.jobs.manager import LAUNCH_GRACE_MS, Manager
from ncaas.jobs.states import TaskState
from ncaas.storage import Storage

pytestmark = pytest.mark.timeout(120)


def _killed_before_handle(root: Path, log: Path, *, supervisor_survives: bool) -> Path:
    """Run a 1-second task under a manager that is SIGKILLed before recording its handle; its job folder."""
    submit(
        root,
        "once",
        {"analysis": "framestats", "dataname": ["a.npy"]},
        config={"sleep_per_frame": 0.05, "batch_frames": 2},
    )
    manager = start_manager(root, log)
    try:
        results = root / "lab" / "results"
        job_dir = wait_for(lambda: results.exists() and next(results.iterdir(), None), what="a results folder")
        status = job_dir / "status" / "a.npy.json"
        wait_for(lambda: status.exists() and read_json(status).get("pid"), what="the task running")
    finally:
        stop(manager, signal.SIGKILL)
    run_dir = root / ".ncaas" / "runs" / job_dir.name / "a.npy.1"
    if supervisor_survives:
        wait_for(lambda: (run_dir / "exit.json").exists(), what="the supervisor's exit record")
    else:  # the supervisor dies too (the OOM killer, a reboot) before it can write its record
        runner = psutil.Process(read_json(run_dir / "runner.json")["pid"])
        os.killpg(read_json(status)["pid"], signal.SIGKILL)
        runner.kill()
        runner.wait(timeout=10)
        assert not (run_dir / "exit.json").exists()
    db = JobDB(default_db_url(str(root)))
    try:
        [task] = db.tasks(job_dir.name)
        assert task.state == "running" and task.runner_pid is not None
        db.update_task(task.id, runner_pid=None, runner_start=None, started_ms=task.started_ms - LAUNCH_GRACE_MS - 1000)
    finally:
        db.close()
    (run_dir / "runner.json").unlink()
    return job_dir


def _restart_until_end(root: Path, log: Path, job_dir: Path) -> dict:
    manager = start_manager(root, log)
    try:
        return wait_for(
            lambda: (job_dir / "end.json").exists() and read_json(job_dir / "end.json"),
            timeout=60,
            what="end.json after the restart",
        )
    finally:
        stop(manager)


def _runs(job_dir: Path) -> int:
    """How many times the supervisor started the task: each start writes one line to its log."""
    log = (job_dir / "logs" / "a.npy.log").read_text()
    return sum(line.startswith("[ncaas] attempt ") for line in log.splitlines())


def test_a_task_that_exited_while_the_manager_was_down_is_settled_from_its_exit_record(root: Path, tmp_path: Path):
    log = tmp_path / "manager.log"
    job_dir = _killed_before_handle(root, log, supervisor_survives=True)
    end = _restart_until_end(root, log, job_dir)
    story = flat(cli("status", job_dir.name, "--root", str(root)).stdout)
    assert end["state"] == "succeeded", story + log.read_text()
    status = read_json(job_dir / "status" / "a.npy.json")
    assert status["state"] == "succeeded" and status["attempt"] == 1 and status["exit_code"] == 0
    assert _runs(job_dir) == 1, (job_dir / "logs" / "a.npy.log").read_text()
    assert "vanished" not in story
    assert read_json(job_dir / "certificate.json")["tasks"][0]["outputs"]


def test_a_task_with_no_exit_record_and_no_supervisor_is_lost_and_retried(root: Path, tmp_path: Path):
    log = tmp_path / "manager.log"
    job_dir = _killed_before_handle(root, log, supervisor_survives=False)
    end = _restart_until_end(root, log, job_dir)
    story = flat(cli("status", job_dir.name, "--root", str(root)).stdout)
    assert end["state"] == "succeeded", story + log.read_text()
    assert read_json(job_dir / "status" / "a.npy.json")["attempt"] == 2
    assert "process vanished" in story and "retrying (attempt 2 of 3)" in story
    assert _runs(job_dir) == 2


def test_a_live_supervisor_is_adopted_when_the_clock_moved_while_the_manager_was_down(root: Path, tmp_path: Path):
    """psutil's process start times follow the wall clock through the boot time, which /proc
    gives in whole seconds: after a clock adjustment a restarted manager computes the
    supervisor's start one second off its recorded handle. The supervisor must still be
    known as alive (adopted, attempt 1), not declared lost and its task killed and rerun."""
    log = tmp_path / "manager.log"
    submit(
        root,
        "slow",
        {"analysis": "framestats", "dataname": ["a.npy"]},
        config={"sleep_per_frame": 0.3, "batch_frames": 2},
    )  # 6 s: still running at the restart
    manager = start_manager(root, log)
    try:
        results = root / "lab" / "results"
        job_dir = wait_for(lambda: results.exists() and next(results.iterdir(), None), what="a results folder")
        status = job_dir / "status" / "a.npy.json"
        wait_for(lambda: status.exists() and read_json(status).get("pid"), what="the task running")
    finally:
        stop(manager, signal.SIGKILL)
    db = JobDB(default_db_url(str(root)))
    try:
        [task] = db.tasks(job_dir.name)
        assert (
            task.runner_pid is not None
            and not (root / ".ncaas" / "runs" / job_dir.name / "a.npy.1" / "exit.json").exists()
        )
        db.update_task(task.id, runner_start=task.runner_start + 1.0)  # as read after the boot time moved
    finally:
        db.close()
    end = _restart_until_end(root, log, job_dir)
    story = flat(cli("status", job_dir.name, "--root", str(root)).stdout)
    assert end["state"] == "succeeded", story + log.read_text()
    assert read_json(status)["attempt"] == 1 and _runs(job_dir) == 1, story
    assert "vanished" not in story


@pytest.mark.timeout(400)
def test_a_ray_task_that_ended_unseen_by_its_manager_is_settled_from_the_record_its_node_kept(
    ray_cluster, s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Ray hands a task's exit record to the manager that launched it only. A manager gone when
    its task ended leaves the next one no record but the one the node keeps in storage: read
    it, and the task that ran is not run again (a second manager stands for the restarted one)."""
    monkeypatch.setenv("NCAAS_STATE", str(tmp_path / "state"))
    storage = Storage(s3_root)
    storage.put(write_stack(tmp_path / "data" / "a.npy", seed=1), storage.resolve("lab", "inputs", "a.npy"))
    folder = tmp_path / "blueprints"
    folder.mkdir()
    registry = BlueprintRegistry.discover(
        [make_blueprint(folder, "fs-ray", resources={"memory": "300MB"}).parent.parent]
    )
    storage.write_text(storage.join("lab", "configs", "c.json"), json.dumps({}))
    storage.write_text(
        storage.join("lab", "submissions", "once.submit.json"),
        json.dumps({"analysis": "fs-ray", "dataname": ["a.npy"], "configname": "c.json", "timestamp": "1"}),
    )
    db = JobDB(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    try:
        first = Manager(
            storage,
            db,
            executor=RayExecutor(ray_cluster.address, storage=storage),
            registry=registry,
            poll_interval=0.1,
        )
        [job] = wait_for(first.scan, what="the submission")
        first.run(scan=False, until=lambda: db.tasks(job.id)[0].runner_pid is not None)  # launched
        progress = f"{job.results_dir}/.progress/a.npy.json"  # the node's own report, which it writes last
        wait_for(
            lambda: storage.exists(progress) and "node_timings" in json.loads(storage.read_text(progress)),
            timeout=120,
            what="the node to finish the task",
        )  # its last write before it returns
        time.sleep(1.0)
        second = Manager(
            storage,
            db,
            executor=RayExecutor(ray_cluster.address, storage=storage),
            registry=registry,
            poll_interval=0.1,
        )
        done = second.run_job(job.id)
        [task] = db.tasks(job.id)
    finally:
        db.close()
    log = storage.read_text(f"{job.results_dir}/logs/a.npy.log")
    assert done.state == "succeeded" and task.attempt == 1, task.cause
    assert sum(line.startswith("[ncaas] attempt ") for line in log.splitlines()) == 1, log
    assert not storage.files(f"{job.results_dir}/.exit-records"), "the kept record is removed once read"


def test_a_job_whose_creation_a_kill_cut_short_still_gets_its_config(root: Path, manager: Manager):
    """Killed after recording a job and before writing its config.json: its tasks must not
    run without the config (framestats would fail on the missing file)."""
    path = submit(root, "cut", {"analysis": "framestats", "dataname": ["a.npy"]}, config={"stats": ["mean"]})
    job = manager.ingest_file("lab", str(path))
    results = Path(job.results_dir)
    (results / "config.json").unlink()  # the state the kill leaves
    for status in (results / "status").iterdir():
        status.unlink()
    restarted = Manager(manager.storage, manager.db, registry=manager.registry, executor=manager.executor)
    done = restarted.run_job(job.id)
    assert done.state == "succeeded", [t.cause for t in manager.db.tasks(job.id)]
    assert read_json(results / "config.json")["stats"] == ["mean"]
    assert (results / "outputs" / "a.npy" / "a.stats.csv").read_text().startswith("frame,mean\n")


def test_a_rejection_a_kill_cut_short_is_finished_as_a_rejection(root: Path, manager: Manager):
    """Killed after recording a rejection and before its error.txt and end.json: the next
    manager writes them (with the reasons), not a certificate as for a job that ran."""
    path = submit(root, "bad", {"analysis": "framestats", "dataname": ["missing.npy"]})
    job = manager.ingest_file("lab", str(path))
    assert job.state == "rejected"
    results = Path(job.results_dir)
    (results / "error.txt").unlink()
    (results / "end.json").unlink()
    manager.db.update_job(job.id, finalized=False)
    Manager(manager.storage, manager.db, registry=manager.registry, executor=manager.executor).step()
    end = read_json(results / "end.json")
    assert end["state"] == "rejected" and any("missing.npy" in e for e in end["errors"]), end
    assert "missing.npy" in (results / "error.txt").read_text()
    assert not (results / "certificate.json").exists()
    assert manager.db.job(job.id).finalized


def test_a_launch_cut_short_before_the_task_started_does_not_spend_a_retry(root: Path, manager: Manager):
    """Killed after marking a task running and before its supervisor started: the task never
    ran. It starts again as the same attempt; three such kills must not fail it."""
    path = submit(root, "cut", {"analysis": "framestats", "dataname": ["a.npy"]})
    job = manager.ingest_file("lab", str(path))
    [task] = manager.db.tasks(job.id)
    for _ in range(task.max_retries + 1):  # the state each kill leaves (what Manager._start records first)
        run_dir = root / ".ncaas" / "runs" / job.id / "a.npy.1"
        assert manager.db.move_task(
            task,
            TaskState.RUNNING,
            "attempt 1 started",
            attempt=1,
            run_dir=str(run_dir),
            started_ms=now_ms() - LAUNCH_GRACE_MS - 1000,
        )
        run_dir.mkdir(parents=True)
        (run_dir / "spec.json").write_text("{}")  # written just before the supervisor would start
        restarted = Manager(manager.storage, manager.db, registry=manager.registry, executor=manager.executor)
        restarted._reap({})
        [task] = manager.db.tasks(job.id)
        assert task.state == "queued" and task.attempt == 0, task.cause
        assert "launch was cut short" in task.cause and not run_dir.exists()
    done = Manager(manager.storage, manager.db, registry=manager.registry, executor=manager.executor).run_job(job.id)
    [task] = manager.db.tasks(job.id)
    assert done.state == "succeeded" and task.attempt == 1, task.cause
