"""The `ncaas` command as a user runs it: submit --wait, status, logs, results, cancel."""

import signal

import pytest
from ncaas_clirunner import cli, flat
from ncaas_testutil import ncaas, read_json, start_manager, wait_for, write_stack

pytestmark = pytest.mark.timeout(120)


def test_submit_wait_then_status_logs_results(tmp_path):
    root = tmp_path / "root"
    data = [write_stack(tmp_path / "local" / f"m{i}.npy", seed=i) for i in range(2)]
    folder = tmp_path / "local" / "sessions"
    write_stack(folder / "s1.npy")
    config = tmp_path / "config.yaml"
    config.write_text("stats: [mean, std]\n")
    env = {"NCAAS_ROOT": str(root)}
    done = cli(
        "submit",
        "framestats",
        *map(str, data),
        str(folder),
        "--config",
        str(config),
        "--group",
        "lab",
        "--wait",
        env=env,
    )
    assert done.exit_code == 0, done.output
    assert "succeeded" in done.stdout and "certificate" in done.stdout
    assert (root / "lab" / "inputs" / "m0.npy").read_bytes() == data[0].read_bytes()
    assert (root / "lab" / "inputs" / "sessions" / "s1.npy").exists()
    assert (root / "lab" / "configs" / "config.yaml").exists()
    [job_dir] = (root / "lab" / "results").iterdir()
    job = job_dir.name

    listing = cli("status", env=env).stdout
    assert job in listing and "succeeded" in listing
    detail = flat(cli("status", job[:15], env=env).stdout)
    assert "m0.npy" in detail and "sessions" in detail and "story:" in detail
    assert "queued -> running" in detail

    logs = cli("logs", job, "m1.npy", env=env).stdout
    assert "NCAAS_PROGRESS 1.000 done" in logs and "[ncaas] exited with code 0" in logs
    both = cli("logs", job, env=env).stdout
    assert "m0.npy | NCAAS_PROGRESS" in both and "sessions | NCAAS_PROGRESS" in both

    listed = cli("results", job, env=env).stdout
    assert "certificate.json" in listed and "outputs/m0.npy/m0.stats.csv" in listed
    target = tmp_path / "copy"
    assert cli("results", job, "--to", str(target), env=env).exit_code == 0
    assert read_json(target / "end.json")["state"] == "succeeded"
    assert (target / "outputs" / "sessions" / "s1.stats.csv").exists()

    # submitting the same local file or folder again reuses the stored copy; a different one is refused
    again = cli("submit", "framestats", str(data[0]), str(folder), "--group", "lab", env=env)
    assert again.exit_code == 0 and "a running `ncaas manager` will run it" in flat(again.stdout)
    data[0].write_bytes(b"different")
    clash = cli("submit", "framestats", str(data[0]), "--group", "lab", env=env)
    assert clash.exit_code == 1
    assert "lab/inputs/m0.npy already exists with different content" in flat(clash.stderr)


def test_clear_errors_never_tracebacks(tmp_path):
    done = cli("status", "nosuchjob", "--root", str(tmp_path))
    assert done.exit_code == 4
    assert "no job 'nosuchjob'" in flat(done.stderr)
    done = cli("submit", "framestats", "x.npy", "--group", "../up", "--root", str(tmp_path))
    assert done.exit_code == 1 and "group name '../up' is not allowed" in flat(done.stderr)
    done = cli("rerun", str(tmp_path / "nothere.json"), "--root", str(tmp_path))
    assert done.exit_code == 1 and "does not exist; give a job id" in flat(done.stderr)
    done = cli("logs", "nosuchjob", "--root", str(tmp_path))
    assert done.exit_code == 4
    # and the installed command behaves the same in a real process
    real = ncaas("status", "nosuchjob", "--root", str(tmp_path))
    assert real.returncode == 4 and "no job 'nosuchjob'" in real.stderr and "Traceback" not in real.stderr


def test_cancel_a_job_run_by_the_manager(root, tmp_path):
    manager = start_manager(root, tmp_path / "m.log")
    try:
        env = {"NCAAS_ROOT": str(root)}
        config = tmp_path / "hang.json"
        config.write_text('{"hang": true}')
        out = cli("submit", "framestats", "a.npy", "b.npy", "--config", str(config), "--group", "lab", env=env)
        job = out.stdout.split("job ", 1)[1].split(":", 1)[0].strip()
        status = root / "lab" / "results" / job / "status" / "a.npy.json"
        log = status.parent.parent / "logs" / "a.npy.log"
        wait_for(lambda: log.exists() and "hanging as configured" in log.read_text(), what="task a hanging")
        assert "cancelling job" in cli("cancel", job, env=env).stdout
        end = root / "lab" / "results" / job / "end.json"
        wait_for(end.exists, timeout=15, what="end.json after cancel")
        assert read_json(end)["state"] == "cancelled"
        assert "already over" in cli("cancel", job, env=env).stdout
        follow = cli("logs", job, "-f", env=env).stdout
        assert "a.npy | hanging as configured" in follow and "a.npy | [ncaas] cancelled with code" in follow
    finally:
        manager.send_signal(signal.SIGTERM)
        manager.wait(timeout=20)
    assert "manager stopped" in flat((tmp_path / "m.log").read_text())


def test_a_long_last_message_of_a_finished_task_is_printed_in_full():
    """The job table cuts messages short; a run's last word (caliali: whether its fit converged) is not lost."""
    from rich.console import Console

    from ncaas.cli.display import print_job

    last = "done: 185 neurons in 1 session(s); not converged after 10 rounds (max_iter): change 0.3 >= tol 0.05"
    task = {
        "dataset": "exp1",
        "input": "exp1",
        "state": "succeeded",
        "cause": "exited with code 0",
        "attempt": 1,
        "progress": 1.0,
        "message": last,
        "started_ms": 1,
        "ended_ms": 2,
        "exit_code": 0,
        "cpu_seconds": 1.0,
        "peak_memory_bytes": 10**8,
    }
    out = Console(width=200, record=True)
    print_job(out, {"id": "j", "analysis": "caliali", "state": "succeeded", "tasks": [task], "results_dir": "/r"}, [])
    assert f"exp1: {last}" in out.export_text()


def test_the_same_data_submitted_twice_in_one_second_makes_two_jobs(tmp_path):
    """A copied submission file runs once, but two `ncaas submit` of the same data are two runs."""
    import numpy as np

    from ncaas.cli.backend import Embedded

    np.save(tmp_path / "a.npy", np.zeros((4, 8, 8), np.float32))
    backend = Embedded(str(tmp_path / "root"), None)
    (name,) = [backend.put_input(str(tmp_path / "a.npy"), "lab", left_out=lambda *_: None)]
    first = backend.submit("lab", "framestats", [name], None, "one")
    second = backend.submit("lab", "framestats", [name], None, "two")
    assert first["id"] != second["id"]
