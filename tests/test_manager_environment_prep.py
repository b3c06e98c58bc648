"""Environments are prepared off the manager's loop: a build in progress holds back only its own tasks.

The framestats environment is made slow for real: another process holds its build lock
(the file lock ``ncaas.isolation.environments.ensure`` takes), as a second manager or an
``ncaas env build`` would, while the manager runs in a thread and watches storage.
The environment cache is a fresh folder, so the build after the lock is released is a real one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from ncaas_clirunner import cli, flat
from ncaas_testutil import FRAMESTATS, REPO, read_json, submit, wait_for

from ncaas.blueprint import BlueprintRegistry
from ncaas.executors.local import LocalExecutor
from ncaas.isolation import environments
from ncaas.jobs.db import Job, JobDB, default_db_url
from ncaas.jobs.describe import job_detail
from ncaas.jobs.manager import Manager
from ncaas.storage import Storage

pytestmark = pytest.mark.timeout(120)

_HOLD = """
import fcntl, sys
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


@pytest.fixture
def envs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty environment cache: framestats' environment is built from scratch."""
    folder = tmp_path / "envs"
    monkeypatch.setenv("NCAAS_ENVS", str(folder))
    return folder


def _framestats_as(folder: Path, name: str, environment: dict[str, str] | None) -> None:
    data = yaml.safe_load(FRAMESTATS.read_text())
    data["name"] = name
    del data["environment"]
    if environment is not None:
        data["environment"] = environment
    (folder / name).mkdir()
    (folder / name / "blueprint.yaml").write_text(yaml.safe_dump(data))


@pytest.fixture
def registry(blueprints_dir: Path, tmp_path: Path) -> BlueprintRegistry:
    """The test blueprints, plus framestats run by the platform's python (fs-platform: no environment)
    and framestats in an environment that cannot be built (fs-unlocked: its lock file is missing)."""
    _framestats_as(blueprints_dir, "fs-platform", None)
    unlocked = tmp_path / "unlocked"
    (unlocked / "src" / "unlocked").mkdir(parents=True)
    (unlocked / "src" / "unlocked" / "__init__.py").write_text("")
    (unlocked / "pyproject.toml").write_text('[project]\nname = "unlocked"\nversion = "0.1"\n')
    _framestats_as(blueprints_dir, "fs-unlocked", {"source": str(unlocked)})
    return BlueprintRegistry.discover([blueprints_dir, REPO / "analyses"])


@pytest.fixture
def build_lock(envs: Path, registry: BlueprintRegistry) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the framestats environment's build lock; close its stdin to release it."""
    spec = environments.spec_for_blueprint(registry.get("framestats"))
    assert spec is not None
    lock_path = environments._paths(spec.name, spec.key()["env_sha256"])[2]
    lock_path.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(lock_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    yield holder
    if holder.poll() is None:
        holder.kill()
    holder.wait()
    holder.stdout.close()
    if not holder.stdin.closed:
        holder.stdin.close()


@pytest.fixture
def running(root: Path, registry: BlueprintRegistry, envs: Path) -> Iterator[Manager]:
    """A manager watching ``root`` in a thread (as `ncaas manager` does); stopped at teardown."""
    storage = Storage(root)
    db = JobDB(default_db_url(storage.root))
    manager = Manager(storage, db, registry=registry, executor=LocalExecutor(cpus=4))
    stop = threading.Event()
    loop = threading.Thread(target=manager.run, kwargs={"should_stop": stop.is_set}, name="manager")
    loop.start()
    yield manager
    stop.set()
    loop.join(timeout=10)
    assert not loop.is_alive(), "the manager's loop did not stop"
    db.close()


def _job(watch: JobDB, name: str) -> Job:
    def find() -> Job | None:
        return next((j for j in watch.jobs() if j.submission == f"{name}.submit.json"), None)

    return wait_for(find, what=f"the job of {name}.submit.json")


def _over(watch: JobDB, job: Job, *, timeout: float = 30) -> Job:
    def done() -> Job | None:
        fresh = watch.job(job.id)
        return fresh if fresh is not None and fresh.finalized else None

    return wait_for(done, timeout=timeout, what=f"job {job.id} ({job.submission}) to end")


def test_a_build_in_progress_holds_back_only_its_own_tasks(root, running, build_lock, envs):
    watch = JobDB(running.db.url)  # what `ncaas status` and the server read: the job database
    try:
        submit(root, "built", {"analysis": "framestats", "dataname": ["a.npy", "b.npy"]})
        waiting = _job(watch, "built")
        cause = "waiting for its environment: another process is building the framestats environment"
        wait_for(lambda: {t.cause for t in watch.tasks(waiting.id)} == {cause}, timeout=10, what="the waiting cause")

        # (1) a job needing no environment, submitted after, runs while the other waits
        submit(root, "plain", {"analysis": "fs-platform", "dataname": "c.npy"}, config={"stats": ["mean"]})
        plain = _over(watch, _job(watch, "plain"))
        assert plain.state == "succeeded", [t.cause for t in watch.tasks(plain.id)]
        csv = root / "lab" / "results" / plain.id / "outputs" / "c.npy" / "c.stats.csv"
        assert csv.read_text().splitlines()[0] == "frame,mean"
        assert {t.state for t in watch.tasks(waiting.id)} == {"queued"}
        assert build_lock.poll() is None  # the lock was held the whole time

        # (2) the waiting tasks say why: in the database, status files, the API's dicts and `ncaas status`
        assert [t.cause for t in watch.tasks(waiting.id)] == [cause, cause]
        status = read_json(root / "lab" / "results" / waiting.id / "status" / "a.npy.json")
        assert status["state"] == "queued" and status["cause"] == cause
        detail = job_detail(Manager(running.storage, watch), waiting)
        assert [(t["state"], t["message"]) for t in detail["tasks"]] == [("queued", cause)] * 2
        shown = cli("status", waiting.id, "--root", str(root))
        assert shown.exit_code == 0 and f"a.npy: {cause}" in flat(shown.stdout), shown.stdout

        # (3) cancelling the waiting job cancels it at once (the build goes on: it is shared)
        submit(root, "later", {"analysis": "framestats", "dataname": "c.npy"})
        later = _job(watch, "later")
        asked = time.monotonic()
        done = cli("cancel", waiting.id, "--root", str(root))
        assert done.exit_code == 0, done.stdout
        cancelled = _over(watch, waiting, timeout=10)
        assert time.monotonic() - asked < 5
        assert cancelled.state == "cancelled"
        assert {(t.state, t.attempt, t.cause) for t in watch.tasks(waiting.id)} == {
            ("cancelled", 0, "cancelled by request before it started")
        }
        assert (root / "lab" / "results" / waiting.id / "end.json").exists()

        # (4) once the lock is released the environment is built and the other job of framestats runs
        assert watch.tasks(later.id)[0].state == "queued"
        build_lock.stdin.close()
        build_lock.wait(timeout=10)
        later = _over(watch, later, timeout=60)
        task = watch.tasks(later.id)[0]
        assert later.state == "succeeded", task.cause
        environment = json.loads(task.environment_json)
        assert environment["path"].startswith(str(envs)) and environment["manifest_hash"]
        assert [e.to_state for e in watch.events(later.id) if e.dataset == "c.npy"] == [
            "queued",
            "running",
            "succeeded",
        ]
    finally:
        watch.close()


def test_a_failed_preparation_fails_every_task_waiting_for_it(root, running):
    watch = JobDB(running.db.url)
    try:
        submit(root, "unlocked", {"analysis": "fs-unlocked", "dataname": ["a.npy", "b.npy"]})
        job = _over(watch, _job(watch, "unlocked"))
        assert job.state == "failed"
        for task in watch.tasks(job.id):
            assert (
                task.cause.startswith("could not start: the lock file ")
                and "create it with `ncaas env lock unlocked`" in task.cause
            ), task.cause
            assert [e.to_state for e in watch.events(job.id) if e.dataset == task.dataset] == [
                "queued",
                "running",
                "failed",
            ]  # as when the environment was prepared on the loop
    finally:
        watch.close()
