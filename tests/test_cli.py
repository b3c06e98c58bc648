"""The `ncaas` command as a user runs it: submit --wait, status, logs, results, cancel."""

import signal

import pytest
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
    done = ncaas("submit", "framestats", *map(str, data), str(folder), "--config", str(config),
                 "--group", "lab", "--wait", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout and "certificate" in done.stdout
    assert (root / "lab" / "inputs" / "m0.npy").read_bytes() == data[0].read_bytes()
    assert (root / "lab" / "inputs" / "sessions" / "s1.npy").exists()
    assert (root / "lab" / "configs" / "config.yaml").exists()
    [job_dir] = (root / "lab" / "results").iterdir()
    job = job_dir.name

    listing = ncaas("status", env=env, check=True).stdout
    assert job in listing and "succeeded" in listing
    detail = ncaas("status", job[:15], env=env, check=True).stdout
    assert "m0.npy" in detail and "sessions" in detail and "story:" in detail
    assert "queued -> running" in detail

    logs = ncaas("logs", job, "m1.npy", env=env, check=True).stdout
    assert "NCAAS_PROGRESS 1.000 done" in logs and "[ncaas] exited with code 0" in logs

    listed = ncaas("results", job, env=env, check=True).stdout
    assert "certificate.json" in listed and "outputs/m0.npy/m0.stats.csv" in listed
    target = tmp_path / "copy"
    ncaas("results", job, "--to", str(target), env=env, check=True)
    assert read_json(target / "end.json")["state"] == "succeeded"
    assert (target / "outputs" / "sessions" / "s1.stats.csv").exists()

    # submitting the same local file again reuses the stored copy; a different one is refused
    again = ncaas("submit", "framestats", str(data[0]), "--group", "lab", env=env, check=True)
    assert "a running `ncaas manager` will run it" in again.stdout
    data[0].write_bytes(b"different")
    clash = ncaas("submit", "framestats", str(data[0]), "--group", "lab", env=env)
    assert clash.returncode == 1
    assert "lab/inputs/m0.npy already exists with different content" in clash.stderr


def test_unknown_job_is_a_clear_error(tmp_path):
    done = ncaas("status", "nosuchjob", "--root", str(tmp_path))
    assert done.returncode == 4
    assert "no job 'nosuchjob'" in done.stderr and "Traceback" not in done.stderr
    done = ncaas("submit", "framestats", "x.npy", "--group", "../up", "--root", str(tmp_path))
    assert done.returncode == 1 and "group name '../up' is not allowed" in done.stderr


def test_cancel_a_job_run_by_the_manager(root, tmp_path):
    manager = start_manager(root, tmp_path / "m.log")
    try:
        env = {"NCAAS_ROOT": str(root)}
        config = tmp_path / "hang.json"
        config.write_text('{"hang": true}')
        out = ncaas("submit", "framestats", "a.npy", "b.npy", "--config", str(config), "--group", "lab",
                    env=env, check=True).stdout
        job = out.split("job ", 1)[1].split(":", 1)[0].strip()
        status = root / "lab" / "results" / job / "status" / "a.npy.json"
        wait_for(lambda: status.exists() and read_json(status).get("pid"), what="task running")
        ncaas("cancel", job, env=env, check=True)
        end = root / "lab" / "results" / job / "end.json"
        wait_for(end.exists, timeout=15, what="end.json after cancel")
        assert read_json(end)["state"] == "cancelled"
        assert "already over" in ncaas("cancel", job, env=env, check=True).stdout
        follow = ncaas("logs", job, "-f", env=env, check=True).stdout
        assert "hanging as configured" in follow
    finally:
        manager.send_signal(signal.SIGTERM)
        manager.wait(timeout=20)
    assert "manager stopped" in (tmp_path / "m.log").read_text()
