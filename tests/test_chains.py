"""Chains: a pipeline.yaml submitted like a job, run per dataset step after step, through the real
`ncaas` command (embedded) and the manager.

* caliali-align -> framestats on a small simulated two-session experiment: the second step reads
  the first's aligned movies, its certificate names the first's certificate by sha256, status
  and logs show both steps, and `ncaas rerun CHAIN` reruns both and finds the same outputs;
* framestats (failing) -> framestats: the failed first step stops each dataset's chain with the
  reason, and the second step never runs;
* pipelines that must not run are rejected before anything runs, one line per problem.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from ncaas_testutil import ncaas, submit, write_stack

from ncaas.jobs.manager import Manager

GROUP = "lab"


def _pipeline(root: Path, name: str, data: dict) -> str:
    path = root / GROUP / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path.name


# -- a failed first step stops the chain ---------------------------------------------------------
def test_a_failed_first_step_stops_each_datasets_chain_with_its_reason(manager: Manager, root: Path):
    pipeline = _pipeline(
        root,
        "twice",
        {
            "name": "twice",
            "steps": [
                {"name": "first", "analysis": "framestats", "config": {"fail_reason": "frame 3 is empty"}},
                {"name": "second", "analysis": "framestats"},
            ],
        },
    )
    submit(root, "s", {"pipeline": pipeline, "dataname": ["a.npy", "b.npy"]})
    (job,) = manager.scan()
    chain = manager.db.chain(job.chain_id)
    assert chain is not None
    manager.run(scan=False, until=lambda: manager.db.chain(chain.id).state != "running")
    chain = manager.db.chain(chain.id)
    assert chain.state == "failed"
    jobs = manager.db.chain_jobs(chain.id)
    assert sorted((j.chain_step, j.chain_dataset, j.state) for j in jobs) == [
        (0, "a.npy", "failed"),
        (0, "b.npy", "failed"),
    ]  # the second step never ran
    shown = json.loads((Path(chain.results_dir) / "chain.json").read_text())
    assert shown["state"] == "failed"
    for row in shown["datasets"]:
        first, second = row["steps"]
        assert first["state"] == "failed" and first["reason"] == "exited with code 3: frame 3 is empty"
        assert second == {
            "step": "second",
            "analysis": "framestats",
            "state": "stopped",
            "job": None,
            "reason": "not run: step 'first' failed (exited with code 3: frame 3 is empty)",
            "results_dir": None,
        }


def test_a_cancelled_chain_stops_its_running_step_and_starts_no_other(manager: Manager, root: Path):
    pipeline = _pipeline(
        root,
        "hang",
        {
            "name": "hang",
            "steps": [
                {"name": "first", "analysis": "framestats", "config": {"hang": True}},
                {"name": "second", "analysis": "framestats"},
            ],
        },
    )
    submit(root, "s", {"pipeline": pipeline, "dataname": ["a.npy"]})
    (job,) = manager.scan()
    manager.run(scan=False, until=lambda: manager.db.job(job.id).state == "running")
    manager.chains.cancel(job.chain_id)
    manager.run(scan=False, until=lambda: manager.db.chain(job.chain_id).state != "running")
    chain = manager.db.chain(job.chain_id)
    assert chain.state == "cancelled"
    assert [(j.chain_step, j.state) for j in manager.db.chain_jobs(chain.id)] == [(0, "cancelled")]
    shown = json.loads((Path(chain.results_dir) / "chain.json").read_text())
    assert shown["datasets"][0]["steps"][1]["reason"] == "not run: the chain was cancelled"


def test_steps_and_reruns_of_a_chain_are_refused_when_the_group_s_budget_is_spent(manager: Manager, root: Path):
    from ncaas.cost.budgets import set_budget

    pipeline = _pipeline(
        root,
        "budgeted",
        {
            "name": "budgeted",
            "steps": [{"name": "first", "analysis": "framestats"}, {"name": "second", "analysis": "framestats"}],
        },
    )
    submit(root, "s", {"pipeline": pipeline, "dataname": ["a.npy"]})
    (job,) = manager.scan()  # the first step is queued before the budget is set
    set_budget(manager.db, GROUP, 0.0)  # then nothing is left: the first step's cost is more
    manager.run(scan=False, until=lambda: manager.db.chain(job.chain_id).state != "running")
    chain = manager.db.chain(job.chain_id)
    assert chain.state == "failed"
    first, second = manager.db.chain_jobs(chain.id)
    assert (first.chain_step, first.state) == (0, "succeeded")
    assert (second.chain_step, second.state) == (1, "rejected")
    assert second.cause.startswith("step 'second' for dataset 'a.npy' was not started: group lab has")
    assert "nothing is left" in second.cause
    shown = json.loads((Path(chain.results_dir) / "chain.json").read_text())
    assert shown["datasets"][0]["steps"][1]["state"] == "rejected"
    # a rerun of the chain: its first step is refused the same way, and nothing runs
    again = manager.chains.rerun(chain.id)
    manager.run(scan=False, until=lambda: manager.db.chain(again.id).state != "running")
    [refused] = manager.db.chain_jobs(again.id)
    assert refused.state == "rejected" and refused.chain_step == 0
    assert refused.cause.startswith(f"the rerun of job {first.id} was not started: group lab has")
    assert manager.db.chain(again.id).state == "failed"


def test_a_chain_naming_what_it_may_not_is_rejected_before_anything_runs(manager: Manager, root: Path):
    pipeline = _pipeline(
        root,
        "bad",
        {
            "name": "bad",
            "steps": [
                {"name": "one", "analysis": "fs-private"},
                {"name": "two", "analysis": "nosuch"},
                {"name": "three", "analysis": "framestats", "config": {"stats": ["median"]}},
            ],
        },
    )
    submit(root, "s", {"pipeline": pipeline, "dataname": ["a.npy"]})
    (job,) = manager.scan()
    assert job.state == "rejected" and job.chain_id is None
    problems = job.cause.splitlines()
    assert problems[0] == "step 'one': group 'lab' is not allowed to run 'fs-private'; allowed groups: vip"
    assert problems[1].startswith("step 'two': unknown analysis 'nosuch'; available: ")
    assert problems[2].startswith("step 'three': config field 'stats.0': 'median' is not one of")
    assert manager.db.chains() == []

    sneaky = _pipeline(
        root,
        "sneaky",
        {"name": "sneaky", "steps": [{"name": "one", "analysis": "framestats", "resources": {"memory": "1TB"}}]},
    )
    submit(root, "t", {"pipeline": sneaky, "dataname": ["a.npy"]})
    (job,) = manager.scan()
    assert job.state == "rejected"
    assert job.cause == (
        "sneaky.yaml: field 'steps.0.resources': a pipeline cannot set 'resources': resources, commands, "
        "environments and access come from each analysis' blueprint; a step names an analysis and its config only"
    )


def test_a_step_reading_an_output_its_source_did_not_write_is_stopped_saying_so(manager: Manager, root: Path):
    pipeline = _pipeline(
        root,
        "missing",
        {
            "name": "missing",
            "steps": [
                {"name": "first", "analysis": "framestats"},
                {"name": "second", "analysis": "framestats", "input": {"path": "movies"}},
            ],
        },
    )
    submit(root, "s", {"pipeline": pipeline, "dataname": ["a.npy"]})
    (job,) = manager.scan()
    manager.run(scan=False, until=lambda: manager.db.chain(job.chain_id).state != "running")
    chain = manager.db.chain(job.chain_id)
    assert chain.state == "failed"
    second = [j for j in manager.db.chain_jobs(chain.id) if j.chain_step == 1]
    assert [j.state for j in second] == ["rejected"]
    assert second[0].cause == (
        f"step 'first' (job {job.id}) wrote no 'movies' for dataset 'a.npy', which step 'second' reads; "
        "check the pipeline's input.path against that step's outputs"
    )


# -- caliali-align -> framestats, end to end, and its rerun --------------------------------------
@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """Two simulated sessions of 120 frames, 64x80 px."""
    base = tmp_path_factory.mktemp("chain-sim")
    done = subprocess.run(
        [sys.executable, "-m", "caliali", "simulate", str(base / "sim"), "--sessions", "2", "--frames", "120"]
        + ["--neurons", "8", "--seed", "3", "--height", "64", "--width", "80"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    folder = base / "exp"
    folder.mkdir()
    for name in ("ses01.tif", "ses02.tif"):
        (base / "sim" / name).rename(folder / name)
    return folder


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_caliali_align_then_framestats_runs_end_to_end_and_reruns(experiment: Path, tmp_path: Path):
    root = tmp_path / "root"
    pipeline = tmp_path / "align-stats.yaml"
    pipeline.write_text(
        yaml.safe_dump(
            {
                "name": "align-stats",
                "steps": [
                    {
                        "name": "align",
                        "analysis": "caliali-align",
                        "config": {"gSig": 3, "memory_budget": "128MB", "movie_format": "npy"},
                    },
                    {"name": "stats", "analysis": "framestats", "input": {"from": "align", "path": "aligned"}},
                ],
            }
        )
    )
    env = {"NCAAS_ROOT": str(root)}
    done = ncaas("submit", str(pipeline), str(experiment), "--group", GROUP, "--wait", env=env, timeout=1500)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exp · align: succeeded" in done.stdout and "exp · stats: succeeded" in done.stdout
    chain_id = done.stdout.split()[1].rstrip(":")
    assert chain_id.startswith("chain-")

    shown = json.loads((root / GROUP / "results" / chain_id / "chain.json").read_text())
    assert shown["state"] == "succeeded"
    (row,) = shown["datasets"]
    align, stats = row["steps"]
    align_dir, stats_dir = Path(align["results_dir"]), Path(stats["results_dir"])
    assert sorted(p.name for p in (align_dir / "outputs" / "exp" / "aligned").iterdir()) == ["ses01.npy", "ses02.npy"]
    assert sorted(p.name for p in (stats_dir / "outputs" / "exp").iterdir()) == [
        "ses01.stats.csv",
        "ses02.stats.csv",
        "summary.json",
    ]
    # the second step's certificate names the first's, by the sha256 of its bytes
    cert = json.loads((stats_dir / "certificate.json").read_text())
    upstream_bytes = (align_dir / "certificate.json").read_bytes()
    assert cert["upstream"]["job"] == align["job"] and cert["upstream"]["step"] == "align"
    assert cert["upstream"]["certificate_sha256"] == hashlib.sha256(upstream_bytes).hexdigest()
    assert cert["tasks"][0]["input"]["path"] == f"{align['job']}/outputs/exp/aligned"
    assert f"upstream:     step align of chain {chain_id}" in (stats_dir / "certificate.txt").read_text()
    # each step ran in its own environment
    first = json.loads(upstream_bytes)
    assert first["environment"]["lock_hash"] != cert["environment"]["lock_hash"]

    status = ncaas("status", chain_id, env=env)
    assert status.returncode == 0 and "state succeeded: 2 succeeded" in status.stdout
    logs = ncaas("logs", chain_id, env=env)
    assert f"== exp · align (succeeded, job {align['job']}) ==" in logs.stdout
    assert f"== exp · stats (succeeded, job {stats['job']}) ==" in logs.stdout
    # a later step alone is not rerun: its input is another job's outputs
    alone = ncaas("rerun", stats["job"], env=env)
    assert alone.returncode != 0 and f"rerun the chain: ncaas rerun {chain_id}" in alone.stdout + alone.stderr

    again = ncaas("rerun", chain_id, env=env, timeout=1500)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "the chain's rerun matches" in again.stdout
    chains = [p.name for p in (root / GROUP / "results").iterdir() if p.name.startswith("chain-")]
    assert len(chains) == 2


def test_a_pipeline_submitted_with_a_missing_dataset_is_refused_in_one_line(tmp_path: Path):
    root = tmp_path / "root"
    write_stack(root / GROUP / "inputs" / "a.npy")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "p", "steps": [{"name": "one", "analysis": "framestats"}]}))
    done = ncaas("submit", str(pipeline), "a.npy", "gone.npy", "--group", GROUP, env={"NCAAS_ROOT": str(root)})
    assert done.returncode != 0
    assert "dataset 'gone.npy' not found in lab/inputs/; upload it there first" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_caliali_align_takes_caliali_s_own_options_for_its_stages():
    from ncaas_testutil import REPO

    align = yaml.safe_load((REPO / "analyses" / "caliali-align" / "blueprint.yaml").read_text())
    whole = yaml.safe_load((REPO / "analyses" / "caliali" / "blueprint.yaml").read_text())
    props = align["config_schema"]["properties"]
    for key, schema in props.items():
        if key != "movie_format":
            assert schema == whole["config_schema"]["properties"][key], key
            assert align["default_config"][key] == whole["default_config"][key], key
    assert align["environment"] == {"lock": "../caliali/requirements.lock", "source": "../caliali"}


def test_the_shipped_pipelines_are_valid_and_need_only_their_analyses():
    from ncaas_testutil import REPO

    from ncaas.blueprint import BlueprintRegistry
    from ncaas.pipelines import check_pipeline, parse_pipeline

    registry = BlueprintRegistry.discover([REPO / "analyses"])
    files = sorted((REPO / "pipelines").glob("*.yaml"))
    assert [f.name for f in files] == ["align-stats.yaml", "caliali-minian.yaml", "caliali-suite2p.yaml"]
    for file in files:
        pipeline, problems = parse_pipeline(yaml.safe_load(file.read_text()), name=file.name)
        assert pipeline is not None, problems
        _, problems = check_pipeline(pipeline, registry, GROUP)
        extractor = pipeline.steps[-1].analysis
        if extractor in registry.names():
            assert problems == [], problems
        else:  # hosted by its own analysis folder; without it the chain is refused, naming it
            assert len(problems) == 1 and problems[0].startswith(f"step 'extract': unknown analysis '{extractor}'")


def test_a_chain_through_a_server_from_the_command_line(tmp_path: Path):
    from typer.testing import CliRunner

    from ncaas import cli
    from ncaas.testing.servers import ServerProcess, storage_with_user

    root = tmp_path / "root"
    token = storage_with_user(root)
    write_stack(tmp_path / "a.npy")
    pipeline = tmp_path / "twice.yaml"
    pipeline.write_text(
        yaml.safe_dump(
            {
                "name": "twice",
                "steps": [
                    {"name": "first", "analysis": "framestats", "config": {"fail_reason": "no frames"}},
                    {"name": "second", "analysis": "framestats"},
                ],
            }
        )
    )
    with ServerProcess(root) as server:
        env = {"NCAAS_SERVER": server.url, "NCAAS_TOKEN": token, "NCAAS_ROOT": None, "COLUMNS": "200"}

        def run(*args: str):  # the CLI in this process: start-up is most of a command's time
            return CliRunner().invoke(cli.app, list(args), env=env)

        done = run("submit", str(pipeline), str(tmp_path / "a.npy"), "--wait")
        assert done.exit_code == 1, done.output  # the chain failed, as its first step did
        assert "a.npy · first: failed" in done.output
        assert "a.npy · second: stopped: not run: step 'first' failed (exited with code 3: no frames)" in done.output
        chain_id = done.output.split()[1].rstrip(":")
        status = run("status", chain_id)
        assert status.exit_code == 0 and "state failed: 1 failed, 1 stopped" in status.output
        logs = run("logs", chain_id)
        assert "== a.npy · first (failed, job " in logs.output and "no frames" in logs.output
        assert chain_id in run("status").output
        unknown = run("status", "chain-nosuch")
        assert unknown.exit_code != 0 and "no chain 'chain-nosuch'" in unknown.output
        assert (root / "lab" / "configs" / "twice.yaml").is_file()  # the pipeline is kept in configs/


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_chain_runs_on_ray_with_its_storage_in_s3(ray_cluster, s3_root: str, tmp_path: Path, monkeypatch):
    """The second step reads the first step's outputs where they lie, in S3, on a Ray node."""
    from ncaas_testutil import wait_for

    from ncaas.blueprint import BlueprintRegistry
    from ncaas.executors.ray import RayExecutor
    from ncaas.jobs.db import JobDB
    from ncaas.storage import Storage

    monkeypatch.setenv("NCAAS_STATE", str(tmp_path / "state"))
    storage = Storage(s3_root)
    for seed, name in enumerate(("a.npy", "b.npy"), start=1):
        storage.put(write_stack(tmp_path / "data" / name, frames=12, seed=seed), storage.resolve(GROUP, "inputs", name))
    pipeline = {
        "name": "frames",
        "steps": [
            {"name": "keep", "analysis": "framestats", "config": {"keep_frames": True}},
            {"name": "again", "analysis": "framestats", "config": {"stats": ["mean"]}, "input": {"path": "frames"}},
        ],
    }
    storage.write_text(storage.join(GROUP, "configs", "frames.yaml"), yaml.safe_dump(pipeline))
    body = {"pipeline": "frames.yaml", "dataname": ["a.npy", "b.npy"]}
    storage.write_text(storage.join(GROUP, "submissions", "s.submit.json"), json.dumps(body))
    db = JobDB(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    from ncaas_testutil import REPO

    manager = Manager(
        storage,
        db,
        executor=RayExecutor(ray_cluster.address, storage=storage),
        registry=BlueprintRegistry.discover([REPO / "analyses"]),
        poll_interval=0.1,
    )
    (job,) = wait_for(manager.scan, timeout=30, what="the chain's submission to be read from S3")
    manager.run(scan=False, until=lambda: manager.db.chain(job.chain_id).state != "running")
    chain = manager.db.chain(job.chain_id)
    jobs = manager.db.chain_jobs(chain.id)
    assert chain.state == "succeeded", [(j.id, j.state, j.cause) for j in jobs]
    second = [j for j in jobs if j.chain_step == 1 and j.chain_dataset == "a.npy"][0]
    cert = json.loads(storage.read_text(f"{second.results_dir}/certificate.json"))
    assert cert["upstream"]["step"] == "keep" and cert["tasks"][0]["input"]["path"].endswith("/outputs/a.npy/frames")
    summary = json.loads(storage.read_text(f"{second.results_dir}/outputs/a.npy/summary.json"))
    assert summary == {"a.npy": {"frames": 12, "height": 8, "width": 8, "dtype": "float32"}}
    db.close()


def test_a_step_whose_source_succeeded_waits_for_its_certificate_and_is_never_shown_stopped():
    from ncaas.pipelines.plan import JobView, plan_chain

    names, sources = ["align", "extract"], [None, 0]
    writing = {(0, "d"): JobView("j1", "succeeded", finalized=False, reason="")}
    plan = plan_chain(names, sources, ["d"], writing)
    second = [c for c in plan.cells if c.step == 1][0]
    assert (second.state, second.reason) == ("waiting", "waiting for 'align''s certificate")
    assert not plan.over and plan.start == []
    certified = {(0, "d"): JobView("j1", "succeeded", finalized=True, reason="")}
    assert plan_chain(names, sources, ["d"], certified).start == [(1, "d", "j1")]
    failed = {(0, "d"): JobView("j1", "failed", finalized=True, reason="exited with code 2")}
    stopped = [c for c in plan_chain(names, sources, ["d"], failed).cells if c.step == 1][0]
    assert stopped.state == "stopped" and "exited with code 2" in stopped.reason


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.filterwarnings("ignore:The 'manufacturer' field is deprecated:DeprecationWarning")
def test_the_shipped_caliali_then_suite2p_chain_runs_as_shipped(tmp_path: Path):
    """pipelines/caliali-suite2p.yaml as shipped: caliali's alignment, then suite2p on the aligned sessions.

    The simulator's default field (its default neurons) over two sessions of 200 frames: enough cells
    for caliali-align to estimate their radius, as the shipped pipeline leaves it to.
    """
    made = subprocess.run(
        [sys.executable, "-m", "caliali", "simulate", str(tmp_path / "sim"), "--sessions", "2", "--frames", "200"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert made.returncode == 0, made.stderr
    experiment = tmp_path / "exp"
    experiment.mkdir()
    for name in ("ses01.tif", "ses02.tif"):
        (tmp_path / "sim" / name).rename(experiment / name)
    root = tmp_path / "root"
    shipped = Path(__file__).resolve().parents[1] / "pipelines" / "caliali-suite2p.yaml"
    env = {"NCAAS_ROOT": str(root)}
    done = ncaas("submit", str(shipped), str(experiment), "--group", GROUP, "--wait", env=env, timeout=2300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    chain_id = done.stdout.split()[1].rstrip(":")
    shown = json.loads((root / GROUP / "results" / chain_id / "chain.json").read_text())
    assert shown["state"] == "succeeded"
    (row,) = shown["datasets"]
    align, extract = row["steps"]
    aligned = Path(align["results_dir"]) / "outputs" / "exp" / "aligned"
    assert sorted(p.name for p in aligned.iterdir()) == ["ses01.tif", "ses02.tif"]
    outputs = Path(extract["results_dir"]) / "outputs" / "exp"
    assert (outputs / "suite2p" / "plane0" / "stat.npy").is_file() and (outputs / "suite2p" / "ophys.nwb").is_file()
    cert = json.loads((Path(extract["results_dir"]) / "certificate.json").read_text())
    assert cert["blueprint"]["name"] == "suite2p" and cert["upstream"]["job"] == align["job"]
    # suite2p read both aligned sessions as one recording, in the order of their names
    ops = np.load(outputs / "suite2p" / "plane0" / "ops.npy", allow_pickle=True).item()
    assert ops["nframes"] == 400, ops["nframes"]
