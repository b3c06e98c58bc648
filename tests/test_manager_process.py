"""`ncaas manager` as a real process: plain-file-copy submissions, parallel tasks, kill/restart, rerun."""

import os
import signal
import time

import psutil
import pytest
from ncaas_clirunner import cli, flat
from ncaas_testutil import ncaas, read_json, start_manager, stop, submit, wait_for

pytestmark = pytest.mark.timeout(120)


def _results(root, group="lab"):
    folder = root / group / "results"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_plain_copy_runs_parallel_tasks_with_status_certificate_and_rerun_match(root, tmp_path):
    manager = start_manager(root, tmp_path / "manager.log")
    try:
        submit(
            root,
            "three",
            {"analysis": "framestats", "dataname": ["a.npy", "b.npy", "c.npy"]},
            config={"sleep_per_frame": 0.1, "batch_frames": 2},
        )  # 20 frames: 2 s each
        job_dir = wait_for(lambda: _results(root) and _results(root)[0], what="a results folder")
        statuses = [job_dir / "status" / f"{d}.npy.json" for d in "abc"]
        running = wait_for(
            lambda: all(
                s.exists() and read_json(s).get("state") == "running" and read_json(s).get("progress", 0) > 0
                for s in statuses[:2]
            ),
            what="two tasks running with progress",
        )
        assert running
        end = wait_for(
            lambda: (job_dir / "end.json").exists() and read_json(job_dir / "end.json"), timeout=60, what="end.json"
        )
    finally:
        stop(manager)
    assert end["state"] == "succeeded", (tmp_path / "manager.log").read_text()
    status = [read_json(s) for s in statuses]
    for s in status:
        assert s["state"] == "succeeded" and s["progress"] == 1.0 and s["exit_code"] == 0
        assert s["cpu_seconds"] > 0 and s["peak_memory_bytes"] > 1e6 and s["end_ms"] > s["start_ms"]
    # the first two ran at the same time on two cores
    assert status[1]["start_ms"] < status[0]["end_ms"] and status[0]["start_ms"] < status[1]["end_ms"]
    log = (job_dir / "logs" / "a.npy.log").read_text()
    assert "NCAAS_PROGRESS 0.500 10/20 frames" in log
    # end.json is written last
    newest_other = max(p.stat().st_mtime_ns for p in job_dir.rglob("*") if p.is_file() and p.name != "end.json")
    assert (job_dir / "end.json").stat().st_mtime_ns >= newest_other
    cert = read_json(job_dir / "certificate.json")
    assert [t["dataset"] for t in cert["tasks"]] == ["a.npy", "b.npy", "c.npy"]
    assert cert["config"]["content"]["sleep_per_frame"] == 0.1
    assert cert["isolation"] and "environment" in cert
    assert all(len(o["sha256"]) == 64 for t in cert["tasks"] for o in t["outputs"])
    assert "ncaas certificate for job" in (job_dir / "certificate.txt").read_text()

    done = ncaas("rerun", str(job_dir / "certificate.json"), "--root", str(root))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 identical, 0 equal within tolerance, 0 different" in done.stdout
    assert "a.npy/a.stats.csv" in done.stdout and "identical" in done.stdout


def test_rerun_reports_changed_inputs(root, manager):
    job = manager.ingest_file("lab", str(submit(root, "one", {"analysis": "framestats", "dataname": "a.npy"})))
    manager.run_job(job.id)
    (root / "lab" / "inputs" / "a.npy").write_bytes(b"changed")
    done = cli("rerun", job.results_dir + "/certificate.json", "--root", str(root))
    assert done.exit_code == 1
    assert "input lab/inputs/a.npy changed since the certified run" in flat(done.stderr)


def _runner_of(status_path):
    """The supervisor process of a running task (the parent of the analysis process)."""
    return psutil.Process(read_json(status_path)["pid"]).parent()


def test_manager_killed_mid_job_and_restarted_completes_it(root, tmp_path):
    log = tmp_path / "manager.log"
    manager = start_manager(root, log)
    submit(
        root,
        "slow",
        {"analysis": "framestats", "dataname": ["a.npy", "b.npy", "c.npy"]},
        config={"sleep_per_frame": 0.1, "batch_frames": 2},
    )
    job_dir = wait_for(lambda: _results(root) and _results(root)[0], what="results folder")
    a, b, c = (job_dir / "status" / f"{d}.npy.json" for d in "abc")
    wait_for(
        lambda: a.exists() and read_json(a).get("state") == "running" and read_json(a).get("pid"), what="task a running"
    )
    wait_for(lambda: b.exists() and read_json(b).get("pid"), what="task b running")
    manager.send_signal(signal.SIGKILL)
    manager.wait()
    # while the manager is down: b's supervisor is killed too (as if by the OOM killer), a keeps running
    runner_b = _runner_of(b)
    os.killpg(read_json(b)["pid"], signal.SIGKILL)
    runner_b.kill()
    # and a new submission arrives while nobody watches
    submit(root, "while-down", {"analysis": "framestats", "dataname": "a.npy"})
    time.sleep(0.5)
    manager = start_manager(root, log)
    try:
        end = wait_for(
            lambda: (job_dir / "end.json").exists() and read_json(job_dir / "end.json"),
            timeout=60,
            what="end.json after restart",
        )
        assert end["state"] == "succeeded", log.read_text()
        second = wait_for(
            lambda: [d for d in _results(root) if d != job_dir and (d / "end.json").exists()],
            timeout=30,
            what="the submission made while down",
        )
        assert read_json(second[0] / "end.json")["state"] == "succeeded"
    finally:
        stop(manager)
    assert read_json(a)["attempt"] == 1  # adopted, not rerun
    assert read_json(b)["attempt"] == 2  # lost with the manager, retried
    assert read_json(c)["state"] == "succeeded"
    cert = read_json(job_dir / "certificate.json")
    assert all(t["outputs"] for t in cert["tasks"])
    story = flat(cli("status", job_dir.name, "--root", str(root)).stdout)
    assert "process vanished" in story and "retrying (attempt 2 of 3)" in story


def test_second_manager_on_same_root_is_refused(root, tmp_path):
    manager = start_manager(root, tmp_path / "m.log")
    try:
        wait_for(lambda: (root / ".ncaas" / "manager.lock").exists(), what="lock")
        time.sleep(0.5)
        done = cli("manager", "--root", str(root))
        assert done.exit_code == 1
        assert "another `ncaas manager` is already running" in flat(done.stderr)
    finally:
        stop(manager)
