"""The slurm executor on a real two-node Slurm cluster on loopback (munged, slurmctld, slurmd n1
and n2 on one host), with the storage root on this machine's filesystem as a cluster's shared
one: jobs spread over both nodes, cancel, a timeout, a task out of memory, a manager restart
adopting running jobs, and what Slurm's states mean.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ncaas_testutil import make_blueprint, ncaas, read_json, start_manager, stop, submit, wait_for, write_stack

from ncaas.blueprint import BlueprintRegistry
from ncaas.cost.profile import default_profile
from ncaas.exceptions import NcaasError
from ncaas.executors._slurm import outcome, parse_duration, parse_size, sbatch_time
from ncaas.executors.base import ExitRecord, Lost
from ncaas.executors.pick import executor_for
from ncaas.executors.slurm import SlurmExecutor
from ncaas.executors.slurm_profile import load_profile
from ncaas.jobs.db import JobDB
from ncaas.jobs.manager import Manager
from ncaas.jobs.states import JobState
from ncaas.storage import Storage
from ncaas.testing.ray_cluster import free_port

pytestmark = pytest.mark.timeout(240)

DATASETS = ["a.npy", "b.npy", "c.npy", "d.npy"]
NODE_TYPES = {"n1": "cpu-small", "n2": "cpu-large"}  # node types of the default pricing profile


@pytest.fixture
def slurm_root(tmp_path: Path) -> Path:
    root = tmp_path / "shared" / "root"
    for seed, name in enumerate(DATASETS, start=1):
        write_stack(root / "lab" / "inputs" / name, frames=20, seed=seed)
    return root


@pytest.fixture
def slurm_registry(tmp_path: Path) -> BlueprintRegistry:
    folder = tmp_path / "blueprints"
    folder.mkdir()
    make_blueprint(folder, "fs-slurm", resources={"memory": "300MB"})
    make_blueprint(folder, "fs-slurm-short", resources={"memory": "300MB", "timeout": 3})
    make_blueprint(folder, "fs-slurm-huge", resources={"memory": "64GB"})
    return BlueprintRegistry.discover([folder])


def _manager(root: Path, registry: BlueprintRegistry, **profile: object) -> Manager:
    storage = Storage(root)
    executor = SlurmExecutor(storage, load_profile(None).model_copy(update={"time_margin": 60, **profile}))
    db = JobDB(f"sqlite:///{root.parent / 'jobs.sqlite'}")
    return Manager(storage, db, executor=executor, registry=registry, poll_interval=0.1, scan_interval=0.2)


@pytest.fixture
def slurm_manager(slurm_cluster, slurm_root: Path, slurm_registry: BlueprintRegistry):
    manager = _manager(slurm_root, slurm_registry, node_types=NODE_TYPES)
    yield manager
    manager.db.close()


def _one_job(manager: Manager, root: Path, analysis: str, datasets: list[str], config: dict):
    submit(root, "s", {"analysis": analysis, "dataname": datasets}, config=config)
    [job] = wait_for(manager.scan, timeout=30, what="the submission to be picked up")
    assert job.state == JobState.QUEUED, job.cause
    return job


def _why(manager: Manager, job) -> str:
    return f"{job.state}: " + "; ".join(f"{t.dataset}: {t.cause}" for t in manager.db.tasks(job.id))


def _results(manager: Manager, job) -> Path:
    return Path(job.results_dir)


def test_datasets_spread_over_both_nodes_with_slurm_accounting(slurm_manager: Manager, slurm_root: Path) -> None:
    job = _one_job(slurm_manager, slurm_root, "fs-slurm", DATASETS, {"stats": ["mean"], "sleep_per_frame": 0.1})
    job = slurm_manager.run_job(job.id)
    assert job.state == JobState.SUCCEEDED, _why(slurm_manager, job)
    results = _results(slurm_manager, job)
    statuses = {d: json.loads((results / "status" / f"{d}.json").read_text()) for d in DATASETS}
    assert {s["node"] for s in statuses.values()} == {"n1", "n2"}
    for dataset in DATASETS:
        csv = (results / "outputs" / dataset / f"{dataset.removesuffix('.npy')}.stats.csv").read_text()
        assert csv.splitlines()[0] == "frame,mean" and len(csv.splitlines()) == 21
        assert "exited with code 0" in (results / "logs" / f"{dataset}.log").read_text()
    cert = json.loads((results / "certificate.json").read_text())
    assert cert["executor"]["name"] == "slurm" and cert["executor"]["nodes"] == ["n1", "n2"]
    assert "bubblewrap" in cert["isolation"]
    job_ids = set()
    for task in cert["tasks"]:
        slurm = task["slurm"]
        job_ids.add(slurm["job_id"])
        assert task["node"] == slurm["node"] == statuses[task["dataset"]]["node"]
        assert slurm["source"] == "sacct" and slurm["state"] == "COMPLETED" and 1 <= slurm["elapsed_s"] < 60
        assert slurm["cpu_seconds"] > 0 and slurm["max_rss_bytes"] > 10**6
        assert task["environment"]["manifest_hash"] and task["environment"]["verified_files"] > 100
    assert len(job_ids) == 4
    # Each attempt is priced at the rates of its node's type, as the site profile gives it
    for status in statuses.values():
        [attempt] = status["attempts"]
        assert attempt["node_type"] == status["cost"]["node_type"] == NODE_TYPES[status["node"]]
        rates = default_profile().node_types[NODE_TYPES[status["node"]]]
        hourly = rates.vcpu_hour.standard + 300e6 / 2**30 * rates.gib_hour.standard  # 1 cpu, 300 MB
        assert status["cost"]["hourly"] == pytest.approx(hourly) and status["cost"]["compute"] > 0
    # What Slurm was asked for: the blueprint's resources plus the profile's margins
    asked = subprocess.run(
        [
            "sacct",
            "-n",
            "-P",
            "-X",
            "-j",
            ",".join(sorted(job_ids)),
            "-o",
            "JobName,Partition,ReqCPUS,ReqMem,Timelimit",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    names = {f"ncaas-{job.id}-{d}.1|debug|1|543M|00:11:00" for d in DATASETS}  # 300 MB + 256 MiB; 10 min + 60 s
    assert set(asked) == names, asked
    text = (results / "certificate.txt").read_text()
    executor = next(line for line in text.splitlines() if line.startswith("executor:"))
    assert "slurm 22.05" in executor and "cluster at ncaastest: 2 nodes (n1, n2)" in executor, executor
    assert sum(line.startswith("  slurm     job ") for line in text.splitlines()) == 4


def test_cancel_stops_a_running_job_within_seconds(slurm_manager: Manager, slurm_root: Path) -> None:
    job = _one_job(slurm_manager, slurm_root, "fs-slurm", ["a.npy"], {"hang": True})
    log = _results(slurm_manager, job) / "logs" / "a.npy.log"
    slurm_manager.run(scan=False, until=lambda: log.exists() and "hanging as configured" in log.read_text())
    started = time.monotonic()
    slurm_manager.cancel(job.id)
    job = slurm_manager.run_job(job.id)
    assert job.state == JobState.CANCELLED, _why(slurm_manager, job)
    assert time.monotonic() - started < 10
    assert "[ncaas] cancelled with code" in log.read_text()  # stopped by its supervisor, on its node
    assert slurm_manager.db.tasks(job.id)[0].cause == "cancelled by request"


def test_a_timeout_on_a_node_is_enforced_as_locally(slurm_manager: Manager, slurm_root: Path) -> None:
    job = _one_job(slurm_manager, slurm_root, "fs-slurm-short", ["b.npy"], {"hang": True})
    job = slurm_manager.run_job(job.id)
    assert job.state == JobState.TIMED_OUT, _why(slurm_manager, job)
    assert slurm_manager.db.tasks(job.id)[0].cause == "exceeded its time limit of 3.0 s"


def test_a_task_out_of_memory_fails_with_its_cause_and_is_not_retried(slurm_manager: Manager, slurm_root: Path):
    job = _one_job(slurm_manager, slurm_root, "fs-slurm", ["c.npy"], {"memory_mb": 800})
    job = slurm_manager.run_job(job.id)
    assert job.state == JobState.FAILED, _why(slurm_manager, job)
    [task] = slurm_manager.db.tasks(job.id)
    assert task.attempt == 1
    assert task.cause.startswith("stopped: it needed more than its memory limit of 286.1 MiB"), task.cause


def test_a_job_slurm_stops_for_memory_fails_with_slurms_cause(slurm_cluster, slurm_root, slurm_registry) -> None:
    # No margin: the task stays under its own limit, but with the supervisor the job goes over
    # its --mem, and slurmstepd stops it (OverMemoryKill)
    manager = _manager(slurm_root, slurm_registry, memory_margin=0)
    job = _one_job(manager, slurm_root, "fs-slurm", ["a.npy"], {"memory_mb": 220, "hang": True})
    job = manager.run_job(job.id)
    manager.db.close()
    assert job.state == JobState.FAILED, _why(manager, job)
    [task] = manager.db.tasks(job.id)
    assert task.attempt == 1 and task.cause.startswith("out of memory: Slurm stopped its job "), task.cause
    assert "when it used more than the 286 MiB it was given (the blueprint's memory plus the site's " in task.cause


def test_a_wrong_python_on_the_nodes_fails_with_the_jobs_own_words(slurm_cluster, slurm_root, slurm_registry):
    manager = _manager(slurm_root, slurm_registry, python=Path("/shared/nowhere/bin/python"))
    job = _one_job(manager, slurm_root, "fs-slurm", ["a.npy"], {})
    job = manager.run_job(job.id)
    manager.db.close()
    assert job.state == JobState.FAILED, _why(manager, job)
    [task] = manager.db.tasks(job.id)
    assert task.attempt == 1 and task.cause.startswith("could not start: its Slurm job "), task.cause
    assert "before ncaas' supervisor wrote a record: " in task.cause
    assert task.cause.endswith("/shared/nowhere/bin/python: not found"), task.cause


def test_a_task_no_node_can_hold_fails_with_slurms_refusal(slurm_manager: Manager, slurm_root: Path) -> None:
    job = slurm_manager.run_job(_one_job(slurm_manager, slurm_root, "fs-slurm-huge", ["a.npy"], {}).id)
    assert job.state == JobState.FAILED
    cause = slurm_manager.db.tasks(job.id)[0].cause
    assert cause.startswith("could not start: sbatch refused: sbatch: error: Memory specification can not be"), cause


def test_a_restarted_manager_adopts_the_jobs_still_running(
    slurm_cluster, slurm_root: Path, slurm_registry: BlueprintRegistry
) -> None:
    first = _manager(slurm_root, slurm_registry)
    job = _one_job(first, slurm_root, "fs-slurm", ["a.npy", "b.npy"], {"sleep_per_frame": 0.25})
    status = [Path(job.results_dir) / "status" / f"{d}.json" for d in ("a.npy", "b.npy")]

    def both_running() -> bool:
        seen = [json.loads(p.read_text()) if p.exists() else {} for p in status]
        return all(s.get("node") and s.get("progress", 0) > 0 for s in seen)

    first.run(scan=False, until=both_running)
    tasks = first.db.tasks(job.id)
    submitted = {t.dataset: t.runner_pid for t in tasks}
    # b.npy: as if the manager had stopped right after sbatch, before it wrote the job id down
    [b] = [t for t in tasks if t.dataset == "b.npy"]
    (Path(b.run_dir) / "slurm.json").unlink()
    first.db.update_task(b.id, runner_pid=None, runner_start=None)
    first.executor.close()
    first.db.close()  # the manager is gone; its Slurm jobs run on
    second = _manager(slurm_root, slurm_registry)
    job = second.run_job(job.id)
    second.db.close()
    assert job.state == JobState.SUCCEEDED, _why(second, job)
    cert = json.loads((Path(job.results_dir) / "certificate.json").read_text())
    for task in cert["tasks"]:
        assert task["attempts"] == 1  # adopted (b.npy's job found by its name), not run again
        assert int(task["slurm"]["job_id"]) == submitted[task["dataset"]]


def test_a_node_lost_mid_task_is_retried_on_the_other_node(slurm_cluster, slurm_manager: Manager, slurm_root: Path):
    job = _one_job(
        slurm_manager, slurm_root, "fs-slurm", ["a.npy", "b.npy"], {"sleep_per_frame": 0.3, "batch_frames": 1}
    )
    results = Path(job.results_dir)

    def running_on_n2() -> str | None:
        for dataset in ("a.npy", "b.npy"):
            path = results / "status" / f"{dataset}.json"
            status = json.loads(path.read_text()) if path.exists() else {}
            if status.get("node") == "n2" and status.get("progress", 0) > 0:
                return dataset
        return None

    victim: list[str | None] = []
    slurm_manager.run(scan=False, until=lambda: bool(victim.append(running_on_n2()) or victim[-1]))
    try:
        slurm_cluster.kill_node("n2")
        job = slurm_manager.run_job(job.id)
    finally:
        slurm_cluster.start_node("n2")
    assert job.state == JobState.SUCCEEDED, _why(slurm_manager, job)
    lost = victim[-1]
    first, second = json.loads((results / "status" / f"{lost}.json").read_text())["attempts"]
    assert (first["node"], first["outcome"]) == ("n2", "queued")
    assert first["cause"] == "its Slurm node failed (NODE_FAIL) on node n2; retrying (attempt 2 of 3)"
    assert (second["node"], second["outcome"]) == ("n1", "succeeded")


def test_ncaas_manager_killed_and_started_again_adopts_its_slurm_jobs(slurm_cluster, slurm_root: Path, tmp_path):
    profile = tmp_path / "site.yaml"
    profile.write_text("partition: debug\ntime_margin: 60\nmemory_margin: 128MiB\n")
    args = ["--executor", "slurm", "--slurm-profile", str(profile)]
    log = tmp_path / "manager.log"
    submit(slurm_root, "cli", {"analysis": "framestats", "dataname": ["a.npy"]}, config={"sleep_per_frame": 0.25})
    status = slurm_root / "lab" / "results"
    manager = start_manager(slurm_root, log, args=args)
    try:
        running = wait_for(
            lambda: [read_json(p) for p in status.glob("*/status/a.npy.json") if read_json(p).get("progress", 0) > 0],
            timeout=60,
            what="the task running on a node",
        )
        [submitted] = [read_json(p)["job_id"] for p in (slurm_root / ".ncaas" / "runs").glob("*/a.npy.1/slurm.json")]
        stop(manager, signal.SIGKILL)  # the manager dies; the Slurm job runs on
        manager = start_manager(slurm_root, log, args=args)
        job_dir = next(status.iterdir())
        end = wait_for(lambda: (job_dir / "end.json").exists() and read_json(job_dir / "end.json"), timeout=60)
    finally:
        stop(manager)
    assert end["state"] == "succeeded", log.read_text()
    [task] = read_json(job_dir / "certificate.json")["tasks"]
    assert task["attempts"] == 1 and task["node"] == running[0]["node"] == task["slurm"]["node"]
    assert task["slurm"]["job_id"] == submitted  # the job the first manager submitted
    assert log.read_text().count("slurm executor, 4 cpus") == 2


def test_ncaas_serve_runs_a_users_job_on_slurm(slurm_cluster, slurm_root: Path, tmp_path: Path) -> None:
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full = {**os.environ, "COLUMNS": "200", **(env or {})}
        return subprocess.run([sys.executable, "-m", "ncaas", *args], capture_output=True, text=True, env=full)

    root = ["--root", str(slurm_root)]
    assert run("admin", "add-group", "lab", *root).returncode == 0
    assert run("admin", "add-user", "ann", "--group", "lab", *root).returncode == 0
    token = run("admin", "issue-token", "ann", *root).stdout.strip().splitlines()[-1]
    port, log = free_port(), tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "ncaas", "serve", "--port", str(port), *root, "--executor", "slurm"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "ncaas server on" in log.read_text() or server.poll() is not None, timeout=60)
        client = {"NCAAS_SERVER": f"http://127.0.0.1:{port}", "NCAAS_TOKEN": token}
        data = write_stack(tmp_path / "mine.npy", seed=9)
        done = run("submit", "framestats", str(data), "--wait", env=client)
        assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout + done.stderr + log.read_text()
        job = done.stdout.split("job ", 1)[1].split(":", 1)[0].strip()
        assert run("results", job, "--to", str(tmp_path / "out"), env=client).returncode == 0
    finally:
        stop(server)
    [task] = read_json(tmp_path / "out" / "certificate.json")["tasks"]
    assert task["node"] in ("n1", "n2") and task["slurm"]["source"] == "sacct" and task["slurm"]["job_id"]


def test_sandbox_off_says_so_in_the_certificate(slurm_cluster, slurm_root: Path, slurm_registry: BlueprintRegistry):
    manager = _manager(slurm_root, slurm_registry, sandbox=False)
    job = _one_job(manager, slurm_root, "fs-slurm", ["d.npy"], {})
    job = manager.run_job(job.id)
    manager.db.close()
    assert job.state == JobState.SUCCEEDED, _why(manager, job)
    cert = json.loads((Path(job.results_dir) / "certificate.json").read_text())
    assert cert["isolation"].startswith("none: NCAAS_SANDBOX=off, tasks ran without a sandbox"), cert["isolation"]


def test_without_sacct_the_certificate_has_slurmctlds_account_and_the_supervisors_usage(
    slurm_cluster, slurm_manager: Manager, slurm_root: Path
) -> None:
    with slurm_cluster.accounting_down():  # sacct fails, as on a cluster that keeps no accounting
        job = _one_job(slurm_manager, slurm_root, "fs-slurm", ["b.npy"], {"cpu_seconds": 0.5})
        job = slurm_manager.run_job(job.id)
    assert job.state == JobState.SUCCEEDED, _why(slurm_manager, job)
    [task] = json.loads((Path(job.results_dir) / "certificate.json").read_text())["tasks"]
    slurm = task["slurm"]
    assert slurm["source"] == "scontrol and ncaas' supervisor (the cluster keeps no sacct accounting)"
    assert slurm["state"] == "COMPLETED" and slurm["node"] == task["node"] and slurm["elapsed_s"] >= 1
    assert slurm["cpu_seconds"] == task["cpu_seconds"] >= 0.5 and slurm["max_rss_bytes"] == task["peak_memory_bytes"]


def test_slurm_states_mean_what_they_mean_locally() -> None:
    common = dict(job_id="7", node="n2", cancel_asked=False, time_limit_s=660.0, memory_bytes=556 * 2**20)
    # slurmstepd's own words when OverMemoryKill stops a job (state FAILED on a cluster without cgroups)
    said = "slurmstepd-n2: error: StepId=7.batch exceeded memory limit (88576000 > 62914560), being killed"
    for state, tail in (("OUT_OF_MEMORY", ""), ("FAILED", said)):
        record = outcome(state, output_tail=tail, **common)
        assert isinstance(record, ExitRecord) and record.stopped.startswith(
            "out of memory: Slurm stopped its job 7 on node n2 when it used more than the 556 MiB"
        )
    assert outcome("TIMEOUT", output_tail="", **common) == ExitRecord(timed_out=True, timeout=660.0)
    assert outcome("NODE_FAIL", output_tail="", **common) == Lost("its Slurm node failed (NODE_FAIL) on node n2")
    assert outcome("PREEMPTED", output_tail="", **common) == Lost(
        "Slurm preempted its job 7 on node n2 for another job (PREEMPTED)"
    )
    assert outcome("CANCELLED", output_tail="", **{**common, "cancel_asked": True}) == ExitRecord(cancelled=True)
    assert isinstance(outcome("CANCELLED", output_tail="", **common), Lost)  # someone else's scancel: retried
    failed = outcome("FAILED", output_tail="/shared/py: not found\n", exit_code="127:0", **common)
    assert failed.error == (
        "its Slurm job 7 failed on node n2 (exit code 127:0) before ncaas' supervisor wrote a record: "
        "/shared/py: not found"
    )
    assert (parse_duration("1-02:03:04"), parse_duration("00:01.500"), parse_duration("UNLIMITED")) == (
        93784.0,
        1.5,
        None,
    )
    assert (parse_size("51200K"), parse_size("1.5G"), parse_size("")) == (51200 * 1024, 3 * 2**29, None)
    assert (sbatch_time(3 + 60), sbatch_time(1), sbatch_time(7200)) == ("0:02:00", "0:01:00", "2:00:00")


def test_bad_slurm_options_are_refused_in_one_line(tmp_path: Path) -> None:
    profile = tmp_path / "site.yaml"
    profile.write_text("partition: compute\nmemory_margn: 1GB\n")
    done = ncaas("manager", "--executor", "slurm", "--slurm-profile", str(profile), "--root", str(tmp_path))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"Slurm site profile {profile}: memory_margn: Extra inputs are not permitted; known keys:" in " ".join(
        done.stderr.split()
    )
    profile.write_text("node_type: cpu-huge\n")
    with pytest.raises(NcaasError, match="prices nodes as cpu-huge, which the pricing profile \\(default\\) does not"):
        executor_for("slurm", Storage(tmp_path), slurm_profile=str(profile))
    with pytest.raises(NcaasError, match="^--slurm-profile needs --executor slurm$"):
        executor_for("local", Storage(tmp_path), slurm_profile=str(profile))
