"""Cost, with real runs of framestats: a priced job, an estimate, a refused over-budget submission,
a run stopped by its hard cap, a Save task interrupted and retried with its lost time charged;
and the TCO worked examples of COST.md, to the cent."""

from __future__ import annotations

import json
import threading

import pytest
from ncaas_testutil import REPO, make_blueprint, ncaas, read_json, submit, wait_for, write_stack

from ncaas.blueprint import BlueprintRegistry
from ncaas.cost.budgets import budget_status, remove_budget, set_budget
from ncaas.cost.profile import DEFAULT_PROFILE_YAML, PricingError, default_profile, install_profile, load_profile
from ncaas.cost.report import spend_rows
from ncaas.cost.tco import LocalMachine, crossover, eac, figure_png
from ncaas.exceptions import NcaasError
from ncaas.executors.local import LocalExecutor
from ncaas.jobs.db import JobDB, default_db_url
from ncaas.jobs.manager import Manager
from ncaas.storage import Storage

pytestmark = pytest.mark.timeout(120)

# COST.md's worked examples: x_local, n, r, c_s, x_p, t_local -> EAC, LCC, LUC
WORKED = [
    (2499, 2, 0.05, 0, 0.42, 1800, 1343.97, 61.54, 18.31),
    (2499, 4, 0.05, 250, 0.42, 1800, 954.75, 43.72, 13.01),
    (16182, 4, 0.07, 1200, 3.10, 5400, 5977.38, 37.08, 33.11),
]
PROFILE = default_profile()
STANDARD_HOURLY = PROFILE.machine.vcpu_hour.standard + PROFILE.machine.gib_hour.standard  # 1 cpu, 1 GiB
SAVE_HOURLY = PROFILE.machine.vcpu_hour.save + PROFILE.machine.gib_hour.save


@pytest.mark.parametrize("x_local,n,r,c_s,x_p,t_local,want_eac,want_lcc,want_luc", WORKED)
def test_tco_reproduces_the_worked_examples_to_the_cent(x_local, n, r, c_s, x_p, t_local, want_eac, want_lcc, want_luc):
    row = crossover(LocalMachine(x_local, n, r, c_s), cost_per_dataset=x_p, local_seconds=t_local, option="standard")
    assert (round(row.eac, 2), round(row.lcc, 2), round(row.luc, 2)) == (want_eac, want_lcc, want_luc)
    assert eac(LocalMachine(x_local, n, 0.0, c_s)) == pytest.approx(x_local / n + c_s)  # no interest: a straight line


def test_ncaas_tco_prints_the_worked_values_and_draws_the_figure(tmp_path):
    x_local, n, r, c_s, x_p, t_local, want_eac, want_lcc, want_luc = WORKED[2]
    png = tmp_path / "tco.png"
    args = ["tco", "--price", str(x_local), "--lifetime", str(n), "--rate", str(r), "--support", str(c_s)]
    args += ["--cost-per-dataset", str(x_p), "--local-seconds", str(t_local), "--plot", str(png)]
    rows = json.loads(ncaas(*args, "--format", "json", "--root", str(tmp_path / "root"), check=True).stdout)
    assert [round(rows[0][k], 2) for k in ("eac", "lcc", "luc")] == [want_eac, want_lcc, want_luc]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    bad = ncaas("tco", "--price", "100", "--lifetime", "0", "--cost-per-dataset", "1", "--local-seconds", "1")
    assert bad.returncode == 1 and "lifetime 0.0 must be > 0" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr


def test_figure_marks_a_machine_that_never_pays_off():
    rows = [crossover(LocalMachine(50_000, 2, 0.05), cost_per_dataset=0.5, local_seconds=36_000, option="standard")]
    assert not rows[0].pays_off and rows[0].luc > 100
    assert figure_png(rows)[:4] == b"\x89PNG"


def test_profiles_install_and_refuse_bad_ones(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text(DEFAULT_PROFILE_YAML.replace("name: default", "name: lab-cloud"))
    state = tmp_path / "state"
    state.mkdir()
    assert install_profile(good, state).name == "lab-cloud"
    assert load_profile(state).name == "lab-cloud"
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("transfer_out_gb", "transfer_gb"))
    with pytest.raises(PricingError, match="transfer_gb: unknown field"):
        install_profile(bad, state)
    done = ncaas("pricing", "install", str(bad), "--root", str(tmp_path / "root"))
    assert done.returncode == 1 and "unknown field" in done.stdout + done.stderr and "Traceback" not in done.stderr


# -- real runs -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A storage root and manager; one priced framestats job already run (the history estimates use)."""
    root = tmp_path_factory.mktemp("cost") / "root"
    for group in ("lab", "spot"):
        write_stack(root / group / "inputs" / "a.npy", frames=20)
    storage = Storage(root)
    db = JobDB(default_db_url(storage.root))
    folder = root.parent / "blueprints"
    folder.mkdir()
    make_blueprint(folder, "fs-large", pricing={"instance": "cpu-large"})  # books a whole node type
    make_blueprint(folder, "fs-gpu", pricing={"instance": "gpu-huge"})  # one the profile does not price
    registry = BlueprintRegistry.discover([folder, REPO / "analyses"])
    manager = Manager(storage, db, registry=registry, executor=LocalExecutor(cpus=2))
    path = submit(root, "priced", {"analysis": "framestats", "dataname": "a.npy"}, config={"cpu_seconds": 0.3})
    job = manager.run_job(manager.ingest_file("lab", str(path), user="ann").id)
    assert job.state == "succeeded", job.cause
    site = type("Site", (), {})()
    site.root, site.storage, site.db, site.manager, site.job = root, storage, db, manager, job
    yield site
    db.close()


def test_a_job_is_priced_with_its_breakdown_everywhere(site):
    results = site.root / "lab" / "results" / site.job.id
    status = read_json(results / "status" / "a.npy.json")
    cost = status["cost"]
    assert cost["final"] and cost["option"] == "standard" and cost["currency"] == "USD"
    assert cost["total"] == pytest.approx(cost["compute"] + cost["transfer"] + cost["workflow"])
    # 1 cpu and 1 GiB held for the task's wall time, at the default machine's standard rates
    [attempt] = status["attempts"]
    wall = (attempt["ended_ms"] - attempt.get("started_ms", attempt["launched_ms"])) / 1000
    assert cost["seconds"] == pytest.approx(wall) and wall > 0.3
    assert cost["compute"] == pytest.approx(wall / 3600 * STANDARD_HOURLY)
    outputs = sum(f.stat().st_size for f in (results / "outputs" / "a.npy").rglob("*") if f.is_file())
    assert cost["output_bytes"] == outputs > 0
    assert cost["transfer"] == pytest.approx(outputs / 1e9 * 0.09)
    assert cost["workflow"] == pytest.approx(2e-7 + 1.66667e-5 * 0.128 * 1.0)
    cert = read_json(results / "certificate.json")
    assert cert["tasks"][0]["cost"] == cost
    assert cert["cost"]["job"]["total"] == pytest.approx(cost["total"])
    assert cert["cost"]["profile"]["name"] == "default" and cert["cost"]["option"] == "standard"
    assert read_json(results / "end.json")["cost"]["total"] == pytest.approx(cost["total"])
    assert "cost:" in (results / "certificate.txt").read_text()
    shown = ncaas("status", site.job.id, "--root", str(site.root), check=True).stdout
    assert f"cost: {cost['total']:.6f} USD at the standard price" in shown
    report = json.loads(ncaas("cost", "--format", "json", "--root", str(site.root), check=True).stdout)
    [row] = [r for r in report["rows"] if r["group"] == "lab"]
    assert (row["analysis"], row["user"], row["jobs"], row["tasks"]) == ("framestats", "ann", 1, 1)
    assert row["total"] == pytest.approx(cost["total"])
    csv = ncaas("cost", "--by", "analysis", "--format", "csv", "--root", str(site.root), check=True).stdout
    assert csv.splitlines()[0] == "analysis,jobs,tasks,compute,transfer,workflow,lost,total,currency"
    with pytest.raises(NcaasError, match="cannot group spend by 'colour'; allowed: group, analysis, user, period"):
        spend_rows(site.db, by=["colour"])


def test_estimate_from_past_runs_and_no_history_said_plainly(site, tmp_path):
    big = write_stack(tmp_path / "big.npy", frames=200)
    said = ncaas("submit", "framestats", str(big), "--estimate", "-g", "lab", "--root", str(site.root), check=True)
    assert "estimate (standard) for framestats on 1 dataset(s)" in said.stdout
    assert "from 1 past run(s), by input size in bytes" in said.stdout
    assert not (site.root / "lab" / "inputs" / "big.npy").exists()  # an estimate uploads and submits nothing
    save = site.manager.estimate("lab", "framestats", "save", [big.stat().st_size])
    standard = site.manager.estimate("lab", "framestats", "standard", [big.stat().st_size])
    assert 0 < save["cost"] < standard["cost"] and save["seconds"] == standard["seconds"]
    assert standard["cost_low"] <= standard["cost"] <= standard["cost_high"]
    none = ncaas("submit", "fs-new", "x.npy", "--estimate", "--root", str(site.root), env=_blueprint_env(tmp_path))
    assert none.returncode == 0 and "no estimate: fs-new has no finished run" in none.stdout


def _blueprint_env(tmp_path):
    from ncaas_testutil import make_blueprint

    folder = tmp_path / "blueprints"
    folder.mkdir(exist_ok=True)
    if not (folder / "fs-new").exists():
        make_blueprint(folder, "fs-new")
    return {"NCAAS_BLUEPRINTS": str(folder)}


def test_a_job_over_the_budget_left_is_refused_before_it_runs(site):
    size = site.storage.size(f"{site.root}/lab/inputs/a.npy")
    estimate = site.manager.estimate("lab", "framestats", "standard", [size])
    # estimates come from the group's own runs: another group's jobs never move them
    assert site.manager.estimate("poor", "framestats", "standard", [size])["estimate"] is None
    set_budget(site.db, "lab", 1.0)
    spent = budget_status(site.db, "lab").spent
    assert spent > 0
    set_budget(site.db, "lab", spent + estimate["cost"] / 2)
    try:
        path = submit(site.root, "over", {"analysis": "framestats", "dataname": "a.npy"})
        job = site.manager.ingest_file("lab", str(path))
        assert job.state == "rejected"
        assert f"this job is estimated at {estimate['cost']:.6f} USD" in job.cause
        assert f"more than the {estimate['cost'] / 2:.6f} USD left: group lab has" in job.cause
        assert f"(spent {spent:.6f} USD)" in job.cause and "raise the budget" in job.cause
        assert not (site.root / "lab" / "results" / job.id / "outputs").exists()
        shown = ncaas("budget", "show", "lab", "--root", str(site.root), check=True).stdout
        assert "budget of group lab" in shown and f"spent {spent:.6f} USD" in shown
    finally:
        remove_budget(site.db, "lab")


def test_a_rerun_is_refused_like_a_submission_when_the_budget_is_spent(site):
    from ncaas.exceptions import AdmissionRefused
    from ncaas.provenance.rerun import certificate_of_job, start_rerun

    before = len(site.db.jobs())
    set_budget(site.db, "lab", 0.0)  # whatever lab has spent is more than this
    try:
        with pytest.raises(AdmissionRefused, match=f"the rerun of job {site.job.id} was not started: group lab has"):
            start_rerun(site.manager, certificate_of_job(site.manager, site.job))
        said = ncaas("rerun", site.job.id, "--root", str(site.root))
        assert said.returncode == 2 and "Traceback" not in said.stderr
        assert "nothing is left: ask your administrator to raise" in " ".join((said.stdout + said.stderr).split())
    finally:
        remove_budget(site.db, "lab")
    assert len(site.db.jobs()) == before, "a refused rerun makes no job"


def test_a_running_job_past_its_hard_cap_is_stopped_with_that_reason(site):
    set_budget(site.db, "lab", 10.0, hard_cap=2.0)
    try:
        config = {"sleep_per_frame": 1.0}  # 20 s, where its estimate (from the quick run) is about 1 s
        path = submit(site.root, "slow", {"analysis": "framestats", "dataname": "a.npy"}, config=config)
        job = site.manager.ingest_file("lab", str(path))
        assert job.state == "queued" and job.cost_cap == pytest.approx(json.loads(job.estimate_json)["cost"] * 2)
        job = site.manager.run_job(job.id)
    finally:
        remove_budget(site.db, "lab")
    assert job.state == "cancelled"
    assert job.cause.startswith("stopped by the budget: it had cost")
    assert "its group's hard cap on its estimate" in job.cause
    [task] = site.db.tasks(job.id)
    assert task.cause.startswith("stopped by the budget")
    cost = json.loads(task.cost_json)
    assert cost["final"] and cost["total"] > job.cost_cap and cost["seconds"] < 15


def test_a_save_task_interrupted_is_retried_and_its_lost_time_charged(site):
    config = {"sleep_per_frame": 0.15, "batch_frames": 1}
    body = {"analysis": "framestats", "dataname": "a.npy", "pricing": "save"}
    path = submit(site.root, "spot", body, group="spot", config=config)
    job = site.manager.ingest_file("spot", str(path))
    assert job.option == "save"
    ran = threading.Thread(target=site.manager.run_job, args=(job.id,))
    ran.start()
    status = site.root / "spot" / "results" / job.id / "status" / "a.npy.json"
    wait_for(lambda: status.exists() and read_json(status)["progress"] > 0.1, what="the task to make progress")
    assert site.manager.reclaim(job.id) == ["a.npy"]  # what `ncaas reclaim JOB` does
    ran.join(timeout=60)
    job = site.db.job(job.id)
    assert job.state == "succeeded", job.cause
    [task] = site.db.tasks(job.id)
    assert task.attempt == 2
    cost = json.loads(task.cost_json)
    first, second = read_json(status)["attempts"]
    assert first["outcome"] == "queued" and "Save capacity was reclaimed" in first["cause"]
    lost = (first["ended_ms"] - first.get("started_ms", first["launched_ms"])) / 1000
    assert cost["option"] == "save" and cost["attempts"] == 2
    assert cost["lost_seconds"] == pytest.approx(lost) and lost > 0.3
    assert cost["lost"] == pytest.approx(lost / 3600 * SAVE_HOURLY)
    assert cost["compute"] == pytest.approx(cost["seconds"] / 3600 * SAVE_HOURLY)
    standard = ncaas("reclaim", site.job.id, "--root", str(site.root))
    assert standard.returncode == 1 and "only Save jobs" in standard.stdout + standard.stderr


def test_a_rerun_shows_the_originals_cost_beside_its_own(site):
    from ncaas.jobs.describe import job_detail
    from ncaas.provenance.rerun import certificate_of_job, start_rerun

    rerun = start_rerun(site.manager, certificate_of_job(site.manager, site.job))
    rerun = site.manager.run_job(rerun.id)
    assert rerun.state == "succeeded", rerun.cause
    detail = job_detail(site.manager, rerun)
    original = json.loads(site.db.tasks(site.job.id)[0].cost_json)
    assert detail["rerun_of"] == site.job.id
    assert detail["original_cost"]["total"] == pytest.approx(original["total"])
    assert detail["cost"]["final"] and detail["cost"]["total"] > 0
    from ncaas.cli.display import cost_lines

    assert cost_lines(detail)[-1].startswith(f"the original job {site.job.id} cost: ")


def test_a_blueprint_books_the_instance_shape_it_names(site):
    path = submit(site.root, "large", {"analysis": "fs-large", "dataname": "a.npy"})
    job = site.manager.run_job(site.manager.ingest_file("lab", str(path)).id)
    assert job.state == "succeeded", job.cause
    cost = json.loads(site.db.tasks(job.id)[0].cost_json)
    large = PROFILE.node_types["cpu-large"]
    assert cost["node_type"] == "cpu-large"
    assert cost["hourly"] == pytest.approx(16 * large.vcpu_hour.standard + 64 * large.gib_hour.standard)
    path = submit(site.root, "gpu", {"analysis": "fs-gpu", "dataname": "a.npy"})
    refused = site.manager.ingest_file("lab", str(path))
    assert refused.state == "rejected"
    assert "needs instance shape 'gpu-huge', which this deployment's pricing profile (default)" in refused.cause
    assert "its node types: cpu-small, cpu-large" in refused.cause
